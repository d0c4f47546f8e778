"""The run's health, rule by rule, on loss sequences written out here (the real-run faults are in test_faults.py)."""

import math

from studio.train.health import Divergence, TrainingHealth


def feed(health, losses, grad=1.0, start=1):
    said = []
    for i, loss in enumerate(losses, start=start):
        verdict = health.observe(i, loss, grad)
        if isinstance(verdict, Divergence):
            return verdict
        said += verdict
    return said


def test_a_non_finite_loss_or_grad_norm_is_divergence_with_what_to_do():
    health = TrainingHealth(learning_rate=2e-4)
    verdict = feed(health, [2.0, 1.9, 1.8, float("nan")])
    assert isinstance(verdict, Divergence) and verdict.step == 4
    text = verdict.message("checkpoint-2")
    assert "diverged at step 4: loss nan" in text and "checkpoint-2" in text
    assert "learning rate 0.0002" in text and "train.learning_rate=2e-05" in text
    assert isinstance(TrainingHealth(2e-4).observe(1, 2.0, float("inf")), Divergence)


def test_a_sudden_nan_in_a_healthy_run_points_at_the_data_a_rising_one_at_the_rate():
    calm = TrainingHealth(2e-4)
    assert feed(calm, [2.0, 1.8, 1.7, 1.6, math.nan]).data_cause_likely
    climbing = TrainingHealth(2e-4)
    assert not feed(climbing, [2.0, 2.5, 3.5, 5.0, math.nan]).data_cause_likely
    absurd_rate = TrainingHealth(10.0)
    assert not feed(absurd_rate, [2.0, 1.8, math.nan]).data_cause_likely
    first_step = TrainingHealth(2e-4)
    assert first_step.observe(1, math.nan, math.nan).data_cause_likely, "no update has happened before step 1"


def test_a_loss_that_climbs_far_above_its_start_is_a_warning_once():
    health = TrainingHealth(learning_rate=5e-3)
    said = feed(health, [8.0, 8.5, 9.0, 12.0, 19.0, 40.0, 19000.0])
    rises = [w for w in said if "rose far above" in w]
    assert len(rises) == 1 and "at step 6" in rises[0] and "5e-04" not in rises[0] and "0.0005" in rises[0]


def test_a_spike_is_a_warning_and_quiet_afterwards():
    health = TrainingHealth(learning_rate=2e-4)
    said = feed(health, [2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 7.0, 1.4, 8.0, 1.3])
    spikes = [w for w in said if "spike" in w]
    assert len(spikes) == 1 and "step 7" in spikes[0], "a second spike within 10 steps is not repeated"


def test_eval_loss_rising_after_its_best_is_overfitting_naming_the_best_step():
    health = TrainingHealth(learning_rate=2e-4)
    assert health.observe_eval(10, 2.0) == [] and health.observe_eval(20, 1.5) == []
    assert health.observe_eval(30, 1.6) == [], "one rise is noise"
    said = health.observe_eval(40, 1.8)
    assert len(said) == 1 and "since step 20" in said[0] and "1.5000" in said[0]
    assert health.observe_eval(50, 1.9) == [], "said once per best"
    assert health.best_eval == (20, 1.5)


def test_zero_gradients_are_a_no_learning_warning():
    health = TrainingHealth(learning_rate=1e4)
    said = [w for i in range(1, 6) for w in health.observe(i, 6.93, 0.0)]
    assert len(said) == 1 and "gradients are zero" in said[0]


def test_the_summary_says_how_the_run_went():
    healthy = TrainingHealth(2e-4)
    feed(healthy, [2.0, 1.5, 1.0, 0.8])
    assert healthy.summary("completed", 4) == "The loss fell from 2 to 0.8 over 4 steps. No warnings."
    little = TrainingHealth(2e-4)
    feed(little, [7.0, 6.9, 6.8, 6.5])
    assert "fell only 7%" in little.summary("completed", 4)
    warned = TrainingHealth(2e-4)
    feed(warned, [2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 7.0])
    assert "1 warning: Loss spike at step 7" in warned.summary("completed", 7)


def test_after_divergence_the_weights_kept_come_from_before_the_values_went_bad():
    climbing = TrainingHealth(learning_rate=1e3)
    feed(climbing, [1.55, 1.4, 53.6, 493.0])  # the loss of step 3 came from the weights of step 2
    assert climbing.first_bad_weights() == 2
    nan_eval = TrainingHealth(learning_rate=2e-4)
    feed(nan_eval, [2.0, 1.9, 1.8, 1.7])
    nan_eval.observe_eval(4, math.nan)
    assert nan_eval.first_bad_weights() == 4
    calm = TrainingHealth(learning_rate=2e-4)
    feed(calm, [2.0, 1.8, 1.7, 1.6, 2.1])
    assert calm.first_bad_weights() is None
    assert "no weights are kept" in Divergence(3, math.nan, None, 1e3, False).message(None)


def test_the_rate_to_try_after_divergence_is_lower_and_within_the_usual_range():
    assert Divergence(5, math.nan, None, 1e3, False).suggested_learning_rate == 5e-4, "not 100"
    assert Divergence(5, math.nan, None, 2e-4, False).suggested_learning_rate == 2e-5
