"""The Compare page through Streamlit's AppTest: example runs, run selection, K groups, the
selection-driven details panel, dominance/hypervolume/attainment tables; no exception."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.app_support import figures

from app.shared import CONVENTION
from app.presenters import compare as compare_presenter
from mopo_core.experiments import compare_runs
from mopo_core.runs import RunStore

PAGE = str(Path(__file__).parents[2] / "app" / "views" / "compare.py")
FRONT = "fig_compare_front_1_0"


def _trace_names(fig) -> list[str]:
    return [t.get("name") or "" for t in fig["data"]]


def _table(at, column) -> pd.DataFrame:
    return next(df.value for df in at.dataframe if column in df.value.columns)


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory) -> Path:
    """One store with the example runs (1-3: MOPO sweeps over seeds, 4: baselines, 5: K = 3)."""
    path = tmp_path_factory.mktemp("store") / "runs.sqlite"
    compare_presenter.create_example_runs(RunStore(path), steps=300)
    return path


def _page(path: Path, monkeypatch, runs=None) -> AppTest:
    monkeypatch.setenv("MOPO_STORE", str(path))
    st.cache_resource.clear()  # shared.run_store() is cached per process
    st.cache_data.clear()
    at = AppTest.from_file(PAGE, default_timeout=60)
    if runs is not None:
        at.session_state["compare_runs"] = runs
    at.run()
    assert not at.exception
    return at


@pytest.fixture
def page(filled_store, tmp_path, monkeypatch) -> AppTest:
    path = tmp_path / "runs.sqlite"
    shutil.copy(filled_store, path)  # each test gets its own copy (the page may write)
    return _page(path, monkeypatch, runs=[1, 2, 3, 4])


def test_default_selection_is_the_runs_of_one_instance(filled_store, tmp_path, monkeypatch):
    """The example runs: seeds 0-2 and the baselines share bt_conflict's instance (seed 0 among
    them); the K = 3 sweep is another instance: not mixed in, so no K warning and no instance one."""
    path = tmp_path / "runs.sqlite"
    shutil.copy(filled_store, path)
    at = _page(path, monkeypatch)
    assert at.multiselect(key="compare_runs").value == [1, 2, 3, 4]
    assert not any("cannot be overlaid" in w.value or "different instances" in w.value for w in at.warning)


def test_empty_store_offers_example_runs_and_creating_them_fills_the_page(tmp_path, monkeypatch):
    at = _page(tmp_path / "fresh.sqlite", monkeypatch)
    assert [b.label for b in at.button] == ["Create example runs"]
    assert not at.get("plotly_chart")
    at.button(key="create_examples").click().run()
    assert not at.exception
    listed = RunStore(tmp_path / "fresh.sqlite").list_runs()
    assert len(listed) == 5 and (listed.n_points > 1).all()
    assert at.multiselect(key="compare_runs").value == [1, 2, 3, 4]
    assert "Created example runs" in at.success[0].value
    titles = [f["layout"]["title"]["text"] for f in figures(at)]
    assert len(titles) == 4  # fronts, dominance, hypervolume, attainment
    front, dominance, hypervolume, attainment = titles  # each chart's subtitle says what it draws
    assert CONVENTION in front and CONVENTION in attainment and "bars" not in front  # no standard errors here
    assert "a point dominates another" in dominance and "Hypervolume: the area" in hypervolume
    assert CONVENTION not in dominance + hypervolume


def test_front_figure_has_hover_customdata_reference_point_and_front_marking(page):
    fig = figures(page)[0]
    assert "HV reference point r = (0.5000, 0.5000): the reference policy's values" in fig["layout"]["title"]["text"]
    assert "higher is better" in fig["layout"]["xaxis"]["title"]["text"]
    assert "↑" in fig["layout"]["yaxis"]["title"]["text"]
    names = _trace_names(fig)
    assert "HV reference point r = (0.5000, 0.5000)" in names and "union Pareto front (its staircase)" in names
    series = [t for t in fig["data"] if t.get("customdata")]
    assert len(series) == 3 + 6  # three seeds + six baselines (one series per method label)
    for trace in series:
        assert "%{customdata[3]}" in trace["hovertemplate"]  # method, parameters and values on hover
        run_id, idx = trace["customdata"][0][:2]
        assert isinstance(run_id, int) and isinstance(idx, int)
    symbols = {s for t in series for s in t["marker"]["symbol"]}
    assert {"diamond", "circle"} <= symbols <= {"diamond", "circle", "diamond-open", "circle-open"}
    # Non-dominated in the union vs dominated; open markers: the solver could not meet the threshold.
    infeasible = [i for t in series for i, s in enumerate(t["marker"]["symbol"]) if s.endswith("-open")]
    assert bool(infeasible) == ("threshold not met: infeasible (open marker)" in names)


def test_selecting_runs_changes_the_figure_and_tables(page):
    before = figures(page)[0]
    page.multiselect(key="compare_runs").set_value([1, 2]).run()
    assert not page.exception
    after = figures(page)[0]
    assert after != before
    assert [n for n in _trace_names(after) if n.startswith("#")] == ["#1 example: mopo, bt_conflict, seed 0",
                                                                    "#2 example: mopo, bt_conflict, seed 1"]
    dominance = _table(page, "A (its points dominate some of B's)")
    assert dominance.shape == (2, 4)
    hv = _table(page, "share_of_union")
    assert hv.series.tolist()[-1] == "union of all" and len(hv) == 3
    # Two runs differing only by seed: the attainment figure is drawn.
    attainment = figures(page)[-1]
    assert any("median front" in n for n in _trace_names(attainment))
    assert any("25–75%" in n for n in _trace_names(attainment))


def test_dominance_and_hypervolume_tables_match_the_engine(page, filled_store):
    store = RunStore(filled_store)
    runs = [store.get_run(i) for i in (1, 2, 3, 4)]
    sets = compare_runs.point_sets(compare_runs.points_frame(runs))
    expected = compare_runs.dominance_table(compare_runs.dominance_counts(sets), sets)
    shown = _table(page, "A (its points dominate some of B's)")
    assert shown.values.tolist() == expected.values.tolist()
    hv = _table(page, "share_of_union")
    expected_hv = compare_runs.hypervolume_table(sets, [0.5, 0.5]).hypervolume.tolist()
    assert hv.hypervolume.tolist() == pytest.approx(expected_hv)


def test_clicking_a_point_fills_the_details_panel(page):
    """Drives the chart's own selection state (what a click sends), then clears it."""
    chart = page.get("plotly_chart")[0]
    states = page._tree.get_widget_states()  # AppTest cannot click Plotly points: send the event it would
    state = states.widgets.add()
    state.id = chart.proto.id
    state.string_value = json.dumps({"selection": {
        "points": [{"curve_number": 0, "point_index": 3, "point_number": 3, "customdata": [1, 3, "mopo"]}],
        "point_indices": [3], "box": [], "lasso": []}})
    page._run(states)
    assert not page.exception
    assert page.session_state["compare_pinned"] == [(1, 3)]
    assert any("point 3 · mopo" in e.label for e in page.expander)
    selected = _table(page, "kl_to_reference")
    assert selected[["run_id", "idx", "label"]].values.tolist() == [[1, 3, "mopo"]]
    figs = figures(page)
    assert "selected point(s)" in _trace_names(figs[0])
    policy = next(f for f in figs if f["layout"]["title"]["text"].startswith("Policies"))
    assert "reference policy π_ref" in _trace_names(policy)
    page.run()  # the pin survives reruns that carry no new selection
    assert page.session_state["compare_pinned"] == [(1, 3)]
    page.button(key="compare_clear").click().run()
    assert page.session_state["compare_pinned"] == []
    assert "selected point(s)" not in _trace_names(figures(page)[0])


