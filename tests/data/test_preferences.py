"""The preference data layer: schema, JSONL/Parquet round trips, validation, duplicates, splits."""
import json
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mopo_core.data.preferences import (
    MAX_LISTED_ERRORS,
    PreferenceDataset,
    PreferencePair,
    load_preferences,
    numbered_lines,
    save_preferences,
)

OBJECTIVES = ("helpfulness", "harmlessness", "humour")


def _record(i=0, labels=None, **overrides):
    record = {
        "prompt": f"prompt {i}",
        "response_a": f"answer A to {i}",
        "response_b": f"answer B to {i}",
        "labels": {"helpfulness": 1.0, "harmlessness": 0.0, "humour": 0.5} if labels is None else labels,
    }
    record.update(overrides)
    return record


def _raw_line(labels_json):
    """A JSONL line whose labels are written verbatim (for NaN and Infinity, which json.dumps refuses)."""
    return f'{{"prompt": "p", "response_a": "a", "response_b": "b", "labels": {labels_json}}}'


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _write_records(path, records):
    return _write_lines(path, [json.dumps(r) for r in records])


def _dataset(n_pairs, pairs_per_prompt=1, objectives=("helpfulness", "harmlessness")):
    pairs = tuple(
        PreferencePair(f"p{i // pairs_per_prompt}", f"a{i}", f"b{i}", tuple(float(i % 2) for _ in objectives))
        for i in range(n_pairs)
    )
    return PreferenceDataset(objectives, pairs)


# --------------------------------------------------------------------------- round trips


def _tricky_dataset():
    texts = ["naïve café ☕", "line\nbreak\r\nand\ttab", "sep\u2028para\u2029",
             'quote " and \\ backslash', "emoji 🎉"]
    pairs = tuple(
        PreferencePair(f"Q{i}: {texts[i]}", f"A {texts[(i + 1) % 5]}", f"B {texts[(i + 2) % 5]}", labels)
        for i, labels in enumerate([(1.0, 0.0, 0.5), (0.0, 1.0, 1.0), (0.1 + 0.2, 1 / 3, 0.0), (1e-300, 1.0, 0.0),
                                    (0.5, 0.5, 0.999999999999)])
    )
    return PreferenceDataset(OBJECTIVES, pairs)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_is_exact(tmp_path, suffix):
    dataset = _tricky_dataset()
    path = tmp_path / f"prefs{suffix}"
    save_preferences(dataset, path)
    loaded = load_preferences(path)
    assert loaded == dataset
    assert loaded.objectives == OBJECTIVES
    assert [p.labels for p in loaded] == [p.labels for p in dataset]  # bit for bit
    assert loaded[2].origin == f"prefs{suffix}:row 3"


def test_jsonl_file_is_one_record_per_line(tmp_path):
    path = tmp_path / "prefs.jsonl"
    save_preferences(_tricky_dataset(), path)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 6
    assert json.loads(lines[0]) == _tricky_dataset().to_records()[0]
    assert list(json.loads(lines[0])["labels"]) == list(OBJECTIVES)


def test_records_round_trip_and_objective_order_from_first_row():
    records = [_record(0, labels={"b": 1.0, "a": 0.25}), _record(1, labels={"a": 0.0, "b": 1.0})]
    dataset = PreferenceDataset.from_records(records)
    assert dataset.objectives == ("b", "a")
    assert dataset[0].labels == (1.0, 0.25) and dataset[1].labels == (1.0, 0.0)
    assert PreferenceDataset.from_records(dataset.to_records()) == dataset
    assert dataset[1].origin == "records:row 2"


def test_list_labels_need_objectives(tmp_path):
    path = _write_records(tmp_path / "prefs.jsonl", [_record(0, labels=[1, 0.25]), _record(1, labels=[0, 1])])
    dataset = load_preferences(path, objectives=["help", "harm"])
    assert dataset.objectives == ("help", "harm")
    assert [p.labels for p in dataset] == [(1.0, 0.25), (0.0, 1.0)]
    with pytest.raises(ValueError, match=r"prefs\.jsonl: row 1: field 'labels': a list of labels needs objectives"):
        load_preferences(path)
    with pytest.raises(ValueError, match=r"prefs\.jsonl: row 2: field 'labels': expected 3 label\(s\)"):
        load_preferences(path, objectives=["help", "harm", "humour"])


