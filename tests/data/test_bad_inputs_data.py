"""Every bad data input of issue 11 (data readers, the run store, the command line), one table.

Each case builds its bad input in ``tmp_path`` and feeds it either to an engine function, which
must raise a ``ValueError`` naming the file, argument or row and the problem, or to the command
line, which must exit with status 2 and print one ``error: ...`` line (no traceback). Two cases
also run as a real process, where a traceback would show in stderr. The documented behaviours
that are not errors (label conflicts, a gzip of newlines read in little time and memory) follow
the table.
"""
from __future__ import annotations

import gzip
import io
import json
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mopo_core.cli.main import main
from mopo_core.data.preferences import load_preferences
from mopo_core.data.public_formats import load_public
from mopo_core.runs import RunStore
from mopo_core.validation import check_preferences

DEEP = 100_000  # the nesting depth


# --------------------------------------------------------------------------- bad inputs


def _pku_row(prompt: str, response_0: str = "yes", response_1: str = "no", better: int = 0, safer: int = 1) -> dict:
    return {"prompt": prompt, "response_0": response_0, "response_1": response_1,
            "better_response_id": better, "safer_response_id": safer}


def _native_row(prompt: str, response_a: str = "yes", response_b: str = "no", helpful: float = 1.0) -> dict:
    return {"prompt": prompt, "response_a": response_a, "response_b": response_b,
            "labels": {"helpfulness": helpful, "harmlessness": 0.0}}


def deep_json(tmp: Path) -> Path:
    path = tmp / "deep.json"
    path.write_text("[" * DEEP + "]" * DEEP)
    return path


def deep_jsonl(tmp: Path) -> Path:
    """A JSON Lines file whose second row nests 100,000 deep (the first row is a good one)."""
    path = tmp / "deep.jsonl"
    path.write_text(json.dumps(_pku_row("p")) + '\n{"prompt": ' + "[" * DEEP + "]" * DEEP + "}\n")
    return path


def deep_native_jsonl(tmp: Path) -> Path:
    path = tmp / "deep_native.jsonl"
    path.write_text(json.dumps(_native_row("p")) + '\n{"labels": ' + "[" * DEEP + "]" * DEEP + "}\n")
    return path


def empty_npy(tmp: Path) -> Path:
    path = tmp / "empty.npy"
    path.write_bytes(b"")
    return path


