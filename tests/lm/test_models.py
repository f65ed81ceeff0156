"""Tests for the language-model layer (mopo_core/lm/models.py, lm/lora.py): the word tokenizer, tiny
GPTs, SFT on the synthetic text task, local checkpoints, LoRA and seeded sampling.
Everything is built locally; nothing is downloaded."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaConfig

from mopo_core.lm.lora import LoraSettings
from mopo_core.lm.models import (
    build_model,
    load_model,
    load_tokenizer,
    sample,
    save_model,
    sequence_ids,
    tiny_gpt,
    train_sft,
    word_tokenizer,
)
from synthetic.text_task import TextTask, is_well_formed, vocabulary

TASK = TextTask(n_prompts=30, n_candidates=8)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(vocabulary())


@pytest.fixture(scope="module")
def trained(tokenizer):
    """A tiny GPT fitted to the task's corpus, and its loss history."""
    model = tiny_gpt(len(tokenizer), tokenizer=tokenizer)
    history = train_sft(model, tokenizer, TASK.corpus(), steps=150, batch_size=32, seed=0)
    return model, history


def logits(model, tokenizer, text):
    ids = torch.tensor([sequence_ids(tokenizer, text)])
    with torch.no_grad():
        return model(input_ids=ids).logits


# ----------------------------------------------------------------------------- tokenizer


def test_word_tokenizer_round_trips_the_corpus(tokenizer):
    assert len(tokenizer) == len(vocabulary()) + 4
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id] == [0, 1, 2, 3]
    for text in TASK.corpus()[:50]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text.split()) and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
    assert tokenizer("garlic zebra")["input_ids"][1] == tokenizer.unk_token_id


def test_sequence_ids_wrap_a_text_in_bos_and_eos(tokenizer):
    words = tokenizer("how do i ?", add_special_tokens=False)["input_ids"]
    assert sequence_ids(tokenizer, "how do i ?") == [1, *words, 2]
    assert sequence_ids(tokenizer, "how do i ?", add_eos=False) == [1, *words]


def test_bos_only_where_the_tokenizer_asks_for_one():
    from tokenizers import processors

    from tests.lm_fixtures import chat_tokenizer

    # Qwen2.5-like: names a bos but its own encoding never adds it -> no bos in front of a prompt.
    named_only = chat_tokenizer()
    assert named_only.bos_token_id is not None
    assert named_only("w1 w2", add_special_tokens=True)["input_ids"][0] != named_only.bos_token_id
    assert sequence_ids(named_only, "w1 w2", add_eos=False) == named_only("w1 w2", add_special_tokens=False)["input_ids"]
    # Llama-like: a post-processor adds bos -> sequence_ids adds it too.
    adds_it = chat_tokenizer()
    bos = adds_it.bos_token
    adds_it.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, adds_it.bos_token_id)])
    assert adds_it("w1", add_special_tokens=True)["input_ids"][0] == adds_it.bos_token_id
    assert sequence_ids(adds_it, "w1 w2", add_eos=False)[0] == adds_it.bos_token_id


def test_word_tokenizer_saves_and_loads_offline(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = TASK.corpus()[0]
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token, loaded.unk_token) == ("<pad>", "<bos>", "<eos>", "<unk>")


@pytest.mark.parametrize(
    "words, message",
    [(["a", "a"], "repeated"), (["a b"], r"vocabulary\[0\]"), (["ok", ""], r"vocabulary\[1\]"), (["<eos>"], "reserved")],
)
def test_bad_vocabularies_are_refused(words, message):
    with pytest.raises(ValueError, match=message):
        word_tokenizer(words)


# ------------------------------------------------------------------------- models & SFT


