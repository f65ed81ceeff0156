"""Compare: pick runs from the run store; overlay their fronts; dominance, hypervolume, attainment
over seeds; click a point to see its config, values and policy (a thin view over
mopo_core.experiments.compare_runs and app.presenters.compare).

Language-model runs (train/evaluate runs: values are win-rates against the reference model's
samples) are listed beside the tabular ones (values: win-rates against the behaviour policy) but
never overlaid with them: a selection of both asks which scale to compare. Diverged runs (their
loss, gradient norm or KL went wrong in training) are left off the fronts, dominance counts,
hypervolumes and attainment unless "Show diverged runs" is ticked; the page says which and why.
An LM point's details show its run's config, its win-rates and mean scores, its training curves
(loss, multipliers, constraint estimates against the thresholds) and its stored generations side
by side with the reference model's for the same prompts.

Runs: each is named by its stored name, else its Train job's name, else a description from its
config (method, b or w, τ, steps, seed). The first selection is the runs of one instance (same
structure and instance seed, or task and what it is measured on); overlaying runs of different
instances is warned about (their dominance and hypervolume mean nothing). A run's colour is a
function of the run (or, "Colour by" method, of its method) alone, never of the selection (a run
drawn one series per method takes its methods' colours). The runs table (an
expander at the top) sorts, filters, renames, tags, hides (hidden runs leave the run picker unless
"Show hidden") and deletes runs, after a confirmation, with the checkpoint files the project wrote
for them; it shows 50 rows a page (the filter runs over every run, on the light listing: no run's
points or metrics are read for it). The selected runs' training curves are overlaid, smoothed by an
EMA slider.

At scale (a store of 1,000 runs, 40 selected; bench/compare_scale.py): the listing (names, labels,
the runs table) is cached by the store's marker (:meth:`RunStore.marker`, one query), the selected
runs are read in one go (:meth:`RunStore.get_runs`) and cached by what changes while a run is
written (points, status, end, last metric step) and its name, and so are their points, dominance counts,
hypervolumes, attainment and front traces (keyed by that and the settings); traces drawn once per
series skip Plotly's validation (:func:`_light_figure`).

Selection: the point charts use Plotly's native selection (``on_select="rerun"``). The chosen
points are kept in ``st.session_state["compare_pinned"]`` as ``(run_id, idx)`` pairs (each
trace carries them as customdata), so every view, and the details panel, shows the same
selection; a new click in any chart replaces it. Setting that session key selects points
programmatically (the app tests do).

Your own results: the sidebar's "Import points (CSV or JSON)" records an uploaded file of points
evaluated elsewhere (:func:`app.presenters.compare.import_upload`) and selects the new runs; a bad
file is refused with a message naming the row and the column. Their charts say the values are the
user's own (:data:`CONVENTIONS`), not win-rates computed here.

Uncertainty: points that record standard errors (an imported file's ``se.<objective>`` columns, a
language-model evaluation's ``win_rate_stderr``) are drawn on the fronts with ±1.96 SE bars (a 95%
normal interval), said in the front's subtitle and each point's hover.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app.presenters import compare as compare_presenter
from app.shared import CONVENTION, PROBABILITY_SUBTITLE, axis_title, run_store, show_figure, show_table, style
from mopo_core.experiments import compare_runs
from mopo_core.runs import RunStore

RUNS = "compare_runs"
RUN_LABELS = "compare_run_labels"  # the labels of the picked runs as last sent to the browser
PINNED = "compare_pinned"
LAST_EVENTS = "compare_last_events"
PALETTE = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.Dark24
SELECTABLE = {"on_select": "rerun", "selection_mode": ("points",)}
# Traces drawn once per run or series (40 runs: 40 or more) are built without Plotly's property
# validation (_light_figure; their properties are the fixed, known-valid ones written here): most of
# a rerun's figure time at scale went to validating them.
def _light_figure(traces: list[dict]) -> go.Figure:
    """A figure holding ``traces`` (plain dicts with a ``type``) as they are, without Plotly's
    property validation (``add_trace`` would validate each again); traces added afterwards and
    the layout (titles, axes, shapes) are validated as usual."""
    fig = go.Figure(data=traces, _validate=False)
    fig._validate = True
    fig.layout._validate = True
    return fig
SEED_SYMBOLS = ["circle", "square", "triangle-up", "diamond", "cross", "star", "triangle-down", "pentagon"]
#: The subtitle of the value charts per :func:`app.presenters.compare.values_kind` of the compared runs
#: (style() writes the tabular CONVENTION; the others have another baseline, or none).
CONVENTIONS = {
    compare_runs.TABULAR: CONVENTION,
    compare_runs.LM: ("All objectives maximised · values are win-rates of the policy's samples against the reference "
                      "model's samples (0.5 = a tie with the reference)"),
    compare_presenter.IMPORTED: "All objectives maximised · values are your own, as imported from your file",
    compare_presenter.MIXED: ("All objectives maximised · tabular runs: win-rates against the behaviour policy; "
                              "imported runs: your own values, as imported"),
}
#: The axis titles' note on the value scale (the tabular one: app.shared.axis_title).
AXIS_NOTES = {compare_runs.LM: "win-rate vs the reference model", compare_presenter.IMPORTED: "your values",
              compare_presenter.MIXED: "win-rate or your imported values"}
#: How the front's subtitle names the error bars.
SE_NOTE = (f"bars: ±{compare_presenter.SE_BAR} standard errors (a 95% normal interval) of the points that "
           "record them")


def _axis(names, k: int, axis: str, values: str) -> str:
    """The axis title of objective k for the compared runs' values (``values``:
    :func:`app.presenters.compare.values_kind`)."""
    if values == compare_runs.TABULAR:
        return axis_title(names, k, axis)
    return f"V{k} {names[k]} ({AXIS_NOTES[values]}; higher is better {'↑' if axis == 'y' else '→'})"


def _convention(fig: go.Figure, values: str, bars: bool = False) -> go.Figure:
    """Swap style()'s tabular convention line for the one of the compared runs' ``values``
    (:data:`CONVENTIONS`), followed by :data:`SE_NOTE` when the figure draws error ``bars``."""
    title = fig.layout.title.text or ""
    if CONVENTION in title:
        fig.update_layout(title_text=title.replace(CONVENTION, CONVENTIONS[values] + (f" · {SE_NOTE}" if bars else "")))
    return fig


@st.cache_data(show_spinner=False, max_entries=4)
def _listing(store_path: str, marker: str, _store: RunStore):
    """The light view of every run, read again whenever the store changed (``marker``:
    :meth:`RunStore.marker`): (:meth:`RunStore.list_runs` with each run's shown name, its
    :meth:`RunStore.progress`, ``{id: config}``, ``{id: name}``, ``{id: picker label}``, the runs
    table). No run's points or metrics are read."""
    store = _store
    listed = store.list_runs()
    progress = store.progress(listed["id"])
    configs = {i: p["config"] for i, p in progress.items()}
    names = compare_presenter.run_names(listed, configs, compare_presenter.job_names(store.path))
    listed = listed.assign(name=[names[int(i)] for i in listed["id"]])
    labels = {int(r["id"]): compare_presenter.run_label(r) for r in listed.to_dict("records")}
    return listed, progress, configs, names, labels, compare_presenter.runs_table(listed, names, configs)


