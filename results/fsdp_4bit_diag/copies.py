"""Do the copies FSDP2 makes keep every bit of packed 4-bit weights stored as bf16? (CUDA)

    python3 results/fsdp_4bit_diag/copies.py

FSDP2 gathers a layer's shards by copying them into one buffer (torch._foreach_copy_) and out again.
A bf16 element whose bits read as NaN may come out as another NaN: harmless for numbers, but these bits
are four 4-bit weights each.
"""

import torch

device = "cuda" if torch.cuda.is_available() else "cpu"
packed = torch.randint(0, 256, (1 << 20,), dtype=torch.uint8, device=device)
as_bf16 = packed.view(torch.bfloat16)
nan = int(torch.isnan(as_bf16).sum())
print(f"{device}: {as_bf16.numel()} random bf16 elements, {nan} of them NaN patterns ({nan / as_bf16.numel():.2%})")
for name, copy in {
    "copy_": lambda dst, src: dst.copy_(src),
    "_foreach_copy_": lambda dst, src: torch._foreach_copy_([dst], [src]),
    "split_with_sizes_copy": lambda dst, src: torch.split_with_sizes_copy(src, [src.numel() // 2] * 2, 0,
                                                                            out=list(dst.split(src.numel() // 2))),
    "cat": lambda dst, src: dst.copy_(torch.cat([src[:10], src[10:]])),
}.items():
    out = torch.empty_like(as_bf16)
    copy(out, as_bf16)
    changed = int((out.view(torch.uint8) != packed).sum())
    print(f"  {name:22s} bytes changed: {changed}")