def test_runs_of_different_k_are_not_overlaid_and_k3_views_are_linked(page):
    page.multiselect(key="compare_runs").set_value([1, 5]).run()
    assert not page.exception
    assert any("cannot be overlaid" in w.value for w in page.warning)
    page.radio(key="compare_k").set_value(3).run()
    page.session_state["compare_pinned"] = [(5, 4)]
    page.run()
    assert not page.exception
    figs = figures(page)
    assert figs[0]["data"][0]["type"] == "parcoords"
    projections = [f for f in figs if f["layout"]["title"]["text"].startswith("V")]
    assert len(projections) == 3
    assert all("selected point(s)" in _trace_names(f) for f in [figs[0], *projections])
    assert any("two objectives" in i.value for i in page.info)  # attainment is drawn for K = 2


def test_reference_point_is_editable_and_stated(page):
    box = next(n for n in page.number_input if n.label.startswith("r0"))
    assert box.value == pytest.approx(0.5)
    box.set_value(0.3).run()
    assert not page.exception
    assert "r = (0.3000, 0.5000): set by you in the sidebar" in figures(page)[0]["layout"]["title"]["text"]
    hv = _table(page, "share_of_union")
    assert hv.hypervolume.iloc[-1] > 0.0107  # a lower reference point adds volume


