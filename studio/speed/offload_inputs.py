"""Checkpointed layer inputs kept in CPU memory while the GPU computes (train.offload_layer_inputs).

    offload = LayerInputOffload()                 # one per run: a copy stream and the CPU memory it may hold
    offload_layer_inputs(model, offload)          # after the trainer switched gradient checkpointing on

With gradient checkpointing, the only activations a step keeps between its
forward and backward passes are each decoder layer's input: layers x rows x
length x hidden values (1 GiB on an 8B model at 2 x 2048 tokens in bf16,
0.5 GiB on a 1B model at 4 x 2048). Here each input is copied to pinned CPU
memory as soon as its layer starts, on a stream of its own, so the copy runs
while the GPU computes the layer, and its GPU memory is free once the next
layer is done. In backward, as a layer takes its input back, the input of the
layer before it starts coming back on that stream, arriving while this layer
is recomputed and its gradients computed: the GPU waits for a copy only when
the copy is slower than a layer.

torch's own checkpoint does the recomputing, as before; this only hooks how it
keeps the inputs (saved-tensor hooks), so the random state, autocast and
gradients of keyword arguments are torch's. TRL's activation offload
(train.offload_activations) copies every tensor a step saves, the layer inputs
among them, so the two are not combined.

When CPU memory runs short (past `host_budget_bytes`: by default half of what
was free at the start, shared by the machine's training processes), or pinned
memory cannot be had, an input stays on the GPU as it would without offload.
"""

from __future__ import annotations

import functools
import weakref

import torch
from transformers import TrainerCallback

from studio.hardware import sharded_training

# Smaller saved inputs stay where they are: a copy costs more than the memory it frees.
MIN_BYTES = 1 << 20


def offloads_layer_inputs(cfg, on_gpu: bool) -> bool:
    """Whether a run keeps its layer inputs in CPU memory: train.offload_layer_inputs, auto decided here."""
    t = cfg.train
    if not t.gradient_checkpointing or t.offload_activations:
        return False  # nothing kept to offload / TRL's offload keeps them in CPU memory already
    if t.offload_layer_inputs != "auto":
        return t.offload_layer_inputs
    return on_gpu and not sharded_training()  # FSDP and DeepSpeed place tensors their own way (not measured)


class OffloadLayerInputs(TrainerCallback):
    """Switches the offload on when training begins: after the trainer has turned gradient checkpointing on."""

    def __init__(self) -> None:
        self.offload = LayerInputOffload()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            offload_layer_inputs(model, self.offload)


class LayerInputOffload:
    """Saved-tensor hooks that keep large tensors in (pinned) CPU memory, with the one saved before each
    brought back ahead of its use. Works on the CPU as well (plain copies), which is how it is tested."""

    def __init__(self, min_bytes: int | None = None, host_budget_bytes: int | None = None) -> None:
        self.min_bytes = MIN_BYTES if min_bytes is None else min_bytes
        self.host_budget_bytes = _half_of_free_memory() if host_budget_bytes is None else host_budget_bytes
        self.held_bytes = 0  # CPU memory the live copies hold
        self.offloaded = 0  # tensors copied out so far (a count for tests and notes)
        self._stream = None
        self._newest: weakref.ref | None = None

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def pack(self, tensor: torch.Tensor):
        size = tensor.numel() * tensor.element_size()
        if size < self.min_bytes or tensor.device.type not in ("cuda", "cpu") or \
                self.held_bytes + size > self.host_budget_bytes:
            return tensor
        newest = self._newest() if self._newest is not None else None
        try:
            saved = _HostCopy(self, tensor, previous=newest if newest is not None and not newest.used else None)
        except RuntimeError:  # no pinned memory to be had: this run keeps its inputs on the GPU from now on
            self.host_budget_bytes = 0
            return tensor
        self._newest = weakref.ref(saved)
        self.offloaded += 1
        return saved

    def unpack(self, saved):
        if not isinstance(saved, _HostCopy):
            return saved
        tensor = saved.take()
        previous = saved.previous() if saved.previous is not None else None
        if previous is not None and not previous.used:
            previous.fetch()  # the next layer backward needs, while this one is recomputed
        return tensor

    def stream(self):
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream


class _HostCopy:
    """One saved tensor in CPU memory, and its way back to the device it came from."""

    def __init__(self, owner: LayerInputOffload, tensor: torch.Tensor, previous: _HostCopy | None) -> None:
        self.owner = owner
        self.device = tensor.device
        self.size = tensor.numel() * tensor.element_size()
        self.previous = weakref.ref(previous) if previous is not None else None
        self.used = False  # unpacked at least once: the backward order has passed it
        self.fetched: torch.Tensor | None = None
        self.ready = None
        if tensor.is_cuda:
            self.host = torch.empty_like(tensor, device="cpu", pin_memory=True)
            compute, stream = torch.cuda.current_stream(tensor.device), owner.stream()
            stream.wait_stream(compute)  # the tensor is computed before it is copied
            with torch.cuda.stream(stream):
                self.host.copy_(tensor, non_blocking=True)
            tensor.record_stream(stream)  # its memory is not reused until the copy has read it
        else:
            self.host = tensor.detach().clone()
        owner.held_bytes += self.size

    def fetch(self) -> None:
        """Start the copy back to the device (returns at once on a GPU)."""
        if self.fetched is not None:
            return
        if self.device.type != "cuda":
            self.fetched = self.host.clone()
            return
        # Allocated on the compute stream, whose earlier work may still use that memory: the copy waits for it.
        self.fetched = torch.empty_like(self.host, device=self.device)
        stream = self.owner.stream()
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self.fetched.copy_(self.host, non_blocking=True)
            self.ready = stream.record_event()

    def take(self) -> torch.Tensor:
        """The tensor on its device, for the compute stream to use."""
        self.fetch()
        if self.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(self.ready)
        tensor, self.fetched, self.ready = self.fetched, None, None
        self.used = True
        return tensor

    def __del__(self) -> None:
        if hasattr(self, "host"):  # counted once its copy exists
            self.owner.held_bytes -= self.size


def offload_layer_inputs(model: torch.nn.Module, offload: LayerInputOffload) -> int:
    """Have every checkpointed decoder layer of `model` keep its input through `offload`; returns how many do.

    Called once gradient checkpointing is on (the trainer switches it on as training starts): it wraps the
    checkpoint function transformers gave each layer."""
    from studio.speed.compiled import decoder_layers

    count = 0
    for layer in decoder_layers(model):
        checkpoint = getattr(layer, "_gradient_checkpointing_func", None)
        if not getattr(layer, "gradient_checkpointing", False) or checkpoint is None:
            continue
        if getattr(checkpoint, "offload", None) is not offload:
            layer._gradient_checkpointing_func = _offloading(getattr(checkpoint, "plain", checkpoint), offload)
        count += 1
    return count


def _offloading(checkpoint, offload: LayerInputOffload):
    @functools.wraps(checkpoint)
    def checkpoint_keeping_inputs_in_cpu_memory(function, *args, **kwargs):
        with offload.hooks():
            return checkpoint(function, *args, **kwargs)

    checkpoint_keeping_inputs_in_cpu_memory.offload = offload
    checkpoint_keeping_inputs_in_cpu_memory.plain = checkpoint
    return checkpoint_keeping_inputs_in_cpu_memory


def _half_of_free_memory() -> int:
    """Half the CPU memory free now, shared by the training processes of this machine."""
    import os

    import psutil

    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return psutil.virtual_memory().available // (2 * max(processes, 1))
