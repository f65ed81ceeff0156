"""The job queue and its worker process (mopo_core.training.jobs), and releasing a model's memory
(mopo_core.lm.memory).

The training tests start real worker processes on a tiny text task (one thread each) and play
the app's part from the test process: enqueue, ensure_worker, reconcile, cancel,
enqueue_resume. The "app restart" test runs a stand-in app in a child process and kills it.
"""
import dataclasses
import gc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mopo_core.training import jobs
from mopo_core.training.jobs import (cancel, enqueue_resume, enqueue_training, ensure_worker, get_job, list_jobs,
                                     reconcile)
from mopo_core.lm.config import TrainConfig
from mopo_core.processes import process_start
from mopo_core.runs import RunStore
from mopo_core.training.text_task import TextTaskSetup

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 180
STEPS = 80  # long enough to act on a run mid-way (about 50 ms a step on one thread)
SETUP = TextTaskSetup(n_prompts=10, sft_steps=20, eval_samples=2, seed=3)
ENDED = ("done", "cancelled", "failed", "interrupted")
#: A stand-in for the app: starts the worker (so it owns it) and stays up until killed.
FAKE_APP = "import sys, time; from mopo_core.training.jobs import ensure_worker; ensure_worker(sys.argv[1]); time.sleep(600)"


def _config(steps: int = STEPS, method: str = "mopo") -> TrainConfig:
    return TrainConfig(method=method, thresholds=(0.6,), steps=steps, batch_size=4, checkpoint_every=4, seed=3)


@pytest.fixture()
def store_path(tmp_path, monkeypatch):
    """A fresh store; the workers this process starts train on one thread and are killed at the end."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    jobs._children.clear()
    yield tmp_path / "runs.sqlite"
    for proc in jobs._children.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    jobs._children.clear()


def _log(store_path: Path) -> str:
    log = jobs.jobs_dir(store_path) / "worker.log"
    return log.read_text()[-3000:] if log.exists() else "(no worker log)"


def _wait(store_path: Path, what: str, predicate):
    """Poll ``predicate()`` until it returns something truthy; fail with the worker log after TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"{what}: not after {TIMEOUT} s; worker log:\n{_log(store_path)}")


def _wait_ended(store_path: Path, job_id: int) -> jobs.Job:
    return _wait(store_path, f"job {job_id} ended",
                 lambda: (job := get_job(store_path, job_id)).status in ENDED and job)


def _last_step(store_path: Path, run_id: int) -> int:
    steps = RunStore(store_path).get_run(run_id).metrics.step
    return int(steps.max()) if len(steps) else 0


def _wait_steps(store_path: Path, job_id: int, min_step: int) -> int:
    """The job's run id once the run has logged ``min_step`` steps."""
    def ready():
        job = get_job(store_path, job_id)
        assert job.status not in ENDED, f"job {job_id} ended early: {job}\n{_log(store_path)}"
        return job.run_id is not None and _last_step(store_path, job.run_id) >= min_step and job.run_id
    return _wait(store_path, f"job {job_id}: {min_step} steps", ready)


def _assert_finished_whole(store: RunStore, run_id: int, steps: int = STEPS) -> None:
    """Finished with its point, every step's metrics exactly once, the store intact."""
    run = store.get_run(run_id)
    assert run.status == "finished" and run.error is None and len(run.points) == 1, (run.status, run.error)
    loss = run.metrics[run.metrics.name == "loss"].step
    assert sorted(loss) == list(range(1, steps + 1))
    _assert_store_healthy(store)


def _assert_store_healthy(store: RunStore) -> None:
    for run_id in store.list_runs().id:
        store.get_run(int(run_id))
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


# ---------------------------------------------------------------------- the queue without a worker (fast)


