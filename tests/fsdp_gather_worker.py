"""Two CPU processes (test_parallel.py starts them): one forward and backward of a tiny Llama in 4-bit, sharded
by FSDP2 as accelerate shards it, against the same model whole; prints the largest relative LoRA gradient error.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/fsdp_gather_worker.py MODEL SETUP

SETUP: studio (the packed bytes stored and FSDP's precision set as studio.train.sharding does) or before (the
bytes stored as bf16, like the rest of the model, and accelerate's bf16 policy). torch._foreach_copy_, which
FSDP gathers through, runs as it does on CUDA: 16-bit values pass through float32. (On the CPU it copies
bytes, so without this the CPU could not show what the GPUs do.)
"""

import os
import sys
from pathlib import Path

os.environ["STUDIO_PARALLEL"] = "fsdp"  # studio.hardware.sharded_training(): the packed bytes stored as bf16
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: E402


def _copy_as_cuda_does(destinations, sources, **kwargs):
    for destination, source in zip(destinations, sources):
        through_float = destination.dtype == source.dtype and source.dtype in (torch.bfloat16, torch.float16)
        destination.copy_(source.float() if through_float else source)


def tiny_4bit_model(path: str, setup: str):
    from transformers import AutoModelForCausalLM

    from studio.config import LoraConfig, ModelConfig
    from studio.models import attach_lora, quantization_config
    from studio.speed.fused import use_fused_lora

    quantization = quantization_config(ModelConfig(name_or_path=path, load_in="4bit", dtype="bfloat16"))
    if setup == "before":
        quantization.bnb_4bit_quant_storage = torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization, dtype=torch.bfloat16,
                                                 device_map={"": "cpu"})
    torch.manual_seed(0)
    model = attach_lora(model, LoraConfig(r=8, alpha=16))
    with torch.no_grad():  # lora_B starts at zero: give it values, the same in every process; in bf16, as
        generator = torch.Generator().manual_seed(1)  # TRL's trainers keep a quantized model's LoRA weights
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.to(torch.bfloat16)
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    assert use_fused_lora(model) > 0
    return model


def loss_and_gradients(model, rows) -> tuple[float, dict]:
    loss = model(input_ids=rows, labels=rows).loss  # no autocast: accelerate's FSDP2 path applies none either
    loss.backward()
    gradients = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            grad = parameter.grad.full_tensor() if hasattr(parameter.grad, "full_tensor") else parameter.grad
            gradients[name] = grad.float()
    return loss.item(), gradients


def main(path: str, setup: str) -> None:
    from studio.train.sharding import packed_weights_policy

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    rows = torch.randint(3, 200, (4, 24), generator=torch.Generator().manual_seed(2))
    _, want = loss_and_gradients(tiny_4bit_model(path, setup), rows)

    model = tiny_4bit_model(path, setup)
    if setup == "studio":
        policy = packed_weights_policy(model)
        assert policy is not None
    else:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16,
                                      output_dtype=torch.bfloat16)
    inner = model.get_base_model()
    for layer in inner.model.layers:  # as accelerate's fsdp2_prepare_model: each decoder layer, the embedding,
        fully_shard(layer, mp_policy=policy)  # the final norm with the output head, then the root
    fully_shard(inner.get_input_embeddings(), mp_policy=policy)
    fully_shard([inner.model.norm, inner.lm_head], mp_policy=policy, reshard_after_forward=False)
    fully_shard(model, mp_policy=policy)
    torch._foreach_copy_ = _copy_as_cuda_does
    _, got = loss_and_gradients(model, rows[rank * 2:(rank + 1) * 2])  # each process half the rows
    errors = {name: ((got[name] - want[name]).norm() / want[name].norm()).item() for name in want}
    if rank == 0:
        worst = max(errors, key=errors.get)
        print(f"max relative gradient error {errors[worst]:.5f} ({worst})", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
