"""Is the run healthy? Divergence, loss spikes, overfitting, and a summary in plain words.

`TrainingHealth` reads each logged loss and grad norm and each eval loss, and
answers with what a person should know:

- a non-finite loss or grad norm is divergence: the run stops there as
  `diverged`, keeping its last good checkpoint (the trainer callback does that);
- a loss that climbs far above where it started, or jumps far above its recent
  level, is a warning;
- an eval loss that keeps rising after its best is overfitting, with the best
  step named;
- a reward that has been the same for every completion from the first logged
  step on (grpo) is a warning: it gives nothing to learn from (one that
  varied, then stays at its best, has taught what it could);
- at the end, `summary()` says in a sentence or two how the run went.

With `rewarded=True` (grpo) the reward, not the loss, shows progress: GRPO's
loss sits near zero and changes sign, so the loss rules are left out and the
summary follows the reward.

    health = TrainingHealth(learning_rate=2e-4)
    health.observe(step=3, loss=float("nan"), grad_norm=float("nan"))   # -> Divergence
    health.summary("diverged", step=3)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

RISE_FACTOR = 2.0  # loss this many times its starting level: the run is going the wrong way
SPIKE_FACTOR = 3.0  # loss this many times its recent median: a spike
SPIKE_WINDOW = 10  # logged losses the recent median is taken over
SPIKE_QUIET_STEPS = 10  # no second spike warning within this many steps
USUAL_MAX_LEARNING_RATE = 1e-2  # above this, fine-tuning rates are a likely cause of divergence by themselves
HIGHEST_SUGGESTED_RATE = 5e-4  # the top of the usual range: a rate to try is never above it
OVERFIT_RISES = 2  # consecutive eval losses above the previous one, after the best, that count as overfitting
LITTLE_LEARNED = 0.15  # a loss that fell by less than this fraction: the run learned little
NO_SIGNAL_LOGS = 3  # logged steps from the start with a reward the same for every completion: no learning signal
REWARD_ENDS = 3  # logged rewards averaged at each end for the summary (a single step's reward is noisy)


def is_finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def lower_learning_rate(rate: float) -> float:
    """A rate to try after `rate` made the run go bad: a tenth of it, and within the usual range."""
    return min(rate / 10, HIGHEST_SUGGESTED_RATE)


@dataclass(frozen=True)
class Divergence:
    """Where and how the run went non-finite, and what to do about it."""

    step: int
    loss: float | None
    grad_norm: float | None
    learning_rate: float
    data_cause_likely: bool
    rows: tuple[str, ...] = ()  # where the rows of the step's batch come from (file:line), when known

    @property
    def suggested_learning_rate(self) -> float:
        return lower_learning_rate(self.learning_rate)

    def message(self, last_good: str | None) -> str:
        what = " and ".join(f"{name} {value}" for name, value in (("loss", self.loss), ("grad norm", self.grad_norm))
                            if value is not None and not math.isfinite(value))
        kept = (f"The newest checkpoint from before the values went bad ({last_good}) is kept as the run's weights "
                "(check it in Chat before using it)." if last_good else
                "No checkpoint was saved before the values went bad, so no weights are kept.")
        usual = (" (far above the usual 1e-5 to 5e-4)" if self.learning_rate > USUAL_MAX_LEARNING_RATE else "")
        text = (f"Training diverged at step {self.step}: {what or 'the weights became non-finite'}. {kept} "
                f"It used learning rate {self.learning_rate:g}{usual}; start a new run with a lower one, "
                f"e.g. train.learning_rate={self.suggested_learning_rate:g}.")
        if self.data_cause_likely:
            rows = f": {', '.join(self.rows)}" if self.rows else ""
            text += (" The values went bad suddenly, without a rising loss before, so the data of this step may be "
                     f"the cause; check the rows of its batch{rows}.")
        return text


@dataclass
class TrainingHealth:
    """Watches logged values; returns warnings (text) as they arise, and a Divergence when the run goes bad."""

    learning_rate: float
    rewarded: bool = False  # grpo: follow the reward; the loss rules do not apply
    losses: list[tuple[int, float]] = field(default_factory=list)
    rewards: list[tuple[int, float]] = field(default_factory=list)  # the total reward of each logged step
    grad_norms: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    divergence: Divergence | None = None
    _warned_rise: bool = False
    _last_spike_step: int = -SPIKE_QUIET_STEPS
    _warned_overfit_at: int | None = None
    _warned_no_gradient: bool = False
    _flat_logs: dict = field(default_factory=dict)  # reward name -> logged steps so far, while it never varied
    _varied: set = field(default_factory=set)  # rewards that told completions apart at least once
    _warned_flat: set = field(default_factory=set)

    def observe(self, step: int, loss: float | None, grad_norm: float | None) -> Divergence | list[str]:
        """One logged step: its Divergence if a value is non-finite, else the warnings it raises (maybe none)."""
        if not (is_finite(loss) and is_finite(grad_norm)):
            self.divergence = Divergence(step, loss, grad_norm, self.learning_rate, self._sudden(step))
            return self.divergence
        new = []
        if loss is not None:
            new += [] if self.rewarded else self._rise_or_spike(step, loss)
            self.losses.append((step, loss))
        if grad_norm is not None:
            self.grad_norms.append(grad_norm)
            new += [] if self.rewarded else self._no_gradient(step)
        self.warnings += new
        return new

    def observe_rewards(self, step: int, logs: dict) -> list[str]:
        """One logged grpo step: its total reward, and a warning for each reward that has never varied.

        `logs` holds TRL's values: reward, frac_reward_zero_std, rewards/<name>/mean and rewards/<name>/std.
        """
        reward = logs.get("reward")
        if isinstance(reward, (int, float)) and math.isfinite(reward):
            self.rewards.append((step, float(reward)))
        stds = {key[len("rewards/"):-len("/std")]: std for key, std in logs.items()
                if key.startswith("rewards/") and key.endswith("/std") and isinstance(std, (int, float))}
        for name, std in stds.items():
            self._count_flat(name, std < 1e-9)
        zero = logs.get("frac_reward_zero_std")
        self._count_flat("", isinstance(zero, (int, float)) and zero >= 1)  # "": the total reward within each group
        new = [self._no_signal(name, logs.get(f"rewards/{name}/mean")) for name in stds if self._silent(name)]
        if self._silent("") and not all(name in self._warned_flat for name in stds):  # else those warnings say it
            self._warned_flat.add("")
            new.append("No learning signal: the completions of each prompt have all got the same total reward since "
                       "the start, so there is nothing to prefer among them. Try more grpo.num_generations, a higher "
                       "grpo.temperature, or rewards that tell completions apart.")
        self.warnings += new
        return new

    def _count_flat(self, name: str, flat: bool) -> None:
        if not flat:
            self._varied.add(name)
        self._flat_logs[name] = self._flat_logs.get(name, 0) + 1

    def _silent(self, name: str) -> bool:
        """A reward that has never varied for NO_SIGNAL_LOGS logged steps, not warned about yet."""
        return (name not in self._varied and self._flat_logs.get(name, 0) >= NO_SIGNAL_LOGS
                and name not in self._warned_flat)

    def _no_signal(self, name: str, mean) -> str:
        self._warned_flat.add(name)
        value = f" ({mean:g})" if isinstance(mean, (int, float)) else ""
        why = ("no completion earns it: give the model an easier reward beside it (format, length), a higher "
               "grpo.temperature or more grpo.num_generations, or start from a stronger model"
               if isinstance(mean, (int, float)) and mean <= 0 else
               "it cannot tell completions apart: check the reward and its settings")
        return f"No learning signal: reward {name} has been the same{value} for every completion since the start; {why}."

    def observe_eval(self, step: int, eval_loss: float) -> list[str]:
        """One evaluation: an overfitting warning when the eval loss keeps rising after its best."""
        self.evals.append((step, eval_loss))
        if self.rewarded:
            return []  # grpo's eval loss stays near zero: it says nothing about overfitting
        best_step, best = min(self.evals, key=lambda e: e[1])
        after_best = [loss for s, loss in self.evals if s >= best_step]
        rises = sum(b > a for a, b in zip(after_best, after_best[1:]))
        if rises >= OVERFIT_RISES and rises == len(after_best) - 1 and self._warned_overfit_at != best_step:
            self._warned_overfit_at = best_step
            warning = (f"Overfitting: the eval loss has risen for {rises} evaluations since step {best_step} "
                       f"(best {best:.4f}, now {eval_loss:.4f}). The best weights so far are those of step "
                       f"{best_step}; train.early_stopping stops a run there and keeps them.")
            self.warnings.append(warning)
            return [warning]
        return []

    def first_bad_weights(self) -> int | None:
        """The step whose weights are the first known bad, before the values went non-finite: those of an eval
        loss that is not a number, or those that gave a loss RISE_FACTOR times the first one logged (the loss of
        step s is computed with the weights of step s - 1). None when no logged value gave them away."""
        bad = [step for step, loss in self.evals if not math.isfinite(loss)]
        if self.losses and not self.rewarded:
            first = self.losses[0][1]
            bad += [step - 1 for step, loss in self.losses if loss > RISE_FACTOR * first]
        return min(bad) if bad else None

    @property
    def best_eval(self) -> tuple[int, float] | None:
        return min(self.evals, key=lambda e: e[1]) if self.evals else None

    def summary(self, state: str, step: int, last_good: str | None = None) -> str:
        """How the run went, in plain words, for the end of the log, status.json and the UI."""
        if state == "diverged" and self.divergence:
            return self.divergence.message(last_good)
        if self.rewarded:
            return self._reward_summary(step)
        parts = []
        finite = [loss for _, loss in self.losses]
        if len(finite) >= 2:
            trend = "fell" if finite[-1] < finite[0] else "did not fall"
            parts.append(f"The loss {trend} from {finite[0]:.4g} to {finite[-1]:.4g} over {step} steps.")
        elif finite:
            parts.append(f"Loss {finite[-1]:.4g} after {step} steps.")
        if self.best_eval:
            best_step, best = self.best_eval
            parts.append(f"Best eval loss {best:.4g} at step {best_step} (last {self.evals[-1][1]:.4g}).")
        if self.warnings:
            parts.append(f"{len(self.warnings)} warning{'s' * (len(self.warnings) > 1)}: " +
                         " ".join(self.warnings[:3]) + (" …" if len(self.warnings) > 3 else ""))
        elif len(finite) >= 2 and finite[-1] >= finite[0]:
            parts.append("No warnings, but the loss did not fall: nothing was learned yet.")
        elif len(finite) >= 2 and finite[-1] > (1 - LITTLE_LEARNED) * finite[0]:
            parts.append(f"No warnings, but the loss fell only {100 * (1 - finite[-1] / finite[0]):.0f}%: little "
                         "was learned (more steps, or another learning rate, may help).")
        elif finite:
            parts.append("No warnings.")
        return " ".join(parts) or f"Ended at step {step} with nothing logged."

    def _reward_summary(self, step: int) -> str:
        parts = []
        rewards = [r for _, r in self.rewards]
        if len(rewards) >= 2:
            ends = max(1, min(REWARD_ENDS, len(rewards) // 2))
            first, last = sum(rewards[:ends]) / ends, sum(rewards[-ends:]) / ends
            parts.append(f"The reward {'rose' if last > first else 'did not rise'} from {first:.3g} to {last:.3g} "
                         f"over {step} steps.")
        elif rewards:
            parts.append(f"Reward {rewards[-1]:.3g} after {step} steps.")
        if self.warnings:
            parts.append(f"{len(self.warnings)} warning{'s' * (len(self.warnings) > 1)}: " +
                         " ".join(self.warnings[:3]) + (" …" if len(self.warnings) > 3 else ""))
        elif len(rewards) >= 2 and last <= first:
            parts.append("No warnings, but the reward did not rise: nothing was learned yet.")
        elif rewards:
            parts.append("No warnings.")
        return " ".join(parts) or f"Ended at step {step} with nothing logged."

    # ------------------------------------------------------------ rules

    def _rise_or_spike(self, step: int, loss: float) -> list[str]:
        """A climb (two logged losses in a row far above the start) or a spike (one far above the recent level)."""
        if len(self.losses) < 3:
            return []
        start = statistics.median(l for _, l in self.losses[:3])
        previous = self.losses[-1][1]
        if loss > RISE_FACTOR * start and previous > RISE_FACTOR * start and not self._warned_rise:
            self._warned_rise = True
            return [f"The loss rose far above where it started: {start:.4g} over the first logged steps, {loss:.4g} "
                    f"at step {step}. The learning rate ({self.learning_rate:g}) is probably too high; try "
                    f"{lower_learning_rate(self.learning_rate):g}."]
        recent = [l for _, l in self.losses[-SPIKE_WINDOW:]]
        if (len(recent) >= 5 and loss > SPIKE_FACTOR * statistics.median(recent)
                and step - self._last_spike_step >= SPIKE_QUIET_STEPS):
            self._last_spike_step = step
            return [f"Loss spike at step {step}: {loss:.4g}, against {statistics.median(recent):.4g} over the "
                    "steps before. One spike can be a hard batch; repeated spikes mean the learning rate is too high."]
        return []

    def _no_gradient(self, step: int) -> list[str]:
        if self._warned_no_gradient or len(self.grad_norms) < 3 or any(n > 1e-8 for n in self.grad_norms[-3:]):
            return []
        self._warned_no_gradient = True
        return [f"No learning since step {step - 2}: the gradients are zero. A learning rate that is far too high "
                f"({self.learning_rate:g}) can saturate the weights; so can data whose labels are all masked."]

    def _sudden(self, step: int) -> bool:
        """Whether the values went bad out of a healthy run: then a batch's data is a likely cause, not the rate.

        Signs of a rate that is too high instead: a rate far above the usual range,
        a loss that climbed, a grad norm that exploded, or one that collapsed to
        zero (weights driven into saturation).
        """
        if step <= 1 or not self.losses:
            return True  # nothing was learned yet: the rate has not acted
        if self.learning_rate > USUAL_MAX_LEARNING_RATE:
            return False
        start = self.losses[0][1]
        rising = self._warned_rise or self.losses[-1][1] > 1.2 * start
        norms = self.grad_norms[-SPIKE_WINDOW:]
        exploding = len(norms) >= 2 and norms[-1] > 10 * statistics.median(norms[:-1])
        collapsed = any(n < 1e-6 for n in norms)
        return not (rising or exploding or collapsed)
