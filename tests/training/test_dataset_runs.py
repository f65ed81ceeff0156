"""Tests for runs on a preference file with a local checkpoint (mopo_core/training/dataset_task.py,
the dataset task of mopo_core/training/tasks.py) and the chat-aware prompt encoding they rely on
(mopo_core/lm/models.py: sequence_ids).

Everything is built in tests/lm_fixtures.py, nothing is downloaded: a tiny Llama with a word-level tokenizer whose
bos (``<|im_start|>``) is written by its chat template, saved as a checkpoint folder; a tiny
preference file; a preference model on a tiny BERT encoder fitted on the training split only."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mopo_core.lm import models as lm_models
from mopo_core.cli.main import main
from mopo_core.training.dataset_task import (
    DatasetSetup,
    DatasetTask,
    SetupError,
    chat_dataset,
    check_setup,
    lora_settings,
    load_data,
    load_splits,
    model_directory,
    preference_evaluation,
    train_on_dataset,
    truncate_responses,
)
from mopo_core.lm.evaluation import evaluate_policy
from mopo_core.lm.config import TrainConfig
from mopo_core.lm.trainer import encode_rows
from mopo_core.lm.registry import MODELS_ENV, find_model, format_prompt
from mopo_core.lm.models import load_model, load_tokenizer, sequence_ids, word_tokenizer
from mopo_core.lm.judge import SentenceEncoder
from mopo_core.data.preferences import PreferenceDataset
from mopo_core.runs import RunStore
from tests.lm_fixtures import (
    BOS,
    OBJECTIVES,
    SPLIT,
    chat_tokenizer,
    fit_judge,
    save_chat_checkpoint,
    tiny_encoder,
    write_preference_file,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_chat_checkpoint(tmp_path_factory.mktemp("models") / "tiny-chat")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_preference_file(tmp_path_factory.mktemp("data") / "prefs.jsonl")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> SentenceEncoder:
    return tiny_encoder(tmp_path_factory.mktemp("encoder"))


def setup_for(data_file, checkpoint, judge, **changes) -> DatasetSetup:
    settings = dict(data=str(data_file), model=str(checkpoint), prefmodel=str(judge), split=SPLIT,
                    max_response_tokens=5, eval_samples=2, max_new_tokens=3)
    return DatasetSetup(**{**settings, **changes})


@pytest.fixture(scope="module")
def judge_dir(data_file, checkpoint, encoder, tmp_path_factory) -> Path:
    """A preference model fitted on the training split's prompts only."""
    train, _, _ = load_splits(setup_for(data_file, checkpoint, ""), load_tokenizer(checkpoint))
    return fit_judge(train, encoder, tmp_path_factory.mktemp("judge") / "train-only",
                     {"file": str(data_file), "format": "mopo", "objective": None, "split": list(SPLIT), "split_seed": 0})


@pytest.fixture(scope="module")
def task(data_file, checkpoint, judge_dir) -> DatasetTask:
    return DatasetTask(setup_for(data_file, checkpoint, judge_dir))


# ----------------------------------------------------------------------------- chat-aware encoding


