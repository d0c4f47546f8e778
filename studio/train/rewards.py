"""grpo's rewards: the built-in presets and the user's own reward functions, each checked as it runs.

A reward function takes the completions of a generation batch (and, as keyword
arguments, the prompts, the completion token ids and the data's columns) and
returns one number per completion, or None where it does not apply: TRL's
reward function signature. The presets score from 0 to 1:

    answer_match  the completion's answer equals the row's answer, as text or as a number
    format        <think>...</think><answer>...</answer>
    regex         the completion contains grpo.regex
    json          the completion is JSON, following grpo.json_schema when set
    length        the completion has between grpo.length_min and grpo.length_max tokens

    rewards = reward_set(cfg.grpo, markers=END_OF_TURN_TOKENS)   # end-of-turn text cut from completions
    trainer = GRPOTrainer(..., reward_funcs=rewards.functions)
    rewards.samples()    # a few of the newest completions with their rewards, for the live view

A reward file that is missing, does not compile, or fails when it runs is a
ConfigError naming the file and line; a function that raises, or returns
something other than one number per completion, stops training with an error
naming the function and the row.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from studio.config import GrpoConfig
from studio.data.prompts import WHERE_COLUMN
from studio.errors import ConfigError, StudioError, TrainingError

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)
SAMPLE_CHARS = 240  # characters of a completion (and of a prompt's end) shown in the live view


# ---------------------------------------------------------------- presets, one completion at a time


def extracted_answer(completion: str) -> str:
    """The part of a completion that answers: inside its last <answer>...</answer>, else all of it."""
    found = ANSWER_TAG.findall(completion)
    return found[-1] if found else completion


def answer_score(completion: str, answer) -> float | None:
    """1.0 when the completion's answer equals `answer` as text (case, spacing and a final period aside), or
    when `answer` is a number equal to the last number of the completion's answer; None without an answer."""
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return None
    given, wanted = extracted_answer(completion), str(answer)
    if _normal(given) == _normal(wanted):
        return 1.0
    target = _number(wanted.strip())
    if target is None:
        return 0.0
    found = NUMBER.findall(given)
    last = _number(found[-1]) if found else None
    return 1.0 if last is not None and math.isclose(last, target, rel_tol=1e-9, abs_tol=1e-12) else 0.0


def format_score(completion: str) -> float:
    return 1.0 if FORMAT.fullmatch(completion) else 0.0


def regex_score(completion: str, pattern: str) -> float:
    return 1.0 if re.search(pattern, completion) else 0.0


def json_score(completion: str, schema: dict | None = None) -> float:
    """1.0 when the completion's answer (a ``` fence around it allowed) is JSON that follows `schema`."""
    text = extracted_answer(completion).strip()
    fenced = FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return 0.0
    return 1.0 if schema is None or follows_schema(value, schema) else 0.0


def length_score(tokens: int, low: int, high: int) -> float:
    """1.0 from `low` to `high` tokens (0: no bound); tokens/low below, falling to 0 at twice `high` above."""
    if low and tokens < low:
        return tokens / low
    if high and tokens > high:
        return max(0.0, 1.0 - (tokens - high) / high)
    return 1.0


JSON_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}


def follows_schema(value, schema: dict) -> bool:
    """A small JSON-schema check: type, enum, required, properties, additionalProperties (false) and items."""
    kinds = schema.get("type")
    if kinds is not None and not any(_is_type(value, kind) for kind in ([kinds] if isinstance(kinds, str) else kinds)):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if any(name not in value for name in schema.get("required", ())):
            return False
        if schema.get("additionalProperties") is False and any(name not in properties for name in value):
            return False
        if not all(follows_schema(value[name], sub) for name, sub in properties.items() if name in value):
            return False
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return all(follows_schema(item, schema["items"]) for item in value)
    return True


def _is_type(value, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, JSON_TYPES.get(kind, object))


def _normal(text: str) -> str:
    return " ".join(text.split()).rstrip(".").strip().casefold()


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


# ---------------------------------------------------------------- the run's reward functions


def load_schema(text: str) -> dict:
    """grpo.json_schema: JSON text, or the path of a .json file holding it."""
    source = "grpo.json_schema"
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"grpo.json_schema: {path} does not exist. Give a .json file or the schema as JSON text.")
        text, source = path.read_text(encoding="utf-8"), str(path)
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{source} is not valid JSON: {exc}.") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"{source} must be a JSON object (a schema), not {type(schema).__name__}.")
    return schema


