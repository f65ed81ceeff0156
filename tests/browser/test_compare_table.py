"""Browser test of the Compare page's runs table (issue 15, item 2): after "Create example runs" the
table lists every run, filters by text and keeps the page free of errors; the default selection
is the two-objective runs of one instance, so no warning about mixed K or instances is shown."""
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.support import assert_no_errors, compare_with_example_runs, expand, settle, shot

TABLE = '[data-testid="stExpander"] [data-testid="stDataFrame"]'


def test_compare_runs_table_opens_and_filters(server, browser):
    compare_with_example_runs(browser, server)
    warnings = " ".join(w.text for w in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentWarning"]'))
    assert "cannot be overlaid" not in warnings and "different instances" not in warnings

    expand(browser, "Runs table: 5 run(s)")
    WebDriverWait(browser, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, TABLE)))
    box = next(e for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stTextInput"] input')
               if e.get_attribute("aria-label") == "Filter (id, name, kind, method, tags)")
    box.send_keys("seed 1", Keys.ENTER)
    settle(browser)
    assert_no_errors(browser, "compare runs table filtered")
    shot(browser, "compare_runs_table")
    assert browser.find_elements(By.CSS_SELECTOR, TABLE)
    assert any(b.text.strip() == "Save changes" for b in browser.find_elements(By.CSS_SELECTOR, "button"))