def test_record_progress_refuses_a_fraction_outside_0_1_and_an_unknown_job(store_path):
    job_id = enqueue_training(store_path, _config(), SETUP)
    assert (get_job(store_path, job_id).progress, get_job(store_path, job_id).progress_text) == (None, None)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fraction: expected a number in \\[0, 1\\]"):
            jobs.record_progress(store_path, job_id, bad, "x")
    with pytest.raises(KeyError, match="job 99 not found"):
        jobs.record_progress(store_path, 99, 0.5, "x")
    jobs.record_progress(store_path, job_id, None, "loading the model")
    assert (get_job(store_path, job_id).progress, get_job(store_path, job_id).progress_text) == (
        None, "loading the model")


@pytest.mark.slow
def test_the_worker_records_the_reference_fits_progress_on_the_job(store_path, tmp_path, monkeypatch):
    """A real worker process fits a text job's reference (an empty cache folder, so it is fitted,
    not read) and records its progress on the job: polled here, the fractions never decrease, each
    is the SFT step its text names over the steps (counted independently of the fraction), and the
    last is 1.0. A second job on the same settings reads the reference from the cache: 0 then 1."""
    from mopo_core.lm.registry import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "reference-cache"))  # the worker process inherits it
    setup = dataclasses.replace(SETUP, sft_steps=80)  # about 50 ms a step: seconds of fitting
    first, second = (enqueue_training(store_path, _config(steps=2), setup) for _ in range(2))
    ensure_worker(store_path)  # one worker takes both, in order
    seen = []

    def ended():
        job = get_job(store_path, first)
        if job.progress is not None and (not seen or seen[-1] != (job.progress, job.progress_text)):
            seen.append((job.progress, job.progress_text))
        return job.status in ENDED and job

    job = _wait(store_path, f"job {first} ended", ended)
    assert job.status == "done", (job.error, _log(store_path))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0, seen
    assert seen[-1][1].startswith("Fitted the reference (80 SFT steps)"), seen[-1]
    during = [(f, text) for f, text in seen if 0.0 < f < 1.0]
    assert len(during) >= 3, f"too few updates seen while fitting: {seen}"
    for fraction, text in during:
        step = int(text.split("SFT step ")[1].split(" of 80")[0])
        assert fraction == step / 80, (fraction, text)
    assert list((tmp_path / "reference-cache").glob("text-reference-*.safetensors"))

    job = _wait_ended(store_path, second)
    assert job.status == "done" and job.progress == 1.0
    assert job.progress_text == "Read the fitted reference from the cache."


def test_a_text_job_builds_its_task_once_prepare_then_train(store_path, tmp_path, monkeypatch):
    """The worker's order, in this process: ``prepare`` (the reference fit, with its progress) then
    ``train`` on the same setup build the text task once; ``train`` on another setup builds its own, and
    what ``prepare`` built is not kept after the train that follows it."""
    from mopo_core.lm.registry import CACHE_ENV
    from mopo_core.training import text_task
    from mopo_core.training.tasks import TextTraining

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "reference-cache"))
    built = []
    real = text_task.build_text_task

    def counted(setup, *args, **kwargs):
        built.append(setup)
        return real(setup, *args, **kwargs)

    monkeypatch.setattr(text_task, "build_text_task", counted)
    task, store = TextTraining(), RunStore(store_path)
    task.prepare(SETUP, progress=lambda fraction, text: None)
    result, _ = task.train(_config(steps=1), SETUP, store)
    assert built == [SETUP] and result.status == "finished"
    other = dataclasses.replace(SETUP, seed=4)
    task.prepare(SETUP, progress=lambda fraction, text: None)
    task.train(_config(steps=1), other, store)
    assert built == [SETUP, SETUP, other]
    task.train(_config(steps=1), SETUP, store)  # nothing prepared any more: built again
    assert built == [SETUP, SETUP, other, SETUP]


