"""Explore's page logic, without Streamlit: the data MOPO is fitted on, MOPO's answer with its
true values next to its estimates, MOPO's own front at the current τ, and each baseline's curve
at the same KL to π_ref as MOPO's point.

Conventions (the engine's): objectives are maximised; values are win-rates against the behaviour
policy; objective 0 is the primary. "True" values are computed on the instance's preferences
(known for synthetic structures and for an uploaded file, which is taken as the truth);
"estimated" values on the preferences estimated from ``n`` sampled comparisons per prompt.

- :func:`fitted_data`: the win counts and preferences MOPO and the baselines are fitted on
  (exact, or ``n`` comparisons per prompt sampled with a seed).
- :func:`solve_mopo`: MOPO on that data (with the ``margin`` option: meet ``b + z·SE``), its true
  values, its estimates and their standard errors (:class:`MopoAnswer`); :func:`verdict` says in
  words whether each threshold holds on the truth.
- :func:`own_front`: MOPO's threshold sweep at the current τ (and ε): the curve its point moves
  along as one threshold moves, the others fixed.
- :func:`tau_curve` / :func:`at_kl`: a weight-grid baseline trained on a grid of temperatures,
  then, for each weight, the policy whose KL to π_ref equals a target (MOPO's). Between two
  trained temperatures the logits are interpolated linearly in 1/τ (exact at the methods'
  population optima, where log π − log π_ref = score / τ), and the interpolation weight is
  found by regula falsi (all weights at once) until the KL is the target to ~1e-13. A weight that no trained τ
  brings to the target is reported as not reached. :func:`threshold_baseline_at_kl` does the same for a
  threshold baseline (reward Lagrangian) with the suite's root-find on τ
  (:func:`mopo_core.experiments.suite.match_kl_temperature`). :func:`baseline_same_tau`: a
  baseline at MOPO's τ instead (its KL then differs from MOPO's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from app.presenters.formats import number_text
from mopo_core.experiments.suite import (
    MET_TOL,
    THRESHOLD_METHODS,
    ExactReference,
    SuiteConfig,
    match_kl_temperature,
    run_method,
)
from mopo_core.tabular.solver import TabularProblem, TabularSolution, attainable_maxima, kl_divergence, policy_values
from mopo_core.tabular.uncertainty import eps_for_sample_size, solve_with_margin
from mopo_core.validation import check_int, check_nonnegative, check_positive
from synthetic import Structure, estimate_preferences, exact_win_counts, sample_comparisons

#: Data sizes offered (comparisons per prompt); None means the exact preferences (n = ∞).
DATA_SIZES = (None, 100, 400, 1600, 6400)
#: Margins offered: MOPO enforces b + z·SE (z = 1.64: one-sided 95% if the SE were exact).
MARGINS = (0.0, 1.0, 1.64)
#: The interval shown around an estimate: estimate ± Z_INTERVAL · SE (two-sided 95%).
Z_INTERVAL = 1.96
#: Pseudo-count of the preference estimate (``synthetic.estimate_preferences``).
PRIOR = 1.0
#: Points on MOPO's own front (a threshold sweep at the current τ).
OWN_FRONT_POINTS = 61
#: Temperatures each weight-grid baseline is trained at before matching its KL (about a factor
#: 1.6 apart; τ = ∞ is the reference policy itself, KL 0).
KL_TAUS = tuple(float(t) for t in np.geomspace(0.002, 20.0, 20))
#: Adam steps per baseline training (Explore's budget; the suite uses more).
BASELINE_STEPS = 1000
#: Weight-grid points per baseline.
BASELINE_WEIGHTS = 11


def data_label(n_comparisons: int | None) -> str:
    return "exact preferences (n = ∞)" if n_comparisons is None else f"{n_comparisons} comparisons per prompt"


def eps_rule(n_comparisons: int | None, n_responses: int) -> float | None:
    """The robust radius the uncertainty module's rule gives for n comparisons per prompt
    (:func:`mopo_core.tabular.uncertainty.eps_for_sample_size`, 95%); None for exact data."""
    return None if n_comparisons is None else eps_for_sample_size(n_comparisons, n_responses)


# --------------------------------------------------------------------------- the data


@dataclass(eq=False)
class FittedData:
    """What MOPO and the baselines are fitted on: ``win_counts`` (K, M, N, N) (expected counts of
    one comparison per prompt when exact), ``preferences`` (K, M, N, N) (estimated, or the true
    ones), ``problem`` (:class:`TabularProblem` on them), ``n_comparisons`` (None: exact), ``seed``."""

    n_comparisons: int | None
    seed: int
    win_counts: np.ndarray
    preferences: np.ndarray
    problem: TabularProblem

    @property
    def exact(self) -> bool:
        return self.n_comparisons is None


def fitted_data(exact: ExactReference, n_comparisons: int | None, seed: int = 0) -> FittedData:
    """The exact preferences (``n_comparisons`` None) or ``n_comparisons`` comparisons per prompt
    sampled from ``exact``'s structure with ``seed`` and the preferences estimated from them."""
    s: Structure = exact.structure
    seed = check_int(seed, "seed", 0)
    if n_comparisons is None:
        return FittedData(None, seed, exact_win_counts(s), s.preferences, exact.problem)
    n = check_int(n_comparisons, "n_comparisons", 1)
    counts = sample_comparisons(s, n, seed=seed).win_counts()
    prefs = estimate_preferences(counts, prior=PRIOR)
    return FittedData(n, seed, counts, prefs, TabularProblem.build(prefs, s.reference, s.behaviour, s.prompt_weights))


