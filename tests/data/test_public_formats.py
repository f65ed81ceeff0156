"""Public preference formats (PKU-SafeRLHF, HH-RLHF, ShareGPT / alpaca DPO) -> PreferenceDataset."""
import gzip
import json
import re
from pathlib import Path

import pytest

from mopo_core.cli.main import main
from mopo_core.data.preferences import MAX_LISTED_ERRORS
from mopo_core.data.public_formats import PKU_OBJECTIVES, format_report, load_public

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _write_lines(path, records):
    """JSON Lines: a str is written verbatim (for broken lines), anything else as JSON."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _errors(exc_info) -> str:
    return str(exc_info.value)


# --------------------------------------------------------------------------- PKU-SafeRLHF


def _pku(i=0, better=0, safer=1, **overrides):
    record = {
        "prompt": f"prompt {i}", "response_0": f"first answer {i}", "response_1": f"second answer {i}",
        "prompt_source": "test", "is_response_0_safe": True, "is_response_1_safe": False,
        "response_0_harm_category": {"Violence": False}, "response_1_harm_category": {"Violence": True},
        "response_0_severity_level": 0, "response_1_severity_level": 2,
        "better_response_id": better, "safer_response_id": safer,
    }
    record.update(overrides)
    return record


def test_pku_labels_objectives_and_metadata(tmp_path):
    path = _write_lines(tmp_path / "pku.jsonl", [_pku(0, 0, 1), _pku(1, 1, 1), _pku(2, 1, 0)])
    loaded = load_public(path)
    assert loaded.format == "pku"
    assert loaded.dataset.objectives == PKU_OBJECTIVES == ("helpfulness", "harmlessness")
    assert [pair.labels for pair in loaded.dataset] == [(1.0, 0.0), (0.0, 0.0), (0.0, 1.0)]
    first = loaded.dataset[0]
    assert (first.prompt, first.response_a, first.response_b) == ("prompt 0", "first answer 0", "second answer 0")
    assert first.origin == "pku.jsonl:row 1"
    assert loaded.metadata[0]["is_response_1_safe"] is False
    assert loaded.metadata[0]["response_1_severity_level"] == 2
    assert loaded.metadata[0]["response_1_harm_category"] == {"Violence": True}
    assert "prompt" not in loaded.metadata[0] and "better_response_id" not in loaded.metadata[0]
    report = loaded.report()
    assert report["label_balance"] == {"helpfulness": {"a": 1, "b": 2, "tie": 0},
                                       "harmlessness": {"a": 1, "b": 2, "tie": 0}}
    assert report["n_objective_conflicts"] == 2
    assert report["single_objective"] is False
    json.dumps(report)


def test_pku_bad_rows_are_all_named(tmp_path):
    path = _write_lines(tmp_path / "pku.jsonl", [
        _pku(0),
        {k: v for k, v in _pku(1).items() if k != "safer_response_id"},
        _pku(2, prompt=7),
        _pku(3, response_1="   "),
        _pku(4, better=2),
        _pku(5, safer="1"),
        _pku(6, better=True),
        _pku(7, response_1="first answer 7"),
        _pku(8, is_response_0_safe="yes", response_1_severity_level=1.5),
        "{not json",
        "[1, 2]",
    ])
    with pytest.raises(ValueError) as exc_info:
        load_public(path, format="pku")
    message = _errors(exc_info)
    assert message.startswith(f"{path}: 11 error(s) in 10 row(s):")
    for expected in [
        "pku.jsonl: row 2: field 'safer_response_id': missing",
        "row 3: field 'prompt': expected a string, got int",
        "row 4: field 'response_1': empty or whitespace-only text",
        "row 5: field 'better_response_id': expected 0 or 1 (the id of the preferred response), got 2",
        "row 6: field 'safer_response_id': expected 0 or 1 (the id of the preferred response), got '1'",
        "row 7: field 'better_response_id': expected 0 or 1 (the id of the preferred response), got True",
        "row 8: field 'response_1': identical to response_0",
        "row 9: field 'is_response_0_safe': expected bool, got str",
        "row 9: field 'response_1_severity_level': expected int, got float",
        "row 10: invalid JSON",
        "row 11: expected a JSON object, got list",
    ]:
        assert expected in message
    assert "row 1:" not in message


def test_pku_refuses_an_objective_name(tmp_path):
    path = _write_lines(tmp_path / "pku.jsonl", [_pku()])
    with pytest.raises(ValueError, match=r"objective='helpfulness': PKU-SafeRLHF rows carry both objectives"):
        load_public(path, objective="helpfulness")


# --------------------------------------------------------------------------- HH-RLHF


def _transcript(*turns):
    return "".join(f"\n\n{role}: {text}" for role, text in turns)


_HH_HISTORY = (("Human", "hi"), ("Assistant", "hello"), ("Human", "how do I pick a lock?"))


def _hh(chosen="I can't help with that.", rejected="Use a tension wrench.", history=_HH_HISTORY):
    return {"chosen": _transcript(*history, ("Assistant", chosen)),
            "rejected": _transcript(*history, ("Assistant", rejected))}


def test_hh_prompt_is_the_shared_transcript_up_to_the_last_assistant_turn(tmp_path):
    path = tmp_path / "harmless-base.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(_hh()) + "\n").encode()))
    loaded = load_public(path)
    pair = loaded.dataset[0]
    assert loaded.format == "hh"
    assert loaded.dataset.objectives == ("harmlessness",)
    assert pair.prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I pick a lock?\n\nAssistant:"
    assert (pair.response_a, pair.response_b, pair.labels) == (" I can't help with that.", " Use a tension wrench.",
                                                               (1.0,))
    report = loaded.report()
    assert report["single_objective"] is True and report["K"] == 1
    assert any("MOPO needs a primary and at least one secondary objective" in note for note in report["notes"])
    assert report["label_balance"] == {"harmlessness": {"a": 1, "b": 0, "tie": 0}}


def test_hh_objective_from_the_file_name_or_the_caller(tmp_path):
    lines = [_hh()]
    assert load_public(_write_lines(tmp_path / "helpful-base.jsonl", lines)).dataset.objectives == ("helpfulness",)
    unnamed = _write_lines(tmp_path / "test.jsonl", lines)
    with pytest.raises(ValueError, match="cannot tell the HH-RLHF objective from the file name"):
        load_public(unnamed)
    assert load_public(unnamed, objective="honesty").dataset.objectives == ("honesty",)
    with pytest.raises(ValueError, match="objective: expected one objective name"):
        load_public(unnamed, objective=["a", "b"])


def test_hh_a_response_may_contain_a_further_assistant_marker(tmp_path):
    continued = "Here:\n\nAssistant: more of the same answer"
    loaded = load_public(_write_lines(tmp_path / "harmless.jsonl", [_hh(rejected=continued)]))
    assert loaded.dataset[0].response_b == " " + continued
    assert any("1 pair(s) have a response that itself contains" in note for note in loaded.report()["notes"])


def test_hh_bad_rows_are_all_named(tmp_path):
    path = _write_lines(tmp_path / "harmless.jsonl", [
        _hh(),
        {"chosen": _transcript(("Human", "a question"), ("Assistant", "x")),
         "rejected": _transcript(("Human", "another question"), ("Assistant", "y"))},
        {"chosen": _transcript(("Human", "q"), ("Assistant", "a"), ("Human", "one"), ("Assistant", "x")),
         "rejected": _transcript(("Human", "q"), ("Assistant", "a"), ("Human", "two"), ("Assistant", "y"))},
        _hh(chosen=""),
        _hh(chosen="same", rejected="same"),
        {"chosen": _hh()["chosen"]},
        {"chosen": 3, "rejected": _hh()["rejected"]},
    ])
    with pytest.raises(ValueError) as exc_info:
        load_public(path)
    message = _errors(exc_info)
    assert message.startswith(f"{path}: 7 error(s) in 6 row(s):")
    for expected in [
        "harmless.jsonl: row 2: field 'rejected': chosen and rejected share no conversation up to an",
        "row 3: field 'chosen': the transcripts differ before the final Assistant turn",
        "row 3: field 'rejected': the transcripts differ before the final Assistant turn",
        "row 4: field 'chosen': the response after the shared prompt is empty",
        "row 5: field 'rejected': identical to chosen",
        "row 6: field 'rejected': missing",
        "row 7: field 'chosen': expected a string, got int",
    ]:
        assert expected in message


# --------------------------------------------------------------------------- ShareGPT / alpaca


def _turn(role, text):
    return {"from": role, "value": text}


def _sharegpt(conversations=None, chosen=None, rejected=None, **extra):
    return {"conversations": conversations or [_turn("human", "What is 2 + 2?")],
            "chosen": chosen or _turn("gpt", "4"), "rejected": rejected or _turn("gpt", "5"), **extra}


def test_sharegpt_single_and_multi_turn_prompts(tmp_path):
    multi = [_turn("system", "Be brief."), _turn("human", "Name a prime."), _turn("gpt", "2"),
             _turn("human", "Another?")]
    path = tmp_path / "dpo.json"
    path.write_text(json.dumps([_sharegpt(), _sharegpt(multi, tools="[]"), _sharegpt(system="Be kind.")]))
    loaded = load_public(path)
    assert loaded.format == "sharegpt" and loaded.dataset.objectives == ("helpfulness",)
    single, multi_turn, with_system = loaded.dataset
    assert (single.prompt, single.response_a, single.response_b, single.labels) == ("What is 2 + 2?", "4", "5", (1.0,))
    assert single.origin == "dpo.json:row 1"
    assert multi_turn.prompt == "System: Be brief.\n\nHuman: Name a prime.\n\nAssistant: 2\n\nHuman: Another?"
    assert loaded.metadata[1] == {"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "2"}, {"role": "user", "content": "Another?"}], "extra": {"tools": "[]"}}
    assert with_system.prompt == "System: Be kind.\n\nHuman: What is 2 + 2?"
    assert loaded.metadata[2]["messages"][0] == {"role": "system", "content": "Be kind."}


def test_sharegpt_bad_rows_are_all_named(tmp_path):
    rows = [
        _sharegpt(),
        _sharegpt(conversations=[]) | {"conversations": []},
        _sharegpt([{"from": "human"}]),
        _sharegpt([_turn("robot", "hi")]),
        _sharegpt([_turn("human", "hi"), _turn("gpt", "hello")]),
        _sharegpt([_turn("human", "hi"), _turn("human", "again")]),
        _sharegpt(chosen="4"),
        _sharegpt(chosen=_turn("human", "4")),
        _sharegpt(rejected=_turn("gpt", " ")),
        _sharegpt(rejected=_turn("gpt", "4")),
        _sharegpt([_turn("system", "s"), _turn("human", "hi")], system="s"),
        {"conversations": [_turn("human", "hi")], "chosen": _turn("gpt", "a")},
    ]
    path = tmp_path / "dpo.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError) as exc_info:
        load_public(path)
    message = _errors(exc_info)
    assert message.startswith(f"{path}: 11 error(s) in 11 row(s):")
    for expected in [
        "dpo.json: row 2: field 'conversations': expected a non-empty list of {from, value} messages, got an empty",
        "row 3: field 'conversations[0].value': missing",
        "row 4: field 'conversations[0].from': unknown role 'robot'",
        "row 5: field 'conversations': the last turn must be from human",
        "row 6: field 'conversations[1].from': expected a gpt turn here",
        "row 7: field 'chosen': expected an object with 'from' and 'value', got str",
        "row 8: field 'chosen.from': expected an assistant (gpt) message, got 'human'",
        "row 9: field 'rejected.value': empty or whitespace-only text",
        "row 10: field 'rejected': identical to chosen",
        "row 11: field 'system': a system message is also the first conversation turn",
        "row 12: field 'rejected': missing",
    ]:
        assert expected in message


def test_alpaca_dpo_rows(tmp_path):
    good = {"instruction": "Translate.", "input": "bonjour", "chosen": "hello", "rejected": "goodbye"}
    path = _write_lines(tmp_path / "alpaca.jsonl", [good, {**good, "input": "  ", "system": "Be exact.", "id": 3}])
    loaded = load_public(path)
    assert loaded.format == "alpaca"
    assert loaded.dataset[0].prompt == "Translate.\nbonjour"
    assert loaded.dataset[1].prompt == "System: Be exact.\n\nHuman: Translate."
    assert loaded.metadata[1] == {"messages": [{"role": "system", "content": "Be exact."},
                                               {"role": "user", "content": "Translate."}], "extra": {"id": 3}}
    bad = _write_lines(tmp_path / "bad.jsonl", [
        {**good, "history": [["q", "a"]]}, {**good, "input": None}, {**good, "rejected": "hello"},
        {k: v for k, v in good.items() if k != "chosen"}])
    with pytest.raises(ValueError) as exc_info:
        load_public(bad, format="alpaca")
    message = _errors(exc_info)
    assert "bad.jsonl: row 1: field 'history': multi-turn alpaca rows are not supported" in message
    assert "row 2: field 'input': expected a string, got None" in message
    assert "row 3: field 'rejected': identical to chosen" in message
    assert "row 4: field 'chosen': missing" in message


# --------------------------------------------------------------------------- files, sniffing, reports


def test_unknown_format_names_the_file_and_the_keys(tmp_path):
    path = _write_lines(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match=re.escape(f"{path}: unknown preference format; keys seen in the first "
                                                   "5 rows: answer, question")):
        load_public(path)
    with pytest.raises(ValueError, match="format: unknown format 'csv'"):
        load_public(path, format="csv")


def test_empty_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="empty.jsonl: empty"):
        load_public(_write_lines(tmp_path / "empty.jsonl", []))
    with pytest.raises(ValueError, match="absent.jsonl: cannot read the file"):
        load_public(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match=r"broken.jsonl: 1 error\(s\) in 1 row\(s\):\n.*row 1: invalid JSON"):
        load_public(_write_lines(tmp_path / "broken.jsonl", ["{oops"]))
    broken_array = tmp_path / "broken.json"
    broken_array.write_text('[{"chosen": "a",]')
    with pytest.raises(ValueError, match="broken.json: invalid JSON"):
        load_public(broken_array)


def test_explicit_format_checks_rows_against_it(tmp_path):
    path = _write_lines(tmp_path / "harmless.jsonl", [_hh()])
    with pytest.raises(ValueError, match=r"row 1: field 'prompt': missing"):
        load_public(path, format="pku")


def test_row_numbers_are_line_numbers_and_errors_are_capped(tmp_path):
    rows = [_pku(i, better=5) for i in range(MAX_LISTED_ERRORS + 3)]
    path = _write_lines(tmp_path / "pku.jsonl", ["", *map(json.dumps, rows)])
    with pytest.raises(ValueError) as exc_info:
        load_public(path)
    message = _errors(exc_info)
    assert "pku.jsonl: row 2: field 'better_response_id'" in message  # line 1 is blank
    assert "row 1:" not in message
    assert f"... and 3 more (first {MAX_LISTED_ERRORS} of {MAX_LISTED_ERRORS + 3} shown)" in message


def test_duplicates_are_reported_not_dropped(tmp_path):
    swapped = _pku(0, response_0="second answer 0", response_1="first answer 0")
    loaded = load_public(_write_lines(tmp_path / "pku.jsonl", [_pku(0), _pku(1), swapped]))
    assert len(loaded.dataset) == 3
    report = loaded.report()
    assert report["n_duplicates"] == 1
    assert report["duplicates"] == [["pku.jsonl:row 1", "pku.jsonl:row 3"]]


def test_skip_bad_rows_leaves_them_out_and_lists_them(tmp_path):
    path = _write_lines(tmp_path / "pku.jsonl", [_pku(0), _pku(1, better=3, safer=3), "{oops", _pku(3)])
    loaded = load_public(path, skip_bad_rows=True)
    assert [pair.origin for pair in loaded.dataset] == ["pku.jsonl:row 1", "pku.jsonl:row 4"]
    assert len(loaded.metadata) == 2
    report = loaded.report()
    assert report["n_skipped"] == 2  # rows; row 2 has two problems
    assert report["skipped"][0].startswith("row 2: field 'better_response_id'")
    assert report["skipped"][1].startswith("row 2: field 'safer_response_id'")
    assert report["skipped"][2].startswith("row 3: invalid JSON")
    assert "2 bad row(s) left out (skip_bad_rows)" in report["notes"]
    with pytest.raises(ValueError, match="no usable rows"):
        load_public(_write_lines(tmp_path / "bad.jsonl", [_pku(1, better=3)]), skip_bad_rows=True)


def test_format_report_lists_the_summary(tmp_path):
    text = format_report(load_public(_write_lines(tmp_path / "pku.jsonl", [_pku(0), _pku(1)])).report())
    assert "format: pku" in text
    assert "objectives (K = 2): helpfulness (primary), harmlessness" in text
    assert "label balance (winner): helpfulness: a 2 / b 0 / tie 0; harmlessness: a 0 / b 2 / tie 0" in text


# --------------------------------------------------------------------------- command line


def test_cli_data_inspect(tmp_path, capsys):
    store = str(tmp_path / "runs.sqlite")
    good = _write_lines(tmp_path / "pku.jsonl", [_pku(0), _pku(1)])
    assert main(["--store", store, "data", "inspect", str(good), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["format"], report["n_pairs"], report["objectives"]) == ("pku", 2, list(PKU_OBJECTIVES))
    hh = _write_lines(tmp_path / "hh.jsonl", [_hh()])
    assert main(["--store", store, "data", "inspect", str(hh), "--format", "hh", "--objective", "harmlessness"]) == 0
    assert "single objective: yes" in capsys.readouterr().out
    bad = _write_lines(tmp_path / "bad.jsonl", [_pku(0, better=4)])
    assert main(["--store", store, "data", "inspect", str(bad)]) == 2
    assert "bad.jsonl: row 1: field 'better_response_id'" in capsys.readouterr().err


# --------------------------------------------------------------------------- the real files


def _shared(name):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (the shared data folder is not part of a clone)")
    return SHARED_DATA / name


def test_real_pku_saferlhf_sample():
    loaded = load_public(_shared("pku_saferlhf_sample.jsonl"))
    report = loaded.report()
    assert (loaded.format, report["n_pairs"], report["n_prompts"]) == ("pku", 222, 219)
    assert report["label_balance"] == {"helpfulness": {"a": 82, "b": 140, "tie": 0},
                                       "harmlessness": {"a": 65, "b": 157, "tie": 0}}
    assert report["n_objective_conflicts"] == 49  # as the data README says
    assert report["n_duplicates"] == 0
    assert all(isinstance(m["is_response_0_safe"], bool) and isinstance(m["response_1_severity_level"], int)
               for m in loaded.metadata)


def test_real_hh_rlhf_harmless_base():
    path = _shared("hh_rlhf_harmless_base_test.jsonl.gz")
    with pytest.raises(ValueError) as exc_info:
        load_public(path)
    message = _errors(exc_info)
    assert message.startswith(f"{path}: 4 error(s) in 4 row(s):")
    for row in (87, 517, 926, 1104):  # the chosen transcript ends with an empty Assistant turn
        assert f"row {row}: field 'chosen': the response after the shared prompt is empty" in message
    loaded = load_public(path, skip_bad_rows=True)
    report = loaded.report()
    assert (loaded.format, report["n_pairs"], report["n_skipped"]) == ("hh", 2308, 4)
    assert report["objectives"] == ["harmlessness"] and report["single_objective"] is True
    assert report["label_balance"] == {"harmlessness": {"a": 2308, "b": 0, "tie": 0}}
    for pair in loaded.dataset:
        assert pair.prompt.startswith("\n\nHuman:") and pair.prompt.endswith("\n\nAssistant:")
        assert pair.response_a.strip() and pair.response_b.strip()
        assert "\n\nHuman:" not in pair.response_a + pair.response_b
    assert any(note.startswith("5 pair(s) have a response that itself contains") for note in report["notes"])


def test_real_llamafactory_dpo_demo():
    loaded = load_public(_shared("llamafactory_dpo_en_demo.json"))
    report = loaded.report()
    assert (loaded.format, report["n_pairs"], report["objectives"]) == ("sharegpt", 300, ["helpfulness"])
    assert report["n_duplicates"] == 5
    multi_turn = [m["messages"] for m in loaded.metadata if len(m["messages"]) > 2]
    assert len(multi_turn) == 106
    assert all(messages[-1]["role"] == "user" for messages in multi_turn)
    assert all(pair.response_a != pair.response_b for pair in loaded.dataset)


# --------------------------------------------------------------------------- reading as a stream


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_rows_keep_their_line_numbers_across_read_chunks_and_leading_blank_lines(tmp_path, monkeypatch, compress):
    import mopo_core.data.public_formats as public_formats

    monkeypatch.setattr(public_formats, "READ_CHUNK_BYTES", 5)  # rows, blank runs and the BOM straddle chunks
    lines = ["", "   ", "", json.dumps(_pku(0)), "", "", json.dumps(_pku(1)), "{broken", "",
             json.dumps(_pku(2, better=7))]
    data = b"\xef\xbb\xbf" + "\n".join(lines).encode()
    path = tmp_path / "pku.jsonl"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(ValueError) as info:
        load_public(path)
    message = _errors(info)
    assert "pku.jsonl: row 8: invalid JSON" in message and "pku.jsonl: row 10: field 'better_response_id'" in message
    loaded = load_public(path, skip_bad_rows=True)
    assert [pair.origin for pair in loaded.dataset] == ["pku.jsonl:row 4", "pku.jsonl:row 7"]


def test_a_truncated_gzip_is_named(tmp_path):
    path = tmp_path / "pku.jsonl.gz"
    path.write_bytes(gzip.compress(json.dumps(_pku(0)).encode())[:-6])
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a valid gzip file")):
        load_public(path)


def test_a_label_conflict_is_counted_apart_from_plain_duplicates(tmp_path):
    rows = [_pku(0), _pku(0), _pku(0, better=1)]  # row 2 repeats row 1; row 3 repeats it with the other winner
    report = load_public(_write_lines(tmp_path / "pku.jsonl", rows)).report()
    assert (report["n_duplicates"], report["n_label_conflicts"]) == (2, 1)
    assert report["label_conflicts"] == [["pku.jsonl:row 1", "pku.jsonl:row 3"]]
    text = format_report(report)
    assert "label conflicts (a duplicate with other labels): 1" in text
    assert "pku.jsonl:row 3 contradicts pku.jsonl:row 1" in text
