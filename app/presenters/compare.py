"""The Compare page's logic (no Streamlit): what the page needs beyond the engine's comparison
of stored runs (:mod:`mopo_core.experiments.compare_runs`: points, non-dominance, dominance,
hypervolume, attainment, point details).

- Names: :data:`SCALES` (how the page names the two value scales), :data:`VALUES` and
  :func:`values_kind` (what the drawn values are, imported points told apart), :func:`run_label`
  (the run picker's label) and :func:`label_id` (a picker value back to its run id),
  :func:`settings_table` (a config as a two-column table).
- Diverged runs: :func:`diverged_toggle_label` and :func:`diverged_note` (how the page says
  that diverged runs are left off the fronts, dominance counts and hypervolumes, and why).
- Uncertainty: :func:`standard_errors`, each point's stored standard errors (drawn as
  ±:data:`SE_BAR` SE bars).
- Selection: :func:`selection_keys` reads the ``(run_id, idx)`` of the points picked in a Plotly
  selection event.
- Drawing: :func:`staircase`, the boundary polyline of the region a set of points dominates.
- A language-model point's details: :func:`sample_scorer` and :func:`generations_frame` (its stored
  generations beside the reference model's, scored), :func:`metric_table` and
  :func:`training_curves` (the run's metric series and which panels draw them);
  :func:`overlay_metrics` and :func:`overlay_curves` (one metric of several runs, smoothed by
  :func:`ema`).
- Runs: :func:`run_names` (a run's stored name, else its Train job's, :func:`job_names`, else
  :func:`describe_run` from its config); :func:`series_colours` (a series' colour is a function of
  its run or its method alone, :func:`series_colour`, never of the selection); :func:`instance_key`,
  :func:`default_selection` (the runs of one instance) and :func:`instance_warning` (runs of
  different instances overlaid).
- The runs table: :func:`runs_table`, :func:`filter_table`, :func:`apply_edits` (rename, tags,
  hide) and :func:`delete_plan` / :func:`delete_runs` (a run and the checkpoint files the project
  wrote for it, never any other file).
- Example runs: :func:`create_example_runs` records a few runs so that a fresh store has
  something to compare (the page's "Create example runs" button).
- Your own results: :func:`import_upload` records the points of an uploaded CSV or JSON file
  (:mod:`mopo_core.experiments.imports`) and says what it did or what is wrong with the file.

Conventions as in the engine: every objective is maximised; a point set is an array ``(P, K)``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.colors

from app.presenters.smoothing import ema
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
from mopo_core.experiments.imports import IMPORT_KIND, parse_points, record_points
from mopo_core.experiments.suite import SuiteConfig, config_dict, threshold_grid
from mopo_core.lm.config import CHECKPOINT_NAME, METHODS
from mopo_core.pareto import attainable_max
from mopo_core.runs import Run, RunStore, to_jsonable
from mopo_core.tabular.baselines import BASELINES, weight_grid
from mopo_core.tabular.solver import TabularProblem, kl_divergence, policy_values
from mopo_core.training import jobs
from mopo_core.training.tasks import TASKS, train_config_from

#: Value scales (:func:`mopo_core.experiments.compare_runs.value_scale`) and how the page names them.
SCALES = {TABULAR: "win-rates against the behaviour policy (tabular runs)",
          LM: "win-rates against the reference model's samples (language-model runs; 0.5 = a tie)"}
#: What the drawn values are (:func:`values_kind`): the two scales, points imported from a file (the
#: tabular scale holds them: the engine knows no baseline of theirs), and tabular runs beside imported ones.
IMPORTED, MIXED = "imported", "mixed"
VALUES = {**SCALES, IMPORTED: "your own values, as imported from a file (not computed here)",
          MIXED: "win-rates against the behaviour policy (tabular runs) beside your own imported values"}
#: The factor of a standard error drawn as an error bar: ±1.96 SE, a 95% normal interval.
SE_BAR = 1.96


def values_kind(runs: list[Run], scale: str) -> str:
    """What the values of ``runs`` (all on ``scale``) are, a key of :data:`VALUES`: :data:`LM`;
    :data:`IMPORTED` when every run is imported (kind :data:`IMPORT_KIND`); :data:`TABULAR` when
    none is; else :data:`MIXED`."""
    if scale == LM:
        return LM
    imported = {r.kind == IMPORT_KIND for r in runs}
    return IMPORTED if imported == {True} else TABULAR if True not in imported else MIXED


def standard_errors(runs: list[Run], pts: pd.DataFrame) -> np.ndarray:
    """``(P, K)`` standard errors of the points of ``pts`` (a
    :func:`mopo_core.experiments.compare_runs.points_frame` of ``runs``), in the units of their
    values: an imported point's ``extra["stderr"]``, a language-model evaluation's
    ``extra["win_rate_stderr"]``; NaN where a point records none."""
    k = sum(1 for c in pts.columns if c.startswith("v") and c[1:].isdigit())
    stored = {}
    for run in runs:
        for idx, extra in zip(run.points["idx"], run.points["extra"]):
            se = (extra.get("stderr") or extra.get("win_rate_stderr")) if isinstance(extra, dict) else None
            if isinstance(se, list | tuple) and len(se) == k:
                stored[(run.id, int(idx))] = [np.nan if v is None else float(v) for v in se]
    missing = [np.nan] * k
    return np.array([stored.get(key, missing) for key in zip(pts["run_id"].tolist(), pts["idx"].tolist())],
                    dtype=float).reshape(len(pts), k)


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


def label_id(value) -> int | None:
    """The run id of a run picker value: the id itself, or a label of :func:`run_label`'s form
    (``"id · ..."``, what the browser sends back for a run whose label has changed since); None
    for anything else."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    head = str(value).split(" · ", 1)[0].strip()
    return int(head) if head.isdigit() else None


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


