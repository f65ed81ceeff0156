"""Threshold sweeps and ablations (over tau, eps, beta, t0 and data size n) with the SYNTHETIC.md metrics.

Pure functions (no Streamlit): the Sweep page and scripts call them and get pandas DataFrames.

- :func:`exact_reference`: a structure with its exact answers (true win-rates, the reference
  policy's values = the hypervolume reference point, the exact unregularised front).
- :func:`threshold_sweep`: MOPO's threshold sweep on one structure (the exact dual solver,
  :meth:`mopo_core.tabular.solver.TabularProblem.sweep`), one row per threshold, and its metrics.
- :func:`ablation`: one row of metrics per value of ``tau``, ``eps``, ``n`` (comparisons per
  prompt) with the exact solver, or ``beta``, ``t0`` with Algorithm 1
  (:func:`mopo_core.tabular.algorithm1.run_algorithm1`, lagged reference every ``t0`` steps, ratchet ``beta``).
- :func:`save_run`: store a sweep (kind ``"sweep"``) or an ablation (kind ``"ablation"``) in a
  :class:`mopo_core.runs.RunStore`.

Thresholds are the suite's (:func:`mopo_core.experiments.suite.threshold_grid`): from the reference policy's
secondary values to 95% of the way to the attainable maximum, computed on the TRUE win-rates.
For K = 2, ``n_thresholds`` values of b1; for K >= 3 a product grid of ``ceil(n ** (1/(K-1)))``
values per secondary (100 -> 10 x 10 for ``three_objectives``), some of which may be jointly
unattainable (they are left out of satisfaction and regret, as in the suite).

Metrics (SYNTHETIC.md, the same definitions as :mod:`mopo_core.experiments.suite`), always on the TRUE
preferences whatever data the policies were fitted on:

- ``hypervolume`` of the points, reference point = the reference policy's values; ``hv_ratio``
  to the exact front's hypervolume (for K >= 3 the front is an LP sample, its hypervolume a lower
  bound, so the ratio may exceed 1);
- ``igd_plus`` to the exact front restricted to its part that dominates the reference point;
- ``satisfaction`` (share of attainable thresholds where the true ``V_sec >= b``, tolerance
  :data:`mopo_core.experiments.suite.MET_TOL`), ``max_violation``, ``mean_regret`` (LP optimum minus the
  primary value, over the thresholds met);
- ``mean_kl`` to the reference policy, ``feasible_share`` (share of thresholds the solver
  declared feasible), ``n_points``;
- ``gap_to_oracle``: mean over thresholds of ``max_k |V_k - V_k(exact MOPO)|``, where exact MOPO
  is the dual solver on the TRUE preferences at the same tau with eps = 0 (0 when that is what
  was run); ``winrate_error``: mean ``|w_hat - w|`` of the win-rates the policies were fitted on
  (0 with exact preferences).

A threshold sweep also reports, per point, what the data said next to the truth: the ESTIMATED
values ``V{k}_est`` of each policy on the win-rates it was fitted on and their standard errors
``se{k}`` (:func:`mopo_core.tabular.uncertainty.standard_errors`; 0 on exact preferences), and
with ``margin`` z > 0 on sampled data it enforces ``b + z * SE`` (``b{j}_enforced``,
:func:`mopo_core.tabular.uncertainty.solve_with_margin`); ``met`` is always judged against the
requested ``b`` on the TRUE values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from synthetic import estimate_preferences, make_structure, sample_comparisons

from mopo_core.tabular.algorithm1 import Algorithm1Config, run_algorithm1
from mopo_core.runs import RunStore
from mopo_core.experiments.suite import MET_TOL, ExactReference, exact_answers, score_points
from mopo_core.tabular.solver import TabularProblem, kl_divergence, policy_values
from mopo_core.tabular.uncertainty import solve_with_margin, standard_errors
from mopo_core.validation import check_int, check_nonnegative, check_positive

#: Ablatable parameters: the first three use the exact dual solver, the last two Algorithm 1.
PARAMETERS = ("tau", "eps", "n", "beta", "t0")
TABULAR_PARAMETERS = ("tau", "eps", "n")
ALGORITHM1_PARAMETERS = ("beta", "t0")
#: Display symbols (the page and the run labels use them).
SYMBOLS = {"tau": "τ", "eps": "ε", "n": "n", "beta": "β", "t0": "t0"}
#: Where each parameter lives in a run's config and point params (n is ``n_comparisons``).
CONFIG_KEYS = {"tau": "tau", "eps": "eps", "n": "n_comparisons", "beta": "beta", "t0": "t0"}
#: Default values per parameter (None: off for beta/t0, exact preferences for n). The paper's
#: ablations use beta in {0.9, 0.95, 0.99, 0.999} and t0 in {1, 100, 1000, inf} over 10000 steps;
#: t0 is scaled to the default 1000 steps here.
DEFAULT_VALUES = {
    "tau": (0.001, 0.01, 0.1, 1.0),
    "eps": (0.0, 0.001, 0.01, 0.05),
    "n": (10, 100, 1000, 10000),
    "beta": (0.9, 0.95, 0.99, 0.999),
    "t0": (1, 10, 100, None),
}
#: Default number of thresholds: threshold sweep, tabular ablation, Algorithm 1 ablation.
SWEEP_THRESHOLDS = 100
ABLATION_THRESHOLDS = 21
ALGORITHM1_THRESHOLDS = 7
#: Default Algorithm 1 step budget per threshold (about 30 ms at N = 8).
ALGORITHM1_STEPS = 1000

METRIC_COLUMNS = ("hypervolume", "hv_ratio", "igd_plus", "satisfaction", "max_violation", "mean_regret",
                  "mean_kl", "gap_to_oracle", "winrate_error", "feasible_share", "n_points")


# --------------------------------------------------------------------------- exact answers


def exact_reference(structure: str, n_responses: int = 8, n_prompts: int = 1, seed: int = 0) -> ExactReference:
    """Build ``structure`` (a name from ``synthetic.STRUCTURES``) and its exact answers."""
    return exact_answers(make_structure(structure, n_responses=n_responses, n_prompts=n_prompts, seed=seed))


# --------------------------------------------------------------------------- checks


def _reference_for(exact, structure, n_responses, n_prompts, seed) -> ExactReference:
    """``exact`` if it matches the requested instance (ValueError otherwise), else a fresh one."""
    if exact is None:
        return exact_reference(structure, n_responses, n_prompts, seed)
    s = exact.structure
    asked, given = (structure, n_responses, n_prompts, seed), (s.name, s.n_responses, s.n_prompts, s.seed)
    if asked != given:
        raise ValueError(f"exact: built for (structure, N, M, seed) = {given}, but {asked} was requested")
    return exact


def _check_comparisons(value, name: str) -> int | None:
    return None if value is None else check_int(value, name, 1)


def _check_value(parameter: str, value, name: str):
    """One ablation value, checked; returns it as stored (None for off / exact)."""
    if parameter == "tau":
        return check_positive(value, name)
    if parameter == "eps":
        return check_nonnegative(value, name)
    if parameter == "n":
        return _check_comparisons(value, name)
    if parameter == "t0":
        return None if value is None else check_int(value, name, 1)
    if value is None:  # beta
        return None
    beta = check_positive(value, name)
    if beta > 1:
        raise ValueError(f"{name}: beta must lie in (0, 1], got {value}")
    return beta


def value_label(parameter: str, value) -> str:
    """A short label for one ablation value, e.g. ``τ=0.01``, ``t0=∞ (off)``, ``n=∞ (exact)``."""
    symbol = SYMBOLS.get(parameter, parameter)
    if value is None:
        return f"{symbol}=∞ (exact)" if parameter == "n" else (f"{symbol}=∞ (off)" if parameter == "t0" else f"{symbol}=off")
    return f"{symbol}={value:g}"


# --------------------------------------------------------------------------- building blocks


def _sample(exact: ExactReference, n_comparisons: int | None, seed: int):
    """(win counts or None, preferences the policies are fitted on, mean absolute error of their win-rates)."""
    s = exact.structure
    if n_comparisons is None:
        return None, s.preferences, 0.0
    counts = sample_comparisons(s, n_comparisons, seed=seed).win_counts()
    estimated = estimate_preferences(counts)
    rates = TabularProblem.build(estimated, s.reference, s.behaviour, s.prompt_weights).rates
    return counts, estimated, float(np.mean(np.abs(rates - exact.rates)))


def _data(exact: ExactReference, n_comparisons: int | None, seed: int) -> tuple[np.ndarray, float]:
    """Preferences the policies are fitted on and the mean absolute error of their win-rates."""
    return _sample(exact, n_comparisons, seed)[1:]


def _tabular_sweep(exact: ExactReference, preferences, grid, tau: float, eps: float):
    """The exact dual solver over ``grid``: (true values (T, K), multipliers, feasible, kl, policies (T, M, N))."""
    s = exact.structure
    problem = TabularProblem.build(preferences, s.reference, s.behaviour, s.prompt_weights)
    sweep = problem.sweep(grid, tau, eps)
    policies, lams, feasible, kls = sweep.policies, sweep.multipliers, sweep.feasible, sweep.kl
    policies = policies.reshape(len(grid), *s.reference.shape)
    values = np.array([policy_values(p, exact.rates, exact.prompt_weights) for p in policies])
    return values, lams.reshape(grid.shape), feasible, kls, policies


def _margin_sweep(exact: ExactReference, counts, grid, tau: float, eps: float, z: float):
    """:func:`solve_with_margin` at each row of ``grid``: like :func:`_tabular_sweep`, plus the
    enforced thresholds (T, J)."""
    s = exact.structure
    outs, lam = [], None
    for b in grid:  # each threshold warm-started from the previous one's multipliers
        outs.append(solve_with_margin(counts, b, tau, z, reference=s.reference, behaviour=s.behaviour,
                                      prompt_weights=s.prompt_weights, eps=eps, initial_multipliers=lam))
        lam = outs[-1].solution.multipliers
    policies = np.array([o.solution.policy for o in outs]).reshape(len(grid), *s.reference.shape)
    values = np.array([policy_values(p, exact.rates, exact.prompt_weights) for p in policies])
    lams = np.array([o.solution.multipliers for o in outs]).reshape(grid.shape)
    feasible = np.array([o.solution.feasible for o in outs], dtype=bool)
    kls = np.array([o.solution.kl for o in outs])
    enforced = np.array([o.enforced_thresholds for o in outs]).reshape(grid.shape)
    return values, lams, feasible, kls, policies, enforced


def _estimates(exact: ExactReference, counts, preferences, policies) -> tuple[np.ndarray, np.ndarray]:
    """Each policy's values on the preferences it was fitted on (T, K) and their standard errors
    (T, K) from ``counts`` (zeros when ``counts`` is None: exact preferences)."""
    s = exact.structure
    rates = exact.rates if counts is None else TabularProblem.build(preferences, s.reference, s.behaviour,
                                                                     s.prompt_weights).rates
    est = np.array([policy_values(p, rates, exact.prompt_weights) for p in policies]).reshape(len(policies), -1)
    if counts is None:
        return est, np.zeros_like(est)
    se = np.array([standard_errors(p, counts, s.behaviour, s.prompt_weights) for p in policies])
    return est, se.reshape(est.shape)


def _points_frame(exact: ExactReference, method: str, grid, values, lams, feasible, kls, best,
                  thresholds_end=None) -> pd.DataFrame:
    """One row per threshold: b1.., V0.., lambda1.., feasible, kl, met, lp_V0, regret, b1_end.."""
    j = grid.shape[1]
    frame = pd.DataFrame({"structure": exact.name, "method": method}, index=range(len(grid)))
    for i in range(j):
        frame[f"b{i + 1}"] = grid[:, i]
    for k in range(values.shape[1]):
        frame[f"V{k}"] = values[:, k]
    for i in range(j):
        frame[f"lambda{i + 1}"] = lams[:, i]
    frame["feasible"] = np.asarray(feasible, dtype=bool)
    frame["kl"] = np.asarray(kls, dtype=float)
    frame["met"] = np.max(grid - values[:, 1:], axis=1) <= MET_TOL
    frame["lp_V0"] = [math.nan if v is None else v for v in best]
    frame["regret"] = np.where(frame["met"], frame["lp_V0"] - frame["V0"], math.nan)
    ends = grid if thresholds_end is None else thresholds_end
    for i in range(j):
        frame[f"b{i + 1}_end"] = ends[:, i]
    return frame


def _gap(values: np.ndarray, oracle: np.ndarray) -> float:
    return float(np.mean(np.max(np.abs(values - oracle), axis=1))) if len(values) else math.nan


# --------------------------------------------------------------------------- threshold sweep


@dataclass(eq=False)
class SweepOutcome:
    """A threshold sweep: ``points`` (one row per threshold, see :func:`threshold_sweep`),
    ``metrics`` (SYNTHETIC.md metrics), ``config`` (JSON-ready), ``policies`` (T, M, N) aligned
    with the rows of ``points``, and the structure's ``exact`` answers."""

    points: pd.DataFrame
    metrics: dict[str, float]
    config: dict
    policies: np.ndarray
    exact: ExactReference = field(repr=False)

    kind = "sweep"


