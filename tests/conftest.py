"""Shared fixtures: tiny real models built locally, and one short trained run.

Tests never download: the hub is switched off, and STUDIO_HOME points at a
temporary folder so caches and models never touch the project's data/.
"""

import os
import sys
import threading
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import build_model  # noqa: E402

SAMPLE_DATA = ROOT / "assets" / "sample_instructions.jsonl"


@pytest.fixture(scope="session", autouse=True)
def studio_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("studio_home")
    os.environ["STUDIO_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> Path:
    return build_model("qwen2", tmp_path_factory.mktemp("tiny") / "qwen2")


def tiny_config(model_path: Path, *overrides: str):
    """A small, fast run config on a tiny model (10 steps, high LR so the change is visible)."""
    from studio.recipes import apply_overrides, from_dict

    cfg = from_dict({
        "name": "tiny",
        "model": {"name_or_path": str(model_path)},
        "data": {"path": str(SAMPLE_DATA), "max_samples": 64},
        "lora": {"r": 8, "alpha": 16},
        "train": {"max_steps": 10, "batch_size": 4, "grad_accum": 1, "learning_rate": 3e-3, "warmup_steps": 0,
                  "max_length": 128, "save_steps": 5, "gradient_checkpointing": False},
        "generation": {"max_new_tokens": 12},
    })
    return apply_overrides(cfg, list(overrides))


def train_tiny(cfg, runs_dir: Path, stop=None, sink=None):
    from studio.events import JsonlSink, fan_out
    from studio.runs import create_run_dir
    from studio.train.training import run_training

    run_dir = create_run_dir(cfg, runs_dir)
    sinks = [JsonlSink(run_dir / "events.jsonl")] + ([sink] if sink else [])
    return run_training(run_dir, fan_out(*sinks), stop or threading.Event())


@pytest.fixture(scope="session")
def trained_run(tiny_llama, tmp_path_factory) -> Path:
    """One 10-step LoRA run on the tiny Llama, shared by chat and export tests."""
    return train_tiny(tiny_config(tiny_llama), tmp_path_factory.mktemp("runs")).run_dir
