"""The Models page through Streamlit's AppTest: the registry table (built-in model and checkpoints
saved into a temporary models folder), the training-memory estimate following the sidebar
settings, load -> sample -> per-objective scores (text-task scorers and a preference model from
<models>/prefmodels), unload with the freed memory shown, switching models, a checkpoint
folder outside the models folder refused with the registry's error, the training-memory breakdown
in its own table, and a policy from a finished (tiny, cancelled) text-task run of a temporary run
store loaded beside its reference: listed, its weights equal to its checkpoint's, sampled side by
side with scores, and a corrupted ``last.pt`` refused naming the run and the file."""
from __future__ import annotations

import json

import shutil
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest
from transformers import BertConfig, BertModel

from mopo_core.lm import registry
from mopo_core.lm.config import TrainConfig
from mopo_core.runs import STORE_ENV, RunStore
from mopo_core.training.text_task import TextTaskSetup, train_on_text_task
from app.presenters import models as models_presenter
from mopo_core.lm.models import save_model, tiny_gpt, train_sft, word_tokenizer
from mopo_core.lm.judge import PreferenceModel, RewardHeads, SentenceEncoder
from synthetic.text_task import OBJECTIVES, TextTask, vocabulary

PAGE = str(Path(__file__).parents[2] / "app" / "views" / "models.py")


@pytest.fixture(scope="module")
def checkpoint_source(tmp_path_factory) -> Path:
    """A tiny GPT-2 fitted for a few steps on the text task, saved as a checkpoint folder."""
    folder = tmp_path_factory.mktemp("source") / "tiny-sft"
    tokenizer = word_tokenizer(vocabulary())
    model = tiny_gpt(len(tokenizer), tokenizer=tokenizer, seed=0)
    train_sft(model, tokenizer, TextTask(n_prompts=8).corpus(), steps=30, batch_size=16, seed=0)
    save_model(model, tokenizer, folder)
    return folder


@pytest.fixture(scope="module")
def prefmodel_source(tmp_path_factory) -> Path:
    """A preference model on a tiny BERT encoder (random linear heads on helpfulness, harmlessness)."""
    root = tmp_path_factory.mktemp("pm")
    tokenizer = word_tokenizer(vocabulary())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(root / "encoder")
    tokenizer.save_pretrained(root / "encoder")
    heads = RewardHeads(16, 2)
    with torch.no_grad():
        heads.weight.normal_()
    PreferenceModel(SentenceEncoder.load(root / "encoder", max_length=32), heads, ("helpfulness", "harmlessness"),
                    {"metrics": {"test": {"helpfulness": {"accuracy": 0.75}, "harmlessness": {"accuracy": 0.5}}}}
                    ).save(root / "tiny-judge")
    return root / "tiny-judge"


@pytest.fixture
def models_folder(tmp_path, checkpoint_source, monkeypatch) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(checkpoint_source, folder / "tiny-sft")
    monkeypatch.setenv(registry.MODELS_ENV, str(folder))
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "runs.sqlite"))  # an empty run store, never the user's
    return folder


