"""Comparing stored runs: their points, non-dominance in the union, dominance counts,
hypervolume, attainment over seeds, and the details of one point (the Compare page's engine).

Pure functions on :class:`mopo_core.runs.Run` objects and point arrays; no Streamlit here.

Conventions (as everywhere in the engine): every objective is MAXIMISED; a point set is an
array ``(P, K)``; ``V0`` is the primary objective. A *series* is what the page draws in one
colour: a whole run, or (``by_label=True``) the points of one run with one label (one method
of a suite run).

Value scales (:func:`value_scale`): a tabular run's values are win-rates against the behaviour
policy of its instance; a language-model run's (``train``/``evaluate`` runs, or a config with
``task`` "text" or "dataset") are win-rates of the policy's samples against the reference
model's samples (0.5: a tie with the reference). The two are different scales and are never
overlaid (:func:`group_by_scale`); the reference point of an LM run is 0.5 per objective.

Attainment (the empirical attainment function, EAF, of Fonseca et al.): a point ``z`` is
attained by a set ``A`` when some ``a`` in ``A`` weakly dominates it (``a >= z``). The
``t``-level attainment surface of ``n`` sets bounds the points attained by at least
``ceil(t * n)`` of them; with three seeds the 0.5 level (the median front) is the region
reached by two of the three, the 0.25 level the union's front and the 0.75 level the
intersection's. Computed by :func:`moocore.eaf` (a minimiser, so on negated values).
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import moocore
import numpy as np
import pandas as pd

from synthetic import STRUCTURES, estimate_preferences, make_structure, sample_comparisons

from mopo_core.tabular.baselines import BASELINES, weight_grid
from mopo_core.pareto import attainable_max, dominance_matrix, hypervolume
from mopo_core.runs import Run, RunStore, to_jsonable
from mopo_core.experiments.suite import SuiteConfig, config_dict, threshold_grid
from mopo_core.tabular.solver import TabularProblem, kl_divergence, policy_values, win_rates
from mopo_core.validation import read_preference_array

#: Config keys that make runs "seeds of one experiment" when they are the only difference.
SEED_KEYS = ("seed",)
#: Attainment levels drawn by default: the median front and the 25-75% band.
LEVELS = (0.25, 0.5, 0.75)
#: Largest instance (K * M * N * N entries) rebuilt from a config to find its reference policy.
MAX_REBUILD_ENTRIES = 4_000_000
#: Margin (share of the points' range per objective) below the points' minimum for a
#: fallback hypervolume reference point.
REFERENCE_MARGIN = 0.05
#: Value scales (:func:`value_scale`) and how the page names them.
TABULAR, LM = "tabular", "lm"
SCALES = {TABULAR: "win-rates against the behaviour policy (tabular runs)",
          LM: "win-rates against the reference model's samples (language-model runs; 0.5 = a tie)"}
#: Config ``task`` values and run kinds of language-model runs.
LM_TASKS = ("text", "dataset")
LM_KINDS = ("train", "evaluate")


# --------------------------------------------------------------------------- labels


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    if isinstance(value, list | tuple | np.ndarray):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def format_params(params) -> str:
    """A short one-line text of a point's parameters, e.g. ``threshold=[0.6], tau=0.05``."""
    if not isinstance(params, dict) or not params:
        return "(no parameters)" if not params else _fmt(params)
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def settings_table(settings: dict) -> pd.DataFrame:
    """A config or parameter dict as a two-column table (``setting``, ``value``), each value on
    one line as :func:`format_params` writes it (floats to 4 significant digits)."""
    settings = settings if isinstance(settings, dict) else {}
    return pd.DataFrame({"setting": [str(k) for k in settings],
                         "value": [format_params(v) if isinstance(v, dict) and v else _fmt(v)
                                   for v in settings.values()]})


def run_label(row) -> str:
    """``"id · kind · name · n_points"`` for a row of :meth:`RunStore.list_runs`; the kind of a
    language-model run (:data:`LM_KINDS`) is followed by ``(LM)``."""
    name = row["name"] if isinstance(row["name"], str) and row["name"] else "(unnamed)"  # None reads back as NaN
    n = int(row["n_points"])
    kind = f"{row['kind']} (LM)" if row["kind"] in LM_KINDS else row["kind"]
    return f"{int(row['id'])} · {kind} · {name} · {n} point{'' if n == 1 else 's'}"


