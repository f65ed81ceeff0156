"""Bad inputs to training runs, one table: unusable or hostile checkpoints and a resume of a
run that a live process still trains. Each row swaps the checkpoint of a real (tiny) cancelled
text-task run, or gives the run a live owner, then runs ``evaluate --run``, ``train --resume``
(the CLI: exit status 2, one ``error:`` line naming the file or the process, no traceback) or a
trainer's own resume (the path dataset runs take: ``ValueError``). Every row also checks that
nothing ran from the file and that the refused command left the run as it was.

Beside the table: a run has one owner while it trains (recorded and released by the trainer; a
dead owner does not count), and the KL estimate stays >= 0 on a policy where the old estimator
(mean log-ratio, with eos appended to samples cut at the budget) went far below 0."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from mopo_core.cli.main import main
from mopo_core.lm.config import TrainConfig
from mopo_core.lm.trainer import Trainer
from mopo_core.lm.models import sample, tiny_gpt, word_tokenizer
from mopo_core.data.preferences import PreferenceDataset
from mopo_core.runs import RunStore, check_run_owner, claim_run, release_run
from mopo_core.training.tasks import train_config_from
from mopo_core.training.text_task import TextTaskSetup, train_on_text_task
from tests.training.hostile import SystemOnUnpickle, TouchOnUnpickle
from synthetic.text_task import TextTask, vocabulary

ROOT = Path(__file__).resolve().parents[2]
SETUP = TextTaskSetup(n_prompts=10, sft_steps=20, eval_samples=2, seed=3)
CONFIG = TrainConfig(method="mopo", thresholds=(0.6,), steps=4, batch_size=4, checkpoint_every=4, seed=3)
OWNER = ("import sys, time; from mopo_core.runs import claim_run; claim_run(sys.argv[1], int(sys.argv[2])); "
         "print('owner', flush=True); time.sleep(120)")


@dataclass
class Run:
    """The shared cancelled run: its store, id, checkpoint file and the checkpoint's contents."""

    store_path: Path
    run_id: int
    checkpoint: Path
    genuine: dict
    marker: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    folder = tmp_path_factory.mktemp("bad_inputs_training")
    store = RunStore(folder / "runs.sqlite")

    def cancel_after_first_step(trainer):
        trainer.callbacks = (*trainer.callbacks, lambda step, metrics: trainer.request_cancel())

    result, _ = train_on_text_task(CONFIG, SETUP, store, folder / "ck", on_trainer=cancel_after_first_step)
    assert (result.status, result.step) == ("cancelled", 1)
    checkpoint = folder / "ck" / "last.pt"
    return Run(store.path, result.run_id, checkpoint, torch.load(checkpoint, weights_only=True), folder / "pwned")


@pytest.fixture()
def fresh(run):
    """The run with its genuine checkpoint back after each row."""
    yield run
    if run.checkpoint.is_dir():
        run.checkpoint.rmdir()
    torch.save(run.genuine, run.checkpoint)
    assert not run.marker.exists()


# ---------------------------------------------------------------------- arranging a bad input
# Each returns a clean-up (or None) and what the error names beyond the run: {path} or {pid}.


def hostile_torch_save(run: Run):
    torch.save({**run.genuine, "model": SystemOnUnpickle(run.marker)}, run.checkpoint)


def hostile_bare_pickle(run: Run):
    run.checkpoint.write_bytes(pickle.dumps({**run.genuine, "model": TouchOnUnpickle(run.marker)}))


def older_version_with_numpy(run: Run):
    """What an older writer might have stored: numpy arrays among the tensors."""
    torch.save({**run.genuine, "lam": np.zeros(1), "constraint_history": [np.zeros(1)]}, run.checkpoint)