def test_attainment_follows_the_seed_keys(page):
    page.multiselect(key="compare_seed_keys").set_value([]).run()
    assert not page.exception
    assert any("No selected runs differ only by" in i.value for i in page.info)


def test_a_diverged_run_is_off_the_plane_until_the_box_is_ticked(filled_store, tmp_path, monkeypatch):
    path = tmp_path / "runs.sqlite"
    shutil.copy(filled_store, path)
    RunStore(path).set_status(2, "diverged", "diverged at step 4: the loss 1634 is more than 20 times the first")
    at = _page(path, monkeypatch, runs=[1, 2, 3, 4])
    box = at.checkbox(key="compare_show_diverged")
    assert box.label == "Show diverged runs (1 diverged run hidden unless ticked)" and not box.value
    assert any("run 2 (example: mopo, bt_conflict, seed 1): diverged at step 4" in w.value for w in at.warning)
    named = [n for n in _trace_names(figures(at)[0]) if n.startswith("#")]
    assert named and not any(n.startswith("#2 ") for n in named)
    hv = _table(at, "share_of_union")
    assert not any(s.startswith("#2 ") for s in hv.series)
    assert all(not str(a).startswith("#2 ") for a in _table(at, "A (its points dominate some of B's)").iloc[:, 0])

    at.checkbox(key="compare_show_diverged").check().run()
    assert not at.exception
    named = [n for n in _trace_names(figures(at)[0]) if n.startswith("#")]
    assert "#2 example: mopo, bt_conflict, seed 1 (diverged)" in named
    assert "#2 example: mopo, bt_conflict, seed 1 (diverged)" in _table(at, "share_of_union").series.tolist()
    assert at.checkbox(key="compare_show_diverged").value


# ----------------------------------------------------------------------------- colours, instances, the runs table


def _colour_of(fig, prefix: str) -> str:
    return next(t["marker"]["color"] for t in fig["data"] if (t.get("name") or "").startswith(prefix))


def test_a_runs_colour_does_not_depend_on_the_selection(filled_store):
    store = RunStore(filled_store)
    runs = {i: store.get_run(i) for i in (1, 2, 3, 4)}

    def colours(ids, by="run", by_label=True):
        pts = compare_runs.points_frame([runs[i] for i in ids], by_label)
        return compare_presenter.series_colours(pts, by)

    seed0, seed2 = "#1 example: mopo, bt_conflict, seed 0", "#3 example: mopo, bt_conflict, seed 2"
    assert colours([1, 2])[seed0] == colours([2, 3, 1])[seed0] == compare_presenter.RUN_PALETTE[1]
    assert len(set(colours([1, 2, 3, 4], by_label=False).values())) == 4  # consecutive runs never collide
    # A suite drawn one series per method: its methods' colours, all different, none a run's colour.
    suite = {s: c for s, c in colours([1, 4]).items() if s.startswith("#4 ")}
    assert len(set(suite.values())) == 6 and not set(suite.values()) & set(compare_presenter.RUN_PALETTE)
    assert suite == {s: c for s, c in colours([4, 3]).items() if s.startswith("#4 ")}
    by_method = colours([3, 1, 4], "method")
    assert by_method[seed0] == by_method[seed2] == compare_presenter.METHOD_PALETTE[0]  # mopo
    with pytest.raises(ValueError, match="colour_by"):
        compare_presenter.series_colour(1, "mopo", "seed")


