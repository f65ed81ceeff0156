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

from mopo_core.tabular.optim import Adam, AdamConfig
from mopo_core.tabular.robust import chi_dual_value, chi_gradient
from mopo_core.tabular.solver import TabularProblem, TiltFamily, _default_step_size, kl_divergence, policy_values
from mopo_core.validation import check_int, check_nonnegative, check_positive, check_thresholds

VARIANTS = ("lagrangian", "log_barrier")


@dataclass
class Algorithm1Config:
    """Settings of Algorithm 1.

    steps: iterations; lambda_lr: eta_lam (None: 1/L, the dual's curvature bound);
    chi_lr: eta_chi; adam: the behaviour-cloning optimiser; t0: lagged-reference period in
    steps (None: off); beta: ratchet factor for thresholds (None: off; needs t0);
    variant: "lagrangian" (MOPO-Lag) or "log_barrier" (MOPO-LB) with barrier_sigma and
    barrier_delta (where the log-barrier switches to its quadratic extension);
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
        self.adam.validate("adam")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {self.variant!r}")
        if self.t0 is not None:
            check_int(self.t0, "t0", 1)
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
    slack = np.asarray(slack, dtype=float)
    feasible_side = slack >= delta
    multiplier = np.empty_like(slack)
    multiplier[feasible_side] = sigma / slack[feasible_side]
    multiplier[~feasible_side] = sigma * (2 * delta - slack[~feasible_side]) / (delta * delta)
    return multiplier


def barrier_slack(lam: np.ndarray, sigma: float, delta: float) -> np.ndarray:
    """The inverse of :func:`barrier_multiplier` for lam > 0: the slack whose multiplier is lam
    (``sigma / lam`` up to lam = sigma / delta, then ``2 delta - lam delta^2 / sigma``)."""
    switch = sigma / delta
    return np.where(lam <= switch, sigma / np.minimum(lam, switch), 2 * delta - lam * (delta * delta / sigma))


def _barrier_potential(lam: np.ndarray, sigma: float, delta: float) -> tuple[float, np.ndarray]:
    """``sum_j Psi(lam_j)`` with ``Psi' = -barrier_slack`` and ``Psi(sigma / delta) = 0``, and the
    diagonal of its Hessian ``Psi''(lam_j) = -d barrier_slack / d lam`` (J,), for lam > 0."""
    switch = sigma / delta
    inside = lam <= switch
    beyond = lam[~inside] - switch
    potential = -sigma * np.sum(np.log(lam[inside] / switch)) + np.sum(
        -2 * delta * beyond + (delta * delta / (2 * sigma)) * beyond * (lam[~inside] + switch))
    curvature = np.full(lam.shape, delta * delta / sigma)
    curvature[inside] = sigma / lam[inside] / lam[inside]
    return float(potential), curvature


#: Fixed-point residual of MOPO-LB's multipliers, in slack (win-rate) units per unit of
#: ``1 + |b_j|``, below which the multipliers count as solved.
BARRIER_TOL = 1e-12
#: Safety bound on the Newton iterations (random instances over wide ranges need at most ~50).
BARRIER_MAX_ITER = 200


def barrier_multipliers(family: TiltFamily, thresholds: np.ndarray, sigma: float, delta: float) -> np.ndarray:
    """MOPO-LB's multipliers: the fixed point ``lam_j = barrier_multiplier(V_j(pi_lam) - b_j)``.

    Derivation. :func:`barrier_multiplier` B is strictly decreasing from +inf (slack -> -inf)
    to 0 (slack -> +inf), so it has an inverse s = :func:`barrier_slack` on lam > 0 and the
    fixed point reads ``V_j(pi_lam) - b_j - s(lam_j) = 0`` for every j. The dual's gradient is
    ``dg/dlam_j = V_j(pi_lam) - b_j`` (:meth:`TiltFamily.dual`), so with ``Psi' = -s`` these
    are the stationarity conditions of

        G(lam) = g(lam) + sum_j Psi(lam_j),
        Psi(lam) = -sigma log(lam delta / sigma)                       for lam <= sigma / delta,
                   -2 delta (lam - sigma/delta) + delta^2 (lam^2 - (sigma/delta)^2) / (2 sigma)  beyond.

    g is convex and ``Psi'' = -s' > 0`` (``sigma / lam^2``, then ``delta^2 / sigma``), so G is
    strictly convex; Psi -> +inf as lam -> 0 and grows quadratically as lam -> inf while g
    grows at most linearly (its gradient is a bounded win-rate minus b), so G has exactly one
    minimiser, and it is interior (every barrier multiplier is > 0). Damped Newton on G (the
    dual's Hessian plus ``diag(Psi'')``, positive definite), with a backtracking line search
    that starts inside lam > 0 and asks for Armijo decrease of G, converges from any start;
    once the predicted decrease is below G's rounding error, steps are ranked by the
    residual's norm instead (the Newton step lowers it too). It stops when the residual
    ``|V_j - b_j - s(lam_j)|`` is at most ``BARRIER_TOL (1 + |b_j|)`` in slack units, or when
    no representable step lowers G or the residual any further (floating-point resolution,
    reached only at extreme tilts such as lam / tau ~ 1e7), or after ``BARRIER_MAX_ITER``
    steps, and returns the multipliers (J,).
    """
    b = np.asarray(thresholds, dtype=float)
    _check_barrier_range(family, b, sigma, delta)
    tol = BARRIER_TOL * (1.0 + np.abs(b))
    # Start from each multiplier as if the others stayed at 0.
    lam = barrier_multiplier(family.dual(np.zeros(b.size), b, order=1)[1], sigma, delta)
    for _ in range(BARRIER_MAX_ITER):
        value, grad, hess = family.dual(lam, b)
        potential, curvature = _barrier_potential(lam, sigma, delta)
        residual = grad - barrier_slack(lam, sigma, delta)  # the gradient of G, in slack units
        if np.all(np.abs(residual) <= tol):
            break
        step = -np.linalg.solve(hess + np.diag(curvature), residual)
        trial = _barrier_line_search(family, b, sigma, delta, lam, step, value + potential, residual)
        if trial is None:
            break  # no representable step lowers G or the residual: lam is as exact as floats allow
        lam = trial
    return lam


def _check_barrier_range(family: TiltFamily, b: np.ndarray, sigma: float, delta: float) -> None:
    """ValueError when MOPO-LB's multipliers or curvature could leave the floating-point range.

    V_j lies between the smallest and largest secondary score q, so the fixed point has slack
    in [min q - b_j, max q - b_j] and lam_j between the barrier multipliers of those slacks.
    """
    with np.errstate(all="ignore"):
        smallest = barrier_multiplier(np.max(family.secondary) - b, sigma, delta)
        largest = barrier_multiplier(np.min(family.secondary) - b, sigma, delta)
        logit_scale = largest * np.max(np.abs(family.secondary)) / family.tau
        curvature = np.where(smallest < sigma / delta, sigma / smallest / smallest, delta * delta / sigma)
    if not (np.all(logit_scale < 1e300) and np.all(curvature < 1e300)):
        raise ValueError(f"thresholds: MOPO-LB multipliers for thresholds {b.tolist()} with barrier_sigma={sigma:g} "
                         f"and barrier_delta={delta:g} leave the floating-point range (multipliers between "
                         f"{smallest.tolist()} and {largest.tolist()}); use thresholds within the win-rates' "
                         f"range [0, 1] and a barrier_delta not far below barrier_sigma")


def _barrier_line_search(family, b, sigma, delta, lam, step, objective, residual):
    """Backtracking from the largest step that keeps lam > 0 (times 0.99): the first trial with
    Armijo decrease of G, or once the predicted decrease is below G's rounding error (where G
    cannot rank steps), with a smaller residual norm (the Newton step is a descent direction
    for it too). None when the step is not finite, or the trials shrink to lam itself without either."""
    if not np.all(np.isfinite(step)):
        return None
    shrinking = step < 0
    alpha = min(1.0, 0.99 * float(np.min(lam[shrinking] / -step[shrinking]))) if shrinking.any() else 1.0
    slope, size = float(residual @ step), float(np.linalg.norm(residual))
    within_rounding = -slope <= 1e-12 * max(1.0, abs(objective))
    trial = lam + alpha * step
    while not np.array_equal(trial, lam):
        t_value, t_grad, _ = family.dual(trial, b, order=1)
        if within_rounding:
            accepted = np.linalg.norm(t_grad - barrier_slack(trial, sigma, delta)) <= (1 - 1e-4 * alpha) * size
        else:
            accepted = t_value + _barrier_potential(trial, sigma, delta)[0] <= objective + 1e-4 * alpha * slope
        if accepted:
            return trial
        alpha *= 0.5
        trial = lam + alpha * step
    return None


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