def test_a_chat_prompt_keeps_the_one_bos_its_template_wrote():
    tokenizer = chat_tokenizer()
    prompt = format_prompt(tokenizer, "w1 w2")
    assert prompt == "<|im_start|>user\nw1 w2<|im_end|>\n<|im_start|>assistant\n"
    ids = sequence_ids(tokenizer, prompt, add_eos=False)
    assert ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[:2] == [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("user")]
    assert ids.count(tokenizer.bos_token_id) == prompt.count(BOS) == 2  # one per template turn, none added
    plain = sequence_ids(tokenizer, "w1 w2")  # a tokenizer that never adds its bos gets none, only eos
    assert plain == [*tokenizer("w1 w2", add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def test_the_word_tokenizer_still_gets_its_bos():
    tokenizer = word_tokenizer(["a", "b"])
    assert sequence_ids(tokenizer, "a b") == [tokenizer.bos_token_id, 4, 5, tokenizer.eos_token_id]


def test_training_rows_and_sampling_encode_the_chat_prompt_exactly_once(monkeypatch):
    tokenizer = chat_tokenizer()
    prompt = format_prompt(tokenizer, "w3")
    expected = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids, attention, response = encode_rows(tokenizer, [prompt], ["w4 w5"])
    row = ids[0, attention[0].bool()].tolist()
    assert row == expected + tokenizer("w4 w5", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert response[0].sum() == 3
    queries = []
    monkeypatch.setattr(lm_models, "_generate", lambda model, tok, batch, config: queries.extend(batch) or [("", True)] * len(batch))
    lm_models.sample(torch.nn.Linear(1, 1), tokenizer, [prompt], n=2)
    assert queries == [expected, expected]


def fetched_smollm2() -> str | None:
    """The folder of the fetched SmolLM2-135M-Instruct in the models folder, if usable."""
    try:
        entry = find_model("SmolLM2-135M-Instruct")
    except ValueError:
        return None
    return entry.path if entry.problem is None else None


@pytest.mark.skipif(fetched_smollm2() is None,
                    reason="SmolLM2-135M-Instruct is not fetched (python -m mopo_core models fetch-smollm2)")
def test_real_smollm2_answers_a_chat_prompt_sampled_through_sequence_ids():
    path = fetched_smollm2()
    model, tokenizer = load_model(path, dtype="fp32", device="cpu"), load_tokenizer(path)
    (answer,) = lm_models.sample(model, tokenizer, [format_prompt(tokenizer, "What is the capital of France?")], 1, 8, 0.0)
    assert "Paris" in answer


# ----------------------------------------------------------------------------- data


def test_load_data_tells_this_projects_schema_from_a_public_format(data_file, tmp_path):
    assert load_data(data_file).objectives == OBJECTIVES
    pku = tmp_path / "pku.jsonl"
    pku.write_text(json.dumps({"prompt": "w1", "response_0": "w2", "response_1": "w3", "better_response_id": 1,
                               "safer_response_id": 0}) + "\n")
    pair = load_data(pku)[0]
    assert (pair.response_a, pair.response_b, pair.labels) == ("w2", "w3", (0.0, 1.0))


def test_responses_are_cut_to_the_token_budget_and_prompts_wrapped_in_the_template():
    tokenizer = chat_tokenizer()
    data = PreferenceDataset.from_records([
        {"prompt": "w1", "response_a": "w2 w3 w4", "response_b": "w2 w3 w5", "labels": {"h": 1.0}},
        {"prompt": "w1", "response_a": "w6 w7 w8", "response_b": "w9", "labels": {"h": 0.0}}])
    cut, dropped = truncate_responses(data, tokenizer, 2)  # the first pair's cut responses coincide: dropped
    assert [(p.response_a, p.response_b) for p in cut] == [("w6 w7", "w9")]
    assert dropped == ("records:row 1",)
    assert chat_dataset(cut, tokenizer)[0].prompt == "<|im_start|>user\nw1<|im_end|>\n<|im_start|>assistant\n"


# ----------------------------------------------------------------------------- evaluation


def test_the_batched_evaluation_is_evaluate_policys_under_the_judges_oracle(task):
    """Greedy samples do not depend on batching, so both evaluations see the same samples."""
    raw = task.raw[2].prompts()
    for prompt in raw[:2]:
        a, b = "w1 w2", "w3"
        assert np.allclose(task.oracle(prompt, a, b), task.judge.oracle(prompt, a, b), atol=1e-6)
    policy = task.start_policy(seed=1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    chat = [format_prompt(task.tokenizer, p) for p in raw]
    expected = evaluate_policy(policy, task.reference, task.tokenizer, chat, task.oracle,
                               lambda p, r: task.scores([p], [r])[0], task.objectives, n_samples=2, max_new_tokens=3,
                               temperature=0.0)
    mine = [s for p in chat for s in expected.samples[p]["policy"]]
    theirs = [s for p in chat for s in expected.samples[p]["reference"]]
    got = preference_evaluation(task.scores, raw, mine, theirs, task.objectives)
    for name in ("win_rates", "win_rate_stderr", "mean_scores", "reference_scores"):
        assert np.allclose(getattr(got, name), getattr(expected, name), atol=1e-9), name
    assert not np.allclose(got.win_rates, 0.5)  # the policy's greedy answers differ from the reference's


def test_evaluation_samples_the_test_prompts_in_the_chat_template(task):
    evaluation = task.evaluate(task.start_policy())
    assert list(evaluation.samples) == task.raw[2].prompts()
    assert all(len(s["policy"]) == len(s["reference"]) == 2 for s in evaluation.samples.values())
    assert task.test.prompts() == [format_prompt(task.tokenizer, p) for p in task.raw[2].prompts()]
    assert np.allclose(evaluation.win_rates, 0.5)  # an untrained copy samples what the reference does


# ----------------------------------------------------------------------------- runs


def test_a_dataset_run_end_to_end_through_the_command_line(data_file, checkpoint, judge_dir, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.setenv(MODELS_ENV, str(checkpoint.parent))  # --model by registry name
    store = tmp_path / "runs.sqlite"
    argv = ["--store", str(store), "train", "--data", str(data_file), "--model", "tiny-chat", "--prefmodel",
            str(judge_dir), "--method", "mopo", "--threshold", "0.6", "--steps", "2", "--batch-size", "2",
            "--lora-r", "4", "--split", *map(str, SPLIT), "--max-response-tokens", "5", "--max-new-tokens", "3",
            "--eval-samples", "2", "--checkpoint-dir", str(tmp_path / "ck"), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    (point,) = out["points"]
    assert len(point["values"]) == 2 and all(0 <= v <= 1 for v in point["values"])
    assert out["prefmodel"]["path"] == str(judge_dir)
    assert set(out["prefmodel"]["eval_pairs_accuracy"]) == set(OBJECTIVES)
    run = RunStore(store).get_run(out["run_id"])
    assert run.status == "finished" and run.config["task"] == "dataset" and run.config["method"] == "mopo"
    assert run.config["dataset_setup"]["lora_r"] == 4 and run.config["model_dir"] == str(checkpoint)
    assert run.config["prefmodel"]["held_out_accuracy"]["validation"].keys() == set(OBJECTIVES)
    assert run.config["checkpoint_dir"] == str(tmp_path / "ck") and (tmp_path / "ck" / "last.pt").is_file()
    assert run.points["values"].tolist() == [point["values"]] and len(run.metrics["step"].unique()) == 2
    # re-evaluated from its checkpoint: the same policy, reference samples and judge give the same point
    assert main(["--store", str(store), "evaluate", "--run", str(out["run_id"]), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(evaluated["values"], point["values"], atol=1e-12)
    evaluation = RunStore(store).get_run(evaluated["run_id"])
    assert evaluation.kind == "evaluate" and evaluation.config["task"] == "dataset"
    assert evaluation.config["prefmodel"]["path"] == str(judge_dir)
    assert main(["--store", str(store), "evaluate", "--run", str(out["run_id"]), "--samples", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["samples"][0]["policy"]) == 1
    assert main(["--store", str(store), "evaluate", "--run", str(out["run_id"]), "--split", "validation"]) == 2
    assert "evaluated on its test prompts only" in capsys.readouterr().err


def test_modpo_on_a_dataset_trains_its_margin_expert_and_records_everything(data_file, checkpoint, judge_dir,
                                                                           tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    config = TrainConfig(method="modpo", objective_weights=(0.5, 0.5), steps=2, batch_size=2, checkpoint_every=2)
    result, evaluation = train_on_dataset(config, setup_for(data_file, checkpoint, judge_dir), store)
    assert result.status == "finished" and evaluation.objectives == OBJECTIVES
    runs = store.list_runs()
    assert len(runs) == 2  # the harmlessness DPO expert, then MODPO
    expert = store.get_run(int(runs.id.min()))
    assert expert.config["role"] == "secondary expert (harmlessness)" and expert.config["task"] == "dataset"
    assert store.get_run(result.run_id).points["label"].tolist() == ["modpo"]


def test_a_cancelled_dataset_run_resumes_to_the_uninterrupted_runs_metrics(data_file, checkpoint, judge_dir,
                                                                          tmp_path, capsys):
    setup = setup_for(data_file, checkpoint, judge_dir, lora_r=2)
    config = TrainConfig(method="dpo", steps=3, batch_size=2, checkpoint_every=1)
    whole, _ = train_on_dataset(config, setup, RunStore(tmp_path / "whole.sqlite"))
    store, trainers = RunStore(tmp_path / "cut.sqlite"), []
    cut, evaluation = train_on_dataset(config, setup, store, tmp_path / "ck", on_trainer=trainers.append,
                                       callbacks=(lambda step, metrics: trainers[0].request_cancel(),))
    assert (cut.status, cut.step, evaluation) == ("cancelled", 1, None)
    assert main(["--store", str(tmp_path / "cut.sqlite"), "train", "--resume", str(cut.run_id), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "finished"
    run = store.get_run(cut.run_id)
    losses = run.metrics[run.metrics.name == "loss"].value.tolist()
    assert np.allclose(losses, [h["loss"] for h in whole.history], atol=1e-6) and len(run.points) == 1
    assert main(["--store", str(tmp_path / "cut.sqlite"), "train", "--resume", str(cut.run_id)]) == 2
    assert "only runs that are" in capsys.readouterr().err


def test_training_memory_counts_the_rows_and_tokens_a_step_holds(data_file, checkpoint, judge_dir):
    from mopo_core.lm.checkpoints import estimate_training_memory
    from mopo_core.training.dataset_task import training_memory
    from mopo_core.lm.losses import FUSED_CHUNK_ELEMENTS

    setup = setup_for(data_file, checkpoint, judge_dir, lora_r=2)
    found = check_setup(setup)
    assert found.max_prompt_tokens > 0 and found.max_response_tokens <= setup.max_response_tokens + 1
    assert 2.0 <= found.rows_per_prompt <= 4.0  # two pairs per prompt: 2 to 4 distinct responses

    def by_hand(rows, prompt_len, response_len, copies=2, leash=0, **changes):
        # copies: the evaluation's reference, plus the trainer's frozen reference (DPO, online,
        # offline MOPO's leash) and, with t0, offline MOPO's start; only response positions are scored;
        # leash: offline MOPO's leash rows, one sampled response of up to max_new_tokens + 1 positions per
        # prompt, padded with the cloned rows
        sampled = TrainConfig().max_new_tokens + 1
        return estimate_training_memory(checkpoint, rows, prompt_len + max(response_len, sampled if leash else 0),
                                        "auto", lora_settings(setup), reference_copies=copies,
                                        logits_chunk=FUSED_CHUNK_ELEMENTS // 36, response_len=response_len,
                                        leash_rows=leash, leash_response_len=sampled, **changes)

    prompt, response = found.max_prompt_tokens, found.max_response_tokens
    mopo = TrainConfig(batch_size=4)
    assert training_memory(found, setup, mopo) == by_hand(math.ceil(4 * found.rows_per_prompt), prompt, response,
                                                          leash=4)
    assert training_memory(found, setup, mopo).leash_kl > 0
    dpo = TrainConfig(method="dpo", batch_size=4, gradient_accumulation_steps=3)
    assert training_memory(found, setup, dpo) == by_hand(3, prompt, response)  # 8 sequences over 3 micro-batches
    online = TrainConfig(batch_size=2, online=True, n_candidates=5, max_new_tokens=7)
    assert training_memory(found, setup, online) == by_hand(10, prompt, 8)
    unleashed = TrainConfig(batch_size=4, kl_leash=False)
    assert training_memory(found, setup, unleashed) == by_hand(math.ceil(4 * found.rows_per_prompt), prompt, response,
                                                               copies=1)
    assert training_memory(found, setup, unleashed).leash_kl == 0
    lagged = TrainConfig(batch_size=4, t0=5, gradient_accumulation_steps=3)  # 4 leash rows over 3 micro-batches
    assert training_memory(found, setup, lagged) == by_hand(math.ceil(4 * found.rows_per_prompt / 3), prompt, response,
                                                            copies=3, leash=2)
    recomputed = training_memory(found, replace(setup, gradient_checkpointing=True), mopo)
    assert recomputed == by_hand(math.ceil(4 * found.rows_per_prompt), prompt, response, gradient_checkpointing=True,
                                 leash=4)


def test_gradient_checkpointing_changes_no_number_of_a_dataset_run(data_file, checkpoint, judge_dir, tmp_path):
    config = TrainConfig(method="mopo", thresholds=(0.6,), steps=2, batch_size=2, seed=1)
    runs = [train_on_dataset(config, setup_for(data_file, checkpoint, judge_dir, lora_r=2, gradient_checkpointing=g),
                             RunStore(tmp_path / f"{g}.sqlite"))[0].history for g in (False, True)]
    for plain, recomputed in zip(*runs, strict=True):
        assert plain["loss"] == pytest.approx(recomputed["loss"], rel=1e-5)
        assert plain["grad_norm"] == pytest.approx(recomputed["grad_norm"], rel=1e-4)


def test_a_preference_model_that_saw_evaluation_prompts_is_refused(data_file, checkpoint, encoder, tmp_path, capsys):
    everything = fit_judge(load_data(data_file), encoder, tmp_path / "all-prompts")
    with pytest.raises(SetupError, match=r"prefmodel: .*was fitted on \d+ of the \d+ evaluation prompts") as info:
        DatasetTask(setup_for(data_file, checkpoint, everything))
    assert info.value.field == "prefmodel"
    argv = ["--store", str(tmp_path / "runs.sqlite"), "train", "--data", str(data_file), "--model", str(checkpoint),
            "--prefmodel", str(everything), "--split", *map(str, SPLIT), "--steps", "1"]
    assert main(argv) == 2
    assert "error: --prefmodel: " in capsys.readouterr().err
    assert RunStore(tmp_path / "runs.sqlite").list_runs().empty  # refused before training


@pytest.mark.parametrize("changes, field, message", [
    ({"lora_r": 0}, "lora_r", "must be >= 1"),
    ({"split": (0.5, 0.5)}, "split", "three fractions"),
    ({"split": (0.5, 0.3, 0.3)}, "split", "must sum to 1"),
    ({"format": "csv"}, "format", "expected one of auto, mopo"),
    ({"data": "/nonexistent/prefs.jsonl"}, "data", "cannot read"),
    ({"model": "no-such-model"}, "model", "not a checkpoint folder"),
    ({"model": "tiny-text-task"}, "model", "built-in text-task model"),
    ({"prefmodel": "/nonexistent"}, "prefmodel", "missing"),
    ({"dtype": "float32"}, "dtype", "expected auto or one of fp32, bf16, fp16"),
    ({"device": "tpu"}, "device", "expected auto, cpu or cuda"),
])
def test_bad_setups_name_the_field(data_file, checkpoint, judge_dir, changes, field, message):
    setup = setup_for(data_file, checkpoint, judge_dir, **changes)
    for build in (DatasetTask, check_setup):  # the queue's check refuses what the task would
        with pytest.raises(SetupError, match=message) as info:
            build(setup)
        assert info.value.field == field


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_cuda_device_is_refused_where_there_is_none(data_file, checkpoint, judge_dir):
    with pytest.raises(SetupError, match="this machine has no CUDA device") as info:
        check_setup(setup_for(data_file, checkpoint, judge_dir, device="cuda"))
    assert info.value.field == "device"


def test_check_setup_reports_the_splits_and_objectives_without_loading_weights(data_file, checkpoint, judge_dir,
                                                                               encoder, tmp_path, monkeypatch):
    setup = setup_for(data_file, checkpoint, judge_dir)
    splits = load_splits(setup, load_tokenizer(checkpoint))
    monkeypatch.setattr("mopo_core.training.dataset_task.load_model", lambda *a, **k: pytest.fail("loaded the weights"))
    monkeypatch.setattr("mopo_core.training.dataset_task.PreferenceModel.load", lambda *a, **k: pytest.fail("loaded the judge"))
    found = check_setup(setup)
    assert found.objectives == OBJECTIVES and found.model_dir == checkpoint
    assert found.n_pairs == tuple(len(part) for part in splits) and found.n_pairs[0] > found.n_pairs[2] > 0
    other_split = setup_for(data_file, checkpoint, judge_dir, split_seed=1)  # the judge saw some of its test prompts
    with pytest.raises(SetupError, match=r"split \[0.6, 0.2, 0.2\] and split_seed 0: use those"):
        check_setup(other_split)


@pytest.mark.parametrize("flags, message", [
    (["--model", "x"], "--model: only used with --data"),
    (["--gradient-checkpointing"], "--gradient-checkpointing: only used with --data"),
    (["--data", "prefs.jsonl", "--prefmodel", "p"], "--model: required with --data"),
    (["--data", "prefs.jsonl", "--model", "m", "--prefmodel", "p", "--lora-r", "-1"], "--lora-r: must be >= 1"),
    (["--data", "missing.jsonl", "--model", "m", "--prefmodel", "p"], "--model: "),
])
def test_command_line_errors_name_the_flag(tmp_path, capsys, flags, message):
    assert main(["--store", str(tmp_path / "runs.sqlite"), "train", *flags]) == 2
    assert message in capsys.readouterr().err


def test_model_directory_takes_a_folder_or_a_registered_name(checkpoint, monkeypatch):
    assert model_directory(str(checkpoint)) == checkpoint
    monkeypatch.setenv(MODELS_ENV, str(checkpoint.parent))
    assert model_directory("tiny-chat") == checkpoint


def test_pairs_whose_cut_responses_coincide_are_named(data_file, checkpoint, judge_dir, tmp_path, capsys):
    """Cut to one token, a pair whose responses share their first word is left out: the check
    names exactly those rows (found here from the file's own text)."""
    records = [json.loads(line) for line in data_file.read_text().splitlines() if line.strip()]
    for record in records[::5]:  # same prompts (so the same split), some responses made to share a first word
        record["response_b"] = record["response_a"].split()[0] + " " + record["response_b"]
    same_start = tmp_path / "same_start.jsonl"
    same_start.write_text("".join(json.dumps(r) + "\n" for r in records))
    expected = {f"{same_start.name}:row {i}" for i, r in enumerate(records, start=1)
                if r["response_a"].split()[0] == r["response_b"].split()[0]}
    found = check_setup(setup_for(same_start, checkpoint, judge_dir, max_response_tokens=1))
    assert len(expected) >= len(records[::5])
    assert set(found.dropped_after_cut) == expected
    assert sum(found.n_pairs) == len(records) - len(expected)
    argv = ["--store", str(tmp_path / "runs.sqlite"), "train", "--data", str(same_start), "--model", str(checkpoint),
            "--prefmodel", str(judge_dir), "--method", "dpo", "--steps", "1", "--batch-size", "2",
            "--split", *map(str, SPLIT), "--max-response-tokens", "1", "--max-new-tokens", "2", "--eval-samples", "1"]
    assert main(argv) == 0
    note = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("note:"))
    assert note.startswith(f"note: {len(expected)} pair(s) left out") and sorted(expected)[0].split(":")[0] in note
