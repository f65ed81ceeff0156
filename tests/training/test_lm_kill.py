"""Training runs that die: ``python -m mopo_core train`` killed with SIGKILL, or stopped with
SIGTERM/SIGINT, and ``train --resume RUN_ID`` afterwards.

A SIGKILLed process cannot update its run, so the run keeps status ``running`` (a later session
or the app has to mark such runs ``interrupted``; ``train --resume`` accepts them). The store
(SQLite in WAL mode) stays readable, the checkpoint is only ever replaced whole (``last.pt``;
a leftover ``last.tmp`` from a write that was cut off is ignored), and the resumed run's metrics
equal those of an uninterrupted run with the same seed. SIGTERM/SIGINT end the run after the
current step: status ``cancelled``, checkpoint kept, exit status 128 + the signal number.
"""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mopo_core.cli.main import main
from mopo_core.runs import RunStore

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT_EVERY = 4
STEPS = 150
TASK = ["--n-prompts", "10", "--sft-steps", "20", "--batch-size", "4", "--threshold", "0.6",
        "--checkpoint-every", str(CHECKPOINT_EVERY), "--seed", "3"]
#: Deterministic series (tokens_per_s is a timing).
SERIES = ("loss", "lambda_1", "constraint_1", "threshold_1", "ess")
TIMEOUT = 180


