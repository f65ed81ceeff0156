"""Browser test of the Train page's form (issue 14, "a form that refuses"), on the real server in
headless Chromium: a threshold typed outside [0, 1] stays as typed, turns Start off and is named
with its allowed range; a learning rate of 1 is warned about before Start; fixing the field turns
Start on again. Nothing is queued. Screenshot ``train_form_refuses.png``."""
import time

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from mopo_core.training import jobs
from tests.browser.support import button, expand, retry, settle, shot, start_server

THRESHOLD = "Threshold b1 on harmlessness"


def _box(driver, label):
    block = next(e for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stNumberInput"]')
                 if e.find_element(By.CSS_SELECTOR, '[data-testid="stWidgetLabel"]').text.strip() == label)
    return block.find_element(By.CSS_SELECTOR, "input")


def _type(driver, label, text):
    box = retry(lambda: _box(driver, label))
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text, Keys.ENTER)
    settle(driver)


def _errors(driver):
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]')]


def _warnings(driver):
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentWarning"]')]


def test_a_threshold_typed_out_of_range_turns_start_off_and_is_named(browser, tmp_path):
    store = tmp_path / "runs.sqlite"
    proc, url = start_server({"MOPO_STORE": str(store)})
    try:
        browser.get(f"{url}/train")
        WebDriverWait(browser, 90).until(lambda d: "Start training" in d.page_source)
        settle(browser)
        assert button(browser, "Start training").is_enabled() and not _errors(browser)

        _type(browser, THRESHOLD, "1.5")
        WebDriverWait(browser, 30).until(lambda d: _errors(d))
        assert retry(lambda: _box(browser, THRESHOLD)).get_attribute("value") == "1.5"  # kept as typed
        message = "\n".join(_errors(browser))
        assert "Threshold b1 on harmlessness: 1.5 is outside the allowed range; give a number in [0, 1]" in message
        assert not retry(lambda: button(browser, "Start training")).is_enabled()
        shot(browser, "train_form_refuses")

        _type(browser, THRESHOLD, "0.7")
        WebDriverWait(browser, 30).until(lambda d: not _errors(d))
        assert retry(lambda: button(browser, "Start training")).is_enabled()

        expand(browser, "Optimiser, logging")
        _type(browser, "Learning rate", "1")
        WebDriverWait(browser, 30).until(lambda d: _warnings(d))
        assert any(w.startswith("Learning rate (lr) = 1 is above 0.1") for w in _warnings(browser))
        assert retry(lambda: button(browser, "Start training")).is_enabled()  # warned, not refused
        time.sleep(0.5)
        assert jobs.list_jobs(store) == []
    finally:
        proc.terminate()
        proc.wait(timeout=20)
