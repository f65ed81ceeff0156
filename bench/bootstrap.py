"""Benchmark of the batched bootstrap resolve (mopo_core/tabular/uncertainty.py) against loops of single solves.

Run from the repository root (no timed assertions anywhere; it only prints times and ratios):

    .venv/bin/python bench/bootstrap.py              # full run (about a minute)
    .venv/bin/python bench/bootstrap.py --quick      # smoke run, a few seconds
    .venv/bin/python bench/bootstrap.py --json out.json

For each case: a structure from ``synthetic`` (seed 0), ``n`` comparisons per prompt drawn by
``sample_comparisons`` (seed 0), thresholds halfway between the reference's value and the
attainable maximum on the full sample's estimated win-rates, and B resamples of the comparisons
(``resample_win_rates``, seed 0). Timed (``time.perf_counter``, median of repeats after one
warm-up): ``solve_batched`` on the B resamples' win-rates in one call, against (a) a Python loop of
``solve_tabular`` on each resample's estimated preferences (what a caller without the batched
solve would write: it validates and computes win-rates per call) and (b) a loop of
``solve_scores`` on the same win-rates (the solver alone). Agreement: the largest |policy
difference| and the count of differing feasibility flags between the batched and loop answers.
Also timed once: the whole ``bootstrap`` call (resampling, re-estimation, full-sample solve and
the batched resolve), with z = 0 and z = 1.64 (the margin's fixed point per resample).

Targets (the issue): B = 200 resolves at N = 8, M = 1 under 50 ms and at N = 64, M = 16 under 1 s.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import os

# One BLAS thread unless the caller says otherwise (must precede the numpy import), as in bench/tabular.py.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import platform
import time

import numpy as np
import scipy

from mopo_core.runs import to_jsonable
from mopo_core.tabular.solver import policy_values, solve_scores, solve_tabular, win_rates
from mopo_core.tabular.uncertainty import bootstrap, resample_win_rates, solve_batched
from synthetic import ComparisonData, estimate_preferences, make_structure, sample_comparisons

SEED = 0
TAU = 0.1
Z_MARGIN = 1.64

FULL = {
    "cases": (
        {"structure": "bt_conflict", "N": 8, "M": 1, "n": 200, "B": 200, "target_s": 0.05},
        {"structure": "bt_conflict", "N": 64, "M": 16, "n": 400, "B": 200, "target_s": 1.0},
        {"structure": "multi_prompt", "N": 16, "M": 4, "n": 200, "B": 200, "target_s": None},
        {"structure": "three_objectives", "N": 8, "M": 1, "n": 200, "B": 200, "target_s": None},
    ),
    "repeats": 5,
    "loop_repeats": 3,
}
QUICK = {
    "cases": (
        {"structure": "bt_conflict", "N": 8, "M": 1, "n": 100, "B": 50, "target_s": None},
        {"structure": "three_objectives", "N": 8, "M": 2, "n": 100, "B": 20, "target_s": None},
    ),
    "repeats": 2,
    "loop_repeats": 1,
}


def _timed(fn, repeats: int, warmup: int = 1):
    """Median wall time (time.perf_counter) of ``fn()`` over ``repeats`` runs, and its last result."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def bench_case(case: dict, cfg: dict, tau: float, log) -> dict:
    s = make_structure(case["structure"], n_responses=case["N"], n_prompts=case["M"], seed=SEED)
    data = sample_comparisons(s, case["n"], seed=SEED)
    ref, mu, nu = s.reference, s.behaviour, s.prompt_weights
    full = win_rates(estimate_preferences(data.win_counts()), mu)
    start = policy_values(ref, full, nu)[1:]
    b = start + 0.5 * (full[1:].max(axis=2) @ nu - start)
    batch = case["B"]
    t_resample, (indices, rates) = _timed(lambda: resample_win_rates(data, batch, SEED, mu), 1, warmup=0)
    estimates = [estimate_preferences(ComparisonData(data.prompt[i], data.first[i], data.second[i], data.labels[i],
                                                     data.n_prompts, data.n_responses).win_counts()) for i in indices]

    t_batched, (policies, _, feasible) = _timed(lambda: solve_batched(rates, b, tau, ref, nu), cfg["repeats"])
    t_tabular, loop = _timed(lambda: [solve_tabular(p, b, tau, reference=ref, behaviour=mu) for p in estimates],
                             cfg["loop_repeats"])
    t_scores, _ = _timed(lambda: [solve_scores(r[0], r[1:], b, tau, ref, nu) for r in rates], cfg["loop_repeats"])
    diff = max(float(np.max(np.abs(p - sol.policy))) for p, sol in zip(policies, loop))
    flags = int(sum(f != sol.feasible for f, sol in zip(feasible, loop)))

    t_boot = time.perf_counter()
    plain = bootstrap(data, b, tau, batch, SEED, ref, mu, nu)
    t_boot = time.perf_counter() - t_boot
    t_margin = time.perf_counter()
    margin = bootstrap(data, b, tau, batch, SEED, ref, mu, nu, z=Z_MARGIN)
    t_margin = time.perf_counter() - t_margin

    row = {**case, "K": s.n_objectives, "thresholds": b, "t_resample_s": t_resample, "t_batched_s": t_batched,
           "t_loop_tabular_s": t_tabular, "t_loop_scores_s": t_scores, "ratio_tabular": t_tabular / t_batched,
           "ratio_scores": t_scores / t_batched, "max_abs_diff": diff, "feasible_flags_differ": flags,
           "feasible_share": float(np.mean(feasible)), "t_bootstrap_s": t_boot, "t_bootstrap_margin_s": t_margin,
           "prob_meet_plain": plain.prob_meet, "prob_meet_margin": margin.prob_meet}
    target = case["target_s"]
    row["meets_target"] = None if target is None else bool(t_batched < target)
    verdict = "" if target is None else f"; target < {target * 1e3:g} ms: {'met' if row['meets_target'] else 'MISSED'}"
    log(f"  {case['structure']:16s} N={case['N']:3d} M={case['M']:2d} K={s.n_objectives} B={batch}: "
        f"solve_batched {t_batched * 1e3:8.1f} ms, loop of solve_tabular {t_tabular * 1e3:8.1f} ms "
        f"(ratio {row['ratio_tabular']:.1f}x), loop of solve_scores {t_scores * 1e3:8.1f} ms "
        f"(ratio {row['ratio_scores']:.1f}x){verdict}")
    log(f"      agreement with the loop: max |policy diff| {diff:.1e}, feasibility flags differing {flags}/{batch} "
        f"({row['feasible_share']:.0%} feasible); resample + re-estimate {t_resample * 1e3:.1f} ms; "
        f"bootstrap() z=0 {t_boot * 1e3:.0f} ms (prob_meet {np.round(plain.prob_meet, 3).tolist()}), "
        f"z={Z_MARGIN} {t_margin * 1e3:.0f} ms (prob_meet {np.round(margin.prob_meet, 3).tolist()})")
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| case | B | solve_batched | loop solve_tabular | ratio | loop solve_scores | ratio | max diff "
             "| bootstrap() z=0 / z=1.64 | target |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "-" if r["meets_target"] is None else (
            f"< {r['target_s'] * 1e3:g} ms: {'met' if r['meets_target'] else 'MISSED'}")
        lines.append(
            f"| {r['structure']} N={r['N']} M={r['M']} K={r['K']} | {r['B']} | {r['t_batched_s'] * 1e3:.1f} ms "
            f"| {r['t_loop_tabular_s'] * 1e3:.0f} ms | {r['ratio_tabular']:.1f}x | {r['t_loop_scores_s'] * 1e3:.0f} ms "
            f"| {r['ratio_scores']:.1f}x | {r['max_abs_diff']:.0e} "
            f"| {r['t_bootstrap_s'] * 1e3:.0f} / {r['t_bootstrap_margin_s'] * 1e3:.0f} ms | {target} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller cases: a smoke run in a few seconds")
    parser.add_argument("--json", metavar="PATH", help="also save every number to PATH")
    parser.add_argument("--tau", type=float, default=TAU, help=f"KL strength (default {TAU})")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL

    def log(msg):
        print(msg, flush=True)

    wall = time.perf_counter()
    env = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
           "cpus": os.cpu_count(), "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
           "mode": "quick" if args.quick else "full", "seed": SEED, "tau": args.tau,
           "load_1min": os.getloadavg()[0]}
    log(f"# bench/bootstrap.py ({env['mode']}): python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}, "
        f"{env['cpus']} CPUs, OPENBLAS_NUM_THREADS={env['blas_threads']}, tau = {args.tau}, seed = {SEED}, "
        f"load average {env['load_1min']:.2f}")
    log(f"\n## B resamples re-solved: solve_batched (median of {cfg['repeats']}) vs loops of single solves "
        f"(median of {cfg['loop_repeats']}); thresholds halfway to the attainable max")
    rows = [bench_case(case, cfg, args.tau, log) for case in cfg["cases"]]
    env["load_1min_end"] = os.getloadavg()[0]
    log(f"\nwall time {time.perf_counter() - wall:.1f} s, load average at the end {env['load_1min_end']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(to_jsonable({"env": env, "cases": rows}, "report"), indent=2) + "\n")
        log(f"saved {args.json}")
    log("\n" + markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