def threshold_sweep(structure: str, n_responses: int = 8, n_prompts: int = 1, seed: int = 0, tau: float = 0.01,
                    eps: float = 0.0, n_thresholds: int = SWEEP_THRESHOLDS, n_comparisons: int | None = None,
                    exact: ExactReference | None = None, margin: float = 0.0) -> SweepOutcome:
    """MOPO's threshold sweep on one structure, scored on the true preferences.

    ``n_comparisons``: None fits on the exact preferences; an integer samples that many
    comparisons per prompt (``synthetic.sample_comparisons`` with ``seed``) and fits on the
    estimate. ``exact``: a prebuilt :func:`exact_reference` of the same structure (saves the
    front's LPs for K >= 3). ``margin`` z >= 0: with sampled data, each threshold is enforced as
    ``b + z * SE`` (:func:`mopo_core.tabular.uncertainty.solve_with_margin`); ignored (no
    uncertainty) on exact preferences.

    ``points`` columns: structure, method ("mopo"), b1..b{K-1} (thresholds), V0..V{K-1} (TRUE
    values), lambda1.. (multipliers), feasible (solver's verdict), kl (to the reference), met
    (true V_sec >= b), lp_V0 (LP optimum at b), regret (lp_V0 - V0 where met), b1_end.. (= b),
    V0_est..V{K-1}_est (values on the data the policy was fitted on; = V on exact preferences),
    se0..se{K-1} (their standard errors; 0 on exact preferences), b1_enforced.. (b + z * SE with
    a margin, else b).
    """
    tau = check_positive(tau, "tau")
    eps = check_nonnegative(eps, "eps")
    margin = check_nonnegative(margin, "margin")
    n_comparisons = _check_comparisons(n_comparisons, "n_comparisons")
    exact = _reference_for(exact, structure, n_responses, n_prompts, seed)
    grid = exact.thresholds(n_thresholds)
    best = exact.best_primary(grid)
    counts, preferences, error = _sample(exact, n_comparisons, seed)
    if counts is not None and margin > 0:
        values, lams, feasible, kls, policies, enforced = _margin_sweep(exact, counts, grid, tau, eps, margin)
    else:
        values, lams, feasible, kls, policies = _tabular_sweep(exact, preferences, grid, tau, eps)
        enforced = grid
    estimates, ses = _estimates(exact, counts, preferences, policies)
    metrics = score_points(values, grid, exact, best, kls)
    oracle = values if (n_comparisons is None and eps == 0) else _tabular_sweep(exact, exact.structure.preferences,
                                                                                 grid, tau, 0.0)[0]
    metrics.update(gap_to_oracle=_gap(values, oracle), winrate_error=error, feasible_share=float(np.mean(feasible)),
                   front_hypervolume=exact.front_hypervolume)
    config = {"structure": exact.name, "n_responses": exact.structure.n_responses,
              "n_prompts": exact.structure.n_prompts, "seed": exact.structure.seed, "tau": tau, "eps": eps,
              "n_thresholds": int(n_thresholds), "n_comparisons": n_comparisons,
              "margin": margin if counts is not None else 0.0,
              "reference_point": exact.reference_point.tolist()}
    points = _points_frame(exact, "mopo", grid, values, lams, feasible, kls, best)
    for k in range(exact.n_objectives):
        points[f"V{k}_est"] = estimates[:, k]
    for k in range(exact.n_objectives):
        points[f"se{k}"] = ses[:, k]
    for j in range(grid.shape[1]):
        points[f"b{j + 1}_enforced"] = enforced[:, j]
    return SweepOutcome(points, metrics, config, policies, exact)