def test_the_page_keeps_colours_across_selections_and_colours_by_method(page):
    first = _colour_of(figures(page)[0], "#1 ")
    page.multiselect(key="compare_runs").set_value([2, 3, 1]).run()
    assert not page.exception and _colour_of(figures(page)[0], "#1 ") == first
    page.radio(key="compare_colour_by").set_value("method").run()
    assert not page.exception
    front = figures(page)[0]
    assert _colour_of(front, "#1 ") == _colour_of(front, "#2 ") == _colour_of(front, "#3 ")


def test_instances_default_selection_and_warning(filled_store, tmp_path, monkeypatch):
    store = RunStore(filled_store)
    keys = {i: compare_presenter.instance_key(store.get_run(i).kind, store.get_run(i).config) for i in range(1, 6)}
    assert keys[1] == keys[2] == keys[3] == keys[4] == ("structure", "bt_conflict", 8, 1, 0)
    assert keys[5][1] == "three_objectives"
    assert compare_presenter.instance_key("imported", {}) is None
    # runs imported from one file (one per seed) are one instance, so the page selects them together
    imported = {"objectives": ["help", "harm"], "source_file": "/data/points.csv"}
    assert compare_presenter.instance_key("imported", {**imported, "seed": 0}) == \
        compare_presenter.instance_key("imported", {**imported, "seed": 1}) != \
        compare_presenter.instance_key("imported", {**imported, "source_file": "/data/other.csv"})
    listed = pd.DataFrame({"id": [7, 8, 9], "kind": ["imported"] * 3, "n_points": [3, 3, 3], "hidden": [False] * 3})
    configs = {7: {**imported, "seed": 0}, 8: {**imported, "seed": 1}, 9: {**imported, "source_file": "/x.csv"}}
    assert compare_presenter.default_selection(listed, configs) == [7, 8]
    assert compare_presenter.instance_warning([store.get_run(i) for i in (1, 2, 4)]) == ""

    path = tmp_path / "runs.sqlite"
    shutil.copy(filled_store, path)
    other = RunStore(path).create_run("sweep", {"structure": "bt_conflict", "seed": 7})
    RunStore(path).add_points(other, [{"label": "mopo", "params": {}, "values": v} for v in ([0.6, 0.5], [0.5, 0.6])])
    RunStore(path).set_status(other, "finished")
    at = _page(path, monkeypatch, runs=[1, other])
    warning = next(w.value for w in at.warning if "different instances" in w.value)
    assert "instance seed 0): run 1" in warning and f"instance seed 7): run {other}" in warning
    # Hidden runs leave the picker (and the default selection) until "Show hidden" is ticked.
    RunStore(path).set_hidden(4, True)
    at = _page(path, monkeypatch)
    assert at.multiselect(key="compare_runs").value == [1, 2, 3]
    assert 4 not in at.multiselect(key="compare_runs").options
    at.toggle(key="compare_show_hidden").set_value(True).run()
    assert not at.exception and any(o.startswith("4 · suite") for o in at.multiselect(key="compare_runs").options)


def test_runs_table_filters_and_edits(filled_store, tmp_path):
    path = tmp_path / "runs.sqlite"
    shutil.copy(filled_store, path)
    store = RunStore(path)
    listed = store.list_runs()
    configs = {i: p["config"] for i, p in store.progress(listed["id"]).items()}
    names = compare_presenter.run_names(listed, configs, {})
    table = compare_presenter.runs_table(listed, names, configs)
    assert list(table.columns) == compare_presenter.TABLE_COLUMNS
    assert table.loc[3, ["id", "kind", "method", "status", "points"]].tolist() == [
        4, "suite", ", ".join(configs[4]["methods"]), "finished", len(store.get_run(4).points)]
    assert table.loc[0, "method"] == "mopo" and table.loc[0, "name"] == "example: mopo, bt_conflict, seed 0"
    assert compare_presenter.filter_table(table, "SEED 1")["id"].tolist() == [2]
    assert compare_presenter.filter_table(table, kinds=["suite"])["id"].tolist() == [4]
    assert compare_presenter.filter_table(table, statuses=["failed"]).empty

    shown = compare_presenter.filter_table(table, kinds=["sweep"])  # rows 0..3: runs 1, 2, 3, 5
    done = compare_presenter.apply_edits(store, shown, {1: {"name": "seed one", "tags": "good, keep"},
                                                        3: {"hide": True}, 0: {"name": names[1]}}, names)
    assert done == ["run 2 renamed 'seed one'", "run 2 tagged good, keep", "run 5 hidden"]
    listed = store.list_runs()
    assert listed.set_index("id").loc[2, "name"] == "seed one" and listed.set_index("id").loc[2, "tags"] == ["good",
                                                                                                          "keep"]
    assert listed["hidden"].tolist() == [False, False, False, False, True]
    table = compare_presenter.runs_table(listed, compare_presenter.run_names(listed, configs, {}), configs)
    assert 5 not in compare_presenter.filter_table(table)["id"].tolist()
    assert 5 in compare_presenter.filter_table(table, show_hidden=True)["id"].tolist()
    assert compare_presenter.filter_table(table, "keep")["id"].tolist() == [2]
    with pytest.raises(ValueError, match="status"):
        compare_presenter.apply_edits(store, shown, {0: {"status": "finished"}}, names)