def test_objectives_argument_orders_mapping_labels(tmp_path):
    path = _write_records(tmp_path / "prefs.jsonl", [_record(0)])
    dataset = load_preferences(path, objectives=["humour", "helpfulness", "harmlessness"])
    assert dataset.objectives == ("humour", "helpfulness", "harmlessness")
    assert dataset[0].labels == (0.5, 1.0, 0.0)


def test_parquet_list_labels_and_parquet_row_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([_record(0, labels=[1.0, 0.0]), _record(1, labels=[0.3, 1.7])])
    pq.write_table(table, tmp_path / "prefs.parquet")
    with pytest.raises(ValueError, match=r"prefs\.parquet: row 2: field 'labels\.harm': 1\.7 is not in \[0, 1\]"):
        load_preferences(tmp_path / "prefs.parquet", objectives=["help", "harm"])
    good = pa.Table.from_pylist([_record(0, labels=[1.0, 0.0])])
    pq.write_table(good, tmp_path / "good.parquet")
    assert load_preferences(tmp_path / "good.parquet", objectives=["help", "harm"])[0].labels == (1.0, 0.0)


# --------------------------------------------------------------------------- validation


BAD_ROWS = [  # (line replacing row 2, expected message after "prefs.jsonl: row 2: ")
    ('{"prompt": "x", ', r"invalid JSON"),
    ("[1, 2, 3]", r"expected an object with keys prompt, response_a, response_b, labels, got list"),
    ('{"prompt": "p", "prompt": "q", "response_a": "a", "response_b": "b", "labels": {}}',
     r"invalid JSON \(duplicate key 'prompt'\)"),
    (json.dumps({k: v for k, v in _record(1).items() if k != "response_a"}), r"field 'response_a': missing"),
    (json.dumps(_record(1, source="web")), r"field 'source': unexpected"),
    (json.dumps(_record(1, prompt=7)), r"field 'prompt': expected a string, got int"),
    (json.dumps(_record(1, response_b=None)), r"field 'response_b': expected a string, got None"),
    (json.dumps(_record(1, labels="good")), r"field 'labels': expected a mapping"),
    (json.dumps(_record(1, prompt="")), r"field 'prompt': empty or whitespace-only text"),
    (json.dumps(_record(1, response_a=" \n\t ")), r"field 'response_a': empty or whitespace-only text"),
    (json.dumps(_record(1, response_b="   ")), r"field 'response_b': empty or whitespace-only text"),
    (json.dumps(_record(1, response_a="same", response_b="same")), r"field 'response_b': identical to response_a"),
    (json.dumps(_record(1, labels={"helpfulness": "1", "harmlessness": 0, "humour": 0})),
     r"field 'labels\.helpfulness': '1' is not a number \(got str\)"),
    (json.dumps(_record(1, labels={"helpfulness": True, "harmlessness": 0, "humour": 0})),
     r"field 'labels\.helpfulness': True is not a number \(got bool\)"),
    (_raw_line('{"helpfulness": NaN, "harmlessness": 0, "humour": 0}'),
     r"field 'labels\.helpfulness': NaN is not a valid label"),
    (_raw_line('{"helpfulness": 1, "harmlessness": Infinity, "humour": 0}'),
     r"field 'labels\.harmlessness': inf is not in \[0, 1\]"),
    (json.dumps(_record(1, labels={"helpfulness": 1, "harmlessness": 1.3, "humour": 0})),
     r"field 'labels\.harmlessness': 1\.3 is not in \[0, 1\]"),
    (json.dumps(_record(1, labels={"helpfulness": -0.1, "harmlessness": 1, "humour": 0})),
     r"field 'labels\.helpfulness': -0\.1 is not in \[0, 1\]"),
    (json.dumps(_record(1, labels={"helpfulness": 1, "harmlessness": 1})),
     r"field 'labels': objective 'humour' missing \(row 1 has: helpfulness, harmlessness, humour\)"),
    (json.dumps(_record(1, labels={"helpfulness": 1, "harmlessness": 1, "humour": 0, "length": 0})),
     r"field 'labels': unexpected objective 'length' \(row 1 has: helpfulness, harmlessness, humour\)"),
]


