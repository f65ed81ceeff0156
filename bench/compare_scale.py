"""Compare at scale: server time of a Compare rerun on a store of 1,000 runs, with 4 and with 40
runs selected (target < 300 ms at 40), and the time of the presenter/engine steps of one rerun.

Run from the repository root: ``.venv/bin/python bench/compare_scale.py [--runs 1000] [--repeats 7]``,
or with ``--quick`` (300 runs, 3 reruns each: a smoke run whose medians mean little). The store is
a temporary file filled through :class:`mopo_core.runs.RunStore` (``create_run``, ``add_points``,
``log_metrics``): tabular sweeps of about 20 points (with a policy, multipliers and a feasible flag
in each point's extra, as ``python -m mopo_core sweep`` records them) on a few structures and data
seeds, suites with several methods, and language-model train runs with metric series. Reruns are
timed with Streamlit's AppTest, which executes the page script as the server does, made to compile the
page once and to freeze the heap after the cold start as the server does (bench/server_like.py; the
compilation, once per server process, is printed apart): each timed
rerun changes the selection (alternating between two selections of the same size), so it is a
real rerun, not a no-op. ``--before`` prints earlier numbers next to these (``4=MS,40=MS``).
Nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from server_like import after_first_run, compile_ms, compiled_once  # noqa: E402

TARGET_MS = 300.0
PAGE = ROOT / "app" / "views" / "compare.py"
STRUCTURES = ("bt_conflict", "length_bias", "safety_tradeoff")


def fill_store(path: Path, n_runs: int, seed: int = 0) -> dict[str, list[int]]:
    """``n_runs`` runs in a fresh store at ``path``; returns the ids by group (``"bt_conflict"``:
    sweeps of one instance, the ones the bench selects)."""
    from mopo_core.runs import RunStore

    rng = np.random.default_rng(seed)
    store = RunStore(path)
    groups: dict[str, list[int]] = {}
    for i in range(n_runs):
        r = i % 20
        if r < 15:  # a tabular sweep: ~20 points on one of a few structures
            structure = STRUCTURES[0] if r < 9 else STRUCTURES[1 + r % 2]
            grid = np.round(np.linspace(0.5, 0.8, 20), 4)
            config = {"structure": structure, "n_responses": 8, "n_prompts": 1, "structure_seed": 0,
                      "n_comparisons": 200, "seed": i, "thresholds": grid, "tau": [0.01, 0.05, 0.1][i % 3],
                      "eps": 0.0}
            run_id = store.create_run("sweep", config, name=f"bench sweep {i}")
            base = rng.uniform(0.55, 0.7)
            points = []
            for j, b in enumerate(grid):
                policy = rng.dirichlet(np.ones(8))
                points.append({"label": "mopo", "params": {"threshold": float(b), "tau": config["tau"], "eps": 0.0},
                               "values": [base + 0.2 * (1 - j / 19) + rng.normal(0, 0.01),
                                          0.5 + 0.3 * j / 19 + rng.normal(0, 0.01)],
                               "extra": {"feasible": bool(j < 17), "multipliers": [float(rng.uniform())],
                                         "kl": float(rng.uniform(0, 0.3)), "policy": policy}})
            store.add_points(run_id, points)
            groups.setdefault(structure, []).append(run_id)
        elif r < 17:  # a suite: several methods, a few points each
            config = {"structure": STRUCTURES[0], "n_responses": 8, "n_prompts": 1, "seed": i,
                      "methods": ["mopo", "weighted_dpo", "reward_lagrangian"], "tau": 0.01}
            run_id = store.create_run("suite", config, name=f"bench suite {i}")
            store.add_points(run_id, [{"label": m, "params": {"w": float(w)},
                                       "values": list(rng.uniform(0.5, 0.9, 2)),
                                       "extra": {"policy": rng.dirichlet(np.ones(8))}}
                                      for m in config["methods"] for w in np.linspace(0, 1, 6)])
            groups.setdefault("suite", []).append(run_id)
        else:  # a language-model train run: metric series, a couple of evaluated points
            config = {"task": "text", "method": "mopo", "tau": 0.1, "steps": 200, "seed": i, "thresholds": [0.5]}
            run_id = store.create_run("train", config)
            for step in range(0, 200, 2):
                store.log_metrics(run_id, step, {"loss": float(np.exp(-step / 80) + rng.normal(0, 0.01)),
                                                 "lambda_1": float(rng.uniform()), "constraint_1": 0.5,
                                                 "tokens_per_s": 1000.0})
            store.add_points(run_id, [{"label": "mopo", "params": {"step": 200},
                                       "values": list(rng.uniform(0.4, 0.7, 2)),
                                       "extra": {"objectives": ["helpfulness", "harmlessness"]}}])
            groups.setdefault("train", []).append(run_id)
        if r >= 15 or i % 3:
            store.set_status(run_id, "finished")
    return groups


def time_page(path: Path, selections: list[list[int]], repeats: int, page: Path | None = None) -> list[float]:
    """Milliseconds of each rerun of the Compare page after switching between ``selections``."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["MOPO_STORE"] = str(path)
    st.cache_resource.clear()
    st.cache_data.clear()
    with compiled_once():
        at = AppTest.from_file(str(page or PAGE), default_timeout=300)
        at.session_state["compare_runs"] = selections[-1]
        at.run()  # cold start
        assert not at.exception, at.exception
        after_first_run()
        for sel in selections:  # warm every selection once (a user comes back to selections)
            at.multiselect(key="compare_runs").set_value(sel).run()
        times = []
        for i in range(repeats):
            sel = selections[i % len(selections)]
            at.multiselect(key="compare_runs").set_value(sel)
            start = time.perf_counter()
            at.run()
            times.append(1e3 * (time.perf_counter() - start))
            assert not at.exception, at.exception
    return times


