"""One forward and backward of the tiny 4-bit Llama with fused LoRA layers, sharded by FSDP2 as the trainer
shards it, against the same model whole: the LoRA gradients, variant by variant.

    python3 -m torch.distributed.run --standalone --nproc-per-node=2 results/fsdp_4bit_diag/probe.py

On GPUs when there are two (NCCL), else on the CPU (gloo). Variants: the packed weights stored as bytes,
bf16 or fp16, sharded or whole, unpacked by the one-launch kernel (CUDA) or by bitsandbytes, checkpointed or
not. On two H200s, stored as bf16 and sharded with accelerate's bf16 policy, the LoRA gradients came out 18%
from the whole model's; on the CPU 0.3%, unless EMULATE_CUDA_COPY=1 makes torch._foreach_copy_ pass 16-bit
values through float32 as CUDA does (then 19%). fp16 storage with no FSDP casts is what the studio does
(studio.train.sharding).
"""

import os
import sys
import zlib
from pathlib import Path

import torch
import torch.distributed as dist

sys.path[:0] = [".", "tests"]  # run from the repository root
from tiny import build_model  # noqa: E402

cuda = torch.cuda.is_available()
dist.init_process_group("nccl" if cuda else "gloo")
rank = dist.get_rank()
device = torch.device("cuda", rank) if cuda else torch.device("cpu")
if cuda:
    torch.cuda.set_device(device)
path = Path(os.environ.get("PROBE_MODEL", "/tmp/probe-llama"))
if rank == 0 and not path.exists():
    build_model("llama", path)
dist.barrier()

from peft import LoraConfig, get_peft_model  # noqa: E402
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

from studio.speed import nf4  # noqa: E402
from studio.speed.fused import use_fused_lora  # noqa: E402

if os.environ.get("EMULATE_CUDA_COPY"):  # on the CPU: torch._foreach_copy_ as CUDA runs it (through float)
    _foreach_copy = torch._foreach_copy_

    def _through_float(dsts, srcs, **kwargs):
        for dst, src in zip(dsts, srcs):
            through_float = dst.dtype == src.dtype and src.dtype in (torch.bfloat16, torch.float16)
            dst.copy_(src.float() if through_float else src)

    torch._foreach_copy_ = _through_float
POLICY = os.environ.get("POLICY", "bf16")  # bf16: accelerate's policy for bf16 runs; none: FSDP casts nothing

ids = torch.randint(3, 200, (4, 32), generator=torch.Generator().manual_seed(1)).to(device)


def gradients(storage, shard: bool, triton: bool, checkpointing: bool, restate: bool = False,
              casts: bool = True) -> tuple[float, dict]:
    """The mean loss over the 4 rows and every LoRA gradient (whole tensors), for one variant."""
    torch.manual_seed(0)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=storage)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization, dtype=torch.bfloat16,
                                                 device_map={"": device})
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator(p.device).manual_seed(zlib.crc32(name.encode())))
    use_fused_lora(model)
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit" and hasattr(m, "quant_state")]
    stale = [m for m in layers if m.quant_state is not m.weight.quant_state]
    differ = [m for m in stale if not torch.equal(m.quant_state.absmax, m.weight.quant_state.absmax)]
    if rank == 0:
        print(f"  {len(layers)} 4-bit layers; the layer's own state is another object in {len(stale)}, "
              f"with other absmax in {len(differ)}", flush=True)
    if restate:
        for m in layers:
            m.quant_state = m.weight.quant_state
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    rows = ids
    if shard:  # as accelerate shards it: each decoder layer, the embedding, the tail, the root
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16,
                                      output_dtype=torch.bfloat16) if POLICY == "bf16" and casts else MixedPrecisionPolicy()
        inner = model.base_model.model
        for layer in inner.model.layers:
            fully_shard(layer, mp_policy=policy, reshard_after_forward=True)
        fully_shard(inner.get_input_embeddings(), mp_policy=policy)
        fully_shard([inner.model.norm, inner.lm_head], mp_policy=policy, reshard_after_forward=False)
        fully_shard(model, mp_policy=policy)
        rows = ids[rank * 2:(rank + 1) * 2]
    saved = nf4._NF4_TRITON
    nf4._NF4_TRITON = saved if triton else None
    try:
        with torch.autocast(device.type, torch.bfloat16):
            out = model(input_ids=rows, labels=rows)
        out.loss.backward()
    finally:
        nf4._NF4_TRITON = saved
    loss = out.loss.detach().float()
    if shard:
        dist.all_reduce(loss)
        loss /= 2
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            grads[name.replace("_fsdp_wrapped_module.", "")] = g.float().cpu()
    return loss.item(), grads


def report(label: str, result, reference) -> None:
    loss, grads = result
    errors = {k: ((grads[k] - reference[1][k]).norm() / reference[1][k].norm()).item() for k in reference[1]}
    worst = max(errors, key=errors.get)
    if rank == 0:
        print(f"{label:44s} loss {loss:.5f} (whole {reference[0]:.5f}); max rel grad error {errors[worst]:.4f} "
              f"({worst.split('layers.')[-1]}), median {sorted(errors.values())[len(errors) // 2]:.4f}", flush=True)


kernel = cuda and nf4._NF4_TRITON is not None
for checkpointing in (False, True)[:int(os.environ.get('VARIANTS', 2))]:
    whole = gradients(torch.uint8, False, kernel, checkpointing)
    tag = "checkpointed" if checkpointing else "plain"
    report(f"{tag}: whole, bf16 storage", gradients(torch.bfloat16, False, kernel, checkpointing), whole)
    if kernel:
        report(f"{tag}: whole, bitsandbytes unpacks", gradients(torch.uint8, False, False, checkpointing), whole)
    report(f"{tag}: sharded, bf16 storage", gradients(torch.bfloat16, True, kernel, checkpointing), whole)
    report(f"{tag}: sharded, fp16 storage, FSDP casts nothing",
           gradients(torch.float16, True, kernel, checkpointing, casts=False), whole)
    report(f"{tag}: sharded, the layer's state set to the weight's",
           gradients(torch.bfloat16, True, kernel, checkpointing, restate=True), whole)
    if kernel:
        report(f"{tag}: sharded, bitsandbytes unpacks", gradients(torch.bfloat16, True, False, checkpointing), whole)
dist.destroy_process_group()