def test_enqueue_checks_the_config_and_setup_and_cancel_of_a_queued_job_is_immediate(store_path):
    with pytest.raises(ValueError, match="thresholds: MOPO needs one per secondary objective"):
        enqueue_training(store_path, TrainConfig(thresholds=(0.5, 0.5)), SETUP)
    with pytest.raises(ValueError, match="n_prompts"):
        enqueue_training(store_path, _config(), TextTaskSetup(n_prompts=0))
    first, second = (enqueue_training(store_path, _config(), SETUP, name=n) for n in ("a", "b"))
    assert [(j.id, j.name, j.status, j.kind) for j in list_jobs(store_path)] == [
        (first, "a", "queued", "train_text"), (second, "b", "queued", "train_text")]
    job = get_job(store_path, first)
    assert job.config["steps"] == STEPS and job.setup == {**job.setup, "n_prompts": 10, "sft_steps": 20}
    assert job.checkpoint_dir == str(jobs.jobs_dir(store_path) / "checkpoints" / f"job-{first}")
    assert cancel(store_path, first) == "cancelled"
    assert get_job(store_path, first).status == "cancelled" and get_job(store_path, first).ended_at is not None
    assert [j.id for j in list_jobs(store_path, status="queued")] == [second]
    with pytest.raises(ValueError, match=f"job {first}: already ended"):
        cancel(store_path, first)
    with pytest.raises(KeyError, match="job 99 not found"):
        cancel(store_path, 99)
    with pytest.raises(ValueError, match="status: must be one of"):
        list_jobs(store_path, status="waiting")
    cancel(store_path, second)
    assert ensure_worker(store_path) is None  # nothing queued: no worker
    assert reconcile(store_path) == []


def test_clearing_ended_jobs_keeps_active_ones_and_the_latest_job_of_a_resumable_run(store_path, tmp_path):
    store = RunStore(store_path)
    finished = store.create_run("train", {"task": "text"})
    store.set_status(finished, "finished")
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    (checkpoint / "last.pt").write_bytes(b"checked by the worker")
    paused = store.create_run("train", {"task": "text", "checkpoint_dir": str(checkpoint)})
    store.set_status(paused, "cancelled")
    never, done, first_of_paused, waiting = (enqueue_training(store_path, _config(), SETUP, name=n) for n in "abcd")
    cancel(store_path, never)  # cancelled before it started: no run
    with sqlite3.connect(store_path) as conn:  # as the worker leaves them
        conn.execute("UPDATE jobs SET status = 'done', run_id = ? WHERE id = ?", (finished, done))
        conn.execute("UPDATE jobs SET status = 'cancelled', run_id = ? WHERE id = ?", (paused, first_of_paused))
    latest_of_paused = enqueue_resume(store_path, paused)
    cancel(store_path, latest_of_paused)
    assert jobs.clear_ended(store_path) == [never, done, first_of_paused]
    assert [j.id for j in list_jobs(store_path)] == [waiting, latest_of_paused]
    assert {store.get_run(r).status for r in (finished, paused)} == {"finished", "cancelled"}  # runs untouched
    assert jobs.clear_ended(store_path) == []
    assert get_job(store_path, enqueue_resume(store_path, paused)).status == "queued"  # still resumable


def test_resume_refuses_runs_it_cannot_continue(store_path, tmp_path):
    store = RunStore(store_path)
    ck = tmp_path / "ck"
    text = {"task": "text", "checkpoint_dir": str(ck)}
    with pytest.raises(ValueError, match="run 7: not found"):
        enqueue_resume(store_path, 7)
    solve = store.create_run("solve", {"tau": 0.1}, status="queued")
    with pytest.raises(ValueError, match=fr"run {solve}: only train runs \(text task or dataset\) with a checkpoint folder"):
        enqueue_resume(store_path, solve)
    running = store.create_run("train", text)
    with pytest.raises(ValueError, match=f"run {running}: status is 'running'; only runs that are cancelled"):
        enqueue_resume(store_path, running)
    store.set_status(running, "cancelled")
    with pytest.raises(ValueError, match=f"run {running}: no checkpoint at {ck / 'last.pt'}"):
        enqueue_resume(store_path, running)
    ck.mkdir()
    (ck / "last.pt").write_bytes(b"checked by the worker")
    job_id = enqueue_resume(store_path, running)
    job = get_job(store_path, job_id)
    assert (job.kind, job.run_id, job.status, job.checkpoint_dir) == ("resume", running, "queued", str(ck))
    with pytest.raises(ValueError, match=f"run {running}: job {job_id} is already queued for it"):
        enqueue_resume(store_path, running)
    cancel(store_path, job_id)
    assert get_job(store_path, enqueue_resume(store_path, running)).status == "queued"  # a new job once that one ended


