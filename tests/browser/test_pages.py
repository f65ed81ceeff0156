"""Browser tests of the tabular pages (Explore, Sweep, Learn, Compare): the real server in headless
Chromium (Debian's chromium + chromedriver, driven by selenium). Screenshots go to
``test-artifacts/screenshots`` (look at them). Skipped when Chromium, chromedriver or selenium is
missing (tests/browser/conftest.py); ``.ci/run`` installs all three, so CI always runs them."""
import time

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.support import (
    assert_no_errors,
    chart_points,
    compare_with_example_runs,
    grown_left_margins,
    open_page,
    settle,
    shot,
    slider,
)


@pytest.mark.parametrize("page", ["explore", "sweep", "learn"])
def test_page_opens_without_errors(server, browser, page):
    open_page(browser, server, page)
    assert_no_errors(browser, page)
    assert not grown_left_margins(browser), f"drawn twice to grow the left margin: {grown_left_margins(browser)}"
    shot(browser, page)


def test_moving_a_slider_on_explore_rerenders(server, browser):
    open_page(browser, server, "explore")
    handle = slider(browser, "Threshold b1")
    before = handle.get_attribute("value")
    figure_before = chart_points(browser)
    browser.execute_script("arguments[0].focus()", handle)
    webdriver.ActionChains(browser).send_keys(Keys.ARROW_RIGHT * 5).perform()
    settle(browser)
    assert float(slider(browser, "Threshold b1").get_attribute("value")) == pytest.approx(float(before) + 0.05)
    assert chart_points(browser) != figure_before
    assert_no_errors(browser, "explore after a slider move")
    shot(browser, "explore_after_slider")


def test_compare_select_a_point_and_see_its_details(server, browser):
    compare_with_example_runs(browser, server)
    assert "Nothing selected yet" in browser.page_source
    points = [p for p in browser.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace .points path")
              if p.is_displayed() and p.size["width"] > 0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", points[len(points) // 2])
    webdriver.ActionChains(browser).move_to_element(points[len(points) // 2]).click().perform()
    WebDriverWait(browser, 60).until(lambda d: "Nothing selected yet" not in d.page_source)
    settle(browser)
    assert "Run config" in browser.page_source
    assert_no_errors(browser, "compare after selecting a point")
    browser.execute_script("window.scrollTo(0, 0);")
    shot(browser, "compare")


def test_download_a_csv(server, browser):
    open_page(browser, server, "explore")
    download = next(b for b in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stDownloadButton"] button')
                    if "CSV" in b.text)
    download.click()
    for _ in range(60):
        done = [p for p in browser.downloads.glob("*.csv")]
        if done:
            break
        time.sleep(0.5)
    assert done, "no CSV arrived in the download folder"
    text = done[0].read_text()  # the plane's table, built when the button asked for it
    assert text.startswith("method,")
    assert all(row in text for row in ("MOPO (true)", "MOPO (estimate)", "reference", "MOPO own front")), text[:500]


def test_a_bad_upload_shows_an_error_naming_the_file_and_problem(server, browser, tmp_path):
    import numpy as np

    bad = tmp_path / "bad_matrices.npy"
    np.save(bad, np.full((2, 3, 3), 0.7))
    open_page(browser, server, "explore")
    next(label for label in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stRadio"] label')
         if label.text.strip() == "upload").click()
    WebDriverWait(browser, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, 'input[type="file"]')))
    browser.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(str(bad))
    WebDriverWait(browser, 60).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, '[data-testid="stAlertContentError"]')))
    message = browser.find_element(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]').text
    assert "bad_matrices.npy" in message and "P + P^T != 1" in message
    shot(browser, "explore_bad_upload")
