"""Speed and memory: everything that replaces or patches library internals, applied in one place.

    apply.py       prepare_for_training(model, cfg): the one call training and the benchmark share
    fused.py       fused LoRA layers (train.fused_lora): the adapter term accumulated into the base matmul
    lora_linear.py the fused computation with its hand-written backward
    nf4.py, nf4_triton.py   4-bit weights unpacked for one product (one Triton launch on CUDA)
    long_rows.py   feed-forward blocks in checkpointed slices along long rows
    embeddings.py  the input embedding table in CPU memory, fed token ids from the data loader
    patches.py     version-guarded patches of library internals (TRL's fused LM head scope) and CUDA kernels
"""