def test_one_place_chooses_the_task_of_a_run_a_setup_and_a_job_kind(store_path, tmp_path):
    from mopo_core.training.dataset_task import DatasetSetup
    from mopo_core.training.tasks import TASKS, task_for_setup, task_of, task_of_job_kind, task_of_run

    store = RunStore(store_path)
    text = store.create_run("train", {"task": "text", "checkpoint_dir": str(tmp_path)})
    dataset = store.create_run("train", {"task": "dataset", "checkpoint_dir": str(tmp_path)})
    solve = store.create_run("solve", {"tau": 0.1})
    unknown = store.create_run("train", {"task": "poetry"})
    assert task_of_run(store, text, "resumed") is TASKS["text"]
    assert task_of_run(store, dataset, "evaluated") is TASKS["dataset"]
    assert task_of(store.get_run(solve)) is None and task_of(store.get_run(unknown)) is None
    with pytest.raises(ValueError, match=f"run 99: not found in the run store {store.path}"):
        task_of_run(store, 99, "resumed")
    with pytest.raises(ValueError, match=f"run {solve}: is a 'solve' run, not a train run; only train runs can be "
                                         "evaluated"):
        task_of_run(store, solve, "evaluated")
    with pytest.raises(ValueError, match=f"run {unknown}: not a train run of a known task"):
        task_of_run(store, unknown, "resumed")
    with pytest.raises(ValueError, match=f"run {dataset}: not a text-task train run"):
        TASKS["text"].resume(store, dataset)  # a task refuses another task's run
    assert task_for_setup(SETUP) is TASKS["text"]
    assert task_for_setup(DatasetSetup(data="d.jsonl", model="m", prefmodel="p")) is TASKS["dataset"]
    assert [task_of_job_kind(kind) for kind in jobs.JOB_KINDS if kind != "resume"] == list(TASKS.values())
    assert TASKS["text"].setup_from(json.loads(json.dumps(dataclasses.asdict(SETUP)))) == SETUP  # a job's spec


# ---------------------------------------------------------------------- the worker


@pytest.mark.slow
def test_the_queue_survives_an_app_restart_and_one_worker_runs_the_jobs_in_order(store_path):
    # the first "app" queues two jobs and exits before any worker starts
    script = ("import sys; from mopo_core.training.jobs import enqueue_training; from mopo_core.lm.config import TrainConfig; "
              "from mopo_core.training.text_task import TextTaskSetup; s = TextTaskSetup(n_prompts=10, sft_steps=20, "
              "eval_samples=2, seed=3); [enqueue_training(sys.argv[1], TrainConfig(method=m, thresholds=(0.6,), "
              "steps=6, batch_size=4, checkpoint_every=4, seed=3), s, name=m) for m in ('mopo', 'sft')]")
    subprocess.run([sys.executable, "-c", script, str(store_path)], cwd=ROOT, check=True, timeout=TIMEOUT)
    # the next one finds them queued, and its worker runs them one after the other
    assert reconcile(store_path) == []
    queued = list_jobs(store_path)
    assert [(j.name, j.status) for j in queued] == [("mopo", "queued"), ("sft", "queued")]
    pid = ensure_worker(store_path)
    first, second = (_wait_ended(store_path, j.id) for j in queued)
    assert (first.status, second.status) == ("done", "done"), (first, second, _log(store_path))
    assert first.worker_pid == second.worker_pid == pid
    assert first.started_at < first.ended_at <= second.started_at < second.ended_at
    store = RunStore(store_path)
    for job, method in ((first, "mopo"), (second, "sft")):
        run = store.get_run(job.run_id)
        assert run.config["method"] == method and run.config["checkpoint_dir"] == job.checkpoint_dir
        _assert_finished_whole(store, job.run_id, steps=6)
    assert first.run_id < second.run_id
    # the queue is empty: the worker has exited, and nothing starts another
    _wait(store_path, "the worker exited", lambda: ensure_worker(store_path) is None)


