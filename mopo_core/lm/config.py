"""The settings of one language-model training run (:class:`TrainConfig`) and the training
methods (:data:`METHODS`), without torch: the command line, the Train page's presenter and the
job queue name methods and build and check configs here without loading the trainer
(:mod:`mopo_core.lm.trainer`, which runs them)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from mopo_core.validation import check_int, check_positive

#: Every training method the trainer runs (the one list: the CLI's ``--method`` choices and
#: the Train page read it from here).
METHODS = ("mopo", "dpo", "ipo", "weighted_dpo", "modpo", "sft")
#: Methods that train on pairs against a frozen reference (DPO's loss and its variants).
PAIRWISE_METHODS = ("dpo", "ipo", "weighted_dpo", "modpo")
#: Methods that mix the objectives with fixed weights (``TrainConfig.objective_weights``).
WEIGHTED_METHODS = ("weighted_dpo", "modpo")

#: The training checkpoint's file name in a run's checkpoint folder (written and read by the trainer).
CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainConfig:
    """Settings of one training run.

    method: "mopo" | "dpo" | "ipo" | "weighted_dpo" | "modpo" | "sft"; thresholds (K-1,) for
    MOPO's secondaries; objective_weights (K,) for weighted_dpo (DPO on the weighted mixture of
    the objectives' soft labels) and modpo (DPO on the primary with beta = tau / c_0 and the
    margin sum_{k>0} c_k (r_k(a) - r_k(b)) / c_0); tau: KL strength (beta of DPO/IPO); steps,
    batch_size (prompts per step for MOPO, pairs per step for the others), lr and
    weight_decay (AdamW), lambda_lr (projected step on the multipliers); t0: lagged-reference
    period, with beta_ratchet the thresholds' ratchet; online (MOPO only): sample
    n_candidates responses per prompt from the policy, up to max_new_tokens tokens, scored by
    the trainer's oracle; eps (MOPO only): radius of the robust constraints' KL ball (0: off),
    chi_lr: the step on their duals chi; gradient_accumulation_steps: micro-batches per process
    and step;
    kl_every: every that many steps, log the estimate of KL(policy || reference) (exact
    per-token KL summed over responses sampled from the policy, never negative; see
    :mod:`mopo_core.lm.trainer`) over n_candidates samples of each of kl_prompts fixed prompts
    (online mode logs its pools' estimate every step instead);
    win_rate_prior (offline MOPO): pseudo-comparisons at win-rate 1/2 added to each response's
    labels, so one won comparison reads (1 + prior/2) / (1 + prior), not 1 (0: raw labels);
    kl_leash (offline MOPO): keep KL(policy || starting model), estimated on the policy's own
    samples, within (1 + sum lambda) / tau nats per response, the most any exact MOPO solution
    can move (see :mod:`mopo_core.lm.trainer`); other methods ignore both;
    heldout_every: every that many steps (and at the last), the trainer's held-out evaluation
    (given by the task: the objectives' win-rates against the reference on held-out prompts,
    with standard errors, the scale the run's point is plotted on) is logged (None: never);
    seed; log_every, checkpoint_every (steps).
    """

    method: str = "mopo"
    thresholds: tuple[float, ...] = (0.5,)
    objective_weights: tuple[float, ...] | None = None
    tau: float = 0.08
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    lambda_lr: float = 1.0
    t0: int | None = None
    beta_ratchet: float | None = None
    online: bool = False
    n_candidates: int = 8
    max_new_tokens: int = 16
    eps: float = 0.0
    chi_lr: float = 0.5
    gradient_accumulation_steps: int = 1
    kl_every: int | None = None
    kl_prompts: int = 4
    win_rate_prior: float = 1.0
    kl_leash: bool = True
    heldout_every: int | None = None
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 25

    def validate(self, n_objectives: int) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.method == "mopo" and len(self.thresholds) != n_objectives - 1:
            raise ValueError(f"thresholds: MOPO needs one per secondary objective ({n_objectives - 1}), "
                             f"got {len(self.thresholds)}")
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "gradient_accumulation_steps",
                     "max_new_tokens", "kl_prompts"):
            check_int(getattr(self, name), name, 1)
        check_int(self.n_candidates, "n_candidates", 2)
        for name in ("t0", "kl_every", "heldout_every"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, 1)
        for name in ("tau", "lr", "lambda_lr", "chi_lr"):
            check_positive(getattr(self, name), name)
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"eps: must be a finite number >= 0 (0: no robust constraints), got {self.eps!r}")
        if not (isinstance(self.win_rate_prior, (int, float)) and math.isfinite(self.win_rate_prior)
                and self.win_rate_prior >= 0):
            raise ValueError(f"win_rate_prior: must be a finite number >= 0 (0: raw labels), got {self.win_rate_prior!r}")
        if not isinstance(self.kl_leash, bool):
            raise ValueError(f"kl_leash: must be true or false, got {self.kl_leash!r}")
        if self.eps > 0 and self.method != "mopo":
            raise ValueError(f"eps: robust constraints are MOPO's; method {self.method!r} has none (set eps to 0)")
        if self.method in WEIGHTED_METHODS:
            weights = self.objective_weights
            if weights is None or len(weights) != n_objectives or min(weights) < 0 or abs(sum(weights) - 1) > 1e-9:
                raise ValueError(f"objective_weights: {self.method} needs {n_objectives} non-negative weights "
                                 f"summing to 1, got {weights}")
            if self.method == "modpo" and (n_objectives < 2 or weights[0] <= 0):
                raise ValueError(f"objective_weights: modpo needs a secondary objective and a primary weight > 0, "
                                 f"got {weights}")
        if self.online and self.method != "mopo":
            raise ValueError(f"online: only MOPO trains online, got method {self.method!r}")
        if self.online and self.kl_every is not None:
            raise ValueError("kl_every: online mode logs the pool's KL estimate every step; leave kl_every unset")
        if self.beta_ratchet is not None and (self.t0 is None or not 0 < self.beta_ratchet <= 1):
            raise ValueError(f"beta_ratchet: needs t0 and must lie in (0, 1], got {self.beta_ratchet}, t0={self.t0}")


def leashed(config: TrainConfig) -> bool:
    """Whether the run holds offline MOPO's KL leash to its starting model (``kl_leash``)."""
    return config.method == "mopo" and not config.online and config.kl_leash


def frozen_copies(config: TrainConfig) -> int:
    """How many frozen full copies of the starting model the trainer holds beside the policy:
    the reference (pairwise methods, online mode, ``t0``, ``kl_every``, the leash) and, for
    offline MOPO with ``t0``, the start as well (the reference then moves)."""
    reference = (config.method in PAIRWISE_METHODS or config.online or config.t0 is not None
                 or bool(config.kl_every) or leashed(config))
    start = config.method == "mopo" and not config.online and config.t0 is not None
    return int(reference) + int(start)


def same_config(stored: dict, config: TrainConfig) -> bool:
    """Whether a stored config dict (possibly written before later fields existed, which then
    take their defaults) describes ``config``."""
    return {**asdict(TrainConfig()), **stored} == asdict(config)