# --------------------------------------------------------------------------- MOPO's answer


@dataclass(eq=False)
class MopoAnswer:
    """MOPO's chosen policy on the fitted data, with its true values and its estimates.

    thresholds (J,) as asked; enforced (J,) the thresholds the solve enforced (``b + z·SE`` with a
    margin, else ``b``); true_values, estimated_values, standard_errors (K,) (SE 0 on exact data);
    kl to π_ref; z the margin; n_comparisons None for exact data.
    """

    solution: TabularSolution
    thresholds: np.ndarray
    enforced: np.ndarray
    z: float
    n_comparisons: int | None
    true_values: np.ndarray
    estimated_values: np.ndarray
    standard_errors: np.ndarray
    policy: np.ndarray = field(repr=False)

    @property
    def kl(self) -> float:
        return float(self.solution.kl)

    @property
    def half_width(self) -> np.ndarray:
        """(K,) ``Z_INTERVAL · SE``."""
        return Z_INTERVAL * self.standard_errors

    @property
    def lower(self) -> np.ndarray:
        return self.estimated_values - self.half_width

    @property
    def upper(self) -> np.ndarray:
        return self.estimated_values + self.half_width

    @property
    def true_slack(self) -> np.ndarray:
        """(J,) true secondary value minus the threshold asked for (negative: broken)."""
        return self.true_values[1:] - self.thresholds

    @property
    def broken(self) -> np.ndarray:
        """(J,) the threshold is broken on the TRUE preferences (beyond MET_TOL)."""
        return self.true_slack < -MET_TOL

    @property
    def estimated_met(self) -> np.ndarray:
        """(J,) the ESTIMATE meets the threshold (what the data said)."""
        return self.estimated_values[1:] >= self.thresholds - MET_TOL

    def table(self, names) -> pd.DataFrame:
        """One row per objective: threshold, enforced threshold, true value, estimate, SE, interval,
        true slack and whether the threshold holds on the truth."""
        k = len(self.true_values)
        nan = [math.nan]
        return pd.DataFrame({
            "objective": [f"V{i} {names[i]}" for i in range(k)],
            "threshold b": nan + list(self.thresholds),
            "enforced threshold": nan + list(self.enforced),
            "true value": self.true_values,
            "estimate": self.estimated_values,
            "SE": self.standard_errors,
            "95% low": self.lower,
            "95% high": self.upper,
            "true slack": nan + list(self.true_slack),
            "met on truth": [None] + [bool(not b) for b in self.broken],
        })


