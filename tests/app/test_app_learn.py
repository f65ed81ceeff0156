"""The Learn page through Streamlit's AppTest: every step renders, the widgets drive the figures,
Step / Play / Reset move the dual iterate, and the capability table is there."""
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app_support import figures

from app.presenters.learn import QUESTIONS

PAGE = Path(__file__).parents[2] / "app" / "views" / "learn.py"


def _figure(at, title_start: str) -> dict:
    matches = [f for f in figures(at) if f["layout"]["title"]["text"].startswith(title_start)]
    assert len(matches) == 1, [f["layout"]["title"]["text"] for f in figures(at)]
    return matches[0]


def _trace(fig: dict, name_start: str) -> dict:
    return next(t for t in fig["data"] if t.get("name", "").startswith(name_start))


def _array(value) -> np.ndarray:
    return np.asarray(value, dtype=float)


def _y(fig: dict, name_start: str) -> np.ndarray:
    return _array(_trace(fig, name_start)["y"])


@pytest.fixture()
def app():
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.run()
    assert not at.exception
    return at


def test_every_step_renders_with_the_figure_conventions(app):
    headers = [h.value for h in app.header]
    assert [h.split(" · ")[0] for h in headers] == ["1", "2", "3", "4", "5", "6"]
    figs = figures(app)
    assert len(figs) == 10
    for fig in figs:
        title = fig["layout"]["title"]["text"]
        assert "<br><sup>" in title  # a subtitle saying what the values are (which: the test below)
        assert fig["layout"]["showlegend"] is True
        y_axes = [v for k, v in fig["layout"].items() if k.startswith("yaxis")]
        x_axes = [v for k, v in fig["layout"].items() if k.startswith("xaxis")]
        assert y_axes and all(ax.get("title", {}).get("text") for ax in y_axes), title
        assert any(ax.get("title", {}).get("text") for ax in x_axes), title  # stacked panels share one
        for trace in fig["data"]:  # every point and bar says what it is
            assert trace.get("hovertemplate"), (title, trace.get("name"))
    plane = _figure(app, "Responses on the value plane")
    names = [t["name"] for t in plane["data"]]
    assert any("exact front" in n for n in names) and any("reference policy" in n for n in names)
    assert len(app.latex) >= 4


def test_moving_lambda_changes_the_tilt(app):
    before = _y(_figure(app, "Reference against the tilt"), "tilted")
    app.slider(key="learn_lambda").set_value(3.0).run()
    assert not app.exception
    fig = _figure(app, "Reference against the tilt")
    after = _y(fig, "tilted")
    assert not np.allclose(before, after)
    assert after.sum() == pytest.approx(1.0, abs=1e-9)
    # a hand tilt of the reference bars by the win-rates of step 2 (tau = 0.08, the default)
    ref = _y(fig, "reference")
    rates = _figure(app, "Win-rate of each response")
    w0, w1 = _y(rates, "w₀"), _y(rates, "w₁")
    expected = ref * np.exp((w0 + 3.0 * w1) / 0.08)
    np.testing.assert_allclose(after, expected / expected.sum(), rtol=1e-9)
    # the policy's point on the value plane is the tilt's expected win-rates
    point = _trace(_figure(app, "The tilt's values"), "π_λ at")
    assert _array(point["x"])[0] == pytest.approx(after @ w1, abs=1e-9)
    assert _array(point["y"])[0] == pytest.approx(after @ w0, abs=1e-9)


def test_step_advances_the_counter_and_the_lambda_trace(app):
    assert app.session_state["learn_step"] == 0
    lam = lambda at: _y(_figure(at, "One dual step at a time"), "λ_t")
    assert lam(app).tolist() == [0.0]
    app.button(key="learn_step_button").click().run()
    assert not app.exception
    assert app.session_state["learn_step"] == 1
    assert any(m.label == "Step" and m.value == "1 / 30" for m in app.metric)
    after = lam(app)
    # the paper's update from lambda = 0: lambda_1 = max(0, -eta (V_1(pi_0) - b)), eta = 4 tau / range(w_1)^2
    v1 = _y(_figure(app, "One dual step at a time"), "V₁(π_λt)")
    b = app.slider(key="learn_threshold").value
    w1 = _y(_figure(app, "Win-rate of each response"), "w₁")
    eta = 4 * 0.08 / np.ptp(w1) ** 2
    assert len(after) == 2 and v1[0] < b
    assert after[1] == pytest.approx(max(0.0, -eta * (v1[0] - b)), rel=1e-9)
    app.button(key="learn_step_button").click().run()
    assert app.session_state["learn_step"] == 2 and len(lam(app)) == 3
    app.button(key="learn_reset_button").click().run()
    assert app.session_state["learn_step"] == 0 and lam(app).tolist() == [0.0]


def _play_to_the_end(app) -> list[int]:
    """Click Play, then rerun as the browser's fragment timer would, until Play stops; the step drawn each run."""
    app.button(key="learn_play_button").click().run()
    assert not app.exception
    drawn = [app.session_state["learn_step"]]
    for _ in range(40):
        if not app.session_state["learn_playing"]:
            break
        app.run()
        assert not app.exception
        drawn.append(app.session_state["learn_step"])
    assert not app.session_state["learn_playing"]
    return drawn