@pytest.mark.parametrize(("line", "message"), BAD_ROWS)
def test_bad_row_names_file_row_and_field(tmp_path, line, message):
    path = _write_lines(tmp_path / "prefs.jsonl", [json.dumps(_record(0)), line, json.dumps(_record(2))])
    with pytest.raises(ValueError, match=r"prefs\.jsonl: row 2: " + message) as info:
        load_preferences(path)
    assert str(path) in str(info.value) and "1 error(s) in 1 row(s)" in str(info.value)


def test_invalid_utf8_names_the_row(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(json.dumps(_record(0)).encode() + b"\n" + b'{"prompt": "\xff"}\n')
    with pytest.raises(ValueError, match=r"prefs\.jsonl: row 2: not valid UTF-8"):
        load_preferences(path)


def test_a_lone_surrogate_is_refused_at_read_time_naming_row_and_field(tmp_path):
    # json.dumps writes the lone surrogate as the escape \ud800, which json.loads turns back into one
    lines = [json.dumps(_record(0)), json.dumps(_record(1, response_b="x\ud800y"))]
    path = _write_lines(tmp_path / "prefs.jsonl", lines)
    assert "\\ud800" in path.read_text()
    with pytest.raises(ValueError, match=r"prefs\.jsonl: row 2: field 'response_b': not valid Unicode text: lone "
                                         r"surrogate U\+D800 at character 1"):
        load_preferences(path)
    with pytest.raises(ValueError, match=r"field 'prompt': not valid Unicode text: lone surrogate U\+DC00"):
        PreferencePair("\udc00", "a", "b", (1.0,))
    assert PreferencePair("caf\u00e9 \U0001F600", "a", "b", (1.0,)).prompt.endswith("\U0001F600")  # valid non-ASCII


def test_json_nested_too_deeply_is_a_row_error(tmp_path):
    path = _write_lines(tmp_path / "prefs.jsonl", [json.dumps(_record(0)), '{"prompt": ' + "[" * 100_000])
    with pytest.raises(ValueError, match=r"prefs\.jsonl: row 2: invalid JSON \(nested too deeply to read\)"):
        load_preferences(path)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"", b"  ", b"\t", b"{}", b"x y", b"\r"]), max_size=30), st.integers(1, 9))
def test_numbered_lines_are_the_non_blank_lines_of_a_split_on_newlines(lines, chunk_size):
    data = b"\n".join(lines)
    chunks = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)]
    expected = [(n, line) for n, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
    assert list(numbered_lines(chunks)) == expected


def test_rows_are_line_numbers_and_blank_lines_carry_no_record(tmp_path):
    bad = json.dumps(_record(3, prompt=" "))
    path = _write_lines(tmp_path / "prefs.jsonl", [json.dumps(_record(0)), "", json.dumps(_record(1)), bad])
    with pytest.raises(ValueError, match=r"prefs\.jsonl: row 4: field 'prompt'"):
        load_preferences(path)


def test_utf8_bom_on_first_line_is_accepted(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_record(0)).encode() + b"\n")
    assert len(load_preferences(path)) == 1


def test_objectives_argument_mismatch_is_named(tmp_path):
    path = _write_records(tmp_path / "prefs.jsonl", [_record(0)])
    with pytest.raises(ValueError, match=r"row 1: field 'labels': objective 'safety' missing \(expected objectives"):
        load_preferences(path, objectives=["helpfulness", "harmlessness", "humour", "safety"])


