"""Did the fine-tune work? Batch evaluation of a run's models on a set of rows.

    rows.py       which rows: the run's eval split, a file, or a sample of the training rows
    generate.py   batched greedy generation and reference loss, on HF models and GGUF files
    scores.py     exact match, ROUGE-L, BLEU, length ratio, stop rate, loss, user checks
    scorecard.py  the verdict: best checkpoint, base vs fine-tuned, what the GGUF kept, warnings
    evaluation.py the job: every model in turn, saved under <run>/evals/<time>/
    compare.py    several runs side by side: curves, config differences, final scores

    result = run_evaluation(run_dir, EvalSpec(models=("base", "tuned", "checkpoints", "gguf")), sink, stop)
    print(format_scorecard(result.scorecard))

Run as:  python launch.py eval runs/<run> [--rows eval|train|FILE] [--models base tuned checkpoints gguf]
No gradio here: the Evaluate tab and the CLI are thin skins over these functions.
"""
