"""Speed and memory: everything that replaces or patches library internals, applied in one place.

    apply.py       prepare_for_speed(model, cfg): the one call training and the benchmark share
    long_rows.py   feed-forward blocks in checkpointed slices along long rows
    embeddings.py  the input embedding table in CPU memory, fed token ids from the data loader
    patches.py     version-guarded patches of library internals (TRL's fused LM head scope) and CUDA kernels
"""
