"""Browser tests of the Compare page as a user drives it (issue 15, items 2 and 3): the real server
over its own temporary store, headless Chromium.

- Colours: with runs A, B, C drawn, each keeps the colour its legend entry is drawn in (read from
  the plot's SVG) when B is deselected, and the three colours differ.
- Rename and delete in the runs table: a name typed into the table's name cell and saved shows in
  the table, the run picker and the front plot's legend; a run deleted after the confirmation is
  gone from the table, the plot and the store (read back through :class:`mopo_core.runs.RunStore`),
  and the other runs stay selected.
- Imported points: the example CSV uploaded through the sidebar's uploader is drawn on the front
  (its series in the legend, one marker per point, error bars); a CSV with a non-numeric value in
  data row 3 is refused with an error naming row 3 and the column.

The tests share the module's server and store and run in this order (the example runs are created
by the first)."""
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from mopo_core.runs import RunStore
from tests.browser.support import (
    ROOT, assert_no_errors, button, compare_with_example_runs, expand, open_page, retry, settle, shot, start_server,
)

EXAMPLE = ROOT / "docs" / "examples" / "imported_points.csv"
TABLE = '[data-testid="stExpander"] [data-testid="stDataFrame"]'
# The front plot's legend as drawn: (entry text, fill colour of its marker symbol).
LEGEND = """const chart = document.querySelector('[data-testid="stPlotlyChart"]');
    return chart && Array.from(chart.querySelectorAll('.legend .traces')).map(t => [
        t.querySelector('.legendtext').textContent, (t.querySelector('.legendpoints path') || {style: {}}).style.fill
        || null])"""


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(the server's url, the path of its run store)."""
    store = tmp_path_factory.mktemp("store") / "runs.sqlite"
    proc, url = start_server({"MOPO_STORE": str(store)})
    yield url, store
    proc.terminate()
    proc.wait(timeout=20)


def legend(driver) -> dict[str, str]:
    """``{legend text: marker colour}`` of the first chart (the front), as drawn."""
    return dict(WebDriverWait(driver, 60).until(lambda d: d.execute_script(LEGEND)))


def run_entries(driver) -> dict[str, str]:
    """``{legend text: colour}`` of the front's run series (texts "#id name", " · method" added
    when a run is drawn one series per method)."""
    return {text: colour for text, colour in legend(driver).items() if text.startswith("#")}


def run_ids(entries) -> list[int]:
    """The run ids of :func:`run_entries` (sorted, once each)."""
    return sorted({int(text[1:].split(" ", 1)[0]) for text in entries})


def table_cells(driver, column: int) -> list[str]:
    """The texts of one column of the runs table (the grid's accessible cells, every row drawn)."""
    cells = driver.find_elements(By.CSS_SELECTOR, f'{TABLE} td[id^="glide-cell-{column}-"]')
    return [c.get_attribute("textContent") for c in cells]


def multiselect(driver, label):
    return next(e for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMultiSelect"]') if label in e.text)


def remove_chip(driver, label: str, chip_start: str):
    """Click the close mark of the chip starting ``chip_start`` in the multiselect labelled ``label``."""
    box = multiselect(driver, label)
    box.find_element(By.CSS_SELECTOR, f'button[aria-label^="Remove {chip_start}"]').click()
    settle(driver)


def chips(driver, label: str) -> list[str]:
    """The options chosen in the multiselect labelled ``label`` (its chips' texts)."""
    box = multiselect(driver, label)
    return [t.get_attribute("aria-label") for t in box.find_elements(By.CSS_SELECTOR, "span[data-tag]")]


def pick_option(driver, label: str, typed: str):
    """Type ``typed`` into the multiselect labelled ``label`` and take the first option it leaves."""
    box = multiselect(driver, label)
    box.find_element(By.CSS_SELECTOR, "input").click()
    box.find_element(By.CSS_SELECTOR, "input").send_keys(typed)
    WebDriverWait(driver, 20).until(EC.presence_of_element_located((By.CSS_SELECTOR, '[role="option"]')))
    box.find_element(By.CSS_SELECTOR, "input").send_keys(Keys.ENTER)
    settle(driver)
    retry(lambda: multiselect(driver, label).find_element(By.CSS_SELECTOR, "input").send_keys(Keys.ESCAPE))
    settle(driver)


def edit_name_cell(driver, row: int, current: str, text: str):
    """Rename through the grid as a user does: click along the row (right of the hide checkboxes)
    until a second click on the name cell opens its editor (it holds the ``current`` name), type
    ``text``, Enter commits."""
    editors = (By.CSS_SELECTOR, "textarea.gdg-input")

    def click(x):
        canvas = driver.find_element(By.CSS_SELECTOR, f'{TABLE} [data-testid="data-grid-canvas"]')
        size = canvas.rect
        ActionChains(driver).move_to_element_with_offset(
            canvas, x - size["width"] / 2, 35 * (row + 1) + 17 - size["height"] / 2).click().perform()
        time.sleep(0.2)
        opened = driver.find_elements(*editors)
        if opened and opened[0].get_attribute("value") != current:  # another column's editor
            opened[0].send_keys(Keys.ESCAPE)
            return False
        return bool(opened)

    if not any(retry(lambda: click(x)) for x in range(100, 800, 20)):
        pytest.fail(f"could not open the name cell's editor in row {row}")
    editor = driver.find_element(*editors)
    editor.send_keys(Keys.CONTROL, "a")
    editor.send_keys(text)
    editor.send_keys(Keys.ENTER)
    time.sleep(0.5)


def press(driver, text: str):
    """Click the button ``text`` once the page has settled (an edit reruns the page), then settle."""
    settle(driver)
    retry(lambda: button(driver, text).click())
    settle(driver)


def upload(driver, path: Path):
    """Send ``path`` to the sidebar's "Import points" uploader (opened first)."""
    if not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stFileUploader"] input[type="file"]'):
        expand(driver, "Import points (CSV or JSON)")
    driver.find_element(By.CSS_SELECTOR, '[data-testid="stFileUploader"] input[type="file"]').send_keys(str(path))
    time.sleep(1)
    settle(driver)


def open_compare(driver, url, store):
    """Compare in a new session; on an empty store, after "Create example runs" (runs 1-3: MOPO
    sweeps over seeds; 4: the baselines; 5: a K = 3 sweep)."""
    if RunStore(store).list_runs().empty:
        compare_with_example_runs(driver, url)
    else:
        open_page(driver, url, "compare")


def test_a_runs_colour_stays_when_another_run_is_deselected(app, browser):
    url, store = app
    open_compare(browser, url, store)
    remove_chip(browser, "Runs to compare", "4 · ")
    colours = run_entries(browser)
    assert run_ids(colours) == [1, 2, 3] and len(colours) == 3
    assert len(set(colours.values())) == 3 and all(c and c.startswith("rgb(") for c in colours.values())

    remove_chip(browser, "Runs to compare", "2 · ")
    assert_no_errors(browser, "compare, run 2 deselected")
    after = run_entries(browser)
    assert run_ids(after) == [1, 3]
    assert after == {name: c for name, c in colours.items() if not name.startswith("#2 ")}


def test_rename_and_delete_a_run_in_the_runs_table(app, browser):
    url, store = app
    open_compare(browser, url, store)
    assert run_ids(run_entries(browser)) == [1, 2, 3, 4]
    expand(browser, "Runs table: 5 run(s)")
    WebDriverWait(browser, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, TABLE)))
    assert table_cells(browser, 1)[:5] == ["1", "2", "3", "4", "5"]

    edit_name_cell(browser, 0, "example: mopo, bt_conflict, seed 0", "my renamed sweep")
    press(browser, "Save changes")
    assert_no_errors(browser, "compare, run renamed")
    assert any("run 1 renamed 'my renamed sweep'" in s.text
               for s in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentSuccess"]'))
    assert table_cells(browser, 2)[0] == "my renamed sweep"
    assert "#1 my renamed sweep" in run_entries(browser)
    assert chips(browser, "Runs to compare")[0].startswith("1 · sweep · my renamed sweep · ")
    assert RunStore(store).list_runs().set_index("id").loc[1, "name"] == "my renamed sweep"

    pick_option(browser, "Runs to delete", "seed 2")
    assert [c.split(" · ")[0] for c in chips(browser, "Runs to delete")] == ["3"]
    press(browser, "Delete…")
    warning = " ".join(w.text for w in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentWarning"]'))
    assert "Delete run(s) 3" in warning and "cannot be undone" in warning
    assert RunStore(store).list_runs()["id"].tolist() == [1, 2, 3, 4, 5]  # nothing deleted before "Yes"
    shot(browser, "compare_delete_confirmation")
    press(browser, "Yes, delete")
    assert_no_errors(browser, "compare, run deleted")
    assert RunStore(store).list_runs()["id"].tolist() == [1, 2, 4, 5]
    assert table_cells(browser, 1) == ["1", "2", "4", "5"]
    shot(browser, "compare_after_delete")
    assert run_ids(run_entries(browser)) == [1, 2, 4]  # the renamed run and the others stay selected
    assert [c.split(" · ")[:3] for c in chips(browser, "Runs to compare")][0] == ["1", "sweep", "my renamed sweep"]


def test_imported_points_are_drawn_on_the_front_with_error_bars(app, browser):
    url, store = app
    open_page(browser, url, "compare")
    before = set(RunStore(store).list_runs()["id"])
    upload(browser, EXAMPLE)
    assert_no_errors(browser, "compare, example points imported")
    new = sorted(set(RunStore(store).list_runs()["id"]) - before)
    assert len(new) == 2  # one run per seed of the file's run "cluster-a"
    notes = " ".join(s.text for s in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentSuccess"]'))
    assert "Imported 14 points (helpfulness, harmlessness) from imported_points.csv" in notes
    drawn = run_entries(browser)
    assert run_ids(drawn) == new  # the upload selects the new runs
    assert sorted(drawn) == sorted(f"#{i} imported_points · cluster-a · seed {s} · {m}" for i, s in zip(new, (0, 1))
                            for m in ("mopo", "dpo", "modpo"))
    front = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]')[0]
    markers = front.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace .points path")
    assert len(markers) == 14 + 1  # every imported point and the hypervolume reference point
    bars = front.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace .errorbars .errorbar")
    assert len(bars) == 14  # each point's ±1.96 SE bars (one group per point)
    title = front.find_element(By.CSS_SELECTOR, ".gtitle").text
    assert "behaviour policy" not in title and "1.96" in title
    shot(browser, "compare_imported_points")


def test_a_bad_csv_is_refused_naming_the_row_and_the_column(app, browser, tmp_path):
    url, store = app
    open_page(browser, url, "compare")
    before = RunStore(store).list_runs()["id"].tolist()
    bad = tmp_path / "bad_points.csv"
    bad.write_text("method,value.help,value.harm\ndpo,0.6,0.5\nipo,0.55,0.52\nmopo,0.58,oops\n")
    upload(browser, bad)
    errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]')]
    assert any("bad_points.csv: row 3, column value.harm: not a number: 'oops'" in e for e in errors), errors
    assert RunStore(store).list_runs()["id"].tolist() == before  # nothing recorded