# --------------------------------------------------------------------------- ablation


@dataclass(eq=False)
class AblationOutcome:
    """An ablation: ``table`` (one row per value: structure, parameter, value, label and the
    metrics of :data:`METRIC_COLUMNS`), ``points`` (one row per value x threshold: the sweep
    columns plus parameter, value, label), ``config`` (JSON-ready), ``policies`` aligned with
    ``points``, and the structure's ``exact`` answers."""

    table: pd.DataFrame
    points: pd.DataFrame
    config: dict
    policies: np.ndarray
    exact: ExactReference = field(repr=False)

    kind = "ablation"


def _algorithm1_points(exact, preferences, grid, tau, eps, t0, beta, steps):
    """Algorithm 1 at each threshold row: (true values, multipliers, kl, policies, thresholds in force at the end)."""
    s = exact.structure
    config = Algorithm1Config(steps=steps, t0=t0, beta=beta, log_every=steps)
    runs = [run_algorithm1(preferences, b, tau, s.reference, s.behaviour, eps, s.prompt_weights, config=config)
            for b in grid]
    policies = np.array([r.policy for r in runs]).reshape(len(grid), *s.reference.shape)
    values = np.array([policy_values(p, exact.rates, exact.prompt_weights) for p in policies])
    kls = np.array([kl_divergence(p, s.reference, s.prompt_weights) for p in policies])
    lams = np.array([r.multipliers for r in runs]).reshape(grid.shape)
    ends = np.array([r.thresholds for r in runs]).reshape(grid.shape)
    return values, lams, kls, policies, ends