def _page(**state) -> AppTest:
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(PAGE, default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def _registry(at) -> pd.DataFrame:
    return next(df.value for df in at.dataframe if "estimate_bytes" in df.value.columns)


def _breakdown(at) -> pd.DataFrame:
    """The training-memory breakdown table, by model name."""
    return next(df.value for df in at.dataframe if "activations_bytes" in df.value.columns).set_index("name")


def _samples(at) -> pd.DataFrame:
    """The table of scored samples (a static table: long responses wrap)."""
    return next(t.value for t in at.table if "response" in t.value.columns)


def _texts(at) -> str:
    return "\n".join(e.value for kind in ("success", "info", "warning", "error", "caption", "markdown")
                     for e in getattr(at, kind))


def test_the_registry_lists_the_builtin_model_and_a_checkpoint_with_their_memory(models_folder):
    at = _page()
    assert any("No finished, cancelled or diverged train run" in i.value for i in at.info)
    table = _registry(at).set_index("name")
    assert list(table.index[:1]) == [registry.BUILTIN_NAME] and "tiny-sft" in table.index
    builtin, tiny = table.loc[registry.BUILTIN_NAME], table.loc["tiny-sft"]
    assert builtin["kind"] == "builtin" and builtin["path"] == "(built in)"
    assert tiny["architecture"] == "GPT2LMHeadModel" and tiny["dtype"] == "float32"
    assert tiny["n_parameters"] == builtin["n_parameters"] > 0  # the same tiny GPT-2
    assert tiny["estimate_bytes"] > 0
    breakdown = _breakdown(at).loc["tiny-sft"]  # its own table: one column per part, nothing cut off
    assert breakdown["parameters_bytes"] > 0 and breakdown["activations_bytes"] > 0
    assert breakdown["parameters"].endswith(("KiB", "MiB", "GiB"))
    assert str(models_folder) in _texts(at)


def test_the_memory_estimate_follows_batch_size_lora_and_checkpointing(models_folder):
    at = _page()
    first = _registry(at).set_index("name").loc["tiny-sft", "estimate_bytes"]
    at.number_input(key="models_batch").set_value(64).run()
    bigger = _registry(at).set_index("name").loc["tiny-sft", "estimate_bytes"]
    assert bigger > first
    at.toggle(key="models_checkpointing").set_value(True).run()
    assert _registry(at).set_index("name").loc["tiny-sft", "estimate_bytes"] < bigger
    at.toggle(key="models_lora").set_value(False).run()  # full fine-tune: gradients and AdamW state for every weight
    assert _breakdown(at).loc["tiny-sft", "optimizer_bytes"] > 0
    assert any("batch 64 × 256 tokens" in c.value and "full fine-tune" in c.value for c in at.caption)


def test_kl_leash_rows_add_their_part_to_the_memory_estimate(models_folder):
    """Leash rows (offline MOPO): the breakdown gets a KL leash part, 12 bytes per vocabulary entry per
    token of each row (three float32 tensors; the sequence length counted as response tokens), and the
    step's peak grows; the caption names them."""
    at = _page()
    before = _registry(at).set_index("name").loc["tiny-sft", "estimate_bytes"]
    assert _breakdown(at).loc["tiny-sft", "leash_kl"] == "–"
    at.number_input(key="models_leash_rows").set_value(4).run()
    vocab = json.loads((models_folder / "tiny-sft" / "config.json").read_text())["vocab_size"]
    assert _breakdown(at).loc["tiny-sft", "leash_kl_bytes"] == 4 * 256 * vocab * 12
    assert _registry(at).set_index("name").loc["tiny-sft", "estimate_bytes"] > before
    assert any("4 KL leash rows" in c.value for c in at.caption)


def test_load_sample_scores_and_unload(models_folder):
    at = _page()
    assert any("No model loaded" in i.value for i in at.info)
    at.selectbox(key="models_choice").set_value("tiny-sft")
    at.button(key="models_load").click().run()
    assert not at.exception
    assert any("Loaded **tiny-sft** on cpu in float32" in s.value and "RSS" in s.value for s in at.success)
    assert at.get("status")  # the progress indicator of the load
    # No preference model in the folder: said, and the text-task scorers are used.
    assert "No preference model available" in _texts(at)
    assert at.selectbox(key="models_scorer").value == "text-task scorers"
    at.number_input(key="models_n").set_value(3)
    at.button(key="models_sample").click().run()
    assert not at.exception
    samples = _samples(at)
    assert len(samples) == 3 and list(samples.columns) == ["response", *OBJECTIVES]
    assert samples[list(OBJECTIVES)].notna().all().all()
    assert ((samples[list(OBJECTIVES)] >= 0) & (samples[list(OBJECTIVES)] <= 1)).all().all()
    assert any(c.value.startswith("Mean: helpfulness") for c in at.caption)

    at.button(key="models_unload").click().run()
    assert not at.exception
    message = next(s.value for s in at.success if s.value.startswith("Unloaded"))
    assert "Unloaded **tiny-sft**: freed" in message and "RSS" in message and "→" in message
    assert LOADED_KEY not in at.session_state
    log = next(df.value for df in at.dataframe if "RSS before" in df.value.columns)
    assert log["action"].tolist() == ["load", "unload"] and log["rss_after_bytes"].notna().all()
    assert any("No model loaded" in i.value for i in at.info)


LOADED_KEY = "models_loaded"


def test_loading_another_model_unloads_the_first_and_says_what_it_freed(models_folder, checkpoint_source):
    shutil.copytree(checkpoint_source, models_folder / "tiny-sft-copy")
    at = _page()
    at.selectbox(key="models_choice").set_value("tiny-sft")
    at.button(key="models_load").click().run()
    model = at.session_state[LOADED_KEY]["model"]
    at.selectbox(key="models_choice").set_value("tiny-sft-copy")
    at.button(key="models_load").click().run()
    assert not at.exception
    assert at.session_state[LOADED_KEY]["name"] == "tiny-sft-copy"
    assert all(p.numel() == 0 for p in model.parameters())  # the first model's tensors were emptied
    assert any("Unloaded **tiny-sft**: freed" in i.value and "one model" in i.value.lower() for i in at.info)
    log = next(df.value for df in at.dataframe if "RSS before" in df.value.columns)
    assert log["action"].tolist() == ["load", "unload", "load"]


def test_scores_from_a_preference_model_in_the_prefmodels_folder(models_folder, prefmodel_source):
    shutil.copytree(prefmodel_source, models_folder / "prefmodels" / "tiny-judge")
    at = _page()
    at.selectbox(key="models_choice").set_value("tiny-sft")
    at.button(key="models_load").click().run()
    assert at.selectbox(key="models_scorer").value == "tiny-judge"  # a checkpoint: the preference model by default
    assert "No preference model available" not in _texts(at)
    at.button(key="models_sample").click().run()
    assert not at.exception
    samples = _samples(at)
    assert list(samples.columns) == ["response", "helpfulness", "harmlessness"]
    assert samples[["helpfulness", "harmlessness"]].notna().all().all()
    assert any("Preference model tiny-judge" in c.value and "helpfulness 75%" in c.value for c in at.caption)


def test_a_folder_outside_the_models_folder_is_refused(models_folder, checkpoint_source):
    at = _page()
    at.text_input(key="models_add_path").set_value(str(checkpoint_source))
    at.button(key="models_add").click().run()
    assert not at.exception
    error = at.error[0].value
    assert str(checkpoint_source) in error and "outside the models folder" in error
    assert not (models_folder / registry.REGISTRY_FILE).exists()
    # A nested folder inside it is registered.
    shutil.copytree(checkpoint_source, models_folder / "nested" / "tiny")
    at.text_input(key="models_add_path").set_value(str(models_folder / "nested" / "tiny"))
    at.button(key="models_add").click().run()
    assert any("Registered **nested/tiny**" in s.value for s in at.success)
    assert "nested/tiny" in _registry(at)["name"].tolist()


def test_chat_with_a_model(models_folder):
    at = _page()
    at.selectbox(key="models_choice").set_value("tiny-sft")
    at.button(key="models_load").click().run()
    at.chat_input(key="models_chat_input").set_value("how do i cook garlic pasta and butter ?").run()
    assert not at.exception
    history = at.session_state["models_chat"]
    assert [t["role"] for t in history] == ["user", "assistant"]
    assert len(at.chat_message) == 2
    assert any("no chat template" in c.value for c in at.caption)


# ----------------------------------------------------------------------------- a finished run's policy

RUN_SETUP = TextTaskSetup(n_prompts=10, sft_steps=20, eval_samples=2, seed=3)


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory) -> tuple[Path, int]:
    """(store path, run id): a tiny text-task run cancelled after its first step, with its checkpoint."""
    folder = tmp_path_factory.mktemp("trained")

    def cancel_after_first_step(trainer):
        trainer.callbacks = (*trainer.callbacks, lambda step, metrics: trainer.request_cancel())

    config = TrainConfig(method="mopo", thresholds=(0.6,), steps=4, batch_size=4, checkpoint_every=4, seed=3)
    result, _ = train_on_text_task(config, RUN_SETUP, RunStore(folder / "runs.sqlite"), folder / "ck",
                                   on_trainer=cancel_after_first_step)
    assert (result.status, result.step) == ("cancelled", 1)
    return folder / "runs.sqlite", result.run_id