def test_play_draws_every_frame_to_the_exact_multiplier_and_a_new_threshold_restarts(app):
    drawn = _play_to_the_end(app)
    assert sorted(set(drawn)) == list(range(31))  # every step 0..30 drawn once, none skipped
    assert drawn[:31] == list(range(31))
    assert app.session_state["learn_step"] == 30
    assert any(m.label == "Step" and m.value == "30 / 30" for m in app.metric)
    fig = _figure(app, "One dual step at a time")
    lam, lam_star = _y(fig, "λ_t"), _y(fig, "exact λ*")[0]
    assert len(lam) == 31 and lam[-1] == pytest.approx(lam_star, rel=1e-3)
    v1 = _y(fig, "V₁(π_λt)")
    assert v1[-1] == pytest.approx(app.slider(key="learn_threshold").value, abs=1e-3)
    assert any(b.label == "Data CSV" for b in app.get("download_button"))
    slider = app.slider(key="learn_threshold")
    slider.set_value(round(slider.value - 0.03, 2)).run()
    assert not app.exception and app.session_state["learn_step"] == 0


def test_typing_the_threshold_in_its_box_moves_the_slider_and_the_dual_steps(app):
    target = round(app.slider(key="learn_threshold").value - 0.023, 3)  # between two slider steps
    app.number_input(key="learn_threshold_box").set_value(target).run()
    assert not app.exception
    assert app.slider(key="learn_threshold").value == pytest.approx(target)
    _play_to_the_end(app)
    assert _y(_figure(app, "One dual step at a time"), "V₁(π_λt)")[-1] == pytest.approx(target, abs=1e-3)
    app.slider(key="learn_threshold").set_value(0.6).run()  # and the box follows the slider
    assert app.number_input(key="learn_threshold_box").value == pytest.approx(0.6)


def test_a_new_instance_starts_its_threshold_at_its_own_default(app):
    default = app.slider(key="learn_threshold").value
    app.number_input(key="learn_threshold_box").set_value(round(default - 0.05, 3)).run()
    assert app.slider(key="learn_threshold").value == pytest.approx(default - 0.05)
    app.number_input(key="learn_seed").set_value(1).run()  # another instance: another range and default
    assert not app.exception
    inst = AppTest.from_file(str(PAGE), default_timeout=60)
    inst.session_state["learn_seed"] = 1
    inst.run()
    fresh = inst.slider(key="learn_threshold").value  # what a first visit to seed 1 shows
    assert app.slider(key="learn_threshold").value == pytest.approx(fresh)
    assert app.number_input(key="learn_threshold_box").value == pytest.approx(fresh)


def test_only_win_rate_charts_carry_the_win_rate_subtitle(app):
    titles = [f["layout"]["title"]["text"] for f in figures(app)]
    win_rates = "values are win-rates against the behaviour policy"

    def title(start: str) -> str:
        (found,) = [t for t in titles if t.startswith(start)]
        return found

    for chart in ("Win-rate of each response", "Responses on the value plane", "The tilt's values"):
        assert win_rates in title(chart)
    for chart, says in (("Reference policy over", "probability π(y | x)"), ("Reference against the tilt", "probability"),
                        ("Pairwise preferences", "P_k(y ≻ y′)"), ("Distance from the reference", "nats"),
                        ("One dual step at a time", "multiplier λ_t")):
        assert win_rates not in title(chart) and says in title(chart)


def test_presentation_mode_has_large_dark_fonts_and_one_line_of_numbers(app):
    app.session_state["presentation"] = True
    app.run()
    assert not app.exception
    for fig in figures(app):
        layout = fig["layout"]
        assert layout["font"]["size"] >= 18 and layout["font"]["color"] == "#111111"
        axes = [v for k, v in layout.items() if k.startswith(("xaxis", "yaxis"))]
        assert all(ax["tickfont"]["color"] == "#111111" and ax["tickfont"]["size"] >= 16 for ax in axes)
    assert not any(m.label == "Step" for m in app.metric)  # the step's numbers are one line beside the buttons
    assert any(md.value.startswith("**Step 0 / 30**") for md in app.markdown)
    steps = _figure(app, "One dual step at a time")
    assert steps["layout"]["height"] < 600


def test_unattainable_threshold_warns_and_the_steps_stay_finite(app):
    slider = app.slider(key="learn_threshold")
    slider.set_value(slider.max).run()
    assert not app.exception
    assert any("cannot be met" in w.value for w in app.warning)
    _play_to_the_end(app)
    assert np.isfinite(_y(_figure(app, "One dual step at a time"), "λ_t")).all()


def test_tau_changes_the_tilt_and_the_taufigures(app):
    before = _y(_figure(app, "Reference against the tilt"), "tilted")
    app.select_slider(key="learn_tau").set_value(0.5).run()
    assert not app.exception
    assert not np.allclose(before, _y(_figure(app, "Reference against the tilt"), "tilted"))
    fig = _figure(app, "Distance from the reference")
    assert np.all(np.diff(_y(fig, "KL")) < 0)  # a stronger leash, a smaller KL
    assert _array(_trace(fig, "sidebar τ")["x"]).tolist() == [0.5]


def test_capability_table_is_present(app):
    tables = [el.value for el in app.dataframe]
    caps = [df for df in tables if "Method" in df.columns]
    assert len(caps) == 1
    assert list(caps[0].columns) == ["Method", *QUESTIONS] and len(caps[0]) == 8
    assert caps[0].notna().all().all()
    assert any("Rewarded Soups" in md.value for md in app.markdown)  # the answers in full


def test_other_structures_render(app):
    app.selectbox(key="learn_structure").set_value("cyclic").run()
    assert not app.exception
    app.slider(key="learn_n").set_value(4).run()
    assert not app.exception
    assert len(_y(_figure(app, "Reference against the tilt"), "tilted")) == 4


def test_the_default_tau_is_the_one_every_page_starts_at(app):
    from app.shared import DEFAULT_TAU

    assert app.select_slider(key="learn_tau").value == DEFAULT_TAU
