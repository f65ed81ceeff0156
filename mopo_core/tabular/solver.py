"""Exact MOPO on finite response sets (MOPO.md sections 3-4).

Conventions (shapes):
    preferences  (K, M, N, N)  P[k, m, i, j] = P_k(y_i beats y_j | x_m); objective 0 is the primary
    win-rates    (K, M, N)     w[k, m, y] = sum_j P[k, m, y, j] * behaviour[m, j]
    reference    (M, N)        pi_ref;  behaviour (M, N) mu;  prompt_weights (M,) nu
    thresholds   (J,)          J = K - 1 secondary objectives, all maximised

For multipliers lam >= 0 the optimum is the tilt
    pi_lam(y|x) ∝ pi_ref(y|x) exp((w_0 + sum_j lam_j w_j)(x, y) / tau),
normalised per prompt in log-space, and lam minimises the convex dual
    g(lam) = tau * E_x log sum_y pi_ref exp(s_lam / tau) - lam . b .
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import brentq, linprog, minimize, minimize_scalar

from mopo_core.tabular.robust import robust_lower_bound
from mopo_core.tabular.robust_solver import RobustBarrier, robust_margin, solve_robust_barrier
from mopo_core.validation import (
    as_finite_array,
    check_distribution,
    check_int,
    check_nonnegative,
    check_positive,
    check_preferences,
    check_prompt_weights,
    check_thresholds,
)

#: Constraint residual (win-rate units) below which a threshold counts as met.
FEASIBILITY_TOL = 1e-8
#: How far inside the attainable set infeasible thresholds are moved (win-rate units).
INFEASIBLE_BACKOFF = 1e-3
#: Bound on multipliers. A threshold that needs more (e.g. tau ~ 1e9) is reported as
#: feasible=False, converged=False rather than met.
MAX_MULTIPLIER = 1e9
#: The dual methods :func:`solve_family` accepts.
METHODS = ("newton", "lbfgsb", "projected_gradient")
#: How eps > 0 is solved: "exact" (the robust optimum over all policies, robust_solver.py) or
#: "paper_tilt" (the paper's fixed-point reading: the plain tilt family, robust bound in the
#: constraint only, which Algorithm 1 and the language-model trainer follow; it loses value and
#: can call attainable thresholds infeasible, see docs/solver.md).
ROBUST_FORMS = ("exact", "paper_tilt")


def win_rates(preferences: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
    """Mean win-rate of each response against the behaviour policy: (K, M, N, N), (M, N) -> (K, M, N)."""
    return np.einsum("kmij,mj->kmi", preferences, behaviour)


def policy_values(policy: np.ndarray, rates: np.ndarray, prompt_weights: np.ndarray) -> np.ndarray:
    """``V_k(pi) = sum_m nu_m sum_y pi[m, y] w[k, m, y]``: policy (M, N), rates (K, M, N) -> (K,)."""
    return np.einsum("m,mn,kmn->k", prompt_weights, policy, rates)


def kl_divergence(policy: np.ndarray, reference: np.ndarray, prompt_weights: np.ndarray) -> float:
    """``E_x KL(pi(.|x) || pi_ref(.|x))`` for (M, N) arrays; infinite if pi leaves the support."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(policy > 0, policy * (np.log(policy) - np.log(reference)), 0.0)
    return float(prompt_weights @ terms.sum(axis=1))