@pytest.mark.parametrize("name", ["prefs.csv", "prefs.json", "prefs"])
def test_unknown_suffix(tmp_path, name):
    with pytest.raises(ValueError, match=rf"{re.escape(name)}: unknown file suffix"):
        load_preferences(tmp_path / name)
    with pytest.raises(ValueError, match=rf"{re.escape(name)}: unknown file suffix"):
        save_preferences(_dataset(2), tmp_path / name)


def test_empty_files(tmp_path):
    (tmp_path / "prefs.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"prefs\.jsonl: empty \(no rows\)"):
        load_preferences(tmp_path / "prefs.jsonl")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), tmp_path / "prefs.parquet")
    with pytest.raises(ValueError, match=r"prefs\.parquet: empty \(no rows\)"):
        load_preferences(tmp_path / "prefs.parquet")
    with pytest.raises(ValueError, match=r"records: empty"):
        PreferenceDataset.from_records([])


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.parquet"])
def test_missing_file(tmp_path, name):
    with pytest.raises(FileNotFoundError):
        load_preferences(tmp_path / name)


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "prefs.parquet"
    path.write_text("not parquet", encoding="utf-8")
    with pytest.raises(ValueError, match=r"prefs\.parquet: cannot read as Parquet"):
        load_preferences(path)


def test_errors_are_collected_into_one_message(tmp_path):
    lines = [json.dumps(_record(0)), json.dumps(_record(1, prompt="")), "not json",
             json.dumps(_record(3)), json.dumps(_record(4, labels={"helpfulness": 2, "harmlessness": 0, "humour": 0}))]
    path = _write_lines(tmp_path / "prefs.jsonl", lines)
    with pytest.raises(ValueError) as info:
        load_preferences(path)
    message = str(info.value)
    assert "3 error(s) in 3 row(s)" in message
    assert "prefs.jsonl: row 2: field 'prompt'" in message
    assert "prefs.jsonl: row 3: invalid JSON" in message
    assert "prefs.jsonl: row 5: field 'labels.helpfulness': 2 is not in [0, 1]" in message


def test_one_row_reports_all_its_errors():
    record = _record(0, prompt=" ", labels={"helpfulness": 9, "harmlessness": "x", "humour": 0})
    with pytest.raises(ValueError) as info:
        PreferenceDataset.from_records([record], origin="mine")
    message = str(info.value)
    assert "mine: 3 error(s) in 1 row(s)" in message
    for field in ("'prompt'", "'labels.helpfulness'", "'labels.harmlessness'"):
        assert f"mine: row 1: field {field}" in message


def test_error_list_is_capped_with_total(tmp_path):
    records = [_record(i, prompt="") for i in range(30)]
    with pytest.raises(ValueError) as info:
        PreferenceDataset.from_records(records)
    message = str(info.value)
    assert "30 error(s) in 30 row(s)" in message
    assert message.count("field 'prompt'") == MAX_LISTED_ERRORS
    assert "row 20:" in message and "row 21:" not in message
    assert "and 10 more (first 20 of 30 shown)" in message


def test_soft_labels_are_kept_as_is(tmp_path):
    labels = {"helpfulness": 0.73, "harmlessness": 1 / 3, "humour": 0.5}
    path = _write_records(tmp_path / "prefs.jsonl", [_record(0, labels=labels), _record(1)])
    dataset = load_preferences(path)
    assert dataset[0].labels == (0.73, 1 / 3, 0.5)
    report = dataset.report()
    assert report["label_kind"] == {"helpfulness": "soft", "harmlessness": "soft", "humour": "soft"}
    assert report["n_ties"] == {"helpfulness": 0, "harmlessness": 0, "humour": 2}
    assert _dataset(4).report()["label_kind"] == {"helpfulness": "hard", "harmlessness": "hard"}


