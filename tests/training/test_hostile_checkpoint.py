"""A training checkpoint cannot run code: a ``last.pt`` replaced by a pickle whose unpickling
would create a marker file is refused, naming the file, by ``evaluate --run``, ``train --resume``
and a queued resume job run by a real worker process, and the marker never appears.

The run is a real (tiny) text-task run cancelled after its first step, so its checkpoint
folder, config and status are those a user's run has; only ``last.pt`` is swapped. The test
ends by unpickling the file the unsafe way, which does create the marker: the payload is live,
so its absence before proves the refusals."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mopo_core.training import jobs
from mopo_core.cli.main import main
from mopo_core.lm.config import TrainConfig
from mopo_core.runs import RunStore
from mopo_core.training.text_task import TextTaskSetup, train_on_text_task
from tests.training.hostile import SystemOnUnpickle, TouchOnUnpickle

ROOT = Path(__file__).resolve().parents[2]
SETUP = TextTaskSetup(n_prompts=10, sft_steps=20, eval_samples=2, seed=3)
TIMEOUT = 180


def cancelled_run(store: RunStore, checkpoint_dir: Path) -> int:
    """A tiny text-task run cancelled after step 1 (status ``cancelled``, checkpoint at step 1)."""
    def cancel_after_first_step(trainer):
        trainer.callbacks = (*trainer.callbacks, lambda step, metrics: trainer.request_cancel())

    config = TrainConfig(method="mopo", thresholds=(0.6,), steps=4, batch_size=4, checkpoint_every=4, seed=3)
    result, evaluation = train_on_text_task(config, SETUP, store, checkpoint_dir, on_trainer=cancel_after_first_step)
    assert (result.status, result.step, evaluation) == ("cancelled", 1, None)
    return result.run_id


@pytest.fixture()
def hostile_run(tmp_path, monkeypatch):
    """(store path, run id, its last.pt, the marker): the run's checkpoint replaced by a hostile pickle."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    store_path, checkpoint_dir, marker = tmp_path / "runs.sqlite", tmp_path / "ck", tmp_path / "pwned"
    run_id = cancelled_run(RunStore(store_path), checkpoint_dir)
    last = checkpoint_dir / "last.pt"
    genuine = torch.load(last, map_location="cpu", weights_only=True)
    # the genuine checkpoint's fields, with the payload where a tensor would be: torch's own format
    torch.save({**genuine, "lam": SystemOnUnpickle(marker), "model": TouchOnUnpickle(marker)}, last)
    jobs._children.clear()
    yield store_path, run_id, last, marker
    for proc in jobs._children.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    jobs._children.clear()


def _cli_error(argv: list[str], capsys) -> str:
    capsys.readouterr()  # what setting the run up printed (e.g. the reference cache's progress)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_hostile_checkpoint_is_refused_by_evaluate_resume_and_the_queue_and_never_runs(hostile_run, capsys):
    store_path, run_id, last, marker = hostile_run
    refusal = f"run {run_id}: cannot read the checkpoint {last}: written by an older version or not a checkpoint"
    store = ["--store", str(store_path)]

    assert refusal in _cli_error([*store, "evaluate", "--run", str(run_id)], capsys)
    assert not marker.exists()
    assert refusal in _cli_error([*store, "train", "--resume", str(run_id)], capsys)
    assert not marker.exists()
    run = RunStore(store_path).get_run(run_id)
    assert run.status == "cancelled" and int(run.metrics.step.max()) == 1  # a refused resume changes nothing
    assert set(RunStore(store_path).list_runs().kind) == {"train"}  # and the refused evaluation recorded nothing

    # the app's queue: a resume job, run by a real worker process until the queue is empty
    job_id = jobs.enqueue_resume(store_path, run_id)
    worker = subprocess.run([sys.executable, "-m", "mopo_core.cli.worker", "--store", str(store_path)],
                            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=TIMEOUT, check=False)
    assert worker.returncode == 0, worker.stderr[-3000:]
    job = jobs.get_job(store_path, job_id)
    log = (jobs.jobs_dir(store_path) / "worker.log").read_text() if (jobs.jobs_dir(store_path) / "worker.log").exists() else ""
    assert job.status == "failed" and refusal in job.error, (job, log, worker.stdout[-3000:])
    assert not marker.exists()
    assert RunStore(store_path).get_status(run_id) == "cancelled"

    # the file is live: reading it the unsafe way runs the payload
    torch.load(last, map_location="cpu", weights_only=False)
    assert marker.exists()


def test_a_plain_pickle_in_place_of_the_checkpoint_is_refused_naming_it(tmp_path, capsys):
    """An older-style file (a bare pickle, not torch's zip format) whose payload would run."""
    store_path, marker = tmp_path / "runs.sqlite", tmp_path / "pwned"
    run_id = cancelled_run(RunStore(store_path), tmp_path / "ck")
    last = tmp_path / "ck" / "last.pt"
    last.write_bytes(pickle.dumps({"step": 1, "model": TouchOnUnpickle(marker)}))
    err = _cli_error(["--store", str(store_path), "train", "--resume", str(run_id)], capsys)
    assert f"run {run_id}: cannot read the checkpoint {last}: written by an older version or not a checkpoint" in err
    assert not marker.exists()
    pickle.loads(last.read_bytes())  # live payload
    assert marker.exists()