def solve_mopo(exact: ExactReference, data: FittedData, thresholds, tau: float, eps: float = 0.0,
               z: float = 0.0) -> MopoAnswer:
    """MOPO on ``data`` at ``thresholds``, τ, ε; on sampled data with the margin ``z`` (enforce
    ``b + z·SE``, :func:`mopo_core.tabular.uncertainty.solve_with_margin`). True values are on
    ``exact``'s preferences; estimates on the data's."""
    s = exact.structure
    tau, eps, z = check_positive(tau, "tau"), check_nonnegative(eps, "eps"), check_nonnegative(z, "z")
    b = np.asarray(thresholds, dtype=float).reshape(-1)
    if data.exact:
        sol = data.problem.solve(b, tau, eps)
        se, enforced = np.zeros(exact.n_objectives), b.copy()
    else:
        margin = solve_with_margin(data.win_counts, b, tau, z, reference=s.reference, behaviour=s.behaviour,
                                   prompt_weights=s.prompt_weights, prior=PRIOR, eps=eps)
        sol, enforced = margin.solution, np.asarray(margin.enforced_thresholds, dtype=float)
        se = margin.standard_errors  # of the returned policy's estimated values
    policy = np.atleast_2d(sol.policy)
    return MopoAnswer(sol, b, enforced, z if not data.exact else 0.0, data.n_comparisons,
                      policy_values(policy, exact.rates, exact.prompt_weights),
                      policy_values(policy, data.problem.rates, data.problem.prompt_weights),
                      np.asarray(se, dtype=float), policy)


# --------------------------------------------------------------------------- MOPO's own front


def own_front(exact: ExactReference, data: FittedData, thresholds, j: int, tau: float, eps: float = 0.0,
              n_points: int = OWN_FRONT_POINTS) -> pd.DataFrame:
    """MOPO's own front at τ (and ε) in the plane (V_j, V0): the policies it returns on ``data`` as
    threshold b_j moves from where it stops binding (the unconstrained tilt) to 99.9% of the way to
    V_j's attainable maximum, the other thresholds fixed at ``thresholds`` (the enforced ones).

    One row per threshold that the solver could meet: b (the moving threshold), V0..V{K-1} (TRUE
    values), V0_est.. (values on the data), kl. Empty when the other thresholds cannot be met.
    """
    problem = data.problem
    k = exact.n_objectives
    if not 1 <= j < k:
        raise ValueError(f"j: the moving threshold must be a secondary objective in [1, {k - 1}], got {j}")
    n_points = check_int(n_points, "n_points", 2)
    base = np.asarray(thresholds, dtype=float).reshape(-1).copy()
    base[j - 1] = 0.0  # a win-rate is >= 0: threshold j does not bind
    start = problem.solve(base, tau, eps)
    columns = ["b", *[f"V{i}" for i in range(k)], *[f"V{i}_est" for i in range(k)], "kl"]
    if not start.feasible:
        return pd.DataFrame(columns=columns)
    low = float(start.values[j])
    top = float(attainable_maxima(problem.rates[1:], problem.reference, problem.prompt_weights)[j - 1])
    grid = np.repeat(base[None], n_points, axis=0)
    grid[:, j - 1] = low + max(top - low, 0.0) * np.linspace(0.0, 0.999, n_points)
    sweep = problem.sweep(grid, tau, eps)
    keep = sweep.feasible
    policies = sweep.policies.reshape(n_points, *problem.reference.shape)[keep]
    true = np.array([policy_values(p, exact.rates, exact.prompt_weights) for p in policies]).reshape(-1, k)
    est = np.array([policy_values(p, problem.rates, problem.prompt_weights) for p in policies]).reshape(-1, k)
    frame = pd.DataFrame({"b": grid[keep, j - 1]})
    for i in range(k):
        frame[f"V{i}"] = true[:, i]
    for i in range(k):
        frame[f"V{i}_est"] = est[:, i]
    frame["kl"] = sweep.kl[keep]
    return frame


# --------------------------------------------------------------------------- baselines at the same KL


@dataclass(eq=False)
class TauCurve:
    """A baseline trained at each temperature of ``taus`` (T,) (increasing): ``policies`` (T, G, M, N),
    ``kls`` (T, G), ``parameters`` (G dicts, the same at every τ)."""

    method: str
    taus: np.ndarray
    parameters: list[dict]
    policies: np.ndarray
    kls: np.ndarray
    reference: np.ndarray = field(repr=False)
    prompt_weights: np.ndarray = field(repr=False)


