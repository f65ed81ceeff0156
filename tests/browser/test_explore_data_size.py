"""Browser test of Explore's data-size control: the real server in headless Chromium. Moving the
"comparisons per prompt" slider re-fits MOPO on that many sampled comparisons, and the interval shown
next to each estimate (estimate ± 1.96·SE) narrows as n grows. Screenshots go to
``test-artifacts/screenshots``; skipped without Chromium / chromedriver / selenium (conftest.py)."""
import re

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.support import open_page, retry, settle, shot, slider

LABEL = "Comparisons per prompt"


def move(driver, keys):
    """Focus the data-size slider's handle and press ``keys``; wait for the rerun."""
    def press():
        driver.execute_script("arguments[0].focus()", slider(driver, LABEL))
        webdriver.ActionChains(driver).send_keys(keys).perform()
    retry(press)
    settle(driver)


def wait_for_text(driver, text):
    """Wait until the page shows ``text`` (the data caption is the last element of Explore's page, drawn at
    the end of a run that may outlast ``settle``'s first look), then settle."""
    WebDriverWait(driver, 90, poll_frequency=0.25).until(lambda d: text in d.page_source)
    settle(driver)


def interval(driver, objective: int = 1) -> tuple[float, float]:
    """(estimate, half-width) read from the metric 'V<objective> … estimate ± 1.96·SE'."""
    def read():
        metric = next(m for m in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]')
                      if m.text.startswith(f"V{objective} ") and "estimate" in m.text)
        value = metric.find_element(By.CSS_SELECTOR, '[data-testid="stMetricValue"]').text
        found = re.search(r"([0-9.]+) ± ([0-9.]+)", value)
        return float(found.group(1)), float(found.group(2))
    return retry(read)


def assert_no_errors_but_broken(driver):
    """No exception on the page; an error box is allowed only when it says a threshold broke on the truth."""
    errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]')]
    if all("broken on the TRUE preferences" in e for e in errors):
        errors = []
    assert not errors, f"explore: error shown: {errors}"
    exceptions = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    assert not exceptions, exceptions[0].text[:500]


def test_moving_the_data_size_changes_the_interval(server, browser):
    open_page(browser, server, "explore")
    assert "estimate ± 1.96·SE" not in browser.page_source  # exact preferences by default: nothing estimated
    move(browser, Keys.HOME)  # the smallest data size, n = 100
    wait_for_text(browser, "Data: 100 comparisons per prompt")
    small = interval(browser)
    assert_no_errors_but_broken(browser)
    move(browser, Keys.ARROW_RIGHT * 3)  # n = 6400
    wait_for_text(browser, "Data: 6400 comparisons per prompt")
    large = interval(browser)
    assert_no_errors_but_broken(browser)
    assert small != large
    assert large[1] < small[1] / 4  # SE ~ 1/sqrt(n): 64x the comparisons, about 8x narrower
    assert "true value" in browser.page_source
    shot(browser, "explore_data_size")