def overlay_metrics(runs: list[Run]) -> list[str]:
    """The metrics logged by any of ``runs`` that the overlaid training curves offer (the
    throughput left out), ``loss`` first."""
    names = sorted({n for r in runs for n in r.metrics["name"]} - {"tokens_per_s"})
    return sorted(names, key=lambda n: n != "loss")


def overlay_curves(runs: list[Run], metric: str, smoothing: float) -> pd.DataFrame:
    """One row per logged step of ``metric`` per run (runs that did not log it left out): run_id,
    step, value and smoothed (:func:`ema`)."""
    frames = []
    for run in runs:
        d = run.metrics[run.metrics["name"] == metric].sort_values("step", kind="stable")
        if len(d):
            frames.append(pd.DataFrame({"run_id": run.id, "step": d["step"].to_numpy(),
                                        "value": d["value"].to_numpy(), "smoothed": ema(d["value"], smoothing)}))
    return (pd.concat(frames, ignore_index=True) if frames
            else pd.DataFrame(columns=["run_id", "step", "value", "smoothed"]))


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


# --------------------------------------------------------------------------- runs: names, colours, instances


def job_names(store_path) -> dict[int, str]:
    """``{run id: name}`` of the Train page's jobs (:mod:`mopo_core.training.jobs`) that started a
    run; ``resume`` jobs are left out (they continue a run another job named)."""
    return {int(j.run_id): j.name for j in jobs.list_jobs(store_path)
            if j.run_id is not None and j.name and j.kind != "resume"}


def describe_run(kind: str, config) -> str | None:
    """A name for an unnamed language-model ``train`` run from its config: the Train page's job
    name (method, thresholds b or weights w, τ, steps) and the seed; None for other runs and for
    configs without a method, τ and steps."""
    if kind != "train" or not isinstance(config, dict) or not {"method", "tau", "steps"} <= set(config):
        return None
    from app.presenters.train import job_name  # imported here: app.presenters.train imports this module

    try:
        name = job_name(train_config_from(config))
    except (TypeError, ValueError):
        return None
    return f"{name} · seed {config['seed']}" if config.get("seed") is not None else name


