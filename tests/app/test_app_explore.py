"""The Explore page through Streamlit's AppTest: widgets drive the figures; bad uploads are named."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.app_support import figures

PAGE = str(Path(__file__).parents[2] / "app" / "views" / "explore.py")


def _figures(at):
    return figures(at)


@pytest.fixture()
def app():
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception
    return at


def _named(fig, prefix):
    return next(t for t in fig["data"] if t.get("name", "").startswith(prefix))


def _mopo(fig):
    return _named(fig, "MOPO, true values")


def test_default_page_shows_front_reference_baselines_and_policy(app):
    value_plane, policy = _figures(app)
    names = [t.get("name", "") for t in value_plane["data"]]
    assert "π_ref (reference point)" in names
    assert any(n.startswith("MOPO, true values") for n in names)
    assert any(n.startswith("τ → 0 front (LP") for n in names)
    assert any(n.startswith("MOPO's own front, τ = 0.08") for n in names)
    assert any(n.startswith("scalarised_ipo, KL =") for n in names) and any(n.startswith("rewarded_soups, KL =")
                                                                           for n in names)
    assert "maximised" in value_plane["layout"]["title"]["text"]
    assert "same KL" in value_plane["layout"]["title"]["text"]
    assert "higher is better" in value_plane["layout"]["xaxis"]["title"]["text"]
    assert all("hovertemplate" in t for t in value_plane["data"])
    assert len(_named(value_plane, "scalarised_ipo")["x"]) >= 8  # the weights that reach MOPO's KL (of 11)
    assert policy["data"][0]["type"] == "bar"
    assert any("Feasible" in s.value for s in app.success)
    assert any("Reference point: π_ref's values" in c.value for c in app.caption)
    assert not any(n.startswith("MOPO estimate") for n in names)  # exact data: nothing estimated


def _kl(app) -> float:
    return float(next(m for m in app.metric if m.label == "KL to reference").value)


def test_baselines_are_drawn_at_mopos_kl_and_mopos_point_lies_on_its_own_front(app):
    plane = _figures(app)[0]
    mopo, kl = _mopo(plane), _kl(app)
    assert f"KL {kl:.3f}" in mopo["name"]
    for method in ("scalarised_ipo", "rewarded_soups"):
        trace = _named(plane, method)
        assert f"KL = {kl:.3f}" in trace["name"]
        kls = np.array([row[2] for row in trace["customdata"]], dtype=float)
        assert np.allclose(kls, kls[0], atol=1e-6) and abs(kls[0] - kl) < 1e-3  # every point at MOPO's KL
        # MOPO is optimal at its own KL and threshold: no baseline at the same KL lies above its point
        x, y = np.array(trace["x"], float), np.array(trace["y"], float)
        assert np.interp(mopo["x"][0], x, y) <= mopo["y"][0] + 1e-3
    own = _named(plane, "MOPO's own front")
    order = np.argsort(own["x"])
    on_curve = np.interp(mopo["x"][0], np.array(own["x"], float)[order], np.array(own["y"], float)[order])
    assert on_curve == pytest.approx(mopo["y"][0], abs=2e-3)


def test_same_tau_shows_the_old_unfair_view(app):
    app.radio(key="explore_baseline_temperature").set_value("same τ as MOPO").run()
    assert not app.exception
    plane = _figures(app)[0]
    soups, mopo = _named(plane, "rewarded_soups, τ = 0.08"), _mopo(plane)
    # trained at the same τ, rewarded soups spends more KL and so looks better than MOPO at its threshold
    assert np.interp(mopo["x"][0], soups["x"], soups["y"]) > mopo["y"][0] + 0.01
    assert any("not a like-for-like comparison" in c.value for c in app.caption)


def _estimate_half_width(app, objective: int) -> float:
    metric = next(m for m in app.metric if m.label.startswith(f"V{objective} ") and "estimate" in m.label)
    return float(metric.value.split("±")[1])


def test_data_size_shows_true_values_next_to_estimates_with_intervals(app):
    widths = {}
    for n in (100, 6400):
        app.select_slider(key="explore_data_n").set_value(n).run()
        assert not app.exception
        widths[n] = _estimate_half_width(app, 1)
        plane = _figures(app)[0]
        estimate = _named(plane, f"MOPO estimate ± 1.96·SE (n = {n})")
        assert estimate["error_x"]["array"][0] == pytest.approx(widths[n], abs=6e-4)  # the metric: 3 decimals
        assert any(t.get("name", "").startswith(f"MOPO's own front, estimated (n = {n})") for t in plane["data"])
        table = app.dataframe[0].value
        assert {"true value", "estimate", "SE", "95% low", "95% high", "met on truth"} <= set(table.columns)
        row = table.iloc[1]
        assert row["95% high"] - row["95% low"] == pytest.approx(2 * 1.96 * row["SE"])
    assert widths[6400] < widths[100] / 4  # SE ~ 1/sqrt(n): 64x the data, about 8x narrower


def test_a_threshold_broken_on_the_truth_is_said_plainly_and_a_margin_fixes_it(app):
    app.select_slider(key="explore_data_n").set_value(400).run()
    assert not app.exception
    errors = [e.value for e in app.error]
    assert any("broken on the TRUE preferences" in e and "said it was met" in e for e in errors)
    assert "BROKEN" in _mopo(_figures(app)[0])["name"]
    true_v1 = next(m for m in app.metric if m.label.startswith("V1 ") and "true value" in m.label)
    assert true_v1.delta.startswith("-")

    app.select_slider(key="explore_margin").set_value(1.64).run()
    assert not app.exception
    enforced = float(next(m for m in app.metric if m.label.startswith("Enforced threshold")).value)
    b1 = app.slider(key="threshold_1").value
    se1 = _estimate_half_width(app, 1) / 1.96
    assert enforced == pytest.approx(b1 + 1.64 * se1, abs=2e-3)  # read off the screen: 3 decimals
    assert any("b1 + z·SE1" in c.value for c in app.caption)
    assert any("holds on the TRUE preferences" in s.value for s in app.success)
    plane = _figures(app)[0]
    assert any(s.get("type") == "line" and s["x0"] == pytest.approx(enforced, abs=1e-3)
               for s in plane["layout"].get("shapes", []))


def test_moving_the_threshold_moves_the_mopo_point(app):
    before = _mopo(_figures(app)[0])
    target = round(app.slider(key="threshold_1").value + 0.05, 2)
    app.slider(key="threshold_1").set_value(target).run()
    assert not app.exception
    after = _mopo(_figures(app)[0])
    assert after["x"][0] == pytest.approx(target, abs=1e-6)  # the constraint is active: V_1 = b
    assert after["y"][0] < before["y"][0]  # a stricter threshold costs primary value on bt_conflict


def test_typing_a_threshold_in_its_box_moves_the_slider_and_the_point(app):
    target = round(app.slider(key="threshold_1").value + 0.037, 3)  # between two slider steps
    app.number_input(key="threshold_1_box").set_value(target).run()
    assert not app.exception
    assert app.slider(key="threshold_1").value == pytest.approx(target)
    assert _mopo(_figures(app)[0])["x"][0] == pytest.approx(target, abs=1e-6)  # the constraint is active: V_1 = b
    app.slider(key="threshold_1").set_value(round(target - 0.007, 2)).run()  # and the box follows the slider
    assert app.number_input(key="threshold_1_box").value == pytest.approx(round(target - 0.007, 2))


def test_tau_changes_the_policy(app):
    before = _figures(app)[1]["data"][0]["y"]
    app.select_slider(key="explore_tau").set_value(1.0).run()
    assert not app.exception
    assert not np.allclose(_figures(app)[1]["data"][0]["y"], before)


def test_unattainable_threshold_shows_the_largest_attainable_value(app):
    slider = app.slider(key="threshold_1")
    slider.set_value(slider.max).run()
    assert not app.exception
    assert any("cannot be met" in e.value and "Largest attainable" in e.value for e in app.error)


def test_three_objectives_give_two_threshold_sliders_and_two_planes(app):
    app.selectbox(key="explore_structure").set_value("three_objectives").run()
    assert not app.exception
    assert app.slider(key="threshold_2") is not None
    assert len(_figures(app)) == 3


def test_robust_eps_reports_robust_bounds(app):
    app.slider(key="explore_eps").set_value(0.05).run()
    assert not app.exception
    table = app.dataframe[0].value
    assert np.isfinite(float(table["robust bound (ε)"].iloc[1]))  # shown as text: row 0 reads "–"


@pytest.mark.parametrize("content, message", [
    (np.full((2, 3, 3), 0.7), "P + P^T != 1"),
    (np.array([[[0.5, 1.5], [-0.5, 0.5]]] * 2), "outside [0, 1]"),
    (np.full((3, 3), 0.5), "expected shape"),
])
def test_bad_upload_shows_an_error_naming_file_and_problem(tmp_path, content, message):
    from app.shared import read_preferences_file

    path = tmp_path / "bad.npy"
    np.save(path, content)
    with pytest.raises(ValueError) as err:
        read_preferences_file("bad.npy", path.read_bytes())
    assert str(err.value).startswith("bad.npy:") and message in str(err.value)


def test_upload_errors_are_shown_on_the_page(monkeypatch):
    import app.shared as shared

    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    at.radio(key="explore_source").set_value("upload").run()
    assert not at.exception
    assert any("Upload a preference file" in i.value for i in at.info)
    # AppTest cannot attach a file: the uploader's handler is exercised through its function
    with pytest.raises(ValueError, match="prefs.txt: expected a .npy or .json file"):
        shared.read_preferences_file("prefs.txt", b"1 2 3")
    with pytest.raises(ValueError, match="missing key 'preferences'"):
        shared.read_preferences_file("prefs.json", json.dumps({"matrices": []}).encode())


def test_a_valid_upload_builds_an_instance():
    from app.shared import uploaded_instance

    prefs = np.full((2, 3, 3), 0.5)
    prefs[:, 0, 1], prefs[:, 1, 0] = [0.9, 0.2], [0.1, 0.8]
    inst = uploaded_instance("ok.json", json.dumps({"preferences": prefs.tolist()}).encode())
    assert inst.n_objectives == 2 and inst.structure.n_responses == 3
    assert inst.problem.solve([0.5], 0.1).feasible


# --------------------------------------------------------------------------- the presenter, without Streamlit


@pytest.fixture(scope="module")
def conflict():
    from mopo_core.experiments.suite import exact_answers
    from synthetic import make_structure

    return exact_answers(make_structure("bt_conflict", n_responses=8, n_prompts=1, seed=0))


def test_exact_data_has_no_uncertainty(conflict):
    from app.presenters import explore as logic

    data = logic.fitted_data(conflict, None)
    answer = logic.solve_mopo(conflict, data, [0.62], 0.08, z=1.64)
    assert np.array_equal(answer.standard_errors, np.zeros(2)) and answer.z == 0
    assert np.allclose(answer.true_values, answer.estimated_values) and np.allclose(answer.enforced, [0.62])
    assert answer.true_values[1] == pytest.approx(0.62, abs=1e-7) and not answer.broken.any()
    assert logic.verdict(answer, conflict.objective_names)[0] == "success"


def test_sampled_answer_reports_truth_estimate_and_standard_errors(conflict):
    from app.presenters import explore as logic
    from mopo_core.tabular.solver import policy_values
    from mopo_core.tabular.uncertainty import standard_errors

    s = conflict.structure
    data = logic.fitted_data(conflict, 400, seed=3)
    assert not np.allclose(data.win_counts, logic.fitted_data(conflict, 400, seed=4).win_counts)
    answer = logic.solve_mopo(conflict, data, [0.62], 0.08, z=1.0)
    assert np.allclose(answer.true_values, policy_values(answer.policy, conflict.rates, s.prompt_weights))
    assert np.allclose(answer.estimated_values, policy_values(answer.policy, data.problem.rates, s.prompt_weights))
    assert not np.allclose(answer.true_values, answer.estimated_values)
    se = standard_errors(answer.policy, data.win_counts, s.behaviour, s.prompt_weights)
    assert np.allclose(answer.standard_errors, se, rtol=1e-6) and (se > 0).all()
    assert answer.enforced == pytest.approx(0.62 + 1.0 * se[1:], abs=1e-6)
    assert np.allclose(answer.upper - answer.lower, 2 * 1.96 * se)
    table = answer.table(conflict.objective_names)
    assert table["met on truth"].iloc[1] == (answer.true_values[1] >= 0.62 - 1e-6)


def test_a_broken_threshold_is_named_in_the_verdict(conflict):
    from app.presenters import explore as logic

    data = logic.fitted_data(conflict, 400, seed=0)
    answer = logic.solve_mopo(conflict, data, [0.65], 0.08)
    assert answer.broken.all() and answer.true_slack[0] < 0 <= answer.estimated_values[1] - 0.65 + 1e-6
    level, message = logic.verdict(answer, conflict.objective_names)
    assert level == "error" and "V1 harmlessness" in message and f"{answer.true_values[1]:.3f} < b1" in message


def test_own_front_passes_through_mopos_point(conflict):
    from app.presenters import explore as logic

    for n in (None, 400):
        data = logic.fitted_data(conflict, n)
        answer = logic.solve_mopo(conflict, data, [0.6], 0.08)
        front = logic.own_front(conflict, data, answer.enforced, 1, 0.08).sort_values("V1_est")
        assert len(front) > 40 and front.kl.min() > 0
        # the point's estimated V1 is its threshold; along the sweep the estimated V0 falls as b rises
        assert np.interp(answer.estimated_values[1], front.V1_est, front.V0_est) == pytest.approx(
            answer.estimated_values[0], abs=2e-3)
        assert np.all(np.diff(front.V0_est.to_numpy()[front.b.to_numpy() > front.b.min()]) <= 1e-9)
    with pytest.raises(ValueError, match="j: the moving threshold"):
        logic.own_front(conflict, data, [0.6], 2, 0.08)


def test_baselines_are_matched_to_a_target_kl(conflict):
    from app.presenters import explore as logic

    data = logic.fitted_data(conflict, None)
    curve = logic.tau_curve("scalarised_ipo", conflict, data)
    rows = logic.at_kl(curve, 0.5, conflict)
    assert len(rows) == 11 and rows.reached.all()
    assert np.allclose(rows.kl, 0.5, atol=1e-8)
    assert ((rows.tau > min(logic.KL_TAUS)) & (rows.tau < np.inf)).all()
    assert not logic.at_kl(curve, np.log(8) + 0.1, conflict).reached.any()  # more than any policy's KL
    assert logic.at_kl(curve, 0.0, conflict).V1.to_numpy() == pytest.approx(conflict.reference_point[1])
    lagrangian = logic.threshold_baseline_at_kl("reward_lagrangian", conflict, data, [0.6], 0.5)
    assert lagrangian.reached.iloc[0] and lagrangian.kl.iloc[0] == pytest.approx(0.5, rel=0.01)
    with pytest.raises(ValueError, match="takes thresholds"):
        logic.tau_curve("reward_lagrangian", conflict, data)


def test_kl_matching_lands_on_the_target_by_an_independent_kl_and_between_the_trained_temperatures(conflict):
    """The root-find's policies have KL = target by mopo_core's own KL (not the presenter's), for targets
    across the trained range and on a four-prompt instance; each effective τ lies between two trained ones."""
    from app.presenters import explore as logic
    from mopo_core.experiments.suite import exact_answers
    from mopo_core.tabular.solver import kl_divergence
    from synthetic import make_structure

    multi = exact_answers(make_structure("multi_prompt", n_responses=6, n_prompts=4, seed=1))
    for exact in (conflict, multi):
        curve = logic.tau_curve("rewarded_soups", exact, logic.fitted_data(exact, None))
        for target in (0.05, 0.4, 1.2):
            policies, taus, reached = logic._match(curve, target)
            assert reached.any()
            for policy, tau in zip(policies[reached], taus[reached]):
                assert kl_divergence(policy, exact.structure.reference, exact.structure.prompt_weights) == \
                    pytest.approx(target, abs=1e-10)
                assert min(logic.KL_TAUS) <= tau
            assert np.allclose(policies.sum(axis=-1), 1.0)


def test_verdict_tells_unattainable_from_broken_and_data_infeasible_from_truth(conflict):
    from app.presenters import explore as logic

    top = conflict.attainable_max[1:]
    data = logic.fitted_data(conflict, 100)
    beyond = logic.solve_mopo(conflict, data, top + 0.005, 0.08)
    level, message = logic.verdict(beyond, conflict.objective_names, top)
    assert level == "error" and "no policy reaches b1 on the truth" in message
    assert "cannot be met" in message  # the data cannot meet it either
    level, message = logic.verdict(logic.solve_mopo(conflict, data, [0.7], 0.08, z=1.64), conflict.objective_names, top)
    assert level == "warning" and "cannot be met" in message and "holds on the TRUE preferences" in message


# --------------------------------------------------------------------------- plain words and formats (issue 15, item 7)


def test_a_non_npy_file_renamed_npy_is_named_plainly_and_never_unpickled(tmp_path):
    import pickle

    from app.shared import read_preferences_file

    for content in (b"primary,secondary\n0.5,0.5\n", pickle.dumps(np.full((2, 3, 3), 0.5)), b"PK\x03\x04" + b"0" * 40):
        with pytest.raises(ValueError) as err:
            read_preferences_file("prefs.npy", content)
        message = str(err.value)
        assert message.startswith("prefs.npy: not a NumPy .npy array file") and "allow_pickle" not in message


def test_screen_numbers_are_rounded_and_empty_cells_read_a_dash():
    from app.shared import EMPTY, number_text, readable_table

    assert number_text(-5e-15) == "0.000" and number_text(-5e-15, signed=True) == "0.000"
    assert number_text(0.00049, signed=True) == "0.000" and number_text(-0.0006, signed=True) == "-0.001"
    assert number_text(0.63012) == "0.630" and number_text(0.0123, signed=True) == "+0.012"
    assert number_text(None) == number_text(float("nan")) == EMPTY == "–"
    assert number_text(True) == "yes" and number_text(np.bool_(False)) == "no" and number_text(12) == "12"
    frame = pd.DataFrame({"v": [0.123456, np.nan], "w": [0.5, -1e-9], "met": [None, True], "name": ["a", "b"]})
    styled, texts = readable_table(frame)
    assert texts == ["v", "met"]  # an empty cell or a flag: text ("–", "yes"), never "None" nor a checkbox
    assert list(styled.data.v) == ["0.123", "–"] and list(styled.data.met) == ["–", "yes"]
    assert list(styled.data.w) == [0.5, -1e-9]  # a full numeric column keeps its values underneath, shown rounded
    html = styled.to_html()
    assert "0.500" in html and "-0.000" not in html and "None" not in html


def test_one_default_tau_for_every_page(app):
    from app.presenters.train import DEFAULTS
    from app.shared import DEFAULT_TAU

    assert app.select_slider(key="explore_tau").value == DEFAULT_TAU == DEFAULTS["tau"]


def test_the_slack_never_reads_minus_zero_and_the_table_is_rounded(app):
    for metric in app.metric:
        assert "-0.000" not in (metric.delta or "") and "-0.000" not in metric.value
    true_v1 = next(m for m in app.metric if m.label.startswith("V1 ") and "true value" in m.label)
    assert len(true_v1.value.split(".")[1]) == 3  # three decimals on screen
    table = app.dataframe[0].value
    assert table["threshold b"].iloc[0] == "–" and table["met on truth"].tolist() == ["–", "yes"]
    assert table["true value"].iloc[1] == pytest.approx(float(true_v1.value), abs=5e-4)  # full value underneath


def test_only_win_rate_charts_carry_the_win_rate_subtitle(app):
    plane, policy = _figures(app)
    assert "values are win-rates against the behaviour policy" in plane["layout"]["title"]["text"]
    assert "win-rates" not in policy["layout"]["title"]["text"]
    assert "probability π(y | x)" in policy["layout"]["title"]["text"]


def test_many_prompts_draw_the_policy_as_a_heatmap(app):
    app.selectbox(key="explore_structure").set_value("multi_prompt").run()
    app.slider(key="explore_m").set_value(16).run()
    assert not app.exception
    policy = _figures(app)[-1]
    assert [t["type"] for t in policy["data"]] == ["heatmap"]
    heat = policy["data"][0]
    assert np.array(heat["z"]).shape == (16, 8)
    assert np.allclose(np.array(heat["z"]).sum(axis=1), 1.0)
    assert heat["colorbar"]["title"]["text"] == "π(y | x)"
    assert policy["layout"]["xaxis"]["title"]["text"] == "response index"
    assert policy["layout"]["yaxis"]["title"]["text"] == "prompt"
    assert "win-rates" not in policy["layout"]["title"]["text"]
    app.slider(key="explore_m").set_value(6).run()
    assert not app.exception
    assert [t["type"] for t in _figures(app)[-1]["data"]].count("bar") == 6  # few prompts: one bar series each
