"""Stores and checkpoints written before the engine moved into sub-packages (issue 12) still open
with today's code: tests/fixtures/written_before_issue12 holds a run store (a solve, a sweep and a
text-task train run) and that train run's checkpoint, written at commit 91f2958 (its README
gives the commands)."""
import shutil
from pathlib import Path

import numpy as np
import torch

from mopo_core.lm.trainer import read_checkpoint
from mopo_core.runs import RunStore
from mopo_core.training.tasks import task_of_run, train_config_from

DATA = Path(__file__).parents[1] / "fixtures" / "written_before_issue12"


def _store(tmp_path) -> RunStore:
    shutil.copy(DATA / "runs.sqlite", tmp_path / "runs.sqlite")  # a copy: opening may migrate it
    return RunStore(tmp_path / "runs.sqlite")


def test_an_old_store_lists_its_runs_and_their_points(tmp_path):
    store = _store(tmp_path)
    runs = store.list_runs().set_index("id")
    assert runs.loc[[1, 2, 3], "kind"].tolist() == ["solve", "sweep", "train"]
    assert (runs.loc[[1, 2, 3], "status"] == "finished").all()
    solve = store.get_run(1).points
    assert len(solve) == 1 and len(solve["values"].iloc[0]) == 2 and solve["v1"].iloc[0] >= 0.6 - 1e-3
    assert len(store.get_run(2).points) == 3  # --n-thresholds 3
    train = store.get_run(3)
    assert train.config["steps"] == 2 and set(train.metrics["step"]) == {1, 2} and len(train.points) == 1


def test_an_old_train_run_is_chosen_as_a_text_task_run(tmp_path):
    store = _store(tmp_path)
    assert task_of_run(store, 3, "evaluated").name == "text"


def test_an_old_checkpoint_reads_with_weights_only_and_matches_its_run(tmp_path):
    store = _store(tmp_path)
    config = train_config_from(store.get_run(3).config)
    state = read_checkpoint(3, DATA, config)
    assert state["step"] == 2
    weights = state["model"]
    assert weights and all(isinstance(v, torch.Tensor) for v in weights.values())
    assert all(np.isfinite(v.float().numpy()).all() for v in weights.values())