def test_tiny_gpt_is_seeded_and_sized(tokenizer):
    a, b = tiny_gpt(len(tokenizer), seed=3), tiny_gpt(len(tokenizer), seed=3)
    assert isinstance(a, GPT2LMHeadModel)
    assert (a.config.n_layer, a.config.n_head, a.config.n_embd, a.config.n_positions) == (2, 2, 64, 64)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.transformer.wte.weight, tiny_gpt(len(tokenizer), seed=4).transformer.wte.weight)
    assert tiny_gpt(len(tokenizer), tokenizer=tokenizer).config.eos_token_id == tokenizer.eos_token_id


def test_train_sft_halves_the_loss(trained):
    _, history = trained
    assert len(history) == 150
    late = sum(history[-10:]) / 10
    assert late < 0.5 * history[0], (history[0], late)


def test_train_sft_is_reproducible(tokenizer):
    texts = TASK.corpus()[:64]
    runs = []
    for _ in range(2):
        model = tiny_gpt(len(tokenizer), seed=1, dropout=0.1)
        runs.append(train_sft(model, tokenizer, texts, steps=8, batch_size=8, seed=5))
    assert runs[0] == runs[1]
    other = train_sft(tiny_gpt(len(tokenizer), seed=1, dropout=0.1), tokenizer, texts, steps=8, batch_size=8, seed=6)
    assert other != runs[0]


def test_train_sft_refuses_texts_longer_than_the_context(tokenizer):
    model = tiny_gpt(len(tokenizer), n_positions=8)
    with pytest.raises(ValueError, match=r"texts\[1\]: 12 tokens exceed the model's context of 8"):
        train_sft(model, tokenizer, ["garlic", " ".join(["garlic"] * 10)], steps=1)


# ------------------------------------------------------------------------------ sampling


def test_samples_are_seeded_well_formed_response_strings(trained, tokenizer):
    model, _ = trained
    prompts = [p.text for p in TASK.prompts()[:6]]
    out = sample(model, tokenizer, prompts, n=4, max_new_tokens=16, seed=0)
    assert len(out) == 24 and all(isinstance(s, str) for s in out)
    assert sum(map(is_well_formed, out)) >= 0.75 * len(out)
    assert not any(s.startswith(prompts[0]) for s in out)
    assert sample(model, tokenizer, prompts, n=4, max_new_tokens=16, seed=0) == out
    assert sample(model, tokenizer, prompts, n=4, max_new_tokens=16, seed=1) != out
    assert not model.training


def test_greedy_sampling_ignores_the_seed_and_restores_train_mode(trained, tokenizer):
    model, _ = trained
    model.train()
    prompts = [TASK.prompts()[0].text]
    greedy = sample(model, tokenizer, prompts, n=2, temperature=0.0, seed=0)
    assert greedy[0] == greedy[1] == sample(model, tokenizer, prompts, n=1, temperature=0.0, seed=9)[0]
    assert model.training
    model.eval()


# ------------------------------------------------------------------------- checkpoints


def test_saved_checkpoint_loads_with_identical_logits(trained, tokenizer, tmp_path):
    model, _ = trained
    path = save_model(model, tokenizer, tmp_path / "ckpt")
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    loaded = load_model(path, device="cpu")
    assert not loaded.training and next(loaded.parameters()).dtype == torch.float32
    text = TASK.corpus()[3]
    assert torch.equal(logits(model.eval(), tokenizer, text), logits(loaded, load_tokenizer(path), text))
    assert next(load_model(path, dtype="bf16", device="cpu").parameters()).dtype == torch.bfloat16


