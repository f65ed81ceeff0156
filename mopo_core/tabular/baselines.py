"""Baselines run beside MOPO on every synthetic structure (SYNTHETIC.md, "Methods run on
every structure"), in the tabular setting.

Conventions (shapes):
    win_counts      (K, M, N, N)  W[k, m, i, j] = (possibly fractional) number of comparisons on
                                  prompt m in which response i beat response j on objective k
                                  (both orderings counted); (K, N, N) is one prompt. Exact
                                  preferences are the n = infinity analogue, proportional to
                                  mu_i mu_j P_k[i, j]. Objective 0 is the primary.
    reference       (M, N)        pi_ref (an (N,) vector is shared by all prompts)
    behaviour       (M, N)        mu;  prompt_weights (M,) nu
    weights         (G, K)        rows on the simplex, one grid point each
    policies        (G, M, N)     one policy per grid point

Policies are softmaxes over per-prompt logits theta (M, N), initialised at log pi_ref, and
every gradient-trained method runs :func:`mopo_core.tabular.optim.minimise` (the one Adam) for the
same number of steps. A grid is trained in one call, batched along a leading axis; Adam is
element-wise, so this equals training each grid point alone. With h = log pi - log pi_ref,
all pairwise losses depend on theta only through h_i - h_j, and are written with analytic
gradients by one helper, :func:`_pairwise_loss`.

Counts are turned into per-prompt frequencies (each prompt's counts divided by their total)
before any fit, so that exact preferences and n sampled comparisons with the same empirical
frequencies give the same answer; a prompt without comparisons keeps pi = pi_ref (and zero
fitted rewards). This rescales each prompt's loss and does not move any optimum.

Population optima (exact counts W ∝ mu_i mu_j P[i, j], mu > 0), up to a constant per prompt:
    ipo_primary      h = w_0 / tau,  w_k = P_k mu the win-rates
    scalarised_ipo   h = sum_k a_k w_k / tau  (weights a)
    dpo_primary      h = r_0 / tau  when P_0 is Bradley-Terry with rewards r_0
    weighted_dpo     h = (a_0 r_0 + sum_{k>=1} a_k rhat_k) / tau,  rhat the fitted BT rewards
    rewarded_soups   h = sum_k a_k r_k / tau  when every P_k is Bradley-Terry
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from math import comb
from typing import Callable

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from mopo_core.tabular.optim import AdamConfig, minimise
from mopo_core.tabular.solver import solve_scores
from mopo_core.validation import as_finite_array, check_distribution, check_positive, check_prompt_weights

#: MODPO divides by the primary weight: rows with w_0 below this are floored to it (and the
#: secondaries rescaled to keep the row on the simplex). The weight actually used is reported.
MODPO_MIN_PRIMARY_WEIGHT = 0.01


@dataclass
class MethodResult:
    """Output of a baseline.

    method: its name (a key of :data:`BASELINES`).
    parameters: one dict per point, e.g. ``{"weight": [0.7, 0.3]}`` or ``{"threshold": [0.6], ...}``.
    policies: (G, M, N), one policy per point.
    loss_trace: (steps,) training loss summed over the grid (None for methods not trained by Adam).
    """

    method: str
    parameters: list[dict]
    policies: np.ndarray
    loss_trace: np.ndarray | None = field(default=None, repr=False)


# ---------------------------------------------------------------------------- validation


def _check_win_counts(win_counts, name: str = "win_counts") -> np.ndarray:
    """Return (K, M, N, N) non-negative finite counts; (K, N, N) is one prompt."""
    arr = as_finite_array(win_counts, name)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"{name}: expected shape (K, N, N) or (K, M, N, N), got {arr.shape}")
    k, m, n, _ = arr.shape
    if k < 1 or m < 1 or n < 2:
        raise ValueError(f"{name}: need K >= 1 objectives, M >= 1 prompts and N >= 2 responses, got {arr.shape}")
    if (arr < 0).any():
        idx = tuple(int(i) for i in np.argwhere(arr < 0)[0])
        raise ValueError(f"{name}: negative count {arr[idx]} at (objective, prompt, i, j) = {idx}")
    return arr


def _check_reference(reference, m: int, n: int) -> np.ndarray:
    """(M, N) reference with full support (its log enters every trained policy)."""
    ref = check_distribution(reference, m, n, "reference")
    if (ref <= 0).any():
        idx = tuple(int(i) for i in np.argwhere(ref <= 0)[0])
        raise ValueError(f"reference: must be > 0 everywhere (log pi_ref is used), zero at (prompt, response) = {idx}")
    return ref


def _check_weights(weights, k: int) -> np.ndarray:
    """(G, K) simplex rows; None gives :func:`weight_grid` (K) and a (K,) vector one row."""
    if weights is None:
        return weight_grid(k)
    arr = np.atleast_2d(as_finite_array(weights, "weights"))
    if arr.ndim != 2 or arr.shape[1] != k or arr.shape[0] < 1:
        raise ValueError(f"weights: expected shape (K,) or (G, K) with K = {k}, got {np.shape(weights)}")
    return check_distribution(arr, arr.shape[0], k, "weights", row_label="weight row")


def _check_threshold_grid(thresholds, n_constraints: int) -> np.ndarray:
    """(T, K-1) threshold rows; (T,) or a scalar is accepted when K - 1 = 1."""
    arr = as_finite_array(thresholds, "thresholds")
    if arr.ndim <= 1 and n_constraints == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != n_constraints or arr.shape[0] < 1:
        raise ValueError(
            f"thresholds: expected shape (T, {n_constraints}), one column per secondary objective, got {arr.shape}"
        )
    return arr


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps: expected an integer >= 0, got {steps!r}")
    return int(steps)


def _check_adam(adam) -> AdamConfig:
    if adam is None:
        return AdamConfig()
    if not isinstance(adam, AdamConfig):
        raise ValueError(f"adam: expected an AdamConfig or None, got {type(adam).__name__}")
    return adam


def _prepare(win_counts, reference, tau, min_objectives: int = 1):
    """Validated (W (K, M, N, N), log pi_ref (M, N), tau) shared by the trained methods."""
    counts = _check_win_counts(win_counts)
    if counts.shape[0] < min_objectives:
        raise ValueError(f"win_counts: this method needs K >= {min_objectives} objectives, got K = {counts.shape[0]}")
    _, m, n, _ = counts.shape
    log_ref = np.log(_check_reference(reference, m, n))
    return counts, log_ref, check_positive(tau, "tau")


# ---------------------------------------------------------------------------- helpers


def weight_grid(n_objectives: int, n_points: int = 11) -> np.ndarray:
    """Simplex grid (G, K) of all rows ``(i_0, ..., i_{K-1}) / d`` with non-negative integers
    summing to ``d``, where ``d`` is the smallest resolution giving ``G = C(d + K - 1, K - 1)
    >= n_points`` rows.

    K = 2 gives exactly ``(1 - a, a)`` for ``a = linspace(0, 1, n_points)``; K = 3 with the
    default 11 points gives d = 4, G = 15. Rows run from the primary alone, (1, 0, ..., 0),
    in decreasing lexicographic order.
    """
    k = int(n_objectives)
    if k < 2:
        raise ValueError(f"n_objectives: a weight grid needs at least 2 objectives, got {n_objectives}")
    if int(n_points) < 2:
        raise ValueError(f"n_points: need at least 2 grid points, got {n_points}")
    d = 1
    while comb(d + k - 1, k - 1) < n_points:
        d += 1
    rows = [c for c in itertools.product(range(d, -1, -1), repeat=k) if sum(c) == d]
    return np.array(rows, dtype=float) / d


def _frequencies(counts: np.ndarray) -> np.ndarray:
    """Counts (..., M, N, N) divided by each prompt's total; prompts without data stay zero."""
    totals = counts.sum(axis=(-2, -1), keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _softmax(theta: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    z = np.exp(theta - theta.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _logistic(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DPO's link ``-log sigmoid(z)`` and its derivative ``-sigmoid(-z)``."""
    return np.logaddexp(0.0, -z), -expit(-z)


def _squared(target: float) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """IPO's link ``(z - target)^2`` and its derivative."""

    def link(z):
        gap = z - target
        return gap * gap, 2.0 * gap

    return link


def _pairwise_loss(theta, offset, freqs, scale, link):
    """Batched pairwise loss and its gradient w.r.t. theta.

    loss = sum_{g, m, i, j} F[g, m, i, j] * link(z[g, m, i, j]),
    z    = scale[g] * (x_i - x_j),  x = theta - offset.

    theta (G, M, N); offset (M, N) or (G, M, N) (log pi_ref, plus any reward margin divided by
    the scale); freqs (1 or G, M, N, N); scale scalar or (G, 1, 1, 1). Returns (float, (G, M, N)).
    """
    x = theta - offset
    z = scale * (x[..., :, None] - x[..., None, :])
    value, slope = link(z)
    a = freqs * slope * scale
    return float(np.sum(freqs * value)), a.sum(axis=-1) - a.sum(axis=-2)


def _train(freqs, offset, scale, link, log_ref, n_grid, steps, adam):
    """Minimise :func:`_pairwise_loss` from theta = log pi_ref for ``n_grid`` points at once.

    Returns logits (G, M, N) and the loss trace (steps,).
    """
    theta0 = np.broadcast_to(log_ref, (n_grid, *log_ref.shape))
    return minimise(lambda th: _pairwise_loss(th, offset, freqs, scale, link), theta0, steps, adam)


def _dpo_logits(freqs, log_ref, tau, steps, adam):
    """DPO on each of G frequency tensors (G, M, N, N): logits (G, M, N) and the loss trace."""
    return _train(freqs, log_ref, tau, _logistic, log_ref, freqs.shape[0], steps, adam)


def _bt_loss(r_flat, freqs, l2):
    """Penalised BT negative log-likelihood of rewards (K*M*N,) for frequencies (K, M, N, N)."""
    r = r_flat.reshape(freqs.shape[:-1])
    value, grad = _pairwise_loss(r, 0.0, freqs, 1.0, _logistic)
    per_response = l2 / r.shape[-1]
    return value + 0.5 * per_response * float(r_flat @ r_flat), (grad + per_response * r).ravel()


def fit_bt_rewards(win_counts, l2: float = 1e-3) -> np.ndarray:
    """Bradley-Terry maximum-likelihood rewards per objective and prompt: (K, M, N, N) -> (K, M, N).

    Minimises, for each (k, m), ``sum_ij F[i, j] * -log sigmoid(r_i - r_j) + (l2 / 2) mean_i r_i^2``
    with F the prompt's frequencies (counts over their total). The likelihood's curvature in r_i
    is of order 1/N, so this scaling shrinks rewards by a fraction of order l2 for any N and any
    number of comparisons. The penalty keeps deterministic (separable) data finite and fixes the
    free constant: the optimum has zero mean per prompt. Solved to convergence with scipy
    L-BFGS-B (a model fit, not policy training). A prompt without comparisons gets zero rewards.
    """
    freqs = _frequencies(_check_win_counts(win_counts))
    l2 = check_positive(l2, "l2")
    res = minimize(
        _bt_loss,
        np.zeros(freqs.shape[:-1]).ravel(),
        args=(freqs, l2),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 50_000, "maxcor": 30, "gtol": 1e-12, "ftol": 0.0},
    )
    r = res.x.reshape(freqs.shape[:-1])
    return r - r.mean(axis=-1, keepdims=True)


def _weight_parameters(weights: np.ndarray) -> list[dict]:
    return [{"weight": row.tolist()} for row in weights]


# ---------------------------------------------------------------------------- methods


def dpo_primary(win_counts, reference, tau, steps: int = 2000, adam: AdamConfig | None = None) -> MethodResult:
    """DPO on the primary: loss ``sum_ij F_0[i, j] * -log sigmoid(tau (h_i - h_j))``; G = 1.

    On Bradley-Terry data with rewards r_0 and exact counts the optimum is
    ``pi ∝ pi_ref exp(r_0 / tau)``; on deterministic data it diverges (no KL effect).
    """
    counts, log_ref, tau = _prepare(win_counts, reference, tau)
    theta, trace = _dpo_logits(_frequencies(counts[:1]), log_ref, tau, _check_steps(steps), _check_adam(adam))
    return MethodResult("dpo_primary", [{"weight": [1.0] + [0.0] * (counts.shape[0] - 1)}], _softmax(theta), trace)


def ipo_primary(win_counts, reference, tau, steps: int = 2000, adam: AdamConfig | None = None) -> MethodResult:
    """IPO on the primary: loss ``sum_ij F_0[i, j] (h_i - h_j - 1 / (2 tau))^2``; G = 1.

    With exact counts the optimum is ``pi ∝ pi_ref exp(w_0 / tau)``, w_0 = P_0 mu the win-rate:
    MOPO's tilt with no constraint active.
    """
    counts, log_ref, tau = _prepare(win_counts, reference, tau)
    weights = np.eye(counts.shape[0])[:1]
    theta, trace = _ipo_logits(counts, weights, log_ref, tau, steps, adam)
    return MethodResult("ipo_primary", _weight_parameters(weights), _softmax(theta), trace)


def scalarised_ipo(
    win_counts, reference, tau, weights=None, steps: int = 2000, adam: AdamConfig | None = None
) -> MethodResult:
    """IPO on the weighted mixture of the objectives' counts ``W_mix = sum_k a_k W_k``, per row a of
    ``weights`` (G, K) (default :func:`weight_grid`).

    With exact counts the optimum is ``pi ∝ pi_ref exp(sum_k a_k w_k / tau)``. This is the MOPO
    family: for K = 2 and a = (1 - s, s), s < 1, it is MOPO's tilt pi_lam with lam = s / (1 - s)
    at KL strength tau / (1 - s), i.e. linear scalarisation of the win-rates.
    """
    counts, log_ref, tau = _prepare(win_counts, reference, tau)
    weights = _check_weights(weights, counts.shape[0])
    theta, trace = _ipo_logits(counts, weights, log_ref, tau, steps, adam)
    return MethodResult("scalarised_ipo", _weight_parameters(weights), _softmax(theta), trace)


def _ipo_logits(counts, weights, log_ref, tau, steps, adam):
    """IPO on the mixtures ``sum_k a_k W_k`` for weight rows (G, K): logits (G, M, N) and the loss trace."""
    freqs = _frequencies(np.einsum("gk,kmij->gmij", weights, counts))
    return _train(
        freqs, log_ref, 1.0, _squared(0.5 / tau), log_ref, weights.shape[0], _check_steps(steps), _check_adam(adam)
    )


def weighted_dpo(
    win_counts,
    reference,
    tau,
    weights=None,
    steps: int = 2000,
    adam: AdamConfig | None = None,
    l2: float = 1e-3,
) -> MethodResult:
    """MODPO (Zhou et al. 2023): DPO on the primary's pairs with the secondaries' fitted BT rewards
    as a margin. Per weight row a (G, K):

        loss = sum_ij F_0[i, j] * -log sigmoid( (tau / a_0) (h_i - h_j)
                                               - (1 / a_0) sum_{k>=1} a_k (rhat_k[i] - rhat_k[j]) )

    with rhat = :func:`fit_bt_rewards` (win_counts, l2). Rows with a_0 < MODPO_MIN_PRIMARY_WEIGHT
    are floored to it (secondaries rescaled); parameters hold the weight used and the one requested.
    a = (1, 0, ...) is exactly :func:`dpo_primary`.

    Optimum (exact counts, BT primary with rewards r_0): the link is stationary when its argument
    equals r_0[i] - r_0[j], i.e. ``pi ∝ pi_ref exp((a_0 r_0 + sum_{k>=1} a_k rhat_k) / tau)``.
    """
    counts, log_ref, tau = _prepare(win_counts, reference, tau, min_objectives=2)
    requested = _check_weights(weights, counts.shape[0])
    used = _floor_primary_weight(requested)
    rewards = fit_bt_rewards(counts, l2)
    a0 = used[:, 0]
    # (tau / a0)(h_i - h_j) - (u_i - u_j) / a0 = (tau / a0)(x_i - x_j) with x = h - u / tau.
    offset = log_ref + np.einsum("gk,kmn->gmn", used[:, 1:], rewards[1:]) / tau
    scale = (tau / a0)[:, None, None, None]
    theta, trace = _train(
        _frequencies(counts[:1]), offset, scale, _logistic, log_ref, used.shape[0], _check_steps(steps),
        _check_adam(adam),
    )
    parameters = [{"weight": u.tolist(), "requested_weight": r.tolist()} for u, r in zip(used, requested)]
    return MethodResult("weighted_dpo", parameters, _softmax(theta), trace)


def _floor_primary_weight(weights: np.ndarray) -> np.ndarray:
    """Rows (G, K) with w_0 < MODPO_MIN_PRIMARY_WEIGHT moved to w_0 = that floor, secondaries rescaled."""
    out = weights.copy()
    low = out[:, 0] < MODPO_MIN_PRIMARY_WEIGHT
    rest = out[low, 1:].sum(axis=1, keepdims=True)  # > 0, since the row sums to 1
    out[low, 1:] *= (1.0 - MODPO_MIN_PRIMARY_WEIGHT) / rest
    out[low, 0] = MODPO_MIN_PRIMARY_WEIGHT
    return out


def rewarded_soups(
    win_counts, reference, tau, weights=None, steps: int = 2000, adam: AdamConfig | None = None
) -> MethodResult:
    """Rewarded soups: one DPO policy per objective (logits theta_k, trained together), then for each
    weight row a (G, K) the policy ``softmax(sum_k a_k theta_k)``.

    On BT data with rewards r_k the soup is ``pi ∝ pi_ref exp(sum_k a_k r_k / tau)``; a = (1, 0, ...)
    is :func:`dpo_primary`'s policy.
    """
    counts, log_ref, tau = _prepare(win_counts, reference, tau)
    weights = _check_weights(weights, counts.shape[0])
    theta, trace = _dpo_logits(_frequencies(counts), log_ref, tau, _check_steps(steps), _check_adam(adam))
    soup = np.einsum("gk,kmn->gmn", weights, theta)
    return MethodResult("rewarded_soups", _weight_parameters(weights), _softmax(soup), trace)


def bt_win_rates(rewards: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
    """Win-rates implied by BT rewards against mu: (K, M, N), (M, N) -> (K, M, N),
    ``sum_y' mu[m, y'] sigmoid(r[k, m, y] - r[k, m, y'])``."""
    return np.einsum("kmij,mj->kmi", expit(rewards[..., :, None] - rewards[..., None, :]), behaviour)


def reward_lagrangian(
    win_counts, reference, behaviour, tau, thresholds, prompt_weights=None, l2: float = 1e-3
) -> MethodResult:
    """Safe-RLHF-style: BT reward models per objective, then the reward-based constrained problem.

    rhat = :func:`fit_bt_rewards` (win_counts, l2). Primary score rhat_0; secondary scores the
    BT-implied win-rates against mu, :func:`bt_win_rates` (rhat_{1:}). For each row b of
    ``thresholds`` (T, K-1) (or (T,) when K = 2) the exact KL-regularised solution
    ``max E[rhat_0] - tau KL s.t. E[wbt_j] >= b_j`` by :func:`mopo_core.tabular.solver.solve_scores`
    (warm-started from the previous row). parameters: threshold, feasible, multipliers.
    """
    counts = _check_win_counts(win_counts)
    k, m, n, _ = counts.shape
    if k < 2:
        raise ValueError(f"win_counts: this method needs K >= 2 objectives, got K = {k}")
    ref = check_distribution(reference, m, n, "reference")
    mu = check_distribution(behaviour, m, n, "behaviour")
    tau = check_positive(tau, "tau")
    grid = _check_threshold_grid(thresholds, k - 1)
    nu = check_prompt_weights(prompt_weights, m)
    rewards = fit_bt_rewards(counts, l2)
    secondary = bt_win_rates(rewards[1:], mu)
    parameters, policies, lam = [], [], None
    for row in grid:
        sol = solve_scores(rewards[0], secondary, row, tau, ref, nu, initial_multipliers=lam)
        lam = sol.multipliers
        parameters.append({"threshold": row.tolist(), "feasible": sol.feasible, "multipliers": lam.tolist()})
        policies.append(sol.policy)
    return MethodResult("reward_lagrangian", parameters, np.array(policies))


#: Name -> function, for the suite runner. All but reward_lagrangian take
#: (win_counts, reference, tau, [weights,] steps, adam); reward_lagrangian takes behaviour and thresholds.
BASELINES: dict[str, Callable[..., MethodResult]] = {
    "dpo_primary": dpo_primary,
    "ipo_primary": ipo_primary,
    "weighted_dpo": weighted_dpo,
    "scalarised_ipo": scalarised_ipo,
    "rewarded_soups": rewarded_soups,
    "reward_lagrangian": reward_lagrangian,
}
