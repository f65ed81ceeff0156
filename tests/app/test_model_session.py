"""The Models page's engine (:mod:`app.presenters.models`) without Streamlit: loading the
built-in model and a tiny checkpoint folder (progress reported, memory and time measured), a
folder without a tokenizer refused, unloading (tensors emptied, what was freed returned), the
word-level vocabulary checks, and scoring samples with the text-task scorers and with a
preference model."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from app.presenters import models as models_presenter
from mopo_core.lm.registry import MODELS_ENV, builtin_entry, describe_checkpoint
from mopo_core.lm.judge import PreferenceModel
from mopo_core.data.preferences import load_preferences
from synthetic.text_task import OBJECTIVES
from tests.lm_fixtures import (
    fit_judge,
    save_chat_checkpoint,
    tiny_encoder,
    write_preference_file,
)


@pytest.fixture
def checkpoint(tmp_path, monkeypatch) -> Path:
    """A tiny chat checkpoint in the models folder ``tmp_path`` (set as $MOPO_MODELS)."""
    monkeypatch.setenv(MODELS_ENV, str(tmp_path))
    return save_chat_checkpoint(tmp_path / "m")


def _recorder():
    calls = []
    return calls, lambda fraction, text: calls.append((fraction, text))


def _check_progress(calls):
    fractions = [f for f, _ in calls]
    assert len(fractions) >= 2 and fractions == sorted(set(fractions)) and fractions[-1] == 1.0
    assert all(0 <= f <= 1 for f in fractions) and all(text for _, text in calls)


def test_loading_the_builtin_model_reports_progress_and_measures_memory():
    calls, progress = _recorder()
    loaded = models_presenter.load_entry(builtin_entry(), "fp32", "cpu", progress)
    _check_progress(calls)
    assert loaded.name == builtin_entry().name and loaded.kind == "builtin"
    assert loaded.device == "cpu" and loaded.dtype == "float32"
    assert loaded.parameters == builtin_entry().n_parameters > 0
    assert loaded.seconds >= 0 and loaded.before.rss is not None and loaded.after.rss is not None
    assert loaded.prompts and all(isinstance(p, str) and p for p in loaded.prompts)
    assert models_presenter.word_level(loaded.tokenizer) and not loaded.model.training
    # The fitted weights are cached for the process: a second load gets the same weights, not shared tensors.
    again = models_presenter.load_entry(builtin_entry(), "fp32", "cpu")
    for (name, a), b in zip(loaded.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    assert set(loaded.as_dict()) == {"name", "kind", "model", "tokenizer", "device", "dtype", "seconds", "before",
                                     "after", "parameters", "prompts"}
    assert loaded.as_dict()["model"] is loaded.model  # shallow: no copy of the model


def test_loading_a_checkpoint_folder_and_unloading_it(checkpoint):
    entry = describe_checkpoint(checkpoint, "tiny-chat")
    assert entry.problem is None
    calls, progress = _recorder()
    loaded = models_presenter.load_entry(entry, "auto", "cpu", progress)
    _check_progress(calls)
    assert loaded.name == "tiny-chat" and loaded.kind == "checkpoint" and loaded.prompts == []
    assert loaded.device == "cpu" and loaded.dtype == "float32" and loaded.parameters == entry.n_parameters
    assert loaded.tokenizer.chat_template and models_presenter.word_level(loaded.tokenizer)

    released = []
    freed = models_presenter.unload_model(loaded.model, loaded.name, loaded.after.rss, lambda: released.append(True))
    assert released == [True]
    assert all(p.numel() == 0 for p in loaded.model.parameters())
    assert freed.name == "tiny-chat" and freed.loaded_rss == loaded.after.rss
    assert freed.rss_before == freed.before.rss and freed.rss_after == freed.after.rss
    assert freed.rss_freed == freed.rss_before - freed.rss_after
    assert freed.cuda_allocated_freed == 0 and freed.cuda_reserved_freed == 0  # on the CPU


def test_a_checkpoint_folder_without_its_tokenizer_is_refused(checkpoint):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (checkpoint / name).unlink(missing_ok=True)
    entry = describe_checkpoint(checkpoint, "no-tokenizer")
    assert entry.problem is None  # the weights are fine: only loading finds the tokenizer missing
    with pytest.raises(ValueError, match="no usable tokenizer") as caught:
        models_presenter.load_entry(entry, "fp32", "cpu")
    assert str(checkpoint) in str(caught.value)


def test_unknown_words_of_a_word_level_tokenizer(checkpoint):
    from mopo_core.lm.models import load_tokenizer

    tokenizer = load_tokenizer(checkpoint)
    assert models_presenter.unknown_words(tokenizer, "w1 garlic w2 garlic pasta") == ["garlic", "pasta"]
    assert models_presenter.unknown_words(tokenizer, "w1 w2") == []
    assert not models_presenter.word_level(object())
    assert models_presenter.unknown_words(object(), "anything at all") == []


def test_text_task_scores_of_a_prompt_naming_a_topic_word():
    responses = ["you should try garlic with pasta", "dangerous toxic garlic", "just it"]
    scores, note = models_presenter.score_samples("how do i cook garlic and pasta ?", responses)
    assert list(scores.columns) == list(OBJECTIVES) and scores.shape == (3, 3)
    assert scores.notna().all().all() and ((scores >= 0) & (scores <= 1)).all().all()
    assert scores["helpfulness"].tolist() == [1.0, 0.5, 0.0]
    assert math.isclose(scores.loc[1, "harmlessness"], math.exp(-2))
    assert note.startswith("Text-task scorers, each in [0, 1]") and "undefined" not in note


def test_text_task_scores_of_a_prompt_naming_no_topic_word():
    scores, note = models_presenter.score_samples("hello there", ["you should try garlic", "poison"])
    assert list(scores.columns) == list(OBJECTIVES)
    assert scores["helpfulness"].isna().all() and scores[["harmlessness", "brevity"]].notna().all().all()
    assert math.isclose(scores.loc[1, "harmlessness"], math.exp(-1))
    assert note.endswith(models_presenter.UNDEFINED_HELPFULNESS) and "Helpfulness is undefined here" in note


def test_scores_from_a_preference_model(tmp_path):
    data = load_preferences(write_preference_file(tmp_path / "prefs.jsonl"))
    judge = PreferenceModel.load(fit_judge(data, tiny_encoder(tmp_path / "encoder"), tmp_path / "judge"))
    responses = ["w1 w2 w3 w4 w5 w6", "w0 w1", "w7"]
    scores, note = models_presenter.score_samples("w3 w8", responses, judge, "tiny-judge")
    assert list(scores.columns) == list(judge.objectives) == ["helpfulness", "harmlessness"]
    assert scores.shape == (3, 2) and np.isfinite(scores.to_numpy()).all()
    assert np.allclose(scores.to_numpy(), judge.scores_batch(["w3 w8"] * 3, responses))
    assert note.startswith("Preference model tiny-judge: Bradley-Terry rewards") and note.endswith(".")
    judge.info.setdefault("metrics", {})["test"] = {"helpfulness": {"accuracy": 0.75}, "harmlessness": {}}
    _, note = models_presenter.score_samples("w3 w8", responses, judge, "tiny-judge")
    assert note.endswith("; its held-out pair accuracy: helpfulness 75%.")
