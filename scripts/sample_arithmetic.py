"""Write the built-in grpo samples: arithmetic questions with their answers (deterministic).

    python scripts/sample_arithmetic.py

assets/sample_arithmetic.jsonl            prompt / answer: "What is 17 + 25?" and "42" (for a base model
                                          through a format-string template, recipes/grpo-gemma-270m-cpu.yaml)
assets/sample_arithmetic_reasoning.jsonl  the same questions as chat prompts whose system message asks for the
                                          reasoning inside <think></think> and the number inside
                                          <answer></answer> (the format and answer_match rewards,
                                          recipes/grpo-qwen2.5-0.5b-instruct.yaml)
"""

import json
import random
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ROWS = 300
SYSTEM = ("Solve the arithmetic question. Think it through inside <think></think>, then give only the final "
          "number inside <answer></answer>.")


def question(rng: random.Random) -> tuple[str, int]:
    """Small sums, differences and times tables: a 270M model gets some right, so a reward can tell them apart."""
    kind = rng.choice("+-x")
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    if kind == "+":
        return f"What is {a} + {b}?", a + b
    if kind == "-":
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", a - b
    a, b = rng.randint(2, 10), rng.randint(2, 10)
    return f"What is {a} x {b}?", a * b


def main() -> None:
    rng = random.Random(3407)
    seen, rows = set(), []
    while len(rows) < ROWS:
        text, answer = question(rng)
        if text not in seen:
            seen.add(text)
            rows.append((text, str(answer)))
    write(ASSETS / "sample_arithmetic.jsonl", [{"prompt": text, "answer": answer} for text, answer in rows])
    write(ASSETS / "sample_arithmetic_reasoning.jsonl",
          [{"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}], "answer": answer}
           for text, answer in rows])


def write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


if __name__ == "__main__":
    main()
