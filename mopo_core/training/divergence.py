"""When a training run has gone wrong: the one rule that names a run ``diverged``, and the watch
that applies it to the trainer's step metrics.

The rule (:func:`divergence_reason`, thresholds in :class:`DivergenceRule`, defaults the named
constants below), checked on every logged step's metrics (``log_every``; 1 by default):

- ``loss``: not a finite number, or ``|loss| > LOSS_FACTOR * max(|first loss|, SCALE_FLOOR)``,
  the first loss being the first one the run logged (when ``log_every`` is 1, the starting
  model's loss on the first batch, before any update). A loss that grows twentyfold is a blow-up:
  a healthy run's batch losses vary by a few times around a flat or falling trend.
- ``grad_norm`` (the gradient norm before clipping): not finite, or
  ``> GRAD_NORM_FACTOR * max(first grad norm, SCALE_FLOOR)``.
- ``kl_to_reference`` (nats per response, logged online every step and offline every
  ``kl_every`` steps) and ``kl_to_start`` (offline MOPO's leash, every step): not finite, above
  ``KL_BOUND`` nats, below ``-KL_NEGATIVE_TOLERANCE`` (the estimate is a sum of non-negative
  terms: a negative one beyond rounding is a broken model), or more than ``KL_JUMP`` nats above
  its previous logged value (a policy that leaps from where it was in one logged interval).

Measured on the text task (tiny GPT, 12 steps, lr = 1.0 against 1e-3): offline MOPO's loss goes
from 28 to 1634 by step 4 (a healthy run stays within 23-32), SFT's from 36 to 1006 by step 3,
DPO's from 0.69 to 22 by step 3, IPO's from 39 to 32,238 at step 2 (a healthy IPO run's batch
losses range 5-116 over 100 steps, its gradient norms 150-1550). Online MOPO at lr = 1.0
collapses instead: loss and gradient norm fall to 0 after one 57-nat KL jump, then the KL reads
about 2.5 nats; the jump rule catches it (tests/training/test_divergence.py).

A run whose step breaks the rule is stopped after that step (``Trainer.request_cancel``; its
checkpoint is kept), marked ``diverged`` in the run store with the error
``"diverged at step S: <reason>"``, and its :class:`~mopo_core.lm.trainer.TrainResult` comes
back with status ``"diverged"``. The tasks then still evaluate its policy when its weights are
finite (so it can be looked at), but the Compare page and
:mod:`mopo_core.experiments.compare_runs` keep diverged runs off fronts, hypervolumes and
dominance counts unless asked. A resumed run's first loss and gradient norm are read back from
the store, so the rule is the same across a resume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

#: A loss this many times the run's first logged loss (in magnitude) is a blow-up.
LOSS_FACTOR = 20.0
#: A gradient norm (before clipping) this many times the run's first is a blow-up.
GRAD_NORM_FACTOR = 100.0
#: Floor under the first loss and gradient norm, so that a start near zero does not make every
#: later value an "explosion".
SCALE_FLOOR = 1.0
#: Largest plausible KL to the reference, in nats per response. Not 50: a healthy DPO run on the
#: text task (default settings, tau = 0.08, lr = 1e-3) drifts to 42 nats by step 275 of 300, and a
#: run that breaks the rule is stopped; lr = 1.0 runs read 77-97 nats within a few steps (and their
#: loss breaks the loss rule by step 2-4 anyway).
KL_BOUND = 100.0
#: Largest plausible rise of a KL estimate between two logged values, in nats per response. A
#: healthy DPO run drifts about 1.5 nats per 10 steps (42 by step 275); offline MOPO without its
#: leash at lr = 1e-2 about 0.5 per step; online MOPO at lr = 1.0 leapt 57 in one step.
KL_JUMP = 25.0
#: How far below zero the KL estimate (a sum of non-negative terms) may read from rounding alone.
KL_NEGATIVE_TOLERANCE = 1e-3
#: The run-store status and the TrainResult status of a run stopped by the rule.
DIVERGED = "diverged"


@dataclass(frozen=True)
class DivergenceRule:
    """The thresholds of the rule (module doc); the defaults are the module's constants."""

    loss_factor: float = LOSS_FACTOR
    grad_norm_factor: float = GRAD_NORM_FACTOR
    scale_floor: float = SCALE_FLOOR
    kl_bound: float = KL_BOUND
    kl_negative_tolerance: float = KL_NEGATIVE_TOLERANCE
    kl_jump: float = KL_JUMP


#: The KL series the rule watches: metric name -> what it is called in a reason.
KL_SERIES = {"kl_to_reference": "the KL to the reference", "kl_to_start": "the KL to the starting model"}


