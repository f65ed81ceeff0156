"""Importing evaluated points from a CSV or JSON file (mopo_core/experiments/imports.py): the
example file round trip, bad files refused naming the row and the column, the ``runs import``
command, and the imported runs on the Compare page (presenter and AppTest)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.app_support import figures

from app.presenters import compare as compare_presenter
from mopo_core.cli.main import main
from mopo_core.experiments import compare_runs
from mopo_core.experiments.imports import IMPORT_KIND, MAX_IMPORT_BYTES, import_points, parse_points, read_points
from mopo_core.runs import RunStore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "imported_points.csv"
PAGE = str(ROOT / "app" / "views" / "compare.py")
HEADER = "method,seed,param.beta,value.help,value.harm,se.help,se.harm"


@pytest.fixture()
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs.sqlite")


def test_the_example_file_round_trips_one_run_per_seed(store):
    objectives, points = read_points(EXAMPLE)
    ids = import_points(store, EXAMPLE)
    assert objectives == ["helpfulness", "harmlessness"]
    assert len(ids) == 2  # one run ("cluster-a") with seeds 0 and 1
    runs = [store.get_run(i) for i in ids]
    assert [r.kind for r in runs] == [IMPORT_KIND] * 2 and {r.status for r in runs} == {"finished"}
    assert [r.name for r in runs] == ["imported_points · cluster-a · seed 0", "imported_points · cluster-a · seed 1"]
    assert runs[1].config == {"objectives": objectives, "source_file": str(EXAMPLE), "run": "cluster-a", "seed": 1}
    stored = [p for r in runs for p in r.points.to_dict("records")]
    assert [p["label"] for p in stored] == [p["method"] for p in points]
    assert [p["values"] for p in stored] == [p["values"] for p in points]
    assert [p["params"] for p in stored] == [p["params"] for p in points]
    assert [p["extra"] for p in stored] == [{"stderr": p["stderr"]} for p in points]
    first = stored[0]
    assert (first["label"], first["params"], first["values"], first["extra"]["stderr"]) == (
        "mopo", {"threshold": 0.55, "beta": 0.1}, [0.712, 0.581], [0.011, 0.012])
    assert compare_runs.objective_names_for(runs[0]) == tuple(objectives)
    # The two seeds differ only by seed: one attainment group per method.
    items = compare_runs.seed_attainment(runs)
    assert [it["label"] for it in items] == ["mopo", "dpo", "modpo"]


def test_json_points_and_a_name_without_run_or_seed_give_one_run(store, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"objectives": ["a", "b", "c"], "points": [
        {"method": "x", "values": [1, 2, 3], "params": {"w": [0.5, 0.5]}},
        {"method": "y", "values": [3, 2, 1], "stderr": [0.1, 0, 0.2]}]}))
    (run_id,) = import_points(store, path, name="elsewhere")
    run = store.get_run(run_id)
    assert run.name == "elsewhere" and run.config == {"objectives": ["a", "b", "c"], "source_file": str(path)}
    assert run.points["params"].tolist() == [{"w": [0.5, 0.5]}, {}]
    assert run.points["extra"].tolist() == [None, {"stderr": [0.1, 0.0, 0.2]}]
    assert compare_runs.n_objectives(run) == 3


def _csv(*rows: str, header: str = HEADER) -> bytes:
    return "\n".join([header, *rows]).encode()


def _json(objectives, *points) -> bytes:
    return json.dumps({"objectives": objectives, "points": list(points)}).encode()


GOOD = "dpo,0,0.1,0.6,0.5,0.01,0.01"
BAD_FILES = {
    "missing value": ("p.csv", _csv(GOOD, "dpo,0,0.1,,0.5,0.01,0.01"), "p.csv: row 2, column value.help: missing value"),
    "short row": ("p.csv", _csv(GOOD, "dpo,0,0.1,0.6"), "p.csv: row 2, column value.harm: missing value"),
    "non-numeric": ("p.csv", _csv("dpo,0,0.1,0.6,n/a,0.01,0.01"),
                    "p.csv: row 1, column value.harm: not a number: 'n/a'"),
    "NaN": ("p.csv", _csv(GOOD, GOOD, "dpo,0,0.1,nan,0.5,0.01,0.01"),
            "p.csv: row 3, column value.help: not a finite number: 'nan'"),
    "negative se": ("p.csv", _csv("dpo,0,0.1,0.6,0.5,0.01,-0.2"), "p.csv: row 1, column se.harm: must be >= 0"),
    "empty method": ("p.csv", _csv(GOOD, " ,0,0.1,0.6,0.5,0.01,0.01"), "p.csv: row 2, column method: the method"),
    "bad seed": ("p.csv", _csv("dpo,1.5,0.1,0.6,0.5,0.01,0.01"), "p.csv: row 1, column seed: must be an integer"),
    "extra cells": ("p.csv", _csv(GOOD + ",7"), "p.csv: row 1: 8 cells, more than the header's 7 columns"),
    "one objective": ("p.csv", _csv("dpo,0.6", header="method,value.help"),
                      "p.csv: header (value.<objective> columns): need at least 2 objectives, got 1 (help)"),
    "unknown column": ("p.csv", _csv("dpo,0.6,0.5,1", header="method,value.a,value.b,score"),
                       "p.csv: header, column score: unknown column"),
    "se without value": ("p.csv", _csv("dpo,0.6,0.5,1", header="method,value.a,value.b,se.c"),
                         "p.csv: header, column se.c: no matching value.c column"),
    "no method column": ("p.csv", _csv("0.6,0.5", header="value.a,value.b"), "p.csv: header: no column 'method'"),
    "no rows": ("p.csv", _csv(), "p.csv: no points"),
    "ragged JSON": ("p.json", _json(["a", "b"], {"method": "x", "values": [1, 2]}, {"method": "y", "values": [1]}),
                    "p.json: points[1], field values: expected a list of 2 numbers (one per objective: a, b), "
                    "got 1 entries"),
    "JSON NaN": ("p.json", b'{"objectives": ["a", "b"], "points": [{"method": "x", "values": [1, NaN]}]}',
                 "p.json: points[0], field values[1]: not a finite number: nan"),
    "JSON negative se": ("p.json", _json(["a", "b"], {"method": "x", "values": [1, 2], "stderr": [0.1, -1]}),
                         "p.json: points[0], field stderr[1]: must be >= 0"),
    "JSON empty method": ("p.json", _json(["a", "b"], {"method": "", "values": [1, 2]}),
                          "p.json: points[0], field method: the method must be non-empty"),
    "JSON one objective": ("p.json", _json(["a"], {"method": "x", "values": [1]}),
                           "p.json: field objectives: need at least 2 objectives"),
    "JSON unknown field": ("p.json", _json(["a", "b"], {"method": "x", "values": [1, 2], "score": 3}),
                           "p.json: points[0], field score: unknown field"),
    "JSON missing values": ("p.json", _json(["a", "b"], {"method": "x"}), "p.json: points[0], field values: missing"),
    "JSON text value": ("p.json", _json(["a", "b"], {"method": "x", "values": [1, "2"]}),
                        "p.json: points[0], field values[1]: not a number: '2'"),
    "other suffix": ("p.txt", b"method", "p.txt: expected a .csv or .json file"),
    "not UTF-8": ("p.csv", b"method,value.a\xff", "p.csv: not valid UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_refused_naming_the_row_and_the_column(case):
    name, data, message = BAD_FILES[case]
    with pytest.raises(ValueError) as caught:
        parse_points(name, data)
    assert str(caught.value).startswith(message)


def test_a_bad_file_records_nothing_and_a_big_one_is_not_read(store, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(_csv(GOOD, "dpo,0,0.1,0.6,0.5,0.01,-1"))
    with pytest.raises(ValueError, match="row 2, column se.harm"):
        import_points(store, path)
    assert store.list_runs().empty
    big = tmp_path / "big.csv"
    with big.open("wb") as handle:
        handle.truncate(MAX_IMPORT_BYTES + 1)  # sparse: nothing written
    with pytest.raises(ValueError, match="over the 50 MiB limit"):
        read_points(big)


def test_the_command_prints_the_run_ids_and_a_bad_file_exits_with_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOPO_STORE", str(tmp_path / "runs.sqlite"))
    assert main(["runs", "import", str(EXAMPLE), "--name", "theirs"]) == 0
    assert capsys.readouterr().out.split() == ["1", "2"]
    assert RunStore(tmp_path / "runs.sqlite").get_run(2).name == "theirs · cluster-a · seed 1"
    bad = tmp_path / "bad.csv"
    bad.write_bytes(_csv(GOOD, GOOD, "dpo,0,0.1,0.6,oops,0.01,0.01"))
    assert main(["runs", "import", str(bad)]) == 2
    assert capsys.readouterr().err == f"error: {bad}: row 3, column value.harm: not a number: 'oops'\n"


def test_an_upload_is_recorded_or_its_error_shown(store):
    ids, message = compare_presenter.import_upload(store, "../mine.csv", EXAMPLE.read_bytes())
    assert ids == [1, 2] and message.startswith("Imported 14 points (helpfulness, harmlessness) from mine.csv")
    assert store.get_run(1).config["source_file"] == "upload: mine.csv"
    assert store.get_run(1).name == "mine · cluster-a · seed 0"
    ids, message = compare_presenter.import_upload(store, "bad.csv", _csv("dpo,0,0.1,0.6,n/a,0.01,0.01"))
    assert ids == [] and message == "Nothing imported: bad.csv: row 1, column value.harm: not a number: 'n/a'"
    assert len(store.list_runs()) == 2


def test_imported_runs_are_listed_and_drawn_on_the_compare_page(store, monkeypatch):
    import_points(store, EXAMPLE)
    monkeypatch.setenv("MOPO_STORE", str(store.path))
    st.cache_resource.clear()  # shared.run_store() is cached per process
    st.cache_data.clear()
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["compare_runs"] = [1, 2]  # what an upload selects
    at.run()
    assert not at.exception
    picker = at.multiselect(key="compare_runs")
    assert picker.value == [1, 2]
    assert [o.split(" · ")[:3] for o in picker.options] == [[str(i), "imported", "imported_points"] for i in (1, 2)]
    assert any(e.label == "Import points (CSV or JSON)" for e in at.sidebar.expander)
    front, dominance, hypervolume, attainment = figures(at)
    series = {t["name"] for t in front["data"] if t.get("customdata")}
    assert series == {f"#{i} imported_points · cluster-a · seed {i - 1} · {m}" for i in (1, 2)
                      for m in ("mopo", "dpo", "modpo")}
    assert "helpfulness" in front["layout"]["xaxis"]["title"]["text"] + front["layout"]["yaxis"]["title"]["text"]
    assert sum(len(t["customdata"]) for t in front["data"] if t.get("customdata")) == 14
    assert any("median front" in (t.get("name") or "") for t in attainment["data"])


def test_empty_cells_leave_a_parameter_out_and_a_standard_error_missing():
    objectives, (point,) = parse_points("p.csv", _csv("dpo,,,0.6,0.5,,0.01"))
    assert objectives == ["help", "harm"] and point["params"] == {} and point["seed"] is None
    assert point["stderr"][0] != point["stderr"][0] and point["stderr"][1] == 0.01  # NaN: no standard error
