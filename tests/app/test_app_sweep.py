"""The Sweep page through Streamlit's AppTest: widgets drive the figures, the metrics table sits beside the
front, errors are shown, sampled data show each point's true value next to its estimate and interval and
mark the thresholds broken on the truth, and "Save as run" writes to the run store. The store is a temporary file
($MOPO_STORE) and the cached ``shared.run_store()`` is cleared so that each test gets its own."""
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app_support import figures

from app import shared
from mopo_core.runs import RunStore

PAGE = str(Path(__file__).parents[2] / "app" / "views" / "sweep.py")

#: Plain names of the metrics (the technical name in brackets).
HV_RATIO, IGD = "share of the exact front's area (HV ratio)", "distance to the exact front (IGD+)"
SATISFACTION, REGRET = "share of thresholds met", "primary lost to the best (mean regret)"


def _trace(fig, prefix):
    return [t for t in fig["data"] if t.get("name", "").startswith(prefix)]


def _array(value) -> np.ndarray:
    return np.asarray(value, dtype=float)


def _n_points(trace):
    return len(_array(trace["x"]))


@pytest.fixture()
def store_path(tmp_path, monkeypatch):
    path = tmp_path / "runs.sqlite"
    monkeypatch.setenv("MOPO_STORE", str(path))
    shared.run_store.clear()  # st.cache_resource: drop a store built for another path
    yield path
    shared.run_store.clear()


@pytest.fixture()
def app(store_path):
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception
    return at


def test_sweep_shows_front_reference_point_mopo_and_metrics_table(app):
    front, multipliers = figures(app)
    names = [t["name"] for t in front["data"]]
    assert any(n.startswith("exact front") for n in names)
    assert any(n.startswith("HV reference point") for n in names)
    mopo = _trace(front, "MOPO sweep")[0]
    assert _n_points(mopo) == 100
    assert "method: MOPO" in mopo["hovertemplate"] and "threshold b1" in mopo["hovertemplate"]
    assert any("HV reference point" in a["text"] for a in front["layout"]["annotations"])
    assert "values are win-rates against the behaviour policy" in front["layout"]["title"]["text"]
    assert "thresholds are win-rates" in multipliers["layout"]["title"]["text"]  # its y axis is λ, not a win-rate
    for fig in (front, multipliers):
        assert "maximised" in fig["layout"]["title"]["text"]
        assert "→" in fig["layout"]["xaxis"]["title"]["text"] and "↑" in fig["layout"]["yaxis"]["title"]["text"]
        assert all("hovertemplate" in t for t in fig["data"])
    metrics = app.dataframe[0].value.set_index("metric")
    assert list(metrics.columns) == ["bt_conflict"]
    # at the pages' default τ = 0.08 the KL term holds MOPO well inside the τ → 0 front; at τ = 0.01 it nearly reaches it
    assert 0.3 < float(metrics.loc[HV_RATIO, "bt_conflict"]) < 0.95
    assert float(metrics.loc[SATISFACTION, "bt_conflict"]) == 1.0 and metrics.loc["points", "bt_conflict"] == "100"
    assert IGD in metrics.index and "SYNTHETIC.md" not in " ".join(m.value for m in app.markdown)
    assert any("reference point (V0, V1, …) = the reference policy's values: bt_conflict (0.500, 0.500)" in c.value
               for c in app.caption)
    labels = [b.label for b in app.get("download_button")]
    assert {"Figure HTML", "Data CSV", "Data JSON"} <= set(labels)
    app.select_slider(key="sweep_tau").set_value(0.01).run()
    metrics = app.dataframe[0].value.set_index("metric")
    assert float(metrics.loc[HV_RATIO, "bt_conflict"]) > 0.95 and float(metrics.loc[SATISFACTION, "bt_conflict"]) == 1.0


