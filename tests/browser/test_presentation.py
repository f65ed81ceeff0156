"""Browser tests of teaching on a projector (1280×720): the sidebar's "Presentation (projector)" toggle puts
Learn's Step buttons and its λ chart on one screen, and Explore's main plot is on the first screen with or
without it. The real server in headless Chromium; screenshots go to ``test-artifacts/screenshots``;
skipped without Chromium / chromedriver / selenium (conftest.py)."""
import pytest
from selenium.webdriver.common.by import By

from tests.browser.support import assert_no_errors, button, grown_left_margins, open_page, retry, settle, shot

WIDTH, HEIGHT = 1280, 720
HEADER_PX = 60  # Streamlit's header bar, drawn over the top of the page


@pytest.fixture()
def projector(browser):
    """The browser with a 1280×720 viewport (restored afterwards)."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    yield browser
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def present(driver):
    """Switch the sidebar's "Presentation (projector)" toggle on and wait for the rerun."""
    retry(lambda: next(e for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stCheckbox"] label')
                       if "Presentation" in e.text).click())
    settle(driver)


def rect(driver, element) -> dict:
    return driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", element)


def chart_titled(driver, title):
    return next(c for c in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]')
                if title in c.get_attribute("textContent"))


def plot_area(driver, chart):
    """The first chart's plotting area (Plotly's main drag rectangle), in viewport coordinates."""
    return rect(driver, chart.find_element(By.CSS_SELECTOR, ".nsewdrag"))


def test_learn_step_buttons_and_lambda_chart_share_one_screen_in_presentation_mode(server, projector):
    driver = projector
    open_page(driver, server, "learn")
    present(driver)
    assert driver.execute_script("return window.innerHeight") == HEIGHT
    chart = chart_titled(driver, "One dual step at a time")
    driver.execute_script("arguments[0].scrollIntoView({block: 'end'})", chart)  # its bottom on the screen's
    settle(driver)
    step, chart_box = rect(driver, button(driver, "Step ▶")), rect(driver, chart_titled(driver, "One dual step"))
    height = driver.execute_script("return window.innerHeight")
    assert HEADER_PX - 10 <= step["top"] and step["bottom"] <= height, step
    assert 0 <= chart_box["top"] and chart_box["bottom"] <= height + 1, chart_box
    assert_no_errors(driver, "learn in presentation mode")
    shot(driver, "learn_presentation_1280x720")


@pytest.mark.parametrize("presentation", [False, True], ids=["normal", "presentation"])
def test_explore_main_plot_is_on_the_first_screen(server, projector, presentation):
    driver = projector
    open_page(driver, server, "explore")
    if presentation:
        present(driver)
    assert "Start here" in driver.page_source
    area = plot_area(driver, driver.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]')[0])
    assert HEADER_PX <= area["top"] and area["bottom"] <= driver.execute_script("return window.innerHeight"), area
    assert not grown_left_margins(driver), f"drawn twice to grow the left margin: {grown_left_margins(driver)}"
    assert_no_errors(driver, "explore")
    shot(driver, f"explore_{'presentation' if presentation else 'normal'}_1280x720")
