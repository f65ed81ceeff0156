"""Bad model files and the models folder's one rule (issue 11, items 3 and 6): each bad
checkpoint in :data:`CASES` is refused by ``register`` with a ``ValueError`` naming the file
or path and the problem, before ``registry.json`` is touched; ``list_models`` keeps it
listed with that problem; loading it from the registry is refused; and the command line
(``models add``) prints the error on one line and exits with status 2, never a traceback.
Symlinks that leave the models folder (a checkpoint folder, a weight file, a preference
model) are refused by listing, describing, registering and loading alike. Tiny GPT-2s
built here; nothing is downloaded."""
from __future__ import annotations

import json
import os
import re
import shlex
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mopo_core.cli.main import main
from mopo_core.lm.registry import (
    MODELS_ENV,
    PREFMODEL_META,
    PREFMODELS_DIR,
    REGISTRY_FILE,
    describe_checkpoint,
    find_model,
    inside_models_folder,
    list_models,
    list_prefmodels,
    register,
)
from app.presenters.models import load_entry
from mopo_core.lm.models import load_model, load_tokenizer, save_model, tiny_gpt, word_tokenizer


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """A models folder (set as $MOPO_MODELS) whose registry already holds one good checkpoint."""
    root = (tmp_path / "models").resolve()
    root.mkdir()
    monkeypatch.setenv(MODELS_ENV, str(root))
    save_checkpoint(root / "good")
    register(root / "good")
    return root


def save_checkpoint(path: Path) -> Path:
    """A tiny GPT-2 with its word tokenizer, saved as a safetensors checkpoint folder."""
    tokenizer = word_tokenizer(["alpha", "beta", "gamma"])
    return save_model(tiny_gpt(len(tokenizer), n_embd=16, n_layer=1, tokenizer=tokenizer), tokenizer, path)


