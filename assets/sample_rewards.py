"""Example reward functions for grpo: train with grpo.reward_file=assets/sample_rewards.py.

Every public function here that takes (completions, **kwargs) is a reward: it gets the completions of a
generation batch (texts) and returns one number per completion, or None where it does not apply. The keyword
arguments hold the prompts (as rendered through the run's template), completion_ids (token ids) and each
column of the data under its own name (answer, ...); file_line names the row each completion answers.
Functions whose names start with _ are helpers, not rewards.
"""

import re


def _last_number(text):
    found = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return float(found[-1]) if found else None


def close_to_answer(completions, answer, **kwargs):
    """Partial credit: 1 for the right number, less the further off the last number is, 0 for no number.

    Unlike answer_match (right or wrong), it tells a near miss from a wild guess: a signal to learn from
    while the model rarely gets an answer exactly right.
    """
    rewards = []
    for completion, wanted in zip(completions, answer):
        got = _last_number(completion)
        if wanted is None:
            rewards.append(None)  # no answer in this row: the reward does not apply
        elif got is None:
            rewards.append(0.0)
        else:
            rewards.append(1.0 / (1.0 + abs(got - float(wanted))))
    return rewards