@pytest.fixture
def with_store(trained_store, models_folder, monkeypatch):
    monkeypatch.setenv(STORE_ENV, str(trained_store[0]))
    return trained_store


def test_a_finished_runs_policy_is_listed_and_loads_with_the_checkpoints_weights(trained_store):
    store_path, run_id = trained_store
    store = RunStore(store_path)
    listed = models_presenter.trained_policies(store)
    assert [(r.run_id, r.method, r.status, r.task, r.step) for r in listed] == [(run_id, "mopo", "cancelled", "text", 1)]
    trained = models_presenter.load_trained_policy(store, run_id)
    policy, reference, tokenizer = trained.policy, trained.reference, trained.tokenizer
    state = torch.load(Path(listed[0].checkpoint), map_location="cpu", weights_only=True)["model"]
    weights = policy.state_dict()
    assert set(weights) == set(state) and all(torch.equal(weights[k], state[k]) for k in state)
    assert any(not torch.equal(reference.state_dict()[k], state[k]) for k in state)  # one step moved it
    assert trained.step == 1 and trained.prompts and len(tokenizer) > 0
    both = models_presenter.sample_both(trained, trained.prompts[0], 2, 8, 1.0, 0)
    assert len(both["policy"]) == len(both["reference"]) == 2
    scores, note = trained.score(trained.prompts[0], both["policy"])
    assert list(scores.columns) == list(OBJECTIVES) and "Text-task scorers" in note
    models_presenter.unload_trained(trained)
    assert all(p.numel() == 0 for p in policy.parameters())


def test_a_corrupted_checkpoint_is_refused_naming_the_run_and_the_file(trained_store, tmp_path):
    store_path, run_id = trained_store
    store = RunStore(store_path)
    last = Path(models_presenter.trained_policies(store)[0].checkpoint)
    genuine = last.read_bytes()
    try:
        last.write_bytes(b"not a checkpoint at all")
        with pytest.raises(ValueError) as refused:
            models_presenter.load_trained_policy(store, run_id)
        assert f"run {run_id}" in str(refused.value) and str(last) in str(refused.value)
    finally:
        last.write_bytes(genuine)


