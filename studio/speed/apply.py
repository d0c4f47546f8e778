"""The speed and memory measures applied to a model before training: one place, used by train and bench alike.

    model, tokenizer = load_model(cfg.model)
    model = prepare_for_training(model, cfg, note=print)
"""

from __future__ import annotations

import torch

from studio.config import PROMPT_METHODS, RunConfig
from studio.hardware import has_cuda
from studio.models import attach_lora, attach_prompt_encoder
from studio.speed.compiled import compile_decoder_layers, compiles_layers
from studio.speed.embeddings import keep_input_embeddings_on_cpu
from studio.speed.fused import setup_fused_lora
from studio.speed.long_rows import slice_feed_forward
from studio.speed.offload_inputs import offloads_layer_inputs


def prepare_for_training(model, cfg: RunConfig, note=lambda text: None):
    """Place the embeddings, attach the adapter (fused where it can be), slice long feed-forward blocks,
    compile the decoder layers (train.compile_layers). The layer inputs' offload (train.offload_layer_inputs)
    starts with training, once the trainer has switched checkpointing on: only announced here."""
    if cfg.train.method in PROMPT_METHODS:
        torch.manual_seed(cfg.train.seed)
        model = attach_prompt_encoder(model, cfg.train.method, cfg.prompt_tuning)
    elif cfg.lora.enabled:
        if cfg.train.cpu_embeddings and keep_input_embeddings_on_cpu(model):
            table = model.get_input_embeddings().weight
            note(f"Input embeddings kept in CPU memory ({table.numel() * table.element_size() / 1024**3:.1f} GiB "
                 "of GPU memory spared).")
        torch.manual_seed(cfg.train.seed)  # the same adapter initialisation on every run of a recipe
        model = attach_lora(model, cfg.lora)
        setup_fused_lora(model, cfg, note)
    slice_feed_forward(model, cfg.train.feed_forward_slice)
    if compiles_layers(cfg, note):
        compile_decoder_layers(model, note, fall_back=cfg.train.compile_layers == "auto")
    if offloads_layer_inputs(cfg, has_cuda()):
        note("Layer inputs kept in CPU memory between the forward and backward passes "
             "(train.offload_layer_inputs; copied while the GPU computes).")
    return model
