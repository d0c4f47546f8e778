"""Training: a run's job from its config to its weights, reported as events, stoppable, resumable.

    training.py    run_training (lock, load, data, trainer, health, the weights kept) and make_trainer
    callbacks.py   progress events, Stop, and the health check inside the trainer
    health.py      divergence, loss spikes, overfitting, no learning, and the summary in plain words
    checkpoints.py whole and damaged checkpoints, resume checks, the disk a run needs
    methods/       one module per family of methods, each a TRL trainer set up as the studio trains
    rewards.py     grpo's reward presets and reward files, checked as they run
"""
