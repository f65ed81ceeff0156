"""Benchmark of the exact robust (eps) solve against a general conic solver, and how far the
paper's tilt-family fixed point is from it.

Run from the repository root (no timed assertions anywhere; it only prints ratios):

    .venv/bin/python bench/robust.py           # full run (a few minutes)
    .venv/bin/python bench/robust.py --quick   # smoke run, seconds

For every structure of ``synthetic.STRUCTURES`` (N = 8; M = 1, and M = 4 for a few), tau = 0.1
and eps in {0.02, 0.1, 0.15}, at two thresholds per instance, pi_ref's own robust value and
halfway from it to the largest attainable robust value:

1. ``solve_tabular(eps)`` (robust_form "exact", the barrier method of
   mopo_core/tabular/robust_solver.py) against the same problem written for cvxpy and solved by
   Clarabel (tests/reference_convex.py, exponential cones): time ratio Clarabel / ours (the
   conic time includes cvxpy's compilation, which a user of cvxpy would pay too) and the
   largest |policy difference|.
2. The paper's fixed-point reading (``robust_form="paper_tilt"``: the plain tilt family, the
   robust bound in the constraint only) against the exact optimum: how often it calls feasible
   thresholds infeasible, and its loss in V_0 - tau KL where both are feasible.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread: shared machines make threaded timings swing

import argparse
import time

import numpy as np

from mopo_core.tabular.robust import robust_lower_bound
from mopo_core.tabular.solver import TabularProblem
from synthetic import STRUCTURES, make_structure
from tests.reference_convex import robust_primal_cvxpy

TAU = 0.1
SEED = 0
EPSILONS = (0.02, 0.1, 0.15)
FULL = {"n": 8, "structures_m1": STRUCTURES, "structures_m4": ("bt_conflict", "cyclic", "three_objectives",
                                                              "multi_prompt"), "epsilons": EPSILONS}
QUICK = {"n": 5, "structures_m1": ("bt_conflict", "cyclic"), "structures_m4": (), "epsilons": (0.1,)}


def _cases(cfg):
    for m, names in ((1, cfg["structures_m1"]), (4, cfg["structures_m4"])):
        for name in names:
            for eps in cfg["epsilons"]:
                yield name, m, eps


def run(cfg, log) -> list[dict]:
    rows = []
    for name, m, eps in _cases(cfg):
        s = make_structure(name, n_responses=cfg["n"], n_prompts=m, seed=SEED)
        problem = TabularProblem.build(s.preferences, s.reference, s.behaviour)
        rates, ref, nu = problem.rates, problem.reference, problem.prompt_weights
        at_ref = np.array([robust_lower_bound(q, ref, nu, eps)[0] for q in rates[1:]])
        maxima = problem.family(TAU).robust(eps)[1]
        for label, b in (("pi_ref's value", at_ref), ("halfway to max", 0.5 * (at_ref + maxima))):
            start = time.perf_counter()
            exact = problem.solve(b, TAU, eps)
            t_ours = time.perf_counter() - start
            start = time.perf_counter()
            policy, value, _ = robust_primal_cvxpy(rates[0], rates[1:], ref, nu, exact.effective_thresholds, TAU, eps)
            t_conic = time.perf_counter() - start
            tilt = problem.solve(b, TAU, eps, robust_form="paper_tilt")
            row = {"structure": name, "M": m, "K": rates.shape[0], "eps": eps, "threshold": label,
                   "exact_feasible": exact.feasible, "tilt_feasible": tilt.feasible,
                   "t_ours_s": t_ours, "t_conic_s": t_conic, "ratio": t_conic / t_ours,
                   "max_abs_diff": float(np.max(np.abs(np.atleast_2d(exact.policy) - policy))),
                   "objective_gap_vs_conic": exact.objective - value,
                   "tilt_loss": exact.objective - tilt.objective if exact.feasible and tilt.feasible else np.nan,
                   "tilt_violation": float(np.max(np.maximum(b - tilt.robust_values, 0.0)))}
            rows.append(row)
            log(f"  {name:17s} M={m} K={row['K']} eps={eps:<4g} b at {label:15s}: ours {t_ours * 1e3:7.1f} ms, "
                f"Clarabel {t_conic * 1e3:7.1f} ms, ratio {row['ratio']:6.1f}x, |diff| {row['max_abs_diff']:.1e}; "
                f"exact feasible {exact.feasible}, paper tilt feasible {tilt.feasible}, tilt loss "
                f"{row['tilt_loss']:.4f}, tilt violation {row['tilt_violation']:.4f}")
    return rows


def summary(rows: list[dict]) -> str:
    lines = ["| eps | instances | median Clarabel / ours | max abs policy diff | exact feasible, tilt infeasible "
             "| tilt loss in V0 - tau KL (median, max) | largest tilt violation |", "|---|---|---|---|---|---|---|"]
    for eps in sorted({r["eps"] for r in rows}):
        group = [r for r in rows if r["eps"] == eps]
        losses = np.array([r["tilt_loss"] for r in group if np.isfinite(r["tilt_loss"])])
        false_infeasible = sum(r["exact_feasible"] and not r["tilt_feasible"] for r in group)
        loss_text = f"{np.median(losses):.4f}, {losses.max():.4f}" if losses.size else "-"
        lines.append(f"| {eps:g} | {len(group)} | {np.median([r['ratio'] for r in group]):.1f}x "
                     f"| {max(r['max_abs_diff'] for r in group):.1e} | {false_infeasible} of {len(group)} "
                     f"| {loss_text} | {max(r['tilt_violation'] for r in group):.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two structures, one eps: a smoke run")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    print(f"# bench/robust.py ({'quick' if args.quick else 'full'}): tau = {TAU}, seed = {SEED}, N = {cfg['n']}, "
          f"{os.cpu_count()} CPUs, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}", flush=True)
    start = time.perf_counter()
    rows = run(cfg, lambda msg: print(msg, flush=True))
    print(f"\nwall time {time.perf_counter() - start:.1f} s\n")
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
