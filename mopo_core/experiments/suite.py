"""The synthetic benchmark suite (SYNTHETIC.md): every structure x method, with the metrics.

Every method gets the same comparisons (or exact preferences) and the same KL strength;
each returns policies that are scored on the TRUE win-rates. Threshold methods (mopo,
mopo_oracle, reward_lagrangian) give one policy per threshold; weight methods give one per
weight, and at each threshold they are credited with their best point that meets it (what a
user choosing from the grid would pick).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

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
from mopo_core.tabular.solver import TabularProblem, kl_divergence, policy_values
from mopo_core.validation import check_int

METHODS = ("mopo", "mopo_oracle", *BASELINES)
THRESHOLD_METHODS = ("mopo", "mopo_oracle", "reward_lagrangian")
#: Tolerance (win-rate units) for counting a threshold as met.
MET_TOL = 1e-6


@dataclass
class SuiteConfig:
    """Sizes and settings of a suite run. n_comparisons: per prompt; None means exact preferences."""

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

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; valid: {list(METHODS)}")
        unknown = [s for s in self.structures if s not in STRUCTURES]
        if unknown:
            raise ValueError(f"structures: unknown {unknown}; valid: {list(STRUCTURES)}")
        if self.n_comparisons is not None and self.n_comparisons < 1:
            raise ValueError(f"n_comparisons: must be >= 1 or None (exact), got {self.n_comparisons}")
        for name in ("n_thresholds", "n_weights", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class StructureResult:
    """One structure's outcome: per-method points (true values (G, K)), parameters and metrics."""

    structure: str
    reference_point: np.ndarray
    thresholds: np.ndarray
    front_hypervolume: float
    points: dict[str, np.ndarray] = field(default_factory=dict)
    parameters: dict[str, list[dict]] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    dominance: pd.DataFrame | None = None


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
    """One method on one structure: policies for each threshold row of ``grid`` (T, K-1) or each
    weight of the grid. ``data`` = :func:`comparison_data` output (computed from config if None)."""
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


def _threshold_metrics(values, method, grid, lp_values) -> dict[str, float]:
    """Constraint satisfaction, largest violation and mean primary regret over attainable thresholds."""
    met, violations, regrets = [], [], []
    for t, (b, best) in enumerate(zip(grid, lp_values)):
        if best is None:
            continue
        if method in THRESHOLD_METHODS:
            shortfall = float(np.max(b - values[t, 1:]))
            ok = shortfall <= MET_TOL
            primary = values[t, 0] if ok else np.nan
        else:
            shortfalls = np.max(b[None] - values[:, 1:], axis=1)
            ok = bool(np.any(shortfalls <= MET_TOL))
            shortfall = float(shortfalls.min())
            primary = values[shortfalls <= MET_TOL, 0].max() if ok else np.nan
        met.append(ok)
        violations.append(max(shortfall, 0.0))
        if ok:
            regrets.append(best - primary)
    return {
        "satisfaction": float(np.mean(met)) if met else np.nan,
        "max_violation": float(np.max(violations)) if violations else np.nan,
        "mean_regret": float(np.mean(regrets)) if regrets else np.nan,
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


def score_points(values: np.ndarray, grid: np.ndarray, exact: ExactReference, best: list, kls,
                 method: str = "mopo") -> dict[str, float]:
    """SYNTHETIC.md metrics of one method's points ``values`` (T, K) (true values) at thresholds
    ``grid`` (T, K-1), with LP optima ``best`` (T,) (None: unattainable) and KLs ``kls`` (T,)."""
    hv = hypervolume(values, exact.reference_point)
    metrics = {
        "hypervolume": hv,
        "hv_ratio": hv / exact.front_hypervolume if exact.front_hypervolume > 0 else np.nan,
        "igd_plus": igd_plus(values, exact.covered),
        "n_points": float(len(values)),
        "mean_kl": float(np.mean(kls)),
    }
    metrics.update(_threshold_metrics(values, method, grid, best))
    return metrics


def run_structure(name: str, config: SuiteConfig) -> StructureResult:
    """Run every configured method on one structure and score it on the true preferences."""
    m = config.multi_prompt_prompts if name == "multi_prompt" else config.n_prompts
    structure = make_structure(name, n_responses=config.n_responses, n_prompts=m, seed=config.seed)
    exact = exact_answers(structure)
    data = comparison_data(structure, config.n_comparisons, config.seed)
    grid = exact.thresholds(config.n_thresholds)
    best = exact.best_primary(grid)
    result = StructureResult(name, exact.reference_point, grid, exact.front_hypervolume)
    for method in config.methods:
        out = run_method(method, structure, grid, config, data)
        values = np.array([policy_values(p, exact.rates, exact.prompt_weights) for p in out.policies])
        kls = [kl_divergence(p, structure.reference, exact.prompt_weights) for p in out.policies]
        result.points[method] = values
        result.parameters[method] = out.parameters
        result.metrics[method] = score_points(values, grid, exact, best, kls, method)
    result.dominance = dominance_matrix(result.points)
    return result


def run_suite(config: SuiteConfig | None = None, progress=None) -> list[StructureResult]:
    """Run the suite; ``progress`` wraps the iterable of structure names (e.g. tqdm)."""
    config = config or SuiteConfig()
    config.validate()
    names = config.structures if progress is None else progress(config.structures)
    return [run_structure(name, config) for name in names]


def results_table(results: list[StructureResult]) -> pd.DataFrame:
    """One row per structure x method: metrics plus how many of its points dominate / are dominated."""
    rows = []
    for r in results:
        for method, metrics in r.metrics.items():
            dominates_others = int(r.dominance.loc[method].drop(method).sum())
            dominated_by = int(r.dominance[method].drop(method).sum())
            rows.append({"structure": r.structure, "method": method, **metrics,
                         "dominates": dominates_others, "dominated_by": dominated_by})
    return pd.DataFrame(rows)


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Methods x structures, each cell "hv_ratio / satisfaction / mean_regret" (3 decimals; "-" for
    undefined regret: no threshold met)."""
    def cell(row):
        regret = "-" if np.isnan(row.mean_regret) else f"{row.mean_regret:.3f}"
        return f"{row.hv_ratio:.3f} / {row.satisfaction:.2f} / {regret}"

    cells = table.assign(cell=table.apply(cell, axis=1))
    pivot = cells.pivot(index="method", columns="structure", values="cell")
    return pivot.loc[list(dict.fromkeys(table.method)), list(dict.fromkeys(table.structure))]


def config_dict(config: SuiteConfig) -> dict:
    return asdict(config)
