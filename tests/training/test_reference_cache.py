"""The text task's reference cache (mopo_core/training/reference_cache.py): a cache hit is the
fresh fit, bit for bit; a setting that changes the fit misses and one that does not hits; a
damaged entry is refitted with a warning; a failed write leaves no file; the built-in model's
second load (a new process: the per-process copy dropped) reads the cache instead of fitting.
Every test uses its own cache folder under ``tmp_path``."""
from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from app.presenters import models as models_presenter
from mopo_core.lm.registry import CACHE_DIR, CACHE_ENV, MODELS_ENV, builtin_entry, list_models
from mopo_core.training import reference_cache
from mopo_core.training.text_task import TextTaskSetup, build_text_task

SMALL = TextTaskSetup(n_prompts=6, n_candidates=4, sft_steps=8)


def build(setup: TextTaskSetup, folder, texts: list[str] | None = None):
    """The reference ``build_text_task`` gives for ``setup`` with the cache in ``folder``
    (progress texts appended to ``texts``)."""
    progress = None if texts is None else (lambda fraction, text: texts.append(text))
    return build_text_task(setup, progress, folder)[2]


def entries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def test_the_cache_is_the_models_folders_cache_unless_the_variable_moves_it(tmp_path, monkeypatch):
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "models"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert reference_cache.cache_dir() == tmp_path / "elsewhere"
    assert reference_cache.cache_dir(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv(CACHE_ENV)
    assert reference_cache.cache_dir() == tmp_path / "models" / CACHE_DIR
    build(SMALL, None)
    assert len(entries(tmp_path / "models" / CACHE_DIR)) == 1
    assert [e.name for e in list_models()] == [builtin_entry().name]  # the cache is not a model


def test_a_cache_hit_equals_a_fresh_fit_exactly(tmp_path, capsys):
    fresh = build(SMALL, tmp_path / "fresh")  # default progress: lines on stderr (the worker's log)
    assert "reference: 100% Fitted the reference (8 SFT steps) and cached it in" in capsys.readouterr().err
    rng_after_fit = torch.random.get_rng_state()
    texts: list[str] = []
    hit = build(SMALL, tmp_path / "fresh", texts)
    assert texts[-1] == "Read the fitted reference from the cache." and not any("SFT step" in t for t in texts)
    assert torch.equal(torch.random.get_rng_state(), rng_after_fit)  # a fit leaves the global RNG as it found it
    assert_same_weights(hit, fresh)
    assert not hit.training and not fresh.training
    ids = torch.arange(4, 12).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(hit(input_ids=ids).logits, fresh(input_ids=ids).logits)
    tied = hit.get_output_embeddings().weight
    assert tied.data_ptr() == hit.get_input_embeddings().weight.data_ptr()  # still tied after loading


def test_a_setting_that_changes_the_fit_misses_and_one_that_does_not_hits(tmp_path):
    first = build(SMALL, tmp_path)
    assert len(entries(tmp_path)) == 1
    texts: list[str] = []
    build(replace(SMALL, pairs_per_prompt=3, eval_samples=2, soft_labels=True), tmp_path, texts)  # same corpus
    assert texts[-1] == "Read the fitted reference from the cache." and len(entries(tmp_path)) == 1
    for changed in (replace(SMALL, sft_steps=9), replace(SMALL, seed=1), replace(SMALL, n_prompts=7)):
        texts = []
        other = build(changed, tmp_path, texts)
        assert any("SFT steps of a tiny GPT-2" in t for t in texts), changed
        assert not all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), first.state_dict().values()))
    assert len(entries(tmp_path)) == 4


@pytest.mark.parametrize("damage", ["truncated", "one byte flipped", "another entry's file"])
def test_a_damaged_entry_is_refitted_with_a_warning(tmp_path, caplog, damage):
    fresh = build(SMALL, tmp_path)
    [name] = entries(tmp_path)
    path = tmp_path / name
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "one byte flipped":  # in the tensors, past the header: only the digest sees it
        path.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    else:  # a sound entry for other settings, under this name
        build(replace(SMALL, seed=3), tmp_path / "other")
        path.write_bytes(next((tmp_path / "other").iterdir()).read_bytes())
    with caplog.at_level(logging.WARNING, logger=reference_cache.__name__):
        refitted = build(SMALL, tmp_path, [])
    [record] = caplog.records
    assert str(path) in record.getMessage() and "refitting it" in record.getMessage()
    assert_same_weights(refitted, fresh)
    caplog.clear()
    texts: list[str] = []
    build(SMALL, tmp_path, texts)  # the refit was written over the damaged entry
    assert texts[-1] == "Read the fitted reference from the cache." and not caplog.records


def test_a_failed_write_leaves_no_file_and_the_fit_is_used(tmp_path, monkeypatch, caplog):
    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 1000)  # half written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reference_cache, "save_file", disk_full)
    texts: list[str] = []
    with caplog.at_level(logging.WARNING, logger=reference_cache.__name__):
        model = build(SMALL, tmp_path, texts)
    assert entries(tmp_path) == [] and texts[-1] == "Fitted the reference (8 SFT steps) and could not cache it."
    assert "could not write" in caplog.text and "No space left on device" in caplog.text
    monkeypatch.undo()
    assert_same_weights(model, build(SMALL, tmp_path / "sound"))


def test_the_builtin_models_second_load_reads_the_cache(tmp_path, monkeypatch):
    """The SFT itself is replaced by forward passes (one per step, as train_sft runs): what is
    checked is when it runs and the progress it reports, not the fit (the tests above)."""
    fits = []

    def quick_sft(model, tokenizer, texts, steps, seed):
        fits.append(steps)
        with torch.no_grad():
            for _ in range(steps):
                model(input_ids=torch.tensor([[1, 4]]))
        model.eval()

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(reference_cache, "train_sft", quick_sft)
    monkeypatch.setattr(models_presenter, "_builtin", [])  # a fresh process
    calls: list[tuple[float, str]] = []
    first = models_presenter.load_entry(builtin_entry(), "fp32", "cpu", lambda f, text: calls.append((f, text)))
    assert fits == [TextTaskSetup().sft_steps] and len(entries(tmp_path)) == 1
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    steps = [f for f, text in calls if text.startswith("Fitting the reference: SFT step ")]
    assert len(steps) >= 10 and 0.15 < steps[0] < steps[-1] < 0.65  # the bar moves while it fits

    monkeypatch.setattr(models_presenter, "_builtin", [])  # the second start: another process
    calls.clear()
    second = models_presenter.load_entry(builtin_entry(), "fp32", "cpu", lambda f, text: calls.append((f, text)))
    assert fits == [TextTaskSetup().sft_steps]  # not fitted again
    assert any(text == "Read the fitted reference from the cache." for _, text in calls)
    assert_same_weights(second.model, first.model) and second.prompts == first.prompts
