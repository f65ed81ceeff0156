"""The Explore page through Streamlit's AppTest: widgets drive the figures; bad uploads are named."""
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app_support import figures

PAGE = str(Path(__file__).parents[2] / "app" / "views" / "explore.py")


def _figures(at):
    return figures(at)


def _trace(fig, name):
    return next(t for t in fig["data"] if t.get("name") == name)


@pytest.fixture()
def app():
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception
    return at


def test_default_page_shows_front_reference_baselines_and_policy(app):
    value_plane, policy = _figures(app)
    names = [t.get("name", "") for t in value_plane["data"]]
    assert {"MOPO", "reference policy", "scalarised_ipo", "rewarded_soups"} <= set(names)
    assert any(n.startswith("exact front") for n in names)
    assert "maximised" in value_plane["layout"]["title"]["text"]
    assert "higher is better" in value_plane["layout"]["xaxis"]["title"]["text"]
    assert all("hovertemplate" in t for t in value_plane["data"])
    assert len(_trace(value_plane, "scalarised_ipo")["x"]) == 11
    assert policy["data"][0]["type"] == "bar"
    assert any("Feasible" in s.value for s in app.success)


def test_moving_the_threshold_moves_the_mopo_point(app):
    before = _trace(_figures(app)[0], "MOPO")
    target = round(app.slider(key="threshold_1").value + 0.05, 2)
    app.slider(key="threshold_1").set_value(target).run()
    assert not app.exception
    after = _trace(_figures(app)[0], "MOPO")
    assert after["x"][0] == pytest.approx(target, abs=1e-6)  # the constraint is active: V_1 = b
    assert after["y"][0] < before["y"][0]  # a stricter threshold costs primary value on bt_conflict


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
    assert np.isfinite(table["robust bound (ε)"].iloc[1])


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