def run_names(listed: pd.DataFrame, configs: dict[int, dict], by_job: dict[int, str]) -> dict[int, str | None]:
    """``{id: name}`` for the rows of :meth:`RunStore.list_runs`: the stored name (set by the
    recorder or renamed on this page), else the name of the job that started the run
    (:func:`job_names`), else :func:`describe_run` from its config (``configs``: ``{id: config}``,
    e.g. from :meth:`RunStore.progress`); None when there is none."""
    out = {}
    for row in listed.to_dict("records"):
        run_id = int(row["id"])
        stored = row["name"] if isinstance(row["name"], str) and row["name"] else None  # None reads back as NaN
        out[run_id] = stored or by_job.get(run_id) or describe_run(row["kind"], configs.get(run_id))
    return out


#: What "Colour by" offers: each run its own colour, or each method (point label) its own.
COLOUR_BY = ("run", "method")
#: Colours of runs (a run's: its id modulo the length) and of methods (disjoint from the runs').
RUN_PALETTE = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.Safe
METHOD_PALETTE = plotly.colors.qualitative.Dark24
#: Method labels in a fixed order: each takes the method palette's entry at its place.
METHOD_ORDER = tuple(dict.fromkeys(("mopo", *BASELINES, *METHODS)))


def series_colour(run_id: int, label: str, by: str, split: bool = False) -> str:
    """The colour of a series: by ``"run"`` the run's (:data:`RUN_PALETTE` at its id), except the
    series of a run ``split`` into one series per method, which take their method's; by
    ``"method"`` the method's (:data:`METHOD_PALETTE` at the label's place in
    :data:`METHOD_ORDER`; another label: at a digest of its text). A function of the run and
    label alone, never of which runs are selected or in what order."""
    if by not in COLOUR_BY:
        raise ValueError(f"colour_by: must be one of {', '.join(COLOUR_BY)}, got {by!r}")
    if by == "run" and not split:
        return RUN_PALETTE[int(run_id) % len(RUN_PALETTE)]
    place = (METHOD_ORDER.index(label) if label in METHOD_ORDER
             else int(hashlib.sha1(str(label).encode()).hexdigest(), 16))
    return METHOD_PALETTE[place % len(METHOD_PALETTE)]


def series_colours(pts: pd.DataFrame, by: str) -> dict[str, str]:
    """``{series: colour}`` (:func:`series_colour`) for a
    :func:`mopo_core.experiments.compare_runs.points_frame`; a series takes its first point's run
    and label."""
    split = pts.groupby("run_id")["series"].nunique() > 1
    first = pts.drop_duplicates("series")
    return {s: series_colour(r, lab, by, bool(split[r])) for s, r, lab in
            zip(first["series"], first["run_id"], first["label"])}


def instance_key(kind: str, config) -> tuple | None:
    """What a run's values are measured on, from its config: runs with equal keys are on one
    instance, so their dominance and hypervolume compare. A tabular run on a structure: its name,
    N, M and seed (``structure_seed``, else ``seed``; read as
    :func:`mopo_core.experiments.compare_runs.reference_point_for` rebuilds the instance); on a
    preferences file: the file; a language-model run: its task and what the task says its values
    depend on (:meth:`mopo_core.training.tasks.TrainingTask.measurement`: nothing more for the
    text task; a dataset run's model, data, split and judge); imported points: their source file and
    objectives (the file's author vouches for one instance); runs naming different objectives are
    told apart by the page's own warning. None when the config says neither (instance unknown)."""
    cfg = config if isinstance(config, dict) else {}
    if kind in LM_KINDS or cfg.get("task"):
        task = cfg.get("task", "text")
        measured = TASKS[task].measurement(cfg) if task in TASKS else ()
        return ("task", task, json.dumps(to_jsonable(measured)))
    if cfg.get("structure"):
        name = cfg["structure"]
        prompts = cfg.get("multi_prompt_prompts", cfg.get("n_prompts", 1)) if name == "multi_prompt" \
            and "multi_prompt_prompts" in cfg else cfg.get("n_prompts", 1)
        return ("structure", name, int(cfg.get("n_responses", 8)), int(prompts),
                int(cfg.get("structure_seed", cfg.get("seed", 0))))
    if cfg.get("preferences_file"):
        return ("preferences", str(cfg["preferences_file"]))
    if kind == IMPORT_KIND and cfg.get("source_file"):
        return ("imported", str(cfg["source_file"]), tuple(cfg.get("objectives") or ()))
    return None


