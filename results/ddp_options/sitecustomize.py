"""DDP's own options the studio does not set, for measuring what they change (a measuring aid, not part of the studio).

    PYTHONPATH=results/ddp_options:$PYTHONPATH STUDIO_DDP_OPTIONS="static_graph gradient_as_bucket_view" \
        ACCUMS=2 FSDP=no bash results/multi-gpu.sh

Python imports this file at start-up in every process (the run's processes inherit PYTHONPATH). Each word
of STUDIO_DDP_OPTIONS turns on that field of accelerate's DistributedDataParallelKwargs, which the trainer
passes to torch's DistributedDataParallel:
  static_graph             the same parameters get gradients every step: DDP skips its per-step search
  gradient_as_bucket_view  gradients are views into the all-reduce buckets: no copy into them
"""

import os

OPTIONS = os.environ.get("STUDIO_DDP_OPTIONS", "").split()

if OPTIONS:
    import functools

    from accelerate.utils import DistributedDataParallelKwargs

    _to_kwargs = DistributedDataParallelKwargs.to_kwargs  # what the trainer's accelerator hands DDP

    @functools.wraps(_to_kwargs)
    def _with_options(self):
        return {**_to_kwargs(self), **{name: True for name in OPTIONS}}

    DistributedDataParallelKwargs.to_kwargs = _with_options