def ablation(structure: str, parameter: str, values=None, *, n_responses: int = 8, n_prompts: int = 1, seed: int = 0,
             tau: float = 0.01, eps: float = 0.0, n_thresholds: int | None = None, n_comparisons: int | None = None,
             t0: int | None = None, beta: float | None = None, steps: int = ALGORITHM1_STEPS,
             exact: ExactReference | None = None) -> AblationOutcome:
    """One row of SYNTHETIC.md metrics per value of ``parameter`` on one structure.

    parameter: "tau" | "eps" | "n" (the exact dual solver's threshold sweep at each value; ``n``
    is comparisons per prompt, None meaning exact preferences) or "beta" | "t0" (Algorithm 1 run
    for ``steps`` steps from the reference at each attainable threshold; ``t0`` None means no
    lagged reference, ``beta`` None no ratchet). The other settings stay fixed at the keyword
    values (``beta`` needs a ``t0``: the beta ablation raises ValueError without one).
    values: None uses :data:`DEFAULT_VALUES`. n_thresholds: None uses :data:`ABLATION_THRESHOLDS`
    (tabular) or :data:`ALGORITHM1_THRESHOLDS` (Algorithm 1). Every value is scored on the true
    preferences at the same thresholds; ``gap_to_oracle`` compares with exact MOPO on the true
    preferences at the row's tau and eps = 0.
    """
    if parameter not in PARAMETERS:
        raise ValueError(f"parameter: unknown {parameter!r}; valid: {list(PARAMETERS)}")
    values = DEFAULT_VALUES[parameter] if values is None else values
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"values: expected a list of {parameter} values, got {values!r}")
    values = [_check_value(parameter, v, f"values[{i}]") for i, v in enumerate(values)]
    if not values:
        raise ValueError(f"values: need at least one {parameter} value")
    tau = check_positive(tau, "tau")
    eps = check_nonnegative(eps, "eps")
    n_comparisons = _check_comparisons(n_comparisons, "n_comparisons")
    steps = check_int(steps, "steps", 1)
    t0 = _check_value("t0", t0, "t0")
    beta = _check_value("beta", beta, "beta")
    if parameter == "beta" and t0 is None:
        raise ValueError("t0: the beta ablation needs a lagged-reference period t0 (beta ratchets thresholds every t0 steps)")
    if parameter == "t0" and beta is not None and None in values:
        raise ValueError("values: t0 = None (off) cannot be combined with beta (the ratchet needs t0)")
    algorithm1 = parameter in ALGORITHM1_PARAMETERS
    if n_thresholds is None:
        n_thresholds = ALGORITHM1_THRESHOLDS if algorithm1 else ABLATION_THRESHOLDS
    exact = _reference_for(exact, structure, n_responses, n_prompts, seed)
    grid = exact.thresholds(n_thresholds)
    best = exact.best_primary(grid)
    if algorithm1:  # Algorithm 1 has no infeasibility handling: run it at attainable thresholds only
        keep = [i for i, v in enumerate(best) if v is not None]
        grid, best = grid[keep], [best[i] for i in keep]
    oracles: dict[float, np.ndarray] = {}

    def oracle(t):
        if t not in oracles:
            oracles[t] = _tabular_sweep(exact, exact.structure.preferences, grid, t, 0.0)[0]
        return oracles[t]

    rows, frames, policies = [], [], []
    data_cache: dict = {}
    for value in values:
        setting = {"tau": tau, "eps": eps, "n": n_comparisons, "t0": t0, "beta": beta, parameter: value}
        if setting["n"] not in data_cache:
            data_cache[setting["n"]] = _data(exact, setting["n"], seed)
        preferences, error = data_cache[setting["n"]]
        if algorithm1:
            vals, lams, kls, pols, ends = _algorithm1_points(exact, preferences, grid, setting["tau"], setting["eps"],
                                                            setting["t0"], setting["beta"], steps)
            feasible = np.ones(len(grid), dtype=bool)
            method = "mopo_alg1"
        else:
            vals, lams, feasible, kls, pols = _tabular_sweep(exact, preferences, grid, setting["tau"], setting["eps"])
            ends, method = None, "mopo"
        exact_run = not algorithm1 and setting["n"] is None and setting["eps"] == 0
        metrics = score_points(vals, grid, exact, best, kls)
        metrics.update(gap_to_oracle=0.0 if exact_run else _gap(vals, oracle(setting["tau"])), winrate_error=error,
                       feasible_share=float(np.mean(feasible)))
        label = value_label(parameter, value)
        rows.append({"structure": exact.name, "parameter": parameter,
                     "value": math.nan if value is None else float(value), "label": label,
                     **{c: metrics[c] for c in METRIC_COLUMNS}})
        frame = _points_frame(exact, method, grid, vals, lams, feasible, kls, best, ends)
        frame.insert(2, "parameter", parameter)
        frame.insert(3, "value", math.nan if value is None else float(value))
        frame.insert(4, "label", label)
        frames.append(frame)
        policies.append(pols)
    config = {"structure": exact.name, "n_responses": exact.structure.n_responses,
              "n_prompts": exact.structure.n_prompts, "seed": exact.structure.seed, "parameter": parameter,
              "values": values, "tau": tau, "eps": eps, "n_comparisons": n_comparisons, "t0": t0, "beta": beta,
              CONFIG_KEYS[parameter]: "ablated",
              "steps": steps if algorithm1 else None, "n_thresholds": int(n_thresholds),
              "method": "algorithm1" if algorithm1 else "exact_dual",
              "reference_point": exact.reference_point.tolist()}
    return AblationOutcome(pd.DataFrame(rows), pd.concat(frames, ignore_index=True), config,
                           np.concatenate(policies), exact)


