"""Comparing stored runs: their points, non-dominance in the union, dominance counts,
hypervolume, attainment over seeds, and the details of one point (the Compare page's engine;
the page's own logic, such as run labels, selection parsing, LM details tables and example
runs, is :mod:`app.presenters.compare`).

Pure functions on :class:`mopo_core.runs.Run` objects and point arrays; no Streamlit here.

Conventions (as everywhere in the engine): every objective is MAXIMISED; a point set is an
array ``(P, K)``; ``V0`` is the primary objective. A *series* is what the page draws in one
colour: a whole run, or (``by_label=True``) the points of one run with one label (one method
of a suite run).

Value scales (:func:`value_scale`): a tabular run's values are win-rates against the behaviour
policy of its instance; a language-model run's (``train``/``evaluate`` runs, or a config that
names a training task, ``task``) are win-rates of the policy's samples against the reference
model's samples (0.5: a tie with the reference). The two are different scales and are never
overlaid (:func:`group_by_scale`); the reference point of an LM run is 0.5 per objective.

Attainment (the empirical attainment function, EAF, of Fonseca et al.): a point ``z`` is
attained by a set ``A`` when some ``a`` in ``A`` weakly dominates it (``a >= z``). The
``t``-level attainment surface of ``n`` sets bounds the points attained by at least
``ceil(t * n)`` of them; with three seeds the 0.5 level (the median front) is the region
reached by two of the three, the 0.25 level the union's front and the 0.75 level the
intersection's. Computed by :func:`moocore.eaf` (a minimiser, so on negated values).

Diverged runs (status :data:`HIDDEN_STATUSES`, set when a run's loss, gradient norm or KL went
wrong: :mod:`mopo_core.training.divergence`; or an ``evaluate`` run of such a run) are kept off
fronts, hypervolumes, dominance counts and attainment: :func:`points_frame`,
:func:`hypervolume_per_run` and :func:`seed_attainment` leave them out unless
``include_diverged=True``; :func:`split_diverged` says which were left out. When included, their
series names say ``(diverged)``.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import moocore
import numpy as np
import pandas as pd

from synthetic import STRUCTURES, make_structure

from mopo_core.pareto import dominance_matrix, hypervolume
from mopo_core.runs import Run, to_jsonable
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
#: Value scales (:func:`value_scale`); the page's names for them are
#: :data:`app.presenters.compare.SCALES`.
TABULAR, LM = "tabular", "lm"
#: Run kinds of language-model runs.
LM_KINDS = ("train", "evaluate")
#: Run statuses whose points are kept off fronts, hypervolumes and dominance counts unless asked.
HIDDEN_STATUSES = ("diverged",)


# --------------------------------------------------------------------------- diverged runs


def is_diverged(run: Run) -> bool:
    """Whether ``run`` went wrong in training: its status is one of :data:`HIDDEN_STATUSES`, or it
    evaluates a run that was (its config's ``source_status``, as recorded by an evaluation)."""
    cfg = run.config or {}
    return run.status in HIDDEN_STATUSES or cfg.get("source_status") in HIDDEN_STATUSES


def split_diverged(runs: list[Run], include_diverged: bool = False) -> tuple[list[Run], list[Run]]:
    """``(kept, hidden)``: the runs to compare and the diverged ones left out (none are left out
    when ``include_diverged``); order kept."""
    if include_diverged:
        return list(runs), []
    return [r for r in runs if not is_diverged(r)], [r for r in runs if is_diverged(r)]


# --------------------------------------------------------------------------- labels


def format_value(value) -> str:
    """A value as the page and the series names write it: floats to 4 significant digits, lists
    and dicts item by item, None as ``–``."""
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    if isinstance(value, list | tuple | np.ndarray):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def format_params(params) -> str:
    """A short one-line text of a point's parameters, e.g. ``threshold=[0.6], tau=0.05``."""
    if not isinstance(params, dict) or not params:
        return "(no parameters)" if not params else format_value(params)
    return ", ".join(f"{k}={format_value(v)}" for k, v in params.items())


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
                parts.append("b=" + format_value(list(cfg["thresholds"])))
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
    base = f"#{run.id} {run_title(run)}" + (" (diverged)" if is_diverged(run) else "")
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
    """:data:`LM` for a language-model run (kind :data:`LM_KINDS`, a config that names a
    training task, ``task``: only language-model runs write one, or points that record an LM
    evaluation's ``win_rate_stderr``), else :data:`TABULAR`. The values of the two are
    win-rates against different baselines."""
    cfg = run.config or {}
    if run.kind in LM_KINDS or cfg.get("task"):
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


def points_frame(runs: list[Run], by_label: bool = True, include_diverged: bool = False) -> pd.DataFrame:
    """:func:`run_points` of every run, concatenated; diverged runs (:func:`is_diverged`) are left
    out unless ``include_diverged``. All runs must have the same K."""
    runs = split_diverged(runs, include_diverged)[0]
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


def hypervolume_per_run(runs: list[Run], reference_point, include_diverged: bool = False) -> pd.DataFrame:
    """Hypervolume of each run's points (all labels together) above ``reference_point``:
    :func:`hypervolume_table` with one series per run (diverged runs only when ``include_diverged``)."""
    return hypervolume_table(point_sets(points_frame(runs, by_label=False, include_diverged=include_diverged)),
                             reference_point)


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


def seed_attainment(runs: list[Run], ignore=SEED_KEYS, by_label: bool = True, levels=LEVELS,
                    include_diverged: bool = False) -> list[dict]:
    """Attainment over seeds for every group of ``runs`` that differ only by the ``ignore``
    keys (at least two runs, K = 2), per label when ``by_label``; diverged runs are left out
    unless ``include_diverged``.

    Each item: ``name``, ``label`` (None when not by label), ``run_ids``, ``seeds`` (the
    ignored keys' values per run), ``sets`` (one ``(P_i, 2)`` array per run, finite values
    only) and ``surfaces`` (:func:`attainment`).
    """
    out = []
    runs = split_diverged(runs, include_diverged)[0]
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


# --------------------------------------------------------------------------- point details


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
