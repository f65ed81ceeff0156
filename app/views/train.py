"""Train: queue MOPO or a baseline, on the built-in synthetic text task (tiny word-level GPT) or
on a preference file with a local checkpoint (optionally LoRA) judged by a saved preference
model, run in a worker process (mopo_core.training.jobs), and watch it live: the queue with Cancel /
Resume and, for a job still preparing, a bar of what the worker recorded (``Job.progress``: the text task's
reference fit), the selected run's curves (loss, λ, constraint estimates against their thresholds, ESS,
KL, tokens/s) and the Pareto plane of the finished runs' points measured the same way. A thin
view over mopo_core.training.jobs, app.presenters.train and mopo_core.training.dataset_task.

Polling: the live part is a fragment re-run every POLL_S seconds while a job is queued or
running (it calls jobs.reconcile and jobs.ensure_worker each time); when the last job ends it
asks for one full rerun, which draws it without the timer. The worker belongs to this server
process: when the server stops, the running job ends ``interrupted`` after its current step
and the queued ones wait for the next server (app/main.py starts them when its first page is
opened).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app.shared import EMPTY, export_buttons, run_store, show_figure, show_table, style
from mopo_core.training import jobs
from app.presenters import preview as preview_presenter
from app.presenters import train as train_presenter
from app.presenters.smoothing import ema
from mopo_core.runs import RunStore

POLL_S = 1.5
#: Steps in a row a constraint estimate must stay below its threshold before the page warns.
STUCK_STEPS = 10
POLLING = "train_polling"
MESSAGE = "train_message"
RUN_CHOICE = "train_run"
FOLLOW = 0  # the run selector's "follow the running job" entry
F = train_presenter.FIELD_LABELS
D = train_presenter.DEFAULTS
BADGES = {"queued": "gray", "running": "blue", "done": "green", "cancelled": "orange", "failed": "red",
          "interrupted": "violet"}
METHOD_COLOURS = dict(zip(train_presenter.METHODS, plotly.colors.qualitative.Plotly))
TASKS = {"text": "Synthetic text task (built-in tiny model)", "dataset": "Preference file + local checkpoint"}


@st.cache_data(show_spinner=False, max_entries=256)
def load_run(store_path: str, run_id: int, n_points: int, status: str, finished_at: str | None):
    """A finished run from the store; the key holds what changes while a run is still being written."""
    return RunStore(store_path).get_run(run_id)


def _say(kind: str, text: str) -> None:
    st.session_state[MESSAGE] = (kind, text)


#: The form's problems this rerun (messages naming the field and its allowed range).
PROBLEMS: list[str] = []


def number_field(label: str, field: str, key: str, default, step=None, help: str | None = None,
                 disabled: bool = False, check_label: str | None = None):
    """A number input with no bounds of its own, started at ``default``: the value as typed
    (None when emptied), never put back to an old one; a value outside
    ``train_presenter.FIELD_RANGES[field]`` is added to :data:`PROBLEMS` naming the field (and
    the page turns Start off)."""
    whole = train_presenter.FIELD_RANGES[field][2]
    st.session_state.setdefault(key, int(default) if whole else float(default))
    value = st.number_input(label, value=None, step=step if step is not None else (1 if whole else 0.01),
                            format="%d" if whole else "%g", key=key, help=help, disabled=disabled,
                            placeholder=train_presenter.allowed_range(field))
    problem = None if disabled else train_presenter.check_value(value, field, check_label or label)
    if problem:
        PROBLEMS.append(problem)
    return value


def _cancel(path: str, job_id: int) -> None:
    try:
        status = jobs.cancel(path, job_id)
    except (KeyError, ValueError) as exc:
        _say("error", str(exc))
        return
    _say("info", f"Job {job_id}: cancelled before it started." if status == "cancelled" else
         f"Job {job_id}: cancel requested; its run stops after the current step (checkpoint kept, resumable).")


def _resume(path: str, run_id: int) -> None:
    try:
        job_id = jobs.enqueue_resume(path, run_id)
    except ValueError as exc:
        _say("error", str(exc))
        return
    jobs.ensure_worker(path)
    st.session_state[RUN_CHOICE] = run_id
    _say("success", f"Queued job {job_id}: resume run {run_id} from its last checkpoint.")


def _clear_ended(path: str) -> None:
    cleared = jobs.clear_ended(path)
    kept = " (the latest job of each run that can still be resumed stays, with its Resume button)"
    _say("info", f"Cleared {len(cleared)} ended job(s) from the queue; their runs stay in the run store" + kept + "."
         if cleared else "No ended job to clear: each is the latest of a run that can still be resumed.")


# ----------------------------------------------------------------------------- figures

PANELS = [  # (metric prefix, subplot title, y-axis title)
    ("loss", "Loss", "loss (lower is better ↓)"),
    ("lambda_", "Multiplier λ per constraint (χ dotted)", "λ ≥ 0 (grows while the<br>estimate is below b ↑)"),
    ("constraint_", "Constraint estimate and threshold b", "secondary win-rate<br>estimate (higher is better ↑)"),
    ("ess", "Effective sample size", "ESS / rows (1 = even<br>weights; higher ↑)"),
    ("kl_to_reference", "KL to the reference", "KL(π ‖ π_ref), nats per response<br>(exact per token over samples; ≥ 0)"),
    ("tokens_per_s", "Throughput", "tokens per second<br>(higher is faster ↑)"),
]


def curves_figure(frame: pd.DataFrame, title: str, method: str, kl_every, online: bool = False,
                  names: tuple[str, ...] = train_presenter.OBJECTIVES, smoothing: float = 0.0) -> go.Figure:
    """The six live panels; ``names`` are the run's objectives (V0 the primary). With ``smoothing`` > 0 the
    noisy series (loss, the constraint estimates, ESS, KL, throughput) are drawn smoothed (EMA,
    :func:`app.presenters.smoothing.ema`) over their raw values, drawn faint; λ, χ, the thresholds and the
    held-out estimates as they are."""
    fig = make_subplots(rows=2, cols=3, subplot_titles=[p[1] for p in PANELS], vertical_spacing=0.2,
                        horizontal_spacing=0.09)
    palette = plotly.colors.qualitative.D3
    for i, (prefix, _, y_title) in enumerate(PANELS):
        row, col = i // 3 + 1, i % 3 + 1
        traces = []
        if prefix == "lambda_":
            for j in range(1, train_presenter.constraint_count(frame) + 1):
                if f"lambda_{j}" in frame:
                    traces.append((f"lambda_{j}", f"λ{j} (multiplier of {names[j]})", dict(color=palette[(2 * j - 1) % 10])))
                if f"chi_{j}" in frame:
                    traces.append((f"chi_{j}", f"χ{j} (robust dual of {names[j]})",
                                   dict(color=palette[(2 * j - 1) % 10], dash="dot")))
        elif prefix == "constraint_":
            for j in range(1, train_presenter.constraint_count(frame) + 1):
                robust = f"chi_{j}" in frame
                traces.append((f"constraint_{j}", f"V{j} {names[j]}: {'robust (ε-ball) ' if robust else ''}estimate "
                                                  "on the step's batch",
                               dict(color=palette[(2 * j) % 10])))
                if f"threshold_{j}" in frame:
                    traces.append((f"threshold_{j}", f"threshold b{j} in force", dict(color="black", dash="dash")))
                if f"heldout_{j}" in frame:
                    traces.append((f"heldout_{j}", f"V{j} {names[j]}: held-out estimate ± SE (the plane's scale)",
                                   dict(color=palette[(2 * j) % 10], width=0)))
        elif prefix in frame:
            label = {"loss": f"loss ({train_presenter.SHORT_NAMES.get(method, method)})", "ess": "ESS / rows",
                     "kl_to_reference": "KL(π ‖ π_ref): exact per-token KL summed over sampled responses", "tokens_per_s": "tokens/s"}[prefix]
            traces.append((prefix, label, dict(color=palette[[0, 0, 0, 3, 4, 5][i]])))
        for column, name, line in traces:
            data = frame[frame[column].notna()]
            se = frame.get(column.replace("heldout_", "heldout_se_")) if column.startswith("heldout_") else None
            y, group = data[column], name
            if smoothing > 0 and not column.startswith(("lambda_", "chi_", "threshold_", "heldout_")):
                fig.add_scatter(x=data["step"], y=y, mode="lines", name=f"{name} (raw)", legendgroup=group,
                                showlegend=False, line={**line, "width": 1}, opacity=0.3, row=row, col=col,
                                hovertemplate=f"{name}, raw<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>")
                y, name = ema(y, smoothing), f"{name}, smoothed (EMA {smoothing:g})"
            fig.add_scatter(x=data["step"], y=y,
                            mode="markers" if se is not None else "lines+markers" if len(data) < 40 else "lines",
                            name=name, line=line, marker=dict(size=9 if se is not None else 4,
                                                              symbol="diamond" if se is not None else "circle"),
                            error_y=None if se is None else dict(type="data", array=se[data.index].fillna(0)),
                            legendgroup=group, row=row, col=col,
                            hovertemplate=f"{name}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>")
        if not traces or all(frame[c].notna().sum() == 0 for c, _, _ in traces):
            if prefix in ("lambda_", "constraint_", "ess") and method != "mopo":
                why = f"not logged by {train_presenter.SHORT_NAMES.get(method, method)} (MOPO only)"
            elif prefix == "kl_to_reference" and not kl_every and not online:
                why = "KL estimate off for this run<br>(sidebar: KL estimate every)"
            else:
                why = "no step logged yet"
            # Paper coordinates at the panel's centre: Streamlit's Plotly misplaces "x2 domain" references
            # on a subplot without traces (seen in a screenshot: every note landed on the first panel).
            axis = "" if i == 0 else str(i + 1)
            x_domain, y_domain = fig.layout[f"xaxis{axis}"].domain, fig.layout[f"yaxis{axis}"].domain
            fig.add_annotation(text=why, x=sum(x_domain) / 2, y=sum(y_domain) / 2, xref="paper", yref="paper",
                               showarrow=False, font=dict(color="grey"))
        fig.update_yaxes(title_text=y_title, row=row, col=col, title_font_size=11)
        fig.update_xaxes(title_text="training step →", row=row, col=col, title_font_size=11)
    fig.update_annotations(font_size=12)
    secondaries = ", ".join(names[1:]) or "none"
    return style(fig, title, height=580, subtitle=(
        "One value per training step (x axis), as the worker logged it"
        + (f" (loss, estimates, ESS, KL and throughput smoothed: EMA {smoothing:g}, raw values faint)" if smoothing > 0
           else "") + "; each panel's unit is on its y axis<br>"
        f"Constraint: the {secondaries} win-rate on the step's batch, held above its dashed threshold b<br>"
        "Where a panel starts from: KL 0 = the reference model · ESS/rows 1 = even weights")
    ).update_layout(margin=dict(t=165))


def _plane_range(values: list[float], min_span: float = 0.2) -> list[float]:
    lo, hi = min(values), max(values)
    if hi - lo < min_span:
        lo, hi = (lo + hi - min_span) / 2, (lo + hi + min_span) / 2
    pad = 0.08 * (hi - lo)
    return [lo - pad, hi + pad]


def plane_figure(points: pd.DataFrame, live: list[dict], run_id: int | None, run_status: str | None,
                 names: tuple[str, ...] = train_presenter.OBJECTIVES, heldout: dict | None = None) -> go.Figure:
    """x = V1, y = V0 of ``names`` (win-rates vs the reference model); the finished runs' points,
    their front, the reference point and the selected run's live constraint on V1, and its last
    held-out estimate (``heldout``, :func:`app.presenters.train.live_heldout`) as a point ± SE."""
    ref = train_presenter.REFERENCE_POINT
    running = run_status in ("running", "queued")
    live = [c for c in live if c["j"] == 1] if running else []  # the plane's x is V1
    heldout = heldout if running and heldout is not None and len(heldout["values"]) > 1 else None
    xs = [ref[1], *points["v1"], *[c["estimate"] for c in live], *[c["threshold"] for c in live
                                                                    if np.isfinite(c["threshold"])],
          *([heldout["values"][1]] if heldout else [])]
    ys = [ref[0], *points["v0"], *([heldout["values"][0]] if heldout else [])]
    x_range, y_range = _plane_range(xs), _plane_range(ys)
    fig = go.Figure()
    for method, d in points.groupby("method", sort=False):
        on = d["on_front"].to_numpy(dtype=bool)
        custom = np.stack([d["run"], d["job_name"], d["params_text"], d["stderr0"], d["stderr1"],
                           d["thresholds_text"]], axis=1)
        fig.add_scatter(
            x=d["v1"], y=d["v0"], mode="markers",
            name=f"{train_presenter.SHORT_NAMES.get(method, method)}: finished runs' points",
            marker=dict(color=METHOD_COLOURS.get(method, "grey"), size=np.where(on, 13, 9).tolist(),
                        symbol=np.where(on, "diamond", "circle").tolist(),
                        line=dict(color="black", width=np.where(on, 1.5, 0).tolist()),
                        opacity=np.where(on, 1.0, 0.5).tolist()),
            error_x=dict(type="data", array=d["stderr1"].fillna(0), thickness=1, width=0, color="lightgrey"),
            error_y=dict(type="data", array=d["stderr0"].fillna(0), thickness=1, width=0, color="lightgrey"),
            customdata=custom,
            hovertemplate=("run %{customdata[0]} · %{customdata[1]}<br>%{customdata[2]}<br>"
                           f"V1 {names[1]} %{{x:.3f}} ± %{{customdata[4]:.3f}}<br>"
                           f"V0 {names[0]} %{{y:.3f}} ± %{{customdata[3]:.3f}}<br>%{{customdata[5]}}<extra></extra>"))
    for met, symbol, colour, text in ((True, "circle-open", "seagreen", "met its threshold(s) b"),
                                      (False, "x-thin-open", "crimson", "missed its threshold(s) b")):
        marked = points[points["met"].eq(met).fillna(False).astype(bool)] if len(points) else points
        if len(marked):
            fig.add_scatter(x=marked["v1"], y=marked["v0"], mode="markers",
                            name=f"MOPO run that {text} on the held-out evaluation",
                            marker=dict(symbol=symbol, size=19, color=colour, line=dict(width=2, color=colour)),
                            customdata=np.stack([marked["run"], marked["thresholds_text"]], axis=1),
                            hovertemplate="run %{customdata[0]}<br>%{customdata[1]}<extra></extra>")
    if points["on_front"].any():
        path = train_presenter.front_staircase(points, (x_range[0], y_range[0]))
        fig.add_scatter(x=path[:, 0], y=path[:, 1], mode="lines", name="Pareto front of these points (staircase)",
                        line=dict(color="black", width=1, dash="dot"), hoverinfo="skip")
    chosen = points[points["run"] == run_id]
    if len(chosen):
        fig.add_scatter(x=chosen["v1"], y=chosen["v0"], mode="markers", name=f"run {run_id}'s evaluated point",
                        marker=dict(symbol="circle-open", size=24, color="crimson", line=dict(width=3)),
                        hoverinfo="skip")
    fig.add_scatter(x=[ref[1]], y=[ref[0]], mode="markers", marker=dict(symbol="x", size=13, color="black"),
                    name=f"reference point ({ref[1]:g}, {ref[0]:g}): the reference model against itself",
                    hovertemplate="reference model vs itself: win-rate 0.5 on both objectives<extra></extra>")
    for c in live:
        fig.add_scatter(x=[c["estimate"]] * 2, y=y_range, mode="lines", line=dict(color="crimson", width=3),
                        name=f"run {run_id} live, step {c['step']}: constraint on the training batch "
                             f"{c['estimate']:.3f} ({names[c['j']]} estimated on the step's batch, not held out; "
                             f"V0 is measured when the run ends)",
                        hovertemplate=f"run {run_id}, step {c['step']}<br>constraint on the training batch "
                                      f"({names[c['j']]}): {c['estimate']:.4f}<br>λ{c['j']} = {c['lam']:.4f}"
                                      "<extra></extra>")
        if heldout is not None:
            (v0, v1), (se0, se1) = heldout["values"][:2], heldout["stderr"][:2]
            fig.add_scatter(x=[v1], y=[v0], mode="markers", marker=dict(symbol="star", size=16, color="crimson"),
                            error_x=dict(type="data", array=[se1]), error_y=dict(type="data", array=[se0]),
                            name=f"run {run_id} at step {heldout['step']}: held-out estimate ± SE "
                                 f"(V1 {v1:.3f} ± {se1:.3f}, V0 {v0:.3f} ± {se0:.3f})",
                            hovertemplate=f"run {run_id}, step {heldout['step']}: held-out estimate<extra></extra>")
        if np.isfinite(c["threshold"]):
            fig.add_scatter(x=[c["threshold"]] * 2, y=y_range, mode="lines",
                            line=dict(color="black", width=1.5, dash="dash"),
                            name=f"run {run_id}: threshold b{c['j']} = {c['threshold']:.3g} on the training-batch "
                                 "estimate (the red line)",
                            hoverinfo="skip")
    style(fig, "Pareto plane: finished runs' points",
          x_title=f"V1 {names[1]} (win-rate vs the reference model; higher is better →)",
          y_title=f"V0 {names[0]} (win-rate vs the<br>reference model; higher is better ↑)", height=520,
          subtitle=("Each marker: a run's win-rates against the reference model,<br>"
                    "measured on held-out prompts; up and right is better<br>"
                    f"Reference point ({ref[1]:g}, {ref[0]:g}) = the reference model against itself<br>"
                    "Error bars: ± one standard error over the prompts"))
    fig.update_xaxes(range=x_range)
    fig.update_yaxes(range=y_range)
    return fig.update_layout(margin=dict(t=150))


# ----------------------------------------------------------------------------- the live part


def show_points_table(points: pd.DataFrame, objectives: tuple[str, ...]) -> None:
    """The finished runs' points (:func:`app.presenters.train.front_points`) as a readable table: methods
    by their names, numbers rounded, empty cells as "–", short headers whose tooltips say what each value
    is (the exports keep full precision)."""
    secondary = [1] if len(objectives) > 1 else []  # the plane's V1
    columns = {"run": ("run", "The run's id in the run store."),
               "job_name": ("job name", "The name of the Train job that trained it (– : none given)."),
               "method": ("method", "The training method."),
               "v0": (f"V0 {objectives[0]}", f"Win-rate of the policy against the reference model on held-out "
                                             f"prompts, scored on {objectives[0]} (the primary objective; 0.5 = as "
                                             "good as the reference, higher is better)."),
               "stderr0": ("± V0", "Standard error of V0 over the held-out prompts (win_rate_stderr)."),
               **{f"v{j}": (f"V{j} {objectives[j]}", f"Win-rate against the reference model on held-out prompts, "
                                                     f"scored on {objectives[j]} (the constrained objective; "
                                                     "higher is better).") for j in secondary},
               **{f"stderr{j}": (f"± V{j}", f"Standard error of V{j} over the held-out prompts (win_rate_stderr).")
                  for j in secondary}}
    for j in range(1, len(objectives)):
        columns[f"b{j}"] = (f"b{j}", f"The threshold b{j} a MOPO run was started with on {objectives[j]} "
                                     "(– : not MOPO).")
        columns[f"met b{j}"] = (f"met b{j}", f"Whether the run's held-out V{j} reached b{j}; 'within 1 SE' when the "
                                             "gap is smaller than one standard error, so the evaluation cannot tell.")
    columns["on_front"] = ("on the front", "On the Pareto front of these points: no other point is at least as good "
                                           "on both objectives and better on one.")
    shown = points[list(columns)].rename(columns={c: label for c, (label, _) in columns.items()})
    shown["method"] = [train_presenter.SHORT_NAMES.get(m, m) for m in shown["method"]]
    shown["job name"] = [name or EMPTY for name in shown["job name"]]
    shown["on the front"] = ["yes" if on else "no" for on in shown["on the front"]]  # as "met b1" reads
    st.markdown("**Finished runs' points** (the same points are on the Compare page, run kind 'train')")
    if len(objectives) > 1:
        st.caption("*met b1*: whether a MOPO run's held-out V1 reached its threshold b1 (yes / no; *within 1 SE* "
                   "when the evaluation cannot tell). During training MOPO holds the estimate on its batches, not "
                   "this held-out value, above b1. Hover a column's header for what it holds.")
    show_table(shown, "train_points", readable=True,
               column_config={label: st.column_config.Column(label, help=text) for label, text in columns.values()})


def _queue_rows(path: str, queue: pd.DataFrame) -> None:
    widths = [0.45, 2.4, 0.95, 0.5, 1.1, 2.4, 1.25]
    head = st.columns(widths)
    for col, text in zip(head, ["Job", "Name", "Status", "Run", "Run progress", "Note / error", "Action"]):
        col.markdown(f"**{text}**")
    box = st.container(height=440) if len(queue) > 9 else st.container()
    with box:
        for r in queue.to_dict("records"):
            cols = st.columns(widths, vertical_alignment="center")
            cols[0].markdown(f"{r['job']}")
            cols[1].markdown(f"{r['name'] or '(unnamed)'}" + (" · resume" if r["kind"] == "resume" else "")
                             + (f"  \n:gray[{r['settings']}]" if r["settings"] else ""))
            cols[2].markdown(f":{BADGES[r['status']]}-badge[{r['status']}]")
            cols[3].markdown("–" if pd.isna(r["run"]) else f"{int(r['run'])}")
            preparing = r["status"] == "running" and pd.isna(r["run"])
            if preparing and pd.notna(r["preparing"]):  # the worker's recorded fraction (e.g. the reference fit)
                cols[4].progress(float(r["preparing"]), text=f"preparing: {100 * r['preparing']:.0f}%")
            elif preparing:
                cols[4].markdown("preparing")
            elif pd.isna(r["run"]):
                cols[4].markdown("–")
            else:
                cols[4].markdown(f"step {r['step']} / {r['steps']}" + (" · evaluating" if r["evaluating"] else ""))
            ended = isinstance(r["run_status"], str) and r["run_status"] not in ("finished", "running")
            resuming = r["kind"] == "resume" and r["status"] in jobs.ACTIVE_STATUSES and ended
            note = r["error"] or (f"resuming from the last checkpoint (the run reads {r['run_status']} until its "
                                  "next step)" if resuming else f"run {r['run_status']}" if ended else "")
            if preparing and not note:
                what = r["preparing_text"] or ("Preparing the reference model (SFT)" if r["kind"] == "train_text"
                                               else "Loading the model, data and judge")
                note = what + (" MODPO then trains its secondary DPO expert." if r["method"] == "modpo" else "")
            cols[5].caption(note[:160] + ("…" if len(note) > 160 else ""), help=note if len(note) > 160 else None)
            if r["status"] in jobs.ACTIVE_STATUSES:
                cols[6].button(f"Cancel job {r['job']}", key=f"train_cancel_{r['job']}", on_click=_cancel,
                               args=(path, int(r["job"])), disabled="cancel requested" in r["error"])
            elif r["resumable"]:
                cols[6].button(f"Resume run {int(r['run'])}", key=f"train_resume_{int(r['run'])}", on_click=_resume,
                               args=(path, int(r["run"])), type="primary")


def _front_runs(store: RunStore) -> list:
    listed = store.list_runs(kind="train")
    listed = listed[listed["n_points"] > 0]
    return [load_run(str(store.path), int(r["id"]), int(r["n_points"]), str(r["status"]), r["finished_at"])
            for r in listed.to_dict("records")]


def live_panel(path: str) -> None:
    polling = st.session_state.get(POLLING, False)
    if polling:
        jobs.reconcile(path)
        jobs.ensure_worker(path)
    job_list = jobs.list_jobs(path)
    queue = train_presenter.queue_frame(path, job_list)
    active = bool(queue["status"].isin(jobs.ACTIVE_STATUSES).any())
    if active != polling:  # a job ended (stop the timer, redraw) or one was queued from here or elsewhere
        st.rerun()

    if MESSAGE in st.session_state:
        kind, text = st.session_state.pop(MESSAGE)
        getattr(st, kind)(text)
    st.subheader("Queue")
    if queue.empty:
        st.info("No job yet: set a run up in the sidebar and press **Start training**, or queue a sweep above.")
        return
    n_active = int(queue["status"].isin(jobs.ACTIVE_STATUSES).sum())
    st.caption(f"{len(queue)} job(s), {n_active} queued or running. One worker process trains them one at a time, "
               f"oldest first{f', refreshing every {POLL_S:g} s' if active else ''}. Cancel stops a run after its "
               "current step (checkpoint kept); Resume continues a cancelled, interrupted or failed run from its "
               "last checkpoint. The queue is stored in the run store, so it survives a server restart.")
    _queue_rows(path, queue)
    cols = st.columns(4)
    export_buttons(queue.drop(columns=["resumable"]), "train_queue", cols[:2])
    n_clearable = int((~queue["status"].isin(jobs.ACTIVE_STATUSES) & ~queue["resumable"]).sum())
    cols[2].button(f"Clear ended jobs ({n_clearable})", key="train_clear_ended", on_click=_clear_ended, args=(path,),
                   disabled=not n_clearable, help="Removes the done, cancelled, failed and interrupted jobs from this "
                   "queue. Their runs stay in the run store (points, curves, checkpoints: see Compare); a run that "
                   "can still be resumed keeps its job row, with its Resume button.")

    run_ids = list(dict.fromkeys(int(r) for r in queue["run"].dropna()[::-1]))
    following = train_presenter.default_run(queue)
    running = bool(((queue["status"] == "running") & queue["run"].notna()).any())
    if not run_ids:
        st.info("The first job is preparing (building the task and its reference model); its run and curves "
                "appear here at its first step.")
        return
    if st.session_state.get(RUN_CHOICE) not in [FOLLOW, *run_ids]:
        st.session_state[RUN_CHOICE] = FOLLOW
    names = {int(r["run"]): r["name"] for r in queue.dropna(subset=["run"]).to_dict("records") if r["kind"] != "resume"}
    status_of = {int(r["run"]): r["run_status"] for r in queue.dropna(subset=["run"]).to_dict("records")}
    st.subheader("Live run")
    choice = st.selectbox(
        "Run shown", [FOLLOW, *run_ids], key=RUN_CHOICE,
        format_func=lambda i: ((f"Follow the running job (now run {following})" if running else
                                f"Follow the running job (none is running: the newest run, {following})")
                               if i == FOLLOW else
                               f"run {i} · {names.get(i, '')} · {status_of.get(i)}"))
    run_id = following if choice == FOLLOW else choice
    try:
        run = run_store().get_run(run_id)
    except KeyError:  # deleted meanwhile (e.g. `python -m mopo_core runs delete`)
        st.info(f"Run {run_id} is no longer in the run store.")
        return
    frame = train_presenter.metric_frame(run)
    steps = int(run.config.get("steps") or 1)
    step = int(frame["step"].max()) if len(frame) else 0
    name = names.get(run_id) or train_presenter.SHORT_NAMES.get(run.config.get("method"), "run")
    evaluating = bool(queue.loc[queue["run"].eq(run_id).fillna(False), "evaluating"].any())
    st.progress(min(step / steps, 1.0), text=f"Run {run_id} ({name}): step {step} / {steps} · {run.status}"
                + (" · evaluating: sampling the policy on the held-out prompts, then its point is added"
                   if evaluating else ""))
    if run.error and run.status != "finished":
        st.caption(f"Run {run_id}: {run.error}")
    objectives = train_presenter.run_objectives(run)
    live = train_presenter.live_constraints(frame)
    stuck = [c for c in live if c["below"] >= STUCK_STEPS]
    if stuck:
        st.warning(" ".join(
            f"The {objectives[c['j']]} estimate on the training batch has stayed below b{c['j']} = "
            f"{c['threshold']:.3g} for the last {c['below']} steps while λ{c['j']} grew to {c['lam']:.3g}." for c in stuck)
            + " The threshold may be out of reach for this model, data and batch"
            + (f" (and the robust radius ε = {run.config['eps']:g}: on a few responses per prompt the worst case "
               "in the ball is low)" if run.config.get("eps") else "")
            + ": a lower threshold, a smaller ε or a larger batch would tell. (A rule of thumb shown after "
              f"{STUCK_STEPS} steps, not a proof.)")
    if live and run.status == "running":
        st.caption(" · ".join(f"Step {c['step']}: {objectives[c['j']]} estimate on the training batch "
                              f"{c['estimate']:.3f} against threshold "
                              f"b{c['j']} = {c['threshold']:.3g} (λ{c['j']} = {c['lam']:.3f})" for c in live)
                   + "; λ grows while its estimate is below its threshold.")
    smoothing = st.slider("Smoothing of the curves (EMA weight; 0: raw)", 0.0, 0.99, 0.0, 0.01, key="train_smoothing",
                          help="Draws the loss, the constraint estimates, ESS, KL and throughput as an exponential "
                               "moving average (as TensorBoard's smoothing), with the raw values faint behind; λ, the "
                               "thresholds and the held-out estimates are drawn as logged. The CSV keeps the raw values.")
    show_figure(curves_figure(frame, f"Run {run_id} ({name}): training curves, step {step} of {steps}",
                              run.config.get("method"), run.config.get("kl_every"), bool(run.config.get("online")),
                              objectives, smoothing),
                "train_curves", data=frame)

    key = train_presenter.plane_key(run)
    front_runs = _front_runs(run_store())
    diverged = train_presenter.diverged_on_plane(front_runs, key)
    show_diverged = bool(diverged) and st.checkbox(
        f"Show diverged runs ({len(diverged)} hidden: " + ", ".join(f"run {r.id}" for r in diverged) + ")",
        key="train_show_diverged")
    points = train_presenter.front_points(front_runs, {int(r["run"]): r["name"] for r in
                                                       queue.dropna(subset=["run"]).to_dict("records")
                                                       if r["kind"] != "resume"}, key, include_diverged=show_diverged)
    reference = ("the SFT model every text-task run starts from" if key[0] == "text" else
                 f"the starting checkpoint {Path(str(key[2])).name}, sampled on the test prompts and scored by "
                 "the same preference model")
    if len(objectives) < 2:
        st.markdown(f"**Finished runs' points** ({train_presenter.describe_plane(key)}): one objective, so no "
                    f"plane: V0 {objectives[0]} is the policy's win-rate against the reference model ({reference}).")
    else:
        left, right = st.columns([3, 2])
        with left:
            st.caption(f"On this plane: the {train_presenter.describe_plane(key)} (points measured another way are "
                       "on the Compare page).")
            show_figure(plane_figure(points, live, run_id, run.status, objectives,
                                     train_presenter.live_heldout(frame)), "train_plane", data=points)
        with right:
            st.markdown("**How to read the Pareto plane**")
            st.markdown(
                f"- **Markers**: each finished run's point of the {train_presenter.describe_plane(key)}, measured "
                f"once at its end on held-out prompts: the policy's win-rates against the reference model "
                f"({reference}; 0.5 = as good as the reference). Outlined diamonds are on the front of these points.\n"
                f"- **Red line**: while a run trains only its constraint is estimated ({objectives[1]}, on the step's "
                f"batch), not its {objectives[0]}, so the live run is a vertical line, not a point; a run with "
                "*held-out estimate every* set also shows a red star: its last held-out estimate ± SE, on the "
                "markers' scale.\n"
                "- **Black dashed line**: the live run's threshold b1. MOPO holds its **training-batch estimate** "
                "(the red line) at or above b1; the markers are **held-out** win-rates, so a run can satisfy b1 "
                "on its batches and still end left of it here.\n"
                "- **Green ring / red ×**: a finished MOPO run whose held-out V1 met / missed its b1 (the "
                "table's *met b1* column, with ± one standard error).\n"
                "- **×**: the reference point (0.5, 0.5), the reference model against itself.")
            if points.empty:
                st.caption("No run on this plane has finished yet: each run's point is added when it finishes (a "
                           "cancelled run gets its point when a resume finishes it).")
    if not points.empty:
        show_points_table(points, objectives)
    with st.expander("Worker log (last lines)"):
        st.code(train_presenter.worker_log_tail(path) or "(empty: no worker has started on this store yet)",
                language=None)


# ----------------------------------------------------------------------------- the dataset form


def _stamp(*paths) -> tuple:
    """Modification times of the files a check read (a changed file is checked again)."""
    out = []
    for p in paths:
        try:
            out.append(Path(p).stat().st_mtime)
        except (OSError, TypeError):
            out.append(None)
    return tuple(out)


@st.cache_data(show_spinner="Checking the preference file, the checkpoint and the judge…", max_entries=32)
def check_dataset(key: str, stamps: tuple, _setup) -> tuple[str, object]:
    """("ok", SetupCheck) or ("error", message naming the page's field) for the setup ``key`` describes."""
    from mopo_core.training.dataset_task import SetupError, check_setup

    try:
        return "ok", check_setup(_setup)
    except SetupError as exc:
        return "error", str(train_presenter.dataset_error(exc))


def dataset_form():
    """The sidebar's dataset settings: (DatasetSetup or None, SetupCheck or None, message or None,
    whether the message is an error rather than a field still to fill in)."""
    from mopo_core.lm import registry
    from mopo_core.training.dataset_task import DATA_FORMATS
    from mopo_core.lm.judge import read_meta

    L = train_presenter.DATASET_LABELS
    root = registry.models_dir()
    with st.expander("Data, model and judge", expanded=True):
        data = st.text_input(L["data"], key="train_data", placeholder="/path/to/pairs.jsonl",
                             help="This project's schema (JSON Lines or Parquet) or a public format: PKU-SafeRLHF, "
                                  "HH-RLHF, ShareGPT or alpaca DPO JSON (`python -m mopo_core data inspect FILE` "
                                  "tells what a file holds).")
        fmt = st.selectbox(L["format"], DATA_FORMATS, key="train_format")
        objective = st.text_input(L["objective"], key="train_objective",
                                  help="Only for one-objective public formats (HH-RLHF, DPO JSON): the name its "
                                       "labels get. Leave empty otherwise.")
        models = [e for e in registry.list_models(root) if e.path is not None and e.problem is None]
        model = st.selectbox(L["model"], [e.path for e in models], key="train_model",
                             format_func=lambda p: next(f"{e.name} · {e.architecture} · {e.n_parameters / 1e6:,.1f}M"
                                                        f" params · {e.dtype}" for e in models if e.path == p))
        if not models:
            st.caption(f"No usable checkpoint in the models folder `{root}`: fetch one (`python -m mopo_core models "
                       "fetch-smollm2`) or add a folder on the Models page.")
        judges = [str(p) for p in registry.list_prefmodels(root)]
        judge = st.selectbox(L["prefmodel"], judges, key="train_prefmodel", format_func=lambda p: Path(p).name,
                             help=f"Saved preference models in `{root / registry.PREFMODELS_DIR}`; it scores the "
                                  "policy's "
                                  "and the reference's samples on the test prompts, which it must never have seen.")
        fitted = {}
        if judge:
            try:
                meta = read_meta(judge)
                fitted = meta["info"].get("data") or {}
                st.caption(f"Judge scores {', '.join(meta['objectives'])}; fitted on `{fitted.get('file', '?')}`, "
                           f"split {fitted.get('split', '?')}, split seed {fitted.get('split_seed', '?')}.")
                if not data.strip() and fitted.get("file") and Path(fitted["file"]).is_file():
                    st.button("Use the judge's data file", key="train_use_judge_data", on_click=st.session_state.update,
                              kwargs={"train_data": fitted["file"]},
                              help="Fill in the preference file the judge was fitted on (its test split is unseen).")
            except (OSError, ValueError) as exc:
                st.caption(f"Judge unreadable: {exc}")
        else:
            st.caption(f"No preference model in `{root / registry.PREFMODELS_DIR}`: train one on the training split "
                       "(`python -m mopo_core prefmodel train --data FILE --out "
                       f"{root / registry.PREFMODELS_DIR}/NAME`).")
        problems_before = len(PROBLEMS)
        lora_r = number_field(L["lora_r"] + " (0: full fine-tuning)", "lora_r", "train_lora", D["lora_r"])
    with st.expander("Split and evaluation"):
        # The judge's own split by default: its held-out prompts are then this run's test prompts.
        st.session_state.setdefault("train_split", ", ".join(f"{f:g}" for f in fitted.get("split", D["split"])))
        st.session_state.setdefault("train_split_seed", int(fitted.get("split_seed", D["split_seed"])))
        split_text = st.text_input(L["split"], key="train_split",
                                   help="By prompt, seeded; the judge must not have seen the test prompts.")
        split_seed = number_field(L["split_seed"], "split_seed", "train_split_seed", D["split_seed"])
        values = {
            "max_response_tokens": number_field(L["max_response_tokens"], "max_response_tokens",
                                                "train_response_tokens", D["max_response_tokens"],
                                                help="Training responses are cut to this many tokens."),
            "eval_samples": number_field(L["eval_samples"], "dataset_eval_samples", "train_eval_samples",
                                         D["dataset_eval_samples"]),
            "max_new_tokens": number_field(L["max_new_tokens"], "eval_max_new_tokens", "train_eval_tokens",
                                           D["eval_max_new_tokens"]),
            "eval_seed": number_field(L["eval_seed"], "eval_seed", "train_eval_seed", D["eval_seed"]),
            "dtype": st.selectbox(L["dtype"], ["auto", "fp32", "bf16", "fp16"], key="train_dtype",
                                  help="auto: bf16 on a GPU, fp32 on the CPU."),
            "device": st.selectbox(L["device"], ["auto", "cpu", "cuda"], key="train_device",
                                   help="auto: the GPU when there is one."),
            "gradient_checkpointing": st.checkbox(L["gradient_checkpointing"], key="train_checkpointing",
                                                  help="Recompute each layer's activations in backward: much "
                                                       "less activation memory, slower steps."),
        }
    if len(PROBLEMS) > problems_before:
        return None, None, "The dataset run is checked once the fields named below are fixed.", False
    try:
        split = [float(w) for w in split_text.replace(",", " ").split()]
    except ValueError:
        return None, None, f"{L['split']} (split): {split_text!r} holds a word that is not a number", True
    if not data.strip() or not model or not judge:
        missing = [L[f] for f, v in (("data", data.strip()), ("model", model), ("prefmodel", judge)) if not v]
        return None, None, f"Set up the dataset run: {', '.join(missing)} still to choose.", False
    try:
        setup = train_presenter.dataset_setup(data=str(Path(data.strip()).expanduser().resolve()), format=fmt,
                                              objective=objective, model=model, prefmodel=judge, lora_r=lora_r,
                                              split=split, split_seed=split_seed, **values)
    except ValueError as exc:
        return None, None, str(exc), True
    status, found = check_dataset(repr(setup), _stamp(setup.data, Path(model) / "config.json",
                                                      Path(judge) / registry.PREFMODEL_META), setup)
    return (setup, found, None, False) if status == "ok" else (setup, None, found, True)


@st.cache_data(show_spinner=False, max_entries=64)
def step_memory(key: str, _found, _setup, _config) -> tuple[int, str, tuple[str, ...]]:
    """(bytes, parts, advice) of one training step of the dataset run ``key`` describes."""
    from mopo_core.training.dataset_task import training_memory

    estimate = training_memory(_found, _setup, _config)
    return estimate.total, estimate.describe(), estimate.advice


def memory_note(setup, found, method: str, values: dict) -> None:
    """The memory one step of the dataset run set up in the sidebar needs, against what the
    worker's device has free now (the worker is another process on this machine)."""
    from mopo_core.lm.checkpoints import available_memory
    from mopo_core.lm.devices import resolve_device

    try:
        config = train_presenter.train_config(method, **values)
    except ValueError:
        return  # the form's error is shown when Start is pressed
    total, parts, advice = step_memory(repr((setup, found, config)), found, setup, config)
    device = resolve_device(setup.device).type.upper()  # what "auto" means on this machine: CPU or CUDA
    try:
        free = available_memory(setup.device)
    except RuntimeError:
        free = None
    text = (f"One training step needs about **{total / 2**30:.2f} GiB** ({parts}; model-size terms exact, "
            f"activations estimated)" + (f"; {free / 2**30:.2f} GiB free now on the {device}." if free else "."))
    if free is not None and total > free:
        st.warning(text + " It may not fit: " + ("; ".join(advice) or "lower the batch size") + ".")
    else:
        st.caption(text)


# ----------------------------------------------------------------------------- the page

store = run_store()
path = str(store.path)
for job in jobs.reconcile(path):  # jobs whose worker died since the last look (e.g. a server restart)
    st.warning(f"Job {job.id} ({job.name or job.kind}) ended **{job.status}**: {job.error}")

with st.sidebar:
    st.subheader("New training run")
    task = st.radio("Task", list(TASKS), format_func=TASKS.get, key="train_task")
    setup, checked, setup_error = None, None, None
    if task == "dataset":
        setup, checked, setup_error, is_error = dataset_form()
        if setup_error:
            (st.error if is_error else st.info)(setup_error)
        else:
            n = checked.n_pairs
            st.success(f"{sum(n)} pairs: {n[0]} train / {n[1]} validation / {n[2]} test, split by prompt. Objectives: "
                       + ", ".join(f"V{k} {o}" for k, o in enumerate(checked.objectives))
                       + " (V0 the primary). The judge has seen none of the test prompts.")
            if checked.dropped_after_cut:
                dropped = checked.dropped_after_cut
                st.warning(f"{len(dropped)} pair(s) left out: their two responses are the same text once cut to "
                           f"{setup.max_response_tokens} tokens ({', '.join(dropped[:5])}"
                           + (f" and {len(dropped) - 5} more)" if len(dropped) > 5 else ")"))
    objectives = (train_presenter.OBJECTIVES if task == "text"
                  else (checked.objectives if checked else train_presenter.OBJECTIVES))
    n_objectives = len(objectives)
    methods = [m for m in train_presenter.METHODS if n_objectives > 1 or m not in train_presenter.WEIGHTED_METHODS]
    method = st.selectbox(F["method"], methods, format_func=train_presenter.SHORT_NAMES.get, key="train_method")
    st.caption(train_presenter.METHOD_NAMES[method] if task == "text"
               else train_presenter.METHOD_NAMES[method].split(" (")[0] + f": primary {objectives[0]}"
               + (f", secondary {', '.join(objectives[1:])}" if n_objectives > 1 else ""))
    values = {"n_objectives": n_objectives}
    if method == "mopo" and n_objectives > 1:
        values["thresholds"] = tuple(
            number_field(f"Threshold b{j} on {objectives[j]}", "threshold",
                         "train_threshold" if j == 1 else f"train_threshold_{j}", D["threshold"], 0.01,
                         help=f"MOPO keeps its training-batch estimate of the policy's {objectives[j]} win-rate "
                              f"(against the reference model) at or above b{j} while maximising {objectives[0]}; "
                              "the finished run's point is measured on held-out prompts, and the table of "
                              f"finished runs says whether it met b{j} there.")
            for j in range(1, n_objectives))
    elif method == "mopo":
        values["thresholds"] = ()
        st.caption("One objective: MOPO has no constraint and clones the reweighted preferred responses.")
    if method in train_presenter.WEIGHTED_METHODS and n_objectives == 2:
        weight = number_field(f"Weight w on {objectives[1]} ({objectives[0]} gets 1 − w)", "secondary_weight",
                              "train_weight", D["secondary_weight"], 0.05)
        values["objective_weights"] = train_presenter.secondary_weights(weight if weight is not None else np.nan)
    elif method in train_presenter.WEIGHTED_METHODS:
        weights_text = st.text_input(f"{F['objective_weights']} ({', '.join(objectives)}; sum 1)",
                                     ", ".join(f"{1 / n_objectives:.4g}" for _ in objectives), key="train_weights")
        try:
            values["objective_weights"] = train_presenter.parse_weights(weights_text, n_objectives,
                                                                        F["objective_weights"])
        except ValueError as exc:
            setup_error = str(exc)
            st.error(setup_error)
    values["tau"] = number_field(F["tau"], "tau", "train_tau", D["tau"], 0.01,
                                 help="Strength of the KL pull to the reference (DPO/IPO call it β).")
    values["steps"] = number_field(F["steps"], "steps", "train_steps", D["steps"], 10)
    with st.expander("Optimiser, logging, checkpoints"):
        values["batch_size"] = number_field(F["batch_size"], "batch_size", "train_batch", D["batch_size"],
                                            help="Prompts per step for MOPO, preference pairs for the others.")
        values["lr"] = number_field(F["lr"], "lr", "train_lr", D["lr"], 1e-4)
        if method == "mopo":
            values["lambda_lr"] = number_field(F["lambda_lr"], "lambda_lr", "train_lambda_lr", D["lambda_lr"], 0.1)
        values["gradient_accumulation_steps"] = number_field(F["gradient_accumulation_steps"],
                                                             "gradient_accumulation_steps", "train_accum",
                                                             D["gradient_accumulation_steps"])
        online = method == "mopo" and st.session_state.get("train_online", False)
        values["kl_every"] = number_field(F["kl_every"] + " (0: off)", "kl_every", "train_kl_every", D["kl_every"],
                                          disabled=online,
                                          help="Online MOPO logs its candidate pool's KL every step instead.")
        values["checkpoint_every"] = number_field(F["checkpoint_every"], "checkpoint_every", "train_checkpoint_every",
                                                  D["checkpoint_every"],
                                                  help="A resumed run continues from its last checkpoint.")
        values["heldout_every"] = number_field(
            F["heldout_every"] + " (0: off)", "heldout_every", "train_heldout_every", D["heldout_every"],
            help="Evaluate the policy on the held-out prompts (win-rates against the reference ± SE, the scale "
                 "of the finished runs' points) every this many steps: a live point on the plane. Each costs "
                 "one evaluation's sampling.")
        values["seed"] = number_field(F["seed"], "seed", "train_seed", D["seed"])
    if method == "mopo":
        with st.expander("MOPO: robust constraints, lagged reference, ratchet, online"):
            values["eps"] = number_field(
                F["eps"] + " (0: off)", "eps", "train_eps", D["eps"], 0.05,
                help="Each constraint holds for the worst distribution within KL ε of the batch's responses "
                     "(per prompt); the paper's text runs use 0.15. Too large a radius makes a threshold "
                     "unreachable: λ then keeps growing, and the curves show it.")
            if values["eps"]:
                values["chi_lr"] = number_field(F["chi_lr"], "chi_lr", "train_chi_lr", D["chi_lr"], 0.1)
            values["win_rate_prior"] = number_field(
                F["win_rate_prior"], "win_rate_prior", "train_prior", D["win_rate_prior"], 0.5,
                help="Offline: each response's labels are averaged with this many comparisons at ½, so one won "
                     "comparison reads (1 + prior/2) / (1 + prior) instead of 1 (0: raw labels).")
            values["kl_leash"] = st.toggle(
                F["kl_leash"], D["kl_leash"], key="train_leash",
                help="Offline: keep KL(policy ‖ starting model), estimated on the policy's own samples, within "
                     "(1 + Σλ) / τ nats per response, the most any exact MOPO solution moves. Off: the policy "
                     "may drift towards cloning the data's responses (tens of nats from where it started).")
            values["t0"] = number_field(F["t0"] + " (0: off)", "t0", "train_t0", D["t0"],
                                        help="Every t0 steps the reference becomes the policy of t0 steps before.")
            values["beta_ratchet"] = number_field(
                F["beta_ratchet"] + " (0: off; needs t0)", "beta_ratchet", "train_beta", D["beta_ratchet"], 0.01,
                help="Every t0 steps: b1 ← max(b1, β · the mean constraint estimate over the t0 steps that ended "
                     "t0 steps ago).")
            values["online"] = st.toggle(F["online"], D["online"], key="train_online",
                                         help="Sample candidates from the policy each step, scored by the task's "
                                              "preference oracle (a dataset run's: its judge, which also scores "
                                              "the evaluation, so online win-rates are optimistic).")
            if values["online"]:
                values["n_candidates"] = number_field(F["n_candidates"], "n_candidates", "train_cands",
                                                      D["n_candidates"])
                values["max_new_tokens"] = number_field(F["max_new_tokens"], "max_new_tokens", "train_new_tokens",
                                                        D["max_new_tokens"])
    if task == "text":
        with st.expander("Task and reference model"):
            setup_values = {
                "n_prompts": number_field(F["n_prompts"], "n_prompts", "train_prompts", D["n_prompts"]),
                "n_candidates": number_field("Candidate responses per prompt", "task_n_candidates",
                                             "train_task_cands", D["task_n_candidates"]),
                "pairs_per_prompt": number_field(F["pairs_per_prompt"], "pairs_per_prompt", "train_pairs",
                                                 D["pairs_per_prompt"]),
                "temperature": number_field(F["temperature"], "temperature", "train_temp", D["temperature"], 0.05,
                                            help="Noise of the preference labels (0: the higher score always wins)."),
                "sft_steps": number_field(F["sft_steps"], "sft_steps", "train_sft", D["sft_steps"], 50),
                "eval_samples": number_field(F["eval_samples"], "eval_samples", "train_eval", D["eval_samples"]),
                "seed": number_field(F["task_seed"], "task_seed", "train_task_seed", D["task_seed"]),
            }
    form_error = None
    if PROBLEMS:
        form_error = "Start is off until these fields are fixed:\n\n" + "\n".join(f"- {p}" for p in PROBLEMS)
    else:
        try:  # the settings together (e.g. a ratchet without t0), before anything is queued
            train_presenter.train_config(method, **values)
        except ValueError as exc:
            form_error = f"Start is off: {exc}"
    if form_error:
        st.error(form_error)
    else:
        if task == "text":
            train_size = train_presenter.text_train_size(setup_values["n_prompts"], setup_values["pairs_per_prompt"])
        else:
            train_size = (None, checked.n_pairs[0] if checked is not None else None)
        for warning in train_presenter.form_warnings(method, values, *train_size):
            st.warning(warning)
    if checked is not None and setup_error is None and form_error is None:
        memory_note(setup, checked, method, values)
    job_label = st.text_input("Job name (optional)", key="train_name", placeholder="default: method and settings")
    start = st.button("Start training", type="primary", key="train_start", width="stretch",
                      disabled=setup_error is not None or form_error is not None,
                      help="Queue the run; the worker starts it when the jobs before it have ended.")

if task == "text":
    st.title("Train: MOPO and baselines on the synthetic text task")
    st.caption(
        f"The worker trains the built-in **synthetic text task** with the built-in tiny word-level GPT: templated "
        "prompts, short responses, objectives scored exactly by programs: "
        f"**V0 {train_presenter.OBJECTIVES[0]}** (primary, maximised) and **V1 {train_presenter.OBJECTIVES[1]}** "
        "(secondary, constrained by MOPO's threshold b1). Each run first "
        f"trains its reference model by SFT, then trains the policy from it, and ends by evaluating it against the "
        f"reference on held-out prompts. Pick **{TASKS['dataset']}** in the sidebar to train a real checkpoint. "
        f"Runs are stored in {path}.")
else:
    st.title("Train: MOPO and baselines on a preference file")
    st.caption(
        "The worker fine-tunes the chosen local checkpoint (LoRA adapters, or all weights with rank 0) on the "
        "file's training split, prompts in the model's chat template; the reference is the starting checkpoint. "
        "Each run ends by sampling the policy and the reference on the held-out test prompts, and the preference "
        "model scores both: a point's values are the policy's win-rates against the reference under that judge, so "
        "they are only as good as the judge's held-out accuracy (in the run's config on the Compare page). Runs "
        f"are stored in {path}.")


def _enqueue(configs: list[tuple[str, object]], setup) -> list[int]:
    ids = [jobs.enqueue_training(path, config, setup, name=name) for name, config in configs]
    jobs.ensure_worker(path)
    return ids


def _setup():
    """The run's setup: the text task's from its form, or the checked dataset setup."""
    return train_presenter.text_setup(**setup_values) if task == "text" else setup


if start:
    try:
        with st.spinner("Checking the settings (the first time loads torch)…"):
            config = train_presenter.train_config(method, **values)
            (job_id,) = _enqueue([(job_label.strip() or train_presenter.job_name(config), config)], _setup())
    except ValueError as exc:
        st.error(str(train_presenter.dataset_error(exc)) if hasattr(exc, "field") else str(exc))
    else:
        st.session_state[RUN_CHOICE] = FOLLOW
        _say("success", f"Queued job {job_id}: {job_label.strip() or train_presenter.job_name(config)}.")

with st.expander("Sweep: MOPO at several thresholds and the baseline grids, in one action"):
    st.caption("Every job uses the sidebar's task, τ, steps, optimiser, logging and seed; the front on the Pareto "
               "plane below fills in as the runs finish.")
    if n_objectives != 2 or setup_error is not None or form_error is not None:
        st.info("A sweep varies the threshold b1 on the one secondary objective of a two-objective task"
                + (f"; this one has {n_objectives}." if n_objectives != 2 else
                   "; finish the sidebar's setup first."))
    else:
        cols = st.columns([2, 2, 3])
        thresholds_text = cols[0].text_input("Sweep thresholds b1 (MOPO; comma-separated)",
                                             "0.5, 0.55, 0.6, 0.65, 0.7", key="train_sweep_thresholds")
        weight_label = f"Weights w on {objectives[1]}"
        weights_text = cols[1].text_input(f"{weight_label} (MODPO, weighted DPO)", "0.25, 0.5, 0.75",
                                          key="train_sweep_weights")
        baselines = cols[2].multiselect("Baselines", train_presenter.SWEEP_BASELINES,
                                        default=list(train_presenter.SWEEP_BASELINES),
                                        format_func=train_presenter.SHORT_NAMES.get, key="train_sweep_baselines")
        try:
            sweep_thresholds = train_presenter.parse_numbers(thresholds_text, "Sweep thresholds b1")
            sweep_weights = (train_presenter.parse_numbers(weights_text, weight_label)
                             if set(baselines) & set(train_presenter.WEIGHTED_METHODS) else ())
            n_jobs = len(sweep_thresholds) + ("dpo" in baselines) + len(sweep_weights) * len(
                set(baselines) & set(train_presenter.WEIGHTED_METHODS))
            sweep_error = None
        except ValueError as exc:
            sweep_error, n_jobs = str(exc), 0
            st.error(sweep_error)
        if st.button(f"Queue sweep ({n_jobs} jobs)", key="train_sweep", disabled=sweep_error is not None):
            try:
                with st.spinner("Checking the settings (the first time loads torch)…"):
                    base = train_presenter.train_config("mopo", **{k: v for k, v in values.items() if k not in (
                        "thresholds", "objective_weights", "online", "n_candidates", "max_new_tokens")})
                    configs = train_presenter.sweep_configs(base, sweep_thresholds, sweep_weights, tuple(baselines),
                                                            weight_label)
                    ids = _enqueue(configs, _setup())
            except ValueError as exc:
                st.error(str(exc))
            else:
                st.session_state[RUN_CHOICE] = FOLLOW
                _say("success", f"Queued the sweep: jobs {ids[0]}–{ids[-1]} ({len(ids)} runs).")

@st.cache_data(show_spinner="Solving the exact tabular MOPO over the file's responses…", max_entries=16)
def threshold_preview(data: str, stamp: tuple, fmt: str, objective: str, tau: float):
    return preview_presenter.preview_file(data, tau=tau, fmt=fmt, objective=objective or None)


if task != "text":
    with st.expander("Threshold preview: which thresholds this file's labels can support, before any training"):
        st.caption("The exact tabular MOPO over the file's own responses (win-rates from its labels with a tie-centred "
                   "prior, π_ref uniform over each prompt's responses, one λ shared across prompts; "
                   "docs/threshold_preview.md). Its values are win-rates against the file's responses, not the "
                   "judge's scale a trained run is measured on: for orientation, not a check.")
        data_path = (st.session_state.get("train_data") or "").strip()
        tau_value = values.get("tau")
        if not data_path:
            st.info("Give the preference file in the sidebar first.")
        elif not isinstance(tau_value, float) or not tau_value > 0:
            st.info("Set a valid KL strength τ in the sidebar first: the preview uses it.")
        elif st.button("Preview thresholds", key="train_preview"):
            resolved = str(Path(data_path).expanduser().resolve())
            try:
                result = threshold_preview(resolved, _stamp(resolved), st.session_state.get("train_format", "auto"),
                                           (st.session_state.get("train_objective") or "").strip(), tau_value)
            except ValueError as exc:
                st.error(str(exc))
            else:
                for line in preview_presenter.summary_lines(result):
                    st.markdown(f"- {line}")
                show_table(preview_presenter.preview_table(result), "train_preview_table")
                show_figure(preview_presenter.preview_figure(result), "train_preview_figure")

if any(j.status in jobs.ACTIVE_STATUSES for j in jobs.list_jobs(path)):
    jobs.ensure_worker(path)  # queued jobs left by a previous server start here
    st.session_state[POLLING] = True
else:
    st.session_state[POLLING] = False
st.fragment(live_panel, run_every=POLL_S if st.session_state[POLLING] else None)(path)
