"""Export a run: adapter, merged 16-bit, merged 4-bit, verified GGUF files, Ollama Modelfiles.

Everything is written under a temporary name and renamed when complete (and,
for GGUF, verified), so a failure never leaves a file that looks finished.
Free disk is checked before anything is written.

    result = export_run(run_dir, gguf_types=("q4_k_m",), formats=(), sink=ConsoleSink())
    export_run(run_dir, ("q8_0",), checkpoint="checkpoint-40")   # a checkpoint's weights: <name>-checkpoint-40-q8_0.gguf

Run as:  python launch.py export runs/<run> --gguf q4_k_m f16 [--checkpoint checkpoint-40]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from studio.config import PROMPT_METHODS, ModelConfig, RunConfig
from studio.errors import ExportError
from studio.events import Event, Sink
from studio.export.gguf import CONVERTER_TYPES, GGUF_PRECISION, QUANTIZER_FTYPES, convert_to_gguf, quantize_gguf
from studio.hardware import free_accelerator_memory
from studio.models import count_parameters, hf_folder, load_model
from studio.export.ollama import write_modelfile
from studio.export.references import reference_answers
from studio.runs import check_free_disk, load_run_config, lock_run, read_status, read_template, weights_dir
from studio.data.templates import Template, stop_token_ids
from studio.export.verify import Check, GgufReport, verify_gguf

# Bytes per parameter of each output, for the disk preflight (k-quants are mixes).
BYTES_PER_PARAM = {"merged_16bit": 2.0, "merged_4bit": 0.6, "f16": 2.0, "bf16": 2.0, "q8_0": 1.07,
                   "q4_k_m": 0.62, "q5_k_m": 0.72, "q6_k": 0.83}
SMALL_MODEL_PARAMS = 1_000_000_000  # below this, "auto" exports q8_0


@dataclass
class ExportResult:
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    reports: list[GgufReport] = field(default_factory=list)
    state: str = "completed"  # or "stopped": the files listed are finished and verified, the rest was not made

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)


def export_run(run_dir: Path, gguf_types=(), formats=(), sink: Sink = lambda e: None, verify_tokens: int = 16,
               stop: threading.Event | None = None, checkpoint: str = "") -> ExportResult:
    """Produce the requested exports of a trained run in `run_dir/exports/` (the run is locked meanwhile).

    `checkpoint` ("checkpoint-N") exports that checkpoint's weights instead of the final ones.
    `stop` ends the export at the next stage: what was finished and verified
    stays, nothing half-made is left, and the result's state is "stopped".
    """
    stage = _stages(sink, stop or threading.Event())
    with lock_run(run_dir, "export"):
        try:
            return _export(run_dir, gguf_types, formats, stage, verify_tokens, checkpoint)
        except ExportStopped as stopped:
            sink(Event("stage", message="Export stopped: what was finished and verified is kept."))
            return replace(stopped.result, state="stopped")


class ExportStopped(Exception):
    def __init__(self, result: ExportResult) -> None:
        self.result = result


def _stages(sink: Sink, stop: threading.Event):
    """`stage(message, result)`: report the next stage, or end the export here when Stop was pressed."""
    def stage(message: str, result: ExportResult, **extra) -> None:
        if stop.is_set():
            raise ExportStopped(result)
        sink(Event("stage", message=message, extra=extra))
    return stage


def _export(run_dir: Path, gguf_types, formats, stage, verify_tokens: int, checkpoint: str) -> ExportResult:
    cfg = load_run_config(run_dir)
    weights = export_weights(run_dir, checkpoint)
    gguf_types = tuple(recommended_gguf_type(run_dir) if t == "auto" else t for t in gguf_types)
    note = ""
    if cfg.train.method in PROMPT_METHODS:
        gguf_types, formats, note = _adapter_only(cfg, gguf_types, formats)
    unknown = [t for t in gguf_types if t not in CONVERTER_TYPES + tuple(QUANTIZER_FTYPES)]
    if unknown:
        raise ExportError(f"Unknown GGUF type {unknown[0]!r}. Choose from: {', '.join(CONVERTER_TYPES + tuple(QUANTIZER_FTYPES))}.")
    template = read_template(run_dir)
    out_dir = run_dir / "exports"
    work = out_dir / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result = ExportResult(out_dir)
    prefix = f"{cfg.name}-{checkpoint}" if checkpoint else cfg.name
    try:
        if checkpoint:
            stage(f"Exporting {checkpoint} (not the final weights)", result)
        if note:
            stage(note, result, warning=True)
        if "adapter" in formats:
            stage("Copying the adapter", result)
            result.files.append(_export_adapter(run_dir, weights, out_dir / f"{prefix}-adapter"))
        needs_merge = bool(gguf_types) or "merged_16bit" in formats or "merged_4bit" in formats
        if not needs_merge:
            return result
        _check_disk(out_dir, _base_parameters(run_dir, cfg), gguf_types, formats)
        stage("Merging the adapter into 16-bit weights", result)
        merged = _merge(run_dir, weights, cfg, template, work / "merged-16bit")
        if "merged_4bit" in formats:
            stage("Writing merged 4-bit (bitsandbytes nf4) weights", result)
            result.files.append(_export_4bit(merged, out_dir / f"{prefix}-merged-4bit", cfg.model))
        if gguf_types:
            _export_ggufs(merged, cfg, template, gguf_types, out_dir, work, prefix, verify_tokens, stage, result)
        if "merged_16bit" in formats:
            result.files.append(_publish(merged, out_dir / f"{prefix}-merged-16bit"))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):  # refused or stopped before any file: no empty exports/ folder
            out_dir.rmdir()
        free_accelerator_memory()


def export_weights(run_dir: Path, checkpoint: str = "") -> Path:
    """The weights to export: the run's final adapter/ or model/, or the folder of `checkpoint` (checkpoint-N)."""
    from studio.train.checkpoints import checkpoint_problem

    if not checkpoint:
        return weights_dir(run_dir)
    kept = run_checkpoints(run_dir, whole=False)
    if checkpoint not in kept:
        raise ExportError(f"{run_dir.name} has no {checkpoint!r}. Its checkpoints: {', '.join(kept) or 'none'} "
                          "(older ones are removed as train.save_total_limit says).")
    folder = run_dir / "checkpoints" / checkpoint
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise ExportError(f"{checkpoint} of {run_dir.name} cannot be exported: {problem}.")
    return folder


