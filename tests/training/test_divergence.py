"""Runs that go wrong are named (issue 14, item 3): the divergence rule of
mopo_core.training.divergence on hand-made step metrics, and real tiny text-task runs: one with
lr = 1.0 is stopped, marked ``diverged`` with its step and reason, evaluated, and kept off the
front and the dominance counts unless asked; one with a normal lr is not marked."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from mopo_core.experiments import compare_runs
from mopo_core.lm.config import TrainConfig
from mopo_core.runs import TERMINAL_STATUSES, RunStore
from mopo_core.training import divergence
from mopo_core.training.divergence import (
    GRAD_NORM_FACTOR,
    KL_BOUND,
    KL_JUMP,
    LOSS_FACTOR,
    DivergenceRule,
    DivergenceWatch,
    divergence_reason,
)
from mopo_core.training.text_task import TextTaskSetup, evaluate_text_checkpoint, train_on_text_task

FIRST = {"loss": 30.0, "grad_norm": 20.0}


# ---------------------------------------------------------------------------- the rule


def test_a_healthy_step_breaks_no_rule():
    healthy = {"loss": 30.0 * LOSS_FACTOR * 0.99, "grad_norm": 20.0 * GRAD_NORM_FACTOR * 0.99,
               "kl_to_reference": KL_BOUND * 0.99}
    assert divergence_reason(healthy, FIRST) is None
    assert divergence_reason({"loss": 1.0, "kl_to_reference": -1e-5}, FIRST) is None  # rounding below zero


@pytest.mark.parametrize("metrics, says", [
    ({"loss": math.nan}, "the loss is nan"),
    ({"loss": math.inf}, "the loss is inf"),
    ({"loss": 30.0 * LOSS_FACTOR * 1.01}, f"more than {LOSS_FACTOR:g} times the first logged loss 30"),
    ({"loss": -30.0 * LOSS_FACTOR * 1.01}, "times the first logged loss"),  # by magnitude
    ({"loss": 1.0, "grad_norm": math.nan}, "the gradient norm is nan"),
    ({"loss": 1.0, "grad_norm": 20.0 * GRAD_NORM_FACTOR * 1.01}, f"more than {GRAD_NORM_FACTOR:g} times the first"),
    ({"loss": 1.0, "kl_to_reference": KL_BOUND + 1}, f"above the bound {KL_BOUND:g}"),
    ({"loss": 1.0, "kl_to_reference": -350.0}, "negative"),  # what the KL panel showed
    ({"loss": 1.0, "kl_to_reference": math.nan}, "the KL to the reference is nan"),
    ({"loss": 1.0, "kl_to_start": KL_BOUND + 1}, "the KL to the starting model is"),
])
def test_each_part_of_the_rule_names_its_reason(metrics, says):
    assert says in divergence_reason(metrics, FIRST)


def test_a_kl_that_leaps_between_two_logged_values_is_named():
    assert divergence_reason({"kl_to_reference": 29.0}, FIRST, previous={"kl_to_reference": 4.5}) is None
    says = divergence_reason({"kl_to_reference": 31.0}, FIRST, previous={"kl_to_reference": 5.0})
    assert f"rose from 5 to 31 nats per response since its last logged value, more than {KL_JUMP:g}" in says
    watch = DivergenceWatch()
    for step, kl in enumerate([0.0, 1.0, 2.5, 60.0, 2.5], start=1):  # online MOPO at lr = 1.0
        watch(step, {"loss": 1.0, "kl_to_reference": kl})
    assert watch.divergence.step == 4 and "rose from 2.5 to 60" in watch.divergence.reason


def test_the_first_values_have_a_floor_and_the_watch_keeps_the_first_breach():
    # A loss starting at ~0 (floor 1.0): 19 is not an explosion, 21 is.
    assert divergence_reason({"loss": 19.0}, {"loss": 1e-4}) is None
    assert divergence_reason({"loss": 21.0}, {"loss": 1e-4}) is not None
    assert divergence_reason({"loss": 5.0}, {"loss": 0.1}, DivergenceRule(loss_factor=2.0)) is not None

    class Trainer:
        cancelled = 0

        def request_cancel(self):
            self.cancelled += 1

    trainer = Trainer()
    watch = DivergenceWatch(trainer)
    for step, loss in enumerate([30.0, 40.0, 700.0, math.nan], start=1):
        watch(step, {"loss": loss, "grad_norm": 1.0})
    assert watch.first == {"loss": 30.0, "grad_norm": 1.0}
    assert watch.divergence.step == 3 and "700" in watch.divergence.reason
    assert watch.divergence.message.startswith("diverged at step 3: the loss 700")
    assert trainer.cancelled == 1


def test_diverged_is_a_terminal_run_status(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run("train", {})
    store.set_status(run_id, "diverged", "diverged at step 3: the loss 700 ...")
    run = store.get_run(run_id)
    assert "diverged" in TERMINAL_STATUSES and run.status == "diverged" and run.finished_at is not None
    assert store.list_runs(status="diverged").id.tolist() == [run_id]


# ---------------------------------------------------------------------------- real tiny runs

SETUP = TextTaskSetup(n_prompts=20, sft_steps=20, eval_samples=2)
STEPS = 12


def _config(lr: float) -> TrainConfig:
    return TrainConfig(method="mopo", thresholds=(0.5,), steps=STEPS, batch_size=4, lr=lr, kl_every=2,
                       checkpoint_every=STEPS)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """(store, lr = 1.0 run, lr = 1e-3 run, checkpoint folder of the first): real text-task runs."""
    folder = tmp_path_factory.mktemp("divergence")
    store = RunStore(folder / "runs.sqlite")
    wild, _ = train_on_text_task(_config(1.0), SETUP, store, folder / "wild")
    tame, _ = train_on_text_task(_config(1e-3), SETUP, store, folder / "tame")
    return store, store.get_run(wild.run_id), store.get_run(tame.run_id), wild, folder / "wild"


def test_a_run_with_lr_1_is_stopped_and_marked_diverged_with_its_step_and_reason(two_runs):
    store, wild, tame, result, _ = two_runs
    assert result.status == "diverged" and wild.status == "diverged"
    found = re.fullmatch(r"diverged at step (\d+): (.+)", wild.error)
    assert found, wild.error
    step = int(found.group(1))
    assert step == result.step < STEPS  # stopped after the step that broke the rule
    assert wild.metrics.step.max() == step
    # The reason is the rule applied to that step's logged metrics, against the run's first ones.
    logged = wild.metrics.pivot_table(index="step", columns="name", values="value")
    first = {name: float(logged[name].dropna().iloc[0]) for name in ("loss", "grad_norm")}
    assert found.group(2) == divergence_reason(logged.loc[step].dropna().to_dict(), first)
    assert all(divergence_reason(logged.loc[s].dropna().to_dict(), first) is None for s in logged.index if s < step)
    assert len(wild.points) == 1  # its (finite) policy is evaluated, to be looked at when asked


def test_a_run_with_a_normal_lr_is_not_marked(two_runs):
    _, _, tame, _, _ = two_runs
    assert tame.status == "finished" and tame.error is None and tame.metrics.step.max() == STEPS
    assert len(tame.points) == 1


def test_the_diverged_run_is_off_the_front_and_the_dominance_counts_unless_asked(two_runs):
    _, wild, tame, _, _ = two_runs
    runs = [wild, tame]
    assert compare_runs.split_diverged(runs) == ([tame], [wild])
    shown = compare_runs.points_frame(runs)
    assert shown.run_id.tolist() == [tame.id]
    tame_series = f"#{tame.id} {compare_runs.run_title(tame)}"
    assert list(compare_runs.dominance_counts(compare_runs.point_sets(shown)).index) == [tame_series]
    assert compare_runs.union_front_mask(compare_runs.value_matrix(shown)).tolist() == [True]
    assert compare_runs.hypervolume_per_run(runs, [0.0, 0.0]).series.tolist() == [tame_series, "union of all"]

    everything = compare_runs.points_frame(runs, include_diverged=True)
    assert sorted(everything.run_id.tolist()) == sorted([wild.id, tame.id])
    wild_series = everything.loc[everything.run_id == wild.id, "series"].iloc[0]
    assert wild_series.endswith("(diverged)")
    counts = compare_runs.dominance_counts(compare_runs.point_sets(everything))
    assert wild_series in counts.index
    assert len(compare_runs.hypervolume_per_run(runs, [0.0, 0.0], include_diverged=True)) == 3


def test_an_evaluation_of_a_diverged_run_is_hidden_too(two_runs):
    store, wild, _, _, checkpoint_dir = two_runs
    eval_id, _ = evaluate_text_checkpoint(store, wild.id, _config(1.0), SETUP, checkpoint_dir, n_samples=1)
    evaluation = store.get_run(eval_id)
    assert evaluation.config["source_status"] == "diverged" and evaluation.status == "finished"
    assert compare_runs.is_diverged(evaluation)
    assert compare_runs.points_frame([evaluation]).empty


def test_a_resumed_run_keeps_its_first_loss_and_grad_norm(two_runs):
    store, wild, _, _, _ = two_runs
    first = divergence.first_logged(store, wild.id)
    loss = wild.metrics[wild.metrics.name == "loss"].sort_values("step").value.iloc[0]
    assert first["loss"] == pytest.approx(loss) and np.isfinite(first["grad_norm"])


def test_the_train_command_fails_on_a_diverged_run(tmp_path, monkeypatch, capsys):
    from mopo_core.cli.main import main

    monkeypatch.setenv("MOPO_STORE", str(tmp_path / "runs.sqlite"))
    code = main(["train", "--method", "mopo", "--threshold", "0.5", "--steps", str(STEPS), "--batch-size", "4",
                 "--lr", "1.0", "--n-prompts", "20", "--sft-steps", "20", "--kl-every", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "diverged at step" in err


def test_online_mopo_at_lr_1_is_caught_by_its_kl_leap(tmp_path):
    """Online MOPO at lr = 1.0 does not blow up its loss: it collapses after one leap of its KL."""
    config = TrainConfig(method="mopo", thresholds=(0.5,), steps=STEPS, batch_size=4, lr=1.0, online=True,
                         n_candidates=4, checkpoint_every=STEPS)
    result, _ = train_on_text_task(config, SETUP, RunStore(tmp_path / "runs.sqlite"), tmp_path / "online")
    error = RunStore(tmp_path / "runs.sqlite").get_run(result.run_id).error
    assert result.status == "diverged" and result.step < STEPS
    assert re.fullmatch(r"diverged at step \d+: the KL to the reference rose from .+ more than 25", error), error