def describe_instance(key: tuple | None) -> str:
    """One line naming an :func:`instance_key`."""
    if key is None:
        return "instance unknown"
    if key[0] == "structure":
        return f"{key[1]} (N = {key[2]}, M = {key[3]}, instance seed {key[4]})"
    if key[0] == "preferences":
        return f"preferences file {Path(key[1]).name}"
    if key[0] == "imported":
        return f"points imported from {Path(key[1]).name} ({', '.join(key[2])})"
    return f"the {key[1]} task" + (f" (measured on {key[2]})" if key[2] != "[]" else "")


def instance_warning(runs: list[Run]) -> str:
    """A warning when the runs come from different known instances (:func:`instance_key`), naming
    each instance and its runs; empty when they share one (runs of unknown instance are not
    counted)."""
    groups: dict[tuple, list[int]] = {}
    for run in runs:
        key = instance_key(run.kind, run.config)
        if key is not None:
            groups.setdefault(key, []).append(run.id)
    if len(groups) < 2:
        return ""
    return ("The overlaid runs come from different instances: "
            + "; ".join(f"{describe_instance(k)}: run{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"
                        for k, ids in groups.items())
            + ". Dominance, fronts and hypervolumes compare values on one problem: across instances they mean "
              "nothing. Select runs of one instance.")


def default_selection(listed: pd.DataFrame, configs: dict[int, dict], most: int = 6) -> list[int]:
    """The runs the page selects first: among the shown runs (not hidden) with at least two
    points (else with one), those of the instance (:func:`instance_key`) with the most runs (on a
    tie, the newest run's), its newest ``most``."""
    shown = listed[~listed["hidden"]]
    pool = shown[shown["n_points"] >= 2]
    pool = pool if len(pool) else shown[shown["n_points"] >= 1]
    groups: dict[object, list[int]] = {}
    for row in pool.to_dict("records"):
        run_id = int(row["id"])
        key = instance_key(row["kind"], configs.get(run_id)) or ("run", run_id)
        groups.setdefault(key, []).append(run_id)
    if not groups:
        return []
    best = max(groups.values(), key=lambda ids: (len(ids), max(ids)))
    return best[-most:]


# --------------------------------------------------------------------------- the runs table

#: The runs table's columns; ``hide``, ``name`` and ``tags`` are edited on the page.
TABLE_COLUMNS = ["hide", "id", "name", "kind", "method", "status", "created", "tags", "points"]
EDITABLE = ("hide", "name", "tags")
#: Runs a worker may still be writing: not deleted.
BUSY_STATUSES = ("queued", "running")


def _method(kind: str, config: dict) -> str:
    """A run's method(s) from its config (a suite's list; a tabular sweep or solve is MOPO)."""
    if config.get("method"):
        return str(config["method"])
    if config.get("methods"):
        return ", ".join(map(str, config["methods"]))
    return "mopo" if kind in ("sweep", "solve") else ""


def runs_table(listed: pd.DataFrame, names: dict[int, str | None], configs: dict[int, dict]) -> pd.DataFrame:
    """One row per run of :meth:`RunStore.list_runs`, columns :data:`TABLE_COLUMNS`: ``name`` from
    :func:`run_names` ("" when none), ``created`` to the second, ``tags`` comma-separated."""
    rows = [{"hide": bool(r["hidden"]), "id": int(r["id"]), "name": names.get(int(r["id"])) or "",
             "kind": r["kind"], "method": _method(r["kind"], configs.get(int(r["id"])) or {}),
             "status": r["status"], "created": str(r["created_at"])[:19].replace("T", " "),
             "tags": ", ".join(r["tags"]), "points": int(r["n_points"])} for r in listed.to_dict("records")]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def filter_table(table: pd.DataFrame, text: str = "", kinds=(), statuses=(), show_hidden: bool = False) -> pd.DataFrame:
    """The rows of :func:`runs_table` that hold ``text`` (case-insensitive, in the id, name, kind,
    method or tags), are of one of ``kinds`` and ``statuses`` (empty: any) and are not hidden
    unless ``show_hidden``; index reset."""
    keep = pd.Series(True, index=table.index)
    if text.strip():
        needle = text.strip().lower()
        rows = table[["id", "name", "kind", "method", "tags"]].itertuples(index=False)
        keep &= np.array([needle in " ".join(map(str, row)).lower() for row in rows], dtype=bool)
    if kinds:
        keep &= table["kind"].isin(list(kinds))
    if statuses:
        keep &= table["status"].isin(list(statuses))
    if not show_hidden:
        keep &= ~table["hide"]
    return table[keep].reset_index(drop=True)