def time_steps(path: Path, selected: list[int], repeats: int) -> dict[str, float]:
    """Median milliseconds of each presenter/engine step of a rerun, uncached."""
    import dataclasses

    from app.presenters import compare as presenter
    from mopo_core.experiments import compare_runs
    from mopo_core.runs import RunStore

    store = RunStore(path)

    def steps():
        out = {}
        t = time.perf_counter()
        listed = store.list_runs()
        out["list_runs"] = time.perf_counter() - t
        t = time.perf_counter()
        configs = {i: p["config"] for i, p in store.progress(listed["id"]).items()}
        out["progress (all configs)"] = time.perf_counter() - t
        t = time.perf_counter()
        names = presenter.run_names(listed, configs, presenter.job_names(store.path))
        table = presenter.filter_table(presenter.runs_table(listed, names, configs))
        out["run_names + runs_table + filter_table"] = time.perf_counter() - t
        t = time.perf_counter()
        runs = [dataclasses.replace(store.get_run(i), name=names[i]) for i in selected]
        out[f"get_run x {len(selected)}"] = time.perf_counter() - t
        if hasattr(store, "get_runs"):
            t = time.perf_counter()
            store.get_runs(selected)
            out[f"get_runs ({len(selected)}, one query)"] = time.perf_counter() - t
        t = time.perf_counter()
        pts = compare_runs.points_frame(runs)
        values = compare_runs.value_matrix(pts)
        pts["on_front"] = compare_runs.union_front_mask(values)
        ref, _ = compare_runs.choose_reference_point([compare_runs.reference_point_for(r) for r in runs], values)
        out["points_frame + front + reference point"] = time.perf_counter() - t
        t = time.perf_counter()
        sets = compare_runs.point_sets(pts)
        compare_runs.dominance_table(compare_runs.dominance_counts(sets), sets)
        compare_runs.hypervolume_table(sets, ref)
        out["dominance + hypervolume"] = time.perf_counter() - t
        t = time.perf_counter()
        compare_runs.seed_attainment(runs)
        out["seed_attainment"] = time.perf_counter() - t
        del table
        return out

    rows = [steps() for _ in range(repeats)]
    return {k: 1e3 * statistics.median(r[k] for r in rows) for k in rows[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, help="runs in the store (default 1000; --quick 300)")
    parser.add_argument("--repeats", type=int, help="timed reruns per selection size (default 7; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="300 runs, 3 reruns: a smoke run")
    parser.add_argument("--store", help="keep the filled store at this path (default: a temporary file)")
    parser.add_argument("--before", help="earlier medians to compare with, e.g. '4=300,40=1500'")
    parser.add_argument("--peer", help="another version of the page (e.g. the one before a change, saved with "
                                       "`git show REV:app/views/compare.py > FILE`), timed on the same store "
                                       "right after this one")
    args = parser.parse_args(argv)
    n_runs = args.runs if args.runs is not None else 300 if args.quick else 1000
    repeats = args.repeats if args.repeats is not None else 3 if args.quick else 7
    shm = Path("/dev/shm")  # a memory-backed folder when there is one: the fill's commits need no disk sync
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None) as tmp:
        path = Path(args.store) if args.store else Path(tmp) / "runs.sqlite"
        if path.exists():
            path.unlink()
        start = time.perf_counter()
        groups = fill_store(path, n_runs)
        print(f"filled {path} with {n_runs} runs in {time.perf_counter() - start:.1f} s "
              f"({', '.join(f'{k}: {len(v)}' for k, v in groups.items())})")
        pool = groups["bt_conflict"]
        results = {}
        for size in (4, 40):
            size_here = min(size, len(pool) // 2)
            selections = [pool[-size_here:], pool[-2 * size_here:-size_here]]
            times = time_page(path, selections, repeats)
            results[size] = statistics.median(times)
            print(f"Compare rerun, {size_here} runs selected of {n_runs}: median {results[size]:.1f} ms, "
                  f"max {max(times):.1f} ms over {len(times)} reruns"
                  + (f" (target < {TARGET_MS:.0f} ms: {'met' if results[size] < TARGET_MS else 'MISSED'})"
                     if size == 40 else ""))
            if args.peer:
                peer = statistics.median(time_page(path, selections, repeats, Path(args.peer)))
                print(f"  peer page {Path(args.peer).name}, same store and selections: median {peer:.1f} ms; "
                      f"ratio peer / this = {peer / results[size]:.2f}x")
        steps = time_steps(path, pool[-min(40, len(pool) // 2):], repeats)
        print("steps of one rerun, uncached (median ms):")
        for name, ms in steps.items():
            print(f"  {name}: {ms:.1f} ms")
        print(f"ratio 40 / 4 selected = {results[40] / results[4]:.2f}x")
        print(f"not in these reruns: compiling the page, once per server process: {compile_ms(PAGE):.1f} ms")
        if args.before:
            before = {int(k): float(v) for k, v in (p.split("=") for p in args.before.split(","))}
            for size in (4, 40):
                if size in before:
                    print(f"before / after at {size} selected: {before[size]:.1f} ms / {results[size]:.1f} ms = "
                          f"{before[size] / results[size]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