@pytest.mark.slow
def test_cancel_stops_a_running_job_after_the_current_step_and_a_resume_job_finishes_the_run(store_path):
    job_id = enqueue_training(store_path, _config(), SETUP)
    ensure_worker(store_path)
    run_id = _wait_steps(store_path, job_id, 3)
    assert cancel(store_path, job_id) == "running"
    asked_at = _last_step(store_path, run_id)  # the steps logged once the request was stored
    job = _wait_ended(store_path, job_id)
    store = RunStore(store_path)
    run = store.get_run(run_id)
    stopped_at = _last_step(store_path, run_id)
    assert job.status == "cancelled" and job.run_id == run_id, job
    assert run.status == "cancelled" and run.points.empty
    assert stopped_at <= asked_at + 1 < STEPS  # within one step
    state = torch.load(Path(job.checkpoint_dir) / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] == stopped_at

    resumed = enqueue_resume(store_path, run_id)
    ensure_worker(store_path)
    job = _wait_ended(store_path, resumed)
    assert job.status == "done" and job.run_id == run_id, (job, _log(store_path))
    _assert_finished_whole(store, run_id)


@pytest.mark.slow
def test_a_sigkilled_worker_fails_its_job_and_run_with_the_reason_and_a_resume_job_finishes_the_run(store_path):
    job_id = enqueue_training(store_path, _config(), SETUP)
    pid = ensure_worker(store_path)
    run_id = _wait_steps(store_path, job_id, 3)
    os.kill(pid, signal.SIGKILL)
    # this process (the app) keeps serving: reconcile finds the dead worker and says why
    changed = _wait(store_path, "reconcile saw the killed worker", lambda: reconcile(store_path))
    # the exit status is read when this process can still reap the worker; if something else
    # reaped it first (subprocess reaps finished children), the reason says the process is gone
    exact = f"worker process {pid} was killed by SIGKILL during the job"
    gone = (f"worker process {pid} is gone (no exit status: not a child of this process; killed, e.g. SIGKILL, "
            "or crashed) during the job")
    assert [(j.id, j.status) for j in changed] == [(job_id, "failed")] and changed[0].error in (exact, gone)
    reason = changed[0].error
    store = RunStore(store_path)
    run = store.get_run(run_id)
    assert (run.status, run.error) == ("failed", reason) and run.finished_at is not None and run.points.empty
    assert get_job(store_path, job_id).status == "failed"
    assert reconcile(store_path) == []  # settled once
    _assert_store_healthy(store)

    resumed = enqueue_resume(store_path, run_id)
    assert ensure_worker(store_path) != pid
    job = _wait_ended(store_path, resumed)
    assert job.status == "done", (job, _log(store_path))
    _assert_finished_whole(store, run_id)