def apply_edits(store: RunStore, shown: pd.DataFrame, edited_rows: dict, names: dict[int, str | None]) -> list[str]:
    """Write a ``st.data_editor``'s ``edited_rows`` (``{row position: {column: value}}`` of the
    table ``shown``) to the store: ``name`` renames (a name equal to the shown one, e.g. the
    job's, is not stored), ``tags`` replaces the tags, ``hide`` hides or shows. Other columns are
    read-only. Returns one line per change."""
    done = []
    for pos, change in edited_rows.items():
        run_id = int(shown.iloc[int(pos)]["id"])
        unknown = set(change) - set(EDITABLE)
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: run {run_id}'s column is read-only; edit {', '.join(EDITABLE)}")
        if "name" in change and (change["name"] or "") != (names.get(run_id) or ""):
            store.rename_run(run_id, change["name"])
            done.append(f"run {run_id} renamed {change['name']!r}" if (change["name"] or "").strip()
                        else f"run {run_id}'s name cleared")
        if "tags" in change:
            tags = store.set_tags(run_id, change["tags"] or "")
            done.append(f"run {run_id} tagged {', '.join(tags)}" if tags else f"run {run_id}'s tags cleared")
        if "hide" in change:
            store.set_hidden(run_id, bool(change["hide"]))
            done.append(f"run {run_id} {'hidden' if change['hide'] else 'shown'}")
    return done


def checkpoint_files(store: RunStore, run_id: int, deleting=()) -> list[Path]:
    """The checkpoint files the project wrote for a run, to delete with it: ``last.pt`` (and a
    half-written ``last.tmp``) in its config's ``checkpoint_dir``, when they exist and no run
    outside ``deleting`` (ids deleted together) uses that folder. Nothing else in the folder."""
    folder = (store.progress([run_id])[int(run_id)]["config"] or {}).get("checkpoint_dir")
    if not isinstance(folder, str) or not folder:
        return []
    if set(store.runs_with("checkpoint_dir", folder)) - {int(i) for i in (*deleting, run_id)}:
        return []
    names = (CHECKPOINT_NAME, Path(CHECKPOINT_NAME).with_suffix(".tmp").name)
    return [Path(folder) / n for n in names if (Path(folder) / n).is_file() or (Path(folder) / n).is_symlink()]


def delete_plan(store: RunStore, run_ids) -> tuple[list[int], list[Path], list[str]]:
    """What deleting ``run_ids`` would do: (the runs deleted, the files deleted with them: see
    :func:`checkpoint_files`, one line per run refused: queued or running runs, which a worker
    may be writing)."""
    ids = [int(i) for i in run_ids]
    statuses = {i: store.get_status(i) for i in ids}
    refused = [f"run {i} is {statuses[i]}: cancel it (or let it end) before deleting it"
               for i in ids if statuses[i] in BUSY_STATUSES]
    kept = [i for i in ids if statuses[i] not in BUSY_STATUSES]
    files = [f for i in kept for f in checkpoint_files(store, i, kept)]
    return kept, files, refused