def test_deleting_runs_removes_only_the_checkpoint_files_the_project_wrote(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    own, shared, kept = tmp_path / "own", tmp_path / "shared", tmp_path / "kept"
    for folder in (own, shared, kept):
        folder.mkdir()
        (folder / "last.pt").write_bytes(b"x")
    (kept / "notes.txt").write_text("mine")
    a = store.create_run("train", {"checkpoint_dir": str(own)})
    b = store.create_run("train", {"checkpoint_dir": str(shared)})
    c = store.create_run("train", {"checkpoint_dir": str(shared)})
    d = store.create_run("train", {"checkpoint_dir": str(kept)})
    busy = store.create_run("train", {"checkpoint_dir": str(tmp_path / "busy")})
    for run_id in (a, b, c, d):
        store.set_status(run_id, "finished")
    kept_ids, files, refused = compare_presenter.delete_plan(store, [a, b, d, busy])
    assert kept_ids == [a, b, d] and files == [own / "last.pt", kept / "last.pt"]  # run c still uses shared/
    assert refused == [f"run {busy} is running: cancel it (or let it end) before deleting it"]
    done = compare_presenter.delete_runs(store, [a, b, d, busy])
    assert done[:3] == [f"run {i} deleted" for i in (a, b, d)] and "2 checkpoint file(s) deleted" in done
    assert store.list_runs()["id"].tolist() == [c, busy]
    assert not own.exists()  # emptied, so removed
    assert (shared / "last.pt").exists() and (kept / "notes.txt").exists() and not (kept / "last.pt").exists()


def test_the_page_deletes_a_run_after_a_confirmation(page, tmp_path):
    assert any(e.label.startswith("Runs table: 5 run(s)") for e in page.expander)
    page.multiselect(key="compare_delete_ids").set_value([3]).run()
    page.button(key="compare_delete").click().run()
    assert not page.exception
    assert any("Delete run(s) 3" in w.value and "cannot be undone" in w.value for w in page.warning)
    assert len(RunStore(tmp_path / "runs.sqlite").list_runs()) == 5  # nothing deleted before the confirmation
    page.button(key="compare_delete_yes").click().run()
    assert not page.exception
    assert RunStore(tmp_path / "runs.sqlite").list_runs()["id"].tolist() == [1, 2, 4, 5]
    assert page.multiselect(key="compare_runs").value == [1, 2, 4]
    assert any("run 3 deleted" in s.value for s in page.success)
    page.button(key="compare_table_save").click().run()  # no edits: said so
    assert any("nothing changed" in s.value for s in page.success)


def test_the_fast_dominance_counts_match_the_engine(filled_store):
    """The page's dominance counts (one array operation) equal the engine's pair-by-pair ones: on
    the example runs and on random sets with ties, duplicates and an empty set."""
    store = RunStore(filled_store)
    for by_label in (True, False):
        sets = compare_runs.point_sets(compare_runs.points_frame(store.get_runs([1, 2, 3, 4]), by_label))
        pd.testing.assert_frame_equal(compare_presenter.dominance_counts(sets), compare_runs.dominance_counts(sets))
    rng = np.random.default_rng(0)
    sets = {f"s{i}": rng.integers(0, 6, (rng.integers(1, 30), 2)) / 5 for i in range(30)}
    sets |= {"copy of s1": sets["s1"].copy(), "empty": np.zeros((0, 2)),
             "three": rng.uniform(size=(5, 2))}
    pd.testing.assert_frame_equal(compare_presenter.dominance_counts(sets), compare_runs.dominance_counts(sets))
    with pytest.raises(ValueError, match="same K"):
        compare_presenter.dominance_counts({"a": np.ones((2, 2)), "b": np.ones((2, 3))})


def test_page_of_clips_the_page():
    table = pd.DataFrame({"id": range(120)})
    rows, page, pages = compare_presenter.page_of(table, 3, 50)
    assert rows["id"].tolist() == list(range(100, 120)) and (page, pages) == (3, 3)
    assert compare_presenter.page_of(table, 9, 50)[1] == 3 and compare_presenter.page_of(table, 0, 50)[1] == 1
    assert compare_presenter.page_of(table.iloc[:0], 1, 50)[2] == 1


def test_the_runs_table_pages_and_filters_without_loading_points(tmp_path, monkeypatch):
    """120 runs: the table shows 50 a page, the filter finds a run on any page, and the only runs
    whose points and metrics are read are the selected ones (read together, once)."""
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    for i in range(120):
        run_id = store.create_run("sweep", {"structure": "bt_conflict", "seed": i}, name=f"run number {i}")
        store.add_points(run_id, [{"label": "mopo", "params": {"threshold": b}, "values": [0.9 - b, b]}
                                  for b in (0.5, 0.6)])
        store.set_status(run_id, "finished")
    read = []
    get_runs = RunStore.get_runs
    monkeypatch.setattr(RunStore, "get_runs", lambda self, ids: read.append(list(ids)) or get_runs(self, ids))
    monkeypatch.setattr(RunStore, "get_run", lambda self, run_id: pytest.fail("a run was read on its own"))
    at = _page(path, monkeypatch)
    selected = at.multiselect(key="compare_runs").value
    assert read == [selected] and len(selected) <= 6
    table = _table(at, "hide")
    assert table["id"].tolist() == list(range(1, 51))
    page_input = next(n for n in at.number_input if n.key.startswith("compare_table_page"))
    page_input.set_value(3).run()
    assert not at.exception
    assert _table(at, "hide")["id"].tolist() == list(range(101, 121))
    at.text_input(key="compare_table_filter").set_value("number 77").run()
    assert _table(at, "hide")["id"].tolist() == [78]
    assert read == [selected]  # paging and filtering read no points


# ----------------------------------------------------------------------------- error bars, what the values are


EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "imported_points.csv"


def _bars(fig) -> dict[tuple[int, int], tuple[float, float, float, float]]:
    """``{(run_id, idx): (x, y, error_x, error_y)}`` of the front's series points."""
    out = {}
    for t in fig["data"]:
        if not t.get("customdata"):
            continue
        for j, cd in enumerate(t["customdata"]):
            out[(cd[0], cd[1])] = (t["x"][j], t["y"][j], t["error_x"]["array"][j], t["error_y"]["array"][j])
    return out


def test_imported_points_are_drawn_with_196_se_bars_and_said_to_be_your_own_values(tmp_path, monkeypatch):
    """The example file's standard errors (read here with the csv module, not the importer) give
    each point's bars: ±1.96 SE, V1 (harmlessness) across, V0 (helpfulness) up; the subtitle says
    the values are the user's own and what the bars are, never win-rates against a behaviour policy."""
    import csv

    store = RunStore(tmp_path / "runs.sqlite")
    ids, _ = compare_presenter.import_upload(store, "imported_points.csv", EXAMPLE.read_bytes())
    at = _page(store.path, monkeypatch, runs=ids)
    rows = list(csv.DictReader(EXAMPLE.open()))
    expected = {}
    for run_id, seed in zip(ids, ("0", "1")):
        mine = [r for r in rows if r["seed"] == seed]
        for idx, r in enumerate(mine):
            expected[(run_id, idx)] = (float(r["value.harmlessness"]), float(r["value.helpfulness"]),
                                       1.96 * float(r["se.harmlessness"]), 1.96 * float(r["se.helpfulness"]))
    front = figures(at)[0]
    drawn = _bars(front)
    assert drawn.keys() == expected.keys() and len(drawn) == 14
    for point, values in expected.items():
        assert drawn[point] == pytest.approx(values, abs=1e-12), point
    title = front["layout"]["title"]["text"]
    assert "values are your own, as imported" in title and "±1.96 standard errors" in title
    assert "behaviour policy" not in title and "win-rate" not in front["layout"]["xaxis"]["title"]["text"]
    hover = next(t for t in front["data"] if t.get("customdata"))["customdata"][0][5]
    assert "± " in hover and "(± 1.96 SE)" in hover
    assert all("behaviour policy" not in f["layout"]["title"]["text"] for f in figures(at))
    assert any("your own values, as imported" in c.value for c in at.caption)


def test_language_model_points_are_drawn_with_bars_of_their_evaluation_standard_errors(tmp_path, monkeypatch):
    """Two evaluated LM points (win-rates and their standard errors as the evaluation stores them) and
    one without: bars of 1.96 SE on the first two, none (NaN, as JSON null) on the third; the LM subtitle."""
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run("evaluate", {"task": "text", "seed": 0}, name="lm points")
    se = [[0.02, 0.03], [0.015, 0.01]]
    store.add_points(run_id, [
        {"label": "mopo", "params": {"threshold": 0.55}, "values": [0.62, 0.57],
         "extra": {"win_rate_stderr": se[0], "objectives": ["helpfulness", "harmlessness"]}},
        {"label": "mopo", "params": {"threshold": 0.6}, "values": [0.58, 0.63],
         "extra": {"win_rate_stderr": se[1], "objectives": ["helpfulness", "harmlessness"]}},
        {"label": "mopo", "params": {"threshold": 0.65}, "values": [0.52, 0.66]}])
    store.set_status(run_id, "finished")
    at = _page(store.path, monkeypatch, runs=[run_id])
    front = figures(at)[0]
    drawn = _bars(front)
    assert drawn[(run_id, 0)][2:] == pytest.approx((1.96 * 0.03, 1.96 * 0.02))
    assert drawn[(run_id, 1)][2:] == pytest.approx((1.96 * 0.01, 1.96 * 0.015))
    assert drawn[(run_id, 2)][2:] == (None, None)  # NaN half-widths, sent as JSON null: no bar
    title = front["layout"]["title"]["text"]
    assert "win-rates of the policy's samples against the reference model's samples" in title
    assert "±1.96 standard errors" in title and "behaviour policy" not in title


def test_an_empty_cell_reads_a_dash(tmp_path, monkeypatch):
    """An imported point records no KL: its details row shows "–" (not None / nan); its values stay
    numbers (full precision for the exports), and no cell of the hypervolume table is empty."""
    store = RunStore(tmp_path / "runs.sqlite")
    ids, _ = compare_presenter.import_upload(store, "imported_points.csv", EXAMPLE.read_bytes())
    at = _page(store.path, monkeypatch, runs=ids)
    at.session_state["compare_pinned"] = [(ids[0], 0)]
    at.run()
    assert not at.exception
    selected = next(df for df in at.dataframe if "kl_to_reference" in df.value.columns)
    assert selected.value["kl_to_reference"].tolist() == ["–"]
    assert selected.value[["V0", "V1"]].values.tolist() == [[0.712, 0.581]]  # numbers stay numbers underneath
    hv = next(df for df in at.dataframe if "share_of_union" in df.value.columns)
    assert all(v is not None and v == v for v in hv.value.to_numpy().ravel())  # no None / NaN cell


def test_a_picker_label_reads_back_as_its_run_id():
    """The browser sends the picked runs by their labels; a run renamed (or grown) since comes back
    under its old label, which still names its id (the browser test renames a picked run)."""
    assert compare_presenter.label_id(3) == 3 and compare_presenter.label_id(np.int64(4)) == 4
    assert compare_presenter.label_id("12 · sweep · old name · 4 points") == 12
    assert compare_presenter.label_id("a run") is None and compare_presenter.label_id(True) is None
