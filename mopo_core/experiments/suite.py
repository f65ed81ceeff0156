"""The synthetic benchmark suite (SYNTHETIC.md): every structure x method x seed, scored on the truth.

The protocol, the same for every method (docs/experiments/synthetic_suite.md):

- Seeds. Seed ``s`` builds the structure with seed ``s`` and draws its comparisons with seed
  ``s``; a suite runs ``config.n_seeds`` consecutive seeds from ``config.seed`` (default 10).
- Data. Every method gets the same win counts (K, M, N, N) and the same estimated preferences
  (the exact ones when ``n_comparisons`` is None); ``mopo_oracle`` gets the true preferences
  (an upper reference, not a baseline).
- One question, T answers. The threshold grid (T, K-1) is the question; every method answers
  each row b with ONE policy. Threshold methods (mopo, mopo_oracle, reward_lagrangian) solve at
  b. Weight-grid methods train their G grid policies and answer with the point that
  :func:`choose_grid_points` picks from the ESTIMATED values (each policy's values on the
  estimated win-rates, what a user holds); single-policy methods answer every b with their
  one policy. True values are used only to score the answers.
- Temperatures. ``"same_tau"``: every method at ``config.tau`` (beta = tau for the DPO family).
  ``"same_kl"``: each baseline at the tau that :func:`match_kl_temperature` finds, so that the
  mean KL to pi_ref of the policies it outputs equals MOPO's mean KL over the T thresholds in
  that seed. mopo and mopo_oracle always run at ``config.tau`` and appear once (as "same_tau").
- Metrics, per (structure, seed, method, temperature), on the T answers' TRUE values (T, K):
  ``satisfaction`` (share of attainable thresholds met within MET_TOL), ``max_violation``,
  ``mean_regret`` (LP optimum of the primary minus the answer's primary, averaged over the met
  thresholds; NaN when none is met), ``hypervolume`` and ``hv_ratio`` (to the exact front's,
  reference point = pi_ref's values), ``igd_plus``, ``n_points`` (distinct answers), ``mean_kl``
  (over the answers),
  ``output_kl`` (over every policy the method output: what "same_kl" matches), ``tau``.
- Summaries: mean and 95% t-interval over seeds (:func:`mean_ci`, :func:`summary_table`) and
  paired per-seed differences mopo - baseline with their t-intervals (:func:`paired_differences`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
from scipy.optimize import brentq, minimize_scalar
from scipy.stats import t as student_t

from synthetic import STRUCTURES, Structure, estimate_preferences, exact_win_counts, make_structure, sample_comparisons

from mopo_core.tabular.baselines import BASELINES, MethodResult, weight_grid
from mopo_core.pareto import (
    ExactFront,
    attainable_max,
    dominance_matrix,
    exact_front,
    front_value,
    hypervolume,
    igd_plus,
    lp_best_primary,
)
from mopo_core.tabular.solver import TabularProblem, kl_divergence, policy_values, win_rates
from mopo_core.validation import as_finite_array, check_int, check_nonnegative, check_positive

METHODS = ("mopo", "mopo_oracle", *BASELINES)
THRESHOLD_METHODS = ("mopo", "mopo_oracle", "reward_lagrangian")
#: The temperature modes: every method at config.tau, or each baseline at MOPO's KL.
TEMPERATURES = ("same_tau", "same_kl")
TEMPERATURE_LABELS = {"same_tau": "same τ", "same_kl": "same KL"}
#: Tolerance (win-rate units) for counting a threshold as met (on estimates or on the truth).
MET_TOL = 1e-6
#: Level of every interval the suite reports.
CONFIDENCE = 0.95
#: The metrics summarised over seeds and compared in pairs.
SUMMARY_METRICS = ("satisfaction", "mean_regret", "hv_ratio", "mean_kl", "output_kl")
#: Range searched by :func:`match_kl_temperature` and its relative tolerance on tau.
KL_MATCH_TAU_BOUNDS = (1e-4, 10.0)
KL_MATCH_RTOL = 1e-3
#: Factor between the taus of :func:`match_kl_temperature`'s downward scan, and the precision (as a
#: factor on tau) of its search for the KL's maximum when the scan stepped over it.
KL_MATCH_STEP = 4.0
KL_MATCH_PEAK_XTOL = 1.05


@dataclass
class SuiteConfig:
    """Sizes and settings of a suite run. n_comparisons: per prompt; None means exact preferences.
    Seeds ``seed, seed + 1, ..., seed + n_seeds - 1`` (:attr:`seeds`); ``temperatures`` a
    non-empty subset of :data:`TEMPERATURES`."""

    structures: tuple[str, ...] = STRUCTURES
    methods: tuple[str, ...] = METHODS
    n_responses: int = 8
    n_prompts: int = 1
    multi_prompt_prompts: int = 4
    n_comparisons: int | None = 200
    tau: float = 0.01
    n_thresholds: int = 11
    n_weights: int = 11
    steps: int = 2000
    seed: int = 0
    n_seeds: int = 10
    temperatures: tuple[str, ...] = TEMPERATURES

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.n_seeds))

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; valid: {list(METHODS)}")
        unknown = [s for s in self.structures if s not in STRUCTURES]
        if unknown:
            raise ValueError(f"structures: unknown {unknown}; valid: {list(STRUCTURES)}")
        unknown = [t for t in self.temperatures if t not in TEMPERATURES]
        if unknown or not self.temperatures:
            raise ValueError(f"temperatures: need a non-empty subset of {list(TEMPERATURES)}, "
                             f"got {list(self.temperatures)}")
        if self.n_comparisons is not None and self.n_comparisons < 1:
            raise ValueError(f"n_comparisons: must be >= 1 or None (exact), got {self.n_comparisons}")
        for name in ("n_thresholds", "n_weights", "steps", "n_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        check_int(self.seed, "seed", 0)
        check_positive(self.tau, "tau")


@dataclass
class StructureResult:
    """One structure and seed: per-series answers (true values (T, K)), parameters and metrics.

    A series is a method at a temperature, keyed by :func:`series_label`; ``series`` maps the
    label to ``(method, temperature)``.
    """

    structure: str
    seed: int
    reference_point: np.ndarray
    thresholds: np.ndarray
    front_hypervolume: float
    series: dict[str, tuple[str, str]] = field(default_factory=dict)
    points: dict[str, np.ndarray] = field(default_factory=dict)
    parameters: dict[str, list[dict]] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    dominance: pd.DataFrame | None = None


def series_label(method: str, temperature: str) -> str:
    """``method`` at "same_tau", ``"method (same KL)"`` at "same_kl"."""
    return method if temperature == "same_tau" else f"{method} ({TEMPERATURE_LABELS[temperature]})"


def threshold_grid(rates: np.ndarray, reference: np.ndarray, prompt_weights: np.ndarray, n: int) -> np.ndarray:
    """Thresholds (T, K-1) from the reference's secondary values to 95% of the way to the attainable
    maximum: n per secondary for K = 2, a product grid of ceil(sqrt(n)) per secondary for K = 3+."""
    start = policy_values(reference, rates, prompt_weights)[1:]
    stop = start + 0.95 * (attainable_max(rates, prompt_weights)[1:] - start)
    per_axis = n if start.size == 1 else int(np.ceil(n ** (1 / start.size)))
    axes = [np.linspace(a, b, per_axis) for a, b in zip(start, stop)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, start.size)


def comparison_data(structure, n_comparisons: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The data every method shares: (win counts (K, M, N, N), estimated preferences (K, M, N, N)).
    ``n_comparisons`` per prompt; None gives exact counts and the true preferences."""
    if n_comparisons is None:
        return exact_win_counts(structure), structure.preferences
    counts = sample_comparisons(structure, n_comparisons, seed=seed).win_counts()
    return counts, estimate_preferences(counts)


