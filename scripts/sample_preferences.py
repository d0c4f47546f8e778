"""Write the built-in preference samples from assets/sample_instructions.jsonl (deterministic).

    python scripts/sample_preferences.py

assets/sample_preferences.jsonl  prompt / chosen / rejected: the chosen answer is the sample's own; the
                                 rejected one answers another question, or pads the right answer with chatter
assets/sample_feedback.jsonl     prompt / completion / label: the same answers, unpaired, labelled good or bad
"""

import json
import random
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CHATTER = (" I hope this helps! Let me know if you have any other questions, I am always happy to help with "
           "anything else you might need.")


def prompt_of(row: dict) -> str:
    return f"{row['instruction']}\n\n### Input:\n{row['input']}" if row["input"].strip() else row["instruction"]


def main() -> None:
    rows = [json.loads(line) for line in (ASSETS / "sample_instructions.jsonl").read_text().splitlines()]
    rng = random.Random(3407)
    pairs = []
    for i, row in enumerate(rows):
        other = rows[(i + rng.randrange(1, len(rows))) % len(rows)]["output"]
        rejected = row["output"] + CHATTER if i % 3 == 0 else other
        if rejected != row["output"]:
            pairs.append({"prompt": prompt_of(row), "chosen": row["output"], "rejected": rejected})
    with (ASSETS / "sample_preferences.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
    with (ASSETS / "sample_feedback.jsonl").open("w", encoding="utf-8") as fh:
        for i, p in enumerate(pairs):
            good = i % 2 == 0
            row = {"prompt": p["prompt"], "completion": p["chosen"] if good else p["rejected"], "label": good}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
