"""Algorithm 1 of MOPO (MOPO.md section 5) on tabular softmax policies.

The policy is ``pi_psi = softmax(psi)`` over per-prompt logits psi (M, N). Each step:

    chi <- [chi + eta_chi * dJ/dchi]_+          robust duals (only when eps > 0)
    lam <- [lam - eta_lam * (V_sec_hat(rho_lam) - b)]_+
    rho_lam = pi_lam / pi_ref, the normalised closed-form weights (no gradient)
    psi <- Adam step on  - E_{y ~ pi_ref} [ rho_lam(y) log pi_psi(y) ]      weighted behaviour cloning

with optional lagged reference (every t0 steps pi_ref <- pi_psi as it was t0 steps ago),
ratcheting thresholds (b <- max(b_user, beta * V_sec reached t0 steps ago)) and the MOPO-LB
variant (multipliers from a smoothed log-barrier on the constraint slack instead of dual steps).

Win-rates come from exact preferences or from data (``synthetic.estimate_preferences``);
with exact win-rates and no lag, the iterates converge to :func:`mopo_core.solve_tabular`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.optimize import root

from .optim import Adam, AdamConfig
from .robust import chi_dual_value, chi_gradient
from .tabular import TabularProblem, TiltFamily, _default_step_size, kl_divergence, policy_values
from .validation import check_int, check_nonnegative, check_positive, check_thresholds

VARIANTS = ("lagrangian", "log_barrier")


@dataclass
class Algorithm1Config:
    """Settings of Algorithm 1.

    steps: iterations; lambda_lr: eta_lam (None: 1/L, the dual's curvature bound);
    chi_lr: eta_chi; adam: the behaviour-cloning optimiser; t0: lagged-reference period in
    steps (None: off); beta: ratchet factor for thresholds (None: off; needs t0);
    variant: "lagrangian" (MOPO-Lag) or "log_barrier" (MOPO-LB) with barrier_sigma and
    barrier_delta (where the log-barrier switches to its quadratic extension) and
    barrier_damping (share of the new barrier multiplier mixed in per step);
    log_every: metric logging period.
    """

    steps: int = 3000
    lambda_lr: float | None = None
    chi_lr: float = 0.5
    adam: AdamConfig = field(default_factory=lambda: AdamConfig(lr=0.05))
    t0: int | None = None
    beta: float | None = None
    variant: str = "lagrangian"
    barrier_sigma: float = 1e-3
    barrier_delta: float = 1e-3
    log_every: int = 10

    def validate(self) -> None:
        for name in ("steps", "log_every"):
            check_int(getattr(self, name), name, 1)
        check_positive(self.adam.lr, "adam.lr")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {self.variant!r}")
        if self.t0 is not None and self.t0 < 1:
            raise ValueError(f"t0: must be >= 1 or None, got {self.t0}")
        if self.beta is not None and (self.t0 is None or not 0 < self.beta <= 1):
            raise ValueError(f"beta: needs t0 and must lie in (0, 1], got beta={self.beta}, t0={self.t0}")
        if self.lambda_lr is not None:
            check_positive(self.lambda_lr, "lambda_lr")
        check_positive(self.chi_lr, "chi_lr")
        check_positive(self.barrier_sigma, "barrier_sigma")
        check_positive(self.barrier_delta, "barrier_delta")


@dataclass
class Algorithm1Result:
    """policy (M, N) or (N,) for single-prompt input; multipliers (J,); chi (J,) or None;
    thresholds (J,) in force at the end (ratcheted when beta is set); history: arrays per
    logged step ("step" (T,), "lambda" (T, J), "values" (T, K), "kl" (T,), "ess" (T,),
    "loss" (T,), "thresholds" (T, J))."""

    policy: np.ndarray
    multipliers: np.ndarray
    chi: np.ndarray | None
    values: np.ndarray
    thresholds: np.ndarray
    history: dict[str, np.ndarray]


def barrier_multiplier(slack: np.ndarray, sigma: float, delta: float) -> np.ndarray:
    """Multiplier ``-d/dslack`` of the smoothed barrier: ``sigma / slack`` for slack >= delta,
    continued linearly (the derivative of a C^2 quadratic extension) on the infeasible side."""
    safe = np.maximum(slack, delta)
    return np.where(slack >= delta, sigma / safe, sigma * (2 * delta - slack) / delta**2)


def barrier_multipliers(family: TiltFamily, thresholds: np.ndarray, sigma: float, delta: float) -> np.ndarray:
    """MOPO-LB's multipliers: the fixed point ``lam_j = barrier_multiplier(V_j(pi_lam) - b_j)``.

    For each j the left side increases and the right side decreases in lam_j, so each
    coordinate's root is unique given the others; one bisection pass per coordinate starts
    the solve, and for J >= 2 a hybrid Newton (scipy ``root``) finishes the coupled system.
    """
    def residual(lam):
        slack = policy_values(family.policy(lam), family.secondary, family.prompt_weights) - thresholds
        return lam - barrier_multiplier(slack, sigma, delta)

    lam = np.zeros(thresholds.size)
    upper = sigma * (2 * delta + 1.0) / delta**2  # win-rate slack is never below -1
    for j in range(lam.size):
        lo, hi = 0.0, upper
        for _ in range(80):
            lam[j] = 0.5 * (lo + hi)
            lo, hi = (lo, lam[j]) if residual(lam)[j] > 0 else (lam[j], hi)
    if lam.size > 1:
        solved = root(residual, lam, method="hybr", options={"xtol": 1e-14})
        if not solved.success or np.max(np.abs(residual(np.maximum(solved.x, 0)))) > 1e-8:
            raise RuntimeError(f"MOPO-LB multipliers did not converge: {solved.message}")
        lam = np.maximum(solved.x, 0.0)
    return lam


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    mx = logits.max(axis=1, keepdims=True)
    return logits - mx - np.log(np.exp(logits - mx).sum(axis=1, keepdims=True))


def run_algorithm1(
    preferences,
    thresholds,
    tau: float,
    reference=None,
    behaviour=None,
    eps: float = 0.0,
    prompt_weights=None,
    config: Algorithm1Config | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> Algorithm1Result:
    """Run Algorithm 1 on tabular logits. Arguments as :func:`mopo_core.solve_tabular`.

    ``preferences`` may be exact or estimated from data. ``callback(step, metrics)`` is
    called every ``config.log_every`` steps with scalar metrics (lambda_j, value_k, kl, ess, loss).
    """
    config = config or Algorithm1Config()
    config.validate()
    problem = TabularProblem.build(preferences, reference, behaviour, prompt_weights)
    tau = check_positive(tau, "tau")
    eps = check_nonnegative(eps, "eps")
    if eps > 0 and config.variant == "log_barrier":
        raise ValueError("variant: 'log_barrier' (MOPO-LB) has no robust form here; use eps=0 or 'lagrangian'")
    rates, nu = problem.rates, problem.prompt_weights
    n_sec = rates.shape[0] - 1
    b_user = check_thresholds(thresholds, n_sec)

    reference_now = problem.reference.copy()
    family = TiltFamily(rates[0], rates[1:], reference_now, nu, tau)
    lambda_lr = config.lambda_lr or _default_step_size(family)
    psi = np.log(np.maximum(reference_now, 1e-300))
    adam = Adam(psi, config.adam)
    lam = np.zeros(n_sec)
    chi = np.ones(n_sec) if eps > 0 else None
    b = b_user.copy()
    barrier_stale = True  # MOPO-LB multipliers depend only on the reference and thresholds
    snapshots: list[tuple[np.ndarray, np.ndarray]] = []  # (policy, V_sec) every t0 steps
    history: dict[str, list] = {k: [] for k in ("step", "lambda", "values", "kl", "ess", "loss", "thresholds")}

    for step in range(1, config.steps + 1):
        target = family.policy(lam)  # pi_lam = pi_ref * rho_lam
        rho = np.divide(target, reference_now, out=np.zeros_like(target), where=reference_now > 0)
        if eps > 0:
            z = rho[None] * rates[1:]
            for j in range(n_sec):
                chi[j] = max(chi[j] + config.chi_lr * chi_gradient(z[j], reference_now, nu, eps, chi[j]), 1e-8)
            constraint = np.array([chi_dual_value(z[j], reference_now, nu, eps, chi[j]) for j in range(n_sec)])
        else:
            constraint = policy_values(target, rates[1:], nu)

        log_pi = _log_softmax(psi)
        pi = np.exp(log_pi)
        if config.variant == "lagrangian":
            lam = np.maximum(lam - lambda_lr * (constraint - b), 0.0)
        elif barrier_stale:
            lam = barrier_multipliers(family, b, config.barrier_sigma, config.barrier_delta)
            barrier_stale = False

        # Weighted behaviour cloning: loss = -sum_m nu_m sum_y pi_ref rho log pi_psi; grad wrt psi.
        loss = -float(nu @ (target * log_pi).sum(axis=1))
        adam.step(nu[:, None] * (pi - target))

        if config.t0 is not None and step % config.t0 == 0:
            snapshots.append((pi.copy(), policy_values(pi, rates[1:], nu)))
            if len(snapshots) >= 2:
                lagged_policy, lagged_values = snapshots[-2]
                reference_now = lagged_policy
                family = TiltFamily(rates[0], rates[1:], reference_now, nu, tau)
                barrier_stale = True
                if config.beta is not None:
                    b = np.maximum(b_user, config.beta * lagged_values)

        if step % config.log_every == 0 or step == config.steps:
            values = policy_values(pi, rates, nu)
            ess = float(nu @ (1.0 / np.sum(reference_now * rho**2, axis=1)))
            metrics = {"kl": kl_divergence(pi, problem.reference, nu), "ess": ess, "loss": loss}
            metrics.update({f"lambda_{j + 1}": float(lam[j]) for j in range(n_sec)})
            metrics.update({f"value_{k}": float(values[k]) for k in range(values.size)})
            if chi is not None:
                metrics.update({f"chi_{j + 1}": float(chi[j]) for j in range(n_sec)})
            for key, item in (("step", step), ("lambda", lam.copy()), ("values", values), ("kl", metrics["kl"]),
                              ("ess", ess), ("loss", loss), ("thresholds", b.copy())):
                history[key].append(item)
            if callback is not None:
                callback(step, metrics)

    policy = np.exp(_log_softmax(psi))
    values = policy_values(policy, rates, nu)
    return Algorithm1Result(
        policy=policy[0] if problem.single_prompt else policy,
        multipliers=lam,
        chi=chi,
        values=values,
        thresholds=b,
        history={k: np.array(v) for k, v in history.items()},
    )