def preset(name: str, g: GrpoConfig) -> Callable:
    """The batch reward function of a preset, with its settings from the grpo section."""
    if name == "answer_match":
        column = g.answer_column
        return lambda completions, **kw: [answer_score(c, a) for c, a in zip(completions, kw[column])]
    if name == "format":
        return lambda completions, **kw: [format_score(c) for c in completions]
    if name == "regex":
        return lambda completions, **kw: [regex_score(c, g.regex) for c in completions]
    if name == "json":
        schema = load_schema(g.json_schema) if g.json_schema else None
        return lambda completions, **kw: [json_score(c, schema) for c in completions]
    if name == "length":
        return lambda completions, completion_ids, **kw: [length_score(len(ids), g.length_min, g.length_max)
                                                          for ids in completion_ids]
    raise AssertionError(f"unknown reward preset {name}")


def load_reward_file(path: str) -> list[tuple[str, Callable]]:
    """(name, function) for every public function of the file taking (completions, **kwargs), in file order."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"grpo.reward_file: {file} does not exist. Give the path of a Python file of reward "
                          "functions, each taking (completions, **kwargs).")
    try:
        code = compile(file.read_text(encoding="utf-8"), str(file), "exec")
    except SyntaxError as exc:
        raise ConfigError(f"{file}:{exc.lineno}: syntax error in the reward file: {exc.msg}.") from None
    module = types.ModuleType(f"studio_rewards_{file.stem}")
    module.__file__ = str(file)
    sys.modules[module.__name__] = module  # what dataclasses and pickling look up while the file runs
    try:
        exec(code, module.__dict__)
    except Exception as exc:
        raise ConfigError(f"{_line_in(exc, file)}: the reward file failed as it ran: {type(exc).__name__}: "
                          f"{exc}.") from None
    finally:
        sys.modules.pop(module.__name__, None)
    found = []
    for name, fn in vars(module).items():
        if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != module.__name__:
            continue  # private helpers and imported functions
        params = inspect.signature(fn).parameters
        if "completions" not in params:
            continue  # a helper
        where = f"{file}:{fn.__code__.co_firstlineno}"
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise ConfigError(f"{where}: reward function {name} takes completions but no **kwargs; the trainer also "
                              "passes prompts, completion_ids and the data's columns: add **kwargs.")
        if inspect.iscoroutinefunction(fn):
            raise ConfigError(f"{where}: reward function {name} is async; write it as a plain function.")
        found.append((name, fn))
    if not found:
        raise ConfigError(f"{file} defines no reward function: a reward function is a public function taking "
                          "(completions, **kwargs) and returning one number per completion.")
    return found


def reward_set(g: GrpoConfig, markers: list[str] = ()) -> "RewardSet":
    """The run's rewards in order (the presets, then the reward file's functions) with their weights."""
    named = [(name, preset(name, g), "preset") for name in g.rewards]
    if g.reward_file:
        for name, fn in load_reward_file(g.reward_file):
            if name in g.rewards:
                raise ConfigError(f"{g.reward_file}: reward function {name} has the name of a preset in grpo.rewards; "
                                  "rename it.")
            named.append((name, fn, f"{g.reward_file}:{fn.__code__.co_firstlineno}"))
    weights = list(g.reward_weights) or [1.0] * len(named)
    if len(weights) != len(named):
        raise ConfigError(f"grpo.reward_weights has {len(weights)} weights for {len(named)} rewards "
                          f"({', '.join(n for n, _, _ in named)}): give one per reward, in order.")
    return RewardSet(named, weights, list(markers))


@dataclass
class Latest:
    """The newest generation batch as the rewards saw it."""

    batch: list  # the completions list the trainer passed: every function of one batch gets this same list
    prompts: list
    completions: list[str]
    rows: list
    rewards: dict  # reward name -> one value per completion


class RewardSet:
    """Checked reward functions for TRL's trainer, and the newest completions with their rewards."""

    def __init__(self, named: list[tuple[str, Callable, str]], weights: list[float], markers: list[str]) -> None:
        self.names = [name for name, _, _ in named]
        self.weights = weights
        self.markers = markers  # end-of-turn text a completion may end with (<|im_end|> spelt as text)
        self.functions = [CheckedReward(name, fn, origin, self) for name, fn, origin in named]
        self.latest: Latest | None = None

    def clean(self, completions: list[str]) -> list[str]:
        """Completions as a person reads them in chat: without an end-of-turn marker spelt as text."""
        out = []
        for text in completions:
            for marker in self.markers:
                text = text.split(marker, 1)[0]
            out.append(text)
        return out

    def record(self, name: str, batch: list, prompts: list, completions: list[str], rows: list, values: list) -> None:
        if self.latest is None or self.latest.batch is not batch:
            self.latest = Latest(batch, prompts, completions, rows, {})
        self.latest.rewards[name] = values

    def samples(self, count: int = 3) -> list[dict]:
        """The first `count` completions of the newest batch (one prompt's group), cut short, with their rewards."""
        latest = self.latest
        if latest is None:
            return []
        out = []
        for i in range(min(count, len(latest.completions))):
            rewards = {name: values[i] for name, values in latest.rewards.items()}
            total = sum(w * rewards[n] for n, w in zip(self.names, self.weights) if rewards.get(n) is not None)
            prompt = str(latest.prompts[i])
            out.append({"row": latest.rows[i] if latest.rows else "",
                        "prompt": prompt if len(prompt) <= SAMPLE_CHARS else "…" + prompt[-SAMPLE_CHARS:],
                        "completion": _cut(latest.completions[i]), "rewards": rewards, "reward": total})
        return out