@pytest.mark.slow
@pytest.mark.parametrize("worker_dies_too", [False, True], ids=["worker-stops-itself", "worker-killed-too"])
def test_an_app_restart_interrupts_the_run_and_it_can_be_resumed(store_path, tmp_path, worker_dies_too):
    job_id = enqueue_training(store_path, _config(), SETUP)
    with open(tmp_path / "app.log", "w") as log:
        app = subprocess.Popen([sys.executable, "-c", FAKE_APP, str(store_path)], cwd=ROOT, stdout=log, stderr=log)
    worker = None  # (pid, start) of the app's worker: not this process's child
    try:
        run_id = _wait_steps(store_path, job_id, 3)
        worker_pid = get_job(store_path, job_id).worker_pid
        worker = (worker_pid, process_start(worker_pid))
        if worker_dies_too:  # e.g. a container restart: everything is killed
            os.kill(worker_pid, signal.SIGKILL)
        app.kill()
        app.wait(TIMEOUT)
        killed_at = _last_step(store_path, run_id)
        if worker_dies_too:  # the new app's reconcile settles the job
            changed = _wait(store_path, "reconcile saw the dead worker", lambda: reconcile(store_path))
            assert [(j.id, j.status) for j in changed] == [(job_id, "interrupted")]
            expected = f"and so is the app process {app.pid} that started it (an app restart)"
        else:  # the worker sees its app gone after the current step, and stops
            _wait_ended(store_path, job_id)
            assert _last_step(store_path, run_id) <= killed_at + 1
            expected = f"the app process {app.pid} that started this worker is gone; stopped after step"
            _wait(store_path, "the worker exited", lambda: not jobs._alive(*worker))
            assert reconcile(store_path) == []
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
        if worker is not None and jobs._alive(*worker):
            os.kill(worker[0], signal.SIGKILL)
    job, run = get_job(store_path, job_id), RunStore(store_path).get_run(run_id)
    assert job.status == run.status == "interrupted" and expected in job.error and run.error == job.error

    resumed = enqueue_resume(store_path, run_id)
    assert ensure_worker(store_path) not in (None, worker_pid)
    job = _wait_ended(store_path, resumed)
    assert job.status == "done", (job, _log(store_path))
    _assert_finished_whole(RunStore(store_path), run_id)