def test_widgets_change_the_figure(app):
    def front(at):
        return figures(at)[0]

    before = front(app)
    app.select_slider(key="sweep_tau").set_value(0.1).run()
    assert not app.exception
    after_tau = front(app)
    assert not np.allclose(_array(_trace(after_tau, "MOPO sweep")[0]["y"]), _array(_trace(before, "MOPO sweep")[0]["y"]))
    assert "τ=0.1" in _trace(after_tau, "MOPO sweep")[0]["name"]

    app.slider(key="sweep_n_thresholds").set_value(20).run()
    assert not app.exception
    assert _n_points(_trace(front(app), "MOPO sweep")[0]) == 20

    app.multiselect(key="sweep_structures").set_value(["bt_conflict", "cyclic"]).run()
    assert not app.exception
    names = [t["name"] for t in _trace(front(app), "MOPO sweep")]
    assert names == ["MOPO sweep (τ=0.1, ε=0) · bt_conflict", "MOPO sweep (τ=0.1, ε=0) · cyclic"]
    assert list(app.dataframe[0].value.columns) == ["metric", "bt_conflict", "cyclic"]

    app.radio(key="sweep_mode").set_value("Ablation").run()
    assert not app.exception
    figs = figures(app)
    assert figs[0]["layout"]["title"]["text"].startswith("Ablation over τ")
    assert len(figs) == 1 + 2  # the metrics panel, then one front per structure
    table = app.dataframe[0].value
    assert len(table) == 2 * 4 and {HV_RATIO, IGD, SATISFACTION, REGRET} <= set(table.columns)


def test_ablation_parameters(app):
    app.radio(key="sweep_mode").set_value("Ablation").run()
    app.selectbox(key="sweep_parameter").set_value("n").run()
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table.label) == ["n=10", "n=100", "n=1000", "n=10000"]
    assert table["win-rate estimation error"].is_monotonic_decreasing

    app.selectbox(key="sweep_parameter").set_value("t0").run()
    app.select_slider(key="sweep_steps").set_value(200)
    app.slider(key="sweep_ab_thresholds_alg1").set_value(2).run()
    assert not app.exception
    fronts = figures(app)[1]
    mopo = _trace(fronts, "MOPO (Algorithm 1)")
    assert [t["name"].split(" · ")[1] for t in mopo] == ["t0=1", "t0=10", "t0=100", "t0=∞ (off)"]

    # a fixed ratchet needs a lagged reference: t0 = off is refused with a message naming t0
    app.selectbox(key="sweep_fixed_beta").set_value(0.9).run()
    assert not app.exception
    assert any("t0 = None (off)" in e.value for e in app.error)


def test_no_structure_asks_for_one(app):
    app.multiselect(key="sweep_structures").set_value([]).run()
    assert not app.exception
    assert any("at least one structure" in i.value for i in app.info)
    assert not app.get("plotly_chart")


def test_save_as_run_writes_to_the_store(app, store_path):
    app.slider(key="sweep_n_thresholds").set_value(10).run()
    app.button(key="sweep_save").click().run()
    assert not app.exception
    runs = RunStore(store_path).list_runs()
    assert list(runs.kind) == ["sweep"] and runs.n_points.iloc[0] == 10
    assert f"Saved as run {runs.id.iloc[0]}" in app.success[0].value
    app.slider(key="sweep_n_thresholds").set_value(11).run()
    assert not app.success  # the confirmation belongs to the settings that were saved

    app.radio(key="sweep_mode").set_value("Ablation").run()
    app.button(key="sweep_save").click().run()
    assert not app.exception
    runs = RunStore(store_path).list_runs()
    assert list(runs.kind) == ["sweep", "ablation"]
    run = RunStore(store_path).get_run(int(runs.id.iloc[1]))
    assert run.config["parameter"] == "tau" and run.status == "finished"
    assert set(run.metrics.name) >= {"hv_ratio", "igd_plus", "satisfaction", "mean_regret"}


