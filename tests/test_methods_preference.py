"""dpo, orpo and kto on a tiny real model: each moves the model the intended way, asserted on numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, train_tiny

ROOT = Path(__file__).resolve().parent.parent
PAIRS_FILE = ROOT / "assets" / "sample_preferences.jsonl"
FEEDBACK_FILE = ROOT / "assets" / "sample_feedback.jsonl"


def preference_config(model: Path, method: str, *overrides: str):
    data = FEEDBACK_FILE if method == "kto" else PAIRS_FILE
    return tiny_config(model, f"train.method={method}", f"data.path={data}", "data.max_samples=32",
                       "train.max_steps=12", "train.save_steps=12", "train.learning_rate=5e-3", *overrides)


def training_pairs(cfg, tokenizer, template, n: int = 16):
    from studio.data.building import PAIRS, build_dataset

    pairs_cfg = cfg.data if cfg.train.method != "kto" else type(cfg.data)(**{**vars(cfg.data), "path": str(PAIRS_FILE)})
    return build_dataset(pairs_cfg, tokenizer, template, cfg.train.max_length, PAIRS, "dpo").train[:n]


def answer_logp(model, prompt: list[int], answer: list[int]) -> float:
    """log p(answer | prompt), summed over the answer's tokens."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    picked = logps.gather(1, targets[:, None])[:, 0]
    return float(picked[len(prompt) - 1:].sum())


def mean_margin(model, pairs) -> float:
    """Mean of log p(chosen) - log p(rejected) over the pairs."""
    return sum(answer_logp(model, p.prompt_ids, p.chosen_ids) - answer_logp(model, p.prompt_ids, p.rejected_ids)
               for p in pairs) / len(pairs)


def margins_before_and_after(run_dir: Path):
    from peft import PeftModel

    from studio.models import load_model
    from studio.runs import load_run_config, read_template

    cfg = load_run_config(run_dir)
    base, tokenizer = load_model(cfg.model)
    pairs = training_pairs(cfg, tokenizer, read_template(run_dir))
    before = mean_margin(base.eval(), pairs)
    tuned = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    return before, mean_margin(tuned, pairs)


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_each_preference_method_raises_the_chosen_minus_rejected_margin(method, tiny_llama, tmp_path):
    result = train_tiny(preference_config(tiny_llama, method), tmp_path)
    assert result.state == "completed" and result.step == 12
    before, after = margins_before_and_after(result.run_dir)
    assert after > before + 1.0, f"{method}: margin {before:.2f} -> {after:.2f}"
    logs = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    metrics = [e["extra"]["metrics"] for e in logs if e["kind"] == "log" and e.get("extra", {}).get("metrics")]
    assert metrics and "rewards/chosen" in metrics[-1], "the method's own curves reach the events"
    assert all(e["tokens_per_second"] > 0 for e in logs if e["kind"] == "log"), "both sides' tokens are counted"


def test_dpo_reference_is_the_adapter_switched_off_not_a_second_copy(tiny_llama, tmp_path):
    from peft import PeftModel

    from studio.data.building import PAIRS, build_dataset, to_hf_dataset
    from studio.data.templates import resolve_template
    from studio.train.training import load_for_training, make_trainer

    cfg = preference_config(tiny_llama, "dpo")
    model, tokenizer = load_for_training(cfg)
    built = build_dataset(cfg.data, tokenizer, resolve_template("alpaca", tokenizer), 128, PAIRS, "dpo")
    trainer = make_trainer(cfg, tmp_path / "out", model, tokenizer, to_hf_dataset(built.train, PAIRS))
    assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)
    # The reference scores are the base model's: the same weights with the adapter off.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)  # an adapter far from zero: the policy now differs from the base
    pair = built.train[0]
    with model.disable_adapter():
        reference = answer_logp(model, pair.prompt_ids, pair.chosen_ids)
    base, _ = __import__("studio.models", fromlist=["load_model"]).load_model(cfg.model)
    assert reference == pytest.approx(answer_logp(base.eval(), pair.prompt_ids, pair.chosen_ids), abs=1e-3)
    assert answer_logp(model, pair.prompt_ids, pair.chosen_ids) != pytest.approx(reference, abs=1e-3)


def test_the_preview_shows_both_sides_as_each_method_trains_them(tiny_llama):
    from studio.config import DataConfig
    from studio.data.building import LABELLED, PAIRS
    from studio.data.preview import preview_dataset
    from studio.data.templates import resolve_template
    from studio.models import load_tokenizer

    tok = load_tokenizer(str(tiny_llama))
    template = resolve_template("alpaca", tok)
    data = DataConfig(path=str(PAIRS_FILE))
    sft = preview_dataset(data, tok, template, 128)
    dpo = preview_dataset(data, tok, template, 128, shape=PAIRS, method="dpo")
    assert any(trained for _, trained, _ in dpo.tokens) and any(trained for _, trained, _ in dpo.rejected)
    assert not any(trained for _, trained, _ in sft.rejected), "sft does not train the rejected side"
    assert "".join(p for p, trained, _ in dpo.tokens if not trained) == "".join(
        p for p, trained, _ in dpo.rejected if not trained), "both sides share the prompt"
    assert len(dpo.rejected_lengths) == len(dpo.lengths) == dpo.rows
    kto = preview_dataset(DataConfig(path=str(FEEDBACK_FILE)), tok, template, 128, row=1, shape=LABELLED, method="kto")
    assert kto.format == "labelled" and kto.label is False and not kto.rejected


def test_bad_preference_data_is_named(tiny_llama, tmp_path):
    from studio.errors import DataError

    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"Wrong {i}."} for i in range(20)]
    rows[3] = {"prompt": "Question 3?", "chosen": "Answer 3."}  # the rejected side is missing
    rows[5]["rejected"] = rows[5]["chosen"]  # nothing to prefer
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = preference_config(tiny_llama, "dpo", f"data.path={path}", "train.max_steps=1")
    result = train_tiny(cfg, tmp_path / "runs")
    events = (result.run_dir / "events.jsonl").read_text()
    assert "pairs.jsonl:4: missing column 'rejected'" in events
    assert "pairs.jsonl:6: the chosen and the rejected answers are the same" in events

    with pytest.raises(DataError, match=r"train.method=dpo needs preference pairs"):
        train_tiny(tiny_config(tiny_llama, "train.method=dpo"), tmp_path / "runs")  # alpaca rows
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"prompt": "Hi?", "completion": "Hello.", "label": "maybe"}) + "\n")
    with pytest.raises(DataError, match=r"labels.jsonl:1: label must be true or false"):
        train_tiny(preference_config(tiny_llama, "kto", f"data.path={labels}", "data.max_bad_fraction=0"),
                   tmp_path / "runs")


def test_a_dpo_run_exports_a_verified_gguf(tiny_llama, tmp_path):
    from studio.export.exporting import export_run

    result = train_tiny(preference_config(tiny_llama, "dpo", "train.max_steps=4"), tmp_path)
    exported = export_run(result.run_dir, gguf_types=("q8_0",))
    (report,) = exported.reports
    assert exported.files[0].name.endswith("q8_0.gguf") and exported.files[0].is_file()
    checks = {c.name: c.status for c in report.checks}
    assert checks["loads"] == checks["tokenizer"] == checks["chat template"] == checks["eos"] == "pass", report.checks