@st.cache_data(show_spinner=False, max_entries=16)
def load_runs(store_path: str, key: tuple, _store: RunStore):
    """The runs of ``key`` (one ``(id, n_points, status, finished_at, last step, name)`` per run:
    what changes while a run is still being written, and its shown name) from the store, read in one go
    (:meth:`RunStore.get_runs`)."""
    return _store.get_runs([k[0] for k in key])


# What a rerun computes from the selected runs, cached by the runs' key (the store's path and, per
# run, what changes while it is written: see load_runs) and the settings; ``_runs``/``_sets`` are the
# data the key names (not hashed).
@st.cache_data(show_spinner=False, max_entries=16)
def _points(key: tuple, by_label: bool, show_diverged: bool, _runs):
    """:func:`mopo_core.experiments.compare_runs.points_frame` with each point's standard errors
    (columns ``se0..se{K-1}``, NaN where none: :func:`app.presenters.compare.standard_errors`)."""
    pts = compare_runs.points_frame(_runs, by_label, include_diverged=show_diverged)
    se = compare_presenter.standard_errors(_runs, pts)
    return pts.assign(**{f"se{j}": se[:, j] for j in range(se.shape[1])})


@st.cache_data(show_spinner=False, max_entries=16)
def _instance_facts(key: tuple, _runs):
    """Per run: its objectives' names and its instance's reference point (both rebuild the
    instance from the run's config: a structure per run)."""
    return ([compare_runs.objective_names_for(r) for r in _runs],
            [compare_runs.reference_point_for(r) for r in _runs])


@st.cache_data(show_spinner=False, max_entries=16)
def _dominance(key: tuple, by_label: bool, show_diverged: bool, _sets):
    counts = compare_presenter.dominance_counts(_sets)
    return counts, compare_runs.dominance_table(counts, _sets)


@st.cache_data(show_spinner=False, max_entries=16)
def _hypervolume(key: tuple, by_label: bool, show_diverged: bool, ref: tuple, _sets):
    return compare_runs.hypervolume_table(_sets, np.array(ref))


@st.cache_data(show_spinner=False, max_entries=16)
def _attainment(key: tuple, seed_keys: tuple, by_label: bool, show_diverged: bool, _runs):
    items = compare_runs.seed_attainment(_runs, ignore=seed_keys, by_label=by_label, include_diverged=show_diverged)
    return items, compare_runs.attainment_table(items)


@st.cache_data(show_spinner=False, max_entries=16)
def _point_sets(key: tuple, by_label: bool, show_diverged: bool, _pts):
    return compare_runs.point_sets(_pts)


def _create_examples():
    ids = compare_presenter.create_example_runs(run_store())
    st.session_state[RUNS] = ids["sweeps"] + ids["baselines"]
    st.session_state[PINNED] = []
    st.session_state["compare_created"] = ids


def _clear_selection():
    st.session_state[PINNED] = []


# --- the runs table: rename, tag, hide, delete (app.presenters.compare writes the store) -------------
TABLE_GEN, TABLE_SHOWN, TABLE_NOTE = "compare_table_gen", "compare_table_shown", "compare_table_note"
DELETE_IDS, DELETE_PENDING = "compare_delete_ids", "compare_delete_pending"
#: Rows of the runs table shown at once (the filter runs over every run; the editor gets one page).
TABLE_PAGE_ROWS = 50


def _editor_key() -> str:
    """The table editor's key: a new one after each save, so the saved edits are not replayed."""
    return f"compare_table_{st.session_state.get(TABLE_GEN, 0)}"


def _save_table(names: dict):
    """Write the table's edits (names, tags, hide) to the store and start a fresh editor."""
    edits = (st.session_state.get(_editor_key()) or {}).get("edited_rows") or {}
    try:
        done = compare_presenter.apply_edits(run_store(), st.session_state[TABLE_SHOWN], edits, names)
        st.session_state[TABLE_NOTE] = (True, "; ".join(done) or "nothing changed")
    except (ValueError, KeyError) as exc:
        st.session_state[TABLE_NOTE] = (False, str(exc))
    st.session_state[TABLE_GEN] = st.session_state.get(TABLE_GEN, 0) + 1


def _ask_delete():
    st.session_state[DELETE_PENDING] = list(st.session_state.get(DELETE_IDS) or [])


def _cancel_delete():
    st.session_state.pop(DELETE_PENDING, None)


def _delete():
    done = compare_presenter.delete_runs(run_store(), st.session_state.pop(DELETE_PENDING, []))
    st.session_state[DELETE_IDS] = []
    st.session_state[TABLE_NOTE] = (True, "; ".join(done))
    st.session_state[TABLE_GEN] = st.session_state.get(TABLE_GEN, 0) + 1


