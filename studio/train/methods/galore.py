"""galore: sft of every weight, with GaLore's optimizer (the galore-torch package, through transformers).

GaLore keeps each targeted weight matrix's optimizer state in a low-rank
projection of its gradient, refreshed every `galore.update_interval` steps,
so full fine-tuning needs about the optimizer memory of LoRA. The objective
and the data are sft's.
"""

from __future__ import annotations

import re
from pathlib import Path

from studio.config import RunConfig
from studio.errors import ConfigError
from studio.train.methods import sft


def make_trainer(cfg: RunConfig, output_dir: Path, model, tokenizer, train_dataset, eval_dataset=None,
                 callbacks=(), **overrides):
    g = cfg.galore
    if not _galore_installed():
        raise ConfigError("train.method=galore needs the galore-torch package: pip install -r requirements.txt.")
    options = {
        "optim": f"galore_{g.optimizer}" + ("_layerwise" if g.layerwise else ""),
        # One pattern of the names: a module whose name contains one of them; transformers then takes its
        # linear layers without a warning for every block around them that the names also match.
        "optim_target_modules": ".*(" + "|".join(map(re.escape, g.target_modules)) + ").*",
        "optim_args": f"rank={g.rank},update_proj_gap={g.update_interval},scale={g.scale}",
    }
    if g.layerwise:
        options["max_grad_norm"] = 0.0  # each layer steps inside the backward pass: no whole gradient to clip
    options.update(overrides)
    return sft.make_trainer(cfg, output_dir, model, tokenizer, train_dataset, eval_dataset, callbacks, **options)


def _galore_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("galore_torch") is not None