def run_title(run: Run) -> str:
    """A short human name: the run's name, else its kind with structure and seed from the config."""
    if run.name:
        return run.name
    cfg = run.config or {}
    parts = [run.kind]
    if value_scale(run) == LM:
        if cfg.get("method"):
            parts.append(str(cfg["method"]))
            if cfg["method"] == "mopo" and cfg.get("thresholds"):
                parts.append("b=" + _fmt(list(cfg["thresholds"])))
        if cfg.get("task"):
            parts.append(f"on the {cfg['task']} task")
        if "source_run" in cfg:
            parts.append(f"of run {cfg['source_run']}")
    if "structure" in cfg:
        parts.append(str(cfg["structure"]))
    if "preferences_file" in cfg:
        parts.append(Path(str(cfg["preferences_file"])).name)
    if "seed" in cfg:
        parts.append(f"seed {cfg['seed']}")
    return " ".join(parts)


def n_objectives(run: Run) -> int:
    """K, the number of objective values of the run's points (0 for a run without points)."""
    return sum(1 for c in run.points.columns if c.startswith("v") and c[1:].isdigit())


# --------------------------------------------------------------------------- points


def run_points(run: Run, by_label: bool = True) -> pd.DataFrame:
    """One row per point of ``run``: ``run_id``, ``series``, ``short``, ``label``, ``idx``,
    ``params``, ``params_text``, ``values``, ``v0..v{K-1}``, ``finite`` (all values are
    numbers), ``has_policy`` and ``feasible`` (the point's recorded flag: False when its
    threshold could not be met; None when the run records none).

    ``series`` is ``"#id title"``, followed by ``" · label"`` when ``by_label`` and the run
    has points with several labels; ``short`` is ``"#id · label"`` (``"#id · kind"`` for a
    run of several labels drawn as one series), for crowded axes.
    """
    pts = run.points
    k = n_objectives(run)
    split = by_label and pts["label"].nunique() > 1
    base = f"#{run.id} {run_title(run)}"
    vcols = [f"v{j}" for j in range(k)]
    single = pts["label"].nunique() <= 1
    out = pd.DataFrame({
        "run_id": np.full(len(pts), run.id, dtype=np.int64),
        "series": [f"{base} · {label}" if split else base for label in pts["label"]],
        "short": [f"#{run.id} · {label}" if split or single else f"#{run.id} · {run.kind}" for label in pts["label"]],
        "label": pts["label"].astype(str).to_numpy(),
        "idx": pts["idx"].to_numpy(dtype=np.int64),
        "params": list(pts["params"]),
        "params_text": [format_params(p) for p in pts["params"]],
        "values": list(pts["values"]),
    })
    for c in vcols:
        out[c] = pts[c].to_numpy(dtype=float)
    out["finite"] = np.isfinite(out[vcols].to_numpy()).all(axis=1) if k else False
    out["has_policy"] = [isinstance(e, dict) and e.get("policy") is not None for e in pts["extra"]]
    out["feasible"] = [_feasible(e, p) for e, p in zip(pts["extra"], pts["params"])]
    return out


def _feasible(extra, params) -> bool | None:
    """The point's recorded ``feasible`` flag (in ``extra``, else ``params``), or None."""
    for source in (extra, params):
        if isinstance(source, dict) and isinstance(source.get("feasible"), bool):
            return source["feasible"]
    return None


def group_by_k(runs: list[Run]) -> dict[int, list[Run]]:
    """Runs grouped by their number of objectives K (points of different K cannot be overlaid)."""
    groups: dict[int, list[Run]] = {}
    for run in runs:
        groups.setdefault(n_objectives(run), []).append(run)
    return dict(sorted(groups.items()))


def value_scale(run: Run) -> str:
    """:data:`LM` for a language-model run (kind ``train`` or ``evaluate``, a config ``task`` of
    :data:`LM_TASKS`, or points that record an LM evaluation's ``win_rate_stderr``), else
    :data:`TABULAR`. The values of the two are win-rates against different baselines."""
    cfg = run.config or {}
    if run.kind in LM_KINDS or cfg.get("task") in LM_TASKS:
        return LM
    if any(isinstance(e, dict) and "win_rate_stderr" in e for e in run.points["extra"]):
        return LM
    return TABULAR


