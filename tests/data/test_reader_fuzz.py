"""Fuzzing the preference readers: mutated files give a valid result or a named ValueError.

Valid files of every reader (``.npy`` and JSON preference arrays; JSON Lines in this project's
schema and PKU-SafeRLHF's; a JSON array of HH-RLHF rows; a gzip of JSON Lines) are mutated the
ways a damaged or hostile file differs from a good one: bytes flipped, the file cut short, deep
nesting inserted, random bytes inserted or in place of the whole file. Whatever the mutation, a
reader either returns what it promises (an array that :func:`check_preferences` accepts or
names the file in its refusal; a dataset with pairs) or raises a ``ValueError`` naming the file.
Any other exception (RecursionError, EOFError, MemoryError, zlib.error, UnicodeError, ...)
fails the test.
"""
from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mopo_core.data.preferences import PreferenceDataset, load_preferences
from mopo_core.data.public_formats import PublicDataset, load_public
from mopo_core.validation import check_preferences, read_preference_array


def _preferences() -> np.ndarray:
    prefs = np.full((2, 1, 3, 3), 0.5)
    prefs[:, 0, 0, 1], prefs[:, 0, 1, 0] = [0.9, 0.2], [0.1, 0.8]
    return prefs


def _npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, _preferences())
    return buffer.getvalue()


def _lines(rows: list[dict]) -> bytes:
    return ("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n").encode()


NATIVE_ROWS = [{"prompt": f"prompt {i}", "response_a": "sure", "response_b": "no way",
                "labels": {"helpfulness": 1.0, "harmlessness": 0.5 if i else 0.0}} for i in range(3)]
PKU_ROWS = [{"prompt": f"question {i}", "response_0": "answer é", "response_1": "other answer",
             "better_response_id": i % 2, "safer_response_id": 1} for i in range(3)]
HH_ROWS = [{"chosen": f"\n\nHuman: hi {i}\n\nAssistant: hello", "rejected": f"\n\nHuman: hi {i}\n\nAssistant: go"}
           for i in range(3)]

#: (file name, valid content, reader). The file name's suffix tells the reader what it is.
SEEDS = [
    ("prefs.npy", _npy(), "array"),
    ("prefs.json", json.dumps({"preferences": _preferences().tolist()}).encode(), "array"),
    ("native.jsonl", _lines(NATIVE_ROWS), "native"),
    ("pku.jsonl", _lines(PKU_ROWS), "public"),
    ("helpful.json", json.dumps(HH_ROWS).encode(), "public"),
    ("pku.jsonl.gz", gzip.compress(_lines(PKU_ROWS), mtime=0), "public"),
]


@st.composite
def mutated(draw) -> tuple[str, bytes, str]:
    name, data, reader = draw(st.sampled_from(SEEDS))
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "nest", "insert", "replace"]))
        where = draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            data[min(where, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[where:]
        elif kind == "nest":
            opener = draw(st.sampled_from([b"[", b'{"a":']))
            data[where:where] = opener * draw(st.sampled_from([2, 70, 3000, 100_000]))
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        else:
            data = bytearray(draw(st.binary(max_size=300)))
    return name, bytes(data), reader


def _read(name: str, data: bytes, reader: str, folder: Path):
    if reader == "array":
        array = read_preference_array(name, data)
        try:
            return check_preferences(array)
        except ValueError as exc:  # the engine's own check names the argument, the upload adds the file
            raise ValueError(f"{name}: {exc}") from None
    path = folder / name
    path.write_bytes(data)
    return load_preferences(path) if reader == "native" else load_public(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_preference_files_give_a_result_or_a_named_value_error(case):
    name, data, reader = case
    with tempfile.TemporaryDirectory() as folder:
        try:
            result = _read(name, data, reader, Path(folder))
        except ValueError as exc:
            assert name in str(exc), str(exc)
            return
    if reader == "array":
        assert result.ndim == 4 and np.isfinite(result).all()
    else:
        dataset = result.dataset if isinstance(result, PublicDataset) else result
        assert isinstance(dataset, PreferenceDataset) and len(dataset) > 0
