"""Check the CUDA paths of the pipeline on a GPU machine, with no download.

Builds a small random-initialised Llama (hidden 1024, 8 layers, a byte-level
tokenizer trained on the sample data), then runs the studio's own training
for LoRA on 16-bit weights and QLoRA on 4-bit nf4 weights, stop + resume,
chat with the adapter on and off, and a merged 4-bit export. Prints one JSON
line per check and writes them to OUT/cuda_check.json.

Run as:  python scripts/cuda_check.py [OUT]
"""

import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def build(target: Path) -> Path:
    import torch
    from tiny import build_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = build_tokenizer("llama")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def train(model_dir: Path, runs: Path, *overrides: str, stop_at: int | None = None):
    import torch
    from studio.recipes import apply_overrides, from_dict
    from studio.events import MemorySink
    from studio.runs import create_run_dir
    from studio.train.training import run_training

    cfg = from_dict({"name": "cuda", "model": {"name_or_path": str(model_dir)},
                     "data": {"path": str(ROOT / "assets" / "sample_instructions.jsonl")},
                     "train": {"max_steps": 20, "batch_size": 8, "grad_accum": 1, "learning_rate": 1e-3,
                               "max_length": 256, "save_steps": 10}})
    cfg = apply_overrides(cfg, list(overrides))
    run_dir = create_run_dir(cfg, runs)
    sink, stop = MemorySink(), threading.Event()

    def send(event):
        sink(event)
        if stop_at is not None and event.kind == "log" and event.step == stop_at:
            stop.set()

    torch.cuda.reset_peak_memory_stats()
    started = time.time()
    result = run_training(run_dir, send, stop)
    logs = [e for e in sink.events() if e.kind == "log"]
    return run_dir, {
        "overrides": list(overrides), "state": result.state, "step": result.step, "seconds": round(time.time() - started, 1),
        "first_loss": logs[0].loss, "last_loss": logs[-1].loss, "optimizer": cfg.train.optimizer,
        "tokens_per_second_median": sorted(e.tokens_per_second for e in logs)[len(logs) // 2],
        "memory_last": logs[-1].memory,
    }


def main(out: Path) -> None:
    import torch
    from studio.chat.session import ChatSession
    from studio.recipes import replace_section
    from studio.runs import load_run_config
    from studio.events import MemorySink
    from studio.export.exporting import export_run
    from studio.train.training import run_training

    work = Path("/tmp/cuda_check")
    model_dir = build(work / "model")
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}

    run, results["lora_16bit"] = train(model_dir, work / "runs")
    _, results["qlora_4bit"] = train(model_dir, work / "runs", "model.load_in=4bit")
    _, results["qlora_8bit_paged"] = train(model_dir, work / "runs", "model.load_in=8bit",
                                           "train.optimizer=paged_adamw_8bit", "train.max_steps=6")

    stopped, results["stop"] = train(model_dir, work / "runs", "model.load_in=4bit", stop_at=5)
    resumed = run_training(stopped, MemorySink(), threading.Event(), resume=True)
    results["resume"] = {"state": resumed.state, "step": resumed.step}

    cfg = load_run_config(run)
    session = ChatSession.open(run, cfg=replace_section(cfg, "generation", max_new_tokens=16))
    prompt = [{"role": "user", "content": "What is the capital of Peru?"}]
    results["chat"] = {"tuned": "".join(session.stream(prompt, "tuned")), "base": "".join(session.stream(prompt, "base"))}
    session.close()

    exported = export_run(run, formats=("adapter", "merged_4bit"))
    results["export"] = [str(p.name) for p in exported.files]
    (out / "cuda_check.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
