"""Train: queue MOPO or a baseline on the built-in synthetic text task (tiny word-level GPT), run
in a worker process (mopo_core.jobs), and watch it live: the queue with Cancel / Resume, the
selected run's curves (loss, λ, constraint estimate against its threshold, ESS, KL, tokens/s)
and the Pareto plane of the finished runs' points. A thin view over mopo_core.jobs and
mopo_core.train_view.

Polling: the live part is a fragment re-run every POLL_S seconds while a job is queued or
running (it calls jobs.reconcile and jobs.ensure_worker each time); when the last job ends it
asks for one full rerun, which draws it without the timer. The worker belongs to this server
process: when the server stops, the running job ends ``interrupted`` after its current step
and the queued ones wait for the next server (they start when the Train page is opened).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app.shared import export_buttons, run_store, show_figure, show_table, style
from mopo_core import jobs
from mopo_core import train_view as TV
from mopo_core.runs import RunStore

POLL_S = 1.5
POLLING = "train_polling"
MESSAGE = "train_message"
RUN_CHOICE = "train_run"
FOLLOW = 0  # the run selector's "follow the running job" entry
F = TV.FIELD_LABELS
D = TV.DEFAULTS
BADGES = {"queued": "gray", "running": "blue", "done": "green", "cancelled": "orange", "failed": "red",
          "interrupted": "violet"}
METHOD_COLOURS = dict(zip(TV.METHODS, plotly.colors.qualitative.Plotly))
CLI = ("python -m mopo_core train --data pairs.jsonl --model ./checkpoint --prefmodel ./judge --lora-r 8 "
       "--threshold 0.6 --checkpoint-dir ./ckpt")


@st.cache_data(show_spinner=False, max_entries=256)
def load_run(store_path: str, run_id: int, n_points: int, status: str, finished_at: str | None):
    """A finished run from the store; the key holds what changes while a run is still being written."""
    return RunStore(store_path).get_run(run_id)


def _say(kind: str, text: str) -> None:
    st.session_state[MESSAGE] = (kind, text)


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
        job_id = jobs.resume(path, run_id)
    except ValueError as exc:
        _say("error", str(exc))
        return
    jobs.ensure_worker(path)
    st.session_state[RUN_CHOICE] = run_id
    _say("success", f"Queued job {job_id}: resume run {run_id} from its last checkpoint.")


# ----------------------------------------------------------------------------- figures

PANELS = [  # (metric prefix, subplot title, y-axis title)
    ("loss", "Loss", "loss (lower is better ↓)"),
    ("lambda_", "Multiplier λ per constraint", "λ ≥ 0 (grows while the<br>estimate is below b ↑)"),
    ("constraint_", "Constraint estimate and threshold b", "harmlessness win-rate<br>estimate (higher is better ↑)"),
    ("ess", "Effective sample size", "ESS / rows (1 = even<br>weights; higher ↑)"),
    ("kl_to_reference", "KL to the reference", "KL(π ‖ π_ref)<br>(nats per response)"),
    ("tokens_per_s", "Throughput", "tokens per second<br>(higher is faster ↑)"),
]


def curves_figure(frame: pd.DataFrame, title: str, method: str, kl_every, online: bool = False) -> go.Figure:
    fig = make_subplots(rows=2, cols=3, subplot_titles=[p[1] for p in PANELS], vertical_spacing=0.2,
                        horizontal_spacing=0.09)
    names = TV.OBJECTIVES
    palette = plotly.colors.qualitative.D3
    for i, (prefix, _, y_title) in enumerate(PANELS):
        row, col = i // 3 + 1, i % 3 + 1
        traces = []
        if prefix == "lambda_":
            for j in range(1, TV.constraint_count(frame) + 1):
                if f"lambda_{j}" in frame:
                    traces.append((f"lambda_{j}", f"λ{j} (multiplier of {names[j]})", dict(color=palette[1])))
        elif prefix == "constraint_":
            for j in range(1, TV.constraint_count(frame) + 1):
                traces.append((f"constraint_{j}", f"V{j} {names[j]}: estimate on the step's batch",
                               dict(color=palette[2])))
                if f"threshold_{j}" in frame:
                    traces.append((f"threshold_{j}", f"threshold b{j} in force", dict(color="black", dash="dash")))
        elif prefix in frame:
            label = {"loss": f"loss ({TV.SHORT_NAMES.get(method, method)})", "ess": "ESS / rows",
                     "kl_to_reference": "KL(π ‖ π_ref), sampled", "tokens_per_s": "tokens/s"}[prefix]
            traces.append((prefix, label, dict(color=palette[[0, 0, 0, 3, 4, 5][i]])))
        for column, name, line in traces:
            data = frame[frame[column].notna()]
            fig.add_scatter(x=data["step"], y=data[column], mode="lines+markers" if len(data) < 40 else "lines",
                            name=name, line=line, marker=dict(size=4), row=row, col=col,
                            hovertemplate=f"{name}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>")
        if not traces or all(frame[c].notna().sum() == 0 for c, _, _ in traces):
            if prefix in ("lambda_", "constraint_", "ess") and method != "mopo":
                why = f"not logged by {TV.SHORT_NAMES.get(method, method)} (MOPO only)"
            elif prefix == "kl_to_reference" and not kl_every and not online:
                why = "KL estimate off for this run<br>(sidebar: KL estimate every)"
            else:
                why = "no step logged yet"
            axis = "" if i == 0 else str(i + 1)
            fig.add_annotation(text=why, x=0.5, y=0.5, xref=f"x{axis} domain", yref=f"y{axis} domain",
                               showarrow=False, font=dict(color="grey"))
        fig.update_yaxes(title_text=y_title, row=row, col=col, title_font_size=11)
        fig.update_xaxes(title_text="training step →", row=row, col=col, title_font_size=11)
    fig.update_annotations(font_size=12)
    style(fig, title, height=560)
    # Not win-rates (the shared subtitle's convention): say what these series are instead.
    fig.update_layout(title_text=f"{title}<br><sup>Logged by the worker at every step; the constraint estimate is "
                                 f"the harmlessness win-rate on the step's batch (the threshold b1 dashed)</sup>")
    return fig.update_layout(margin=dict(t=110))


def _plane_range(values: list[float], min_span: float = 0.2) -> list[float]:
    lo, hi = min(values), max(values)
    if hi - lo < min_span:
        lo, hi = (lo + hi - min_span) / 2, (lo + hi + min_span) / 2
    pad = 0.08 * (hi - lo)
    return [lo - pad, hi + pad]


def plane_figure(points: pd.DataFrame, live: list[dict], run_id: int | None, run_status: str | None) -> go.Figure:
    """x = V1 harmlessness, y = V0 helpfulness (win-rates vs the reference model); the finished
    runs' points, their front, the reference point and the selected run's live constraint."""
    ref = TV.REFERENCE_POINT
    xs = [ref[1], *points["v1"], *[c["estimate"] for c in live], *[c["threshold"] for c in live
                                                                    if np.isfinite(c["threshold"])]]
    ys = [ref[0], *points["v0"]]
    x_range, y_range = _plane_range(xs), _plane_range(ys)
    fig = go.Figure()
    for method, d in points.groupby("method", sort=False):
        on = d["on_front"].to_numpy(dtype=bool)
        custom = np.stack([d["run"], d["job_name"], d["params_text"], d["stderr0"], d["stderr1"]], axis=1)
        fig.add_scatter(
            x=d["v1"], y=d["v0"], mode="markers", name=f"{TV.SHORT_NAMES.get(method, method)}: finished runs' points",
            marker=dict(color=METHOD_COLOURS.get(method, "grey"), size=np.where(on, 13, 9).tolist(),
                        symbol=np.where(on, "diamond", "circle").tolist(),
                        line=dict(color="black", width=np.where(on, 1.5, 0).tolist()),
                        opacity=np.where(on, 1.0, 0.5).tolist()),
            error_x=dict(type="data", array=d["stderr1"].fillna(0), thickness=1, width=0, color="lightgrey"),
            error_y=dict(type="data", array=d["stderr0"].fillna(0), thickness=1, width=0, color="lightgrey"),
            customdata=custom,
            hovertemplate=("run %{customdata[0]} · %{customdata[1]}<br>%{customdata[2]}<br>"
                           "V1 harmlessness %{x:.3f} ± %{customdata[4]:.3f}<br>"
                           "V0 helpfulness %{y:.3f} ± %{customdata[3]:.3f}<extra></extra>"))
    if points["on_front"].any():
        path = TV.front_staircase(points, (x_range[0], y_range[0]))
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
    for c in live if run_status in ("running", "queued") else []:
        fig.add_scatter(x=[c["estimate"]] * 2, y=y_range, mode="lines", line=dict(color="crimson", width=3),
                        name=f"run {run_id} live, step {c['step']}: V{c['j']} estimate {c['estimate']:.3f} "
                             f"(training batch; V0 is measured when the run ends)",
                        hovertemplate=f"run {run_id}, step {c['step']}<br>V{c['j']} estimate on the step's batch: "
                                      f"{c['estimate']:.4f}<br>λ{c['j']} = {c['lam']:.4f}<extra></extra>")
        if np.isfinite(c["threshold"]):
            fig.add_scatter(x=[c["threshold"]] * 2, y=y_range, mode="lines",
                            line=dict(color="black", width=1.5, dash="dash"),
                            name=f"run {run_id}: threshold b{c['j']} = {c['threshold']:.3g} (feasible to its right)",
                            hoverinfo="skip")
    title = ("Pareto plane: finished runs' points<br><sup>"
             f"Reference point ({ref[1]:g}, {ref[0]:g}) = the reference model against itself<br>"
             "Error bars: ± one standard error over the held-out prompts</sup>")
    style(fig, title,
          x_title=f"V1 {TV.OBJECTIVES[1]} (win-rate vs the reference model; higher is better →)",
          y_title=f"V0 {TV.OBJECTIVES[0]} (win-rate vs the<br>reference model; higher is better ↑)", height=520)
    fig.update_xaxes(range=x_range)
    fig.update_yaxes(range=y_range)
    # The shared subtitle says "against the behaviour policy": here that policy is the reference model.
    fig.update_layout(title_text=f"{title}<br><sup>All objectives maximised · values are win-rates against the "
                                 "reference model (the behaviour policy of these runs)</sup>")
    return fig.update_layout(margin=dict(t=140))


# ----------------------------------------------------------------------------- the live part


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
            cols[1].markdown(f"{r['name'] or '(unnamed)'}" + (" · resume" if r["kind"] == "resume" else ""))
            cols[2].markdown(f":{BADGES[r['status']]}-badge[{r['status']}]")
            cols[3].markdown("–" if pd.isna(r["run"]) else f"{int(r['run'])}")
            if pd.isna(r["run"]):
                progress = "preparing (reference SFT)" if r["status"] == "running" else "–"
            else:
                progress = f"step {r['step']} / {r['steps']}"
            cols[4].markdown(progress)
            note = r["error"] or (f"run {r['run_status']}" if r["run_status"] not in (None, "finished", "running")
                                  else "")
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
    queue = TV.queue_frame(path, job_list)
    active = bool(queue["status"].isin(jobs.ACTIVE_STATUSES).any())
    if active != polling:  # a job ended (stop the timer, redraw) or one was queued from here or elsewhere
        st.rerun()

    if MESSAGE in st.session_state:
        kind, text = st.session_state.pop(MESSAGE)
        getattr(st, kind)(text)
    st.subheader("Queue")
    if queue.empty:
        st.info("No job yet: set a run up in the sidebar and press **Start training**, or queue a sweep below.")
        return
    n_active = int(queue["status"].isin(jobs.ACTIVE_STATUSES).sum())
    st.caption(f"{len(queue)} job(s), {n_active} queued or running. One worker process trains them one at a time, "
               f"oldest first{f', refreshing every {POLL_S:g} s' if active else ''}. Cancel stops a run after its "
               "current step (checkpoint kept); Resume continues a cancelled, interrupted or failed run from its "
               "last checkpoint. The queue is stored in the run store, so it survives a server restart.")
    _queue_rows(path, queue)
    export_buttons(queue.drop(columns=["resumable"]), "train_queue")

    run_ids = list(dict.fromkeys(int(r) for r in queue["run"].dropna()[::-1]))
    following = TV.default_run(queue)
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
    frame = TV.metric_frame(run)
    steps = int(run.config.get("steps") or 1)
    step = int(frame["step"].max()) if len(frame) else 0
    name = names.get(run_id) or TV.SHORT_NAMES.get(run.config.get("method"), "run")
    st.progress(min(step / steps, 1.0), text=f"Run {run_id} ({name}): step {step} / {steps} · {run.status}")
    if run.error and run.status != "finished":
        st.caption(f"Run {run_id}: {run.error}")
    live = TV.live_constraints(frame)
    if live and run.status == "running":
        c = live[0]
        st.caption(f"Step {c['step']}: harmlessness estimate {c['estimate']:.3f} against threshold "
                   f"b1 = {c['threshold']:.3g} (λ1 = {c['lam']:.3f}; λ grows while the estimate is below b1).")
    show_figure(curves_figure(frame, f"Run {run_id} ({name}): training curves, step {step} of {steps}",
                              run.config.get("method"), run.config.get("kl_every"), bool(run.config.get("online"))),
                "train_curves", data=frame)

    points = TV.front_points(_front_runs(run_store()), {int(r["run"]): r["name"] for r in
                                                          queue.dropna(subset=["run"]).to_dict("records")
                                                          if r["kind"] != "resume"})
    left, right = st.columns([3, 2])
    with left:
        show_figure(plane_figure(points, live, run_id, run.status), "train_plane", data=points)
    with right:
        st.markdown("**How to read the Pareto plane**")
        st.markdown(
            "- **Markers**: each finished run's point, measured once at its end on held-out prompts: the "
            "policy's win-rates against the reference model (the SFT model every run starts from; 0.5 = as good "
            "as the reference). Outlined diamonds are on the front of these points.\n"
            "- **Red line**: while a run trains only its constraint is estimated (harmlessness, on the step's "
            "batch), not its helpfulness, so the live run is a vertical line, not a point.\n"
            "- **Black dashed line**: the live run's threshold b1; MOPO aims to end to its right.\n"
            "- **×**: the reference point (0.5, 0.5), the reference model against itself.")
        if points.empty:
            st.caption("No run has finished yet: each run's point is added when it finishes (a cancelled run gets "
                       "its point when a resume finishes it).")
    if not points.empty:
        shown = points[["run", "job_name", "method", "v0", "v1", "stderr0", "stderr1", "on_front"]].rename(
            columns={"job_name": "job name", "v0": f"V0 {TV.OBJECTIVES[0]}", "v1": f"V1 {TV.OBJECTIVES[1]}",
                     "stderr0": "± V0 (std. error)", "stderr1": "± V1 (std. error)", "on_front": "on the front"})
        st.markdown("**Finished runs' points** (the same points are on the Compare page, run kind 'train')")
        show_table(shown, "train_points", column_config={
            c: st.column_config.NumberColumn(c, format="%.3f") for c in shown.columns if c.startswith(("V", "±"))})
    with st.expander("Worker log (last lines)"):
        st.code(TV.worker_log_tail(path) or "(empty: no worker has started on this store yet)", language=None)


# ----------------------------------------------------------------------------- the page

st.title("Train: MOPO and baselines on the synthetic text task")
store = run_store()
path = str(store.path)
st.caption(
    f"The worker trains the built-in **synthetic text task** with the built-in tiny word-level GPT: templated prompts, "
    f"short responses, objectives scored exactly by programs: **V0 {TV.OBJECTIVES[0]}** (primary, maximised) and "
    f"**V1 {TV.OBJECTIVES[1]}** (secondary, constrained by MOPO's threshold b1). Each run first trains its reference "
    f"model by SFT, then trains the policy from it, and ends by evaluating it against the reference on held-out "
    f"prompts. Runs are stored in {path}.")
with st.expander("Datasets, local checkpoints, LoRA: from the command line"):
    st.markdown(
        "The worker behind this page trains the text task only. Training a local Hugging Face checkpoint (up to "
        "~1.3B, optionally with LoRA) on a preference file runs from the command line; its run lands in the same "
        f"run store and its point shows on the Compare page:\n\n```\nMOPO_STORE={path} {CLI}\n```\n"
        "(`python -m mopo_core train --help` lists every option.) The robust radius ε is a tabular-solver "
        "option (Explore, Sweep); the language-model trainer has none.")

for job in jobs.reconcile(path):  # jobs whose worker died since the last look (e.g. a server restart)
    st.warning(f"Job {job.id} ({job.name or job.kind}) ended **{job.status}**: {job.error}")

with st.sidebar:
    st.subheader("New training run")
    method = st.selectbox(F["method"], TV.METHODS, format_func=TV.SHORT_NAMES.get, key="train_method")
    st.caption(TV.METHOD_NAMES[method])
    values = {}
    if method == "mopo":
        values["threshold"] = st.number_input(
            F["thresholds"], 0.0, 1.0, D["threshold"], 0.01, format="%.2f", key="train_threshold",
            help="MOPO keeps the policy's harmlessness win-rate (against the reference model) at or above b1 "
                 "while maximising helpfulness.")
    if method in TV.WEIGHTED_METHODS:
        values["secondary_weight"] = st.number_input(
            f"{F['objective_weights']} (helpfulness gets 1 − w)", 0.0, 1.0, D["secondary_weight"], 0.05,
            format="%.2f", key="train_weight")
    values["tau"] = st.number_input(F["tau"], 0.001, 10.0, D["tau"], 0.01, format="%.3f", key="train_tau",
                                    help="Strength of the KL pull to the reference (DPO/IPO call it β).")
    values["steps"] = st.number_input(F["steps"], 1, 100_000, D["steps"], 10, key="train_steps")
    with st.expander("Optimiser, logging, checkpoints"):
        values["batch_size"] = st.number_input(F["batch_size"], 1, 512, D["batch_size"], key="train_batch",
                                               help="Prompts per step for MOPO, preference pairs for the others.")
        values["lr"] = st.number_input(F["lr"], 1e-6, 1.0, D["lr"], format="%.1e", step=1e-4, key="train_lr")
        if method == "mopo":
            values["lambda_lr"] = st.number_input(F["lambda_lr"], 1e-4, 100.0, D["lambda_lr"], 0.1, key="train_lambda_lr")
        values["gradient_accumulation_steps"] = st.number_input(F["gradient_accumulation_steps"], 1, 64, 1,
                                                                key="train_accum")
        online = method == "mopo" and st.session_state.get("train_online", False)
        values["kl_every"] = st.number_input(F["kl_every"] + " (0: off)", 0, 10_000, D["kl_every"],
                                             key="train_kl_every", disabled=online,
                                             help="Online MOPO logs its candidate pool's KL every step instead.")
        values["checkpoint_every"] = st.number_input(F["checkpoint_every"], 1, 100_000, D["checkpoint_every"],
                                                     key="train_checkpoint_every",
                                                     help="A resumed run continues from its last checkpoint.")
        values["seed"] = st.number_input(F["seed"], 0, 1_000_000, D["seed"], key="train_seed")
    if method == "mopo":
        with st.expander("MOPO: lagged reference, ratchet, online"):
            values["t0"] = st.number_input(F["t0"] + " (0: off)", 0, 100_000, D["t0"], key="train_t0",
                                           help="Every t0 steps the reference becomes the policy of t0 steps before.")
            values["beta_ratchet"] = st.number_input(
                F["beta_ratchet"] + " (0: off; needs t0)", 0.0, 1.0, D["beta_ratchet"], 0.01, format="%.3f",
                key="train_beta", help="Every t0 steps: b1 ← max(b1, β · the constraint estimate of t0 steps ago).")
            values["online"] = st.toggle(F["online"], D["online"], key="train_online",
                                         help="Sample candidates from the policy each step, scored by the task's "
                                              "preference oracle.")
            if values["online"]:
                values["n_candidates"] = st.number_input(F["n_candidates"], 2, 64, D["n_candidates"], key="train_cands")
                values["max_new_tokens"] = st.number_input(F["max_new_tokens"], 1, 64, D["max_new_tokens"],
                                                           key="train_new_tokens")
    with st.expander("Task and reference model"):
        setup_values = {
            "n_prompts": st.number_input(F["n_prompts"], TV.MIN_PROMPTS, 10_000, D["n_prompts"], key="train_prompts"),
            "n_candidates": st.number_input("Candidate responses per prompt", 2, 64, D["task_n_candidates"],
                                            key="train_task_cands"),
            "pairs_per_prompt": st.number_input(F["pairs_per_prompt"], 1, 1_000, D["pairs_per_prompt"],
                                                key="train_pairs"),
            "temperature": st.number_input(F["temperature"], 0.0, 10.0, D["temperature"], 0.05, key="train_temp",
                                           help="Noise of the preference labels (0: the higher score always wins)."),
            "sft_steps": st.number_input(F["sft_steps"], 1, 100_000, D["sft_steps"], 50, key="train_sft"),
            "eval_samples": st.number_input(F["eval_samples"], 1, 256, D["eval_samples"], key="train_eval"),
            "seed": st.number_input(F["task_seed"], 0, 1_000_000, D["task_seed"], key="train_task_seed"),
        }
    job_label = st.text_input("Job name (optional)", key="train_name", placeholder="default: method and settings")
    start = st.button("Start training", type="primary", key="train_start", width="stretch",
                      help="Queue the run; the worker starts it when the jobs before it have ended.")


def _enqueue(configs: list[tuple[str, object]], setup) -> list[int]:
    ids = [jobs.enqueue_training(path, config, setup, name=name) for name, config in configs]
    jobs.ensure_worker(path)
    return ids


if start:
    try:
        with st.spinner("Checking the settings (the first time loads torch)…"):
            config = TV.train_config(method, **values)
            setup = TV.text_setup(**setup_values)
        (job_id,) = _enqueue([(job_label.strip() or TV.job_name(config), config)], setup)
    except ValueError as exc:
        st.error(str(exc))
    else:
        st.session_state[RUN_CHOICE] = FOLLOW
        _say("success", f"Queued job {job_id}: {job_label.strip() or TV.job_name(config)}.")

with st.expander("Sweep: MOPO at several thresholds and the baseline grids, in one action"):
    st.caption("Every job uses the sidebar's τ, steps, optimiser, logging, seed and task settings; the front on the "
               "Pareto plane below fills in as the runs finish.")
    cols = st.columns([2, 2, 3])
    thresholds_text = cols[0].text_input("Sweep thresholds b1 (MOPO; comma-separated)", "0.5, 0.55, 0.6, 0.65, 0.7",
                                         key="train_sweep_thresholds")
    weights_text = cols[1].text_input("Weights w on harmlessness (MODPO, weighted DPO)", "0.25, 0.5, 0.75",
                                      key="train_sweep_weights")
    baselines = cols[2].multiselect("Baselines", TV.SWEEP_BASELINES, default=list(TV.SWEEP_BASELINES),
                                    format_func=TV.SHORT_NAMES.get, key="train_sweep_baselines")
    try:
        sweep_thresholds = TV.parse_numbers(thresholds_text, "Sweep thresholds b1")
        sweep_weights = (TV.parse_numbers(weights_text, "Weights w on harmlessness")
                         if set(baselines) & set(TV.WEIGHTED_METHODS) else ())
        n_jobs = len(sweep_thresholds) + ("dpo" in baselines) + len(sweep_weights) * len(
            set(baselines) & set(TV.WEIGHTED_METHODS))
        sweep_error = None
    except ValueError as exc:
        sweep_error, n_jobs = str(exc), 0
        st.error(sweep_error)
    if st.button(f"Queue sweep ({n_jobs} jobs)", key="train_sweep", disabled=sweep_error is not None):
        try:
            with st.spinner("Checking the settings (the first time loads torch)…"):
                base = TV.train_config("mopo", **{k: v for k, v in values.items() if k not in (
                    "threshold", "secondary_weight", "online", "n_candidates", "max_new_tokens")})
                configs = TV.sweep_configs(base, sweep_thresholds, sweep_weights, tuple(baselines))
                setup = TV.text_setup(**setup_values)
            ids = _enqueue(configs, setup)
        except ValueError as exc:
            st.error(str(exc))
        else:
            st.session_state[RUN_CHOICE] = FOLLOW
            _say("success", f"Queued the sweep: jobs {ids[0]}–{ids[-1]} ({len(ids)} runs).")

if any(j.status in jobs.ACTIVE_STATUSES for j in jobs.list_jobs(path)):
    jobs.ensure_worker(path)  # queued jobs left by a previous server start here
    st.session_state[POLLING] = True
else:
    st.session_state[POLLING] = False
st.fragment(live_panel, run_every=POLL_S if st.session_state[POLLING] else None)(path)