def runs_table_panel(listed: pd.DataFrame, names: dict, table: pd.DataFrame, labels: dict) -> bool:
    """The runs table (sort by a column header, filter, edit name / tags / hide, delete with a
    confirmation); returns whether hidden runs are shown (in the run picker too)."""
    note = st.session_state.pop(TABLE_NOTE, None)
    # Open while the user works in it: after a save or delete, while runs are chosen for deletion.
    working = (note is not None or DELETE_PENDING in st.session_state or bool(st.session_state.get(DELETE_IDS))
               or st.session_state.get(TABLE_GEN, 0) > 0)
    with st.expander(f"Runs table: {len(listed)} run(s) in the store · sort, filter, rename, tag, hide, delete",
                     expanded=working):
        if note is not None:
            (st.success if note[0] else st.error)(note[1])
        cols = st.columns([3, 2, 2, 2])
        text = cols[0].text_input("Filter (id, name, kind, method, tags)", key="compare_table_filter")
        kinds = cols[1].multiselect("Kind", sorted(set(table["kind"])), key="compare_table_kinds")
        statuses = cols[2].multiselect("Status", sorted(set(table["status"])), key="compare_table_statuses")
        show_hidden = cols[3].toggle("Show hidden", key="compare_show_hidden",
                                     help="Hidden runs are left out of this table and of the run picker.")
        matching = compare_presenter.filter_table(table, text, kinds, statuses, show_hidden)
        pages = max(1, -(-len(matching) // TABLE_PAGE_ROWS))
        page = st.number_input(f"Page (of {pages}; {TABLE_PAGE_ROWS} rows a page, {len(matching)} matching run(s))",
                               min_value=1, max_value=pages, value=1, step=1,
                               key=f"compare_table_page_{pages}") if pages > 1 else 1
        shown = compare_presenter.page_of(matching, page, TABLE_PAGE_ROWS)[0]
        st.session_state[TABLE_SHOWN] = shown
        st.data_editor(shown, key=_editor_key(), hide_index=True, width="stretch",
                       disabled=[c for c in shown.columns if c not in compare_presenter.EDITABLE],
                       column_config={"hide": st.column_config.CheckboxColumn("hide", help="Hide from the run picker"),
                                      "name": st.column_config.TextColumn("name", help="Click to rename"),
                                      "tags": st.column_config.TextColumn("tags", help="Comma-separated")})
        st.button("Save changes", key="compare_table_save", on_click=_save_table, args=(names,),
                  help="Store the names, tags and hide marks edited above.")
        chosen = st.session_state.get(DELETE_IDS) or []  # kept while the filter changes
        st.multiselect("Runs to delete (with their checkpoint files; the runs the filter matches)",
                       list(dict.fromkeys([*(int(i) for i in matching["id"]), *(i for i in chosen if i in labels)])),
                       format_func=labels.get, key=DELETE_IDS)
        st.button("Delete…", key="compare_delete", on_click=_ask_delete,
                  disabled=not st.session_state.get(DELETE_IDS))
        if st.session_state.get(DELETE_PENDING):
            kept, files, refused = compare_presenter.delete_plan(run_store(), st.session_state[DELETE_PENDING])
            st.warning("Delete " + (f"run(s) {', '.join(map(str, kept))} from {run_store().path}" if kept else
                                    "nothing") + (f" and the checkpoint file(s) {', '.join(map(str, files))}"
                                                  if files else "") + "? This cannot be undone."
                       + ("".join(f" Refused: {r}." for r in refused)))
            yes, no = st.columns(2)
            yes.button("Yes, delete", key="compare_delete_yes", on_click=_delete, type="primary", disabled=not kept)
            no.button("Cancel", key="compare_delete_no", on_click=_cancel_delete)
    return show_hidden
# --- end runs table


# --- import points (CSV or JSON): app.presenters.compare.import_upload records them -----------
IMPORT_FILE, IMPORT_MESSAGE = "compare_import_file", "compare_import_message"


def _import_upload():
    """On a new upload: record its points and select the new runs (once per upload: a callback)."""
    upload = st.session_state.get(IMPORT_FILE)
    if upload is None:
        return
    ids, message = compare_presenter.import_upload(run_store(), upload.name, upload.getvalue())
    st.session_state[IMPORT_MESSAGE] = (bool(ids), message)
    if ids:
        st.session_state[RUNS] = ids
        st.session_state[PINNED] = []
# --- end import points


def _sync_pinned(chart_keys: list[str], valid: set) -> list[tuple[int, int]]:
    """Update the pinned selection from the charts' selection states (a chart whose selection
    changed since the last run and is not empty wins); return the pinned points still shown."""
    last = st.session_state.setdefault(LAST_EVENTS, {})
    for key in chart_keys:
        state = st.session_state.get(key)
        points = []
        if state is not None:
            try:
                points = state["selection"]["points"]
            except (KeyError, TypeError):
                points = []
        keys = compare_presenter.selection_keys(points)
        signature = json.dumps(keys)
        if keys and signature != last.get(key):
            st.session_state[PINNED] = keys
        last[key] = signature
    return [tuple(p) for p in st.session_state.get(PINNED, []) if tuple(p) in valid]


def _fmt_point(r) -> str:
    return f"({', '.join(f'{x:.4f}' for x in r)})"


# ----------------------------------------------------------------------------- figures


def _customdata(d: pd.DataFrame, k: int) -> list:
    columns = [d[f"v{j}"].to_numpy(dtype=float) for j in range(k)]
    bars = [compare_presenter.SE_BAR * d[f"se{j}"].to_numpy(dtype=float) for j in range(k)]
    values = [" · ".join(f"V{j}={x:.4f}" + (f" ± {b:.4f}" if np.isfinite(b) else "")
                         for j, (x, b) in enumerate(zip(row, half))) for row, half in zip(zip(*columns), zip(*bars))]
    values = [v + (f" (± {compare_presenter.SE_BAR} SE)" if "±" in v else "") for v in values]
    status = [("non-dominated in the union" if f else "dominated")
              + ("; its threshold could not be met (infeasible)" if ok is False else "")
              for f, ok in zip(d["on_front"], d["feasible"])]
    return [[int(r), int(i), lab, par, st_, val, ser] for r, i, lab, par, st_, val, ser in
            zip(d["run_id"], d["idx"], d["label"], d["params_text"], status, values, d["series"])]


HOVER = ("<b>%{customdata[2]}</b> · run %{customdata[0]}, point %{customdata[1]}<br>%{customdata[3]}<br>"
         "%{customdata[5]}<br>%{customdata[4]}<extra>%{customdata[6]}</extra>")


def _error_bar(half_widths: np.ndarray, colour: str) -> dict:
    """Plotly error bars of half-widths ``half_widths`` (P,) (NaN: no bar) in ``colour``."""
    return dict(type="data", array=half_widths, visible=True, color=colour, thickness=1.2, width=3)


def series_traces(pts, colours, xk, yk, k) -> list[dict]:
    """The front figure's trace of each series (V_xk across, V_yk up), as plain dicts: the union's
    non-dominated points as outlined diamonds, the dominated ones faded, infeasible ones open;
    points that record standard errors with ±1.96 SE bars (``error_x``/``error_y``; NaN: none)."""
    traces = []
    shown = pts[pts["finite"]]
    for series, d in shown.groupby("series", sort=False):
        front = d["on_front"].to_numpy()
        symbols = np.where(front, "diamond", "circle").astype(object)
        symbols[d["feasible"].map(lambda v: v is False).to_numpy(dtype=bool)] += "-open"  # None: unknown
        traces.append(dict(
            type="scatter", x=d[f"v{xk}"].to_numpy(), y=d[f"v{yk}"].to_numpy(), mode="markers", name=series,
            legendgroup=series,
            marker=dict(color=colours[series], size=np.where(front, 12, 8),
                        symbol=symbols.tolist(),
                        opacity=np.where(front, 1.0, 0.35),
                        line=dict(color="black", width=np.where(front, 1.5, 0.0))),
            customdata=_customdata(d, k), hovertemplate=HOVER))
        for axis, j in (("error_x", xk), ("error_y", yk)):
            half = compare_presenter.SE_BAR * d[f"se{j}"].to_numpy(dtype=float)
            if np.isfinite(half).any():
                traces[-1][axis] = _error_bar(half, colours[series])
    return traces


@st.cache_data(show_spinner=False, max_entries=32)
def _series_traces(key: tuple, by_label: bool, show_diverged: bool, colour_by: str, xk: int, yk: int, k: int,
                   _pts, _colours) -> list[dict]:
    """:func:`series_traces`, cached by the runs' key and the settings that make ``_pts`` and ``_colours``."""
    return series_traces(_pts, _colours, xk, yk, k)


def front_figure(pts, colours, xk, yk, names, ref, source, pinned, title, staircase=True, height=520, legend=True,
                 values_kind=compare_runs.TABULAR, traces=None):
    """Scatter of every series (V_xk across, V_yk up; ``traces``: their :func:`series_traces` when
    already made); the union's non-dominated points as outlined diamonds, the dominated ones faded;
    the HV reference point and the pinned points."""
    k = len(ref)
    shown = pts[pts["finite"]]
    fig = _light_figure(series_traces(pts, colours, xk, yk, k) if traces is None else traces)
    values = shown[[f"v{j}" for j in range(k)]].to_numpy()
    lo = np.minimum(values.min(axis=0), ref) if len(values) else ref
    hi = np.maximum(values.max(axis=0), ref) if len(values) else ref + 0.01
    pad = 0.03 * np.maximum(hi - lo, 1e-3)
    if staircase and k == 2 and shown["on_front"].any():
        corners = shown.loc[shown["on_front"], [f"v{xk}", f"v{yk}"]].to_numpy()
        path = compare_presenter.staircase(corners, (lo[xk] - pad[xk], lo[yk] - pad[yk]))
        fig.add_scatter(x=path[:, 0], y=path[:, 1], mode="lines", name="union Pareto front (its staircase)",
                        line=dict(color="black", width=1, dash="dot"), hoverinfo="skip")
    for name, marker in (("non-dominated in the union (outlined ◆)", dict(symbol="diamond", size=12, color="grey",
                                                                        line=dict(color="black", width=1.5))),
                         ("dominated (faded ●)", dict(symbol="circle", size=8, color="grey", opacity=0.35)),
                         *([("threshold not met: infeasible (open marker)",
                             dict(symbol="circle-open", size=9, color="grey"))]
                           if shown["feasible"].map(lambda v: v is False).any() else [])):
        fig.add_scatter(x=[None], y=[None], mode="markers", name=name, marker=marker, legendgroup="style")
    fig.add_scatter(x=[ref[xk], ref[xk], hi[xk] + pad[xk]], y=[hi[yk] + pad[yk], ref[yk], ref[yk]], mode="lines",
                    line=dict(color="black", dash="dash", width=1), showlegend=False, hoverinfo="skip",
                    legendgroup="ref")
    fig.add_scatter(x=[ref[xk]], y=[ref[yk]], mode="markers", name=f"HV reference point r = {_fmt_point(ref)}",
                    legendgroup="ref", marker=dict(symbol="x", size=13, color="black"),
                    hovertemplate=f"HV reference point r = {_fmt_point(ref)}<br>{source}<extra></extra>")
    chosen = set(pinned)
    sel = shown[[p in chosen for p in zip(shown["run_id"].tolist(), shown["idx"].tolist())]]
    if len(sel):
        fig.add_scatter(x=sel[f"v{xk}"], y=sel[f"v{yk}"], mode="markers", name="selected point(s)",
                        marker=dict(symbol="circle-open", size=24, color="crimson", line=dict(width=3)),
                        customdata=_customdata(sel, k), hovertemplate=HOVER)
    note = f"HV reference point r = {_fmt_point(ref)}" + (f": {source}" if legend else "")
    style(fig, f"{title}<br><sup>{note}</sup>",
          x_title=_axis(names, xk, "x", values_kind), y_title=_axis(names, yk, "y", values_kind), height=height)
    _convention(fig, values_kind, bars=bool(np.isfinite(shown[[f"se{xk}", f"se{yk}"]].to_numpy(dtype=float)).any()))
    fig.update_layout(margin=dict(t=110))
    if legend:
        return fig.update_layout(height=height)
    fig.update_layout(showlegend=False)
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def parallel_figure(pts, colours, names, ref, pinned):
    """Parallel coordinates (K >= 3): one line per point, coloured by series; the pinned points in
    crimson and drawn last; the HV reference point as a grey line."""
    k = len(ref)
    shown = pts[pts["finite"]].copy()
    series = list(dict.fromkeys(shown["series"]))
    n = len(series)
    shown["code"] = shown["series"].map({s: i for i, s in enumerate(series)}).astype(float)
    pinned_set = set(pinned)
    chosen = np.array([p in pinned_set for p in zip(shown["run_id"].tolist(), shown["idx"].tolist())], dtype=bool)
    shown["colour"] = np.where(chosen, n + 1.0, shown["code"])
    shown = pd.concat([shown[~chosen], shown[chosen]])  # drawn last, on top
    ref_row = {f"v{j}": ref[j] for j in range(k)} | {"code": float(n), "colour": float(n), "on_front": False}
    rows = pd.concat([pd.DataFrame([ref_row]), shown], ignore_index=True)
    cols = [colours[s] for s in series] + ["grey", "crimson"]
    m = len(cols)
    scale = [x for i, c in enumerate(cols) for x in ([i / m, c], [(i + 1) / m, c])]
    short_of = dict(zip(pts["series"], pts["short"]))
    dims = [dict(label="series", values=rows["code"], tickvals=list(range(n + 1)),
                 ticktext=[short_of[s] for s in series] + ["HV ref r"])]
    dims += [dict(label=f"V{j} {names[j]} ↑", values=rows[f"v{j}"]) for j in range(k)]
    dims.append(dict(label="in the union front", values=rows["on_front"].astype(float), tickvals=[0, 1],
                     ticktext=["dominated", "non-dominated"], range=[-0.1, 1.1]))
    fig = go.Figure(go.Parcoords(line=dict(color=rows["colour"], colorscale=scale, cmin=-0.5, cmax=m - 0.5),
                                 dimensions=dims))
    for s in series:
        fig.add_scatter(x=[None], y=[None], mode="lines", name=s, line=dict(color=colours[s], width=4))
    fig.add_scatter(x=[None], y=[None], mode="lines", name=f"HV reference point r = {_fmt_point(ref)}",
                    line=dict(color="grey", width=4))
    if chosen.any():
        fig.add_scatter(x=[None], y=[None], mode="lines", name="selected point(s)", line=dict(color="crimson", width=4))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    style(fig, "Parallel coordinates: every point of the selected runs (drag along an axis to filter)", height=480)
    fig.update_layout(margin=dict(t=140, l=120, r=80), plot_bgcolor="rgba(0,0,0,0)")
    return fig.update_layout(height=480)


def dominance_figure(counts: pd.DataFrame, sets: dict, short_of: dict) -> go.Figure:
    names = list(counts.index)
    shorts = [short_of[s] for s in names]
    z = counts.to_numpy()
    sizes = np.array([len(sets[s]) for s in names], dtype=np.int64)
    # Per cell (A's point count, B's): numbers, not a text per cell (40 series: 1,600 texts).
    sizes_ab = np.stack(np.broadcast_arrays(sizes[:, None], sizes[None, :]), axis=-1)
    fig = _light_figure([dict(type="heatmap", z=z, x=shorts, y=shorts, text=z, texttemplate="%{text}",
                              colorscale="Blues", customdata=sizes_ab.tolist(),
                              hovertemplate="A = %{y}<br>B = %{x}<br>%{z} of A's %{customdata[0]} points dominate "
                                            "at least one of B's %{customdata[1]} points<extra></extra>",
                              colorbar=dict(title=dict(text="points of A")))])
    fig.update_yaxes(autorange="reversed")
    height = max(360, 160 + 40 * len(names))
    style(fig, "Dominance: how many of A's points dominate at least one point of B",
          x_title="B (the series dominated)", y_title="A (the series whose points dominate)", height=height,
          subtitle="Cells count points; a point dominates another when it is at least as good in every objective "
                   "and better in one (all maximised)")
    return fig.update_layout(height=height)


def hypervolume_figure(table: pd.DataFrame, colours: dict, short_of: dict, ref, source) -> go.Figure:
    rows = table[table["series"] != "union of all"]
    union = float(table.loc[table["series"] == "union of all", "hypervolume"].iloc[0])
    traces = []
    for row in rows.to_dict("records"):
        share = "–" if np.isnan(row["share_of_union"]) else f"{row['share_of_union']:.1%}"
        traces.append(dict(type="bar", x=[short_of[row["series"]]], y=[row["hypervolume"]], name=row["series"],
                           marker=dict(color=colours[row["series"]]), text=[share], textposition="outside",
                           hovertemplate=(f"{row['series']}<br>hypervolume %{{y:.5g}} ({share} of the union's)<br>"
                                          f"{row['beyond_reference']} of {row['points']} points beyond "
                                          "r<extra></extra>")))
    fig = _light_figure(traces)
    fig.add_hline(y=union, line_dash="dash", line_color="black")
    fig.add_scatter(x=[None], y=[None], mode="lines", line=dict(color="black", dash="dash"),
                    name=f"union of all: {union:.5g}")
    style(fig, f"Hypervolume per series above r = {_fmt_point(ref)}<br><sup>r: {source}</sup>",
          x_title="series", y_title="hypervolume above r (higher is better ↑)", height=440,
          subtitle="Hypervolume: the area (K = 2) or volume between r and the points a series dominates; bar labels: "
                   "its share of the union's")
    fig.update_layout(margin=dict(t=110), showlegend=True)
    top = max(union, float(rows["hypervolume"].max()) if len(rows) else 0.0)
    if top > 0:
        fig.update_yaxes(range=[0, 1.15 * top])
    else:  # a [0, 1e-12] axis would read "1p": say it instead
        fig.update_yaxes(range=[0, 1])
        fig.add_annotation(text="every hypervolume is 0: no point lies beyond r in every objective",
                           x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(color="grey"))
    return fig.update_layout(height=440)


def attainment_figure(items, pts, names, ref, source, values_kind=compare_runs.TABULAR, colour_by="run") -> go.Figure:
    """Per seed group: each seed's points (faint), the 25-75% band and the median front (V1
    across, V0 up); a group in the colour of its first run (or its method)."""
    traces = []
    values = pts.loc[pts["finite"], ["v0", "v1"]].to_numpy()
    lo = np.minimum(values.min(axis=0), ref)
    floor = (lo[1] - 0.01, lo[0] - 0.01)  # (x = V1, y = V0)
    for g, item in enumerate(items):
        colour = compare_presenter.series_colour(item["run_ids"][0], item["label"] or "", colour_by)
        name = item["name"]
        for j, (run_id, seed, s) in enumerate(zip(item["run_ids"], item["seeds"], item["sets"])):
            seed_text = ", ".join(f"{k}={v}" for k, v in seed.items())
            traces.append(dict(type="scatter", x=s[:, 1], y=s[:, 0], mode="markers",
                               name=f"{name}: run {run_id} ({seed_text})",
                               marker=dict(color=colour, size=7, opacity=0.5,
                                           symbol=SEED_SYMBOLS[j % len(SEED_SYMBOLS)]),
                               hovertemplate=(f"run {run_id} ({seed_text})<br>{item['label'] or ''}<br>"
                                              "V1=%{x:.4f}<br>V0=%{y:.4f}<extra></extra>")))
        surf = item["surfaces"]
        upper = compare_presenter.staircase(surf[0.25][:, ::-1], floor)
        lower = compare_presenter.staircase(surf[0.75][:, ::-1], floor)
        if len(upper):
            band = np.vstack([upper, lower[::-1]]) if len(lower) else np.vstack([upper, [floor]])
            traces.append(dict(type="scatter", x=band[:, 0], y=band[:, 1], mode="lines", fill="toself",
                               line=dict(width=0), fillcolor=_alpha(colour, 0.18),
                               name=f"{name}: 25–75% attainment band", legendgroup=f"g{g}band", hoverinfo="skip"))
        median = compare_presenter.staircase(surf[0.5][:, ::-1], floor)
        if len(median):
            traces.append(dict(type="scatter", x=median[:, 0], y=median[:, 1], mode="lines",
                               line=dict(color=colour, width=3), name=f"{name}: median front (50%)",
                               hovertemplate="median front<br>V1=%{x:.4f}<br>V0=%{y:.4f}<extra></extra>"))
    fig = _light_figure(traces)
    fig.add_scatter(x=[ref[1]], y=[ref[0]], mode="markers", name=f"HV reference point r = {_fmt_point(ref)}",
                    marker=dict(symbol="x", size=13, color="black"),
                    hovertemplate=f"HV reference point r<br>{source}<extra></extra>")
    style(fig, f"Attainment over seeds: median front and 25–75% band<br><sup>HV reference point r = "
               f"{_fmt_point(ref)}: {source}</sup>", x_title=_axis(names, 1, "x", values_kind),
          y_title=_axis(names, 0, "y", values_kind), height=520)
    _convention(fig, values_kind)
    fig.update_layout(margin=dict(t=110))
    return fig.update_layout(height=520)


def _alpha(colour: str, alpha: float) -> str:
    r, g, b = plotly.colors.hex_to_rgb(colour) if colour.startswith("#") else plotly.colors.unlabel_rgb(colour)
    return f"rgba({int(r)}, {int(g)}, {int(b)}, {alpha})"


def policy_figure(details: list[dict]) -> tuple[go.Figure, pd.DataFrame]:
    fig = go.Figure()
    rows = []
    for d in details:
        policy = d["policy"]
        if policy is None:
            continue
        m, n = policy.shape
        x = [f"y{y}" if m == 1 else f"x{p}·y{y}" for p in range(m) for y in range(n)]
        name = f"run {d['run_id']} · point {d['idx']} · {d['label']}"
        fig.add_bar(x=x, y=policy.ravel(), name=name, marker_color=PALETTE[len(fig.data) % len(PALETTE)],
                    hovertemplate=f"{name}<br>%{{x}}<br>π=%{{y:.4f}}<extra></extra>")
        rows += [{"run_id": d["run_id"], "idx": d["idx"], "label": d["label"], "prompt": p, "response": y,
                  "probability": float(policy[p, y])} for p in range(m) for y in range(n)]
    ref = next((d["reference_policy"] for d in details if d["reference_policy"] is not None), None)
    if ref is not None:
        m, n = ref.shape
        fig.add_scatter(x=[f"y{y}" if m == 1 else f"x{p}·y{y}" for p in range(m) for y in range(n)], y=ref.ravel(),
                        mode="markers", name="reference policy π_ref", marker=dict(symbol="line-ew-open", size=18,
                                                                                   color="black"),
                        hovertemplate="π_ref<br>%{x}<br>%{y:.4f}<extra></extra>")
    style(fig, "Policies of the selected points (their output: a distribution over responses)",
          x_title="response y (x·y: prompt x, response y)", y_title="probability π(y|x)", height=380,
          subtitle=PROBABILITY_SUBTITLE)
    fig.update_layout(barmode="group")
    return fig.update_layout(height=380), pd.DataFrame(rows)


def curves_figure(run, panels: dict[str, list[str]], table: pd.DataFrame) -> go.Figure:
    """The run's training curves, one panel each: loss; the multipliers λ_j; each constraint
    estimate against its threshold (same colour, threshold dashed)."""
    order = [p for p in ("loss", "lambda", "constraint") if p in panels]
    titles = {"loss": "training loss (lower is better ↓)", "lambda": "multipliers λ_j",
              "constraint": "constraint estimate vs threshold"}
    fig = make_subplots(rows=1, cols=len(order), subplot_titles=[titles[p] for p in order], horizontal_spacing=0.08)
    for col, panel in enumerate(order, start=1):
        for name in panels[panel]:
            j = name.rsplit("_", 1)[-1]
            threshold = name.startswith("threshold_")
            colour = PALETTE[int(j) % len(PALETTE)] if j.isdigit() else PALETTE[0]
            label = {"loss": "loss"}.get(name, f"λ_{j}" if name.startswith("lambda_") else
                                          f"threshold b_{j}" if threshold else f"constraint estimate V{j}")
            d = table[["step", name]].dropna()
            fig.add_scatter(x=d["step"], y=d[name], mode="lines+markers" if len(d) < 30 else "lines", name=label,
                            line=dict(color=colour, dash="dash" if threshold else "solid"),
                            hovertemplate=f"{label}<br>step %{{x}}<br>%{{y:.4f}}<extra></extra>", row=1, col=col)
        fig.update_xaxes(title_text="training step", row=1, col=col)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    if "constraint" in order:
        fig.update_yaxes(title_text="win-rate (batch estimate; ≥ b_j wanted)", row=1, col=order.index("constraint") + 1)
    fig.update_layout(title=dict(text=f"Training curves of run {run.id}<br><sup>constraint estimate V_j: the step's "
                                      "batch estimate of secondary objective j's win-rate; MOPO raises λ_j while it "
                                      "is below the threshold b_j</sup>"), height=400, margin=dict(t=110))
    return fig


def overlay_figure(curves: pd.DataFrame, colours: dict, titles: dict, metric: str, smoothing: float) -> go.Figure:
    """One metric of several runs on one axis: each run's raw series faint, its smoothed series
    (EMA) in the run's colour."""
    fig = go.Figure()
    for run_id, d in curves.groupby("run_id", sort=False):
        name = f"#{run_id} {titles[run_id]}"
        if smoothing > 0:
            fig.add_scatter(x=d["step"], y=d["value"], mode="lines", name=f"{name} (raw)", legendgroup=name,
                            showlegend=False, line=dict(color=colours[run_id], width=1), opacity=0.3,
                            hovertemplate=f"{name}<br>step %{{x}}<br>raw %{{y:.4f}}<extra></extra>")
        fig.add_scatter(x=d["step"], y=d["smoothed"], mode="lines", name=name, legendgroup=name,
                        line=dict(color=colours[run_id], width=2),
                        hovertemplate=f"{name}<br>step %{{x}}<br>{metric} %{{y:.4f}}<extra></extra>")
    what = f"smoothed (EMA {smoothing:g}; raw series faint)" if smoothing > 0 else "raw"
    style(fig, f"Training curves of the selected runs: {metric}", x_title="training step", y_title=metric,
          height=420, subtitle=f"{metric} as logged at each training step, {what}")
    return fig.update_layout(height=420, margin=dict(t=110))


def lm_point_details(d: dict, run, key: str):
    """An LM point: its values and scores, config, training curves and generations side by side."""
    names = list(d["objectives"] or [f"objective {j}" for j in range(len(d["values"]))])
    extra = d["extra"]
    stderr = extra.get("win_rate_stderr") or [None] * len(names)
    mine, theirs = extra.get("mean_scores") or [None] * len(names), extra.get("reference_scores") or [None] * len(names)
    values = pd.DataFrame({"objective": [f"V{j} {n}" for j, n in enumerate(names)],
                           "win-rate vs reference": list(d["values"].values()),
                           "± standard error": stderr, "mean score (policy)": mine,
                           "mean score (reference)": theirs})
    st.markdown("**Metrics** (win-rates of the policy's samples against the reference model's on the held-out "
                "prompts; 0.5 = a tie; mean scores of each model's samples)")
    show_table(values, f"compare_lm_values_{key}", readable=True)
    rest = {k: v for k, v in extra.items() if k not in ("win_rate_stderr", "mean_scores", "reference_scores",
                                                        "objectives")}
    cols = st.columns(2)
    cols[0].markdown("**Parameters** of the point" + (" and its extra" if rest else ""))
    cols[0].dataframe(compare_presenter.settings_table({**(d["params"] or {}), **rest}), hide_index=True,
                      width="stretch", height=min(36 * (1 + len(d["params"] or {}) + len(rest)) + 4, 280))
    cols[1].markdown(f"**Run config** (run {run.id}, {run.status})")
    cols[1].dataframe(compare_presenter.settings_table(d["config"] or {}), hide_index=True, width="stretch", height=280)
    with cols[1].expander("Run config as JSON"):
        st.json(d["config"])

    panels = compare_presenter.training_curves(run)
    if panels:
        table = compare_presenter.metric_table(run)
        if {"loss", "lambda", "constraint"} & set(panels):
            show_figure(curves_figure(run, panels, table), f"compare_curves_{key}", data=table)
        else:
            show_table(table, f"compare_metrics_{key}", readable=True)
    else:
        st.caption(f"Run {run.id} logged no metric series.")

    scorer = compare_presenter.sample_scorer(run)
    gens = compare_presenter.generations_frame(d, scorer)
    st.markdown("**Generations: this policy beside the reference model, same prompts**")
    if gens.empty:
        st.caption("This point stores no generations (runs recorded before generations were kept with their point, "
                   "or a comparison run); re-evaluate its checkpoint with `python -m mopo_core evaluate --run "
                   f"{run.id}` to record them.")
        return
    kept = d.get("samples_kept") or {}
    note = (f"{kept.get('prompts')} of the {kept.get('of_prompts')} evaluation prompts, {kept.get('per_prompt')} of "
            f"the {kept.get('of_per_prompt')} samples per prompt and model are stored with the point. ") if kept else ""
    st.caption(note + ("Scores: the text task's programmatic scorers (all in [0, 1], higher is better)."
                       if scorer is not None else "No programmatic scorer for this run's task: generations only."))
    prompts = list(dict.fromkeys(gens["prompt"]))
    prompt = st.selectbox("Prompt", prompts, key=f"compare_prompt_{key}")
    rows = gens[gens["prompt"] == prompt]
    label = f"{d['label']} policy (run {d['run_id']}, point {d['idx']})"
    for col, who, title in zip(st.columns(2), ("policy", "reference"), (label, "reference model (same prompt)")):
        with col:
            st.markdown(f"**{title}**")
            shown = rows[["sample", who, *[c for c in rows.columns if c.startswith(f"{who} ")]]]
            shown = shown.rename(columns={who: "generation", **{c: c.split(" ", 1)[1] for c in shown.columns
                                                                   if c.startswith(f"{who} ")}})
            shown = shown.set_index("sample").rename_axis("#")
            scores = [c for c in shown.columns if c != "generation"]
            st.table(shown.style.format({c: "{:.3f}" for c in scores}, na_rep="–"))  # a table wraps long text
            if scores:
                means = shown[scores].mean()
                st.caption("mean on this prompt: " + " · ".join(f"{n} {v:.3f}" for n, v in means.items()))
    with st.expander("All stored generations (table and exports)"):
        show_table(gens, f"compare_generations_{key}")


# ----------------------------------------------------------------------------- page

st.title("Compare runs: fronts, dominance, hypervolume, attainment over seeds")
store = run_store()
listed, progress, configs, names, labels, table = _listing(str(store.path), store.marker(), store)
show_hidden = runs_table_panel(listed, names, table, labels) if len(listed) else False  # first: a stable place

if "compare_created" in st.session_state:
    ids = st.session_state.pop("compare_created")
    st.success(f"Created example runs {', '.join(str(i) for v in ids.values() for i in v)} in {store.path}; "
               "the two-objective ones are selected.")

# --- import points (CSV or JSON)
with st.sidebar.expander("Import points (CSV or JSON)", expanded=IMPORT_MESSAGE in st.session_state):
    st.caption("Points evaluated elsewhere: a `method` column, one `value.<objective>` column per objective "
               "(maximised), optional `se.<objective>`, `param.<name>`, `run` and `seed`; or JSON "
               "`{\"objectives\": [...], \"points\": [...]}`. The format: README, \"Importing your own points\"; "
               "an example: docs/examples/imported_points.csv. One run per run and seed.")
    st.file_uploader("Points file", type=["csv", "json"], key=IMPORT_FILE, on_change=_import_upload)
    if IMPORT_MESSAGE in st.session_state:
        imported, message = st.session_state.pop(IMPORT_MESSAGE)
        (st.success if imported else st.error)(message)
# --- end import points

with_points = listed[(listed["n_points"] > 0) & (show_hidden | ~listed["hidden"])]

if (listed["n_points"] >= 2).sum() == 0:
    st.info(f"The run store ({store.path}) has no run with several points yet. Record some with "
            "`python -m mopo_core sweep --seed 0` (and seeds 1, 2), `python -m mopo_core suite`, or create "
            "example runs here: three MOPO threshold sweeps on bt_conflict (200 sampled comparisons, data seeds "
            "0, 1, 2), the six baselines on seed 0's data, and a three-objective sweep (about a second).")
    st.button("Create example runs", key="create_examples", on_click=_create_examples, type="primary")
    if with_points.empty:
        st.stop()

options = [int(i) for i in with_points["id"]]
if RUNS not in st.session_state:
    st.session_state[RUNS] = compare_presenter.default_selection(with_points, configs)
else:
    # The browser holds the picked runs by their labels, which change with a run's name or point count: a label
    # sent from before such a change comes back as text (read its id); when a picked run's label changed, the
    # picker is sent its value again, with the new labels.
    picked = [i for i in dict.fromkeys(map(compare_presenter.label_id, st.session_state[RUNS])) if i in options]
    if picked != st.session_state[RUNS] or [labels[i] for i in picked] != st.session_state.get(RUN_LABELS):
        st.session_state[RUNS] = picked
st.session_state[RUN_LABELS] = [labels[i] for i in st.session_state[RUNS]]

with st.sidebar:
    st.subheader("Runs")
    selected = st.multiselect("Runs to compare (id · kind · name · points)", options, format_func=labels.get,
                              key=RUNS, help="Runs recorded by the CLI, the Sweep page or the examples.")
    by_label = st.toggle("One series per method label", value=True, key="compare_by_label",
                         help="Suite runs hold several methods (labels): draw each as its own series.")
    colour_by = st.radio("Colour by", list(compare_presenter.COLOUR_BY), key="compare_colour_by", horizontal=True,
                         help="Run: each run keeps its colour whatever else is selected (a run drawn one series per "
                              "method: its methods' colours). Method: each method label keeps its colour (MOPO "
                              "runs over seeds share it).")
    if (listed["n_points"] >= 2).sum() > 0:
        with st.expander("Example runs"):
            st.caption("Records five more runs (MOPO sweeps over three data seeds, the baselines, a K = 3 sweep).")
            st.button("Create example runs", key="create_examples_sidebar", on_click=_create_examples)

if not selected:
    st.info("Pick runs to compare in the sidebar.")
    st.stop()

status = listed.set_index("id")


def _key_of(run_ids) -> tuple:
    """The cache key of these runs: the store, then per run what changes while it is written and
    its shown name (a rename redraws its series under the new name)."""
    return (str(store.path), *((int(i), int(status.at[i, "n_points"]), str(status.at[i, "status"]),
                                status.at[i, "finished_at"], progress.get(int(i), {}).get("step"),
                                status.at[i, "name"]) for i in run_ids))


runs = [dataclasses.replace(r, name=names[r.id]) for r in load_runs(str(store.path), _key_of(selected)[1:], store)]
by_scale = compare_runs.group_by_scale(runs)
if len(by_scale) > 1:
    st.warning("Language-model runs and tabular runs are not overlaid: their values are win-rates against "
               "different baselines ("
               + "; ".join(f"{compare_presenter.SCALES[s]}: runs {', '.join(str(r.id) for r in g)}"
                           for s, g in by_scale.items()) + "). Choose which to compare.")
    last = compare_runs.value_scale(runs[-1])  # on a tie, the scale of the run picked last
    default = max(by_scale, key=lambda s: (len(by_scale[s]), s == last))
    scale = st.radio("Compare the runs whose values are", list(by_scale), index=list(by_scale).index(default),
                     key="compare_scale", horizontal=True,
                     format_func=lambda s: f"{compare_presenter.SCALES[s]} ({len(by_scale[s])} runs)")
else:
    scale = next(iter(by_scale))
runs = by_scale[scale]
by_k = compare_runs.group_by_k(runs)
if len(by_k) > 1:
    st.warning("Points with different numbers of objectives cannot be overlaid: "
               + "; ".join(f"K = {k}: runs {', '.join(str(r.id) for r in g)}" for k, g in by_k.items())
               + ". Choose which to compare.")
    largest = max(by_k, key=lambda k: (len(by_k[k]), k >= 2, -k))
    k = st.radio("Compare the runs with", list(by_k), index=list(by_k).index(largest), key="compare_k",
                 horizontal=True, format_func=lambda k: f"K = {k} objectives ({len(by_k[k])} runs)")
else:
    k = next(iter(by_k))
runs = by_k[k]
different = compare_presenter.instance_warning(runs)
if different:
    st.warning(different)
n_diverged = sum(compare_runs.is_diverged(r) for r in runs)
show_diverged = False
if n_diverged:
    with st.sidebar:
        show_diverged = st.checkbox(compare_presenter.diverged_toggle_label(n_diverged),
                                    key="compare_show_diverged",
                                    help="Runs stopped because their loss, gradient norm or KL went wrong are "
                                         "kept off the fronts, dominance counts and hypervolumes unless shown.")
runs = compare_runs.split_diverged(runs, include_diverged=show_diverged)[0]
if n_diverged:
    note = compare_presenter.diverged_note([r for r in by_k[k] if compare_runs.is_diverged(r)], show_diverged)
    (st.info if show_diverged else st.warning)(note)
if not runs:
    st.stop()
run_by_id = {r.id: r for r in runs}
values_kind = compare_presenter.values_kind(runs, scale)
key = _key_of(r.id for r in runs)
pts = _points(key, by_label, show_diverged, runs)
if k < 2:
    st.info("These runs have a single objective: there is no front to compare. Their points:")
    show_table(pts.drop(columns=["params", "values"]), "compare_points_k1", readable=True)
    st.stop()

missing = int((~pts["finite"]).sum())
if missing:
    st.warning(f"{missing} point(s) have a missing objective value (stored as null); they are listed in the "
               "data exports but left out of the fronts, the dominance counts and the hypervolumes.")
if missing == len(pts):
    st.stop()
values = compare_runs.value_matrix(pts)
pts["on_front"] = compare_runs.union_front_mask(values)
objective_names, instance_refs = _instance_facts(key, runs)
all_names = set(objective_names)
if len(all_names - {None}) > 1:
    st.warning("The selected runs name their objectives differently ("
               + "; ".join(" / ".join(n) for n in all_names if n) + "): their values are drawn on the same axes "
               "by position (V0, V1, …), with generic names.")
names = all_names.pop() if len(all_names) == 1 and None not in all_names else (
    "primary", *[f"secondary {j}" for j in range(1, k)])
series = list(dict.fromkeys(pts["series"]))
colours = compare_presenter.series_colours(pts, colour_by)
short_of = dict(zip(pts["series"], pts["short"]))

# Hypervolume reference point: the reference policy's values when the runs give them, else below the points.
auto_ref, auto_source = compare_runs.choose_reference_point(instance_refs, values)
if scale == compare_runs.LM and auto_source == "the reference policy's values":
    auto_source = "the reference model's values (0.5: it ties with its own samples)"
digest = hashlib.sha1(np.round(auto_ref, 10).tobytes()).hexdigest()[:8]
with st.sidebar:
    st.subheader("Hypervolume reference point r")
    st.caption(f"Default: {auto_source}.")
    ref = np.array([st.number_input(f"r{j} ({names[j]})", value=float(auto_ref[j]), step=0.01, format="%.4f",
                                    key=f"compare_ref_{k}_{j}_{digest}") for j in range(k)])
    source = auto_source if np.allclose(ref, auto_ref, atol=5e-5) else "set by you in the sidebar"
    seed_options = sorted({*compare_runs.SEED_KEYS, *(key for r in runs for key in (r.config or {}))})
    seed_keys = st.multiselect("Config keys that count as the seed", seed_options,
                               default=[x for x in compare_runs.SEED_KEYS if x in seed_options],
                               key="compare_seed_keys",
                               help="Runs whose configs differ only in these keys are drawn as one attainment "
                                    "group (median front and 25–75% band over the seeds).")

pairs = [(1, 0)] if k == 2 else [(b, a) for a in range(k) for b in range(a + 1, k)][:6]
chart_names = [f"compare_front_{x}_{y}" for x, y in pairs]
point_keys = list(zip(pts["run_id"].tolist(), pts["idx"].tolist()))
pinned = _sync_pinned([f"fig_{n}" for n in chart_names], set(point_keys))
pinned_set = set(pinned)
export = pts.drop(columns=["params", "values"]).assign(
    selected=[p in pinned_set for p in point_keys])

st.caption(f"{len(runs)} run(s), {len(series)} series, {len(pts)} points, K = {k} objectives; values: "
           f"{compare_presenter.VALUES[values_kind]}. Click a point (shift-click for several) to see its config, "
           "values and " + {compare_runs.LM: "generations beside the reference model's",
                            compare_runs.TABULAR: "policy"}.get(values_kind, "parameters") + " below.")
if k == 2:
    fig = front_figure(pts, colours, 1, 0, names, ref, source, pinned,
                       "Fronts of the selected runs: non-dominated points of the union outlined",
                       values_kind=values_kind,
                       traces=_series_traces(key, by_label, show_diverged, colour_by, 1, 0, k, pts, colours))
    show_figure(fig, chart_names[0], data=export, **SELECTABLE)
else:
    st.subheader("Parallel coordinates and 2-D projections (linked by the selection)")
    show_figure(_convention(parallel_figure(pts, colours, names, ref, pinned), values_kind), "compare_parallel",
                data=export)
    st.caption("Outlined diamonds: non-dominated among all selected points in all K objectives (so some look "
               "dominated in a projection). A point clicked in any projection is ringed in every projection and "
               "drawn in crimson in the parallel coordinates.")
    for start in range(0, len(pairs), 2):
        cols = st.columns(2)
        for col, (x, y), name in zip(cols, pairs[start:start + 2], chart_names[start:start + 2]):
            with col:
                fig = front_figure(pts, colours, x, y, names, ref, source, pinned, f"V{y} against V{x}",
                                   staircase=False, height=480, legend=False, values_kind=values_kind,
                                   traces=_series_traces(key, by_label, show_diverged, colour_by, x, y, k, pts,
                                                         colours))
                show_figure(fig, name, data=export, **SELECTABLE)

st.subheader("Selected point(s)")
if not pinned:
    st.caption("Nothing selected yet: click a point in the chart above.")
else:
    details = [compare_runs.point_details(run_by_id[r], i) for r, i in pinned]
    table = pd.DataFrame([{"run_id": d["run_id"], "run": compare_runs.run_title(run_by_id[d["run_id"]]),
                           "idx": d["idx"], "label": d["label"], "params": compare_runs.format_params(d["params"]),
                           **d["values"], "kl_to_reference": d["kl"]} for d in details])
    show_table(table, "compare_selected", readable=True)
    if any(d["policy"] is not None for d in details):
        fig, data = policy_figure(details)
        show_figure(fig, "compare_policy", data=data)
    elif values_kind == compare_runs.TABULAR:  # imported points never hold one
        st.caption("These points record no policy (their run stored none in the points' extra).")
    for d in details:
        what = f"{d['run_kind']}, {d['run_name']}" if d["run_name"] else compare_runs.run_title(run_by_id[d["run_id"]])
        with st.expander(f"Run {d['run_id']} ({what}) · point {d['idx']} · {d['label']}", expanded=len(details) == 1):
            if d["scale"] == compare_runs.LM:
                lm_point_details(d, run_by_id[d["run_id"]], f"{d['run_id']}_{d['idx']}")
                continue
            cols = st.columns(3)
            cols[0].markdown("**Values** (maximised)")
            cols[0].json(d["values"])
            cols[0].markdown("**Parameters**")
            cols[0].json(d["params"])
            cols[1].markdown("**Run config**")
            cols[1].json(d["config"])
            cols[2].markdown("**Extra** (multipliers, feasibility, KL, …)")
            cols[2].json(d["extra"] or {})
    st.button("Clear selection", key="compare_clear", on_click=_clear_selection)

sets = _point_sets(key, by_label, show_diverged, pts)
st.subheader("Dominance")
counts, dominance = _dominance(key, by_label, show_diverged, sets)
show_figure(dominance_figure(counts, sets, short_of), "compare_dominance")
show_table(dominance, "compare_dominance_table")  # counts: whole numbers, never empty

st.subheader("Hypervolume")
hv = _hypervolume(key, by_label, show_diverged, tuple(float(x) for x in ref), sets)
show_figure(hypervolume_figure(hv, colours, short_of, ref, source), "compare_hypervolume",
            data=hv)
show_table(hv, "compare_hypervolume_table", readable=True)
st.caption("Only points strictly better than r in every objective add volume (`beyond_reference`). "
           "`on_union_front`: points that no selected point dominates.")

st.subheader("Attainment over seeds")
if k != 2:
    st.info("Median fronts and attainment bands are drawn for two objectives; these runs have K = "
            f"{k}. Compare seeds here through the hypervolume table above.")
else:
    items, attained = _attainment(key, tuple(seed_keys), by_label, show_diverged, runs)
    if not items:
        st.info("No selected runs differ only by " + (", ".join(seed_keys) or "(no key chosen)") + ". Select the "
                "same sweep recorded with several seeds (e.g. `python -m mopo_core sweep --seed 0`, 1, 2), or "
                "choose more config keys that count as the seed in the sidebar.")
    else:
        show_figure(attainment_figure(items, pts, names, ref, source, values_kind, colour_by), "compare_attainment",
                    data=attained)
        st.caption("Level t: the boundary of what at least ⌈t·n⌉ of the n seeds reach (a point is reached when a "
                   "seed's point is at least as good in both objectives). With three seeds the median is two of "
                   "three, the band runs from the union's front (25%) to what all three reach (75%).")

with_curves = [r for r in runs if len(r.metrics)]
if with_curves:
    st.subheader("Training curves of the selected runs")
    cols = st.columns([2, 3])
    metric = cols[0].selectbox("Metric", compare_presenter.overlay_metrics(with_curves), key="compare_curve_metric")
    smoothing = cols[1].slider("Smoothing (EMA weight; 0: raw)", 0.0, 0.99, 0.6, 0.01, key="compare_smoothing")
    curves = compare_presenter.overlay_curves(with_curves, metric, smoothing)
    curve_colours = {r.id: compare_presenter.series_colour(r.id, str((r.config or {}).get("method", r.kind)),
                                                           colour_by) for r in with_curves}
    show_figure(overlay_figure(curves, curve_colours, {r.id: compare_runs.run_title(r) for r in with_curves}, metric,
                               smoothing), "compare_overlay_curves", data=curves)