def group_by_scale(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by :func:`value_scale` (tabular first); points of different scales are
    never overlaid: the same number means something else."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(value_scale(run), []).append(run)
    return {scale: groups[scale] for scale in (TABULAR, LM) if scale in groups}


def points_frame(runs: list[Run], by_label: bool = True) -> pd.DataFrame:
    """:func:`run_points` of every run, concatenated. All runs must have the same K."""
    ks = {n_objectives(r) for r in runs}
    if len(ks) > 1:
        detail = "; ".join(f"K = {k}: runs {[r.id for r in g]}" for k, g in group_by_k(runs).items())
        raise ValueError(f"runs: points with different numbers of objectives cannot be compared ({detail})")
    frames = [run_points(r, by_label) for r in runs]
    if not frames:
        return pd.DataFrame(columns=["run_id", "series", "short", "label", "idx", "params", "params_text", "values",
                                     "finite", "has_policy", "feasible"])
    return pd.concat(frames, ignore_index=True)


def value_matrix(points: pd.DataFrame) -> np.ndarray:
    """``(P, K)`` values of a :func:`points_frame` (columns v0..v{K-1})."""
    cols = sorted((c for c in points.columns if c.startswith("v") and c[1:].isdigit()), key=lambda c: int(c[1:]))
    return points[cols].to_numpy(dtype=float)


def point_sets(points: pd.DataFrame) -> dict[str, np.ndarray]:
    """``{series: (P_i, K)}`` from a :func:`points_frame`, points with missing values left out
    (callers report how many: ``(~points.finite).sum()``)."""
    finite = points[points["finite"]]
    values = value_matrix(finite)
    return {s: values[(finite["series"] == s).to_numpy()] for s in dict.fromkeys(points["series"])}


def union_front_mask(values) -> np.ndarray:
    """``(P,)`` bool: points of ``values`` ``(P, K)`` that no other point dominates (maximised).

    Unlike :func:`mopo_core.pareto.nondominated_mask`, every copy of a duplicated
    non-dominated point is marked (two runs reaching the same values are both on the front).
    Rows with a missing value (NaN) are never on the front and do not count.
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"values: expected shape (P, K), got {arr.shape}")
    out = np.zeros(len(arr), dtype=bool)
    finite = np.isfinite(arr).all(axis=1)
    if finite.any():
        out[finite] = moocore.is_nondominated(arr[finite], maximise=True, keep_weakly=True)
    return out


# --------------------------------------------------------------------------- metrics


def dominance_counts(sets: dict[str, np.ndarray]) -> pd.DataFrame:
    """Entry ``[A, B]``: how many of A's points dominate at least one point of B
    (:func:`mopo_core.pareto.dominance_matrix`); the diagonal is 0."""
    return dominance_matrix(sets)


def dominance_table(counts: pd.DataFrame, sets: dict[str, np.ndarray]) -> pd.DataFrame:
    """The dominance matrix as a flat table: ``A (rows dominate)``, its point count, then one
    column per B."""
    table = counts.copy()
    table.insert(0, "points of A", [len(sets[a]) for a in counts.index])
    table = table.reset_index().rename(columns={"A": "A (its points dominate some of B's)"})
    table.columns.name = None
    return table


def hypervolume_table(sets: dict[str, np.ndarray], reference_point) -> pd.DataFrame:
    """Per series: ``points``, ``beyond_reference`` (points strictly better than the reference
    point in every objective; only those add volume), ``on_union_front`` (points no point of
    any series dominates), ``hypervolume`` and ``share_of_union`` (its hypervolume over the
    union's)."""
    ref = np.asarray(reference_point, dtype=float)
    names = list(sets)
    all_values = np.vstack([sets[s] for s in names]) if names else np.zeros((0, len(ref)))
    owner = np.repeat(np.arange(len(names)), [len(sets[s]) for s in names])
    front = union_front_mask(all_values) if len(all_values) else np.zeros(0, dtype=bool)
    union_hv = hypervolume(all_values, ref) if len(all_values) else 0.0
    rows = []
    for i, name in enumerate(names):
        pts = sets[name]
        hv = hypervolume(pts, ref) if len(pts) else 0.0
        rows.append({
            "series": name,
            "points": len(pts),
            "beyond_reference": int((pts > ref).all(axis=1).sum()) if len(pts) else 0,
            "on_union_front": int(front[owner == i].sum()),
            "hypervolume": hv,
            "share_of_union": hv / union_hv if union_hv > 0 else math.nan,
        })
    rows.append({"series": "union of all", "points": len(all_values),
                 "beyond_reference": int((all_values > ref).all(axis=1).sum()) if len(all_values) else 0,
                 "on_union_front": int(front.sum()), "hypervolume": union_hv,
                 "share_of_union": 1.0 if union_hv > 0 else math.nan})
    return pd.DataFrame(rows)


def hypervolume_per_run(runs: list[Run], reference_point) -> pd.DataFrame:
    """Hypervolume of each run's points (all labels together) above ``reference_point``:
    :func:`hypervolume_table` with one series per run."""
    return hypervolume_table(point_sets(points_frame(runs, by_label=False)), reference_point)


# --------------------------------------------------------------------------- attainment


def attainment(sets, levels=LEVELS) -> dict[float, np.ndarray]:
    """Attainment surfaces of ``n`` point sets (each ``(P_i, 2)``, both objectives maximised).

    Returns ``{level: (S, 2)}``: the corners of the ``level`` attainment surface, the maximal
    points ``z`` attained (weakly dominated) by at least ``ceil(level * n)`` of the sets, by
    increasing first coordinate (so decreasing second). A level that no point reaches (more
    sets needed than have points) gives an empty ``(0, 2)`` array. Computed with
    :func:`moocore.eaf` on the negated values.
    """
    arrays = [np.asarray(s, dtype=float).reshape(-1, 2) if np.size(s) else np.zeros((0, 2)) for s in sets]
    if not arrays:
        raise ValueError("sets: attainment needs at least one point set")
    for i, a in enumerate(arrays):
        if not np.isfinite(a).all():
            raise ValueError(f"sets[{i}]: values must be finite numbers")
    levels = tuple(float(t) for t in levels)
    for t in levels:
        if not 0.0 < t <= 1.0:
            raise ValueError(f"levels: each level must be in (0, 1], got {t}")
    n = len(arrays)
    nonempty = [a for a in arrays if len(a)]
    out = {}
    for t in levels:
        need = max(1, math.ceil(t * n - 1e-9))  # sets that must attain a point
        if need > len(nonempty):
            out[t] = np.zeros((0, 2))
            continue
        # moocore: percentile p keeps points attained by ceil(p * n' / 100) sets; p halfway
        # between (need - 1)/n' and need/n' avoids any rounding at the boundary.
        p = 100.0 * (need - 0.5) / len(nonempty)
        pts = np.vstack(nonempty)
        ids = np.repeat(np.arange(1, len(nonempty) + 1), [len(a) for a in nonempty])
        eaf = moocore.eaf(-pts, ids, percentiles=[p])
        corners = -eaf[:, :2]
        out[t] = corners[np.lexsort((-corners[:, 1], corners[:, 0]))]
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


def seed_key(run: Run, ignore=SEED_KEYS) -> str:
    """The run's kind and config without the ``ignore`` keys, as canonical JSON."""
    cfg = {k: v for k, v in (run.config or {}).items() if k not in set(ignore)}
    return json.dumps({"kind": run.kind, "config": to_jsonable(cfg)}, sort_keys=True)


def group_by_seed(runs: list[Run], ignore=SEED_KEYS) -> dict[str, list[Run]]:
    """Runs grouped by :func:`seed_key`: runs in one group differ only in the ``ignore`` keys
    (by default the seed). Groups keep the order of ``runs``; singletons are included."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(seed_key(run, ignore), []).append(run)
    return groups


def seed_attainment(runs: list[Run], ignore=SEED_KEYS, by_label: bool = True, levels=LEVELS) -> list[dict]:
    """Attainment over seeds for every group of ``runs`` that differ only by the ``ignore``
    keys (at least two runs, K = 2), per label when ``by_label``.

    Each item: ``name``, ``label`` (None when not by label), ``run_ids``, ``seeds`` (the
    ignored keys' values per run), ``sets`` (one ``(P_i, 2)`` array per run, finite values
    only) and ``surfaces`` (:func:`attainment`).
    """
    out = []
    for group in group_by_seed(runs, ignore).values():
        if len(group) < 2 or any(n_objectives(r) != 2 for r in group):
            continue
        frames = [run_points(r, by_label=False) for r in group]
        labels = [None]
        if by_label:
            common = set.intersection(*(set(f["label"]) for f in frames))
            labels = [lab for lab in dict.fromkeys(frames[0]["label"]) if lab in common]
        first = group[0]
        cfg = first.config or {}
        what = " ".join(str(x) for x in (first.kind, cfg.get("structure", "")) if x)
        for label in labels:
            sets = []
            for f in frames:
                rows = f[f["finite"] & ((f["label"] == label) if label is not None else True)]
                sets.append(value_matrix(rows))
            seeds = [{k: (r.config or {}).get(k) for k in ignore} for r in group]
            name = f"{what}{' · ' + label if label else ''} (runs {', '.join(str(r.id) for r in group)})"
            out.append({"name": name, "label": label, "run_ids": [r.id for r in group], "seeds": seeds,
                        "sets": sets, "surfaces": attainment(sets, levels)})
    return out


def attainment_table(items: list[dict]) -> pd.DataFrame:
    """The corners of every surface of :func:`seed_attainment` as one table
    (group, level, v0, v1)."""
    rows = [{"group": it["name"], "level": level, "v0": float(c[0]), "v1": float(c[1])}
            for it in items for level, corners in it["surfaces"].items() for c in corners]
    return pd.DataFrame(rows, columns=["group", "level", "v0", "v1"])


# --------------------------------------------------------------------------- reference point


@functools.lru_cache(maxsize=32)
def _instance_from_config(config_json: str):
    """``(reference (M, N), rates (K, M, N), prompt_weights (M,), names)`` rebuilt from a run
    config that names a structure (solve/sweep/suite runs; the instance's seed is
    ``structure_seed`` when the config has one, else ``seed``) or a preferences file; None
    when the config names neither, the instance is too large, or it cannot be rebuilt."""
    cfg = json.loads(config_json)
    try:
        if cfg.get("structure") in STRUCTURES:
            name = cfg["structure"]
            n = int(cfg.get("n_responses", 8))
            m = int(cfg.get("multi_prompt_prompts", cfg.get("n_prompts", 1)) if name == "multi_prompt"
                    and "multi_prompt_prompts" in cfg else cfg.get("n_prompts", 1))
            k = 3 if name == "three_objectives" else 2
            if k * m * n * n > MAX_REBUILD_ENTRIES:
                return None
            seed = int(cfg.get("structure_seed", cfg.get("seed", 0)))
            s = make_structure(name, n_responses=n, n_prompts=m, seed=seed)
            rates = win_rates(s.preferences, s.behaviour)
            return s.reference, rates, s.prompt_weights, tuple(s.objective_names)
        if "preferences_file" in cfg:
            path = Path(str(cfg["preferences_file"]))
            if not path.is_file() or path.stat().st_size > 8 * MAX_REBUILD_ENTRIES:
                return None
            problem = TabularProblem.build(read_preference_array(str(path), path.read_bytes()))
            k = problem.rates.shape[0]
            return problem.reference, problem.rates, problem.prompt_weights, (
                "primary", *[f"secondary {j}" for j in range(1, k)])
    except (ValueError, TypeError, OSError, KeyError):
        return None
    return None


def _instance(run: Run):
    return _instance_from_config(json.dumps(to_jsonable(run.config or {}), sort_keys=True))


def reference_point_for(run: Run) -> np.ndarray | None:
    """The reference policy's values ``(K,)`` for ``run``: ``config["reference_point"]`` when the
    run records it, else 0.5 per objective for a language-model run (win-rates against the
    reference model: the reference ties with itself), else rebuilt from the structure (or
    preferences file) its config names; None when none is available or K does not match the
    run's points."""
    k = n_objectives(run)
    cfg = run.config or {}
    if cfg.get("reference_point") is not None:
        ref = np.asarray(cfg["reference_point"], dtype=float).ravel()
    elif value_scale(run) == LM:
        ref = np.full(k, 0.5)  # the reference model's win-rate against its own samples
    else:
        inst = _instance(run)
        if inst is None:
            return None
        reference, rates, nu, _ = inst
        ref = policy_values(reference, rates, nu)
    return ref if ref.shape == (k,) and np.isfinite(ref).all() else None


def objective_names_for(run: Run) -> tuple[str, ...] | None:
    """The objectives' names from the run's structure, else the ``objectives`` its config or
    its first point's extra records (LM runs), or None."""
    k = n_objectives(run)
    inst = _instance(run)
    if inst is not None:
        return inst[3] if len(inst[3]) == k else None
    extras = [e for e in run.points["extra"] if isinstance(e, dict)]
    for names in ((run.config or {}).get("objectives"), *(e.get("objectives") for e in extras[:1])):
        if isinstance(names, list | tuple) and len(names) == k and all(isinstance(n, str) for n in names):
            return tuple(names)
    return None


def reference_policy_for(run: Run) -> np.ndarray | None:
    """The reference policy ``(M, N)`` of the run's instance, or None."""
    inst = _instance(run)
    return None if inst is None else inst[0]


def choose_reference_point(refs: list, values, margin: float = REFERENCE_MARGIN) -> tuple[np.ndarray, str]:
    """The hypervolume reference point for a comparison and a sentence saying where it comes from.

    ``refs``: each run's :func:`reference_point_for` (None where unknown); ``values`` ``(P, K)``:
    all compared points. When every run has a reference point and they agree: that point.
    When they differ: their componentwise minimum. When some run has none: the componentwise
    minimum of the finite ``values`` minus ``margin`` times their range (0.01 where the range
    is zero).
    """
    if refs and all(r is not None for r in refs):
        stack = np.vstack([np.asarray(r, dtype=float) for r in refs])
        if np.allclose(stack, stack[0], atol=1e-12, rtol=0):
            return stack[0], "the reference policy's values"
        return stack.min(axis=0), "the componentwise minimum of the runs' reference-policy values (they differ)"
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr).all(axis=1)]
    if len(arr) == 0:
        raise ValueError("values: no finite point to place a reference point below")
    lo, hi = arr.min(axis=0), arr.max(axis=0)
    span = np.where(hi > lo, hi - lo, 0.01 / margin if margin > 0 else 0.0)
    return lo - margin * span, (f"the selected points' componentwise minimum minus {margin:.0%} of their range "
                                "(not every run records a reference policy)")


