"""Uncertainty of MOPO's answers when the win-rates are estimated from finite comparisons.

Shapes: ``K`` objectives (0 the primary, ``J = K - 1`` secondaries), ``M`` prompts, ``N``
responses, ``T`` comparisons, ``B`` bootstrap resamples.

    win_counts   (K, M, N, N)  W[k, m, i, j]: wins of i over j, both orderings counted, as made by
                               ``synthetic.sampling.ComparisonData.win_counts`` (each comparison of
                               the pair {i, j} adds 1 to W[k, m, i, j] + W[k, m, j, i])
    estimate     (K, M, N, N)  P_hat = (W + prior/2) / (W + W^T + prior)  (``estimate_preferences``)
    rates        (K, M, N)     w_hat[k, m, y] = sum_j P_hat[k, m, y, j] mu[m, j]
    policy       (M, N)        (an (N,) vector is one policy shared by every prompt)
    reference, behaviour (M, N); prompt_weights (M,); thresholds (J,)

The estimated value of a policy is ``V_hat_k(pi) = sum_m nu_m sum_y pi(y|m) w_hat_k(m, y)``.

- :func:`standard_errors`: the standard error of ``V_hat_k(pi)`` for a fixed policy, (K,).
- :func:`solve_with_margin`: the plug-in solve with each secondary threshold raised by ``z``
  standard errors of the returned policy's estimated value (a fixed point).
- :func:`eps_for_sample_size`: the robust radius eps (MOPO.md section 4) for n draws.
- :func:`solve_batched`: ``B`` plug-in problems (eps = 0) solved at once, the same dual,
  Newton steps and feasibility rule as ``solver.solve_family``.
- :func:`resample_win_rates` / :func:`bootstrap`: resample the comparisons within each
  prompt, re-estimate, solve every resample in one :func:`solve_batched` call.

The counting and the estimator are those of :mod:`synthetic.sampling` (``ComparisonData``,
``estimate_preferences``), imported, not copied; ``synthetic`` imports only
``mopo_core.validation``, so this adds no cycle.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import chi2

from mopo_core.tabular.solver import (
    FEASIBILITY_TOL,
    MAX_MULTIPLIER,
    TabularProblem,
    TabularSolution,
    TiltFamily,
    attainable_maxima,
    enforced_thresholds,
    solve_family,
    win_rates,
)
from mopo_core.validation import (
    as_finite_array,
    check_distribution,
    check_int,
    check_nonnegative,
    check_positive,
    check_prompt_weights,
    check_thresholds,
)
from synthetic.sampling import ComparisonData, estimate_preferences

#: The margin's fixed point stops when |b + z SE - enforced| is at most this (win-rate units).
MARGIN_TOL = 1e-9
#: Most solve -> standard error -> raise rounds of the margin's fixed point.
MARGIN_MAX_ROUNDS = 50
#: Projected-gradient norm at which the batched Newton stops, and its iteration cap
#: (``solver.solve_family``'s defaults ``tol`` and ``max_iter``).
NEWTON_TOL = 1e-10
NEWTON_MAX_ITER = 100
#: Count entries (K * c * M * N * N) per chunk of c resamples counted and estimated together.
RESAMPLE_CHUNK_ENTRIES = 2**20


# --------------------------------------------------------------------------- standard errors


def _pair_variances(win_counts: np.ndarray, estimate: np.ndarray, prior: float) -> np.ndarray:
    """``Var(P_hat[..., i, j] | pair counts)`` for the pairs i < j (``np.triu_indices(N, 1)``):
    (..., N, N) -> (..., N (N - 1) / 2).

    Given n_ij = W_ij + W_ji comparisons of the pair, W_ij ~ Binomial(n_ij, P_ij), so
    ``Var((W_ij + a/2) / (n_ij + a)) = n_ij P_ij (1 - P_ij) / (n_ij + a)^2``, with the estimate
    plugged in for P_ij.
    """
    i, j = np.triu_indices(win_counts.shape[-1], 1)
    totals = win_counts[..., i, j] + win_counts[..., j, i]
    p = estimate[..., i, j]
    denominator = (totals + prior) ** 2
    return np.divide(totals * p * (1.0 - p), denominator, out=np.zeros_like(totals), where=denominator > 0)


def _value_variances(policies: np.ndarray, pair_variances: np.ndarray, behaviour: np.ndarray,
                     prompt_weights: np.ndarray) -> np.ndarray:
    """``Var(V_hat_k(pi_b))``, (B, K), for policies (B, M, N) and pair variances (B, K, M, N (N - 1) / 2).

    With P_hat_ji = 1 - P_hat_ij, V_hat_k = const + sum_m nu_m sum_{i<j} P_hat_kmij c_mij,
    c_mij = pi_mi mu_mj - pi_mj mu_mi; the pairs are independent given their counts, so the
    variance is sum_m nu_m^2 sum_{i<j} c_mij^2 Var(P_hat_kmij).
    """
    i, j = np.triu_indices(policies.shape[-1], 1)
    weights = policies[:, :, i] * behaviour[None, :, j] - policies[:, :, j] * behaviour[None, :, i]  # c (B, M, P)
    weights *= weights
    weights *= prompt_weights[None, :, None] ** 2
    batch, k = pair_variances.shape[:2]
    return np.matmul(pair_variances.reshape(batch, k, -1), weights.reshape(batch, -1, 1))[..., 0]


def _estimate(win_counts, prior):
    """Validated ``(estimate (K, M, N, N), pair variances (K, M, N (N - 1) / 2))``."""
    prior = check_nonnegative(prior, "prior")
    estimate = estimate_preferences(win_counts, prior)  # checks win_counts (shape, finite, >= 0)
    return estimate, _pair_variances(np.asarray(win_counts, dtype=np.float64), estimate, prior)


def standard_errors(policy, win_counts, behaviour=None, prompt_weights=None, prior: float = 1.0) -> np.ndarray:
    """Standard error (K,) of each estimated value ``V_hat_k(pi)`` of a FIXED policy.

    policy (M, N), or (N,) shared by every prompt; win_counts (K, M, N, N) as in the module
    docstring; behaviour (M, N) or (N,) (None: uniform) is the mu the win-rates are taken
    against, known, not estimated; prompt_weights (M,) (None: equal); prior >= 0 the estimator's
    pseudo-count.

    Derivation. Conditioned on the number of comparisons of each pair, n_ij = W_ij + W_ji
    (the design), and on the policy (not chosen from these data), each P_hat_ij is an affine
    function of W_ij ~ Binomial(n_ij, P_ij), independent across pairs, prompts and (for one
    objective) comparisons. V_hat_k = const + sum_m nu_m sum_{i<j} P_hat_kmij (pi_mi mu_mj -
    pi_mj mu_mi), so

        Var V_hat_k = sum_m nu_m^2 sum_{i<j} (pi_mi mu_mj - pi_mj mu_mi)^2 n_ij P_ij (1 - P_ij) / (n_ij + prior)^2.

    Approximated: P_ij is replaced by P_hat_ij (plug-in). Not counted: the randomness of the
    design itself, the bias of the prior's shrinkage, and pairs never compared (their 0.5 is
    a bias, not a variance; they contribute 0 here). The design's randomness is negligible when
    the pairs that carry weight (large |pi_mi mu_mj - pi_mj mu_mi|) have many comparisons each;
    when the policy leans on a response that mu rarely draws (a pair seen 0 or 1 times per
    dataset), it is not: measured on such a case (mu = 0.001 on a response that pi gives 0.27,
    400 comparisons), the spread over datasets was 1.06 times the mean standard error with
    prior = 1 and 2.7 times with prior = 0 (one comparison gives P_hat in {0, 1}, variance 0).
    The bootstrap, which resamples the design too, includes it. Soft labels are treated as
    Bernoulli with their mean, which over-states their variance (a [0, 1] label with mean p has
    variance at most p (1 - p)). Objectives are treated one at a time (no covariance between them).
    """
    estimate, pair_var = _estimate(win_counts, prior)
    _, m, n, _ = estimate.shape
    pi = check_distribution(policy, m, n, "policy")
    mu = check_distribution(behaviour, m, n, "behaviour")
    nu = check_prompt_weights(prompt_weights, m)
    return np.sqrt(_value_variances(pi[None], pair_var[None], mu, nu)[0])


# --------------------------------------------------------------------------- margin


@dataclass
class MarginSolution:
    """Result of :func:`solve_with_margin`.

    solution: the :class:`TabularSolution` on the estimated preferences at the enforced
    thresholds (policy (M, N)); standard_errors (K,) of its estimated values
    (:func:`standard_errors` at the returned policy); enforced_thresholds (J,) the thresholds the
    last solve enforced, equal to ``b + z * standard_errors[1:]`` within MARGIN_TOL when
    ``converged``; z; rounds: solves run (1 when z = 0). When no policy meets its own raised
    thresholds the fixed point lies beyond the attainable set and ``solution.feasible`` is False;
    when the raised threshold lands on the attainable maximum itself there may be no exact fixed
    point (the residual jumps across zero where the solver starts to back off): then ``converged``
    is False and the enforced thresholds sit within MARGIN_TOL of that jump.
    """

    solution: TabularSolution
    standard_errors: np.ndarray
    enforced_thresholds: np.ndarray
    z: float
    rounds: int
    converged: bool


class _BracketedSecant:
    """Next x for J = 1: the residual g(x) = b + z SE(pi(x)) - x is >= 0 at x = b and < 0 far
    beyond the attainable maximum (there the solver's policy stops changing), so a root lies to
    the right. Until a negative residual brackets it, step right by g or by the secant step when
    g falls with x and the secant reaches further (at most 1 win-rate unit); once bracketed,
    Illinois regula falsi (halve the stale end's residual when the same end moves twice), with a
    bisection whenever a round failed to halve the bracket. Returns the next x (b, 1) and whether
    the bracket has shrunk to MARGIN_TOL (b,): g then jumps across zero there (at the attainable
    maximum, where the solver starts to back off)."""

    def __init__(self, x: np.ndarray):
        nan = np.full(x.shape[0], np.nan)
        self.lo, self.g_lo, self.hi, self.g_hi = nan.copy(), nan.copy(), nan.copy(), nan.copy()
        self.last_x, self.last_g, self.side = nan.copy(), nan.copy(), np.zeros(x.shape[0])
        self.width = np.full(x.shape[0], np.inf)

    def __call__(self, rows: np.ndarray, x: np.ndarray, g: np.ndarray):
        x, g = x[:, 0], g[:, 0]
        up, down = rows[g > 0], rows[g <= 0]
        self.g_hi[up[self.side[up] > 0]] *= 0.5
        self.g_lo[down[self.side[down] < 0]] *= 0.5
        self.lo[up], self.g_lo[up], self.side[up] = x[g > 0], g[g > 0], 1.0
        self.hi[down], self.g_hi[down], self.side[down] = x[g <= 0], g[g <= 0], -1.0
        lo, g_lo, hi, g_hi = self.lo[rows], self.g_lo[rows], self.hi[rows], self.g_hi[rows]
        width = hi - lo  # nan until bracketed
        halved = width <= 0.5 * self.width[rows]
        self.width[rows] = np.where(halved, width, self.width[rows])
        dx, dg = x - self.last_x[rows], g - self.last_g[rows]
        self.last_x[rows], self.last_g[rows] = x, g
        falling = dg < 0  # False on the first round (nan)
        secant = np.where(falling, -g * dx / np.where(falling, dg, -1.0), 0.0)
        ahead = x + np.maximum(g, np.minimum(secant, 1.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            regula = lo - g_lo * width / (g_hi - g_lo)
        inside = np.where(halved, regula, 0.5 * (lo + hi))
        return np.where(np.isnan(hi), ahead, inside)[:, None], width <= MARGIN_TOL


class _Anderson:
    """Next x for J >= 2: Anderson(1) (the secant step when J = 1), ``x + g - gamma (dx + dg)``
    with ``gamma = dg.g / dg.dg`` over the last step dx and the change of residual dg; the first
    step is plain substitution ``x + g``. Returns the next x (b, J) and (b,) False (no bracket)."""

    def __init__(self, x: np.ndarray):
        self.last_x, self.last_g = np.full_like(x, np.nan), np.full_like(x, np.nan)

    def __call__(self, rows: np.ndarray, x: np.ndarray, g: np.ndarray):
        dx, dg = x - self.last_x[rows], g - self.last_g[rows]
        self.last_x[rows], self.last_g[rows] = x, g
        denominator = np.einsum("bj,bj->b", dg, dg)
        usable = denominator > 0  # False on the first round (nan)
        gamma = np.where(usable, np.einsum("bj,bj->b", dg, g) / np.where(usable, denominator, 1.0), 0.0)
        step = g - np.where(usable[:, None], gamma[:, None] * (dx + dg), 0.0)
        return x + step, np.zeros(x.shape[0], dtype=bool)


def _margin_fixed_point(thresholds: np.ndarray, z: float, solve_rows):
    """Solve x = b + z * SE_sec(pi(x)) on B instances at once; b = thresholds (B, J).

    ``solve_rows(rows, x_rows)`` solves the instances ``rows`` at thresholds ``x_rows`` (keeping
    the answers) and returns the standard errors (len(rows), K) at their new policies. From
    x = b, each round solves the unsettled instances and moves x (:class:`_BracketedSecant` for
    J = 1, :class:`_Anderson` for J >= 2) until the residual |b + z SE_sec - x| is at
    most MARGIN_TOL (converged), a J = 1 bracket shrinks to MARGIN_TOL around a jump of the
    residual (not converged), or MARGIN_MAX_ROUNDS solves have run. Returns (rounds (B,),
    converged (B,)); the answers are those ``solve_rows`` kept from each instance's last solve.
    """
    x = thresholds.copy()
    batch = x.shape[0]
    move = _BracketedSecant(x) if x.shape[1] == 1 else _Anderson(x)
    rounds, converged = np.zeros(batch, dtype=int), np.zeros(batch, dtype=bool)
    rows = np.arange(batch)
    for _ in range(MARGIN_MAX_ROUNDS):
        g = thresholds[rows] + z * solve_rows(rows, x[rows])[:, 1:] - x[rows]
        rounds[rows] += 1
        unsettled = np.max(np.abs(g), axis=1) > MARGIN_TOL
        converged[rows] = ~unsettled
        following, stuck = move(rows, x[rows], g)
        moving = unsettled & ~stuck
        rows = rows[moving]
        if rows.size == 0:
            break
        x[rows] = following[moving]
    return rounds, converged


def solve_with_margin(win_counts, thresholds, tau: float, z: float, reference=None, behaviour=None,
                      prompt_weights=None, prior: float = 1.0, eps: float = 0.0,
                      initial_multipliers=None) -> MarginSolution:
    """MOPO on the estimated preferences, each secondary threshold raised by z standard errors.

    Solves on ``estimate_preferences(win_counts, prior)`` with thresholds ``b + z * SE_sec(pi)``
    where pi is the returned policy: a fixed point, found by solve -> standard errors at the new
    policy -> move the thresholds (a bracketed secant for J = 1, Anderson(1) for J >= 2) until
    ``|b + z SE_sec - enforced| <= MARGIN_TOL``, for at most MARGIN_MAX_ROUNDS solves (``rounds``
    and ``converged`` report it). z = 0 is the plain plug-in solve. z >= 0; eps >= 0 is passed to the solver (the
    raised thresholds then bound the robust values). ``initial_multipliers`` (J,) warm-starts the
    first solve (e.g. from the previous threshold of a sweep); each later round starts from the
    round before. Shapes and the other arguments as in :func:`standard_errors` and ``solve_tabular``.
    """
    z = check_nonnegative(z, "z")
    estimate, pair_var = _estimate(win_counts, prior)
    problem = TabularProblem.build(estimate, reference, behaviour, prompt_weights)
    b = check_thresholds(thresholds, estimate.shape[0] - 1)
    last = {"multipliers": initial_multipliers}

    def solve_rows(rows, x_rows):
        last["solution"] = problem.solve(x_rows[0], tau, eps, initial_multipliers=last["multipliers"])
        last["multipliers"] = last["solution"].multipliers
        last["se"] = np.sqrt(_value_variances(last["solution"].policy[None], pair_var[None], problem.behaviour,
                                              problem.prompt_weights)[0])
        return last["se"][None]

    rounds, converged = _margin_fixed_point(b[None], z, solve_rows)
    sol = last["solution"]
    return MarginSolution(sol, last["se"], sol.thresholds, z, int(rounds[0]), bool(converged[0]))


# --------------------------------------------------------------------------- eps rule


def eps_for_sample_size(n_per_prompt: int, n_responses: int, confidence: float = 0.95) -> float:
    """Robust radius ``eps = chi2_{N-1}(confidence) / (2 n)`` for n draws per prompt over N responses.

    The rule: for the empirical distribution p_hat of n draws from a distribution p over N
    categories, ``2 n KL(p_hat || p)`` is the likelihood-ratio (G) statistic, asymptotically
    chi-square with N - 1 degrees of freedom (Wilks, 1938; the G-test). So
    ``{Q : KL(Q || pi_ref) <= eps}`` holds, with probability ``confidence``, the empirical
    distribution of n draws from pi_ref: the robust bound is the worst value over the samples
    that n draws would plausibly give. n counts one draw per comparison (``n_per_prompt`` as in
    ``synthetic.sample_comparisons``); counting both responses of a comparison would halve eps.
    The approximation is asymptotic (n >> N). Example: N = 8, 95%, n = 100 gives 0.0703; the
    paper's eps = 0.15 at N = 8 corresponds to n of about 47.
    """
    n = check_int(n_per_prompt, "n_per_prompt", 1)
    size = check_int(n_responses, "n_responses", 2)
    level = float(as_finite_array(confidence, "confidence"))
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence: must lie strictly between 0 and 1, got {level}")
    return float(chi2.ppf(level, size - 1) / (2.0 * n))


# --------------------------------------------------------------------------- batched solve


def _check_rates(value) -> np.ndarray:
    rates = as_finite_array(value, "rates")
    if rates.ndim != 4 or rates.shape[1] < 2 or rates.shape[0] < 1:
        raise ValueError(f"rates: expected shape (B, K, M, N) with B >= 1 and K >= 2, got {rates.shape}")
    return rates


def _check_batch_thresholds(value, batch: int, n_constraints: int) -> np.ndarray:
    arr = as_finite_array(value, "thresholds")
    if arr.ndim == 2:
        if arr.shape != (batch, n_constraints):
            raise ValueError(f"thresholds: expected shape ({n_constraints},) or ({batch}, {n_constraints}), "
                             f"got {arr.shape}")
        return arr
    return np.broadcast_to(check_thresholds(arr, n_constraints), (batch, n_constraints)).copy()


class _BatchedDual:
    """The dual of ``solver.TiltFamily`` for B problems at once (same reference and prompt weights).

    secondary (B, J, M, N); each call takes multipliers (b, J) and thresholds (b, J) for the
    instances ``rows`` (b,) and returns values (b,), gradients (b, J), Hessians (b, J, J).
    """

    def __init__(self, rates, reference, prompt_weights, tau):
        with np.errstate(over="ignore", divide="ignore"):
            scaled = rates / tau
            log_reference = np.log(reference)
        if not np.all(np.isfinite(scaled)):
            raise ValueError(f"tau: {tau:g} is too small for these scores (scores / tau overflows)")
        self.base = log_reference[None] + scaled[:, 0]
        self.slopes = scaled[:, 1:]
        self.secondary = rates[:, 1:]
        self.nu = prompt_weights
        self.tau = tau

    def policy(self, lam, rows):
        logits = self.base[rows] + np.einsum("bj,bjmn->bmn", lam, self.slopes[rows])
        mx = logits.max(axis=2, keepdims=True)
        pi = np.exp(logits - mx)
        z = pi.sum(axis=2, keepdims=True)
        return pi / z, (np.log(z) + mx)[..., 0]

    def __call__(self, lam, thresholds, rows):
        pi, log_z = self.policy(lam, rows)
        sec = self.secondary[rows]
        value = self.tau * (log_z @ self.nu) - np.einsum("bj,bj->b", lam, thresholds)
        means = np.einsum("bmn,bjmn->bjm", pi, sec)
        grad = means @ self.nu - thresholds
        weighted = sec * (pi * self.nu[None, :, None])[:, None]
        second = np.einsum("bjmn,bimn->bji", weighted, sec)
        hess = (second - np.einsum("bjm,bim->bji", means * self.nu, means)) / self.tau
        return value, grad, hess


def _pg_norm(lam, grad):
    """Per-instance largest first-order violation on the box 0 <= lam <= MAX_MULTIPLIER (solver's rule)."""
    pg = np.where(lam <= 0, np.minimum(grad, 0.0), np.where(lam >= MAX_MULTIPLIER, np.maximum(grad, 0.0), grad))
    return np.max(np.abs(pg), axis=1)


def _newton_step(grad, hess, lam):
    """Projected Newton directions (b, J): zero on the active bounds, the free block solved with
    solver's ridge (1e-12 times max(1, its trace); the block is PSD, so the system is never singular)."""
    active = ((lam <= 0) & (grad > 0)) | ((lam >= MAX_MULTIPLIER) & (grad < 0))
    free = ~active
    both = free[:, :, None] & free[:, None, :]
    eye = np.eye(lam.shape[1])
    ridge = 1e-12 * np.maximum(1.0, np.einsum("bjj->b", np.where(both, hess, 0.0)))
    system = np.where(both, hess, eye) + ridge[:, None, None] * eye
    return -np.linalg.solve(system, np.where(free, grad, 0.0)[..., None])[..., 0]


def _batched_newton(dual: _BatchedDual, b: np.ndarray):
    """``solver._newton`` from lam = 0 on every instance at once: the same steps and Armijo
    backtracking, each instance stopping on its own. Returns (lam (B, J), converged (B,))."""
    batch = b.shape[0]
    rows = np.arange(batch)
    lam = np.zeros_like(b)
    value, grad, hess = dual(lam, b, rows)
    stalled = np.zeros(batch, dtype=bool)
    for _ in range(NEWTON_MAX_ITER):
        live = np.flatnonzero((_pg_norm(lam, grad) > NEWTON_TOL) & ~stalled)
        if live.size == 0:
            break
        step = _newton_step(grad[live], hess[live], lam[live])
        alpha = np.ones(live.size)
        pending = np.arange(live.size)  # positions in `live` still backtracking
        for _ in range(60):
            idx = live[pending]
            trial = np.clip(lam[idx] + alpha[pending, None] * step[pending], 0.0, MAX_MULTIPLIER)
            t_value, t_grad, t_hess = dual(trial, b[idx], idx)
            decrease = t_value - value[idx]
            accept = (decrease <= 1e-4 * np.einsum("bj,bj->b", grad[idx], trial - lam[idx])) | (
                (np.abs(decrease) <= 1e-13 * np.maximum(1.0, np.abs(value[idx])))
                & (_pg_norm(trial, t_grad) < _pg_norm(lam[idx], grad[idx])))
            ok = idx[accept]
            lam[ok], value[ok], grad[ok], hess[ok] = trial[accept], t_value[accept], t_grad[accept], t_hess[accept]
            pending = pending[~accept]
            if pending.size == 0:
                break
            alpha[pending] *= 0.5
        stalled[live[pending]] = True
    return lam, (_pg_norm(lam, grad) <= NEWTON_TOL) & ~stalled


def solve_batched(rates, thresholds, tau: float, reference=None, prompt_weights=None):
    """Solve B plug-in MOPO problems (eps = 0) in one vectorised call.

    rates (B, K, M, N) win-rates (objective 0 the primary); thresholds (J,) shared or (B, J);
    tau > 0; reference (M, N) or (N,) (None: uniform), shared; prompt_weights (M,) (None: equal).
    Returns ``(policies (B, M, N), multipliers (B, J), feasible (B,))``.

    Instance b gets what ``solve_family(TiltFamily(rates[b, 0], rates[b, 1:], ...), thresholds[b])``
    gives: the same feasibility rule (``solver.enforced_thresholds``), then a projected Newton on the dual from lam = 0, vectorised over B
    (einsum and batched ``linalg.solve``). An instance on which Newton stalls or hits its
    iteration cap is re-solved by ``solve_family`` itself (which falls back to L-BFGS-B).
    For J >= 2 the margin is one LP per instance whose thresholds the reference does not meet.
    """
    rates = _check_rates(rates)
    batch, k, m, n = rates.shape
    ref = check_distribution(reference, m, n, "reference")
    nu = check_prompt_weights(prompt_weights, m)
    b = _check_batch_thresholds(thresholds, batch, k - 1)
    tau = check_positive(tau, "tau")
    dual = _BatchedDual(rates, ref, nu, tau)
    secondary = dual.secondary
    # solve_family's feasibility rule, instance by instance.
    at_reference = np.einsum("m,mn,bjmn->bj", nu, ref, secondary)
    maxima = attainable_maxima(secondary.reshape(-1, m, n), ref, nu).reshape(batch, k - 1)
    rules = [enforced_thresholds(b[i], at_reference[i], maxima[i], secondary[i], ref, nu) for i in range(batch)]
    feasible = np.array([rule[0] for rule in rules])
    effective = np.array([rule[1] for rule in rules])
    lam, converged = _batched_newton(dual, effective)
    policies = dual.policy(lam, np.arange(batch))[0]
    achieved = np.einsum("m,bmn,bjmn->bj", nu, policies, secondary)
    feasible &= ~np.any((lam >= MAX_MULTIPLIER) & (achieved < effective - FEASIBILITY_TOL), axis=1)
    for i in np.flatnonzero(~converged):
        sol = solve_family(TiltFamily(rates[i, 0], secondary[i], ref, nu, tau), b[i])
        policies[i], lam[i], feasible[i] = sol.policy, sol.multipliers, sol.feasible
    return policies, lam, feasible


# --------------------------------------------------------------------------- bootstrap


def _as_comparisons(value) -> ComparisonData:
    """A validated ComparisonData from anything with its six fields."""
    if isinstance(value, ComparisonData):
        return value
    try:
        fields = [getattr(value, name) for name in ("prompt", "first", "second", "labels", "n_prompts", "n_responses")]
    except AttributeError as exc:
        raise ValueError(f"comparisons: expected ComparisonData or an object with prompt, first, second, labels, "
                         f"n_prompts and n_responses ({exc})") from None
    return ComparisonData(*fields)


def _resample_indices(data: ComparisonData, batch: int, rng: np.random.Generator) -> np.ndarray:
    """(B, T) comparison indices: resample b draws, with replacement, as many comparisons from
    each prompt as the prompt has, from that prompt's comparisons."""
    order = np.argsort(data.prompt, kind="stable")
    sizes = np.bincount(data.prompt, minlength=data.n_prompts)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    slot_start = np.repeat(starts, sizes)  # (T,) start of each slot's prompt block in `order`
    slot_size = np.repeat(sizes, sizes)
    return order[slot_start + rng.integers(0, slot_size, size=(batch, slot_size.size))]


def _resampled(data: ComparisonData, indices: np.ndarray, behaviour: np.ndarray, prior: float, variances: bool):
    """Win-rates (B, K, M, N) of each resample's estimate, and its pair variances (B, K, M, N (N - 1) / 2)
    if asked.

    A chunk of c resamples is counted as one ComparisonData of c * M prompts (resample r's
    prompt m becomes prompt r * M + m), so the counting and the estimate run once per chunk;
    chunks hold about RESAMPLE_CHUNK_ENTRIES count entries.
    """
    batch, k, m, n = indices.shape[0], data.n_objectives, data.n_prompts, data.n_responses
    chunk = max(1, RESAMPLE_CHUNK_ENTRIES // (k * m * n * n))
    rates = np.empty((batch, k, m, n))
    pair_vars = np.empty((batch, k, m, n * (n - 1) // 2)) if variances else None
    for start in range(0, batch, chunk):
        block = indices[start:start + chunk]
        c, flat = block.shape[0], block.ravel()
        prompt = (np.arange(c)[:, None] * m + data.prompt[block]).ravel()
        counts = ComparisonData(prompt, data.first[flat], data.second[flat], data.labels[flat], c * m, n).win_counts()
        estimate = estimate_preferences(counts, prior)
        rates[start:start + c] = win_rates(estimate, np.tile(behaviour, (c, 1))).reshape(k, c, m, n).swapaxes(0, 1)
        if variances:
            pair_vars[start:start + c] = _pair_variances(counts, estimate, prior).reshape(k, c, m, -1).swapaxes(0, 1)
    return rates, pair_vars


def resample_win_rates(comparisons, n_resamples: int = 200, seed: int = 0, behaviour=None, prior: float = 1.0):
    """The bootstrap's resamples: ``(indices (B, T), rates (B, K, M, N))``.

    Resample b takes, for each prompt, as many of that prompt's comparisons as it has, drawn with
    replacement (each comparison with its K labels), re-counts them and estimates the win-rates
    against ``behaviour`` with ``estimate_preferences(counts, prior)``. Same seed, same resamples.
    """
    data = _as_comparisons(comparisons)
    batch = check_int(n_resamples, "n_resamples", 1)
    rng = np.random.default_rng(check_int(seed, "seed", 0))
    prior = check_nonnegative(prior, "prior")
    mu = check_distribution(behaviour, data.n_prompts, data.n_responses, "behaviour")
    indices = _resample_indices(data, batch, rng)
    return indices, _resampled(data, indices, mu, prior, variances=False)[0]


@dataclass
class BootstrapResult:
    """Result of :func:`bootstrap` with B resamples.

    values (B, K): each resample's chosen policy evaluated on the full-sample estimated
    win-rates; policies (B, M, N); feasible (B,) each resample's solve found its thresholds
    attainable; prob_meet (J,): the fraction of resamples whose policy has
    ``values[:, 1 + j] >= thresholds[j] - FEASIBILITY_TOL``, the bootstrap estimate of the
    probability that the data's policy meets b_j on the truth (the full sample plays the
    truth, each resample plays the data); thresholds (J,) the requested b; z the margin used
    in every solve; point: the full-sample :class:`MarginSolution`; converged (B,) each
    resample's margin fixed point settled (always True for z = 0); indices (B, T) the
    comparisons each resample drew.
    """

    values: np.ndarray
    policies: np.ndarray
    feasible: np.ndarray
    prob_meet: np.ndarray
    thresholds: np.ndarray
    z: float
    point: MarginSolution
    converged: np.ndarray
    indices: np.ndarray = field(repr=False)

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval ``(lo (K,), hi (K,))`` of the values at ``level`` in (0, 1)."""
        level = float(as_finite_array(level, "level"))
        if not 0.0 < level < 1.0:
            raise ValueError(f"level: must lie strictly between 0 and 1, got {level}")
        lo, hi = np.quantile(self.values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)
        return lo, hi


def bootstrap(comparisons, thresholds, tau: float, n_resamples: int = 200, seed: int = 0, reference=None,
              behaviour=None, prompt_weights=None, prior: float = 1.0, z: float = 0.0) -> BootstrapResult:
    """Bootstrap MOPO's plug-in (z = 0) or margin (z > 0) answer over the comparisons.

    comparisons: a ``synthetic.ComparisonData`` (or an object with its fields prompt, first,
    second (T,), labels (T, K), n_prompts, n_responses). The full sample is solved with
    :func:`solve_with_margin` (``point``); each of the ``n_resamples`` resamples
    (:func:`resample_win_rates`) is solved with all the others in one :func:`solve_batched`
    call; with z > 0 each resample's thresholds are raised by z standard errors of its own
    estimate at its policy, by the same fixed-point iteration as :func:`solve_with_margin`
    (each round re-solves, in one batched call, the resamples whose enforced thresholds still
    move by more than MARGIN_TOL; at most MARGIN_MAX_ROUNDS solves per resample).
    """
    data = _as_comparisons(comparisons)
    counts = data.win_counts()
    point = solve_with_margin(counts, thresholds, tau, z, reference, behaviour, prompt_weights, prior)
    batch = check_int(n_resamples, "n_resamples", 1)
    rng = np.random.default_rng(check_int(seed, "seed", 0))
    prior = check_nonnegative(prior, "prior")
    m, n = data.n_prompts, data.n_responses
    ref = check_distribution(reference, m, n, "reference")
    mu = check_distribution(behaviour, m, n, "behaviour")
    nu = check_prompt_weights(prompt_weights, m)
    b = check_thresholds(thresholds, data.n_objectives - 1)
    full_rates = win_rates(estimate_preferences(counts, prior), mu)
    indices = _resample_indices(data, batch, rng)
    rates, pair_vars = _resampled(data, indices, mu, prior, variances=point.z > 0)
    policies = np.empty((batch, m, n))
    feasible = np.empty(batch, dtype=bool)

    def solve_rows(rows, x_rows):
        policies[rows], _, feasible[rows] = solve_batched(rates[rows], x_rows, tau, ref, nu)
        if point.z == 0:
            return np.zeros((rows.size, data.n_objectives))
        return np.sqrt(_value_variances(policies[rows], pair_vars[rows], mu, nu))

    _, converged = _margin_fixed_point(np.broadcast_to(b, (batch, b.size)).copy(), point.z, solve_rows)
    values = np.einsum("m,bmn,kmn->bk", nu, policies, full_rates)
    prob_meet = np.mean(values[:, 1:] >= b - FEASIBILITY_TOL, axis=0)
    return BootstrapResult(values, policies, feasible, prob_meet, b, point.z, point, converged, indices)
