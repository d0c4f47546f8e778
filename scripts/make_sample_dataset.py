"""Write the studio's built-in sample datasets into assets/.

sample_instructions.jsonl (Alpaca format) and sample_chat.jsonl (the same
answers as two-turn OpenAI `messages` conversations).

A few hundred short rows (instruction, input, output) in a
consistent voice: one or two complete sentences, correct, then stop. A base
model answers such prompts by rambling on; after a few minutes of LoRA on this
data it answers briefly and in this style, which makes the effect of
fine-tuning easy to see.

Run as:  python scripts/make_sample_dataset.py
"""

import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Peru": "Lima", "Chile": "Santiago", "Australia": "Canberra", "New Zealand": "Wellington",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Austria": "Vienna", "Greece": "Athens", "Turkey": "Ankara", "Ireland": "Dublin",
    "the Netherlands": "Amsterdam", "Belgium": "Brussels", "Switzerland": "Bern", "Hungary": "Budapest",
    "South Korea": "Seoul", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Indonesia": "Jakarta",
    "Morocco": "Rabat", "Nigeria": "Abuja", "Ghana": "Accra", "Colombia": "Bogota", "Cuba": "Havana",
}

OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "early": "late", "light": "dark",
    "open": "closed", "full": "empty", "strong": "weak", "rich": "poor", "young": "old", "loud": "quiet",
    "high": "low", "wet": "dry", "hard": "soft", "easy": "difficult", "clean": "dirty", "thick": "thin",
    "near": "far", "cheap": "expensive", "win": "lose", "begin": "end", "push": "pull", "buy": "sell",
    "remember": "forget", "always": "never", "inside": "outside", "above": "below", "true": "false",
    "friend": "enemy",
}

PAST_TENSE = {
    "go": "went", "eat": "ate", "see": "saw", "write": "wrote", "run": "ran", "swim": "swam", "take": "took",
    "give": "gave", "make": "made", "think": "thought", "buy": "bought", "bring": "brought", "teach": "taught",
    "sing": "sang", "drink": "drank", "fly": "flew", "speak": "spoke", "break": "broke", "choose": "chose",
    "walk": "walked", "play": "played", "jump": "jumped", "cook": "cooked", "open": "opened", "watch": "watched",
}

ANIMALS = {
    "dog": "mammal", "whale": "mammal", "bat": "mammal", "dolphin": "mammal", "elephant": "mammal",
    "horse": "mammal", "mouse": "mammal", "eagle": "bird", "penguin": "bird", "owl": "bird", "sparrow": "bird",
    "ostrich": "bird", "parrot": "bird", "salmon": "fish", "shark": "fish", "tuna": "fish", "trout": "fish",
    "goldfish": "fish", "snake": "reptile", "lizard": "reptile", "turtle": "reptile", "crocodile": "reptile",
    "frog": "amphibian", "salamander": "amphibian", "toad": "amphibian", "ant": "insect", "bee": "insect",
    "butterfly": "insect", "beetle": "insect", "spider": "arachnid",
}

TRANSLATIONS = [  # English, French, German, Spanish
    ("water", "eau", "Wasser", "agua"), ("bread", "pain", "Brot", "pan"), ("house", "maison", "Haus", "casa"),
    ("book", "livre", "Buch", "libro"), ("cat", "chat", "Katze", "gato"), ("dog", "chien", "Hund", "perro"),
    ("sun", "soleil", "Sonne", "sol"), ("moon", "lune", "Mond", "luna"), ("tree", "arbre", "Baum", "árbol"),
    ("friend", "ami", "Freund", "amigo"), ("school", "école", "Schule", "escuela"), ("apple", "pomme", "Apfel", "manzana"),
    ("city", "ville", "Stadt", "ciudad"), ("red", "rouge", "rot", "rojo"), ("thank you", "merci", "danke", "gracias"),
]
LANGUAGES = ("French", "German", "Spanish")

