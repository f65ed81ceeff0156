"""Browser latency of Explore's threshold slider: from a key press on the slider to (a) the changed
plot and (b) the idle page, in the real server and headless Chromium (targets: plot < 150 ms, idle
< 400 ms), beside the server's own rerun time (bench/app_rerun.py's measurement, reused).

Run from the repository root: ``.venv/bin/python bench/browser_latency.py [--changes 20]``, or with
``--quick`` (3 changes: a smoke run whose medians mean little). Needs selenium and Debian's chromium +
chromium-driver. The clock runs in the page (``performance.now()``): it starts at the slider's
``keydown`` event and a 4 ms poll in the page notes the first moment the first chart's SVG (its
trace paths, marker positions and shapes) differs from before the key, and the first moment after
that with the script's run finished: the app root's ``data-test-script-state`` (Streamlit's own test
hook) back to ``notRunning`` after a run. tests/browser/support.py ``settle`` waits for the status
widget instead, which Streamlit only shows once a run has lasted 500 ms, so it cannot time a faster
run. Each change is one arrow key (one 0.01 step of b1), alternating right and left, with the page
settled in between. The machine's load moves these times a lot: compare runs made back to back.
Nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

PLOT_TARGET_MS, IDLE_TARGET_MS = 150.0, 400.0

#: The first chart's drawn state: every trace path and marker position, and the shapes (the green band).
SIGNATURE = """
window.__mopoSig = () => {
  const chart = document.querySelector('[data-testid="stPlotlyChart"]');
  if (!chart) return '';
  const parts = [];
  chart.querySelectorAll('.scatterlayer path, .shapelayer path').forEach(
    p => parts.push((p.getAttribute('d') || '') + (p.getAttribute('transform') || '')));
  return parts.join('|');
};
"""

#: Arms the clock: t0 at the next keydown; a MutationObserver on the app root notes when the script
#: state has been "running" (Streamlit's data-test-script-state), a 4 ms poll the changed plot; idle is
#: the first moment with both the plot changed and the script state back to "notRunning".
ARM = """
const base = window.__mopoSig();
const app = document.querySelector('[data-testid="stApp"]');
const lat = window.__mopoLat = {t0: null, plot: null, idle: null, ran: false};
const watch = new MutationObserver(() => {
  if (app.getAttribute('data-test-script-state') !== 'notRunning') lat.ran = true;
});
watch.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
document.addEventListener('keydown', e => {
  lat.t0 = performance.now();
  const tick = () => {
    const now = performance.now();
    if (app.getAttribute('data-test-script-state') !== 'notRunning') lat.ran = true;
    if (lat.plot === null && window.__mopoSig() !== base) lat.plot = now - lat.t0;
    if (lat.plot !== null && lat.ran && app.getAttribute('data-test-script-state') === 'notRunning') {
      lat.idle = now - lat.t0; watch.disconnect(); return;
    }
    if (now - lat.t0 < 30000) setTimeout(tick, 4);
  };
  setTimeout(tick, 0);
}, {capture: true, once: true});
"""


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def time_changes(url: str, changes: int, width: int = 1600, height: int = 1000) -> tuple[list[float], list[float]]:
    """(ms to the changed plot, ms to the idle page) for ``changes`` arrow keys on the b1 slider."""
    from selenium import webdriver
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser.support import CHART, retry, settle, slider

    driver = browser(width, height)
    try:
        driver.get(url)
        WebDriverWait(driver, 120).until(lambda d: d.find_elements("css selector", CHART))
        settle(driver)
        plot, idle = [], []
        for i in range(changes):
            key = Keys.ARROW_RIGHT if i % 2 == 0 else Keys.ARROW_LEFT

            def press():
                driver.execute_script(SIGNATURE + ARM)
                driver.execute_script("arguments[0].focus()", slider(driver, "Threshold b1"))
                webdriver.ActionChains(driver).send_keys(key).perform()
            retry(press)
            WebDriverWait(driver, 60, poll_frequency=0.05).until(
                lambda d: d.execute_script("return window.__mopoLat.idle !== null"))
            lat = driver.execute_script("return window.__mopoLat")
            plot.append(float(lat["plot"]))
            idle.append(float(lat["idle"]))
            settle(driver)
        return plot, idle
    finally:
        driver.quit()


def summary(name: str, values: list[float], target: float) -> str:
    med = statistics.median(values)
    return (f"{name}: median {med:.0f} ms, p90 {np.percentile(values, 90):.0f} ms over {len(values)} changes "
            f"(target < {target:.0f} ms: {'met' if med < target else 'MISSED'})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, help="threshold changes timed (default 20; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="3 changes: a smoke run")
    parser.add_argument("--size", default="1600x1000", help="browser window WIDTHxHEIGHT (default 1600x1000)")
    args = parser.parse_args(argv)
    changes = args.changes if args.changes is not None else 3 if args.quick else 20
    width, height = (int(v) for v in args.size.split("x"))
    if not (shutil.which("chromium") and shutil.which("chromedriver")) or importlib.util.find_spec("selenium") is None:
        print("selenium, chromium or chromedriver not installed: skipped")
        return 0

    from tests.browser.support import start_server

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server({"MOPO_STORE": os.path.join(tmp, "runs.sqlite")})
        try:
            plot, idle = time_changes(url, changes, width, height)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    from app_rerun import time_reruns  # the server's rerun time, measured as bench/app_rerun.py does

    server, _ = time_reruns(changes)
    print(summary("Explore threshold key -> changed plot", plot, PLOT_TARGET_MS))
    print(summary("Explore threshold key -> idle page", idle, IDLE_TARGET_MS))
    print(f"server rerun after a threshold change (AppTest, bench/app_rerun.py): "
          f"median {statistics.median(server):.0f} ms, p90 {np.percentile(server, 90):.0f} ms over {len(server)} changes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
