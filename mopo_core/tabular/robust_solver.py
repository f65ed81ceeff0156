"""The exact robust MOPO problem of MOPO.md section 4, solved by a primal barrier method.

Shapes: primary (M, N), secondary (J, M, N), reference (M, N), prompt_weights (M,),
thresholds (J,). The problem is

    maximise   V_0(pi) - tau * E_x KL(pi || pi_ref)
    subject to LB_j(pi) >= b_j,   LB_j(pi) = min_{Q: E_x KL(Q || pi_ref) <= eps} E_x E_Q[rho q_j]

with rho = pi / pi_ref. Writing LB_j by its dual (robust.py),

    LB_j(pi) = max_{chi > 0} h_j(pi, chi),
    h_j(pi, chi) = -chi * E_x log E_{pi_ref} exp(-pi q_j / (pi_ref chi)) - chi * eps,

and h_j is jointly concave in (pi, chi) (minus the perspective of a log-sum-exp), so the robust
problem is the smooth convex program ``max V_0 - tau KL s.t. h_j(pi, chi_j) >= b_j`` over
(pi, chi): one optimum, found by a log-barrier interior-point method (Newton steps on the barrier
with the simplex equalities per prompt, t multiplied by 16 per stage until the barrier's gap
bound 2J / t is below 1e-11). Its optimum is not a tilt of pi_ref by the plain win-rates: each
secondary is reweighted by the adversary's density ratio Q*_j / pi_ref.

Feasibility is decided over all policies (not only tilts) by the robust Chebyshev margin
``s* = max_{pi, chi} min_j h_j(pi, chi_j) - b_j`` (another barrier problem, with log-barriers
on pi >= 0): each centred stage brackets s* between its iterate's margin and that plus
(number of barrier terms) / t, and the bracket decides the sign. The largest attainable robust
value of objective j is the same problem with the single constraint j and b_j = 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Barrier gap (value units) at which the barrier method stops: policy and value errors are
#: O(gap) at a non-degenerate optimum.
GAP_TOL = 1e-11
#: Factor by which the barrier weight t grows between centring stages.
T_GROWTH = 16.0
#: First barrier weight times tau: with t * tau well above 1 the entropy keeps every
#: probability near its optimum's size from the first stage (at t * tau << 1 the constraint
#: barriers alone drive some probabilities to ~1e-78, which Newton steps in pi recover slowly).
START_WEIGHT = 10.0
#: Squared Newton decrement at which a centring stage stops (barrier units), and the same per
#: unit of barrier weight t (so in objective units: at t ~ 1e11 the last stage stops within
#: ~1e-16 of its centre in V_0 - tau KL, well inside F's own rounding of ~1e-14 t).
DECREMENT_TOL = 1e-12
DECREMENT_PER_WEIGHT = 1e-16
#: Newton steps allowed per centring stage.
MAX_NEWTON = 200


@dataclass
class RobustSolveResult:
    """policy (M, N); chi (J,) the bound duals at the optimum; multipliers (J,) the barrier's
    estimate 1 / (t * slack_j) of lambda; iterations (Newton steps in all); converged."""

    policy: np.ndarray
    chi: np.ndarray
    multipliers: np.ndarray
    iterations: int
    converged: bool


class RobustBarrier:
    """The constraint functions h_j with their first and second derivatives, on the reference's
    support (pi is fixed at 0 off the support, where the KL to pi_ref would be infinite)."""

    def __init__(self, primary, secondary, reference, prompt_weights, eps):
        self.shape = reference.shape
        self.support = reference > 0
        rows = np.nonzero(self.support)[0]
        self.starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])  # rows sorted: one run per prompt
        self.rows = rows
        self.ref = reference[self.support]
        self.log_ref = np.log(self.ref)
        self.primary = primary[self.support]
        self.scores = secondary[:, self.support] / self.ref  # c_j = q_j / pi_ref, (J, n)
        self.nu = prompt_weights
        self.nu_row = prompt_weights[rows]
        self.eps = eps
        self.same_prompt = (rows[:, None] == rows[None, :]).astype(float)
        self.n = rows.size
        self.n_constraints = secondary.shape[0]
        self.n_prompts = reference.shape[0]

    def prompt_sums(self, values: np.ndarray) -> np.ndarray:
        """Sum of (..., n) over each prompt's responses -> (..., M)."""
        return np.add.reduceat(values, self.starts, axis=-1)

    def to_policy(self, pi: np.ndarray) -> np.ndarray:
        """pi (n,) on the support -> (M, N), each row renormalised (Newton steps keep the rows'
        sums at 1 only up to accumulated rounding)."""
        full = np.zeros(self.shape)
        full[self.support] = pi
        return full / full.sum(axis=1, keepdims=True)

    def constraints(self, pi: np.ndarray, chi: np.ndarray, order: int) -> dict:
        """Every h_j at (pi (n,), chi (J,)): "value" (J,); for order >= 1 the gradients "d_pi"
        (J, n) and "d_chi" (J,) (each h_j depends on its own chi_j only); for order 2 the pieces
        of minus each Hessian (positive semidefinite): "cw" (J, n) = c_j w_j, "cross" (J, n)
        the (pi, chi_j) entries and "chi_chi" (J,); the (pi, pi) block of minus the Hessian of
        h_j is ``(diag(nu c_j cw_j) - same_prompt * nu outer(cw_j, cw_j)) / chi_j``."""
        c = self.scores
        a = c * pi / chi[:, None]
        logits = self.log_ref - a
        peak = np.maximum.reduceat(logits, self.starts, axis=1)
        e = np.exp(logits - peak[:, self.rows])
        total = self.prompt_sums(e)
        lse = peak + np.log(total)
        out = {"value": -chi * (lse @ self.nu) - chi * self.eps}
        if order == 0:
            return out
        w = e / total[:, self.rows]  # the adversary Q_chi per prompt
        mean_a = self.prompt_sums(w * a)
        kl = -mean_a - lse  # KL(Q_chi || pi_ref) per prompt
        out["d_pi"] = self.nu_row * w * c
        out["d_chi"] = kl @ self.nu - self.eps
        if order == 2:
            out["cw"] = c * w
            out["cross"] = -self.nu_row * c * (w * a - w * mean_a[:, self.rows]) / chi[:, None]
            out["chi_chi"] = (self.prompt_sums(w * a * a) - mean_a**2) @ self.nu / chi
        return out


