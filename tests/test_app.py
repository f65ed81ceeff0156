"""The Explore page through Streamlit's AppTest: widgets drive the figures; no exception."""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest


def _figures(at):
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


@pytest.fixture()
def app():
    at = AppTest.from_file(str(Path(__file__).parents[1] / "app" / "main.py"), default_timeout=60)
    at.run()
    assert not at.exception
    return at


def test_explore_renders_front_reference_and_policy(app):
    figs = _figures(app)
    names = [trace.get("name", "") for trace in figs[0]["data"]]
    assert any("exact front" in n for n in names) and any("reference policy" in n for n in names)
    assert "maximised" in figs[0]["layout"]["title"]["text"]
    assert len(figs) == 2


def test_moving_the_threshold_moves_the_mopo_point(app):
    point = lambda at: [t for t in _figures(at)[0]["data"] if t["name"].startswith("MOPO")][0]
    before = point(app)
    target = round(app.slider(key="threshold").value + 0.05, 2)
    app.slider(key="threshold").set_value(target).run()
    assert not app.exception
    after = point(app)
    assert after["x"][0] == pytest.approx(target, abs=1e-6)  # the constraint is active: V_1 = b
    assert after["y"][0] < before["y"][0]  # a stricter threshold costs primary value on bt_conflict


def test_unattainable_threshold_shows_an_error(app):
    slider = app.slider(key="threshold")
    slider.set_value(slider.max).run()
    assert not app.exception
    assert any("cannot be met" in e.value for e in app.error)