def run_checkpoints(run_dir: Path, whole: bool = True) -> list[str]:
    """Names of the run's checkpoints (checkpoint-N), oldest first; with `whole`, only those that can be exported."""
    from studio.train.checkpoints import checkpoint_problem, checkpoint_step

    folders = [p for p in (run_dir / "checkpoints").glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    return [p.name for p in sorted(folders, key=checkpoint_step) if not whole or checkpoint_problem(p) is None]


def is_adapter(weights: Path) -> bool:
    """A LoRA adapter (merged into its base on export), not whole weights."""
    return (weights / "adapter_config.json").is_file()


def _adapter_only(cfg: RunConfig, gguf_types, formats) -> tuple[tuple, tuple, str]:
    """A learned prompt cannot be merged into the weights: its export is the adapter, with a note saying why."""
    left_out = [*gguf_types, *(f for f in formats if f != "adapter")]
    note = (f"No {', '.join(left_out)}: train.method={cfg.train.method} learns a prompt put in front of the "
            "model, which cannot be merged into its weights, and llama.cpp cannot load such an adapter. The "
            "adapter is exported instead: load it with PEFT on top of the base model (PeftModel.from_pretrained), "
            "or chat with it in the studio." if left_out else "")
    return (), ("adapter",), note


def recommended_gguf_type(run_dir: Path) -> str:
    """The GGUF type whose report card passes for a model of this size ("auto" in export.gguf).

    4-bit k-quants lose the fine-tune of small models: on Gemma 3 270M q4_k_m answered like the base model
    on 7 of 9 prompts while saving 13% of q8_0's size (results/gguf-cards-builtin-cpu.md).
    """
    n_params = _base_parameters(run_dir, load_run_config(run_dir))
    return "q8_0" if 0 < n_params < SMALL_MODEL_PARAMS else "q4_k_m"


def _base_parameters(run_dir: Path, cfg: RunConfig) -> int:
    weights = weights_dir(run_dir)
    source = weights if weights.name == "model" else hf_folder(cfg.model.name_or_path)
    return count_parameters(source) if isinstance(source, Path) else 0  # a hub id: counted after download


def _check_disk(out_dir: Path, n_params: int, gguf_types, formats) -> None:
    """Refuse before writing when the outputs (plus the merge and f16 intermediates) cannot fit."""
    # The 16-bit merge every export starts from, and the f16 file every k-quant is made from.
    needed = 2 * BYTES_PER_PARAM["f16"] * n_params
    needed += sum(BYTES_PER_PARAM[t] * n_params for t in (*gguf_types, *formats) if t in BYTES_PER_PARAM)
    check_free_disk(out_dir, needed, "these exports (fewer types need less)")


# What a checkpoint holds beside the weights: the trainer's state, needed to resume, not to use the model.
TRAINER_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json", "training_args.bin")


def _export_adapter(run_dir: Path, weights: Path, target: Path) -> Path:
    if not is_adapter(weights):
        raise ExportError(f"{run_dir.name} was fully fine-tuned: it has no adapter to export. Export merged_16bit "
                          "or GGUF instead.")
    tmp = target.with_name(target.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(weights, tmp, ignore=shutil.ignore_patterns(*TRAINER_FILES))
    shutil.copy(run_dir / "template.jinja", tmp / "template.jinja")
    return _publish(tmp, target)


def _merge(run_dir: Path, weights: Path, cfg: RunConfig, template: Template, target: Path) -> Path:
    """Base weights + adapter (or a full fine-tune's weights), saved as 16-bit safetensors with tokenizer and template."""
    import torch
    from peft import PeftModel

    adapter = is_adapter(weights)
    # Always merge into unquantized weights: a bitsandbytes model cannot become a GGUF.
    model, tokenizer = load_model(replace(cfg.model, name_or_path=cfg.model.name_or_path if adapter else str(weights),
                                          load_in="16bit", dtype="auto"))
    if adapter:
        model = PeftModel.from_pretrained(model, weights).merge_and_unload()
    model = model.to(torch.bfloat16)
    refuse_non_finite(model, run_dir)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    tokenizer.chat_template = template.jinja
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    _copy_notice(cfg, target)
    del model
    return target


def refuse_non_finite(model, run_dir: Path) -> None:
    """A model with NaN or Inf weights answers nothing in llama.cpp: refuse it before any file is written."""
    import torch

    bad = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ExportError(
            f"{run_dir.name}: {len(bad)} of the merged weight tensors hold NaN or Inf values ({shown}): the run "
            "diverged. No merged or GGUF file was written. Retrain with a lower train.learning_rate (and "
            "train.max_grad_norm > 0), or export an earlier checkpoint of the run."
        )


def _copy_notice(cfg: RunConfig, target: Path) -> None:
    """Derivatives of licensed models carry the licence notice along."""
    source = hf_folder(cfg.model.name_or_path)
    if isinstance(source, Path) and (source / "NOTICE").is_file():
        shutil.copy(source / "NOTICE", target / "NOTICE")


def _export_4bit(merged: Path, target: Path, base: ModelConfig) -> Path:
    model, tokenizer = load_model(ModelConfig(name_or_path=str(merged), load_in="4bit",
                                              trust_remote_code=base.trust_remote_code))
    tmp = target.with_name(target.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del model
    return _publish(tmp, target)


def _export_ggufs(merged, cfg, template, gguf_types, out_dir, work, prefix, verify_tokens, stage, result) -> None:
    stage("Asking the fine-tuned and the base model the report card's prompts", result)
    references = reference_answers(cfg, merged, template, verify_tokens)
    tokenizer = references.tokenizer
    fallback = "qwen2" if json.loads((merged / "config.json").read_text())["model_type"] == "qwen2" else "gpt-2"
    f16 = None
    # Most precise first: a type that loses the fine-tune can then name the closest one that kept it.
    for gguf_type in sorted(gguf_types, key=GGUF_PRECISION.index, reverse=True):
        tmp = work / f"{prefix}-{gguf_type}.gguf"
        if gguf_type in CONVERTER_TYPES:
            stage(f"Converting to GGUF {gguf_type} (llama.cpp converter)", result)
            convert_to_gguf(merged, tmp, gguf_type, fallback)
        else:
            if f16 is None:
                stage("Converting to GGUF f16 (input of the quantizer)", result)
                f16 = work / "intermediate-f16.gguf"
                convert_to_gguf(merged, f16, "f16", fallback)
            stage(f"Quantizing to {gguf_type} (llama.cpp quantizer)", result)
            quantize_gguf(f16, tmp, gguf_type)
        stage(f"Verifying {gguf_type} in llama.cpp", result)
        report = verify_gguf(tmp, gguf_type, references, tokenizer, template)
        report.checks += _run_checks(out_dir.parent)
        if report.fine_tune_lost:
            report.use_instead = closest_type_that_kept(gguf_type, result.reports)
        final = out_dir / tmp.name
        report.path = str(final)
        report.save(out_dir / f"{prefix}-{gguf_type}.report.json")
        result.reports.append(report)
        stage(report.summary(), result, report=report)
        if not report.passed:
            tmp.unlink()
            continue
        os.replace(tmp, final)
        result.files.append(final)
        if cfg.export.ollama_modelfile:
            result.files.append(write_modelfile(final, template, tokenizer))


def _run_checks(run_dir: Path) -> list[Check]:
    """What the card must say about the run itself: a diverged run's weights are a fallback, not its result."""
    status = read_status(run_dir)
    if status.get("state") != "diverged":
        return []
    return [Check("run", "warn", f"the run diverged at step {status.get('step')}: these are the weights of its "
                                 "newest checkpoint from before the values went bad, not a finished fine-tune")]


def closest_type_that_kept(gguf_type: str, reports: list[GgufReport]) -> str:
    """The least precise of the more precise types that passed in this export; else q8_0 (or f16 above it)."""
    rank = GGUF_PRECISION.index
    kept = [r.gguf_type for r in reports if r.passed and rank(r.gguf_type) > rank(gguf_type)]
    if kept:
        return min(kept, key=rank)
    return "q8_0" if rank(gguf_type) < rank("q8_0") else "f16"


def _publish(tmp: Path, target: Path) -> Path:
    """Move a finished folder into place, replacing an older export of the same name."""
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(tmp), target)
    return target