def tau_curve(method: str, exact: ExactReference, data: FittedData, taus=KL_TAUS, steps: int = BASELINE_STEPS,
              n_weights: int = BASELINE_WEIGHTS) -> TauCurve:
    """A weight-grid (or single-policy) baseline trained on ``data`` at every temperature of ``taus``."""
    if method in THRESHOLD_METHODS:
        raise ValueError(f"method: {method!r} takes thresholds; use threshold_baseline_at_kl")
    s = exact.structure
    taus = np.sort(np.array([check_positive(t, f"taus[{i}]") for i, t in enumerate(taus)], dtype=float))
    policies, kls, parameters = [], [], None
    for tau in taus:
        config = SuiteConfig(tau=float(tau), n_comparisons=data.n_comparisons, steps=steps, n_weights=n_weights)
        out = run_method(method, s, np.empty((1, 0)), config, (data.win_counts, data.preferences))
        pols = np.asarray(out.policies).reshape(len(out.parameters), *s.reference.shape)
        policies.append(pols)
        kls.append([kl_divergence(p, s.reference, s.prompt_weights) for p in pols])
        parameters = out.parameters
    return TauCurve(method, taus, parameters, np.array(policies), np.array(kls), s.reference, s.prompt_weights)


def _describe(params: dict) -> str:
    if "weight" in params:
        return "weight " + ", ".join(f"{w:.2f}" for w in params["weight"])
    if "threshold" in params:
        return "threshold " + ", ".join(f"{b:.3f}" for b in params["threshold"])
    return "single policy"