def run_method(method: str, structure, grid: np.ndarray, config: SuiteConfig, data=None) -> MethodResult:
    """One method on one structure at ``config.tau``: policies for each threshold row of ``grid``
    (T, K-1) or each weight of the grid. ``data`` = :func:`comparison_data` output (computed from
    config if None)."""
    counts, estimated = data if data is not None else comparison_data(structure, config.n_comparisons, config.seed)
    if method in ("mopo", "mopo_oracle"):
        prefs = structure.preferences if method == "mopo_oracle" else estimated
        problem = TabularProblem.build(prefs, structure.reference, structure.behaviour, structure.prompt_weights)
        sweep = problem.sweep(grid, config.tau)
        params = [{"threshold": b.tolist(), "feasible": bool(f), "multipliers": lam.tolist()}
                  for b, f, lam in zip(sweep.thresholds, sweep.feasible, sweep.multipliers)]
        return MethodResult(method, params, sweep.policies)
    if method == "reward_lagrangian":
        return BASELINES[method](counts, structure.reference, structure.behaviour, config.tau, grid,
                                 structure.prompt_weights)
    kwargs = {"steps": config.steps}
    if method not in ("dpo_primary", "ipo_primary"):
        kwargs["weights"] = weight_grid(structure.n_objectives, config.n_weights)
    return BASELINES[method](counts, structure.reference, config.tau, **kwargs)