def _newton_centre(barrier_value, x, is_inside, eq_matrix, weight):
    """Minimise a barrier function F = weight * objective + barriers from a strictly feasible x
    subject to ``eq_matrix @ x`` staying constant. ``barrier_value(x, order)`` returns
    (F, grad, hess); ``is_inside(x)`` says whether x is in the barrier's domain. Stops when the
    squared Newton decrement is below max(DECREMENT_TOL, DECREMENT_PER_WEIGHT * weight), i.e.
    within ~DECREMENT_PER_WEIGHT of the centre in objective units. Returns (x, steps, converged)."""
    tol = max(DECREMENT_TOL, DECREMENT_PER_WEIGHT * weight)
    n_eq = eq_matrix.shape[0]
    gram = eq_matrix @ eq_matrix.T
    value, grad, hess = barrier_value(x, 2)
    for step in range(1, MAX_NEWTON + 1):
        size = x.size
        kkt = np.zeros((size + n_eq, size + n_eq))
        kkt[:size, :size] = hess
        kkt[:size, size:] = eq_matrix.T
        kkt[size:, :size] = eq_matrix
        rhs = np.concatenate([-grad, np.zeros(n_eq)])
        try:
            direction = np.linalg.solve(kkt, rhs)[:size]
        except np.linalg.LinAlgError:
            direction = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:size]
        # The squared Newton decrement (~ 2 (F - min F)). The gradient's part along the equality
        # rows (large: t times the objective's per-prompt level) does not change it, since
        # eq_matrix @ direction = 0; removing it first avoids its cancellation noise.
        reduced = grad - eq_matrix.T @ np.linalg.solve(gram, eq_matrix @ grad)
        decrement = float(-reduced @ direction)
        if decrement <= tol:
            return x, step - 1, True
        rounding = 64 * np.finfo(float).eps * max(1.0, abs(value))  # F's own rounding error
        alpha = 1.0
        while alpha > 1e-20:
            trial = x + alpha * direction
            if is_inside(trial):
                t_value = barrier_value(trial, 0)[0]
                if np.isfinite(t_value) and t_value <= value - 0.25 * alpha * decrement + rounding:
                    break
            alpha *= 0.5
        else:  # no decrease F can resolve: centred as far as F's rounding allows
            return x, step, decrement <= rounding
        x = trial
        value, grad, hess = barrier_value(x, 2)
    return x, MAX_NEWTON, False


class _Layout:
    """Variable vector x = [pi (n), chi (J), (s)] and the simplex equalities on pi."""

    def __init__(self, problem: RobustBarrier, with_margin: bool):
        self.n, self.j = problem.n, problem.n_constraints
        size = self.n + self.j + int(with_margin)
        self.eq = np.zeros((problem.n_prompts, size))
        self.eq[problem.rows, np.arange(self.n)] = 1.0

    def split(self, x):
        return x[: self.n], x[self.n : self.n + self.j], x[self.n + self.j :]


def _add_constraint_terms(problem, layout, x, thresholds, order, grad, hess):
    """Adds -sum_j log(h_j - b_j [- s]) to (grad, hess); returns (barrier value, slacks (J,))."""
    pi, chi, margin = layout.split(x)
    parts = problem.constraints(pi, chi, order)
    slacks = parts["value"] - thresholds - (margin[0] if margin.size else 0.0)
    if np.any(slacks <= 0):
        return np.inf, slacks
    if order:
        n, j = layout.n, layout.j
        full = np.zeros((j, x.size))  # gradient of each slack over x
        full[:, :n] = parts["d_pi"]
        full[np.arange(j), n + np.arange(j)] = parts["d_chi"]
        if margin.size:
            full[:, -1] = -1.0
        grad -= full.T @ (1.0 / slacks)
    if order == 2:
        scale = 1.0 / (chi * slacks)
        cw = parts["cw"]
        pi_pi = -((cw.T * scale) @ cw) * problem.same_prompt
        pi_pi[np.diag_indices(n)] += (problem.scores * cw).T @ scale
        hess[:n, :n] += pi_pi * problem.nu_row[:, None]
        cross = parts["cross"].T / slacks
        hess[:n, n : n + j] += cross
        hess[n : n + j, :n] += cross.T
        hess[np.arange(n, n + j), np.arange(n, n + j)] += parts["chi_chi"] / slacks
        hess += full.T @ (full / slacks[:, None] ** 2)
    return -float(np.sum(np.log(slacks))), slacks


