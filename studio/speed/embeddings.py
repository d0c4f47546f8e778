"""The input embedding table in CPU memory, for LoRA on CUDA: about 1 GiB of GPU memory spared on 8B models.

    keep_input_embeddings_on_cpu(model)                  # before the adapter is attached
    trainer.data_collator = feed_cpu_ids(model, collate)  # the data loader hands the ids over in CPU memory
"""

from __future__ import annotations

import torch


def keep_input_embeddings_on_cpu(model) -> bool:
    """Move a frozen input embedding table to CPU memory; only its lookups' results travel to the GPU.

    The table is big (vocab x hidden: 1 GiB on Llama 3.1 8B) but a lookup reads
    one row per token, so the CPU does it for free. Models whose output head
    shares the table (tied embeddings) keep it on the GPU, where the head needs
    it. Returns whether the table moved.
    """
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    device = embeddings.weight.device
    if device.type != "cuda" or head is None or head.weight.data_ptr() == embeddings.weight.data_ptr():
        return False
    model.set_input_embeddings(EmbeddingsInCpuMemory(embeddings, device))
    torch.cuda.empty_cache()
    return True


class EmbeddingsInCpuMemory(torch.nn.Module):
    """A frozen embedding table held outside the module tree, so moving the model leaves it in CPU memory.

    Trainers and adapter loaders move whole models to the GPU; the table is not a
    parameter of this module, only a zero-size anchor is, and the anchor tells
    the lookups where to send their rows.
    """

    def __init__(self, table: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.__dict__["table"] = table.to("cpu")  # a plain attribute: not a submodule, so never moved
        self.register_buffer("anchor", torch.empty(0, device=device), persistent=False)
        self.handed_ids: torch.Tensor | None = None
        self.lookups_without_waiting = 0

    @property
    def weight(self) -> torch.Tensor:
        return self.table.weight

    def hand_over(self, cpu_ids: torch.Tensor) -> None:
        """The next lookup's token ids, still in CPU memory (see studio.train.training: the data loader hands them over)."""
        self.handed_ids = cpu_ids

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        handed, self.handed_ids = self.handed_ids, None
        if handed is not None and handed.shape == input_ids.shape:
            ids = handed  # no copy back from the GPU, so no wait for the GPU's queue to drain
            self.lookups_without_waiting += 1
        else:
            ids = input_ids.to("cpu")
        rows = self.table(ids)
        if self.anchor.is_cuda:
            # From pinned memory the copy is queued like a kernel; from pageable memory it
            # would first wait for everything already queued on the GPU.
            rows = rows.pin_memory()
        return rows.to(self.anchor.device, non_blocking=True)


class CpuIds:
    """A batch's token ids kept in CPU memory; not a tensor, so trainers leave it where it is."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids


def feed_cpu_ids(model, collate):
    """`collate` that also puts CPU token ids in each batch, and a hook that hands them to the embeddings.

    Without it, the CPU lookup copies the ids back from the GPU, and that copy
    waits for every kernel queued before it, a stall on each step.
    """
    embeddings = model.get_input_embeddings()

    def collate_with_cpu_ids(features):
        batch = collate(features)
        batch["cpu_input_ids"] = CpuIds(batch["input_ids"])
        return batch

    def hand_over(module, args, kwargs):
        held = kwargs.pop("cpu_input_ids", None)
        if held is not None:
            embeddings.hand_over(held.ids)
        return args, kwargs

    # One hook per model: a model trained again (the benchmark's length search) replaces it.
    previous = getattr(embeddings, "hand_over_hook", None)
    if previous is not None:
        previous.remove()
    embeddings.hand_over_hook = model.register_forward_pre_hook(hand_over, with_kwargs=True)
    return collate_with_cpu_ids