def delete_runs(store: RunStore, run_ids) -> list[str]:
    """Delete the runs :func:`delete_plan` allows, with their checkpoint files (each file, then
    its folder when that leaves it empty); returns one line per run deleted or refused."""
    kept, files, refused = delete_plan(store, run_ids)
    for path in files:
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # only when empty
        except OSError:
            pass
    for run_id in kept:
        store.delete_run(run_id)
    return [f"run {i} deleted" for i in kept] + [f"{len(files)} checkpoint file(s) deleted"] * bool(files) + refused


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


# --------------------------------------------------------------------------- imported points


def import_upload(store: RunStore, filename: str, data: bytes) -> tuple[list[int], str]:
    """Record the points of an uploaded file named ``filename`` (its bytes ``data``; the format
    of :mod:`mopo_core.experiments.imports`, the runs' ``source_file`` is ``upload: <name>``).
    Returns ``(new run ids, a sentence saying which runs were recorded)``, or ``([], the
    error)`` for a bad file: the message names the file, the row and the column."""
    name = Path(filename).name  # the upload's own name, never a path
    try:
        objectives, points = parse_points(name, data)
    except ValueError as exc:
        return [], f"Nothing imported: {exc}"
    ids = record_points(store, objectives, points, f"upload: {name}", name=Path(name).stem)
    return ids, (f"Imported {len(points)} point{'' if len(points) == 1 else 's'} ({', '.join(objectives)}) from "
                 f"{name} as run{'' if len(ids) == 1 else 's'} {', '.join(map(str, ids))}, now selected.")


# --------------------------------------------------------------------------- at scale (many runs selected)


def dominance_counts(sets: dict[str, np.ndarray], tol: float | None = None) -> pd.DataFrame:
    """:func:`mopo_core.experiments.compare_runs.dominance_counts` (entry ``[A, B]``: how many of A's
    points dominate at least one point of B, up to ``tol``; the diagonal 0), computed in one array
    operation over the union instead of one pandas assignment per pair of series: the same
    table in milliseconds for 40 runs. Sets of different K raise ``ValueError``."""
    from mopo_core.pareto import DOMINANCE_TOL

    tol = DOMINANCE_TOL if tol is None else tol
    names = list(sets)
    arrays = [np.atleast_2d(np.asarray(sets[s], dtype=float)) for s in names]
    ks = {a.shape[1] for a in arrays if a.size}
    if len(ks) > 1:
        raise ValueError(f"point_sets: all sets must have the same K, got {sorted(ks)}")
    out = pd.DataFrame(0, index=pd.Index(names, name="A"), columns=pd.Index(names, name="B"))
    nonempty = [i for i, a in enumerate(arrays) if a.size]
    if len(nonempty) < 2:
        return out
    values = np.vstack([arrays[i] for i in nonempty])
    owner = np.repeat(np.arange(len(nonempty)), [len(arrays[i]) for i in nonempty])
    n = len(nonempty)
    # hits[p, b]: point p dominates at least one point of set b (chunked: P x P x K stays small).
    hits = np.zeros((len(values), n), dtype=bool)
    onehot = np.eye(n, dtype=bool)[owner]  # (P, n)
    for start in range(0, len(values), 256):
        a = values[start:start + 256]
        diff = a[:, None, :] - values[None, :, :]
        dom = (diff >= -tol).all(axis=-1) & (diff > tol).any(axis=-1)  # (chunk, P)
        hits[start:start + 256] = (dom.astype(np.int32) @ onehot.astype(np.int32)) > 0
    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, owner, hits.astype(np.int64))
    np.fill_diagonal(counts, 0)
    sub = [names[i] for i in nonempty]
    out.loc[sub, sub] = counts
    return out


def page_of(table: pd.DataFrame, page: int, size: int = 50) -> tuple[pd.DataFrame, int, int]:
    """Rows ``page`` (1-based, clipped to the pages there are) of ``table``, ``size`` rows a page:
    ``(rows with the index reset, the page shown, the number of pages)`` (at least one page)."""
    if size < 1:
        raise ValueError(f"size: rows per page must be at least 1, got {size}")
    pages = max(1, -(-len(table) // size))
    page = min(max(1, int(page)), pages)
    return table.iloc[(page - 1) * size:page * size].reset_index(drop=True), page, pages