def test_save_model_replaces_atomically_and_leaves_no_temporaries(tokenizer, tmp_path):
    target = tmp_path / "ckpt"
    save_model(tiny_gpt(len(tokenizer), seed=0), tokenizer, target)
    save_model(tiny_gpt(len(tokenizer), seed=1), None, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert not (target / "tokenizer.json").exists()
    reloaded = load_model(target, device="cpu")
    assert torch.equal(reloaded.transformer.wte.weight, tiny_gpt(len(tokenizer), seed=1).transformer.wte.weight)


def test_load_model_refuses_missing_paths_and_folders_without_weights_or_config(tokenizer, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(missing)
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_text(json.dumps(tiny_gpt(len(tokenizer)).config.to_dict()))
    with pytest.raises(ValueError, match=r"config_only: no weights: expected one of .* \(found: config.json\)"):
        load_model(config_only)
    with pytest.raises(ValueError, match="expected a checkpoint directory"):
        load_model(config_only / "config.json")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="no config.json"):
        load_model(no_config)


def test_a_weights_only_pickle_loads_like_safetensors(trained, tokenizer, tmp_path):
    model, _ = trained
    bin_only = tmp_path / "bin_only"
    bin_only.mkdir()
    (bin_only / "config.json").write_text(json.dumps(model.config.to_dict()))
    torch.save(model.state_dict(), bin_only / "pytorch_model.bin")
    text = TASK.corpus()[3]
    assert torch.equal(logits(load_model(bin_only, device="cpu"), tokenizer, text), logits(model.eval(), tokenizer, text))


def test_bad_dtype_is_refused(tmp_path, tokenizer):
    path = save_model(tiny_gpt(len(tokenizer)), None, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="dtype: expected 'auto' or one of"):
        load_model(path, dtype="int8")


def test_build_model_from_a_dict_or_a_config():
    settings = {"model_type": "gpt2", "vocab_size": 50, "n_layer": 1, "n_head": 2, "n_embd": 16, "n_positions": 16}
    a, b = build_model(settings, device="cpu", seed=2), build_model(settings, device="cpu", seed=2)
    assert isinstance(a, GPT2LMHeadModel)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    llama = build_model(
        LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=2), device="cpu", dtype="bf16",
    )
    assert next(llama.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="model_type"):
        build_model({"n_layer": 1})


# ---------------------------------------------------------------------------------- LoRA


def test_lora_leaves_only_adapter_weights_trainable(trained, tokenizer, tmp_path):
    model, _ = trained
    path = save_model(model, tokenizer, tmp_path / "ckpt")
    wrapped = load_model(path, device="cpu", lora=LoraSettings(r=4, alpha=8))
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert any(".c_attn." in name for name in trainable) and any(".mlp." in name for name in trainable)
    text = TASK.corpus()[0]
    assert torch.allclose(logits(wrapped.eval(), tokenizer, text), logits(model.eval(), tokenizer, text), atol=1e-5)
    settings = {"model_type": "gpt2", "vocab_size": 50, "n_layer": 1, "n_head": 2, "n_embd": 16}
    only_attention = build_model(settings, device="cpu", lora=LoraSettings(r=2, target_modules=("c_attn",)))
    names = [name for name, p in only_attention.named_parameters() if p.requires_grad]
    assert names and all("c_attn.lora_" in name for name in names)


def test_left_padded_batches_generate_what_single_prompts_do(trained, tokenizer):
    model, _ = trained
    prompts = [p.text for p in TASK.prompts()[:8]]
    assert len({len(p.split()) for p in prompts}) > 1
    batch = sample(model, tokenizer, prompts, temperature=0.0)
    assert batch == [sample(model, tokenizer, [p], temperature=0.0)[0] for p in prompts]


def test_build_model_refuses_other_config_types():
    with pytest.raises(TypeError, match="config: expected a dict or a transformers config"):
        build_model(["gpt2"])


def test_bf16_on_a_cpu_without_bf16_instructions_is_given_with_a_warning(tmp_path, monkeypatch):
    from mopo_core.lm import devices

    with_flags, without = tmp_path / "with", tmp_path / "without"
    with_flags.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    without.write_text("flags\t\t: fpu sse2 avx2 fma\n")
    assert devices.cpu_has_native_bf16(with_flags) and not devices.cpu_has_native_bf16(without)
    assert not devices.cpu_has_native_bf16(tmp_path / "missing")
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="bf16 on a CPU without bf16 instructions"):
        assert devices.resolve_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert devices.resolve_dtype("bf16", cpu) == torch.bfloat16
        assert devices.resolve_dtype("auto", cpu) == torch.float32