def truncated(run: Run):
    data = run.checkpoint.read_bytes()
    run.checkpoint.write_bytes(data[: len(data) // 2])


def empty(run: Run):
    run.checkpoint.write_bytes(b"")


def text_file(run: Run):
    run.checkpoint.write_text("step 1, model weights elsewhere\n")


def without_model(run: Run):
    torch.save({k: v for k, v in run.genuine.items() if k != "model"}, run.checkpoint)


def a_folder(run: Run):
    run.checkpoint.unlink()
    run.checkpoint.mkdir()


def another_config(run: Run):
    torch.save({**run.genuine, "config": asdict(TrainConfig(method="sft"))}, run.checkpoint)


def live_owner(run: Run):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(run.store_path), str(run.run_id)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().strip() == "owner"

    def clean_up():
        owner.kill()
        owner.wait()
        owner.stdout.close()

    return clean_up, owner.pid


UNREADABLE = "run {run}: cannot read the checkpoint {path}: written by an older version or not a checkpoint"


@dataclass
class Case:
    name: str
    arrange: Callable[[Run], object]
    action: str  # "evaluate" | "resume" (the CLI's) | "trainer_resume" (Trainer.train(resume_run_id=...))
    message: str  # a format string over run, path, pid


CASES = [
    Case("hostile torch.save payload, evaluate", hostile_torch_save, "evaluate", UNREADABLE),
    Case("hostile torch.save payload, train --resume", hostile_torch_save, "resume", UNREADABLE),
    Case("hostile torch.save payload, trainer resume", hostile_torch_save, "trainer_resume", UNREADABLE),
    Case("hostile bare pickle, train --resume", hostile_bare_pickle, "resume", UNREADABLE),
    Case("hostile bare pickle, evaluate", hostile_bare_pickle, "evaluate", UNREADABLE),
    Case("older checkpoint holding numpy arrays", older_version_with_numpy, "resume", UNREADABLE),
    Case("truncated checkpoint", truncated, "evaluate", UNREADABLE),
    Case("empty checkpoint", empty, "resume", UNREADABLE),
    Case("text in place of the checkpoint", text_file, "evaluate", UNREADABLE),
    Case("checkpoint without its model", without_model, "resume",
         "run {run}: cannot read the checkpoint {path}: not a training checkpoint (no model (dict))"),
    Case("last.pt is a folder", a_folder, "resume", "run {run}: no checkpoint at {path}"),
    Case("checkpoint of another config", another_config, "evaluate",
         "run {run}: the checkpoint {path} was written with a different config"),
    Case("resume while a live process trains the run", live_owner, "resume",
         "run {run}: process {pid} is training it"),
    Case("trainer resume while a live process trains the run", live_owner, "trainer_resume",
         "run {run}: process {pid} is training it"),
]


def _trainer(run: Run) -> Trainer:
    """A trainer for the run's stored config on the text task's pairs (a resume reads the checkpoint
    before it trains, so the model's weights do not matter)."""
    task = TextTask(n_prompts=6, n_candidates=6, seed=0)
    pairs = [r for r in task.sample_pairs(8, seed=0) if r["response_a"] != r["response_b"]]
    tokenizer = word_tokenizer(vocabulary())
    config = train_config_from(RunStore(run.store_path).get_run(run.run_id).config)
    return Trainer(tiny_gpt(len(tokenizer), n_layer=1, n_embd=32), tokenizer, PreferenceDataset.from_records(pairs),
                   config, store=RunStore(run.store_path), checkpoint_dir=run.checkpoint.parent)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_training_input_gets_a_named_error_and_changes_nothing(fresh, case, capsys):
    store = RunStore(fresh.store_path)
    before = store.get_run(fresh.run_id)
    arranged = case.arrange(fresh)
    clean_up, pid = arranged if isinstance(arranged, tuple) else (None, None)
    expected = case.message.format(run=fresh.run_id, path=fresh.checkpoint, pid=pid)
    try:
        if case.action == "trainer_resume":
            with pytest.raises(ValueError) as refused:
                _trainer(fresh).train(resume_run_id=fresh.run_id)
            error = str(refused.value)
        else:
            argv = (["evaluate", "--run", str(fresh.run_id)] if case.action == "evaluate"
                    else ["train", "--resume", str(fresh.run_id)])
            assert main(["--store", str(fresh.store_path), *argv]) == 2
            error = capsys.readouterr().err
            assert error.startswith("error: ") and error.count("\n") == 1 and "Traceback" not in error, error
    finally:
        if clean_up is not None:
            clean_up()
    assert expected in error, error
    assert not fresh.marker.exists()  # nothing ran from the file
    after = store.get_run(fresh.run_id)
    assert (after.status, after.error, len(after.metrics)) == (before.status, before.error, len(before.metrics))
    assert list(store.list_runs().id) == [fresh.run_id]  # no evaluate run was recorded


# ---------------------------------------------------------------------- one owner per run


def test_a_training_process_owns_its_run_until_it_returns_and_a_dead_owner_does_not_count(run, tmp_path):
    task = TextTask(n_prompts=6, n_candidates=6, seed=0)
    pairs = [r for r in task.sample_pairs(8, seed=0) if r["response_a"] != r["response_b"]]
    tokenizer = word_tokenizer(vocabulary())
    store = RunStore(tmp_path / "runs.sqlite")
    trainer = Trainer(tiny_gpt(len(tokenizer), n_layer=1, n_embd=32), tokenizer, PreferenceDataset.from_records(pairs),
                      TrainConfig(steps=2, batch_size=4), store=store)
    refusals = []

    def during_training(step, metrics):
        with pytest.raises(ValueError) as refused:
            check_run_owner(store.path, trainer.run_id)
        refusals.append(str(refused.value))

    trainer.callbacks = (during_training,)
    result = trainer.train()
    assert len(refusals) == 2 and all(
        r.startswith(f"run {result.run_id}: process {os.getpid()} (this process) is training it") for r in refusals)
    check_run_owner(store.path, result.run_id)  # released when train returned

    # a process that claimed the run and was killed leaves its record, which no longer counts
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(store.path), str(result.run_id)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "owner"
        with pytest.raises(ValueError, match=f"run {result.run_id}: process {owner.pid} is training it"):
            claim_run(store.path, result.run_id)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        owner.stdout.close()
    check_run_owner(store.path, result.run_id)
    claim_run(store.path, result.run_id)
    with pytest.raises(ValueError, match=f"process {os.getpid()} \\(this process\\) is training it"):
        check_run_owner(store.path, result.run_id)
    release_run(store.path, result.run_id)
    check_run_owner(store.path, result.run_id)
    with pytest.raises(ValueError, match=f"run 99: not found in the run store {store.path}"):
        claim_run(store.path, 99)


# ---------------------------------------------------------------------- the KL estimate


def test_the_kl_estimate_stays_non_negative_where_the_mean_log_ratio_went_negative():
    """A diverged policy that (almost) never ends its responses: every sample is cut at
    max_new_tokens. The old estimator appended eos to each sample and averaged
    log pi - log pi_ref, which the policy's near-zero eos probability drags far below 0 (the
    Train page showed about -350 nats); the exact per-token KL summed over the samples cannot."""
    task = TextTask(n_prompts=6, n_candidates=6, seed=0)
    pairs = [r for r in task.sample_pairs(8, seed=0) if r["response_a"] != r["response_b"]]
    tokenizer = word_tokenizer(vocabulary())
    config = TrainConfig(method="dpo", steps=1, batch_size=4, kl_every=1, max_new_tokens=3, n_candidates=4)
    trainer = Trainer(tiny_gpt(len(tokenizer), n_layer=1, n_embd=32), tokenizer,
                      PreferenceDataset.from_records(pairs), config)
    policy = trainer.model  # the reference stays the starting model
    head = torch.nn.Linear(policy.config.n_embd, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.copy_(policy.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = -30.0
    policy.lm_head = head

    estimate = trainer._sampled_kl()
    prompts = sorted(trainer.responses)[: config.kl_prompts]
    repeated = [p for p in prompts for _ in range(config.n_candidates)]
    seed = int(np.random.default_rng([config.seed, trainer.step, 1 << 20]).integers(2**31))
    responses = sample(policy, tokenizer, prompts, config.n_candidates, config.max_new_tokens, 1.0, seed)
    old = float(np.mean(trainer._eval_logprobs(policy, repeated, responses)
                        - trainer._eval_logprobs(trainer.reference, repeated, responses)))
    assert old < -10  # the case is real: the old estimate was far below 0
    assert estimate >= 0