def test_sampled_data_shows_truth_next_to_estimate_and_marks_broken_thresholds(app):
    from mopo_core.experiments import ablations

    app.selectbox(key="sweep_data").set_value(300).run()
    app.slider(key="sweep_n_thresholds").set_value(30).run()
    assert not app.exception
    front, estimates, _ = figures(app)
    outcome = ablations.threshold_sweep("bt_conflict", n_comparisons=300, n_thresholds=30, tau=shared.DEFAULT_TAU)
    expected = int((~outcome.points.met).sum())
    assert expected > 0  # plug-in MOPO on 300 comparisons misses some thresholds on the truth (seed 0)
    broken = _trace(front, "threshold broken on the truth")[0]
    assert _n_points(broken) == expected
    met = _trace(front, "MOPO sweep")[0]
    assert broken["marker"]["symbol"] == "circle-open" and met["marker"].get("symbol", "circle") == "circle"
    assert broken["marker"]["color"] == met["marker"]["color"]  # hollow, in the structure's colour
    assert _n_points(met) == 30 - expected
    assert np.all(_array(broken["x"]) < _array(outcome.points.b1[~outcome.points.met]) + 1e-9)
    assert "estimate V1=" in broken["hovertemplate"] and "± " in broken["hovertemplate"]
    assert any(f"bt_conflict: {expected} of 30 thresholds broken on the truth" in c.value
               for c in app.caption)

    assert "True value next to the estimate" in estimates["layout"]["title"]["text"]
    est = _trace(estimates, "estimate ± 1.96·SE")[0]
    assert np.allclose(_array(est["y"]), outcome.points.V1_est)
    assert np.allclose(_array(est["error_y"]["array"]), 1.96 * outcome.points.se1)
    true_broken = _trace(estimates, "true value, threshold broken")[0]
    assert _n_points(true_broken) == expected
    assert np.all(_array(true_broken["y"]) < _array(true_broken["x"]))  # below the line V = b

    table = app.dataframe[1].value  # the sweep points, with each estimate's interval
    assert {"V1_est", "se1", "V1_low", "V1_high", "b1_enforced", "met"} <= set(table.columns)
    assert np.allclose(table.V1_high - table.V1_low, 2 * 1.96 * table.se1)


def test_a_margin_raises_the_enforced_thresholds_and_breaks_fewer(app):
    app.selectbox(key="sweep_data").set_value(300).run()
    app.slider(key="sweep_n_thresholds").set_value(10).run()
    before = _n_points(_trace(figures(app)[0], "threshold broken on the truth")[0])
    app.select_slider(key="sweep_margin").set_value(1.64).run()
    assert not app.exception
    front = figures(app)[0]
    assert "z=1.64" in _trace(front, "MOPO sweep")[0]["name"]
    after = _trace(front, "threshold broken on the truth")
    assert (_n_points(after[0]) if after else 0) < before
    table = app.dataframe[1].value
    assert (table.b1_enforced > table.b1 + 1e-6).all()
    assert any("margin z = 1.64" in c.value for c in app.caption)


def test_exact_data_has_no_estimate_figure_and_the_margin_is_off(app):
    assert len(figures(app)) == 2
    assert app.select_slider(key="sweep_margin").disabled


def test_the_default_tau_is_every_pages(app):
    assert app.select_slider(key="sweep_tau").value == shared.DEFAULT_TAU == 0.08


def test_saved_run_names_carry_the_data_size(app, store_path):
    app.slider(key="sweep_n_thresholds").set_value(10).run()
    app.button(key="sweep_save").click().run()
    app.selectbox(key="sweep_data").set_value(100).run()
    app.button(key="sweep_save").click().run()
    assert not app.exception
    assert "“sweep on bt_conflict (τ=0.08, ε=0, n = 100 sampled)”" in app.success[0].value
    names = list(RunStore(store_path).list_runs().name)
    assert names == ["sweep on bt_conflict (τ=0.08, ε=0, exact)", "sweep on bt_conflict (τ=0.08, ε=0, n = 100 sampled)"]


def test_the_metrics_table_reads_in_one_format_with_definitions(app):
    from app.shared import readable_table

    table = app.dataframe[0]
    assert "IGD+" in table.proto.columns and "Inverted generational distance" in table.proto.columns
    values = table.value.set_index("metric")["bt_conflict"]
    assert all(v == "100" if m == "points" else len(v.split(".")[1]) == 3 for m, v in values.items())  # one format
    assert "None" not in readable_table(table.value)[0].to_html()