def huge_header_npy(tmp: Path) -> Path:
    """128 bytes whose header declares float64 of shape (2, 1, 1e5, 1e5): 149 GiB."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (2, 1, 100_000, 100_000)})
    path = tmp / "huge.npy"
    path.write_bytes(header.getvalue().ljust(128, b"\0"))
    assert path.stat().st_size == 128
    return path


def truncated_npy(tmp: Path) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, np.full((2, 3, 3), 0.5))
    path = tmp / "truncated.npy"
    path.write_bytes(buffer.getvalue()[:-8])
    return path


def complex_npy(tmp: Path) -> Path:
    path = tmp / "complex.npy"
    np.save(path, np.full((2, 3, 3), 0.5 + 0.1j))
    return path


def flipped_gzip(tmp: Path) -> Path:
    """A gzip of 50 good PKU rows with one byte of its deflate stream flipped."""
    data = bytearray(gzip.compress("\n".join(json.dumps(_pku_row(f"prompt {i}")) for i in range(50)).encode()))
    data[len(data) // 2] ^= 0xFF
    path = tmp / "flipped.jsonl.gz"
    path.write_bytes(bytes(data))
    return path


def non_utf8_jsonl(tmp: Path) -> Path:
    path = tmp / "latin1.jsonl"
    path.write_bytes(json.dumps(_pku_row("good")).encode() + b"\n"
                     + json.dumps(_pku_row("caf\u00e9")).encode().replace(b"\\u00e9", b"\xe9") + b"\n")
    return path


def surrogate_jsonl(tmp: Path) -> Path:
    """A PKU row whose response_1 holds the JSON escape of a lone surrogate (json.dumps writes \\ud800)."""
    path = tmp / "surrogate.jsonl"
    path.write_text(json.dumps(_pku_row("p")) + "\n" + json.dumps(_pku_row("q", response_1="no \ud800")) + "\n")
    return path


def surrogate_native_jsonl(tmp: Path) -> Path:
    path = tmp / "surrogate_native.jsonl"
    path.write_text(json.dumps(_native_row("p")) + "\n" + json.dumps(_native_row("q\ud800")) + "\n")
    return path


def store_text(tmp: Path) -> Path:
    path = tmp / "notes.sqlite"
    path.write_text("these are my notes, not a database\n")
    return path


def store_garbage(tmp: Path) -> Path:
    path = tmp / "garbage.sqlite"
    path.write_bytes(bytes(range(256)) * 16)
    return path


def store_truncated(tmp: Path) -> Path:
    """A real run store with a few runs over several pages, cut to its first half."""
    full = tmp / "full.sqlite"
    store = RunStore(full)
    for i in range(4):
        store.log_metrics(store.create_run("solve", {"note": "x" * 5000}), 0, {"loss": float(i)})
    path = tmp / "truncated.sqlite"
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def store_folder(tmp: Path) -> Path:
    path = tmp / "folder.sqlite"
    path.mkdir()
    return path


def store_newer(tmp: Path) -> Path:
    path = tmp / "newer.sqlite"
    RunStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    return path


def missing_file(tmp: Path) -> Path:
    return tmp / "missing.npy"


def nothing(tmp: Path) -> Path:
    return tmp


def _upload(path: Path):
    """The Explore page's upload handler on the file's bytes."""
    from app.shared import read_preferences_file

    return read_preferences_file(path.name, path.read_bytes())


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """``build(tmp_path)`` makes the bad input and returns its path; ``call`` is CLI argv (``{path}``
    and ``{store}`` filled in) or an engine function of the path; ``expected`` is a fragment of the
    message (``{path}``/``{name}`` filled in)."""

    id: str
    build: Callable[[Path], Path]
    call: list[str] | Callable[[Path], object]
    expected: str


SOLVE = ["--store", "{store}", "solve", "--threshold", "0.5", "--preferences", "{path}"]
INSPECT = ["data", "inspect", "{path}"]
RUNS_LIST = ["--store", "{path}", "runs", "list"]
STORE_PROBLEM = "{path} is not a readable SQLite run store: "

CASES = [
    # JSON nested 100,000 deep
    Case("nested-json-solve", deep_json, SOLVE, "{path}: invalid JSON (nested too deeply to read)"),
    Case("nested-json-upload", deep_json, _upload, "{name}: invalid JSON (nested too deeply to read)"),
    Case("nested-jsonl-inspect", deep_jsonl, INSPECT, "deep.jsonl: row 2: invalid JSON (nested too deeply to read)"),
    Case("nested-jsonl-load-preferences", deep_native_jsonl, load_preferences,
         "deep_native.jsonl: row 2: invalid JSON (nested too deeply to read)"),
    # .npy files: empty, a header declaring 149 GiB, fewer bytes than declared, complex numbers
    Case("empty-npy-solve", empty_npy, SOLVE, "{path}: empty file (not a .npy array)"),
    Case("empty-npy-upload", empty_npy, _upload, "{name}: empty file (not a .npy array)"),
    Case("huge-npy-header-solve", huge_header_npy, SOLVE,
         "{path}: shape (2, 1, 100000, 100000) of 8-byte numbers needs 149 GiB, over the 1 GiB limit"),
    Case("huge-npy-header-upload", huge_header_npy, _upload, "{name}: shape (2, 1, 100000, 100000)"),
    Case("truncated-npy-upload", truncated_npy, _upload,
         "{name}: the header declares shape (2, 3, 3) of float64 (144 bytes) but the file holds 136 bytes of data "
         "(truncated)"),
    Case("complex-npy-solve", complex_npy, SOLVE, "{path}: dtype complex128 is not a real number type"),
    Case("complex-array-engine", nothing, lambda _: check_preferences(np.full((2, 3, 3), 0.5 + 0j)),
         "preferences: complex values (dtype complex128) are not accepted"),
    Case("missing-file-solve", missing_file, SOLVE, "{path}: cannot read the file (No such file or directory)"),
    # a size argument over the limit, refused before anything is allocated
    Case("huge-n-responses-solve", nothing, ["--store", "{store}", "solve", "--threshold", "0.5",
                                             "--n-responses", "100000"],
         "n_responses = 100000, n_prompts = 1: shape (2, 1, 100000, 100000) of 8-byte numbers needs 149 GiB"),
    # gzip with one flipped byte
    Case("flipped-gzip-inspect", flipped_gzip, INSPECT, "{path}: not a valid gzip file"),
    Case("flipped-gzip-load-public", flipped_gzip, load_public, "{path}: not a valid gzip file"),
    # text that is not UTF-8, and a lone surrogate in a response (train --data reads with these loaders)
    Case("non-utf8-inspect", non_utf8_jsonl, INSPECT, "latin1.jsonl: row 2: not valid UTF-8"),
    Case("surrogate-inspect", surrogate_jsonl, INSPECT,
         "surrogate.jsonl: row 2: field 'response_1': not valid Unicode text: lone surrogate U+D800 at character 3"),
    Case("surrogate-load-public", surrogate_jsonl, load_public, "surrogate.jsonl: row 2: field 'response_1': "
                                                               "not valid Unicode text: lone surrogate U+D800"),
    Case("surrogate-load-preferences", surrogate_native_jsonl, load_preferences,
         "surrogate_native.jsonl: row 2: field 'prompt': not valid Unicode text: lone surrogate U+D800"),
    # --store pointing at something that is not a readable run store
    Case("store-text-file", store_text, RUNS_LIST, STORE_PROBLEM + "it does not start with the SQLite header"),
    Case("store-garbage", store_garbage, RUNS_LIST, STORE_PROBLEM + "it does not start with the SQLite header"),
    Case("store-truncated", store_truncated, RUNS_LIST, STORE_PROBLEM + "database disk image is malformed"),
    Case("store-folder", store_folder, RUNS_LIST, STORE_PROBLEM + "it is a folder"),
    Case("store-folder-solve", store_folder, ["--store", "{path}", "solve", "--threshold", "0.5"],
         STORE_PROBLEM + "it is a folder"),
    Case("store-newer-schema", store_newer, RUNS_LIST, "run store {path}: schema version 99 is newer than this "
                                                       "code's (1); upgrade mopo-studio"),
    Case("store-truncated-engine", store_truncated, RunStore, STORE_PROBLEM + "database disk image is malformed"),
]


def _fill(text: str, path: Path, store: Path) -> str:
    return text.replace("{path}", str(path)).replace("{name}", path.name).replace("{store}", str(store))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gets_a_named_error(case: Case, tmp_path, capsys):
    path = case.build(tmp_path)
    store = tmp_path / "runs.sqlite"
    expected = _fill(case.expected, path, store)
    if callable(case.call):
        with pytest.raises(ValueError) as error:
            case.call(path)
        assert expected in str(error.value)
        return
    assert main([_fill(arg, path, store) for arg in case.call]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("build, argv", [
    (store_newer, ["--store", "{path}", "runs", "list"]),
    (flipped_gzip, ["data", "inspect", "{path}"]),
], ids=["store-newer-schema", "flipped-gzip"])
def test_a_real_process_prints_one_line_and_no_traceback(build, argv, tmp_path):
    path = build(tmp_path)
    done = subprocess.run([sys.executable, "-m", "mopo_core", *(_fill(a, path, path) for a in argv)],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert str(path) in done.stderr


# --------------------------------------------------------------------------- documented behaviour


def test_a_duplicate_with_flipped_labels_is_reported_as_a_label_conflict(tmp_path, capsys):
    rows = [_pku_row("p"), _pku_row("q"),
            _pku_row("p", response_0="no", response_1="yes", better=0, safer=0),  # p again, a/b swapped, flipped
            _pku_row("q", response_0="no", response_1="yes", better=1, safer=0)]  # q again, swapped, same labels
    path = tmp_path / "conflict.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    report = load_public(path).report()
    assert (report["n_duplicates"], report["n_label_conflicts"]) == (2, 1)
    assert report["label_conflicts"] == [["conflict.jsonl:row 1", "conflict.jsonl:row 3"]]
    assert main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "label conflicts (a duplicate with other labels): 1" in out
    assert "conflict.jsonl:row 3 contradicts conflict.jsonl:row 1" in out


def test_a_gzip_of_newlines_says_empty_quickly_and_in_little_memory(tmp_path):
    path = tmp_path / "newlines.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n" * 50_000_000, compresslevel=9))  # about 50 KB on disk
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=f"{path}: empty \\(no rows\\)"):
            load_public(path)
        elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # a list of 50 million lines would take over 400 MiB
    assert elapsed < 10


def test_a_gzip_over_the_decompressed_limit_is_refused(tmp_path, monkeypatch):
    import mopo_core.data.public_formats as public_formats

    monkeypatch.setattr(public_formats, "MAX_DECOMPRESSED_BYTES", 2**20)
    path = tmp_path / "big.jsonl.gz"
    path.write_bytes(gzip.compress(b" " * (2**21)))
    with pytest.raises(ValueError, match=f"{path}: decompresses to more than 1 MiB, the limit for a gzip file"):
        load_public(path)


def test_a_preference_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch, capsys):
    import mopo_core.validation as validation

    monkeypatch.setattr(validation, "MAX_ARRAY_BYTES", 1024)
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"preferences": [0.5] * 40_000}))  # 200 KB: over 1 KiB plus the header room
    assert main(["--store", str(tmp_path / "runs.sqlite"), "solve", "--threshold", "0.5",
                 "--preferences", str(path)]) == 2
    assert capsys.readouterr().err == f"error: {path}: 195 KiB, over the 1 KiB limit for a preference file\n"
