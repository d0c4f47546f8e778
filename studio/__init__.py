"""Local LLM fine-tuning studio: a headless core with a thin Gradio skin (see README.md).

The layers, each importing only from the ones above it:

    config, config_rules, errors, fields, recipes         the typed settings, their fields, recipes and overrides
    events, hardware, catalog, safety                     progress events, devices, known models, offline by default
    models, model_info, fit, runs, llama_check            loading models, the fit estimate, run folders and locks,
                                                          whether llama.cpp runs on this machine
    data/      files, sources, bounded, formats,          what the model trains on, token by token, in the shape
               templates, pairs, prompts, building,       of row each method reads (sequences, pairs, labelled
               preview                                    answers, prompts)
    speed/     embeddings, long_rows, patches, apply      everything that patches library internals for speed
    train/     training, callbacks, health, checkpoints,  a run from config to weights, and its health; each
               rewards, methods/, placement, parallel,    method (sft, dpo, orpo, kto, grpo, galore, prefix,
               rank                                       ptuning) one TRL trainer behind one interface; one
                                                          process per device when there are several
    export/    exporting, gguf, references, verify        merged weights and verified GGUF files, typed report cards
    chat/      stream, session, panes                     streaming replies: each loaded model a replier (HF or GGUF)
    evaluate/  rows, generate, scores, scorecard, ...     a run's models scored on held-out rows, runs compared
    share                                                 a run's weights on the hub, with its model card
    bench/                                                `launch.py bench` (its special cases stay there)
    jobs, services                                        one background job and one owner of the GPU
    cli, cli_args, cli_chat, cli_data, cli_eval,          the headless commands
    cli_share
    ui/                                                   the only package that imports gradio; one typed object per tab
"""

import logging

# bitsandbytes warns at every start on a CPU that an optional kernel package (`kernels`) is missing, then
# uses its own CPU path for 4-bit weights: a line that only alarms, kept out of every command's output.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
