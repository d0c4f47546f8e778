"""Local LLM fine-tuning studio: a headless core with a thin Gradio skin (see README.md).

The layers, each importing only from the ones above it:

    config, errors, events, hardware, catalog, safety     typed settings, errors for people, progress events
    models, model_info, fit, runs                         loading models, the fit estimate, run folders and locks
    data/      sources, formats, templates, preview       what the model trains on, token by token
    speed/     embeddings, long_rows, patches, apply      everything that patches library internals for speed
    train/     training, callbacks, health, checkpoints   a run from config to weights, and its health
    export/    exporting, gguf, references, verify        merged weights and verified GGUF files
    chat/      stream, session                            streaming replies from HF models and GGUF files
    evaluate/  rows, generate, scores, scorecard, store   scoring a run's models on held-out rows; the verdict
    share                                                 a run's weights on the hub, with its model card
    bench/                                                `launch.py bench` (its special cases stay there)
    jobs, services                                        one background job and one owner of the GPU
    cli                                                   the headless commands
    ui/                                                   the only package that imports gradio
"""