EXPLANATIONS = [
    ("Explain what photosynthesis is in one sentence.",
     "Photosynthesis is the process in which plants use sunlight, water and carbon dioxide to make sugar and release oxygen."),
    ("What is gravity?", "Gravity is the force that pulls objects with mass toward each other, which is why things fall to the ground."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("Why is the sky blue?", "The sky looks blue because air scatters blue sunlight more strongly than red light."),
    ("What is a noun?", "A noun is a word that names a person, place, thing or idea, such as 'teacher', 'city' or 'joy'."),
    ("What is a verb?", "A verb is a word that describes an action or a state, such as 'run' or 'be'."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("How many continents are there?", "There are seven continents: Africa, Antarctica, Asia, Australia, Europe, North America and South America."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("What is the closest star to Earth?", "The Sun is the closest star to Earth."),
    ("What is a prime number?", "A prime number is a whole number greater than 1 that can only be divided evenly by 1 and itself."),
    ("What is the main gas in the air we breathe?", "Nitrogen is the main gas in the air, about 78 percent of it."),
    ("What do bees make?", "Bees make honey and beeswax."),
    ("What is an orbit?", "An orbit is the curved path an object follows around a star, planet or moon."),
    ("What is a volcano?", "A volcano is an opening in the Earth's crust through which lava, ash and gases escape."),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius (32 degrees Fahrenheit)."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is a synonym?", "A synonym is a word that means the same or nearly the same as another word, like 'big' and 'large'."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("What organ pumps blood through the body?", "The heart pumps blood through the body."),
    ("What is democracy?", "Democracy is a system of government in which citizens choose their leaders by voting."),
    ("What is a recipe?", "A recipe is a set of instructions for preparing a dish, with its ingredients and steps."),
    ("What does a computer's CPU do?", "The CPU is the part of a computer that carries out the instructions of programs."),
    ("What is the internet?", "The internet is a worldwide network of computers that exchange information."),
    ("What is a fraction?", "A fraction describes a part of a whole, written as one number over another, like 3/4."),
    ("What causes the seasons?", "The seasons are caused by the tilt of the Earth's axis as it travels around the Sun."),
    ("What is rain?", "Rain is water that falls from clouds in drops when tiny droplets join and become heavy."),
    ("What is the opposite of north?", "The opposite of north is south."),
    ("Give me a tip for sleeping better.", "Go to bed at the same time every night and keep screens out of the bedroom."),
    ("Give me a tip for learning a new language.", "Practise a little every day, and speak out loud even when you make mistakes."),
    ("Suggest a name for a pet goldfish.", "How about 'Bubbles'?"),
    ("Suggest a healthy breakfast.", "Oatmeal with fruit and a handful of nuts is a healthy breakfast."),
    ("Write a short greeting for a birthday card.", "Happy birthday! Wishing you a year full of joy, laughter and good friends."),
    ("Write a one-sentence thank-you note to a teacher.", "Thank you for your patience and for making every lesson something to look forward to."),
    ("Say hello in a friendly way.", "Hello there! It's nice to meet you."),
    ("Describe the colour of a ripe banana.", "A ripe banana is bright yellow, sometimes with small brown spots."),
    ("What should I pack for a day at the beach?", "Pack sunscreen, a towel, water, a hat and a snack."),
    ("Name three primary colours.", "Red, yellow and blue are the three primary colours of paint."),
]

POLITE = [
    ("Give me the salt.", "Could you please pass me the salt?"),
    ("Close the door.", "Would you mind closing the door, please?"),
    ("Send me the report.", "Could you please send me the report when you have a moment?"),
    ("Be quiet.", "Could you please keep it down a little?"),
    ("Call me back.", "Please call me back when you get a chance."),
    ("Move your car.", "Would you be able to move your car, please?"),
    ("Help me with this box.", "Could you give me a hand with this box, please?"),
    ("Answer my email.", "I would appreciate a reply to my email when you have time."),
    ("Wait here.", "Would you mind waiting here for a moment?"),
    ("Turn off the music.", "Could you please turn off the music?"),
]

NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def rows(rng: random.Random) -> list[dict]:
    out = []

    def add(instruction, output, input_=""):
        out.append({"instruction": instruction, "input": input_, "output": output})

    for country, capital in CAPITALS.items():
        add(f"What is the capital of {country}?", f"The capital of {country} is {capital}.")
    for word, opposite in OPPOSITES.items():
        add("Give the opposite of this word.", f"The opposite of '{word}' is '{opposite}'.", word)
    for verb, past in PAST_TENSE.items():
        add(f"What is the past tense of '{verb}'?", f"The past tense of '{verb}' is '{past}'.")
    for animal, group in ANIMALS.items():
        article = "an" if group[0] in "aeiou" else "a"
        add("Classify the animal as a mammal, bird, fish, reptile, amphibian, insect or arachnid.",
            f"The {animal} is {article} {group}.", animal)
    for english, *others in TRANSLATIONS:
        for language, word in zip(LANGUAGES, others):
            add(f"Translate '{english}' into {language}.", f"In {language}, '{english}' is '{word}'.")
    for instruction, output in EXPLANATIONS:
        add(instruction, output)
    for rude, polite in POLITE:
        add("Rewrite this request so that it sounds polite.", polite, rude)
    for _ in range(40):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice("+-*")
        result = {"+": a + b, "-": a - b, "*": a * b}[op]
        sign = {"+": "plus", "-": "minus", "*": "times"}[op]
        add(f"What is {a} {sign} {b}?", f"{a} {sign} {b} is {result}.")
    for _ in range(20):
        celsius = rng.randrange(-20, 45, 5)
        add(f"Convert {celsius} degrees Celsius to Fahrenheit.",
            f"{celsius} degrees Celsius is {celsius * 9 / 5 + 32:g} degrees Fahrenheit.")
    for _ in range(15):
        km = rng.randint(1, 50)
        add(f"How many metres are in {km} kilometres?", f"There are {km * 1000:,} metres in {km} kilometres.")
    for _ in range(20):
        numbers = rng.sample(range(1, 100), rng.randint(4, 7))
        add("Sort these numbers from smallest to largest.", ", ".join(map(str, sorted(numbers))),
            ", ".join(map(str, numbers)))
    for _ in range(20):
        n = rng.randint(2, 60)
        is_prime = n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))
        add(f"Is {n} a prime number?", f"{'Yes' if is_prime else 'No'}, {n} is {'' if is_prime else 'not '}a prime number.")
    for _ in range(15):
        n = rng.randint(0, 12)
        add(f"Write the number {n} in words.", f"{n} is written '{NUMBER_WORDS[n]}'.")
    sentences = [
        "The quick brown fox jumps over the lazy dog", "I like to read books on rainy days",
        "Our train leaves at seven in the morning", "She planted tomatoes in the garden",
        "Cats sleep for most of the day", "We watched the stars from the hill",
        "The museum opens again next week", "He forgot his umbrella at the office",
        "Fresh bread smells wonderful", "Learning to swim takes patience",
    ]
    for sentence in sentences:
        add("Count the words in this sentence.", f"The sentence has {len(sentence.split())} words.", sentence)
        add("Rewrite this sentence in capital letters.", sentence.upper() + ".", sentence)
    rng.shuffle(out)
    return out


SYSTEM_PROMPTS = ("You are a concise assistant.", "Answer in one or two sentences.", "You are a helpful tutor.")


def conversations(instruction_rows: list[dict], rng: random.Random) -> list[dict]:
    """The same answers as OpenAI-style `messages`: two user/assistant turns, sometimes a system turn."""
    out = []
    for first, second in zip(instruction_rows[0::2], instruction_rows[1::2]):
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.5 else []
        for row in (first, second):
            user = f"{row['instruction']}\n\n{row['input']}" if row["input"] else row["instruction"]
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
        out.append({"messages": messages})
    return out


def write_jsonl(target: Path, records: list[dict]) -> None:
    with target.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} rows to {target}")


if __name__ == "__main__":
    assets = Path(__file__).resolve().parent.parent / "assets"
    instructions = rows(random.Random(7))
    write_jsonl(assets / "sample_instructions.jsonl", instructions)
    write_jsonl(assets / "sample_chat.jsonl", conversations(instructions, random.Random(11)))
