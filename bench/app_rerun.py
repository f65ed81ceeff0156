"""Server time of a rerun of the default Explore page after a slider change (target < 150 ms),
and of a 100-threshold sweep at the default size (target < 1 s).

Run from the repository root: ``.venv/bin/python bench/app_rerun.py [--repeats 30]``, or with
``--quick`` (3 threshold changes, one sweep: a smoke run in seconds whose medians mean little).
Reruns are timed with Streamlit's AppTest, which executes the page script as the server does (no
browser, no network), made to compile the page once and to freeze the heap after the cold start as
the server does (bench/server_like.py; the compilation is printed apart): the time is the script's
server time. AppTest reruns the whole page where the browser reruns only the threshold fragment,
so this overstates a threshold change's server work. The peer is the
same page with every cache warm and the threshold unchanged (a no-op rerun), so the ratio
shows what the slider change itself costs. Nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("MOPO_STORE", str(Path("/tmp") / "mopo_bench_store.sqlite"))

import numpy as np  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from mopo_core.tabular.solver import TabularProblem  # noqa: E402
from server_like import after_first_run, compile_ms, compiled_once  # noqa: E402
from synthetic import make_structure  # noqa: E402

PAGE = str(ROOT / "app" / "views" / "explore.py")
RERUN_TARGET_MS = 150.0
SWEEP_TARGET_S = 1.0


def time_reruns(repeats: int) -> tuple[list[float], list[float]]:
    """(ms of each rerun after a threshold change, ms of each no-op rerun), the page compiled once and the heap
    frozen after the cold start, as the server does (bench/server_like.py)."""
    with compiled_once():
        at = AppTest.from_file(PAGE, default_timeout=120)
        at.run()  # cold start: builds the instance, trains the default baselines (cached afterwards)
        after_first_run()
        slider = at.slider(key="threshold_1")
        low, high = slider.min, slider.max
        values = np.round(np.linspace(low + 0.05, high - 0.05, repeats), 2)
        changed, unchanged = [], []
        for value in values:
            start = time.perf_counter()
            at.slider(key="threshold_1").set_value(float(value)).run()
            changed.append(1e3 * (time.perf_counter() - start))
            start = time.perf_counter()
            at.run()
            unchanged.append(1e3 * (time.perf_counter() - start))
            assert not at.exception, at.exception
    return changed, unchanged


def time_sweep(repeats: int) -> float:
    s = make_structure("bt_conflict")  # the default size: N = 8, M = 1
    problem = TabularProblem.build(s.preferences, s.reference, s.behaviour, s.prompt_weights)
    grid = np.linspace(0.5, 0.8, 100)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        problem.sweep(grid, 0.08)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, help="threshold changes timed (default 30; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="3 threshold changes and one sweep: a smoke run")
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else 3 if args.quick else 30
    changed, unchanged = time_reruns(repeats)
    med_changed, med_unchanged = statistics.median(changed), statistics.median(unchanged)
    sweep = time_sweep(1 if args.quick else 5)
    print(f"Explore rerun after a threshold change: median {med_changed:.1f} ms, p90 "
          f"{np.percentile(changed, 90):.1f} ms over {len(changed)} changes "
          f"(target < {RERUN_TARGET_MS:.0f} ms: {'met' if med_changed < RERUN_TARGET_MS else 'MISSED'})")
    print(f"peer, the same page rerun with nothing changed: median {med_unchanged:.1f} ms; "
          f"ratio change / no-op = {med_changed / med_unchanged:.2f}x")
    print(f"not in these reruns: compiling the page, once per server process: {compile_ms(PAGE):.1f} ms")
    print(f"100-threshold sweep at the default size (bt_conflict, N=8, M=1): {1e3 * sweep:.1f} ms "
          f"(target < {SWEEP_TARGET_S:.0f} s: {'met' if sweep < SWEEP_TARGET_S else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
