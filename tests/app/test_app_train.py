"""The Train page through Streamlit's AppTest, and its engine side (app.presenters.train).

The store is a temporary file ($MOPO_STORE). Most tests replace jobs.ensure_worker by a recorder,
so that queued jobs stay queued; the cancel/resume test runs the worker's loop in a thread of
this process, held at step 2 until the page's Cancel button was pressed; one test lets the page
start a real worker process on a tiny task and waits for its run to finish."""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.app_support import figures

from app import shared
from mopo_core.training import jobs
from app.presenters import train as train_presenter
from mopo_core.runs import Run, RunStore

TASKS = {"text": "Synthetic text task (built-in tiny model)", "dataset": "Preference file + local checkpoint"}

PAGE = str(Path(__file__).parents[2] / "app" / "views" / "train.py")
TINY = {"train_steps": 6, "train_prompts": 10, "train_sft": 20, "train_eval": 2}


@pytest.fixture()
def store_path(tmp_path, monkeypatch):
    """A fresh store for the page; worker processes started here train on one thread and are
    killed at the end."""
    path = tmp_path / "runs.sqlite"
    monkeypatch.setenv("MOPO_STORE", str(path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    shared.run_store.clear()
    st.cache_data.clear()
    jobs._children.clear()
    yield path
    for proc in jobs._children.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    jobs._children.clear()
    shared.run_store.clear()


@pytest.fixture()
def no_worker(monkeypatch):
    """jobs.ensure_worker records its calls and starts nothing (queued jobs stay queued)."""
    calls = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda path: calls.append(str(path)))
    return calls


def _page(values: dict | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception
    for key, value in (values or {}).items():
        at.number_input(key=key).set_value(value)
    if values:
        at.run()
    return at


def _text(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption])


def _buttons(at) -> list[str]:
    return [b.label for b in at.button]


def _progress(at) -> str:
    bars = at.get("progress")
    return bars[0].proto.text if bars else ""


def _names(fig) -> list[str]:
    return [t.get("name") or "" for t in fig["data"]]


# ----------------------------------------------------------------------------- the page


def test_the_empty_page_explains_what_the_worker_trains_and_shows_no_control_that_does_nothing(store_path, no_worker):
    at = _page()
    assert "No job yet" in at.info[0].value
    intro = at.caption[0].value
    assert "synthetic text task" in intro and "V0 helpfulness" in intro and str(store_path) in intro
    assert at.radio(key="train_task").options == list(TASKS.values()) and at.radio(key="train_task").index == 0
    assert "Preference file + local checkpoint" in intro  # where datasets and real checkpoints are trained
    assert at.number_input(key="train_eps").value == 0.0  # MOPO's robust radius, off by default
    assert at.selectbox(key="train_method").options == [train_presenter.SHORT_NAMES[m] for m in train_presenter.METHODS]
    assert not at.get("plotly_chart")
    at.selectbox(key="train_method").set_value("modpo").run()
    assert at.number_input(key="train_weight").value == 0.5
    assert not [w for w in at.number_input if w.key in ("train_threshold", "train_eps")]


def test_start_queues_a_job_the_queue_shows_it_and_cancel_of_a_queued_job_is_immediate(store_path, no_worker):
    at = _page(TINY)
    at.button(key="train_start").click().run()
    assert not at.exception
    (job,) = jobs.list_jobs(store_path)
    assert job.status == "queued" and job.config["steps"] == 6 and job.config["kl_every"] == 10
    assert job.setup["n_prompts"] == 10 and job.setup["sft_steps"] == 20
    assert job.name == "MOPO b1=0.6 τ=0.08 · 6 steps"
    assert no_worker, "the page did not ask for a worker after queueing"
    assert f"Queued job {job.id}" in at.success[0].value
    text = _text(at)
    assert job.name in text and ":gray-badge[queued]" in text
    settings = f"lr {job.config['lr']:g} · batch {job.config['batch_size']} · seed {job.config['seed']}"
    assert f":gray[{settings}]" in text  # what the name leaves out, under it: rows differing in lr or batch differ
    assert "Cancel job 1" in _buttons(at)
    at.button(key="train_cancel_1").click().run()
    assert not at.exception
    assert jobs.get_job(store_path, 1).status == "cancelled"
    assert "cancelled before it started" in at.info[0].value
    assert ":orange-badge[cancelled]" in _text(at)
    assert not [b for b in _buttons(at) if b.startswith(("Cancel job", "Resume run"))]  # no run to resume


def test_a_robust_mopo_run_is_queued_with_its_radius(store_path, no_worker):
    at = _page(TINY)
    at.number_input(key="train_eps").set_value(0.15).run()
    at.number_input(key="train_chi_lr").set_value(0.25)
    at.button(key="train_start").click().run()
    assert not at.exception
    (job,) = jobs.list_jobs(store_path)
    assert (job.config["eps"], job.config["chi_lr"]) == (0.15, 0.25) and job.name.endswith("ε=0.15 τ=0.08 · 6 steps")


def test_bad_input_gets_an_error_naming_the_field_and_queues_nothing(store_path, no_worker):
    at = _page()
    at.number_input(key="train_beta").set_value(0.9).run()  # a ratchet without t0: refused before Start
    assert not at.exception
    assert "Ratchet β (beta_ratchet)" in at.error[0].value and "t0" in at.error[0].value
    assert at.button(key="train_start").proto.disabled and not [b for b in at.button if b.key == "train_sweep"]
    assert any("finish the sidebar's setup first" in i.value for i in at.info)
    at.number_input(key="train_beta").set_value(0.0)
    at.toggle(key="train_online").set_value(True).run()
    assert at.number_input(key="train_kl_every").proto.disabled  # online logs its pool's KL every step
    at.text_input(key="train_sweep_thresholds").set_value("0.5, abc").run()
    assert "Sweep thresholds b1: 'abc' is not a number" in [e.value for e in at.error]
    assert at.button(key="train_sweep").proto.disabled
    at.text_input(key="train_sweep_thresholds").set_value("0.5, 1.5").run()
    assert any("1.5 is outside [0, 1]" in e.value for e in at.error)
    assert jobs.list_jobs(store_path) == []


def _errors(at) -> str:
    return "\n".join(e.value for e in at.error)


def test_a_value_typed_out_of_range_turns_start_off_names_the_field_and_is_kept_as_typed(store_path, no_worker):
    at = _page(TINY)
    at.number_input(key="train_threshold").set_value(1.5).run()
    assert not at.exception
    assert at.number_input(key="train_threshold").value == 1.5  # not put back to the old 0.6
    assert at.button(key="train_start").proto.disabled
    assert "Threshold b1 on harmlessness: 1.5 is outside the allowed range; give a number in [0, 1]" in _errors(at)
    at.number_input(key="train_threshold").set_value(0.7).run()
    assert not at.error and not at.button(key="train_start").proto.disabled
    at.button(key="train_start").click().run()
    (job,) = jobs.list_jobs(store_path)
    assert job.config["thresholds"] == [0.7] and job.name.startswith("MOPO b1=0.7")


@pytest.mark.parametrize("key, value, message", [
    ("train_tau", 0.0, "τ (KL strength; β of DPO/IPO): 0 is outside the allowed range; give a number in (0, 10]"),
    ("train_steps", 0, "Steps: 0 is outside the allowed range; give a whole number in [1, 100000]"),
    ("train_batch", 0, "Batch size: 0 is outside the allowed range; give a whole number in [1, 512]"),
    ("train_lr", 0.0, "Learning rate: 0 is outside the allowed range; give a number in (0, 1]"),
    ("train_prompts", 5, "Prompts: 5 is outside the allowed range; give a whole number in [10, 10000]"),
    ("train_steps", None, "Steps: empty; give a whole number in [1, 100000]"),
])
def test_tau_steps_and_other_fields_out_of_range_turn_start_off_and_queue_nothing(store_path, no_worker, key, value,
                                                                                  message):
    at = _page()
    at.number_input(key=key).set_value(value).run()
    assert not at.exception
    assert at.number_input(key=key).value == value
    assert message in _errors(at) and at.button(key="train_start").proto.disabled
    assert not [b for b in at.button if b.key == "train_sweep"]  # the sweep uses the same fields
    assert jobs.list_jobs(store_path) == []


def test_implausible_settings_are_warned_about_before_start_naming_the_field(store_path, no_worker):
    at = _page()
    assert not at.warning
    at.number_input(key="train_lr").set_value(1.0).run()
    assert not at.exception and not at.error
    (warning,) = [w.value for w in at.warning]
    assert warning.startswith("Learning rate (lr) = 1 is above 0.1")
    assert not at.button(key="train_start").proto.disabled  # allowed, only warned about
    at.number_input(key="train_batch").set_value(512).run()
    batch = [w.value for w in at.warning if w.value.startswith("Batch size (batch_size) = 512")]
    assert batch and "larger than the training split (about 32 prompts)" in batch[0]


def _stored_text_runs(store_path, monkeypatch, specs) -> list[int]:
    """Text-task train runs written straight to the store, one per (method, thresholds, values,
    stderr, status), each with one evaluated point, and a job list that names them (no worker)."""
    store = RunStore(store_path)
    runs = []
    for method, thresholds, values, stderr, status in specs:
        run_id = store.create_run("train", {"task": "text", "method": method, "steps": 4, "thresholds": thresholds,
                                            "objectives": list(train_presenter.OBJECTIVES)})
        store.log_metrics(run_id, 4, {"loss": 1.0})
        store.add_points(run_id, [{"label": method, "params": {"tau": 0.08}, "values": values,
                                   "extra": {"win_rate_stderr": stderr}}])
        store.set_status(run_id, status)
        runs.append(run_id)
    monkeypatch.setattr(jobs, "list_jobs", lambda path, status=None: [jobs.Job(
        i + 1, "train_text", f"job {i + 1}", {"steps": 4, "method": "mopo"}, {}, None, "done", r, False, 99, None,
        "t", "t", "t") for i, r in enumerate(runs)])
    return runs


def test_the_finished_runs_table_says_per_threshold_whether_the_held_out_point_met_it(store_path, no_worker,
                                                                                      monkeypatch):
    _stored_text_runs(store_path, monkeypatch, [("mopo", [0.75], [0.6, 0.533], [0.02, 0.03], "finished"),
                                                ("mopo", [0.6], [0.55, 0.718], [0.02, 0.03], "finished"),
                                                ("mopo", [0.7], [0.58, 0.69], [0.02, 0.03], "finished"),
                                                ("dpo", [0.5], [0.7, 0.4], [0.02, 0.03], "finished")])
    at = _page()
    assert not at.exception
    table = next(df.value for df in at.dataframe if "on the front" in df.value.columns)
    assert {"b1", "met b1"} <= set(table.columns)
    assert table["met b1"].tolist() == ["no", "yes", "no (within 1 SE)", "–"]
    assert table["b1"].tolist() == ["0.750", "0.600", "0.700", "–"]  # on screen: rounded; DPO has no threshold
    assert table["method"].tolist() == ["MOPO", "MOPO", "MOPO", "DPO"]
    assert not {"None", "nan", "NaN"} & {str(v) for v in table.to_numpy().ravel()}
    config = next(df.proto.columns for df in at.dataframe if "on the front" in df.value.columns)
    assert "Standard error of V0" in config and "win_rate_stderr" in config  # the technical name in the tooltip
    plane = figures(at)[1]
    missed = next(t for t in plane["data"] if t["name"].startswith("MOPO run that missed"))
    met = next(t for t in plane["data"] if t["name"].startswith("MOPO run that met"))
    assert list(missed["x"]) == pytest.approx([0.533, 0.69]) and list(met["x"]) == pytest.approx([0.718])
    text = _text(at)
    assert "MOPO aims to end to its right" not in text
    assert "training-batch estimate" in text and "held-out" in text and "met b1" in text


def test_the_smoothing_slider_draws_noisy_curves_smoothed_over_their_raw_values(store_path, no_worker, monkeypatch):
    (run,) = _stored_text_runs(store_path, monkeypatch, [("mopo", [0.6], [0.6, 0.6], [0.02, 0.02], "finished")])
    store = RunStore(store_path)
    losses, estimates = [3.0, 1.0, 2.0, 0.5], [0.4, 0.7, 0.5, 0.65]
    for step, (loss, estimate) in enumerate(zip(losses, estimates), start=1):
        store.log_metrics(run, step, {"loss": loss, "lambda_1": 0.1 * step, "constraint_1": estimate,
                                      "threshold_1": 0.6})
    at = _page()
    curves = figures(at)[0]
    assert [t["name"] for t in curves["data"] if "smoothed" in t["name"] or "(raw)" in t["name"]] == []  # 0: raw
    at.slider(key="train_smoothing").set_value(0.5).run()
    assert not at.exception
    curves = figures(at)[0]
    traces = {t["name"]: t for t in curves["data"]}
    raw, smooth = traces["loss (MOPO) (raw)"], traces["loss (MOPO), smoothed (EMA 0.5)"]
    assert list(raw["y"]) == losses
    # by hand: levels 1.5, 1.25, 1.625, 1.0625 over weights 0.5, 0.75, 0.875, 0.9375 (debiased as TensorBoard)
    assert list(smooth["y"]) == pytest.approx([3.0, 5 / 3, 13 / 7, 17 / 15])
    assert "V1 harmlessness: estimate on the step's batch, smoothed (EMA 0.5)" in traces
    assert list(traces["λ1 (multiplier of harmlessness)"]["y"]) == pytest.approx([0.1, 0.2, 0.3, 0.4])  # as logged
    assert list(traces["threshold b1 in force"]["y"]) == [0.6] * 4
    assert "smoothed: EMA 0.5, raw values faint" in curves["layout"]["title"]["text"]  # the subtitle says so


def test_a_diverged_run_is_off_the_plane_until_asked_for(store_path, no_worker, monkeypatch):
    runs = _stored_text_runs(store_path, monkeypatch, [("mopo", [0.5], [0.6, 0.55], [0.02, 0.02], "finished"),
                                                       ("mopo", [0.5], [0.9, 0.9], [0.02, 0.02], "diverged")])
    at = _page()
    assert not at.exception
    table = next(df.value for df in at.dataframe if "on the front" in df.value.columns)
    assert table["run"].tolist() == [runs[0]]  # the diverged run's (0.9, 0.9) would dominate: it is hidden
    box = at.checkbox(key="train_show_diverged")
    assert f"run {runs[1]}" in box.label
    box.check().run()
    table = next(df.value for df in at.dataframe if "on the front" in df.value.columns)
    assert sorted(table["run"].tolist()) == sorted(runs)


def test_one_action_queues_a_threshold_sweep_and_the_baseline_grids(store_path, no_worker):
    at = _page({"train_steps": 30})
    at.number_input(key="train_tau").set_value(0.1)
    at.text_input(key="train_sweep_thresholds").set_value("0.55, 0.65")
    at.text_input(key="train_sweep_weights").set_value("0.3, 0.7").run()
    assert at.button(key="train_sweep").label == "Queue sweep (7 jobs)"
    at.button(key="train_sweep").click().run()
    assert not at.exception
    queued = jobs.list_jobs(store_path)
    assert [j.config["method"] for j in queued] == ["mopo", "mopo", "dpo", "modpo", "modpo", "weighted_dpo",
                                                    "weighted_dpo"]
    assert [j.config["thresholds"] for j in queued[:2]] == [[0.55], [0.65]]
    assert [j.config["objective_weights"] for j in queued[3:]] == [pytest.approx(w) for w in
                                                                   ([0.7, 0.3], [0.3, 0.7]) * 2]
    assert {j.config["steps"] for j in queued} == {30} and {j.config["tau"] for j in queued} == {0.1}
    assert all(j.status == "queued" for j in queued) and no_worker
    assert "Queued the sweep: jobs 1–7 (7 runs)" in at.success[0].value
    assert sum(b.startswith("Cancel job") for b in _buttons(at)) == 7


def test_cancel_and_resume_buttons_drive_the_worker_and_the_live_charts_follow(store_path, no_worker, monkeypatch):
    """The worker's loop runs in a thread here, held after step 2 until Cancel was pressed."""
    at_step_2, go_on = threading.Event(), threading.Event()
    on_step = jobs._Worker.on_step

    def held(self, step, metrics):
        if step == 2 and self.job.kind == "train_text":
            at_step_2.set()
            go_on.wait(120)
        on_step(self, step, metrics)

    monkeypatch.setattr(jobs._Worker, "on_step", held)

    def serve():
        path = jobs._prepare(store_path)
        jobs._Worker(path, *jobs._register_worker(path)).serve()

    at = _page({**TINY, "train_steps": 12})
    at.button(key="train_start").click().run()
    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    assert at_step_2.wait(180), "the worker did not reach step 2"
    at.run()
    assert not at.exception
    assert _progress(at) == "Run 1 (MOPO b1=0.6 τ=0.08 · 12 steps): step 2 / 12 · running"
    assert ":blue-badge[running]" in _text(at) and "step 2 / 12" in _text(at)
    curves, plane = figures(at)
    loss = next(t for t in curves["data"] if t["name"] == "loss (MOPO)")
    assert list(loss["x"]) == [1, 2]
    assert {"λ1 (multiplier of harmlessness)", "threshold b1 in force"} <= set(_names(curves))
    assert any(n.startswith("run 1 live, step 2: constraint on the training batch") for n in _names(plane))
    assert any(n.startswith("run 1: threshold b1 = 0.6") for n in _names(plane))

    at.button(key="train_cancel_1").click().run()
    assert "cancel requested" in at.info[0].value
    go_on.set()
    worker.join(120)
    assert jobs.get_job(store_path, 1).status == "cancelled"
    at.run()
    assert _progress(at).endswith("step 2 / 12 · cancelled")
    assert "Resume run 1" in _buttons(at)

    at.button(key="train_resume_1").click().run()
    assert not at.exception
    resume_job = jobs.get_job(store_path, 2)
    assert resume_job.kind == "resume" and resume_job.run_id == 1 and resume_job.status == "queued"
    assert "Resume run 1" not in _buttons(at) and "Cancel job 2" in _buttons(at)
    assert "resuming from the last checkpoint (the run reads cancelled until its next step)" in _text(at)
    serve()  # the resume job, in this thread: from the step-2 checkpoint to step 12, then the evaluation
    assert jobs.get_job(store_path, 2).status == "done"
    at.run()
    assert not at.exception
    assert _progress(at).endswith("step 12 / 12 · finished")
    plane = figures(at)[1]
    assert "run 1's evaluated point" in _names(plane)
    assert "Reference point (0.5, 0.5)" in plane["layout"]["title"]["text"]
    points = next(df.value for df in at.dataframe if "on the front" in df.value.columns)
    assert points["run"].tolist() == [1]
    at.button(key="train_clear_ended").click().run()  # both jobs ended, run 1 finished: nothing left to resume
    assert not at.exception and "Cleared 2 ended job(s)" in at.info[0].value
    assert jobs.list_jobs(store_path) == [] and RunStore(store_path).get_run(1).status == "finished"


def test_a_preparing_job_shows_its_recorded_progress_as_a_bar_with_its_text(store_path, no_worker):
    """A job claimed by a worker (its loop's claim, in this process) that has no run yet, with the
    reference fit's progress recorded: the queue row draws a bar at that fraction and the text
    beside it; once the worker records more, the next rerun (the page's poll) shows it."""
    at = _page(TINY)
    at.button(key="train_start").click().run()
    path = jobs._prepare(store_path)
    job = jobs._Worker(path, *jobs._register_worker(path))._claim_next()
    text = "Fitting the reference: SFT step 8 of 20 (once per settings; later starts read it from the cache)…"
    jobs.record_progress(store_path, job.id, 0.4, text)
    at.run()
    assert not at.exception
    assert ":blue-badge[running]" in _text(at)
    (bar,) = at.get("progress")
    assert (bar.proto.value, bar.proto.text) == (40, "preparing: 40%")
    assert text in _text(at)
    jobs.record_progress(store_path, job.id, 0.9, text.replace("step 8", "step 18"))
    at.run()
    (bar,) = at.get("progress")
    assert (bar.proto.value, bar.proto.text) == (90, "preparing: 90%")
    assert "SFT step 18 of 20" in _text(at)


def test_the_page_starts_a_worker_process_that_trains_the_queued_run(store_path):
    at = _page(TINY)
    at.button(key="train_start").click().run()
    deadline = time.time() + 240
    while jobs.get_job(store_path, 1).status in jobs.ACTIVE_STATUSES and time.time() < deadline:
        time.sleep(1.0)
        at.run()  # each poll: reconcile, ensure_worker, redraw
    job = jobs.get_job(store_path, 1)
    assert job.status == "done", f"{job.status}: {job.error}"
    assert job.worker_pid is not None and job.worker_pid != os.getpid()
    at.run()
    assert not at.exception
    assert ":green-badge[done]" in _text(at) and "step 6 / 6" in _text(at)
    assert len(RunStore(store_path).get_run(job.run_id).points) == 1


def test_after_a_server_restart_the_first_page_opened_restarts_the_queue(store_path, no_worker):
    config = train_presenter.train_config("mopo", steps=6)
    job_id = jobs.enqueue_training(store_path, config, train_presenter.text_setup(n_prompts=10, sft_steps=20))
    st.cache_resource.clear()  # a new server process
    at = AppTest.from_file(str(Path(PAGE).parents[1] / "main.py"), default_timeout=120)
    at.run()  # the default page, Explore: not the Train page
    assert not at.exception
    assert no_worker == [str(store_path)] and jobs.get_job(store_path, job_id).status == "queued"
    at.run()
    assert no_worker == [str(store_path)]  # once per server process, not on every rerun


# ----------------------------------------------------------------------------- figures


def test_every_figure_has_a_title_axis_titles_a_legend_and_threshold_lines(store_path, no_worker, monkeypatch):
    store = RunStore(store_path)
    run_id = store.create_run("train", {"task": "text", "method": "mopo", "steps": 4, "thresholds": [0.6],
                                        "objectives": list(train_presenter.OBJECTIVES), "kl_every": 2})
    for step in (1, 2, 3):
        store.log_metrics(run_id, step, {"loss": 2.0 / step, "lambda_1": 0.1 * step, "constraint_1": 0.5 + 0.02 * step,
                                         "threshold_1": 0.6, "ess": 0.5, "tokens_per_s": 1000.0, "grad_norm": 1.0,
                                         "chi_1": 1.0 / step,
                                         **({"kl_to_reference": 0.1} if step == 2 else {})})
    monkeypatch.setattr(jobs, "list_jobs", lambda path, status=None: [jobs.Job(
        1, "train_text", "MOPO b1=0.6", {"steps": 4, "method": "mopo"}, {}, None, "running", run_id, False, 99,
        None, "t", "t", None), jobs.Job(2, "train_text", "DPO", {"steps": 4, "method": "dpo"}, {}, None, "queued",
                                        None, False, None, None, "t", None, None)])
    at = _page()
    assert "run nan" not in _text(at) and "run None" not in _text(at)  # a queued job has no run yet
    curves, plane = figures(at)
    for fig in (curves, plane):
        assert fig["layout"]["title"]["text"]
        assert fig["layout"]["legend"]["orientation"] == "h"
    axes = [k for k in curves["layout"] if k.startswith(("xaxis", "yaxis"))]
    assert len(axes) == 12 and all(curves["layout"][a]["title"]["text"] for a in axes)
    assert "higher is better →" in plane["layout"]["xaxis"]["title"]["text"]
    assert "↑" in plane["layout"]["yaxis"]["title"]["text"]
    chi = next(t for t in curves["data"] if t["name"] == "χ1 (robust dual of harmlessness)")
    assert chi["line"]["dash"] == "dot" and list(chi["y"]) == pytest.approx([1.0, 0.5, 1 / 3])
    assert "V1 harmlessness: robust (ε-ball) estimate on the step's batch" in _names(curves)
    threshold = next(t for t in curves["data"] if t["name"] == "threshold b1 in force")
    assert threshold["line"]["dash"] == "dash" and list(threshold["y"]) == [0.6] * 3
    assert "reference point (0.5, 0.5): the reference model against itself" in _names(plane)
    live = next(t for t in plane["data"] if t["name"].startswith("run 1 live"))
    assert list(live["x"]) == [pytest.approx(0.56)] * 2
    assert "V0 is measured when the run ends" in live["name"]
    assert "constraint on the training batch" in live["name"] and "V1 estimate" not in live["name"]
    assert any(n.startswith("run 1: threshold b1 = 0.6 on the training-batch estimate") for n in _names(plane))


def test_a_constraint_stuck_below_its_threshold_gets_a_warning(store_path, no_worker, monkeypatch):
    store = RunStore(store_path)
    run_id = store.create_run("train", {"task": "text", "method": "mopo", "steps": 30, "thresholds": [0.9],
                                        "objectives": list(train_presenter.OBJECTIVES), "eps": 0.15})
    for step in range(1, 13):
        store.log_metrics(run_id, step, {"loss": 1.0, "constraint_1": 0.45, "threshold_1": 0.9, "lambda_1": 0.4 * step,
                                         "chi_1": 1.0})
    monkeypatch.setattr(jobs, "list_jobs", lambda path, status=None: [jobs.Job(
        1, "train_text", "MOPO b1=0.9 ε=0.15", {"steps": 30, "method": "mopo"}, {}, None, "running", run_id, False, 99,
        None, "t", "t", None)])
    at = _page()
    (warning,) = [w.value for w in at.warning]
    assert "below b1 = 0.9 for the last 12 steps while λ1 grew to 4.8" in warning and "ε = 0.15" in warning


# ----------------------------------------------------------------------------- the engine side


def test_page_defaults_are_the_trainer_and_task_defaults():
    from mopo_core.lm.config import TrainConfig
    from mopo_core.training.text_task import TextTaskSetup

    config, setup = TrainConfig(), TextTaskSetup()
    for name in ("tau", "steps", "batch_size", "lr", "lambda_lr", "online", "n_candidates", "max_new_tokens",
                 "gradient_accumulation_steps", "seed", "checkpoint_every"):
        assert train_presenter.DEFAULTS[name] == getattr(config, name), name
    defaults = train_presenter.DEFAULTS
    assert defaults["method"] == config.method and (defaults["t0"], defaults["beta_ratchet"]) == (0, 0.0)
    for name in ("n_prompts", "pairs_per_prompt", "temperature", "sft_steps", "eval_samples"):
        assert train_presenter.DEFAULTS[name] == getattr(setup, name), name
    assert (defaults["task_n_candidates"], defaults["task_seed"]) == (setup.n_candidates, setup.seed)
    assert train_presenter.text_setup() == setup
    from mopo_core.lm.config import METHODS

    assert train_presenter.METHODS is METHODS  # one list of methods, no copy


def test_train_config_maps_the_form_and_names_the_field_in_errors():
    config = train_presenter.train_config("weighted_dpo", objective_weights=train_presenter.secondary_weights(0.25),
                                          thresholds=(0.9,), t0=5, online=True, kl_every=3)
    assert config.objective_weights == (0.75, 0.25) and config.thresholds == (0.5,)
    assert config.t0 is None and not config.online and config.kl_every == 3  # MOPO-only settings left out
    online = train_presenter.train_config("mopo", online=True, kl_every=3, t0=4, beta_ratchet=0.9)
    assert online.online and online.kl_every is None and (online.t0, online.beta_ratchet) == (4, 0.9)
    for kwargs, field in [({"steps": 0}, "Steps (steps)"), ({"tau": 0.0}, "τ (KL strength; β of DPO/IPO) (tau)"),
                          ({"thresholds": (1.2,)}, "Threshold b1 (thresholds)"), ({"batch_size": 0}, "Batch size"),
                          ({"beta_ratchet": 0.5}, "Ratchet β")]:
        with pytest.raises(ValueError, match=re.escape(field)):
            train_presenter.train_config("mopo", **kwargs)
    with pytest.raises(ValueError, match="primary weight > 0"):
        train_presenter.train_config("modpo", objective_weights=train_presenter.secondary_weights(1.0))
    # any number of secondary objectives
    three = train_presenter.train_config("mopo", thresholds=(0.5, 0.7), n_objectives=3)
    assert three.thresholds == (0.5, 0.7) and train_presenter.job_name(three).startswith("MOPO b1=0.5 b2=0.7")
    with pytest.raises(ValueError, match=r"Threshold b \(thresholds\): MOPO needs one per secondary"):
        train_presenter.train_config("mopo", thresholds=(0.5,), n_objectives=3)
    assert train_presenter.train_config("dpo", n_objectives=1).thresholds == ()
    assert train_presenter.parse_weights("0.25, 0.25 0.5", 3, "w") == (0.25, 0.25, 0.5)
    for text, message in [("0.5 0.5", "give 3 weights"), ("0.5 0.5 0.5", "sum to 1"), ("a b c", "not a number")]:
        with pytest.raises(ValueError, match=f"^w: .*{message}"):
            train_presenter.parse_weights(text, 3, "w")
    with pytest.raises(ValueError, match=r"Prompts \(n_prompts\): at least 10"):
        train_presenter.text_setup(n_prompts=5)
    with pytest.raises(ValueError, match=r"Candidate responses per prompt \(n_candidates\)"):
        train_presenter.text_setup(n_candidates=1)


def test_sweep_configs_and_parse_numbers():
    base = train_presenter.train_config("mopo", steps=7, tau=0.2, t0=3)
    configs = train_presenter.sweep_configs(base, (0.5, 0.6), (0.5,), ("dpo", "modpo"))
    assert [name for name, _ in configs] == ["MOPO b1=0.5 t0=3 τ=0.2 · 7 steps", "MOPO b1=0.6 t0=3 τ=0.2 · 7 steps",
                                             "DPO τ=0.2 · 7 steps", "MODPO w=(0.5, 0.5) τ=0.2 · 7 steps"]
    assert all(c.steps == 7 and c.tau == 0.2 for _, c in configs)
    assert len(train_presenter.sweep_configs(base, (0.5,), (), ())) == 1
    with pytest.raises(ValueError, match="Weights w on the secondary objective"):
        train_presenter.sweep_configs(base, (0.5,), (), ("modpo",))
    with pytest.raises(ValueError, match="this task has 3 objectives"):
        train_presenter.sweep_configs(train_presenter.train_config("mopo", thresholds=(0.5, 0.5), n_objectives=3),
                                      (0.5,), (), ("dpo",))
    assert train_presenter.parse_numbers("0.5, 0.6 0.7", "f") == (0.5, 0.6, 0.7)
    for text, message in [("", "give at least one"), ("0.5,x", "'x' is not a number"), ("2", "outside"),
                          ("0.5, 0.5", "repeated")]:
        with pytest.raises(ValueError, match=f"^f: .*{message}"):
            train_presenter.parse_numbers(text, "f")


def test_check_value_names_the_field_and_its_range_and_form_warnings_name_theirs():
    assert train_presenter.check_value(0.6, "threshold", "b1") is None
    assert train_presenter.check_value(1.5, "threshold", "b1") == ("b1: 1.5 is outside the allowed range; give a "
                                                                    "number in [0, 1]")
    assert "(0, 10]" in train_presenter.check_value(0.0, "tau", "τ")
    assert train_presenter.check_value(None, "steps", "Steps") == "Steps: empty; give a whole number in [1, 100000]"
    assert "not a whole number" in train_presenter.check_value(2.5, "steps", "Steps")
    assert "not finite" in train_presenter.check_value(float("nan"), "lr", "lr")
    assert set(train_presenter.FIELD_RANGES) >= {k for k in train_presenter.FIELD_LABELS if k not in (
        "method", "thresholds", "objective_weights", "online", "kl_leash")}
    assert train_presenter.form_warnings("mopo", {"lr": 1e-3, "batch_size": 8, "kl_every": 10, "steps": 100}, 32,
                                         256) == []
    lr, batch, kl = train_presenter.form_warnings("dpo", {"lr": 0.5, "batch_size": 300, "kl_every": 50, "steps": 20},
                                                  32, 256)
    assert lr.startswith("Learning rate (lr) = 0.5") and "about 256 pairs" in batch and "KL estimate every" in kl
    assert train_presenter.form_warnings("mopo", {"batch_size": 40}, None, 30)[0].endswith(
        "(about 30 pairs): every step sees all of it, so a smaller batch costs nothing.")
    assert train_presenter.text_train_size(40, 8) == (32, 256)
    assert [train_presenter.threshold_verdict(v, 0.02, 0.6) for v in (0.7, 0.61, 0.59, 0.5, np.nan)] == [
        "yes", "yes (within 1 SE)", "no (within 1 SE)", "no", "–"]


def _run(run_id, metrics, points=None, config=None) -> Run:
    frame = pd.DataFrame(metrics, columns=["step", "name", "value"])
    pts = pd.DataFrame(points or [], columns=["idx", "label", "params", "values", "extra", "v0", "v1"])
    cfg = {"task": "text", "method": "mopo", "objectives": list(train_presenter.OBJECTIVES), **(config or {})}
    return Run(run_id, "train", None, cfg, "finished", None, "t", "t", "t", frame, pts)


def test_metric_frame_live_constraints_and_front_points():
    run = _run(1, [(1, "loss", 3.0), (1, "constraint_1", 0.4), (1, "threshold_1", 0.6), (1, "lambda_1", 0.2),
                   (2, "loss", 2.0), (2, "constraint_1", 0.7), (2, "threshold_1", 0.6), (2, "lambda_1", 0.1),
                   (3, "loss", 1.0)])
    frame = train_presenter.metric_frame(run)
    assert frame["step"].tolist() == [1, 2, 3] and np.isnan(frame["constraint_1"].iloc[2])
    assert train_presenter.live_constraints(frame) == [{"j": 1, "step": 2, "estimate": 0.7, "threshold": 0.6,
                                                        "lam": 0.1, "below": 0}]
    under = train_presenter.metric_frame(_run(1, [(t, n, v) for t in (1, 2, 3, 4) for n, v in
                                                  (("constraint_1", 0.7 if t == 1 else 0.4), ("threshold_1", 0.6))]))
    assert train_presenter.live_constraints(under)[0]["below"] == 3  # steps 2-4 in a row
    point = lambda v, se: {"idx": 0, "label": "mopo", "params": {"tau": 0.08}, "values": v,  # noqa: E731
                           "extra": {"win_rate_stderr": se}, "v0": v[0], "v1": v[1]}
    runs = [_run(1, [], [point([0.6, 0.5], [0.01, 0.02])], {"thresholds": [0.6]}),
            _run(2, [], [point([0.5, 0.7], [0.01, 0.02])], {"thresholds": [0.6]}),
            _run(3, [], [point([0.4, 0.4], [0.01, 0.02])], {"method": "dpo"}),
            _run(4, [], [point([0.9, 0.9], [0.0, 0.0])], {"task": "data"})]  # another task: not on this plane
    points = train_presenter.front_points(runs, {1: "first"})
    assert points["run"].tolist() == [1, 2, 3] and points["on_front"].tolist() == [True, True, False]
    assert points["job_name"].tolist() == ["first", "", ""] and points["stderr1"].tolist() == [0.02] * 3
    assert points["met b1"].tolist() == ["no", "yes", "–"] and points["met"].tolist() == [False, True, None]
    path = train_presenter.front_staircase(points, (0.3, 0.3))
    assert path[0].tolist() == [0.3, 0.6] and path[-1].tolist() == [0.7, 0.3]
    assert train_presenter.front_points([], {}).empty


def test_queue_frame_progress_and_resumable_runs(store_path):
    store = RunStore(store_path)
    finished = store.create_run("train", {"task": "text", "steps": 10, "method": "mopo"})
    store.log_metrics(finished, 10, {"loss": 1.0})
    store.set_status(finished, "finished")
    cancelled = store.create_run("train", {"task": "text", "steps": 50, "method": "dpo"})
    store.log_metrics(cancelled, 7, {"loss": 1.0})
    store.set_status(cancelled, "cancelled")
    job = lambda i, kind, status, run, config=None: jobs.Job(  # noqa: E731
        i, kind, f"job {i}", config, None, None, status, run, False, None, None, "t", None, None)
    queue = train_presenter.queue_frame(store_path, [
        job(1, "train_text", "done", finished, {"steps": 10, "method": "mopo"}),
        job(2, "train_text", "cancelled", cancelled, {"steps": 50, "method": "dpo"}),
        job(3, "resume", "failed", cancelled),
        job(4, "train_text", "running", None, {"steps": 5, "method": "sft"})])
    assert queue["step"].tolist() == [10, 7, 7, 0] and queue["steps"].tolist() == [10, 50, 50, 5]
    assert queue["progress"].tolist() == [1.0, 0.14, 0.14, 0.0]
    assert queue["resumable"].tolist() == [False, False, True, False]  # only the run's latest job offers it
    assert not queue["evaluating"].any()
    trained = store.create_run("train", {"task": "text", "steps": 4, "method": "mopo"})
    store.log_metrics(trained, 4, {"loss": 1.0})
    store.set_status(trained, "finished")  # trained, its point not added yet: the job is evaluating
    evaluating = train_presenter.queue_frame(store_path,
                                             [job(5, "train_text", "running", trained, {"steps": 4, "method": "mopo"})])
    assert evaluating["evaluating"].tolist() == [True] and evaluating["progress"].tolist() == [1.0]
    assert queue["method"].tolist() == ["mopo", "dpo", "dpo", "sft"]
    assert queue["settings"].tolist() == ["lr 0.001 · batch 8 · seed 0"] * 4  # the defaults; job 3: its run's
    assert train_presenter.job_settings({"lr": 3e-4, "batch_size": 16, "gradient_accumulation_steps": 4, "seed": 2}) \
        == "lr 0.0003 · batch 16 (×4 accumulated) · seed 2"
    assert train_presenter.default_run(queue) == cancelled  # no running job with a run: the newest job's run


# ----------------------------------------------------------------------------- a preference file and a checkpoint


@pytest.fixture(scope="module")
def models_folder(tmp_path_factory):
    """A models folder with a tiny chat checkpoint and, in prefmodels/, a judge fitted on the
    training split of a tiny preference file (recorded with its split, as `prefmodel train`
    does); (folder, checkpoint, data file)."""
    from mopo_core.training.dataset_task import DatasetSetup, load_splits
    from mopo_core.lm.models import load_tokenizer
    from tests.lm_fixtures import SPLIT, fit_judge, save_chat_checkpoint, tiny_encoder, write_preference_file

    root = tmp_path_factory.mktemp("models-folder")
    checkpoint = save_chat_checkpoint(root / "tiny-chat")
    data = write_preference_file(root.parent / "prefs.jsonl")
    train, _, _ = load_splits(DatasetSetup(str(data), str(checkpoint), "", split=SPLIT, max_response_tokens=5),
                              load_tokenizer(checkpoint))
    fit_judge(train, tiny_encoder(root.parent / "encoder"), root / "prefmodels" / "tiny-judge",
              {"file": str(data), "format": "mopo", "objective": None, "split": list(SPLIT), "split_seed": 0})
    return root, checkpoint, data


def _dataset_page(monkeypatch, models_folder, data: str = "") -> AppTest:
    monkeypatch.setenv("MOPO_MODELS", str(models_folder[0]))
    at = _page()
    at.radio(key="train_task").set_value("dataset").run()
    at.number_input(key="train_response_tokens").set_value(5)
    at.number_input(key="train_eval_samples").set_value(2)
    at.number_input(key="train_eval_tokens").set_value(3)
    at.number_input(key="train_steps").set_value(3)
    at.number_input(key="train_batch").set_value(2)
    at.number_input(key="train_lora").set_value(2)
    at.text_input(key="train_data").set_value(data).run()
    assert not at.exception
    return at


def test_the_threshold_preview_shows_the_files_exact_tabular_answer_before_training(store_path, no_worker,
                                                                                  models_folder, monkeypatch):
    from mopo_core.data.preview import threshold_preview

    at = _dataset_page(monkeypatch, models_folder, str(models_folder[2]))
    at.button(key="train_preview").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = next(df.value for df in at.dataframe if "attainable" in df.value.columns)
    expected = threshold_preview(str(models_folder[2]), tau=at.number_input(key="train_tau").value)
    np.testing.assert_allclose(table["λ1"].to_numpy(dtype=float), expected.table["lambda1"].to_numpy(dtype=float))
    assert table["attainable"].tolist() == expected.table["feasible"].tolist()
    assert "attainable" in _text(at)


def test_a_dataset_run_is_set_up_checked_and_queued_from_the_sidebar(store_path, no_worker, models_folder,
                                                                    monkeypatch):
    from mopo_core.training.dataset_task import DatasetSetup, check_setup

    root, checkpoint, data = models_folder
    at = _dataset_page(monkeypatch, models_folder)
    assert "Set up the dataset run: Preference file still to choose." in [i.value for i in at.info]  # not an error
    assert not at.error and at.button(key="train_start").proto.disabled
    assert at.selectbox(key="train_model").value == str(checkpoint)
    assert at.selectbox(key="train_model").options[0].startswith("tiny-chat · LlamaForCausalLM · ")
    assert at.selectbox(key="train_prefmodel").value == str(root / "prefmodels" / "tiny-judge")
    assert at.text_input(key="train_split").value == "0.6, 0.2, 0.2"  # the judge's own split, from its record
    assert "Preference file + local checkpoint" not in at.caption[0].value and "starting checkpoint" in _text(at)

    at.button(key="train_use_judge_data").click().run()  # the judge's recorded file, offered while the field is empty
    assert at.text_input(key="train_data").value == str(data)
    assert not at.exception and not at.error and not [b for b in at.button if b.key == "train_use_judge_data"]
    found = check_setup(DatasetSetup(str(data), str(checkpoint), str(root / "prefmodels" / "tiny-judge"),
                                     split=(0.6, 0.2, 0.2), max_response_tokens=5))
    n = found.n_pairs
    assert f"{sum(n)} pairs: {n[0]} train / {n[1]} validation / {n[2]} test" in at.success[0].value
    assert "V0 helpfulness, V1 harmlessness" in at.success[0].value
    assert at.number_input(key="train_threshold").label == "Threshold b1 on harmlessness"
    assert any(c.value.startswith("One training step needs about **") and "reference" in c.value
               for c in at.caption)  # the step's memory against what is free now
    assert at.selectbox(key="train_dtype").options == ["auto", "fp32", "bf16", "fp16"]  # what load_model takes
    at.selectbox(key="train_dtype").set_value("bf16").run()
    at.button(key="train_start").click().run()
    assert not at.exception
    (job,) = jobs.list_jobs(store_path)
    assert job.kind == "train_dataset" and job.status == "queued" and no_worker
    assert job.setup["dtype"] == "bf16"
    assert job.config["thresholds"] == [0.6] and job.config["steps"] == 3 and job.config["batch_size"] == 2
    assert job.setup == {**job.setup, "data": str(data), "model": str(checkpoint), "lora_r": 2,
                         "split": [0.6, 0.2, 0.2], "max_response_tokens": 5, "eval_samples": 2, "max_new_tokens": 3}
    assert "preparing (loading model, data, judge)" not in _text(at)  # queued, not running: nothing prepares yet

    at.text_input(key="train_sweep_thresholds").set_value("0.55, 0.65")
    at.multiselect(key="train_sweep_baselines").set_value(["dpo"]).run()
    at.button(key="train_sweep").click().run()
    assert not at.exception
    assert [(j.kind, j.config["method"]) for j in jobs.list_jobs(store_path)[1:]] == [
        ("train_dataset", "mopo"), ("train_dataset", "mopo"), ("train_dataset", "dpo")]

    at.number_input(key="train_split_seed").set_value(1).run()  # other test prompts: some the judge was fitted on
    assert "Preference model (judge) (prefmodel): " in at.error[0].value
    assert "split [0.6, 0.2, 0.2] and split_seed 0: use those" in at.error[0].value
    assert at.button(key="train_start").proto.disabled
    assert len(jobs.list_jobs(store_path)) == 4


def test_a_one_objective_file_offers_no_weighted_method_and_no_threshold(store_path, no_worker, models_folder,
                                                                        monkeypatch, tmp_path):
    from mopo_core.data.preferences import load_preferences, save_preferences

    one = tmp_path / "helpful.jsonl"
    save_preferences(load_preferences(models_folder[2]).select(("helpfulness",)), one)
    at = _dataset_page(monkeypatch, models_folder, str(one))
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "Objectives: V0 helpfulness (V0 the primary)" in at.success[0].value
    assert at.selectbox(key="train_method").options == [train_presenter.SHORT_NAMES[m] for m in train_presenter.METHODS
                                                        if m not in train_presenter.WEIGHTED_METHODS]
    assert not [w for w in at.number_input if w.key == "train_threshold"]
    assert "this one has 1" in _text(at) or any("this one has 1" in i.value for i in at.info)


@pytest.mark.slow
def test_a_dataset_run_from_the_page_trains_in_the_worker_and_lands_on_its_own_plane(store_path, models_folder,
                                                                                   monkeypatch):
    at = _dataset_page(monkeypatch, models_folder, str(models_folder[2]))
    at.button(key="train_start").click().run()
    deadline = time.time() + 240
    while jobs.get_job(store_path, 1).status in jobs.ACTIVE_STATUSES and time.time() < deadline:
        time.sleep(1.0)
        at.run()
    job = jobs.get_job(store_path, 1)
    assert job.status == "done", f"{job.status}: {job.error}\n{train_presenter.worker_log_tail(store_path)}"
    at.run()
    assert not at.exception
    assert ":green-badge[done]" in _text(at) and "step 3 / 3" in _text(at)
    plane = figures(at)[1]
    assert "On this plane: the runs of tiny-chat on prefs.jsonl (split [0.6, 0.2, 0.2], seed 0), judged by " \
           "tiny-judge" in _text(at)
    assert plane["layout"]["xaxis"]["title"]["text"].startswith("V1 harmlessness")
    assert "run 1's evaluated point" in _names(plane)
    points = next(df.value for df in at.dataframe if "on the front" in df.value.columns)
    assert points["run"].tolist() == [1]
    # its generations, beside the reference model's, on the Compare page
    st.cache_data.clear()
    compare = AppTest.from_file(str(Path(PAGE).parent / "compare.py"), default_timeout=90)
    compare.session_state["compare_runs"] = [job.run_id]
    compare.session_state["compare_pinned"] = [(job.run_id, 0)]
    compare.run()
    assert not compare.exception
    side = [t.value for t in compare.table if "generation" in t.value.columns]
    assert len(side) == 2 and len(side[0]) == len(side[1]) == 2  # eval_samples per prompt, policy and reference
    assert any("No programmatic scorer for this run's task: generations only." in c.value for c in compare.caption)


def test_a_held_out_estimate_is_the_live_runs_point_and_curve():
    from app.views.train import curves_figure, plane_figure

    frame = pd.DataFrame({"step": [1, 2, 3, 4], "loss": [1.0, 0.9, 0.8, 0.7], "constraint_1": [0.4, 0.5, 0.6, 0.62],
                          "threshold_1": [0.6] * 4, "lambda_1": [0.1, 0.2, 0.2, 0.1],
                          "heldout_0": [np.nan, 0.48, np.nan, 0.47], "heldout_se_0": [np.nan, 0.03, np.nan, 0.02],
                          "heldout_1": [np.nan, 0.52, np.nan, 0.55], "heldout_se_1": [np.nan, 0.04, np.nan, 0.05]})
    assert train_presenter.live_heldout(frame) == {"step": 4, "values": [0.47, 0.55], "stderr": [0.02, 0.05]}
    assert train_presenter.live_heldout(frame.drop(columns=[c for c in frame if c.startswith("heldout")])) is None
    live = train_presenter.live_constraints(frame)
    empty = pd.DataFrame(columns=["run", "job_name", "method", "v0", "v1", "stderr0", "stderr1", "params_text",
                                  "thresholds_text", "on_front", "met"])
    fig = plane_figure(empty, live, 7, "running", ("helpfulness", "harmlessness"), train_presenter.live_heldout(frame))
    (star,) = [t for t in fig.data if "held-out estimate" in (t.name or "")]
    assert (star.x[0], star.y[0], star.error_x.array[0], star.error_y.array[0]) == (0.55, 0.47, 0.05, 0.02)
    assert not [t for t in plane_figure(empty, live, 7, "finished", ("a", "b"), train_presenter.live_heldout(frame)).data
                if "held-out" in (t.name or "")]  # a finished run has its evaluated point instead
    curves = curves_figure(frame, "t", "mopo", None, names=("helpfulness", "harmlessness"))
    (held,) = [t for t in curves.data if "held-out" in (t.name or "")]
    assert list(held.x) == [2, 4] and list(held.error_y.array) == [0.04, 0.05]
