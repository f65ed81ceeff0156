"""Browser tests: the real Streamlit server (``streamlit run app/main.py``) in headless Chromium,
driven by selenium. Holds the fixtures (``server``: a server over a temporary store; ``browser``:
one headless Chromium per module) and the skip rules: every test here is ``slow``; skipped when
Debian's chromium / chromium-driver are missing, not collected when selenium is not installed.
``.ci/run`` installs all three, so CI always runs them. Plain helpers are in ``support.py``."""
import importlib.util
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

if importlib.util.find_spec("selenium") is None:
    collect_ignore_glob = ["test_*.py"]  # selenium is not installed: none of these can run


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Mark the tests of this folder ``slow`` (before ``-m`` selects), and skip them without Chromium."""
    missing = pytest.mark.skip(reason="Debian chromium / chromium-driver not installed")
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
            if not (CHROMIUM and CHROMEDRIVER):
                item.add_marker(missing)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app's server over a fresh temporary store; its url."""
    from tests.browser.support import start_server

    proc, url = start_server({"MOPO_STORE": str(tmp_path_factory.mktemp("store") / "runs.sqlite")})
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium (one per module) downloading into a temporary folder (``driver.downloads``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from tests.browser.support import ARTIFACTS

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