# --------------------------------------------------------------------------- run store


def save_run(store: RunStore, outcome: SweepOutcome | AblationOutcome, name: str | None = None) -> int:
    """Record a sweep (kind "sweep") or an ablation (kind "ablation") as one finished run; returns its id.

    Points: one per row of ``outcome.points`` with label ``mopo`` (sweep) or ``mopo <value label>``
    (ablation), params (threshold, tau, eps, the ablated value), values (the TRUE V0..V{K-1}),
    extra (feasible, met, multipliers, kl, regret, the policy; a sweep's also estimated_values,
    standard_errors and thresholds_enforced). An ablation's config records the ablated
    setting as "ablated" (its values are in ``config["values"]``). Metrics: a sweep logs its metrics
    at step 0; an ablation logs each value's metrics at step = the value's index in ``config["values"]``.
    """
    if not isinstance(outcome, (SweepOutcome, AblationOutcome)):
        raise ValueError(f"outcome: expected a SweepOutcome or AblationOutcome, got {type(outcome).__name__}")
    cfg = outcome.config
    if name is None:
        fixed = ", ".join(f"{SYMBOLS[p]}={cfg[CONFIG_KEYS[p]]:g}" for p in ("tau", "eps")
                          if outcome.kind == "sweep" or p != cfg["parameter"])
        what = "sweep" if outcome.kind == "sweep" else f"ablation over {SYMBOLS[cfg['parameter']]}"
        name = f"{what} on {cfg['structure']}" + (f" ({fixed})" if fixed else "")
    pts = outcome.points
    k = outcome.exact.n_objectives
    bcols = [f"b{j}" for j in range(1, k)]
    points = []
    for i, row in enumerate(pts.itertuples(index=False)):
        r = row._asdict()
        params = {"threshold": [r[c] for c in bcols], "tau": cfg["tau"], "eps": cfg["eps"],
                  "n_comparisons": cfg["n_comparisons"]}
        label = "mopo"
        if outcome.kind == "ablation":
            value = None if math.isnan(r["value"]) else r["value"]
            params.update({"t0": cfg["t0"], "beta": cfg["beta"], CONFIG_KEYS[cfg["parameter"]]: value})
            label = f"{r['method']} {r['label']}"
        extra = {"feasible": bool(r["feasible"]), "met": bool(r["met"]), "kl": r["kl"], "regret": r["regret"],
                 "multipliers": [r[f"lambda{j}"] for j in range(1, k)],
                 "thresholds_end": [r[f"b{j}_end"] for j in range(1, k)], "policy": outcome.policies[i]}
        if "V0_est" in r:  # a threshold sweep: what the data said, next to the true values
            extra.update(estimated_values=[r[f"V{j}_est"] for j in range(k)],
                         standard_errors=[r[f"se{j}"] for j in range(k)],
                         thresholds_enforced=[r[f"b{j}_enforced"] for j in range(1, k)])
        points.append({"label": label, "params": params, "values": [r[f"V{j}"] for j in range(k)], "extra": extra})
    with store.record(outcome.kind, cfg, name=name) as run_id:
        store.add_points(run_id, points)
        if outcome.kind == "sweep":
            store.log_metrics(run_id, 0, outcome.metrics)
        else:
            for step, row in enumerate(outcome.table.itertuples(index=False)):
                store.log_metrics(run_id, step, {c: getattr(row, c) for c in METRIC_COLUMNS})
    return run_id