def output_kl(policies: np.ndarray, reference: np.ndarray, prompt_weights: np.ndarray) -> float:
    """Mean over policies (G, M, N) of ``E_x KL(pi || pi_ref)``: a method's KL at its temperature."""
    return float(np.mean([kl_divergence(p, reference, prompt_weights) for p in policies]))


def _match_kl(method, structure, grid, config, data, target_kl) -> tuple[float, MethodResult]:
    """:func:`match_kl_temperature`, also returning the method's output at the tau found."""
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; valid: {list(METHODS)}")
    target = check_nonnegative(target_kl, "target_kl")
    lo, hi = np.log(KL_MATCH_TAU_BOUNDS)
    runs: dict[float, tuple[float, MethodResult]] = {}

    def gap(log_tau: float) -> float:
        if log_tau not in runs:
            out = run_method(method, structure, grid, replace(config, tau=float(np.exp(log_tau))), data)
            runs[log_tau] = (output_kl(out.policies, structure.reference, structure.prompt_weights) - target, out)
        return runs[log_tau][0]

    step, xtol = np.log(KL_MATCH_STEP), np.log1p(KL_MATCH_RTOL)
    x = hi
    while gap(x) < 0 and x > lo:  # down from the largest tau until the KL reaches the target
        x_prev, x = x, max(x - step, lo)
        if gap(x) >= 0:
            brentq(gap, x, x_prev, xtol=xtol)
    if all(kl_gap < 0 for kl_gap, _ in runs.values()):  # no scanned tau reached it: look between them
        peak = max(runs, key=gap)
        upper = min(peak + step, hi)
        top = minimize_scalar(lambda v: -gap(v), bounds=(max(peak - step, lo), upper), method="bounded",
                              options={"xatol": np.log(KL_MATCH_PEAK_XTOL)}).x
        if gap(top) >= 0 > gap(upper):
            brentq(gap, top, upper, xtol=xtol)
    x = min(runs, key=lambda k: abs(runs[k][0]))  # Brent's last point, or the nearest KL reached
    return float(np.exp(x)), runs[x][1]