def robust_margin(problem: RobustBarrier, thresholds: np.ndarray, stop_above: float | None = None):
    """Largest s with ``min_j h_j(pi, chi_j) - b_j >= s`` over policies on the support.

    With ``stop_above`` given, stops as soon as the margin attained exceeds it (a strictly
    feasible point is all a feasible request needs); otherwise, and whenever it is not exceeded,
    solves to GAP_TOL (an infeasible request needs s* itself). Returns (lower, upper, pi (n,), chi (J,), steps): lower is the margin the returned
    point attains, upper bounds s*.
    """
    layout = _Layout(problem, with_margin=True)
    pi0 = problem.ref.copy()
    chi0 = np.maximum(np.ptp(problem.scores * pi0, axis=1), 1e-3)  # each chi at its scores' scale
    gaps = problem.constraints(pi0, chi0, 0)["value"] - thresholds
    s0 = float(gaps.min() - max(1.0, abs(float(gaps.min()))) * 0.1)
    x = np.concatenate([pi0, chi0, [s0]])
    n_terms = 2 * problem.n_constraints + problem.n

    def barrier(x, order, t):
        pi, chi, margin = layout.split(x)
        grad = np.zeros(x.size)
        hess = np.zeros((x.size, x.size))
        value = -t * margin[0] - np.sum(np.log(pi)) - np.sum(np.log(chi))
        if order:
            grad[-1] = -t
            grad[: layout.n] -= 1.0 / pi
            grad[layout.n : layout.n + layout.j] -= 1.0 / chi
        if order == 2:
            hess[np.diag_indices(x.size)] += np.r_[1.0 / pi**2, 1.0 / chi**2, 0.0]
        constraints, _ = _add_constraint_terms(problem, layout, x, thresholds, order, grad, hess)
        return value + constraints, grad, hess

    def inside(x):
        pi, chi, _ = layout.split(x)
        return bool(np.all(pi > 0) and np.all(chi > 0))

    t, steps = 1.0, 0
    while True:
        x, used, _ = _newton_centre(lambda z, order: barrier(z, order, t), x, inside, layout.eq, t)
        steps += used
        pi, chi, margin = layout.split(x)
        lower = float(margin[0])
        upper = lower + n_terms / t
        if stop_above is not None and lower > stop_above:
            break
        if n_terms / t <= GAP_TOL:
            break
        t *= T_GROWTH
    return lower, upper, pi, chi, steps


def solve_robust_barrier(problem: RobustBarrier, tau: float, thresholds: np.ndarray, start_policy: np.ndarray,
                         start_chi: np.ndarray) -> RobustSolveResult:
    """The robust optimum for thresholds b (J,) from a strictly feasible start (pi (n,), chi (J,)):
    every h_j(pi, chi_j) > b_j. Barrier weight t multiplies the objective."""
    layout = _Layout(problem, with_margin=False)
    x = np.concatenate([start_policy, start_chi])
    n_terms = 2 * problem.n_constraints
    weight = problem.nu_row

    def barrier(x, order, t):
        pi, chi, _ = layout.split(x)
        log_ratio = np.log(pi) - problem.log_ref
        objective = float(weight @ (pi * (problem.primary - tau * log_ratio)))
        grad = np.zeros(x.size)
        hess = np.zeros((x.size, x.size))
        value = -t * objective - np.sum(np.log(chi))
        if order:
            grad[: layout.n] = -t * weight * (problem.primary - tau * (log_ratio + 1.0))
            grad[layout.n :] -= 1.0 / chi
        if order == 2:
            hess[np.diag_indices(x.size)] += np.r_[t * tau * weight / pi, 1.0 / chi**2]
        constraints, slacks = _add_constraint_terms(problem, layout, x, thresholds, order, grad, hess)
        barrier.slacks = slacks
        return value + constraints, grad, hess

    def inside(x):
        pi, chi, _ = layout.split(x)
        return bool(np.all(pi > 0) and np.all(chi > 0))

    t, steps, converged = START_WEIGHT / tau, 0, True
    while True:
        x, used, ok = _newton_centre(lambda z, order: barrier(z, order, t), x, inside, layout.eq, t)
        steps += used
        converged = converged and ok
        if n_terms / t <= GAP_TOL:
            break
        t *= T_GROWTH
    barrier(x, 0, t)
    pi, chi, _ = layout.split(x)
    return RobustSolveResult(
        policy=problem.to_policy(pi),
        chi=chi.copy(),
        multipliers=1.0 / (t * barrier.slacks),
        iterations=steps,
        converged=converged,
    )