def _env(store_path: Path) -> dict:
    # one thread: the same arithmetic in every process, and no oversubscription under pytest -n
    return {**os.environ, "MOPO_STORE": str(store_path), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start(store_path: Path, checkpoint_dir: Path, tmp_path: Path, name: str) -> subprocess.Popen:
    """``train`` in a child process; stdout/stderr go to files (no pipe to fill)."""
    args = [sys.executable, "-m", "mopo_core", "train", *TASK, "--steps", str(STEPS),
            "--checkpoint-dir", str(checkpoint_dir), "--json"]
    with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
        return subprocess.Popen(args, cwd=ROOT, env=_env(store_path), stdout=out, stderr=err)


def _stderr(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.err").read_text()[-3000:]


def _wait_for_steps(store: RunStore, checkpoint_dir: Path, proc: subprocess.Popen, min_step: int,
                    tmp_path: Path, name: str) -> int:
    """Poll the store until the run writing to ``checkpoint_dir`` has metrics up to ``min_step``;
    return its id."""
    wanted, run_id = str(checkpoint_dir.resolve()), None
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{name} exited early ({proc.returncode}): {_stderr(tmp_path, name)}"
        if run_id is None:
            for candidate in store.list_runs(kind="train").id:
                if store.get_run(int(candidate)).config.get("checkpoint_dir") == wanted:
                    run_id = int(candidate)
        if run_id is not None:
            steps = store.get_run(run_id).metrics.step
            if len(steps) and steps.max() >= min_step:
                return run_id
        time.sleep(0.02)
    pytest.fail(f"{name}: no metrics up to step {min_step} after {TIMEOUT} s")


def _series(run) -> dict[str, np.ndarray]:
    """Each deterministic metric's values by step; fails on a repeated step."""
    out = {}
    for name in SERIES:
        rows = run.metrics[run.metrics.name == name].sort_values("step")
        assert rows.step.is_unique, f"{name}: repeated steps {rows.step[rows.step.duplicated()].tolist()}"
        assert rows.step.tolist() == list(range(1, STEPS + 1)), name
        out[name] = rows.value.to_numpy()
    return out


def _assert_store_healthy(store_path: Path, store: RunStore, run_id: int) -> None:
    assert run_id in set(store.list_runs().id)
    store.get_run(run_id)
    conn = sqlite3.connect(store_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


@pytest.mark.slow
def test_sigkill_leaves_a_readable_store_and_a_whole_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path):
    store_path = tmp_path / "runs.sqlite"
    store = RunStore(store_path)
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full = _start(store_path, full_dir, tmp_path, "full")
    killed = _start(store_path, killed_dir, tmp_path, "killed")
    try:
        run_id = _wait_for_steps(store, killed_dir, killed, 2 * CHECKPOINT_EVERY + 1, tmp_path, "killed")
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(TIMEOUT) == -signal.SIGKILL
    finally:
        if killed.poll() is None:
            killed.kill()
    # the store: readable, consistent, and the run still "running" (its process could not update it)
    _assert_store_healthy(store_path, store, run_id)
    run = store.get_run(run_id)
    assert run.status == "running" and run.finished_at is None and run.points.empty
    killed_at = int(run.metrics.step.max())
    assert killed_at < STEPS, "the run finished before it was killed; raise STEPS"
    # the checkpoint: whole (only ever renamed into place), written at a checkpoint step
    files = {p.name for p in killed_dir.iterdir()}
    assert "last.pt" in files and files <= {"last.pt", "last.tmp"}, files
    state = torch.load(killed_dir / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] % CHECKPOINT_EVERY == 0 and CHECKPOINT_EVERY <= state["step"] <= killed_at
    # a write that was cut off leaves a partial temporary file: resume ignores (and replaces) it
    (killed_dir / "last.tmp").write_bytes(b"\x80partial checkpoint")

    resumed = subprocess.run([sys.executable, "-m", "mopo_core", "train", "--resume", str(run_id), "--json"],
                             cwd=ROOT, env=_env(store_path), capture_output=True, text=True, timeout=TIMEOUT,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = json.loads(resumed.stdout)
    assert out["run_id"] == run_id and out["status"] == "finished"
    assert full.wait(TIMEOUT) == 0, _stderr(tmp_path, "full")
    full_out = json.loads((tmp_path / "full.out").read_text())

    run, reference = store.get_run(run_id), store.get_run(full_out["run_id"])
    assert run.status == "finished" and run.finished_at is not None and len(run.points) == 1
    assert {p.name for p in killed_dir.iterdir()} == {"last.pt"}
    assert torch.load(killed_dir / "last.pt", map_location="cpu", weights_only=True)["step"] == STEPS
    # every step once (the killed process's steps after the checkpoint were dropped and redone),
    # each equal to the uninterrupted run's
    got, want = _series(run), _series(reference)
    for name in SERIES:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(out["multipliers"], full_out["multipliers"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(run.points["values"][0], reference.points["values"][0], rtol=0, atol=1e-6)
    _assert_store_healthy(store_path, store, run_id)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_sigint_cancels_after_the_step_and_the_run_resumes(tmp_path, monkeypatch, capsys, signum):
    store_path = tmp_path / "runs.sqlite"
    store = RunStore(store_path)
    checkpoint_dir = tmp_path / "ck"
    proc = _start(store_path, checkpoint_dir, tmp_path, "train")
    try:
        run_id = _wait_for_steps(store, checkpoint_dir, proc, 5, tmp_path, "train")
        proc.send_signal(signum)
        assert proc.wait(TIMEOUT) == 128 + signum, _stderr(tmp_path, "train")
    finally:
        if proc.poll() is None:
            proc.kill()
    out = json.loads((tmp_path / "train.out").read_text())
    assert out["run_id"] == run_id and out["status"] == "cancelled" and out["points"] == []
    run = store.get_run(run_id)
    assert run.status == "cancelled" and run.points.empty
    stopped_at = int(run.metrics.step.max())
    assert stopped_at == out["step"] < STEPS
    assert {p.name for p in checkpoint_dir.iterdir()} == {"last.pt"}
    # the checkpoint is written at the step the run stopped at
    assert torch.load(checkpoint_dir / "last.pt", map_location="cpu", weights_only=True)["step"] == stopped_at

    monkeypatch.setenv("MOPO_STORE", str(store_path))
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert main(["train", "--resume", str(run_id), "--json"]) == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
    assert json.loads(capsys.readouterr().out)["status"] == "finished"
    run = store.get_run(run_id)
    assert run.status == "finished" and len(run.points) == 1
    _series(run)  # every step exactly once
    _assert_store_healthy(store_path, store, run_id)


# ---------------------------------------------------------------------- resume errors (fast)


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MOPO_STORE", str(tmp_path / "runs.sqlite"))
    return RunStore(tmp_path / "runs.sqlite")


def _resume_error(run_id, capsys) -> str:
    assert main(["train", "--resume", str(run_id)]) == 2
    return capsys.readouterr().err


def test_resume_of_an_unknown_run_is_an_error(store, capsys):
    assert "run 99: not found in the run store" in _resume_error(99, capsys)


def test_resume_of_a_run_that_is_not_a_train_run_is_an_error(store, capsys):
    run_id = store.create_run("solve", {"tau": 0.1})
    assert f"run {run_id}: is a 'solve' run, not a train run" in _resume_error(run_id, capsys)


def test_resume_of_a_finished_run_is_an_error(store, tmp_path, capsys):
    run_id = store.create_run("train", {"task": "text", "checkpoint_dir": str(tmp_path / "ck")})
    store.set_status(run_id, "finished")
    assert f"run {run_id}: already finished" in _resume_error(run_id, capsys)


def test_resume_without_a_checkpoint_is_an_error(store, tmp_path, capsys):
    missing = store.create_run("train", {"task": "text", "checkpoint_dir": str(tmp_path / "ck")})
    assert f"run {missing}: no checkpoint at {tmp_path / 'ck' / 'last.pt'}" in _resume_error(missing, capsys)
    no_dir = store.create_run("train", {"task": "text", "checkpoint_dir": None})
    store.set_status(no_dir, "cancelled")
    assert f"run {no_dir}: was started without a checkpoint folder" in _resume_error(no_dir, capsys)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "last.pt").write_bytes(b"not a checkpoint")
    assert f"run {missing}: cannot read the checkpoint" in _resume_error(missing, capsys)
    assert store.get_status(missing) == "running"  # untouched by a refused resume