def _log_ratio(policy: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """log π − log π_ref, centred per prompt (the tilt; softmax-invariant)."""
    h = np.log(np.maximum(policy, 1e-300)) - np.log(reference)
    return h - h.mean(axis=-1, keepdims=True)


def _tilted(reference: np.ndarray, h: np.ndarray) -> np.ndarray:
    """π ∝ π_ref · exp(h) per prompt; h (..., M, N)."""
    logits = np.log(reference) + h
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _kls(policies: np.ndarray, reference: np.ndarray, prompt_weights: np.ndarray) -> np.ndarray:
    """KL(π‖π_ref) of policies (G, M, N): (G,)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(policies > 0, policies * (np.log(policies) - np.log(reference)), 0.0)
    return terms.sum(axis=-1) @ prompt_weights


#: Most steps of the root-find on the interpolation weight (each shrinks its bracket; it stops earlier once
#: every weight's KL is within MATCH_TOL of the target or its bracket is below 1e-15).
MATCH_STEPS = 50
#: The root-find's tolerance on the KL (nats): far below any visible difference.
MATCH_TOL = 1e-13


def _match(curve: TauCurve, target: float):
    """For every weight g at once: (policies (G, M, N), effective τ (G,), reached (G,)) with
    KL(π_g‖π_ref) = ``target`` where reached.

    For each g the bracket is found scanning from the largest τ (the reference side) down to the
    first trained τ whose KL reaches the target, so that it lies where training has converged; τ = ∞
    (the reference itself, h = 0) closes it above the grid. Between the bracket's two trained
    policies the tilt h = log π − log π_ref moves linearly (h = (1 − s) h_near + s h_far, i.e.
    linearly in 1/τ), and s is found for all g together by regula falsi with the Illinois step (the
    bracket [low, high] always has KL(low) < target ≤ KL(high), as bisection's would, and shrinks
    superlinearly: about 8 steps instead of bisection's 50); the policy returned is at ``high``."""
    kls = curve.kls  # (T, G)
    g_count = kls.shape[1]
    reached = (kls >= target).any(axis=0)
    if target <= 0:
        return np.broadcast_to(curve.reference, (g_count, *curve.reference.shape)).copy(), \
            np.full(g_count, math.inf), np.ones(g_count, dtype=bool)
    t_count = len(curve.taus)
    far = np.where(reached, t_count - 1 - np.argmax((kls >= target)[::-1], axis=0), 0)  # largest τ reaching it
    near = far + 1
    inside = near < t_count
    cols = np.arange(g_count)
    h_far = _log_ratio(curve.policies[far, cols], curve.reference)
    h_near = np.where(inside[:, None, None], _log_ratio(curve.policies[np.minimum(near, t_count - 1), cols],
                                                        curve.reference), 0.0)
    inv_far = 1.0 / curve.taus[far]
    inv_near = np.where(inside, 1.0 / curve.taus[np.minimum(near, t_count - 1)], 0.0)

    def gap(s):  # KL at weights s (G,) minus the target
        return _kls(_tilted(curve.reference, h_near + s[:, None, None] * (h_far - h_near)), curve.reference,
                    curve.prompt_weights) - target

    low, high = np.zeros(g_count), np.ones(g_count)
    at_low, at_high = np.minimum(gap(low), 0.0), gap(high)  # the gaps at the ends (the near end is below)
    w_low, w_high = at_low.copy(), at_high.copy()  # the weights regula falsi uses (Illinois halves them)
    side = np.zeros(g_count)  # +1: high moved last step, -1: low moved
    for _ in range(MATCH_STEPS):
        active = reached & (at_high > MATCH_TOL) & (high - low > 1e-15)
        if not active.any():
            break
        span = w_high - w_low
        s = high - w_high * (high - low) / np.where(span > 0, span, 1.0)
        s = np.where((span > 0) & (s > low) & (s < high), s, 0.5 * (low + high))
        f = gap(s)
        above, below = active & (f >= 0), active & (f < 0)
        # Illinois: when the same end moves twice in a row, halve the other end's weight (no one-sided stall)
        w_low = np.where(above & (side > 0), 0.5 * w_low, w_low)
        w_high = np.where(below & (side < 0), 0.5 * w_high, w_high)
        high, at_high, w_high = np.where(above, s, high), np.where(above, f, at_high), np.where(above, f, w_high)
        low, at_low, w_low = np.where(below, s, low), np.where(below, f, at_low), np.where(below, f, w_low)
        side = np.where(above, 1.0, np.where(below, -1.0, side))
    policies = _tilted(curve.reference, h_near + high[:, None, None] * (h_far - h_near))
    inverse = inv_near + high * (inv_far - inv_near)
    with np.errstate(divide="ignore"):
        taus = np.where(inverse > 0, 1.0 / inverse, math.inf)
    return policies, taus, reached


def at_kl(curve: TauCurve, target_kl: float, exact: ExactReference) -> pd.DataFrame:
    """Each weight's policy at KL(π‖π_ref) = ``target_kl``: one row per grid point with method,
    parameter, tau (the effective temperature), kl, reached (False: no trained τ reaches the
    target; then kl is the largest one reached and the values are NaN), V0..V{K-1} (TRUE values)."""
    target = check_nonnegative(target_kl, "target_kl")
    policies, taus, reached = _match(curve, target)
    kls = _kls(policies, curve.reference, curve.prompt_weights)
    values = np.einsum("m,gmn,kmn->gk", exact.prompt_weights, policies, exact.rates)
    rows = []
    for g, params in enumerate(curve.parameters):
        row = {"method": curve.method, "parameter": _describe(params)}
        if reached[g]:
            row.update(tau=float(taus[g]), kl=float(kls[g]), reached=True,
                       **{f"V{k}": float(v) for k, v in enumerate(values[g])})
        else:
            row.update(tau=math.nan, kl=float(curve.kls[:, g].max()), reached=False,
                       **{f"V{k}": math.nan for k in range(exact.n_objectives)})
        rows.append(row)
    return pd.DataFrame(rows)


def threshold_baseline_at_kl(method: str, exact: ExactReference, data: FittedData, thresholds,
                             target_kl: float) -> pd.DataFrame:
    """A threshold baseline (reward Lagrangian) at ``thresholds``, its τ set by
    :func:`mopo_core.experiments.suite.match_kl_temperature` (a root-find on log τ with exact solves)
    so that its KL to π_ref is ``target_kl``; one row like :func:`at_kl` (reached False when the KL
    found is more than 1% off the target: the target lies outside the τ range searched)."""
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"method: {method!r} is not a threshold method ({list(THRESHOLD_METHODS)})")
    target = check_nonnegative(target_kl, "target_kl")
    grid = np.asarray(thresholds, dtype=float).reshape(1, -1)
    config = SuiteConfig(n_comparisons=data.n_comparisons)
    tau = match_kl_temperature(method, exact.structure, grid, config, (data.win_counts, data.preferences), target)
    row = _threshold_row(method, exact, data, grid, tau)
    row["reached"] = bool(abs(row["kl"] - target) <= 0.01 * max(target, 1e-3))
    return pd.DataFrame([row])


def _threshold_row(method, exact, data, grid, tau) -> dict:
    s = exact.structure
    config = SuiteConfig(tau=float(tau), n_comparisons=data.n_comparisons)
    out = run_method(method, s, grid, config, (data.win_counts, data.preferences))
    policy = np.asarray(out.policies[0]).reshape(s.reference.shape)
    values = policy_values(policy, exact.rates, exact.prompt_weights)
    return {"method": method, "parameter": _describe({"threshold": grid[0].tolist()}), "tau": float(tau),
            "kl": kl_divergence(policy, s.reference, s.prompt_weights), "reached": True,
            **{f"V{k}": v for k, v in enumerate(values)}}


def baseline_same_tau(method: str, exact: ExactReference, data: FittedData, thresholds, tau: float,
                      steps: int = BASELINE_STEPS, n_weights: int = BASELINE_WEIGHTS) -> pd.DataFrame:
    """A baseline at MOPO's τ (the old, unfair view: its KL differs from MOPO's); rows like :func:`at_kl`."""
    tau = check_positive(tau, "tau")
    if method in THRESHOLD_METHODS:
        return pd.DataFrame([_threshold_row(method, exact, data, np.asarray(thresholds, float).reshape(1, -1), tau)])
    curve = tau_curve(method, exact, data, (tau,), steps, n_weights)
    rows = []
    for g, params in enumerate(curve.parameters):
        policy = curve.policies[0, g]
        values = policy_values(policy, exact.rates, exact.prompt_weights)
        rows.append({"method": method, "parameter": _describe(params), "tau": tau, "kl": float(curve.kls[0, g]),
                     "reached": True, **{f"V{k}": v for k, v in enumerate(values)}})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- words


def interval_text(estimate: float, se: float) -> str:
    """``0.630 ± 0.021`` (± Z_INTERVAL·SE), rounded for the screen."""
    return f"{number_text(estimate)} ± {number_text(Z_INTERVAL * se)}"


def _shortfall(short: float) -> str:
    """A shortfall below a threshold: three decimals, or two significant digits when it rounds to 0.000."""
    return number_text(short) if abs(short) >= 5e-4 else f"{short:.1e}"


def verdict(answer: MopoAnswer, names, true_max=None) -> tuple[str, str]:
    """(level, message): "success", "warning" (the data said infeasible, the truth holds) or "error"
    (a threshold broken on the truth) and plain sentences on the thresholds, judged on the
    TRUE preferences (and, with sampled data, on what the estimate said). ``true_max`` (J,): each
    secondary's largest value over all policies on the truth, to tell a threshold no policy can meet
    from one this policy breaks (exact data have their own message in the view)."""
    sol = answer.solution
    j_names = [f"V{j} {names[j]}" for j in range(1, len(names))]
    if answer.n_comparisons is None:
        if sol.feasible:
            return "success", "Feasible: every threshold is met (exact preferences, so the estimate is the truth)."
        return "error", "These thresholds cannot be met."
    data = f"n = {answer.n_comparisons} comparisons per prompt, margin z = {answer.z:g}"
    sentences = []
    if not sol.feasible:
        sentences.append(f"On the estimated preferences ({data}) the enforced thresholds cannot be met; the policy "
                         "shown is the solver's answer for the nearest attainable thresholds.")
    parts = []
    for j in np.flatnonzero(answer.broken):
        said = "said it was met" if answer.estimated_met[j] else "was below it too"
        unattainable = true_max is not None and answer.thresholds[j] > true_max[j] + MET_TOL
        parts.append(f"{j_names[j]}: true value {number_text(answer.true_values[j + 1])} < b{j + 1} = "
                     f"{number_text(answer.thresholds[j])} (short by {_shortfall(-answer.true_slack[j])}; the estimate "
                     f"{interval_text(answer.estimated_values[j + 1], answer.standard_errors[j + 1])} {said})"
                     + (f", and no policy reaches b{j + 1} on the truth (largest true {j_names[j]}: "
                        f"{number_text(true_max[j])})" if unattainable else ""))
    if parts:
        hint = (" Raise the margin z to enforce b + z·SE, or use more comparisons." if answer.z < max(MARGINS) else
                " Even with this margin the estimate was off; more comparisons narrow the interval.")
        sentences.insert(0, f"Threshold broken on the TRUE preferences ({data}): " + "; ".join(parts) + "." + hint)
        return "error", " ".join(sentences)
    holds = (f"Every threshold holds on the TRUE preferences{'' if sentences else f' ({data})'}: "
             + ", ".join(f"{j_names[j]} {number_text(answer.true_values[j + 1])} ≥ {number_text(answer.thresholds[j])}"
                         for j in range(len(answer.thresholds))) + ".")
    return ("warning", " ".join([*sentences, holds])) if sentences else ("success", holds)