@pytest.mark.slow
def test_one_worker_per_store_and_sigterm_interrupts_its_run_after_the_step(store_path):
    job_id = enqueue_training(store_path, _config(), SETUP)
    pids = []
    threads = [threading.Thread(target=lambda: pids.append(ensure_worker(store_path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pids) == 8 and len(set(pids)) == 1, pids
    (pid,) = set(pids)
    (worker,) = jobs._children.values()
    # a worker started by hand refuses to serve the same store
    other = subprocess.run([sys.executable, "-m", "mopo_core.cli.worker", "--store", str(store_path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert other.returncode == jobs.EXIT_ANOTHER_WORKER, other.stderr
    assert f"worker process {pid} already serves the run store" in other.stderr

    run_id = _wait_steps(store_path, job_id, 3)
    assert ensure_worker(store_path) == pid
    os.kill(pid, signal.SIGTERM)
    signalled_at = _last_step(store_path, run_id)
    job = _wait_ended(store_path, job_id)
    run = RunStore(store_path).get_run(run_id)
    assert job.status == run.status == "interrupted" and "the worker received SIGTERM" in job.error
    assert _last_step(store_path, run_id) <= signalled_at + 1
    assert worker.wait(TIMEOUT) == 0  # exited cleanly


# ---------------------------------------------------------------------- model memory


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_loading_and_unloading_a_model_three_times_returns_the_memory(tmp_path, device):
    from mopo_core.lm.memory import memory_use, unload
    from mopo_core.lm.models import build_model, load_model, save_model

    config = {"model_type": "gpt2", "n_layer": 8, "n_embd": 512, "n_head": 8, "vocab_size": 16000,
              "n_positions": 128, "bos_token_id": 1, "eos_token_id": 2}
    model = build_model(config, dtype="fp32", device="cpu")
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # 127 MiB
    save_model(model, None, tmp_path / "model")
    del model
    gc.collect()
    where = "rss" if device == "cpu" else "cuda_allocated"

    def cycle() -> tuple[int, int]:
        """Load, use every weight, unload: (growth while loaded, what unload reported freed)."""
        before = getattr(memory_use(), where)
        model = load_model(tmp_path / "model", dtype="fp32", device=device)
        with torch.no_grad():
            model(torch.zeros(2, 64, dtype=torch.long, device=device))
        grown = getattr(memory_use(), where) - before
        return grown, getattr(unload(model), where)

    cycle()  # warm-up: allocator caches, lazily imported modules, the CUDA context
    baseline = memory_use()
    assert model_bytes > 0.1 * baseline.rss, "the model must be big enough for one leaked copy to show"
    for _ in range(3):
        grown, freed = cycle()
        assert grown > 0.8 * model_bytes and freed > 0.8 * model_bytes, (grown, freed, model_bytes)
    after = memory_use()
    assert abs(after.rss - baseline.rss) <= 0.1 * baseline.rss, (after, baseline)
    assert after.cuda_allocated == baseline.cuda_allocated, (after, baseline)


# ---------------------------------------------------------------------- dataset jobs (a local checkpoint)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny chat checkpoint, a preference file and a judge fitted on its training split only."""
    from mopo_core.training.dataset_task import load_splits
    from mopo_core.lm.models import load_tokenizer
    from tests.lm_fixtures import SPLIT, fit_judge, save_chat_checkpoint, tiny_encoder, write_preference_file

    root = tmp_path_factory.mktemp("dataset")
    checkpoint = save_chat_checkpoint(root / "models" / "tiny-chat")
    data = write_preference_file(root / "prefs.jsonl")
    setup = _dataset_setup(data, checkpoint, "")
    train, _, _ = load_splits(setup, load_tokenizer(checkpoint))
    judge = fit_judge(train, tiny_encoder(root / "encoder"), root / "judge", {"split": list(SPLIT), "split_seed": 0})
    return _dataset_setup(data, checkpoint, judge)


def _dataset_setup(data, checkpoint, judge, **changes):
    from mopo_core.training.dataset_task import DatasetSetup
    from tests.lm_fixtures import SPLIT

    return DatasetSetup(**{"data": str(data), "model": str(checkpoint), "prefmodel": str(judge), "split": SPLIT,
                           "lora_r": 2, "max_response_tokens": 5, "eval_samples": 2, "max_new_tokens": 3, **changes})


def _old_store(path: Path) -> None:
    """A store whose jobs table predates dataset jobs (its CHECK allows two kinds) and the
    preparation progress columns, with one job."""
    RunStore(path)
    conn = sqlite3.connect(path)
    schema = jobs._SCHEMA.replace(repr(jobs.JOB_KINDS), repr(("train_text", "resume")))
    schema = schema.replace(",\n    progress REAL,\n    progress_text TEXT", "")
    assert "progress" not in schema
    conn.executescript(schema)
    conn.execute("INSERT INTO jobs (kind, name, spec, status, created_at) VALUES "
                 "('train_text', 'old', '{}', 'cancelled', 't')")
    conn.commit()
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        conn.execute("INSERT INTO jobs (kind, spec, status, created_at) VALUES ('train_dataset', '{}', 'queued', 't')")
    conn.close()


def test_a_store_from_before_dataset_jobs_is_widened_keeping_its_jobs(store_path, dataset):
    _old_store(store_path)
    assert [(j.name, j.kind, j.status, j.progress, j.progress_text) for j in list_jobs(store_path)] == [
        ("old", "train_text", "cancelled", None, None)]
    jobs.record_progress(store_path, 1, 0.25, "a note")  # the added columns are written and read back
    assert (get_job(store_path, 1).progress, get_job(store_path, 1).progress_text) == (0.25, "a note")
    job_id = enqueue_training(store_path, _config(steps=2), dataset)
    assert get_job(store_path, job_id).kind == "train_dataset"
    jobs._prepared.clear()  # a later process: already widened, nothing to do
    assert [j.kind for j in list_jobs(store_path)] == ["train_text", "train_dataset"]
    _assert_store_healthy(RunStore(store_path))


def test_a_dataset_job_is_checked_when_it_is_queued(store_path, dataset):
    from dataclasses import replace as dataclasses_replace

    from mopo_core.training.dataset_task import SetupError

    bad = [(dataclasses_replace(dataset, prefmodel=str(store_path.parent / "none")), "prefmodel"),
           (dataclasses_replace(dataset, data=str(store_path.parent / "none.jsonl")), "data"),
           (dataclasses_replace(dataset, split_seed=1), "prefmodel")]  # the judge saw test prompts
    for setup, field in bad:
        with pytest.raises(SetupError) as info:
            enqueue_training(store_path, _config(), setup)
        assert info.value.field == field
    with pytest.raises(ValueError, match="thresholds: MOPO needs one per secondary objective"):
        enqueue_training(store_path, TrainConfig(thresholds=(0.5, 0.5)), dataset)
    assert list_jobs(store_path) == []  # nothing queued


@pytest.mark.slow
def test_dataset_jobs_share_one_loaded_task_and_finish_with_their_points(store_path, dataset):
    configs = {"mopo": _config(steps=3), "dpo": _config(steps=3, method="dpo"),
               "online": TrainConfig(method="mopo", thresholds=(0.6,), steps=2, batch_size=2, online=True,
                                     n_candidates=2, max_new_tokens=3, seed=3)}
    ids = [enqueue_training(store_path, config, dataset, name=name) for name, config in configs.items()]
    ensure_worker(store_path)
    ended = [_wait_ended(store_path, job_id) for job_id in ids]
    assert [j.status for j in ended] == ["done"] * 3, (ended, _log(store_path))
    assert _log(store_path).count("loading ") == 1  # one model, judge and data load for the three jobs
    store = RunStore(store_path)
    for job, (name, config) in zip(ended, configs.items()):
        run = store.get_run(job.run_id)
        assert run.config["task"] == "dataset" and run.config["method"] == config.method
        assert run.config["dataset_setup"]["lora_r"] == 2 and run.config["checkpoint_dir"] == job.checkpoint_dir
        _assert_finished_whole(store, job.run_id, steps=config.steps)
        (values,) = run.points["values"].tolist()
        assert len(values) == 2 and all(0 <= v <= 1 for v in values)
    online = store.get_run(ended[2].run_id).metrics
    assert (online.name == "kl_to_reference").sum() == 2  # scored by the judge, its pool KL logged each step


@pytest.mark.slow
def test_a_cancelled_dataset_job_is_resumed_by_a_resume_job(store_path, dataset):
    job_id = enqueue_training(store_path, _config(steps=400, method="dpo"), dataset)
    ensure_worker(store_path)
    run_id = _wait_steps(store_path, job_id, 2)
    assert cancel(store_path, job_id) == "running"
    job = _wait_ended(store_path, job_id)
    store = RunStore(store_path)
    assert job.status == "cancelled" and store.get_run(run_id).status == "cancelled", (job, _log(store_path))
    stopped_at = _last_step(store_path, run_id)
    assert stopped_at < 400
    resumed = enqueue_resume(store_path, run_id)
    ensure_worker(store_path)
    job = _wait_ended(store_path, resumed)
    assert job.status == "done" and job.run_id == run_id, (job, _log(store_path))
    _assert_finished_whole(store, run_id, steps=400)


def test_a_job_whose_run_diverges_fails_naming_the_step_and_its_run_is_marked_diverged(store_path):
    """lr = 1.0 (issue 14): the worker's run breaks the divergence rule, stops there and is marked
    ``diverged`` with its step and reason; the job fails with the same text; it cannot be resumed."""
    config = dataclasses.replace(_config(steps=12), lr=1.0, kl_every=2)
    job_id = enqueue_training(store_path, config, SETUP, name="lr 1")
    ensure_worker(store_path)
    job = _wait_ended(store_path, job_id)
    run = RunStore(store_path).get_run(job.run_id)
    assert run.status == "diverged" and run.error.startswith("diverged at step "), (run.error, _log(store_path))
    step = int(run.error.split()[3].rstrip(":"))
    assert step < 12 and int(run.metrics.step.max()) == step
    assert (job.status, job.error) == ("failed", f"run {run.id} {run.error}")
    assert len(run.points) == 1  # its policy is finite: evaluated, kept off fronts unless asked
    with pytest.raises(ValueError, match="status is 'diverged'"):
        enqueue_resume(store_path, run.id)
    _assert_store_healthy(RunStore(store_path))