def _log_reference(reference: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(reference)


class TiltFamily:
    """The closed-form family ``pi_lam`` for fixed scores, with the dual and its derivatives.

    primary (M, N), secondary (J, M, N), reference (M, N), prompt_weights (M,), tau > 0
    (checked: ValueError when it is not finite and positive, or so small that scores / tau
    overflow). Precomputes ``log pi_ref + s_0 / tau`` so each evaluation is one pass per constraint.
    """

    def __init__(self, primary, secondary, reference, prompt_weights, tau):
        tau = check_positive(tau, "tau")
        with np.errstate(over="ignore"):
            self._slopes = secondary / tau
            scaled_primary = primary / tau
        if not (np.all(np.isfinite(self._slopes)) and np.all(np.isfinite(scaled_primary))):
            raise ValueError(f"tau: {tau:g} is too small for these scores (scores / tau overflows)")
        self.primary = primary
        self.secondary = secondary
        self.reference = reference
        self.log_reference = _log_reference(reference)
        self.prompt_weights = prompt_weights
        self.tau = tau
        self._base = self.log_reference + scaled_primary
        self.max_attainable = attainable_maxima(secondary, reference, prompt_weights)
        self.reference_values = np.einsum("m,mn,jmn->j", prompt_weights, reference, secondary)
        self._robust: dict[float, tuple[RobustBarrier, np.ndarray]] = {}

    def robust(self, eps: float) -> tuple[RobustBarrier, np.ndarray]:
        """The robust problem at radius eps > 0 and its largest attainable robust values (J,)
        (each secondary alone, over all policies), built once per eps."""
        if eps not in self._robust:
            barrier = RobustBarrier(self.primary, self.secondary, self.reference, self.prompt_weights, eps)
            maxima = np.array([
                robust_margin(RobustBarrier(self.primary, q[None], self.reference, self.prompt_weights, eps),
                              np.zeros(1))[0]
                for q in self.secondary
            ])
            self._robust[eps] = barrier, maxima
        return self._robust[eps]

    def log_policy(self, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-prompt normalised log pi_lam (M, N), pi_lam itself (M, N) and log Z (M,)."""
        logits = self._base + np.tensordot(lam, self._slopes, axes=1) if lam.size else self._base.copy()
        mx = logits.max(axis=1, keepdims=True)
        logits -= mx
        pi = np.exp(logits)
        z = pi.sum(axis=1, keepdims=True)
        pi /= z
        log_z = np.log(z)
        return logits - log_z, pi, (log_z + mx)[:, 0]

    def policy(self, lam: np.ndarray) -> np.ndarray:
        return self.log_policy(lam)[1]

    def dual(self, lam: np.ndarray, thresholds: np.ndarray, order: int = 2):
        """Dual value, gradient (J,) and, for ``order=2``, Hessian (J, J) at ``lam``."""
        _, pi, log_z = self.log_policy(lam)
        nu = self.prompt_weights
        value = self.tau * float(nu @ log_z) - float(lam @ thresholds)
        means = np.einsum("mn,jmn->jm", pi, self.secondary)  # E_pi[q_j | x]
        grad = means @ nu - thresholds
        if order < 2:
            return value, grad, None
        second = np.tensordot(self.secondary * (pi * nu[:, None]), self.secondary, axes=([1, 2], [1, 2]))
        hess = (second - (means * nu) @ means.T) / self.tau
        return value, grad, hess


def _projected_gradient_norm(lam: np.ndarray, grad: np.ndarray) -> float:
    """Largest first-order optimality violation on the box 0 <= lam <= MAX_MULTIPLIER."""
    pg = np.where(lam <= 0, np.minimum(grad, 0.0), np.where(lam >= MAX_MULTIPLIER, np.maximum(grad, 0.0), grad))
    return float(np.max(np.abs(pg))) if pg.size else 0.0


def _newton(family: TiltFamily, b: np.ndarray, lam0: np.ndarray, tol: float, max_iter: int):
    """Projected Newton (Bertsekas) for min g(lam) s.t. 0 <= lam <= MAX_MULTIPLIER.

    Returns (lam, iterations, converged).
    """
    lam = np.clip(lam0, 0.0, MAX_MULTIPLIER)
    value, grad, hess = family.dual(lam, b)
    for it in range(1, max_iter + 1):
        if _projected_gradient_norm(lam, grad) <= tol:
            return lam, it - 1, True
        active = ((lam <= 0) & (grad > 0)) | ((lam >= MAX_MULTIPLIER) & (grad < 0))
        free = ~active
        step = np.zeros_like(lam)
        hf = hess[np.ix_(free, free)]
        ridge = 1e-12 * max(1.0, float(np.trace(hf)))
        try:
            step[free] = -np.linalg.solve(hf + ridge * np.eye(hf.shape[0]), grad[free])
        except np.linalg.LinAlgError:
            step[free] = -grad[free]
        alpha = 1.0
        for _ in range(60):
            trial = np.clip(lam + alpha * step, 0.0, MAX_MULTIPLIER)
            t_value, t_grad, t_hess = family.dual(trial, b)
            decrease = t_value - value
            if decrease <= 1e-4 * float(grad @ (trial - lam)) or (
                abs(decrease) <= 1e-13 * max(1.0, abs(value))
                and _projected_gradient_norm(trial, t_grad) < _projected_gradient_norm(lam, grad)
            ):
                break
            alpha *= 0.5
        else:
            return lam, it, False
        lam, value, grad, hess = trial, t_value, t_grad, t_hess
    return lam, max_iter, _projected_gradient_norm(lam, grad) <= tol


def _lbfgsb(family: TiltFamily, b: np.ndarray, lam0: np.ndarray, tol: float, max_iter: int):
    """Fallback: scipy L-BFGS-B on the dual with bounds."""
    res = minimize(
        lambda lam: family.dual(lam, b, order=1)[:2],
        np.clip(lam0, 0.0, MAX_MULTIPLIER),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, MAX_MULTIPLIER)] * b.size,
        options={"maxiter": max_iter, "gtol": tol, "ftol": 0.0},
    )
    grad = family.dual(res.x, b, order=1)[1]
    return res.x, int(res.nit), _projected_gradient_norm(res.x, grad) <= 10 * tol


def _default_step_size(family: TiltFamily) -> float:
    """1/L with L = sum_j range(q_j)^2 / (4 tau), a bound on the dual's curvature everywhere."""
    ranges = np.ptp(family.secondary.reshape(family.secondary.shape[0], -1), axis=1)
    return 4.0 * family.tau / max(float(np.sum(ranges**2)), 1e-12)


def _projected_gradient(family: TiltFamily, b: np.ndarray, lam0: np.ndarray, tol: float, max_iter: int, step_size):
    """The paper's update ``lam <- [lam - eta (V_sec(pi_lam) - b)]_+``; returns (lam, it, converged, trace)."""
    if step_size is None:
        step_size = _default_step_size(family)
    lam = np.clip(lam0, 0.0, MAX_MULTIPLIER)
    trace = [lam.copy()]
    for it in range(1, max_iter + 1):
        grad = family.dual(lam, b, order=1)[1]
        if _projected_gradient_norm(lam, grad) <= tol:
            return lam, it - 1, True, np.array(trace)
        lam = np.clip(lam - step_size * grad, 0.0, MAX_MULTIPLIER)
        trace.append(lam.copy())
    grad = family.dual(lam, b, order=1)[1]
    return lam, max_iter, _projected_gradient_norm(lam, grad) <= tol, np.array(trace)


def attainable_maxima(secondary: np.ndarray, reference: np.ndarray, prompt_weights: np.ndarray) -> np.ndarray:
    """Per-objective best values ``sum_m nu_m max_{y in supp pi_ref} q_j`` (J,): a KL-regularised
    policy never leaves the reference's support."""
    within = np.where(reference[None] > 0, secondary, -np.inf)
    return np.einsum("m,jm->j", prompt_weights, within.max(axis=2))


def chebyshev_margin(
    secondary: np.ndarray, reference: np.ndarray, prompt_weights: np.ndarray, thresholds: np.ndarray
) -> float:
    """Largest t such that some policy on the reference's support has ``V_j >= b_j + t`` for
    every j (an LP; closed form for J = 1).

    secondary (J, M, N), reference (M, N). A positive margin means the thresholds are strictly attainable.
    """
    j, m, n = secondary.shape
    if j == 1:
        return float(attainable_maxima(secondary, reference, prompt_weights)[0] - thresholds[0])
    # Variables: pi (M*N) then t. maximise t  <=>  minimise -t.
    cost = np.zeros(m * n + 1)
    cost[-1] = -1.0
    a_ub = sparse.hstack(
        [sparse.csr_matrix(-(secondary * prompt_weights[None, :, None]).reshape(j, m * n)), np.ones((j, 1))]
    )
    a_eq = sparse.hstack([sparse.kron(sparse.eye(m), np.ones((1, n))), sparse.csr_matrix((m, 1))])
    res = linprog(
        cost,
        A_ub=a_ub,
        b_ub=-thresholds,
        A_eq=a_eq,
        b_eq=np.ones(m),
        bounds=[(0, None if r > 0 else 0) for r in reference.ravel()] + [(None, None)],
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"feasibility LP failed: {res.message}")
    return float(-res.fun)


def enforced_thresholds(thresholds, reference_values, max_attainable, secondary, reference, prompt_weights):
    """The plain (eps = 0) feasibility rule: ``(feasible, effective thresholds (J,))``.

    thresholds, reference_values (V_j(pi_ref)), max_attainable: (J,); secondary (J, M, N).
    Feasible when pi_ref meets every threshold or the Chebyshev margin over all policies is above
    FEASIBILITY_TOL; then the thresholds are enforced as asked. Otherwise the nearest thresholds
    (a uniform shift) INFEASIBLE_BACKOFF inside the attainable set are enforced.
    """
    if np.all(reference_values >= thresholds - FEASIBILITY_TOL):
        return True, thresholds
    # Clip before measuring the margin: b + (margin - backoff) with b ~ 1e16 would lose the
    # attainable part to cancellation. A clipped threshold sits on its maximum: margin <= 0.
    reachable = np.minimum(thresholds, max_attainable)
    margin = chebyshev_margin(secondary, reference, prompt_weights, reachable)
    if margin > FEASIBILITY_TOL:
        return True, thresholds
    return False, reachable + (margin - INFEASIBLE_BACKOFF)


@dataclass
class TabularSolution:
    """Result of :func:`solve_tabular` / :func:`solve_scores`.

    policy: (N,) for one prompt given as (K, N, N), else (M, N).
    multipliers (J,), values (K,) = V_k(policy), max_attainable (J,) per-objective maxima (with
    eps > 0 and the exact robust form: the largest robust bound each secondary reaches alone).
    thresholds (J,) as requested; effective_thresholds (J,) the ones enforced (when the request
    cannot be met: each clipped to its attainable maximum, then all moved inside the attainable
    set, by INFEASIBLE_BACKOFF beyond the nearest attainable uniform shift).
    feasible: the requested thresholds are attainable (robust bounds when eps > 0), so that a
    converged solution meets them up to FEASIBILITY_TOL; False when they are not, and also when
    meeting them would need a multiplier above MAX_MULTIPLIER (then converged is False too).
    robust_values (J,) and chi (J,) are the robust bounds and their duals when eps > 0.
    trace: (T, J) multipliers per projected-gradient iteration (method="projected_gradient").
    method: the dual method used, or "robust_barrier" for the exact robust solve.
    """

    policy: np.ndarray
    multipliers: np.ndarray
    values: np.ndarray
    feasible: bool
    max_attainable: np.ndarray
    thresholds: np.ndarray
    effective_thresholds: np.ndarray
    tau: float
    eps: float
    kl: float
    objective: float
    converged: bool
    iterations: int
    method: str
    robust_values: np.ndarray | None = None
    chi: np.ndarray | None = None
    trace: np.ndarray | None = field(default=None, repr=False)

    @property
    def constraint_slack(self) -> np.ndarray:
        """(J,) achieved secondary value (robust bound when eps > 0) minus requested threshold."""
        achieved = self.values[1:] if self.robust_values is None else self.robust_values
        return achieved - self.thresholds

    def to_dict(self, include_policy: bool = True) -> dict:
        """JSON-ready dict (lists and floats); ``chi = inf`` becomes None."""
        out = {}
        for key, value in asdict(self).items():
            if key == "policy" and not include_policy:
                continue
            if isinstance(value, np.ndarray):
                value = np.where(np.isfinite(value), value, np.nan).tolist()
            out[key] = value
        out["constraint_slack"] = self.constraint_slack.tolist()
        return _nan_to_none(out)


def _nan_to_none(obj):
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    return obj


def _solve_dual(family, b, lam0, method, tol, max_iter, step_size):
    """Dispatch to the chosen dual method; Newton falls back to L-BFGS-B if it stalls."""
    if method == "newton":
        lam, it, ok = _newton(family, b, lam0, tol, max_iter)
        if not ok:
            lam, extra, ok = _lbfgsb(family, b, lam, tol, 10 * max_iter)
            it += extra
        return lam, it, ok, None
    if method == "lbfgsb":
        return (*_lbfgsb(family, b, lam0, tol, 10 * max_iter), None)
    return _projected_gradient(family, b, lam0, tol, max_iter, step_size)


def _check_multipliers(value, n_constraints: int) -> np.ndarray:
    """``initial_multipliers``: (J,) finite and >= 0."""
    lam = np.atleast_1d(as_finite_array(value, "initial_multipliers"))
    if lam.shape != (n_constraints,):
        raise ValueError(f"initial_multipliers: expected {n_constraints} value(s), one per secondary objective, "
                         f"got shape {lam.shape}")
    if np.any(lam < 0):
        j = int(np.argmax(lam < 0))
        raise ValueError(f"initial_multipliers: must be >= 0, got {lam[j]} at index {j}")
    return lam


def _robust_values(family: TiltFamily, policy: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Robust bounds LB_j (J,) and chi_j (J,) of ``policy`` with rho = pi / pi_ref."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(family.reference > 0, policy / family.reference, 0.0)
    pairs = [robust_lower_bound(rho * q, family.reference, family.prompt_weights, eps) for q in family.secondary]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def _solve_robust_exact(family: TiltFamily, b: np.ndarray, eps: float):
    """The robust optimum over all policies (robust_solver.py), with feasibility decided by the
    robust Chebyshev margin s*: feasible when s* > FEASIBILITY_TOL or pi_ref meets b. An
    infeasible b is moved to b + s* - INFEASIBLE_BACKOFF; a b that pi_ref meets with no strictly
    feasible point to spare (s* <= FEASIBILITY_TOL) is loosened by at most that margin.
    Returns (policy, lam, iterations, converged, effective thresholds, feasible, max_attainable).
    """
    barrier, maxima = family.robust(eps)
    reference_met = bool(np.all(_robust_values(family, family.reference, eps)[0] >= b - FEASIBILITY_TOL))
    lower, _, pi, chi, steps = robust_margin(barrier, b, stop_above=FEASIBILITY_TOL)  # s* itself when not above
    feasible = lower > FEASIBILITY_TOL or reference_met
    effective = b
    if lower <= FEASIBILITY_TOL:
        effective = b + lower - (INFEASIBLE_BACKOFF if not feasible else 1e-3 * FEASIBILITY_TOL)
    result = solve_robust_barrier(barrier, family.tau, effective, pi, chi)
    return (result.policy, result.multipliers, steps + result.iterations, result.converged, effective, feasible,
            maxima)


def _solve_robust_tilt(family, b, lam0, tol, max_iter, step_size, eps):
    """Multipliers for the robust constraints ``LB_j(pi_lam) >= b_j`` (the paper's fixed point).

    The policy stays in the tilt family; only the constraint uses the robust bound. LB is not
    monotone in lam (a sharper tilt is more fragile), so some thresholds are unattainable.
    J = 1: the smallest lam with LB = b, found by bracketing below the peak of LB; if the peak
    is below b, the peak's lam (the most robust policy of the family) and ``feasible=False``.
    J >= 2: the paper's projected-gradient update on LB, keeping the least-violating iterate.
    Returns (lam, iterations, converged, robust_values, chi, feasible).
    """
    def lb_at(lam):
        return _robust_values(family, family.policy(np.atleast_1d(lam)), eps)

    lb0, chi0 = lb_at(np.zeros(b.size))
    if np.all(lb0 >= b - tol):
        return np.zeros(b.size), 0, True, lb0, chi0, True
    if b.size == 1:
        shortfall = lambda log1p_lam: float(lb_at(np.expm1(log1p_lam))[0][0] - b[0])
        # LB(lam) may be multimodal: scan a grid in log(1 + lam), then refine around the best cell.
        grid = np.linspace(0.0, np.log1p(1e6), 97)
        scan = np.array([shortfall(u) for u in grid])
        crossing = np.flatnonzero(scan >= 0)
        if crossing.size:
            hi = grid[crossing[0]]
            root = brentq(shortfall, grid[crossing[0] - 1], hi, xtol=1e-14, rtol=1e-14, full_output=True)
            lam = np.array([np.expm1(root[0])])
            return (lam, grid.size + root[1].iterations, True, *lb_at(lam), True)
        k = int(np.argmax(scan))
        peak = minimize_scalar(lambda u: -shortfall(u), bounds=(grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]),
                               method="bounded", options={"xatol": 1e-10})
        u = peak.x if -peak.fun >= scan[k] else grid[k]
        if -peak.fun >= -tol:  # the peak itself meets the threshold
            root = brentq(shortfall, grid[max(k - 1, 0)], u, xtol=1e-14, rtol=1e-14)
            lam = np.array([np.expm1(root)])
            return (lam, grid.size + peak.nfev, True, *lb_at(lam), True)
        lam = np.array([np.expm1(u)])
        return (lam, grid.size + peak.nfev, True, *lb_at(lam), False)
    if step_size is None:
        step_size = _default_step_size(family)
    lam = np.clip(lam0, 0.0, MAX_MULTIPLIER)
    best = (np.inf, lam, lb0, chi0)
    for it in range(1, max_iter + 1):
        lb, chi = lb_at(lam)
        violation = float(np.max(np.where(lam > 0, np.abs(lb - b), np.maximum(b - lb, 0.0))))
        if violation < best[0]:
            best = (violation, lam.copy(), lb, chi)
        if violation <= 10 * tol:
            return lam, it, True, lb, chi, True
        lam = np.clip(lam - step_size * (lb - b), 0.0, MAX_MULTIPLIER)
    _, lam, lb, chi = best
    return lam, max_iter, False, lb, chi, bool(np.all(lb >= b - 1e-6))


def solve_scores(
    primary: np.ndarray,
    secondary: np.ndarray,
    thresholds,
    tau: float,
    reference: np.ndarray,
    prompt_weights: np.ndarray,
    eps: float = 0.0,
    method: str = "newton",
    initial_multipliers=None,
    tol: float = 1e-10,
    max_iter: int = 100,
    step_size: float | None = None,
    robust_form: str = "exact",
) -> TabularSolution:
    """MOPO's constrained problem for arbitrary per-response scores (already validated arrays).

    primary (M, N), secondary (J, M, N), reference (M, N), prompt_weights (M,).
    Maximises ``E[primary] - tau KL`` subject to ``E[secondary_j] >= b_j`` (or the robust bound
    when eps > 0). Used by :func:`solve_tabular` on win-rates and by reward-based baselines.
    Returns policy (M, N).
    """
    family = TiltFamily(primary, secondary, reference, prompt_weights, tau)
    return solve_family(family, thresholds, eps, method, initial_multipliers, tol, max_iter, step_size, robust_form)


def solve_family(
    family: TiltFamily,
    thresholds,
    eps: float = 0.0,
    method: str = "newton",
    initial_multipliers=None,
    tol: float = 1e-10,
    max_iter: int = 100,
    step_size: float | None = None,
    robust_form: str = "exact",
) -> TabularSolution:
    """:func:`solve_scores` on a prebuilt :class:`TiltFamily` (reused across a sweep).

    Arguments are checked (ValueError naming the argument): eps finite >= 0, method one of
    METHODS, initial_multipliers None or (J,) finite >= 0, tol finite >= 0, max_iter an
    integer >= 1, step_size None or finite > 0, robust_form one of ROBUST_FORMS. With eps > 0
    and robust_form "exact", method, initial_multipliers, tol, max_iter and step_size do not
    apply (the barrier method has its own tolerances, robust_solver.GAP_TOL).
    """
    b = check_thresholds(thresholds, family.secondary.shape[0])
    eps = check_nonnegative(eps, "eps")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if robust_form not in ROBUST_FORMS:
        raise ValueError(f"robust_form: expected one of {ROBUST_FORMS}, got {robust_form!r}")
    lam0 = np.zeros(b.size) if initial_multipliers is None else _check_multipliers(initial_multipliers, b.size)
    tol = check_nonnegative(tol, "tol")
    max_iter = check_int(max_iter, "max_iter", 1)
    if step_size is not None:
        step_size = check_positive(step_size, "step_size")
    robust_values = chi = trace = None
    max_attainable = family.max_attainable
    if eps > 0 and robust_form == "exact":
        policy, lam, it, ok, effective, feasible, max_attainable = _solve_robust_exact(family, b, eps)
        robust_values, chi = _robust_values(family, policy, eps)
    elif eps > 0:
        lam, it, ok, robust_values, chi, feasible = _solve_robust_tilt(
            family, b, lam0, tol, max_iter if method == "projected_gradient" else 20 * max_iter, step_size, eps
        )
        effective = b
    else:
        feasible, effective = enforced_thresholds(b, family.reference_values, family.max_attainable,
                                                  family.secondary, family.reference, family.prompt_weights)
        lam, it, ok, trace = _solve_dual(family, effective, lam0, method, tol, max_iter, step_size)
    if eps == 0 or robust_form != "exact":
        policy = family.policy(lam)
    nu = family.prompt_weights
    values = np.concatenate([[nu @ (policy * family.primary).sum(axis=1)],
                             np.einsum("m,mn,jmn->j", nu, policy, family.secondary)])
    achieved = values[1:] if robust_values is None else robust_values
    if np.any((lam >= MAX_MULTIPLIER) & (achieved < effective - FEASIBILITY_TOL)):
        feasible = ok = False  # the cap, not the thresholds, stopped the solve
    kl = kl_divergence(policy, family.reference, nu)
    return TabularSolution(
        policy=policy,
        multipliers=lam,
        values=values,
        feasible=bool(feasible),
        max_attainable=max_attainable,
        thresholds=b,
        effective_thresholds=np.asarray(effective, float),
        tau=family.tau,
        eps=eps,
        kl=kl,
        objective=float(values[0] - family.tau * kl),
        converged=bool(ok),
        iterations=int(it),
        method=method if eps == 0 or robust_form != "exact" else "robust_barrier",
        robust_values=robust_values,
        chi=chi,
        trace=trace,
    )


@dataclass
class SweepResult:
    """A threshold sweep: thresholds (T, J), values (T, K), multipliers (T, J), feasible (T,),
    kl (T,), and policies (T, M, N) when kept."""

    thresholds: np.ndarray
    values: np.ndarray
    multipliers: np.ndarray
    feasible: np.ndarray
    kl: np.ndarray
    policies: np.ndarray | None = None


@dataclass
class TabularProblem:
    """Validated inputs of a tabular MOPO problem (see module docstring for shapes)."""

    preferences: np.ndarray
    reference: np.ndarray
    behaviour: np.ndarray
    prompt_weights: np.ndarray
    rates: np.ndarray
    single_prompt: bool
    _families: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, preferences, reference=None, behaviour=None, prompt_weights=None) -> "TabularProblem":
        single = np.ndim(preferences) == 3
        prefs = check_preferences(preferences)
        _, m, n, _ = prefs.shape
        ref = check_distribution(reference, m, n, "reference")
        mu = check_distribution(behaviour, m, n, "behaviour")
        nu = check_prompt_weights(prompt_weights, m)
        return cls(prefs, ref, mu, nu, win_rates(prefs, mu), single)

    def family(self, tau: float) -> TiltFamily:
        """The tilt family at this tau, built once and reused (e.g. across a sweep)."""
        if tau not in self._families:
            self._families[tau] = TiltFamily(self.rates[0], self.rates[1:], self.reference, self.prompt_weights, tau)
        return self._families[tau]

    def solve(self, thresholds, tau, eps=0.0, **kwargs) -> TabularSolution:
        tau = check_positive(tau, "tau")
        eps = check_nonnegative(eps, "eps")
        sol = solve_family(self.family(tau), thresholds, eps, **kwargs)
        if self.single_prompt:
            sol.policy = sol.policy[0]
        return sol

    def sweep(self, thresholds, tau, eps=0.0, keep_policies=True, progress=None) -> SweepResult:
        """:func:`sweep_thresholds` on this already validated problem."""
        grid = np.asarray(thresholds, dtype=float)
        if grid.ndim == 1:
            grid = grid[:, None]
        tau = check_positive(tau, "tau")
        eps = check_nonnegative(eps, "eps")
        rows = range(grid.shape[0]) if progress is None else progress(range(grid.shape[0]))
        values, lams, feas, kls, pols = [], [], [], [], []
        lam = None
        for t in rows:
            sol = self.solve(grid[t], tau, eps, initial_multipliers=lam)
            lam = sol.multipliers
            values.append(sol.values)
            lams.append(sol.multipliers)
            feas.append(sol.feasible)
            kls.append(sol.kl)
            if keep_policies:
                pols.append(sol.policy)
        return SweepResult(
            thresholds=grid,
            values=np.array(values).reshape(grid.shape[0], -1),
            multipliers=np.array(lams).reshape(grid.shape),
            feasible=np.array(feas, dtype=bool),
            kl=np.array(kls),
            policies=np.array(pols) if keep_policies else None,
        )


def solve_tabular(
    preferences,
    thresholds,
    tau: float,
    reference=None,
    behaviour=None,
    eps: float = 0.0,
    prompt_weights=None,
    method: str = "newton",
    **kwargs,
) -> TabularSolution:
    """Solve MOPO exactly on a finite response set.

    preferences: (K, N, N) for one prompt or (K, M, N, N); objective 0 is the primary.
    thresholds: (K-1,) lower bounds on the secondaries' values (win-rates against ``behaviour``).
    tau > 0: KL strength. reference, behaviour: None (uniform), (N,) or (M, N).
    eps >= 0: robust KL-ball radius (MOPO.md section 4). prompt_weights: None (equal) or (M,).
    method: "newton" (projected Newton on the dual, default), "lbfgsb", or
    "projected_gradient" (the paper's update; ``sol.trace`` holds lambda per iteration).
    Extra keyword arguments: ``initial_multipliers``, ``tol``, ``max_iter``, ``step_size``,
    ``robust_form`` ("exact", default: the robust optimum over all policies; "paper_tilt": the
    paper's fixed point inside the plain tilt family).

    Returns a :class:`TabularSolution`; thresholds that cannot be met give ``feasible=False``,
    ``max_attainable`` and the policy for the nearest attainable thresholds (never NaN).
    """
    problem = TabularProblem.build(preferences, reference, behaviour, prompt_weights)
    return problem.solve(thresholds, tau, eps, method=method, **kwargs)


def sweep_thresholds(
    preferences,
    thresholds,
    tau: float,
    reference=None,
    behaviour=None,
    eps: float = 0.0,
    prompt_weights=None,
    keep_policies: bool = True,
    progress=None,
) -> SweepResult:
    """Solve MOPO for each row of ``thresholds`` ((T,) for K = 2 or (T, K-1)), warm-starting
    each solve from the previous multipliers. ``progress`` wraps the iterable (e.g. tqdm)."""
    problem = TabularProblem.build(preferences, reference, behaviour, prompt_weights)
    return problem.sweep(thresholds, tau, eps, keep_policies, progress)