# --------------------------------------------------------------------------- selection, details


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


def point_details(run: Run, idx: int) -> dict:
    """Everything the details panel shows about point ``idx`` of ``run``.

    Keys: ``run_id``, ``run_kind``, ``run_name``, ``run_status``, ``config``, ``idx``,
    ``label``, ``params``, ``values`` (``{"V0": ..., ...}``), ``extra`` (without the policy),
    ``policy`` (``(M, N)`` array or None), ``reference_policy`` (``(M, N)`` or None),
    ``kl`` (KL to the reference policy when both are known, else None), ``scale``
    (:func:`value_scale`), ``objectives`` (:func:`objective_names_for`), ``samples`` (an LM
    point's generations, ``[{"prompt", "policy": [...], "reference": [...]}]``, as
    :meth:`mopo_core.lm.evaluation.Evaluation.as_point` stores them; None when it has none) and
    ``samples_kept`` (how many of how many were stored, or None); both are left out of ``extra``.
    Unknown ``idx`` raises KeyError naming the run and index.
    """
    rows = run.points[run.points["idx"] == int(idx)]
    if rows.empty:
        raise KeyError(f"run {run.id} has no point with idx {idx}")
    row = rows.iloc[0]
    extra = dict(row["extra"]) if isinstance(row["extra"], dict) else {}
    samples, kept = extra.pop("samples", None), extra.pop("samples_kept", None)
    policy = extra.pop("policy", None)
    policy = None if policy is None else np.atleast_2d(np.asarray(policy, dtype=float))
    ref = reference_policy_for(run)
    if ref is not None and policy is not None and ref.shape != policy.shape:
        ref = None
    kl = None
    if ref is not None and policy is not None:
        inst = _instance(run)
        kl = kl_divergence(policy, ref, inst[2])
    k = n_objectives(run)
    return {
        "run_id": run.id, "run_kind": run.kind, "run_name": run.name, "run_status": run.status,
        "config": run.config, "idx": int(idx), "label": str(row["label"]), "params": row["params"],
        "values": {f"V{j}": float(row[f"v{j}"]) for j in range(k)},
        "extra": extra, "policy": policy, "reference_policy": ref, "kl": kl,
        "scale": value_scale(run), "objectives": objective_names_for(run),
        "samples": samples if isinstance(samples, list) else None, "samples_kept": kept,
    }


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
    """An LM point's stored generations (``details`` from :func:`point_details`), one row per
    prompt and sample number: ``prompt``, ``sample``, ``policy`` (this run's generation) and
    ``reference`` (the reference model's for the same prompt), then, when ``scorer`` is given,
    ``policy <objective>`` and ``reference <objective>`` scores. Empty (with those columns)
    when the point stores no generations."""
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
