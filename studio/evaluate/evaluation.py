"""The evaluation job: every chosen model of a run answers the same rows, then the scorecard.

    result = run_evaluation(run_dir, EvalSpec(rows="eval", models=("base", "tuned", "checkpoints", "gguf")),
                            sink, stop)

The run is locked ("evaluation") for the whole job, so it never overlaps
training or exporting the same run. The run's HF weights load once: the base
model is the adapter switched off, each checkpoint an adapter loaded beside the
final one. Results go to <run>/evals/<time>.part/ while the job runs and are
renamed to <run>/evals/<time>/ at the end; a stopped job keeps every row scored
so far and its scores.json says "partial": true. With `judge`, a chat model then
says which of two models answered each row better (studio.evaluate.judge).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

from studio.config import ModelConfig, RunConfig
from studio.recipes import apply_overrides
from studio.errors import ConfigError, StudioError
from studio.evaluate import generate as gen_lib
from studio.evaluate.judge import Judge, Judgement, require_chat_template
from studio.evaluate.rows import EvalRow, select_rows
from studio.evaluate.scorecard import ModelRow, build_scorecard, eval_curve
from studio.evaluate.scores import METRICS, load_checks, model_scores, parse_check, row_scores, save_checks
from studio.evaluate.store import EvalResult, new_eval_folder, remove_stale_parts
from studio.events import Event, Sink

MODEL_CHOICES = ("base", "tuned", "checkpoints", "gguf")


@dataclass(frozen=True)
class EvalSpec:
    """What to evaluate; the defaults are what `launch.py eval RUN` does."""

    rows: str = "eval"  # "eval" (the run's held-out split), "train" (memorisation check) or a data file
    limit: int = 0  # at most this many rows (a seeded sample); 0: all
    models: tuple[str, ...] = ("base", "tuned", "checkpoints", "gguf")
    ggufs: tuple[str, ...] = ()  # GGUF files; empty: every <run>/exports/*.gguf when "gguf" is chosen
    other: str = ""  # another HF chat model folder to compare with (its own chat template)
    metric: str = "loss"  # what "best checkpoint" means
    batch_size: int = 8
    max_new_tokens: int = 0  # the longest answer; 0: the run's generation.max_new_tokens
    overrides: tuple[str, ...] = ()  # other generation.* settings, e.g. generation.do_sample=true generation.seed=3
    checks: tuple[str, ...] = ()  # regex:PATTERN, json, contains; saved with the run and reused
    judge: str = ""  # a chat model (folder or hub id) that says which of two answers is better; "": none
    judge_pair: tuple[str, ...] = ()  # the two models it compares (scorecard names); empty: fine-tuned and base
    seed: int = 0  # of the row sample


@dataclass(frozen=True)
class Candidate:
    """One model to score: base, tuned (the run's final weights), checkpoint, gguf or other."""

    name: str
    kind: str
    path: str = ""
    step: int | None = None


def run_evaluation(run_dir: Path, spec: EvalSpec, sink: Sink = lambda e: None,
                   stop: threading.Event | None = None) -> EvalResult:
    """Score every chosen model on the chosen rows; the saved result (partial when stopped)."""
    from studio.runs import lock_run

    _check_spec(spec)
    with lock_run(run_dir, "evaluation"):
        for folder in remove_stale_parts(run_dir):
            sink(Event("stage", message=f"Removed {folder.name}: what an evaluation that was killed had left"))
        return _evaluate(run_dir, spec, sink, stop or threading.Event())


def _check_spec(spec: EvalSpec) -> None:
    unknown = [m for m in spec.models if m not in MODEL_CHOICES]
    if unknown:
        raise ConfigError(f"Unknown model choice {unknown[0]!r}: choose from {', '.join(MODEL_CHOICES)}.")
    if spec.metric not in METRICS and not spec.metric.startswith("check:"):
        raise ConfigError(f"Unknown metric {spec.metric!r}: choose from {', '.join(METRICS)} or check:NAME.")
    if spec.batch_size < 1:
        raise ConfigError("The batch size must be 1 or more.")
    if not (spec.models or spec.other or spec.ggufs):
        raise ConfigError("Choose at least one model to evaluate.")
    if spec.max_new_tokens < 0:
        raise ConfigError("max_new_tokens must be 1 or more (0: the run's generation.max_new_tokens).")
    if spec.judge_pair and len(spec.judge_pair) != 2:
        raise ConfigError(f"The judge compares two models; judge_pair names {len(spec.judge_pair)}.")
    other_keys = [o for o in spec.overrides if not o.startswith("generation.")]
    if other_keys:
        raise ConfigError(f"{other_keys[0]!r}: an evaluation changes generation.* settings only (the weights and "
                          "data are the run's). See `launch.py keys generation`.")


def _evaluate(run_dir: Path, spec: EvalSpec, sink: Sink, stop: threading.Event) -> EvalResult:
    from studio.runs import load_run_config, read_template

    longest = [f"generation.max_new_tokens={spec.max_new_tokens}"] if spec.max_new_tokens else []
    cfg = apply_overrides(load_run_config(run_dir), [*spec.overrides, *longest])
    template, tokenizer = read_template(run_dir), run_tokenizer(run_dir, cfg)
    checks = _checks(run_dir, spec)
    rowset = select_rows(run_dir, cfg, tokenizer, template, spec.rows, spec.limit, spec.seed)
    candidates = plan(run_dir, spec)
    pair = _judge_pair(spec, [c.name for c in candidates])
    folder = new_eval_folder(run_dir)
    _write_rows(folder, rowset.rows)
    sink(Event("stage", message=f"Evaluating {len(candidates)} models on {rowset.description}",
               extra={"folder": str(folder), "metric": spec.metric}))
    scored: list[ModelRow] = []
    texts: dict[str, list[str]] = {}
    with (folder / "generations.jsonl").open("a", encoding="utf-8") as out:
        for name, answers in _all_answers(run_dir, cfg, tokenizer, template, rowset.rows, candidates, spec, sink, stop):
            texts[name] = [output.text for output in answers.outputs]
            scored.append(_score(name, candidates, answers, rowset.rows, checks, out))
            sink(Event("stage", message=f"{name}: scored {scored[-1].rows} rows",
                       extra={"model": asdict(scored[-1])}))
            if stop.is_set():
                break
    judgement = _judge(spec.judge, pair, texts, rowset.rows, folder, sink, stop) if pair and not stop.is_set() else None
    partial = stop.is_set() or len(scored) < len(candidates) or any(m.rows < len(rowset.rows) for m in scored)
    card = build_scorecard(scored, spec.metric, eval_curve(run_dir), partial)
    meta = {"run": str(run_dir), "rows": rowset.description, "source": rowset.source, "spec": asdict(spec),
            "generation": asdict(cfg.generation), "checks": [c.name for c in checks], "created": time.time()}
    if judgement is not None:
        meta["judge"] = judgement.to_json()
        card = replace(card, verdict=[*card.verdict, judgement.summary()],
                       warnings=[*card.warnings, *filter(None, [judgement.warning()])])
    result = EvalResult.finish(folder, meta, card)
    sink(Event("stage", message=("Stopped: partial results kept in " if partial else "Saved ") + str(result.folder),
               extra={"folder": str(result.folder)}))
    return result


def _judge_pair(spec: EvalSpec, names: list[str]) -> tuple[str, str] | None:
    """The two models the judge compares (checked, with the judge's tokenizer, before anything is generated)."""
    if not spec.judge:
        return None
    from studio.models import load_tokenizer

    pair = tuple(spec.judge_pair) or (("fine-tuned", "base") if {"fine-tuned", "base"} <= set(names) else
                                      tuple(names[:2]))
    missing = [name for name in pair if name not in names]
    if len(pair) < 2 or missing:
        raise ConfigError(f"The judge compares two of the models evaluated ({', '.join(names) or 'none'}); "
                          + (f"{missing[0]!r} is not one of them." if missing else "choose at least two."))
    require_chat_template(spec.judge, load_tokenizer(spec.judge))
    return pair


def _judge(judge_model: str, pair: tuple[str, str], texts: dict[str, list[str]], rows: list[EvalRow], folder: Path,
           sink: Sink, stop: threading.Event) -> Judgement:
    """The judge's choice between the pair's answers on every row, in both orders; saved in judge.jsonl."""
    first, second = pair
    sink(Event("stage", message=f"Judging {first} against {second} with {judge_model} (each row asked twice, the "
                                "answers' places swapped)"))
    judge = Judge.load(judge_model)
    try:
        judgement = judge.compare(rows, (first, texts[first]), (second, texts[second]), stop,
                                  lambda done, total: _progress(sink, "judge", done, total, "judged"))
    finally:
        judge.close()
    with (folder / "judge.jsonl").open("w", encoding="utf-8") as fh:
        for index, (shown_first, shown_second) in enumerate(judgement.verdicts):
            fh.write(json.dumps({"row": index, "first": first, "second": second, "when_first_is_a": shown_first,
                                 "when_second_is_a": shown_second}) + "\n")
    sink(Event("stage", message=judgement.summary()))
    return judgement


def run_tokenizer(run_dir: Path, cfg: RunConfig):
    """The tokenizer saved with the run's weights (the one training used, pad token set)."""
    from transformers import AutoTokenizer

    from studio.runs import weights_dir

    tokenizer = AutoTokenizer.from_pretrained(weights_dir(run_dir), trust_remote_code=cfg.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _checks(run_dir: Path, spec: EvalSpec):
    """Checks given now replace the run's saved ones (defined once, reused by every later evaluation)."""
    path = run_dir / "evals" / "checks.json"
    if spec.checks:
        checks = [parse_check(text) for text in spec.checks]
        save_checks(path, checks)
        return checks
    return load_checks(path)


def plan(run_dir: Path, spec: EvalSpec) -> list[Candidate]:
    """The models to score, in scorecard order: base, fine-tuned, checkpoints (oldest first), GGUFs, other."""
    from studio.train.checkpoints import checkpoint_problem, checkpoint_step

    found: list[Candidate] = []
    if "base" in spec.models:
        found.append(Candidate("base", "base"))
    if "tuned" in spec.models:
        found.append(Candidate("fine-tuned", "tuned"))
    if "checkpoints" in spec.models:
        folders = [p for p in (run_dir / "checkpoints").glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
        for folder in sorted(folders, key=checkpoint_step):
            if checkpoint_problem(folder) is None:
                found.append(Candidate(folder.name, "checkpoint", str(folder), checkpoint_step(folder)))
    ggufs = spec.ggufs or (sorted(str(p) for p in (run_dir / "exports").glob("*.gguf")) if "gguf" in spec.models else ())
    found += [Candidate(Path(g).name, "gguf", str(g)) for g in ggufs]
    if spec.other:
        found.append(Candidate(f"other: {Path(spec.other).name}", "other", spec.other))
    if not found:
        raise StudioError(f"{run_dir.name}: none of the chosen models exist (no checkpoints or GGUF files yet?).")
    return found


# ---------------------------------------------------------------- answering


@dataclass
class Answers:
    """What one model produced for the rows it reached (all of them unless stopped)."""

    outputs: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    seconds: float = 0.0  # generation time alone, for rows/s


def _all_answers(run_dir, cfg, tokenizer, template, rows, candidates, spec, sink, stop) -> Iterator[tuple[str, Answers]]:
    hf = [c for c in candidates if c.kind in ("base", "tuned", "checkpoint")]
    if hf:
        with _run_model(run_dir, cfg) as model:
            for candidate in hf:
                with _variant(model, cfg, candidate) as (variant, own_tokenizer):
                    yield candidate.name, _answer_hf(variant, own_tokenizer or tokenizer, template, rows, cfg,
                                                     spec.batch_size, candidate.name, sink, stop)
                if stop.is_set():
                    return
    for candidate in (c for c in candidates if c.kind == "gguf"):
        yield candidate.name, _answer_gguf(Path(candidate.path), tokenizer, template, rows, cfg, candidate.name, sink, stop)
        if stop.is_set():
            return
    for candidate in (c for c in candidates if c.kind == "other"):
        yield candidate.name, _answer_other(candidate.path, rows, cfg, spec.batch_size, candidate.name, sink, stop)


@contextlib.contextmanager
def _run_model(run_dir: Path, cfg: RunConfig):
    from studio.hardware import free_accelerator_memory
    from studio.models import load_trained

    model, _ = load_trained(run_dir, cfg.model)
    try:
        yield model.eval()
    finally:
        del model
        free_accelerator_memory()


@contextlib.contextmanager
def _variant(model, cfg: RunConfig, candidate: Candidate):
    """The run's model as `candidate`: adapter off, the final adapter, or a checkpoint's adapter beside it."""
    if not hasattr(model, "disable_adapter"):  # a full fine-tune: other weights mean another model
        if candidate.kind == "tuned":
            yield model, None
            return
        from studio.models import load_model

        other, tokenizer = load_model(cfg.model if candidate.kind == "base" else replace(cfg.model, name_or_path=candidate.path))
        yield other.eval(), (tokenizer if candidate.kind == "base" else None)
        return
    if candidate.kind == "base":
        with model.disable_adapter():
            yield model, None
        return
    if candidate.kind == "checkpoint":
        model.load_adapter(candidate.path, adapter_name=candidate.name)
        model.set_adapter(candidate.name)
    try:
        yield model, None
    finally:
        if candidate.kind == "checkpoint":
            model.set_adapter("default")
            model.delete_adapter(candidate.name)


def _answer_hf(model, tokenizer, template, rows: list[EvalRow], cfg: RunConfig, batch_size: int, name: str,
               sink: Sink, stop: threading.Event) -> Answers:
    answers = Answers()
    started = time.perf_counter()
    for batch in gen_lib.generate_hf(model, tokenizer, template, rows, cfg.generation, batch_size):
        answers.outputs += batch
        _progress(sink, name, len(answers.outputs), len(rows), "answering")
        if stop.is_set():
            break
    answers.seconds = time.perf_counter() - started
    for losses in gen_lib.reference_losses_hf(model, tokenizer, template, rows[: len(answers.outputs)],
                                              cfg.train.max_length, batch_size):
        answers.losses += losses
    return answers


def _answer_gguf(path: Path, tokenizer, template, rows: list[EvalRow], cfg: RunConfig, name: str, sink: Sink,
                 stop: threading.Event) -> Answers:
    n_ctx = gen_lib.gguf_context(tokenizer, template, rows, cfg.generation, cfg.train.max_length)
    llm = gen_lib.open_gguf_for_scoring(path, n_ctx)
    answers = Answers()
    try:
        started = time.perf_counter()
        for row in rows:
            output, loss = gen_lib.score_row_gguf(llm, tokenizer, template, row, cfg.generation, cfg.train.max_length)
            answers.outputs.append(output)
            answers.losses.append(loss)
            _progress(sink, name, len(answers.outputs), len(rows), "answering")
            if stop.is_set():
                break
        answers.seconds = time.perf_counter() - started
    finally:
        llm.close()
    return answers


def _answer_other(folder: str, rows: list[EvalRow], cfg: RunConfig, batch_size: int, name: str, sink: Sink,
                  stop: threading.Event) -> Answers:
    """Another chat model answers through its own chat template (its loss is on its own tokenization)."""
    from studio.hardware import free_accelerator_memory
    from studio.models import load_model
    from studio.data.templates import resolve_template

    model, tokenizer = load_model(ModelConfig(name_or_path=folder))
    try:
        return _answer_hf(model.eval(), tokenizer, resolve_template("auto", tokenizer), rows, cfg, batch_size, name,
                          sink, stop)
    finally:
        del model
        free_accelerator_memory()


def _progress(sink: Sink, name: str, done: int, total: int, what: str) -> None:
    sink(Event("log", message=f"{name}: {what} {done}/{total} rows", step=done, max_steps=total,
               extra={"model": name}))


# ---------------------------------------------------------------- scoring and saving


def _score(name: str, candidates: list[Candidate], answers: Answers, rows: list[EvalRow], checks, out) -> ModelRow:
    candidate = next(c for c in candidates if c.name == name)
    done = len(answers.outputs)
    losses = answers.losses + [None] * (done - len(answers.losses))
    for index, (output, loss) in enumerate(zip(answers.outputs, losses)):
        line = {"model": name, "row": index, "output": output.text, "stopped": output.stopped,
                "tokens": len(output.token_ids), **row_scores(output, rows[index].reference, loss, checks)}
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
    out.flush()
    os.fsync(out.fileno())
    scores = model_scores(answers.outputs, [r.reference for r in rows[:done]], losses, checks)
    speed = done / answers.seconds if answers.seconds else None
    return ModelRow(name, candidate.kind, candidate.step, done, scores, speed, candidate.path)


def _write_rows(folder: Path, rows: list[EvalRow]) -> None:
    with (folder / "rows.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