def test_the_page_samples_the_policy_and_the_reference_side_by_side(with_store):
    store_path, run_id = with_store
    at = _page()
    choice = at.selectbox(key="models_trained_choice")
    assert choice.options == [next(r.label for r in models_presenter.trained_policies(RunStore(store_path)))]
    choice.set_value(run_id).run()
    assert not at.exception
    assert any(f"Loaded **run {run_id}**'s policy" in s.value and "checkpoint step 1" in s.value for s in at.success)
    at.button(key="models_trained_sample").click().run()
    assert not at.exception
    tables = [t.value for t in at.table if "response" in t.value.columns]
    assert len(tables) == 2 and all(len(t) == 3 and list(t.columns) == ["response", *OBJECTIVES] for t in tables)
    assert any(f"Policy: run {run_id}" in m.value for m in at.markdown)
    assert any("Reference" in m.value for m in at.markdown)
    at.button(key="models_trained_unload").click().run()
    assert not at.exception and "models_trained" not in at.session_state
    assert any(s.value.startswith(f"Unloaded **run {run_id} policy") for s in at.success)
    assert at.selectbox(key="models_trained_choice").value is None
    at.selectbox(key="models_trained_choice").set_value(run_id).run()  # again, then the choice cleared
    policy = at.session_state["models_trained"].policy
    at.selectbox(key="models_trained_choice").set_value(None).run()
    assert not at.exception and "models_trained" not in at.session_state
    assert all(p.numel() == 0 for p in policy.parameters())
    log = next(df.value for df in at.dataframe if "RSS before" in df.value.columns)
    assert log["action"].tolist() == ["load", "unload", "load", "unload"]


def test_the_page_refuses_a_corrupted_checkpoint_naming_the_file(with_store):
    store_path, run_id = with_store
    last = Path(models_presenter.trained_policies(RunStore(store_path))[0].checkpoint)
    genuine = last.read_bytes()
    try:
        last.write_bytes(b"garbage")
        at = _page()
        at.selectbox(key="models_trained_choice").set_value(run_id).run()
        assert not at.exception
        assert any(str(last) in e.value and f"run {run_id}" in e.value for e in at.error)
        assert "models_trained" not in at.session_state
    finally:
        last.write_bytes(genuine)


def test_a_dataset_runs_policy_loads_through_its_task_with_the_checkpoints_weights(tmp_path):
    """A tiny dataset run (LoRA r=4, two steps; the fixtures of tests/lm_fixtures.py) loads
    through its DatasetTask: the LoRA policy holds the checkpoint's weights, prompts go through
    the chat template and its own judge scores them."""
    from mopo_core.training.dataset_task import DatasetSetup, load_splits, train_on_dataset
    from mopo_core.lm.models import load_tokenizer
    from tests.lm_fixtures import SPLIT, fit_judge, save_chat_checkpoint, tiny_encoder, write_preference_file

    checkpoint = save_chat_checkpoint(tmp_path / "models" / "tiny-chat")
    data = write_preference_file(tmp_path / "prefs.jsonl")
    settings = dict(data=str(data), model=str(checkpoint), split=SPLIT, max_response_tokens=5, eval_samples=2,
                    max_new_tokens=3, lora_r=4)
    train, _, _ = load_splits(DatasetSetup(**settings, prefmodel=""), load_tokenizer(checkpoint))
    judge = fit_judge(train, tiny_encoder(tmp_path / "encoder"), tmp_path / "judge",
                      {"file": str(data), "format": "mopo", "objective": None, "split": list(SPLIT), "split_seed": 0})
    store = RunStore(tmp_path / "runs.sqlite")
    config = TrainConfig(method="mopo", thresholds=(0.6,), steps=2, batch_size=2, seed=1)
    result, _ = train_on_dataset(config, DatasetSetup(**settings, prefmodel=str(judge)), store, tmp_path / "ck")
    (listed,) = models_presenter.trained_policies(store)
    assert (listed.run_id, listed.task, listed.status) == (result.run_id, "dataset", "finished")
    trained = models_presenter.load_trained_policy(store, result.run_id)
    state = torch.load(tmp_path / "ck" / "last.pt", map_location="cpu", weights_only=True)["model"]
    weights = trained.policy.state_dict()
    assert set(weights) == set(state) and all(torch.equal(weights[k], state[k]) for k in state)
    assert trained.chat and trained.prompts
    both = models_presenter.sample_both(trained, trained.prompts[0], 2, 3, 1.0, 0)
    scores, note = trained.score(trained.prompts[0], both["reference"])
    assert scores.shape == (2, len(trained.objectives)) and "preference model" in note