def test_direct_construction_is_validated():
    with pytest.raises(ValueError, match=r"here: field 'labels\[1\]': 1\.5 is not in \[0, 1\]"):
        PreferencePair("p", "a", "b", (1.0, 1.5), origin="here")
    with pytest.raises(ValueError, match=r"PreferencePair: field 'response_b': identical to response_a"):
        PreferencePair("p", "a", "a", (1.0,))
    with pytest.raises(ValueError, match=r"field 'labels': need at least one label"):
        PreferencePair("p", "a", "b", ())
    with pytest.raises(ValueError, match=r"pairs\[0\] \(x\): 1 label\(s\), expected K = 2"):
        PreferenceDataset(("h", "s"), (PreferencePair("p", "a", "b", [1], origin="x"),))
    with pytest.raises(ValueError, match=r"objectives: duplicate objective 'h'"):
        PreferenceDataset(("h", "h"))
    assert PreferencePair("p", "a", "b", [1, 0]).labels == (1.0, 0.0)


# --------------------------------------------------------------------------- duplicates


def test_duplicates_and_swapped_duplicates(tmp_path):
    records = [
        _record(0),
        _record(1),
        _record(0, labels={"helpfulness": 0.0, "harmlessness": 1.0, "humour": 0.5}),  # exact pair again
        _record(0, response_a="answer B to 0", response_b="answer A to 0"),  # swapped
        _record(0, response_b="another answer"),  # a different pair
        _record(9, prompt="prompt 1", response_a="answer B to 1", response_b="answer A to 1"),  # swapped
    ]
    path = _write_records(tmp_path / "prefs.jsonl", records)
    dataset = load_preferences(path)
    assert len(dataset) == 6  # kept
    assert dataset.duplicates() == [(0, 2), (0, 3), (1, 5)]
    assert dataset.report()["n_duplicates"] == 3
    # each repeat says the other response wins on helpfulness and harmlessness: all three contradict
    assert dataset.label_conflicts() == [(0, 2), (0, 3), (1, 5)]
    assert dataset.report()["n_label_conflicts"] == 3
    with pytest.raises(ValueError, match=r"3 duplicate pair\(s\)") as info:
        load_preferences(path, strict_duplicates=True)
    assert "prefs.jsonl:row 3 repeats prefs.jsonl:row 1" in str(info.value)
    assert "prefs.jsonl:row 6 repeats prefs.jsonl:row 2" in str(info.value)


def test_label_conflicts_read_a_swapped_repeat_in_the_first_pair_order():
    first = PreferencePair("p", "a", "b", (1.0, 0.3), "f:row 1")
    same_swapped = PreferencePair("p", "b", "a", (0.0, 0.7), "f:row 2")  # b loses, soft 0.3 seen from b
    flipped = PreferencePair("p", "a", "b", (1.0, 0.7), "f:row 3")  # the soft label moved to the other side
    dataset = PreferenceDataset(("helpfulness", "harmlessness"), (first, same_swapped, flipped))
    assert dataset.duplicates() == [(0, 1), (0, 2)]
    assert dataset.label_conflicts() == [(0, 2)]
    report = dataset.report()
    assert (report["n_duplicates"], report["n_label_conflicts"]) == (2, 1)
    assert "1 label conflict(s): the same pair again with other labels (f:row 3 contradicts f:row 1)" in report["notes"]


# --------------------------------------------------------------------------- split, select, report


def _check_partition(dataset, parts):
    prompt_sets = [set(part.prompts()) for part in parts]
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            assert not prompt_sets[i] & prompt_sets[j]
    assert Counter(p for part in parts for p in part) == Counter(dataset)
    assert all(part.objectives == dataset.objectives for part in parts)


def test_split_by_prompt_on_1000_pairs():
    dataset = _dataset(1000, pairs_per_prompt=4)
    parts = dataset.split((0.8, 0.1, 0.1), seed=3)
    _check_partition(dataset, parts)
    assert [len(part) for part in parts] == pytest.approx([800, 100, 100], abs=4)
    assert parts == dataset.split((0.8, 0.1, 0.1), seed=3)
    assert parts != dataset.split((0.8, 0.1, 0.1), seed=4)
    singles = _dataset(1000)
    assert [len(part) for part in singles.split((0.7, 0.2, 0.1))] == pytest.approx([700, 200, 100], abs=1)