class RunsShell:
    """A pickle payload whose unpickling would run a shell command creating ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


# Each case breaks the checkpoint folder ``bad`` (a good checkpoint to start with) and names
# the file (relative to the models folder) and the words its error must hold.


def symlinked_folder(bad: Path, outside: Path) -> None:
    for file in bad.iterdir():
        file.unlink()
    bad.rmdir()
    save_checkpoint(outside / "real")
    bad.symlink_to(outside / "real", target_is_directory=True)


def symlinked_weights(bad: Path, outside: Path) -> None:
    outside.mkdir()
    (bad / "model.safetensors").rename(outside / "model.safetensors")
    (bad / "model.safetensors").symlink_to(outside / "model.safetensors")


def symlinked_tokenizer(bad: Path, outside: Path) -> None:
    outside.mkdir()
    (bad / "tokenizer.json").rename(outside / "tokenizer.json")
    (bad / "tokenizer.json").symlink_to(outside / "tokenizer.json")


def hostile_pickle(bad: Path, outside: Path) -> None:
    state = load_file(bad / "model.safetensors")
    (bad / "model.safetensors").unlink()
    torch.save({**state, "payload": RunsShell(outside / "ran")}, bad / "pytorch_model.bin")


def pickle_of_a_list(bad: Path, outside: Path) -> None:
    state = load_file(bad / "model.safetensors")
    (bad / "model.safetensors").unlink()
    torch.save(list(state.values()), bad / "pytorch_model.bin")


def wrong_tensor_shape(bad: Path, outside: Path) -> None:
    state = load_file(bad / "model.safetensors")
    state["transformer.h.0.mlp.c_fc.weight"] = torch.zeros(16, 65)  # the config's n_embd=16 makes it (16, 64)
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})


def header_shape_beyond_its_bytes(bad: Path, outside: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 4]}}).encode()
    (bad / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)


def config_list(bad: Path, outside: Path) -> None:
    (bad / "config.json").write_text("[1, 2]")


def config_invalid_json(bad: Path, outside: Path) -> None:
    (bad / "config.json").write_text('{"model_type": "gpt2",')


def config_not_utf8(bad: Path, outside: Path) -> None:
    (bad / "config.json").write_bytes(b'{"model_type": "gpt2\xff"}')


def config_bad_field(bad: Path, outside: Path) -> None:
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "n_layer": "two"}))


CASES = [
    # (id, how the checkpoint is broken, the file named (relative to the models folder), words of the error)
    ("symlinked folder", symlinked_folder, "bad", r"outside the models folder .* \(resolves to .*outside/real\)"),
    ("symlinked weight file", symlinked_weights, "bad/model.safetensors",
     r"outside the models folder .* \(resolves to .*outside/model.safetensors\)"),
    ("symlinked tokenizer file", symlinked_tokenizer, "bad/tokenizer.json",
     r"outside the models folder .* \(resolves to .*outside/tokenizer.json\)"),
    ("hostile pytorch_model.bin", hostile_pickle, "bad: pytorch_model.bin",
     r"the pickled weights hold more than tensors and are refused .*GLOBAL posix.system"),
    ("pickle of a list", pickle_of_a_list, "bad/pytorch_model.bin", "holds a list, not a dict of named tensors"),
    ("wrong tensor shape", wrong_tensor_shape, "bad/model.safetensors",
     r"tensor transformer.h.0.mlp.c_fc.weight has shape \[16, 65\], but the model that config.json describes "
     r"has \[16, 64\]"),
    ("header shape beyond its bytes", header_shape_beyond_its_bytes, "bad/model.safetensors",
     r"tensor 'w': shape \[100000, 100000\] in F32 needs 40000000000 bytes, its data_offsets hold 4"),
    ("config.json a JSON list", config_list, "bad/config.json", "expected a JSON object, got list"),
    ("config.json invalid JSON", config_invalid_json, "bad/config.json", "not valid JSON"),
    ("config.json not UTF-8", config_not_utf8, "bad/config.json", "not UTF-8 text"),
    ("config.json field of the wrong type", config_bad_field, "bad/config.json",
     r"not a valid gpt2 config .*'n_layer'"),
]


@pytest.fixture
def bad(request, folder, tmp_path):
    """(the broken checkpoint folder, the marker a hostile pickle would create)."""
    _, breaks, _, _ = request.param
    path = save_checkpoint(folder / "bad")
    breaks(path, tmp_path / "outside")
    return path, tmp_path / "outside" / "ran"


@pytest.mark.parametrize("bad, case", [(c, c) for c in CASES], ids=[c[0] for c in CASES], indirect=["bad"])
def test_a_bad_checkpoint_is_refused_naming_the_file_everywhere(folder, bad, case):
    path, marker = bad
    _, _, named, words = case
    registry = (folder / REGISTRY_FILE).read_bytes()
    pattern = rf"{re.escape(str(folder / named))}: .*{words}"

    with pytest.raises(ValueError, match=pattern):
        register(path)
    assert (folder / REGISTRY_FILE).read_bytes() == registry  # refused before the registry is written

    entry = find_model("bad")  # still listed, with its problem
    assert entry.n_parameters is None and entry.problem is not None
    assert re.search(pattern, entry.problem)
    assert find_model("good").problem is None
    with pytest.raises(ValueError, match=pattern):
        load_entry(entry, "fp32", "cpu")
    assert not marker.exists()  # no code ran from the pickle


@pytest.mark.parametrize("bad, case", [(c, c) for c in CASES], ids=[c[0] for c in CASES], indirect=["bad"])
def test_models_add_prints_one_line_and_exits_2(folder, bad, case, capsys):
    path, marker = bad
    _, _, named, words = case
    registry = (folder / REGISTRY_FILE).read_bytes()
    assert main(["models", "add", str(path), "--models-dir", str(folder)]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(rf"{re.escape(str(folder / named))}: .*{words}", err)
    assert (folder / REGISTRY_FILE).read_bytes() == registry and not marker.exists()

    assert main(["models", "list", "--models-dir", str(folder)]) == 0  # listing shows it with its problem
    listing = capsys.readouterr()
    assert "Traceback" not in listing.err
    (line,) = [line for line in listing.out.splitlines() if line.strip().startswith("bad ")]
    assert f"PROBLEM: {folder / named}" in line


# ----------------------------------------------------------------------------- the rule itself


def test_the_rule_resolves_every_path_and_names_where_it_leads(folder, tmp_path):
    assert inside_models_folder(folder / "good") == folder / "good"
    (tmp_path / "elsewhere").mkdir()
    (folder / "team").mkdir()
    (folder / "team" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ValueError, match=rf"{folder / 'team' / 'link'}: outside the models folder {folder} "
                                         rf"\(resolves to {tmp_path / 'elsewhere'}\)"):
        inside_models_folder(folder / "team")  # found by walking the folder
    with pytest.raises(ValueError, match=r"outside the models folder"):
        inside_models_folder(folder / "team" / ".." / "..")
    with pytest.raises(ValueError, match=r"outside the models folder"):
        inside_models_folder(folder)  # the folder itself is no checkpoint inside it
    (folder / "inner").symlink_to(folder / "good", target_is_directory=True)  # a link that stays inside is fine
    assert inside_models_folder(folder / "inner") == folder / "good"


def test_a_checkpoint_linked_outside_after_listing_is_refused_at_load(folder, tmp_path):
    entry = find_model("good")
    assert entry.problem is None
    (tmp_path / "outside").mkdir()
    weights = folder / "good" / "model.safetensors"
    weights.rename(tmp_path / "outside" / "model.safetensors")
    weights.symlink_to(tmp_path / "outside" / "model.safetensors")
    with pytest.raises(ValueError, match=rf"{weights}: outside the models folder .*\(resolves to "
                                         rf"{tmp_path / 'outside' / 'model.safetensors'}\)"):
        load_entry(entry, "fp32", "cpu")
    assert load_model(folder / "good", device="cpu") is not None  # a path given directly is not the folder's


def test_describe_applies_the_rule_of_the_folder_it_is_given(folder, tmp_path):
    elsewhere = save_checkpoint(tmp_path / "elsewhere" / "ckpt")
    assert "outside the models folder" in describe_checkpoint(elsewhere, "ckpt").problem
    assert describe_checkpoint(elsewhere, "ckpt", folder=tmp_path / "elsewhere").problem is None


def test_preference_models_linked_outside_are_not_offered(folder, tmp_path):
    prefmodels = folder / PREFMODELS_DIR
    for name in ("kept", "inner-link-source"):
        (prefmodels / name).mkdir(parents=True)
        (prefmodels / name / PREFMODEL_META).write_text("{}")
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge" / PREFMODEL_META).write_text("{}")
    (prefmodels / "linked").symlink_to(tmp_path / "judge", target_is_directory=True)
    (prefmodels / "inner-link-source" / "heads.safetensors").symlink_to(tmp_path / "judge" / PREFMODEL_META)
    assert list_prefmodels() == [prefmodels / "kept"]


def test_tokenizer_json_files_are_read_as_objects_naming_the_file(folder):
    checkpoint = folder / "good"
    assert load_tokenizer(checkpoint) is not None
    for name in ("tokenizer_config.json", "tokenizer.json"):
        original = (checkpoint / name).read_bytes()
        (checkpoint / name).write_text("[1]")
        with pytest.raises(ValueError, match=rf"{checkpoint / name}: expected a JSON object, got list"):
            load_tokenizer(checkpoint)
        (checkpoint / name).write_bytes(original)
    (checkpoint / "tokenizer.json").write_text('{"model": 1}')
    with pytest.raises(ValueError, match=rf"{checkpoint}: cannot load the tokenizer \(\w+"):
        load_tokenizer(checkpoint)
    (checkpoint / "config.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match=rf"{checkpoint / 'config.json'}: (JSON nested too deeply|not valid JSON)"):
        load_tokenizer(checkpoint)


def test_listing_takes_the_registry_and_the_folder_alike(folder, tmp_path):
    save_checkpoint(tmp_path / "outside" / "real")
    (folder / "team").mkdir()
    (folder / "team" / "linked").symlink_to(tmp_path / "outside" / "real", target_is_directory=True)
    (folder / "scanned").symlink_to(tmp_path / "outside" / "real", target_is_directory=True)
    records = json.loads((folder / REGISTRY_FILE).read_text())
    records["models"].append({"name": "team/linked", "source": "edited by hand"})
    (folder / REGISTRY_FILE).write_text(json.dumps(records))
    problems = {e.name: e.problem for e in list_models()}
    assert problems["good"] is None
    for name in ("team/linked", "scanned"):
        assert problems[name].startswith(f"{folder / name}: outside the models folder {folder} (resolves to "
                                         f"{tmp_path / 'outside' / 'real'})")