@dataclass(frozen=True)
class Divergence:
    """Where and why a run went wrong."""

    step: int
    reason: str

    @property
    def message(self) -> str:
        """The run's stored error: ``"diverged at step S: <reason>"``."""
        return f"diverged at step {self.step}: {self.reason}"


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def divergence_reason(metrics: dict, first: dict, rule: DivergenceRule = DivergenceRule(),
                      previous: dict | None = None) -> str | None:
    """Why one step's ``metrics`` break the rule (module doc), or None. ``first``: the run's first
    logged ``loss`` and ``grad_norm`` (a missing one: that part of the rule waits for it);
    ``previous``: each KL series' last logged value before this step (a missing one: no jump check)."""
    for key, name, first_name, factor in (("loss", "the loss", "the first logged loss", rule.loss_factor),
                                          ("grad_norm", "the gradient norm", "the first logged", rule.grad_norm_factor)):
        value = _number(metrics.get(key))
        if value is None:
            continue
        if not math.isfinite(value):
            return f"{name} is {value}"
        start = first.get(key)
        if start is not None and abs(value) > factor * max(abs(start), rule.scale_floor):
            return (f"{name} {value:.4g} is more than {factor:g} times {first_name} "
                    f"{start:.4g} (floor {rule.scale_floor:g})")
    for key, name in KL_SERIES.items():
        kl = _number(metrics.get(key))
        if kl is None:
            continue
        if not math.isfinite(kl):
            return f"{name} is {kl}"
        if kl > rule.kl_bound:
            return f"{name} is {kl:.4g} nats per response, above the bound {rule.kl_bound:g}"
        if kl < -rule.kl_negative_tolerance:
            return (f"{name} is {kl:.4g} nats per response: negative (beyond rounding, "
                    f"{-rule.kl_negative_tolerance:g}), which a healthy model cannot give")
        before = (previous or {}).get(key)
        if before is not None and kl - before > rule.kl_jump:
            return (f"{name} rose from {before:.4g} to {kl:.4g} nats per response since its last logged value, "
                    f"more than {rule.kl_jump:g}")
    return None


class DivergenceWatch:
    """Applies the rule to a trainer's logged steps (a trainer callback); the first step that
    breaks it is kept in :attr:`divergence` and the trainer is asked to stop after that step."""

    def __init__(self, trainer=None, rule: DivergenceRule = DivergenceRule(), first: dict | None = None):
        self.trainer, self.rule = trainer, rule
        self.first: dict = dict(first or {})
        self.previous: dict = {}  # each KL series' last logged value
        self.divergence: Divergence | None = None

    def __call__(self, step: int, metrics: dict) -> None:
        if self.divergence is not None:
            return
        reason = divergence_reason(metrics, self.first, self.rule, self.previous)
        for name in ("loss", "grad_norm"):
            value = _number(metrics.get(name))
            if name not in self.first and value is not None and math.isfinite(value):
                self.first[name] = value
        for name in KL_SERIES:
            value = _number(metrics.get(name))
            if value is not None and math.isfinite(value):
                self.previous[name] = value
        if reason is not None:
            self.divergence = Divergence(int(step), reason)
            if self.trainer is not None:
                self.trainer.request_cancel()


def first_logged(store, run_id: int) -> dict:
    """The first logged ``loss`` and ``grad_norm`` of stored run ``run_id`` (those it has)."""
    metrics = store.get_run(run_id).metrics
    out = {}
    for name in ("loss", "grad_norm"):
        series = metrics[(metrics["name"] == name) & metrics["value"].notna()].sort_values("step")
        if len(series):
            out[name] = float(series["value"].iloc[0])
    return out


def train_watched(trainer, resume_run_id: int | None = None, rule: DivergenceRule = DivergenceRule()):
    """``trainer.train(resume_run_id)`` with the rule watching every logged step: a run that breaks
    it stops after that step, is marked ``diverged`` in the trainer's store (error: the step and
    the reason) and its TrainResult has status ``"diverged"``. Returns the TrainResult."""
    first = first_logged(trainer.store, resume_run_id) if resume_run_id is not None and trainer.store else None
    watch = DivergenceWatch(trainer, rule, first)
    trainer.callbacks = (watch, *trainer.callbacks)
    result = trainer.train(resume_run_id=resume_run_id)
    if watch.divergence is None:
        return result
    if trainer.store is not None and trainer.is_main and result.run_id is not None:
        trainer.store.set_status(result.run_id, DIVERGED, watch.divergence.message)
    return replace(result, status=DIVERGED)


def finite_weights(model) -> bool:
    """Whether every parameter of ``model`` is a finite number (a diverged policy may not be)."""
    return all(bool(p.detach().isfinite().all()) for p in model.parameters())