def test_split_keeps_pair_order_and_handles_zero_fractions():
    dataset = _dataset(50, pairs_per_prompt=5)
    train, _ = dataset.split((0.6, 0.4), seed=1)
    index = {id(p): i for i, p in enumerate(dataset)}
    assert [index[id(p)] for p in train] == sorted(index[id(p)] for p in train)
    empty, everything = dataset.split((0.0, 1.0))
    assert len(empty) == 0 and everything == dataset


@pytest.mark.parametrize(("fractions", "message"), [
    ((0.8, 0.1), r"fractions: must sum to 1"),
    ((1.2, -0.2), r"fractions: must be >= 0"),
    ((), r"fractions: expected a non-empty sequence"),
])
def test_split_rejects_bad_fractions(fractions, message):
    with pytest.raises(ValueError, match=message):
        _dataset(10).split(fractions)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    prompt_ids=st.lists(st.integers(0, 8), min_size=0, max_size=40),
    weights=st.lists(st.integers(0, 5), min_size=1, max_size=4).filter(any),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_partitions_any_dataset(prompt_ids, weights, seed):
    pairs = tuple(PreferencePair(f"p{pid}", f"a{i % 3}", f"b{i % 2}", (i % 2, 0.5)) for i, pid in enumerate(prompt_ids))
    dataset = PreferenceDataset(("h", "s"), pairs)
    fractions = [w / sum(weights) for w in weights]
    parts = dataset.split(fractions, seed=seed)
    assert len(parts) == len(fractions)
    _check_partition(dataset, parts)
    assert all(len(part) == 0 for part, f in zip(parts, fractions, strict=True) if f == 0)


def test_select_subset_and_reorder():
    dataset = _tricky_dataset()
    swapped = dataset.select(["humour", "helpfulness"])
    assert swapped.objectives == ("humour", "helpfulness")
    assert [p.labels for p in swapped] == [(p.labels[2], p.labels[0]) for p in dataset]
    assert swapped[0].origin == dataset[0].origin
    only = dataset.select("harmlessness")
    assert only.objectives == ("harmlessness",) and only.report()["single_objective"]
    assert dataset.select(OBJECTIVES) == dataset
    with pytest.raises(ValueError, match=r"unknown objective 'safety' \(the dataset has: helpfulness"):
        dataset.select(["helpfulness", "safety"])
    with pytest.raises(ValueError, match=r"objectives: duplicate objective"):
        dataset.select(["humour", "humour"])


def test_single_objective_dataset(tmp_path):
    records = [_record(i, labels={"helpfulness": float(i % 2)}) for i in range(4)]
    path = _write_records(tmp_path / "hh.jsonl", records)
    dataset = load_preferences(path)
    report = dataset.report()
    assert report["K"] == 1 and report["single_objective"] and report["primary"] == "helpfulness"
    assert any("K = 1" in note for note in report["notes"])
    save_preferences(dataset, tmp_path / "hh.parquet")
    assert load_preferences(tmp_path / "hh.parquet") == dataset


def test_report_and_sequence_behaviour():
    dataset = _dataset(6, pairs_per_prompt=2)
    report = dataset.report()
    assert report == {
        "n_pairs": 6, "n_prompts": 3, "K": 2, "objectives": ["helpfulness", "harmlessness"],
        "primary": "helpfulness", "single_objective": False,
        "label_kind": {"helpfulness": "hard", "harmlessness": "hard"},
        "n_ties": {"helpfulness": 0, "harmlessness": 0}, "n_duplicates": 0,
        "n_label_conflicts": 0, "notes": [],
    }
    assert dataset.prompts() == ["p0", "p1", "p2"]
    assert len(dataset) == 6 and list(dataset)[1] is dataset[1]
    assert isinstance(dataset[1:3], PreferenceDataset) and len(dataset[1:3]) == 2


def test_save_refuses_an_empty_dataset(tmp_path):
    with pytest.raises(ValueError, match="nothing to save"):
        save_preferences(PreferenceDataset(("h",)), tmp_path / "prefs.jsonl")