def match_kl_temperature(method: str, structure: Structure, grid: np.ndarray, config: SuiteConfig, data,
                         target_kl: float) -> float:
    """The temperature tau at which ``method`` (a name of :data:`METHODS`) on ``structure``, with
    the threshold grid (T, K-1) (threshold methods) and the rest of ``config`` (weights, steps),
    trained on ``data`` (:func:`comparison_data` output; None computes it from config), outputs
    policies whose mean KL to pi_ref (:func:`output_kl`) equals ``target_kl`` (>= 0).

    A 1-D root find on log tau: from the largest tau of KL_MATCH_TAU_BOUNDS (where every method's
    KL is near 0), tau falls by factors of KL_MATCH_STEP until the KL reaches the target, then
    Brent's method in that bracket to a relative tolerance of KL_MATCH_RTOL on tau. Going down from
    above finds the largest such tau: gradient-trained methods with a fixed step budget stop short
    of their optimum at very small tau, so their KL can fall again there. When no scanned tau
    reaches the target, the KL is maximised (bounded Brent) around the scan's largest, and a
    maximum above the target brackets the root on its larger-tau side. The tau returned is the
    evaluated one whose KL is nearest the target: Brent's last point, or, when no tau in the range
    reaches the target (e.g. DPO on deterministic data, whose KL barely depends on tau), the
    nearest reached; ``config.tau`` plays no part. ``output_kl`` of the method at the returned tau
    tells how close the match is.
    """
    return _match_kl(method, structure, grid, config, data, target_kl)[0]


