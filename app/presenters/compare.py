"""The Compare page's logic (no Streamlit): what the page needs beyond the engine's comparison
of stored runs (:mod:`mopo_core.experiments.compare_runs`: points, non-dominance, dominance,
hypervolume, attainment, point details).

- Names: :data:`SCALES` (how the page names the two value scales), :func:`run_label` (the run
  picker's label), :func:`settings_table` (a config as a two-column table).
- Diverged runs: :func:`diverged_toggle_label` and :func:`diverged_note` (how the page says
  that diverged runs are left off the fronts, dominance counts and hypervolumes, and why).
- Selection: :func:`selection_keys` reads the ``(run_id, idx)`` of the points picked in a Plotly
  selection event.
- Drawing: :func:`staircase`, the boundary polyline of the region a set of points dominates.
- A language-model point's details: :func:`sample_scorer` and :func:`generations_frame` (its stored
  generations beside the reference model's, scored), :func:`metric_table` and
  :func:`training_curves` (the run's metric series and which panels draw them).
- Example runs: :func:`create_example_runs` records a few runs so that a fresh store has
  something to compare (the page's "Create example runs" button).

Conventions as in the engine: every objective is maximised; a point set is an array ``(P, K)``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from synthetic import estimate_preferences, make_structure, sample_comparisons

from mopo_core.experiments.compare_runs import (
    HIDDEN_STATUSES,
    LM,
    LM_KINDS,
    TABULAR,
    format_params,
    format_value,
    objective_names_for,
    run_title,
)
from mopo_core.experiments.suite import SuiteConfig, config_dict, threshold_grid
from mopo_core.pareto import attainable_max
from mopo_core.runs import Run, RunStore
from mopo_core.tabular.baselines import BASELINES, weight_grid
from mopo_core.tabular.solver import TabularProblem, kl_divergence, policy_values

#: Value scales (:func:`mopo_core.experiments.compare_runs.value_scale`) and how the page names them.
SCALES = {TABULAR: "win-rates against the behaviour policy (tabular runs)",
          LM: "win-rates against the reference model's samples (language-model runs; 0.5 = a tie)"}


# --------------------------------------------------------------------------- labels


def settings_table(settings: dict) -> pd.DataFrame:
    """A config or parameter dict as a two-column table (``setting``, ``value``), each value on
    one line as :func:`format_params` writes it (floats to 4 significant digits)."""
    settings = settings if isinstance(settings, dict) else {}
    return pd.DataFrame({"setting": [str(k) for k in settings],
                         "value": [format_params(v) if isinstance(v, dict) and v else format_value(v)
                                   for v in settings.values()]})


def run_label(row) -> str:
    """``"id · kind · name · n_points"`` for a row of :meth:`RunStore.list_runs`; the kind of a
    language-model run (:data:`LM_KINDS`) is followed by ``(LM)``, and a diverged run's label
    ends with ``· DIVERGED``."""
    name = row["name"] if isinstance(row["name"], str) and row["name"] else "(unnamed)"  # None reads back as NaN
    n = int(row["n_points"])
    kind = f"{row['kind']} (LM)" if row["kind"] in LM_KINDS else row["kind"]
    flag = " · DIVERGED" if row.get("status") in HIDDEN_STATUSES else ""
    return f"{int(row['id'])} · {kind} · {name} · {n} point{'' if n == 1 else 's'}{flag}"


def diverged_toggle_label(n_diverged: int) -> str:
    """The page's checkbox for the ``n_diverged`` diverged runs among the selected ones, saying
    how many it hides while unticked (the label does not change with the tick, so the box keeps
    its state)."""
    return (f"Show diverged runs ({n_diverged} diverged run{'' if n_diverged == 1 else 's'} hidden unless ticked)")


def diverged_note(runs: list[Run], shown: bool) -> str:
    """One sentence per diverged run (its id, title and stored reason: the step and the rule it
    broke), and whether they are drawn and counted."""
    if not runs:
        return ""
    what = "; ".join(f"run {r.id} ({run_title(r)}): {r.error or r.status}" for r in runs)
    if shown:
        return (f"Diverged runs are shown, marked (diverged), and counted in the fronts, dominance and hypervolume: "
                f"{what}.")
    return (f"{len(runs)} selected run{' is' if len(runs) == 1 else 's are'} diverged and left off the fronts, the "
            f"dominance counts, the hypervolumes and the attainment: {what}. Tick \"Show diverged runs\" in the "
            "sidebar to see them.")


# --------------------------------------------------------------------------- selection, drawing


def selection_keys(points) -> list[tuple[int, int]]:
    """``(run_id, idx)`` of the selected points of a Plotly selection event (its ``points``
    list), read from each point's ``customdata`` (first two entries); points without
    customdata (lines, markers of the reference point) are skipped; order kept, no duplicates."""
    out = []
    for p in points or []:
        cd = p.get("customdata") if isinstance(p, dict) else None
        if not isinstance(cd, list | tuple) or len(cd) < 2:
            continue
        try:
            key = (int(cd[0]), int(cd[1]))
        except (TypeError, ValueError):
            continue
        if key not in out:
            out.append(key)
    return out


def staircase(corners, floor) -> np.ndarray:
    """The boundary polyline ``(2S + 1, 2)`` of the region weakly dominated by ``corners``
    ``(S, 2)`` (maximised) above ``floor`` ``(2,)``, for drawing: from ``(floor_x, y_max)``
    along the steps to ``(x_max, floor_y)``. Empty corners give an empty ``(0, 2)`` array."""
    c = np.asarray(corners, dtype=float).reshape(-1, 2)
    if len(c) == 0:
        return np.zeros((0, 2))
    c = c[np.lexsort((-c[:, 1], c[:, 0]))]
    fx, fy = float(floor[0]), float(floor[1])
    path = [(min(fx, c[0, 0]), c[0, 1])]
    for i, (x, y) in enumerate(c):
        path.append((x, y))
        nxt = c[i + 1, 1] if i + 1 < len(c) else min(fy, y)
        path.append((x, nxt))
    return np.array(path)


# --------------------------------------------------------------------------- LM runs: generations, curves


def sample_scorer(run: Run):
    """``scorer(prompt, response) -> (K,)`` for the objectives of a text-task run (the task's
    programmatic scorers, :func:`synthetic.text_task.score`), or None when the run's task has
    none (a dataset run's judge is a preference model: its scores are not rebuilt here)."""
    from synthetic.text_task import OBJECTIVES, score

    names = objective_names_for(run)
    task = (run.config or {}).get("task", "text" if run.kind == "evaluate" else None)  # older evaluate runs: text
    text_task = task == "text"
    if not text_task or not names or not set(names) <= set(OBJECTIVES):
        return None

    def scorer(prompt: str, response: str) -> np.ndarray:
        try:
            return score(prompt, response, names)
        except ValueError:  # a prompt that names no topic word has no helpfulness
            return np.full(len(names), np.nan)

    return scorer


def generations_frame(details: dict, scorer=None) -> pd.DataFrame:
    """An LM point's stored generations (``details`` from
    :func:`mopo_core.experiments.compare_runs.point_details`), one row per prompt and sample
    number: ``prompt``, ``sample``, ``policy`` (this run's generation) and ``reference`` (the
    reference model's for the same prompt), then, when ``scorer`` is given, ``policy
    <objective>`` and ``reference <objective>`` scores. Empty (with those columns) when the
    point stores no generations."""
    names = list(details.get("objectives") or [])
    columns = ["prompt", "sample", "policy", "reference"]
    if scorer is not None:
        columns += [f"{who} {n}" for who in ("policy", "reference") for n in names]
    rows = []
    for record in details.get("samples") or []:
        mine, theirs = list(record.get("policy") or []), list(record.get("reference") or [])
        for i in range(max(len(mine), len(theirs))):
            row = {"prompt": record.get("prompt", ""), "sample": i + 1,
                   "policy": mine[i] if i < len(mine) else None,
                   "reference": theirs[i] if i < len(theirs) else None}
            if scorer is not None:
                for who in ("policy", "reference"):
                    got = scorer(row["prompt"], row[who]) if row[who] is not None else np.full(len(names), np.nan)
                    row |= {f"{who} {n}": float(v) for n, v in zip(names, got)}
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def metric_table(run: Run) -> pd.DataFrame:
    """The run's metric series as one wide table: a ``step`` column, then one column per metric
    (NaN where a metric was not logged at that step)."""
    m = run.metrics
    if m.empty:
        return pd.DataFrame(columns=["step"])
    wide = m.pivot_table(index="step", columns="name", values="value", aggfunc="last")
    wide.columns.name = None
    return wide.reset_index()


def training_curves(run: Run) -> dict[str, list[str]]:
    """Which logged metrics the training-curve panels draw: ``loss``, ``lambda`` (the
    multipliers ``lambda_j``), ``constraint`` (``constraint_j``, the batch estimate of
    secondary j's value, each with its ``threshold_j`` when logged) and ``other`` (the rest
    but the throughput); panels without a metric are left out."""
    names = sorted(set(run.metrics["name"]))
    numbered = lambda prefix: sorted((n for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()),  # noqa: E731
                                     key=lambda n: int(n[len(prefix):]))
    panels = {"loss": [n for n in names if n == "loss"], "lambda": numbered("lambda_"),
              "constraint": numbered("constraint_") + numbered("threshold_")}
    used = {n for v in panels.values() for n in v} | {"tokens_per_s"}
    panels["other"] = [n for n in names if n not in used]
    return {k: v for k, v in panels.items() if v}


# --------------------------------------------------------------------------- example runs


def create_example_runs(store: RunStore, seeds=(0, 1, 2), structure: str = "bt_conflict", tau: float = 0.01,
                        n_comparisons: int = 200, n_thresholds: int = 11, steps: int = 2000) -> dict[str, list[int]]:
    """Record a few runs so that a fresh store has something to compare; returns their ids
    ``{"sweeps": [...], "baselines": [...], "three_objectives": [...]}``.

    All on one instance, ``structure`` with seed ``seeds[0]`` (N = 8, one prompt), whose
    true preferences score every policy:

    - MOPO threshold sweeps (kind "sweep"), one run per data seed: ``n_comparisons``
      comparisons sampled with that seed, preferences estimated from them, the same
      threshold grid (from the reference policy's value to 95% of the attainable maximum).
      The configs differ only by ``seed`` (the instance's is ``structure_seed``), so the page
      draws the median front and its spread over seeds.
    - The baselines (every method of :data:`mopo_core.tabular.baselines.BASELINES`) on the first
      seed's comparisons, with the same KL strength (beta = tau) and the suite's grids (kind
      "suite", config as the suite records it).
    - One exact MOPO sweep on ``three_objectives`` (K = 3, a 4 x 4 threshold grid) for the
      parallel-coordinates view.

    Every point stores its policy in ``extra`` (threshold methods also their multipliers).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds: need at least one seed")
    s = make_structure(structure, seed=seeds[0])
    if s.n_objectives != 2:
        raise ValueError(f"structure: example sweeps need a two-objective structure, got {structure!r}")
    truth = TabularProblem.build(s.preferences, s.reference, s.behaviour, s.prompt_weights)
    start = policy_values(s.reference, truth.rates, s.prompt_weights)[1]
    top = attainable_max(truth.rates, s.prompt_weights)[1]
    grid = np.round(np.linspace(start, start + 0.95 * (top - start), n_thresholds), 4)
    ids: dict[str, list[int]] = {"sweeps": [], "baselines": [], "three_objectives": []}
    counts = {}
    for seed in seeds:
        counts[seed] = sample_comparisons(s, n_comparisons, seed=seed).win_counts()
        estimated = TabularProblem.build(estimate_preferences(counts[seed]), s.reference, s.behaviour,
                                         s.prompt_weights)
        config = {"structure": structure, "n_responses": s.n_responses, "n_prompts": s.n_prompts,
                  "structure_seed": seeds[0], "n_comparisons": n_comparisons, "seed": seed,
                  "thresholds": grid, "tau": tau, "eps": 0.0}
        name = f"example: mopo, {structure}, seed {seed}"
        with store.record("sweep", config, name=name) as run_id:
            _record_sweep(store, run_id, estimated, grid, tau, truth)
        ids["sweeps"].append(run_id)

    suite_config = SuiteConfig(structures=(structure,), methods=tuple(BASELINES), n_comparisons=n_comparisons,
                               tau=tau, steps=steps, seed=seeds[0], n_thresholds=n_thresholds,
                               n_weights=n_thresholds)
    config = {**config_dict(suite_config), "structure": structure}
    lagrangian_grid = threshold_grid(truth.rates, s.reference, s.prompt_weights, n_thresholds)
    data = counts[seeds[0]]
    with store.record("suite", config, name=f"example: baselines, {structure}, seed {seeds[0]}") as run_id:
        points = []
        for method, fn in BASELINES.items():
            if method == "reward_lagrangian":
                out = fn(data, s.reference, s.behaviour, tau, lagrangian_grid, s.prompt_weights)
            elif method in ("dpo_primary", "ipo_primary"):
                out = fn(data, s.reference, tau, steps=steps)
            else:
                out = fn(data, s.reference, tau, weights=weight_grid(2, n_thresholds), steps=steps)
            for params, policy in zip(out.parameters, out.policies):
                points.append({"label": method, "params": params,
                               "values": policy_values(policy, truth.rates, s.prompt_weights),
                               "extra": {"policy": policy,
                                         "kl": kl_divergence(policy, s.reference, s.prompt_weights)}})
        store.add_points(run_id, points)
    ids["baselines"].append(run_id)

    s3 = make_structure("three_objectives", seed=seeds[0])
    p3 = TabularProblem.build(s3.preferences, s3.reference, s3.behaviour, s3.prompt_weights)
    grid3 = np.round(threshold_grid(p3.rates, s3.reference, s3.prompt_weights, 16), 4)
    config = {"structure": "three_objectives", "n_responses": s3.n_responses, "n_prompts": s3.n_prompts,
              "seed": seeds[0], "thresholds": grid3, "tau": tau, "eps": 0.0}
    with store.record("sweep", config, name=f"example: mopo, three_objectives, seed {seeds[0]}") as run_id:
        _record_sweep(store, run_id, p3, grid3, tau, p3)
    ids["three_objectives"].append(run_id)
    return ids


def _record_sweep(store: RunStore, run_id: int, problem: TabularProblem, grid: np.ndarray, tau: float,
                  truth: TabularProblem) -> None:
    """A MOPO sweep's points, as ``python -m mopo_core sweep`` records them, valued on ``truth``'s
    win-rates (``problem`` may hold estimated preferences; ``feasible`` is on those)."""
    sweep = problem.sweep(grid, tau)
    store.add_points(run_id, [
        {"label": "mopo", "params": {"threshold": b, "tau": tau, "eps": 0.0},
         "values": policy_values(np.atleast_2d(policy), truth.rates, truth.prompt_weights),
         "extra": {"feasible": bool(f), "multipliers": lam, "kl": kl, "policy": policy}}
        for b, f, lam, kl, policy in zip(sweep.thresholds, sweep.feasible, sweep.multipliers, sweep.kl,
                                         sweep.policies)
    ])
