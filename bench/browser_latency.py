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
Nothing here asserts a time. ``--browser-slowdown 2`` slows the page's CPU twice by DevTools' throttling
(the server keeps its speed): the browser's share of the wait on a slower machine, seen on a fast one.

``--breakdown`` also splits each change by the page's websocket traffic (a listener on every message,
installed before the page loads): key -> the rerun request sent (BackMsg), -> the first answer
(ForwardMsg), -> the last message noted before the plot changed (the server's work up to the chart,
transport, and the page's backlog: see below), -> the plot changed (the browser's work after that
message: decode, React, Plotly's redraw), -> the last message of the rerun, and the messages' count and bytes; and, polled beside the
clock (4 ms), when the first chart's SVG was empty (taken down before it is drawn again) and when it
was drawn again with a different signature; and the CPU time (Linux /proc, 10 ms ticks, averaged over the
changes) the server process and Chromium's processes spent from the key to the idle page, which the
machine's load moves much less than the wall times (Chromium's includes this bench's own polls). The
page notes a message when its main thread gets to it, so a busy page dates messages late (the last message
noted before the plot changed may be one sent after the chart's, and the phase before it then holds the
browser's backlog as well as the server's work: the server's own time is the AppTest line); a figure
message the page has seen before comes as a short reference (Streamlit's message cache), which this
bench's alternating keys hit. The medians are printed under the totals (the listener and the second poll
add a little work to the page: compare totals made with the same flags).
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

#: (--breakdown) Notes the time (performance.now()) and size of every websocket message, both ways.
SOCKETS = """
window.__mopoWs = [];
const Native = window.WebSocket;
const send = Native.prototype.send;
Native.prototype.send = function (data) {
  window.__mopoWs.push({t: performance.now(), out: true, bytes: data.byteLength ?? data.size ?? data.length});
  return send.call(this, data);
};
window.WebSocket = function (...args) {
  const ws = new Native(...args);
  ws.addEventListener('message', e => window.__mopoWs.push(
    {t: performance.now(), out: false, bytes: e.data.byteLength ?? e.data.size ?? e.data.length}));
  return ws;
};
window.WebSocket.prototype = Native.prototype;
Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
"""
#: (--breakdown) From the same keydown: when the first chart's SVG was first empty (the old chart taken down:
#: Streamlit remounts a chart whose figure changed) and first drawn again, different from before the key.
TRACK = """
const baseSig = window.__mopoSig();
const track = window.__mopoTrack = {emptied: null, drawn: null};
document.addEventListener('keydown', () => {
  const t0 = performance.now();
  const poll = () => {
    const now = performance.now(), sig = window.__mopoSig();
    if (track.emptied === null && sig === '') track.emptied = now - t0;
    if (sig !== '' && sig !== baseSig) { track.drawn = now - t0; return; }
    if (now - t0 < 30000) setTimeout(poll, 4);
  };
  setTimeout(poll, 0);
}, {capture: true, once: true});
"""
#: (--breakdown) Phases of one change, in ms from the key, from the messages noted since it.
PHASES = """
const lat = window.__mopoLat;
const after = window.__mopoWs.filter(m => m.t >= lat.t0).map(m => ({...m, t: m.t - lat.t0}));
const sent = after.find(m => m.out), got = after.filter(m => !m.out);
const before = got.filter(m => m.t <= lat.plot), during = got.filter(m => m.t <= lat.idle);
return {emptied: window.__mopoTrack.emptied, drawn: window.__mopoTrack.drawn, sent: sent ? sent.t : null, first: got.length ? got[0].t : null,
        plot_msg: before.length ? before[before.length - 1].t : null, plot: lat.plot,
        last: during.length ? during[during.length - 1].t : null, idle: lat.idle,
        messages: during.length, kib: during.reduce((a, m) => a + m.bytes, 0) / 1024,
        kib_to_plot: before.reduce((a, m) => a + m.bytes, 0) / 1024};
"""

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


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def cpu_ms(pids: list[int]) -> float:
    """User + system CPU time (ms) of processes ``pids`` (all their threads); 0 for one that has gone."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return 1e3 * total / os.sysconf("SC_CLK_TCK")


def time_changes(url: str, changes: int, width: int = 1600, height: int = 1000, breakdown: list | None = None,
                 server_pid: int | None = None, slowdown: float = 1.0) -> tuple[list[float], list[float]]:
    """(ms to the changed plot, ms to the idle page) for ``changes`` arrow keys on the b1 slider, the page's
    CPU slowed ``slowdown`` times by DevTools' emulation (after the page has loaded); with a
    ``breakdown`` list, one dict of :data:`PHASES` per change is appended to it, with ``cpu_server`` (ms of
    the process ``server_pid``, when given) and ``cpu_chromium`` (ms of Chromium's processes) from the key
    to the idle page."""
    from selenium import webdriver
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser.support import CHART, retry, settle, slider

    driver = browser(width, height)
    try:
        if breakdown is not None:
            driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": SOCKETS})
        driver.get(url)
        WebDriverWait(driver, 120).until(lambda d: d.find_elements("css selector", CHART))
        settle(driver)
        if slowdown != 1.0:
            driver.execute_cdp_cmd("Emulation.setCPUThrottlingRate", {"rate": slowdown})
        chromium = process_tree(driver.service.process.pid) if breakdown is not None else []
        server = [server_pid] if server_pid is not None else []
        plot, idle = [], []
        for i in range(changes):
            key = Keys.ARROW_RIGHT if i % 2 == 0 else Keys.ARROW_LEFT
            cpu = [0.0, 0.0]  # (server, Chromium) CPU ms at the key

            def press():
                driver.execute_script(SIGNATURE + ARM + (TRACK if breakdown is not None else ""))
                driver.execute_script("arguments[0].focus()", slider(driver, "Threshold b1"))
                cpu[:] = cpu_ms(server), cpu_ms(chromium)
                webdriver.ActionChains(driver).send_keys(key).perform()
            retry(press)
            WebDriverWait(driver, 60, poll_frequency=0.05).until(
                lambda d: d.execute_script("return window.__mopoLat.idle !== null"))
            lat = driver.execute_script("return window.__mopoLat")
            plot.append(float(lat["plot"]))
            idle.append(float(lat["idle"]))
            if breakdown is not None:
                breakdown.append({**driver.execute_script(PHASES), "cpu_server": cpu_ms(server) - cpu[0],
                                  "cpu_chromium": cpu_ms(chromium) - cpu[1]})
            settle(driver)
        return plot, idle
    finally:
        driver.quit()


def summary(name: str, values: list[float], target: float) -> str:
    med = statistics.median(values)
    return (f"{name}: median {med:.0f} ms, p90 {np.percentile(values, 90):.0f} ms over {len(values)} changes "
            f"(target < {target:.0f} ms: {'met' if med < target else 'MISSED'})")


def breakdown_lines(rows: list[dict]) -> list[str]:
    """Each phase's median over the changes (of the per-change differences between the noted moments)."""
    steps = (("key -> rerun request sent", None, "sent"),
             ("request -> first answer (server starts the rerun)", "sent", "first"),
             ("first answer -> last message noted before the plot changed (the server's work, and the page's "
              "backlog: a busy page notes messages late)", "first", "plot_msg"),
             ("that message -> plot changed (browser: decode, React, Plotly redraw)", "plot_msg", "plot"),
             ("key -> first chart empty (old chart taken down; 'not seen': never empty)", None, "emptied"),
             ("key -> first chart drawn again, different", None, "drawn"),
             ("that message -> last message of the rerun (server after the chart)", "plot_msg", "last"),
             ("last message -> idle page (browser)", "last", "idle"))
    lines = []
    for words, start, end in steps:
        values = [r[end] - (r[start] if start else 0.0) for r in rows
                  if r[end] is not None and (start is None or r[start] is not None)]
        lines.append(f"  {words}: {statistics.median(values):.0f} ms" if values else f"  {words}: not seen")
    lines.append(f"  CPU per change, key to idle page (mean): server process "
                 f"{statistics.mean(r['cpu_server'] for r in rows):.0f} ms, Chromium "
                 f"{statistics.mean(r['cpu_chromium'] for r in rows):.0f} ms")
    lines.append(f"  messages per rerun: {statistics.median(r['messages'] for r in rows):.0f}, "
                 f"{statistics.median(r['kib'] for r in rows):.1f} KiB "
                 f"({statistics.median(r['kib_to_plot'] for r in rows):.1f} KiB up to the plot)")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, help="threshold changes timed (default 20; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="3 changes: a smoke run")
    parser.add_argument("--size", default="1600x1000", help="browser window WIDTHxHEIGHT (default 1600x1000)")
    parser.add_argument("--breakdown", action="store_true", help="also split each change by its websocket messages")
    parser.add_argument("--browser-slowdown", type=float, default=1.0, metavar="RATE",
                        help="slow the page's CPU RATE times (DevTools' CPU throttling; the server runs at full "
                             "speed): how the wait grows on a slower machine's browser (default 1: off)")
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
            rows = [] if args.breakdown else None
            plot, idle = time_changes(url, changes, width, height, rows, proc.pid, args.browser_slowdown)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    from app_rerun import time_reruns  # the server's rerun time, measured as bench/app_rerun.py does

    server, _ = time_reruns(changes)
    if args.browser_slowdown != 1.0:
        print(f"the page's CPU slowed {args.browser_slowdown:g}x (DevTools' CPU throttling; the server at full speed)")
    print(summary("Explore threshold key -> changed plot", plot, PLOT_TARGET_MS))
    print(summary("Explore threshold key -> idle page", idle, IDLE_TARGET_MS))
    print(f"server rerun after a threshold change (AppTest, bench/app_rerun.py): "
          f"median {statistics.median(server):.0f} ms, p90 {np.percentile(server, 90):.0f} ms over {len(server)} changes")
    if rows:
        print("breakdown (medians over the changes, ms from the key):", *breakdown_lines(rows), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