def choose_grid_points(estimated: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The grid point a user picks for each threshold row, from ESTIMATED values only.

    estimated (G, K): each grid policy's values on the win-rates the method was given;
    thresholds (T, K-1). For row b: among the points whose estimated secondaries all reach b
    (within MET_TOL), the one with the largest estimated primary; when none does, the point with
    the smallest largest shortfall ``max_j (b_j - V_j)`` (ties: the larger estimated primary).
    Returns (T,) indices into the grid.
    """
    est = as_finite_array(estimated, "estimated")
    if est.ndim != 2 or est.shape[0] < 1 or est.shape[1] < 2:
        raise ValueError(f"estimated: expected shape (G, K) with G >= 1 and K >= 2, got {est.shape}")
    b = as_finite_array(thresholds, "thresholds")
    if b.ndim != 2 or b.shape[1] != est.shape[1] - 1:
        raise ValueError(f"thresholds: expected shape (T, {est.shape[1] - 1}), got {b.shape}")
    shortfall = np.max(b[:, None, :] - est[None, :, 1:], axis=2)  # (T, G)
    met = shortfall <= MET_TOL
    eligible = np.where(met.any(axis=1, keepdims=True), met, shortfall <= shortfall.min(axis=1, keepdims=True))
    return np.argmax(np.where(eligible, est[None, :, 0], -np.inf), axis=1)


def answer_thresholds(method: str, out: MethodResult, grid: np.ndarray, estimated_rates: np.ndarray,
                      prompt_weights: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """A method's answer to each threshold row of ``grid`` (T, K-1): (policies (T, M, N), parameters).
    Threshold methods' outputs already are one per row; any other method's come from
    :func:`choose_grid_points` on its policies' values on ``estimated_rates`` (K, M, N)."""
    if method in THRESHOLD_METHODS:
        return out.policies, out.parameters
    estimated = np.array([policy_values(p, estimated_rates, prompt_weights) for p in out.policies])
    chosen = choose_grid_points(estimated, grid)
    params = [{**out.parameters[g], "threshold": b.tolist(), "grid_index": int(g)} for b, g in zip(grid, chosen)]
    return out.policies[chosen], params


def _threshold_metrics(values, grid, lp_values) -> dict[str, float]:
    """Constraint satisfaction, largest violation and mean primary regret over attainable thresholds
    (row t of ``values`` (T, K) answers row t of ``grid`` (T, K-1))."""
    attainable = np.array([best is not None for best in lp_values])
    if not attainable.any():
        return {"satisfaction": np.nan, "max_violation": np.nan, "mean_regret": np.nan}
    shortfall = np.max(grid - values[:, 1:], axis=1)[attainable]
    met = shortfall <= MET_TOL
    best = np.array([b for b in lp_values if b is not None])
    regrets = (best - values[attainable, 0])[met]
    return {
        "satisfaction": float(np.mean(met)),
        "max_violation": float(max(shortfall.max(), 0.0)),
        "mean_regret": float(np.mean(regrets)) if regrets.size else np.nan,
    }


@dataclass(eq=False)
class ExactReference:
    """A structure with its exact answers.

    problem: the validated :class:`TabularProblem` on the TRUE preferences (solve / sweep on it);
    rates (K, M, N): true win-rates against the behaviour policy; reference_point (K,): the
    reference policy's values (the hypervolume reference point); front: the exact unregularised
    front; front_hypervolume: its hypervolume above the reference point; covered (P, K): the
    front points that weakly dominate the reference point (IGD+'s reference set).
    """

    structure: Structure
    problem: TabularProblem
    reference_point: np.ndarray
    front: ExactFront
    front_hypervolume: float
    covered: np.ndarray

    @property
    def name(self) -> str:
        return self.structure.name

    @property
    def rates(self) -> np.ndarray:
        return self.problem.rates

    @property
    def attainable_max(self) -> np.ndarray:
        """(K,) each objective's largest value over all policies."""
        return attainable_max(self.rates, self.prompt_weights)

    @property
    def objective_names(self) -> tuple[str, ...]:
        return self.structure.objective_names

    @property
    def n_objectives(self) -> int:
        return self.rates.shape[0]

    @property
    def prompt_weights(self) -> np.ndarray:
        return self.structure.prompt_weights

    def thresholds(self, n: int) -> np.ndarray:
        """The suite's threshold grid (T, K-1) with ``n`` thresholds (per secondary: see module doc)."""
        return threshold_grid(self.rates, self.structure.reference, self.prompt_weights, check_int(n, "n_thresholds", 1))

    def best_primary(self, grid: np.ndarray) -> list[float | None]:
        """LP optimum of the primary at each threshold row (None: unattainable). For K = 2 read off
        the exact polyline (identical to the LP, and a hundred times faster)."""
        if self.front.is_exact:
            return [front_value(self.front, float(b[0])) for b in grid]
        return [lp_best_primary(self.rates, self.prompt_weights, b)[0] for b in grid]


def exact_answers(structure: Structure) -> ExactReference:
    """A structure's exact answers: true win-rates, reference point, exact front, its hypervolume."""
    problem = TabularProblem.build(structure.preferences, structure.reference, structure.behaviour,
                                   structure.prompt_weights)
    rates, nu = problem.rates, problem.prompt_weights
    ref_point = policy_values(problem.reference, rates, nu)
    front = exact_front(rates, nu)
    covered = front.points[np.all(front.points >= ref_point, axis=1)]
    return ExactReference(structure, problem, ref_point, front, front.hypervolume(ref_point),
                          covered if len(covered) else front.points)


def score_points(values: np.ndarray, grid: np.ndarray, exact: ExactReference, best: list, kls) -> dict[str, float]:
    """SYNTHETIC.md metrics of one method's answers: true values ``values`` (T, K), row t answering
    threshold row t of ``grid`` (T, K-1), with LP optima ``best`` (T,) (None: unattainable) and the
    answers' KLs ``kls`` (T,)."""
    hv = hypervolume(values, exact.reference_point)
    metrics = {
        "hypervolume": hv,
        "hv_ratio": hv / exact.front_hypervolume if exact.front_hypervolume > 0 else np.nan,
        "igd_plus": igd_plus(values, exact.covered),
        "n_points": float(len(np.unique(values, axis=0))),
        "mean_kl": float(np.mean(kls)),
    }
    metrics.update(_threshold_metrics(values, grid, best))
    return metrics


def run_structure(name: str, config: SuiteConfig, seed: int) -> StructureResult:
    """Every configured method (at every configured temperature) on one structure and seed, scored
    on the true preferences (module docstring)."""
    m = config.multi_prompt_prompts if name == "multi_prompt" else config.n_prompts
    structure = make_structure(name, n_responses=config.n_responses, n_prompts=m, seed=seed)
    exact = exact_answers(structure)
    data = comparison_data(structure, config.n_comparisons, seed)
    estimated_rates = win_rates(data[1], structure.behaviour)
    grid = exact.thresholds(config.n_thresholds)
    best = exact.best_primary(grid)
    result = StructureResult(name, seed, exact.reference_point, grid, exact.front_hypervolume)
    same_tau = replace(config, seed=seed)
    outputs = {method: run_method(method, structure, grid, same_tau, data) for method in config.methods}
    target_kl = None
    if "same_kl" in config.temperatures:
        mopo = outputs.get("mopo") or run_method("mopo", structure, grid, same_tau, data)
        target_kl = output_kl(mopo.policies, structure.reference, structure.prompt_weights)
    for temperature in config.temperatures:
        for method in config.methods:
            if temperature == "same_tau":
                tau, out = config.tau, outputs[method]
            elif method in ("mopo", "mopo_oracle"):
                continue
            else:
                tau, out = _match_kl(method, structure, grid, same_tau, data, target_kl)
            policies, params = answer_thresholds(method, out, grid, estimated_rates, structure.prompt_weights)
            values = np.array([policy_values(p, exact.rates, exact.prompt_weights) for p in policies])
            kls = [kl_divergence(p, structure.reference, exact.prompt_weights) for p in policies]
            label = series_label(method, temperature)
            result.series[label] = (method, temperature)
            result.points[label] = values
            result.parameters[label] = [{**p, "tau": tau, "temperature": temperature} for p in params]
            result.metrics[label] = {
                **score_points(values, grid, exact, best, kls), "tau": tau,
                "output_kl": output_kl(out.policies, structure.reference, structure.prompt_weights),
            }
    result.dominance = dominance_matrix(result.points)
    return result


def run_suite(config: SuiteConfig | None = None, progress=None) -> list[StructureResult]:
    """Run the suite: one :class:`StructureResult` per (structure, seed), structures outermost.
    ``progress`` wraps the iterable of (structure, seed) pairs (e.g. tqdm)."""
    config = config or SuiteConfig()
    config.validate()
    jobs = [(name, seed) for name in config.structures for seed in config.seeds]
    return [run_structure(name, config, seed) for name, seed in (jobs if progress is None else progress(jobs))]


def results_table(results: list[StructureResult]) -> pd.DataFrame:
    """One row per structure x seed x series: method, temperature, metrics, and how many of its
    answers dominate / are dominated by the other series' answers in that seed."""
    rows = []
    for r in results:
        for label, metrics in r.metrics.items():
            method, temperature = r.series[label]
            rows.append({"structure": r.structure, "seed": r.seed, "method": method, "temperature": temperature,
                         **metrics, "dominates": int(r.dominance.loc[label].drop(label).sum()),
                         "dominated_by": int(r.dominance[label].drop(label).sum())})
    return pd.DataFrame(rows)


def mean_ci(values, confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """(mean, half-width of the Student-t interval at ``confidence``, n) of the finite entries of
    ``values`` (1-D). n = 0 gives (nan, nan, 0); n = 1 a NaN half-width."""
    x = np.asarray(values, dtype=float).ravel()
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must lie in (0, 1), got {confidence}")
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return np.nan, np.nan, 0
    if n == 1:
        return float(x[0]), np.nan, 1
    half = student_t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / np.sqrt(n)
    return float(x.mean()), float(half), n


def summary_table(table: pd.DataFrame, metrics=SUMMARY_METRICS, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Mean and t-interval over seeds of each metric: one row per structure x method x temperature
    x metric (columns mean, ci = half-width, n = seeds with a finite value) from
    :func:`results_table`'s per-seed rows."""
    rows = []
    for (structure, method, temperature), group in table.groupby(["structure", "method", "temperature"], sort=False):
        for metric in metrics:
            mean, half, n = mean_ci(group[metric], confidence)
            rows.append({"structure": structure, "method": method, "temperature": temperature, "metric": metric,
                         "mean": mean, "ci": half, "n": n})
    return pd.DataFrame(rows)


def paired_differences(table: pd.DataFrame, metrics=SUMMARY_METRICS, confidence: float = CONFIDENCE,
                       reference: str = "mopo") -> pd.DataFrame:
    """Per-seed differences ``reference - baseline`` (``reference`` at "same_tau", each other series
    of :func:`results_table` at its temperature), paired by (structure, seed): one row per
    structure x baseline x temperature x metric with the mean difference, its t-interval half-width
    ``ci``, ``n`` (seeds where both are finite) and ``positive`` (how many differences are > 0)."""
    ref = table[(table.method == reference) & (table.temperature == "same_tau")]
    rows = []
    for (structure, method, temperature), group in table.groupby(["structure", "method", "temperature"], sort=False):
        if method == reference:
            continue
        merged = group.merge(ref[ref.structure == structure], on="seed", suffixes=("", "_ref"))
        for metric in metrics:
            diff = (merged[f"{metric}_ref"] - merged[metric]).to_numpy(float)
            mean, half, n = mean_ci(diff, confidence)
            rows.append({"structure": structure, "baseline": method, "temperature": temperature, "metric": metric,
                         "mean": mean, "ci": half, "n": n, "positive": int(np.sum(diff[np.isfinite(diff)] > 0))})
    return pd.DataFrame(rows)


def _cells(frame: pd.DataFrame, row_keys: list[str], digits: int) -> pd.DataFrame:
    """Structures as columns, one row per (row_keys), cells "mean ± ci", followed by "(positive/n)"
    when the frame counts positive differences (:func:`paired_differences`)."""
    def cell(row):
        if not np.isfinite(row["mean"]):
            return "-"
        text = f"{row['mean']:.{digits}f}" + ("" if not np.isfinite(row["ci"]) else f" ± {row['ci']:.{digits}f}")
        return text + (f" ({row['positive']}/{row['n']})" if "positive" in row else "")

    labelled = frame.assign(row=frame.apply(lambda r: series_label(r[row_keys[0]], r[row_keys[1]]), axis=1),
                            cell=frame.apply(cell, axis=1))
    pivot = labelled.pivot(index="row", columns="structure", values="cell").fillna("-")
    return pivot.loc[list(dict.fromkeys(labelled.row)), list(dict.fromkeys(labelled.structure))]


def markdown_report(table: pd.DataFrame, config: SuiteConfig) -> str:
    """The suite's Markdown report from :func:`results_table`: per metric, mean ± 95% half-width
    over seeds (methods x structures), then the paired mopo - baseline differences."""
    summary, paired = summary_table(table), paired_differences(table)
    data = "exact preferences" if config.n_comparisons is None else f"{config.n_comparisons} comparisons per prompt"
    parts = [f"# Synthetic suite: {data}, tau = {config.tau}, seeds {config.seeds[0]}..{config.seeds[-1]} "
             f"({config.n_seeds})\n",
             f"Cells: mean ± half-width of the {CONFIDENCE:.0%} t-interval over seeds. Rows '(same KL)': the "
             "baseline's tau set so its mean KL to pi_ref matches MOPO's in each seed.\n"]
    for metric in SUMMARY_METRICS:
        rows = summary[summary.metric == metric]
        parts.append(f"## {metric}\n\n{_cells(rows, ['method', 'temperature'], 3).to_markdown()}\n")
    parts.append("## Paired differences mopo - baseline (per seed)\n\nPositive is better for MOPO on "
                 "satisfaction and hv_ratio, negative on mean_regret (regret paired over seeds where both "
                 "meet some threshold). In brackets: seeds where the difference is > 0, out of the seeds "
                 "paired.\n")
    for metric in SUMMARY_METRICS:
        rows = paired[paired.metric == metric]
        parts.append(f"### mopo - baseline: {metric}\n\n{_cells(rows, ['baseline', 'temperature'], 3).to_markdown()}\n")
    return "\n".join(parts)


def dominance_totals(results: list[StructureResult]) -> dict[str, pd.DataFrame]:
    """Per structure, the dominance matrices (:func:`mopo_core.pareto.dominance_matrix`) of its seeds
    summed: entry (A, B) = over seeds, how many of A's answers dominate some answer of B."""
    totals: dict[str, pd.DataFrame] = {}
    for r in results:
        totals[r.structure] = r.dominance if r.structure not in totals else totals[r.structure].add(r.dominance)
    return totals


def config_dict(config: SuiteConfig) -> dict:
    return asdict(config)