class CheckedReward:
    """One reward function as TRL calls it, with cleaned completions and its answers checked."""

    def __init__(self, name: str, fn: Callable, origin: str, owner: RewardSet) -> None:
        self.__name__ = name  # the name TRL logs its values under: rewards/<name>/mean
        self.fn, self.origin, self.owner = fn, origin, owner

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        batch, completions = completions, self.owner.clean(completions)
        rows = kwargs.get(WHERE_COLUMN) or []
        try:
            values = self.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        except StudioError:
            raise
        except Exception as exc:
            raise TrainingError(self._raised(exc, prompts, completions, completion_ids, kwargs, rows)) from exc
        values = self._checked(values, len(completions), rows)
        self.owner.record(self.__name__, batch, prompts, completions, rows, values)
        return values

    def _checked(self, values, count: int, rows: list) -> list[float | None]:
        what = f"Reward function {self.__name__} ({self.origin})"
        if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
            raise TrainingError(f"{what} returned {_shown(values)}, not a list of numbers: it must return one number "
                                "(or None) per completion.")
        values = list(values)
        if len(values) != count:
            raise TrainingError(f"{what} returned {len(values)} rewards for {count} completions: it must return "
                                "one number (or None) per completion, in order.")
        out = []
        for i, value in enumerate(values):
            if value is not None and (not isinstance(value, numbers.Real) or not math.isfinite(value)):
                row = f" of row {rows[i]}" if i < len(rows) else ""
                raise TrainingError(f"{what} returned {_shown(value)} for completion {i + 1}{row}: a reward is a "
                                    "finite number, or None where it does not apply.")
            out.append(None if value is None else float(value))
        return out

    def _raised(self, exc: Exception, prompts, completions, completion_ids, kwargs: dict, rows: list) -> str:
        """What failed, where in the file, and on which row: the first completion that fails alone."""
        text = f"Reward function {self.__name__} ({self.origin}) raised {type(exc).__name__}: {exc}"
        line = _line_in(exc, Path(self.origin.rsplit(":", 1)[0])) if self.origin != "preset" else ""
        if line:
            text += f" (at {line})"
        n = len(completions)
        for i in range(n):
            one = {k: v[i:i + 1] if isinstance(v, list) and len(v) == n else v for k, v in kwargs.items()}
            try:
                self.fn(prompts=prompts[i:i + 1], completions=completions[i:i + 1],
                        completion_ids=completion_ids[i:i + 1], **one)
            except Exception:
                row = f"row {rows[i]}" if i < len(rows) else f"completion {i + 1}"
                return f"{text}, on {row}, completion {_shown(completions[i])}."
        return f"{text} on a batch of {n} completions (none fails alone)."


def _line_in(exc: BaseException, file: Path) -> str:
    """file:line of the deepest frame of the traceback inside `file`, else the file's name."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == file:
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is None and isinstance(exc, SyntaxError) and exc.lineno:
        line = exc.lineno
    return f"{file}:{line}" if line else str(file)


def _cut(text: str, limit: int = SAMPLE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _shown(value) -> str:
    text = repr(value)
    return f"{_cut(text, 80)} ({type(value).__name__})" if not isinstance(value, str) else _cut(text, 80)
