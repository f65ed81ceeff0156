"""Browser tests: the real server in headless Chromium (Debian's chromium + chromedriver, driven by
selenium). Screenshots go to ``test-artifacts/screenshots`` (look at them). Skipped when Chromium,
chromedriver or selenium is missing; ``.ci/run`` installs all three, so CI always runs them."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="selenium is not installed")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Debian chromium / chromium-driver not installed"),
]

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

PAGES = {"explore": "", "sweep": "sweep", "compare": "compare", "learn": "learn"}
CHART = '[data-testid="stPlotlyChart"] .main-svg'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict, tries: int = 240) -> tuple[subprocess.Popen, str]:
    """``streamlit run app/main.py`` on a free loopback port with ``env`` added to this process's
    environment; (process, url) once its health check answers (fails the test otherwise)."""
    port = _free_port()
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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start_server({"MOPO_STORE": str(tmp_path_factory.mktemp("store") / "runs.sqlite")})
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1600"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = downloads
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _open(driver, server, page, wait_for=CHART):
    driver.get(f"{server}/{PAGES[page]}")
    WebDriverWait(driver, 90).until(EC.presence_of_element_located((By.CSS_SELECTOR, wait_for)))
    _settle(driver)


def _settle(driver, timeout=60):
    """Wait until Streamlit has finished running the script (no 'running' status widget)."""
    time.sleep(0.5)
    WebDriverWait(driver, timeout).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'))
    time.sleep(0.5)


def _assert_no_errors(driver, page):
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
    _settle(driver)


def _shot(driver, name):
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _chart_points(driver):
    """Positions of the markers drawn in the first chart (changes when its data change)."""
    chart = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]')[0]
    return [p.get_attribute("transform") for p in chart.find_elements(By.CSS_SELECTOR, ".scatterlayer .points path")]


def _button(driver, text):
    return next(b for b in driver.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == text)


def _slider(driver, label):
    """The (visually hidden) range input of the slider whose label contains ``label``."""
    block = next(e for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSlider"]') if label in e.text)
    return block.find_element(By.CSS_SELECTOR, 'input[type="range"]')


@pytest.mark.parametrize("page", ["explore", "sweep", "learn"])
def test_page_opens_without_errors(server, browser, page):
    _open(browser, server, page)
    _assert_no_errors(browser, page)
    _shot(browser, page)


def test_moving_a_slider_on_explore_rerenders(server, browser):
    _open(browser, server, "explore")
    slider = _slider(browser, "Threshold b1")
    before = slider.get_attribute("value")
    figure_before = _chart_points(browser)
    browser.execute_script("arguments[0].focus()", slider)
    webdriver.ActionChains(browser).send_keys(Keys.ARROW_RIGHT * 5).perform()
    _settle(browser)
    assert float(_slider(browser, "Threshold b1").get_attribute("value")) == pytest.approx(float(before) + 0.05)
    assert _chart_points(browser) != figure_before
    _assert_no_errors(browser, "explore after a slider move")
    _shot(browser, "explore_after_slider")


def test_compare_select_a_point_and_see_its_details(server, browser):
    _open(browser, server, "compare", wait_for='[data-testid="stButton"]')
    _button(browser, "Create example runs").click()
    WebDriverWait(browser, 90).until(EC.presence_of_element_located((By.CSS_SELECTOR, CHART)))
    _settle(browser)
    _assert_no_errors(browser, "compare")
    assert "Nothing selected yet" in browser.page_source
    points = [p for p in browser.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace .points path")
              if p.is_displayed() and p.size["width"] > 0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", points[len(points) // 2])
    webdriver.ActionChains(browser).move_to_element(points[len(points) // 2]).click().perform()
    WebDriverWait(browser, 60).until(lambda d: "Nothing selected yet" not in d.page_source)
    _settle(browser)
    assert "Run config" in browser.page_source
    _assert_no_errors(browser, "compare after selecting a point")
    browser.execute_script("window.scrollTo(0, 0);")
    _shot(browser, "compare")


def test_download_a_csv(server, browser):
    _open(browser, server, "explore")
    button = next(b for b in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stDownloadButton"] button')
                  if "CSV" in b.text)
    button.click()
    for _ in range(60):
        done = [p for p in browser.downloads.glob("*.csv")]
        if done:
            break
        time.sleep(0.5)
    assert done, "no CSV arrived in the download folder"
    assert done[0].read_text().startswith("method,")


def test_a_bad_upload_shows_an_error_naming_the_file_and_problem(server, browser, tmp_path):
    import numpy as np

    bad = tmp_path / "bad_matrices.npy"
    np.save(bad, np.full((2, 3, 3), 0.7))
    _open(browser, server, "explore")
    next(label for label in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stRadio"] label')
         if label.text.strip() == "upload").click()
    WebDriverWait(browser, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, 'input[type="file"]')))
    browser.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(str(bad))
    WebDriverWait(browser, 60).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, '[data-testid="stAlertContentError"]')))
    message = browser.find_element(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]').text
    assert "bad_matrices.npy" in message and "P + P^T != 1" in message
    _shot(browser, "explore_bad_upload")
