"""Helpers shared by the browser tests (plain functions, no fixtures): start the real server, open a
page and wait for Streamlit to settle, find buttons and sliders, retry an action whose element was
redrawn, take screenshots (``test-artifacts/screenshots``). The fixtures and skip rules are in
``tests/browser/conftest.py``."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
PAGES = {"explore": "", "sweep": "sweep", "compare": "compare", "learn": "learn"}
CHART = '[data-testid="stPlotlyChart"] .main-svg'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict, tries: int = 240) -> tuple[subprocess.Popen, str]:
    """``streamlit run app/main.py`` on a free loopback port with ``env`` added to this process's
    environment; (process, url) once its health check answers (fails the test otherwise)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(tries):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("the server did not start")


def open_page(driver, server, page, wait_for=CHART):
    driver.get(f"{server}/{PAGES[page]}")
    WebDriverWait(driver, 90).until(EC.presence_of_element_located((By.CSS_SELECTOR, wait_for)))
    settle(driver)


def settle(driver, timeout=60):
    """Wait until Streamlit has finished running the script (no 'running' status widget)."""
    time.sleep(0.5)
    WebDriverWait(driver, timeout).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'))
    time.sleep(0.5)


def assert_no_errors(driver, page):
    exceptions = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    assert not exceptions, f"{page}: {exceptions[0].text[:500]}"
    errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]')]
    assert not errors, f"{page}: error shown: {errors}"


def retry(action, tries=10):
    """``action()``, again while the element it used was redrawn by the page's rerun or polling."""
    for i in range(tries):
        try:
            return action()
        except (StaleElementReferenceException, StopIteration):
            if i == tries - 1:
                raise
            time.sleep(0.5)


def expand(driver, title):
    """Click the expander whose summary contains ``title`` (opens it, or closes an open one)."""
    retry(lambda: next(e for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stExpander"] summary')
                       if title in e.text).click())
    settle(driver)


def shot(driver, name):
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def chart_points(driver):
    """Positions of the markers drawn in the first chart (changes when its data change)."""
    chart = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]')[0]
    return [p.get_attribute("transform") for p in chart.find_elements(By.CSS_SELECTOR, ".scatterlayer .points path")]


def grown_left_margins(driver) -> list[tuple[str, float, float]]:
    """(title, the figure's left margin, the one Plotly drew) of each chart on the page whose left margin
    Plotly's automargin had to grow: growing it draws the chart a second time (app.shared.left_margin)."""
    return [tuple(row) for row in driver.execute_script(
        "return [...document.querySelectorAll('.js-plotly-plot')].map(g => [(g.layout.title || {}).text || '', "
        "g._fullLayout.margin.l, g._fullLayout._size.l]).filter(r => r[2] > r[1] + 0.5)")]


def button(driver, text):
    return next(b for b in driver.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == text)


def slider(driver, label):
    """The (visually hidden) range input of the slider whose label contains ``label``."""
    block = next(e for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSlider"]') if label in e.text)
    return block.find_element(By.CSS_SELECTOR, 'input[type="range"]')


def compare_with_example_runs(driver, server):
    """Open Compare on an empty store, create the example runs and wait until the page has drawn
    them without an error."""
    open_page(driver, server, "compare", wait_for='[data-testid="stButton"]')
    button(driver, "Create example runs").click()
    WebDriverWait(driver, 90).until(EC.presence_of_element_located((By.CSS_SELECTOR, CHART)))
    settle(driver)
    assert_no_errors(driver, "compare")
