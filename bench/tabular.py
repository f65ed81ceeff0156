"""Benchmark of the exact tabular MOPO solver against peers run in the same process.

Run from the repository root (no timed assertions anywhere; it only prints ratios):

    .venv/bin/python bench/tabular.py              # full run (about a minute, ~5 GB peak RAM)
    .venv/bin/python bench/tabular.py --quick      # smoke run, well under a minute
    .venv/bin/python bench/tabular.py --json out.json

1. Small instances (structures from ``synthetic.STRUCTURES``, N in {8, 16, 64}, M = 1 for
   every structure and M = 4 for a few, K = 2 and K = 3): ``solve_tabular`` against the
   SLSQP primal solve of ``tests/reference_solvers.py`` (a general solver on softmax logits
   that shares no code with the dual). Thresholds lie halfway between the reference's
   values and ``mopo_core.pareto.attainable_max``. Per N: the median time ratio
   SLSQP / solve_tabular and the largest |policy difference|. Target at N = 64: >= 100x
   faster with |diff| < 1e-5.
2. A 100-threshold ``sweep_thresholds(..., keep_policies=False)`` on ``bt_conflict`` at
   N = 1000, M = 256, K = 2, against a naive peer: the same thresholds, each solved from
   lambda = 0 by scipy's generic ``minimize(method="L-BFGS-B")`` on the dual. Target: the
   sweep in under 1 second.

The repository root is put first on ``sys.path`` below, so ``mopo_core``, ``synthetic``
and ``tests`` (the SLSQP reference) import from this checkout when the script is run as
``python bench/tabular.py`` from anywhere.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import os

# One BLAS thread unless the caller says otherwise (must precede the numpy import). On a
# shared machine, threaded OpenBLAS made SLSQP's timings swing by up to 100x from run to run
# (its worker threads wait on descheduled siblings); the dual solver barely uses BLAS.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import cProfile
import io
import json
import platform
import pstats
import resource
import time
from functools import partial

import numpy as np
import scipy
from scipy.optimize import minimize

from mopo_core.tabular import solver as tabular
from mopo_core.pareto import attainable_max
from mopo_core.tabular.solver import (
    TabularProblem,
    policy_values,
    solve_tabular,
    sweep_thresholds,
    win_rates,
)
from synthetic import STRUCTURES, make_structure
from tests.reference_solvers import primal_slsqp

SEED = 0
TAU = 0.1
FRACTION = 0.5  # thresholds halfway from the reference's values to the attainable max
#: Objective gap (ours - SLSQP) above which SLSQP counts as stalled rather than converged.
SLSQP_STALL_GAP = 1e-10
SAME_ANSWER = 1e-5
SPEEDUP_TARGET = 100.0
SWEEP_TARGET_S = 1.0

FULL = {
    "sizes": (8, 16, 64),
    "structures_m1": STRUCTURES,
    "structures_m4": ("bt_conflict", "cyclic", "three_objectives", "multi_prompt"),
    "ours_repeats": 7,
    "slsqp_repeats": 3,
    "sweep": {"n": 1000, "m": 256, "points": 100, "repeats": 3},
}
QUICK = {
    "sizes": (8, 16),
    "structures_m1": ("bt_conflict", "cyclic", "deterministic", "three_objectives"),
    "structures_m4": ("bt_conflict", "three_objectives"),
    "ours_repeats": 3,
    "slsqp_repeats": 1,
    "sweep": {"n": 200, "m": 32, "points": 100, "repeats": 2},
}


def _timed(fn, repeats: int, warmup: int = 0):
    """Median wall time (time.perf_counter) of ``fn()`` over ``repeats`` runs, and its last result."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def _objective(policy, rates, reference, nu, tau):
    """V_0 - tau KL, computed here (not by the solver)."""
    kl = nu @ (policy * (np.log(np.maximum(policy, 1e-300)) - np.log(reference))).sum(axis=1)
    return float(policy_values(policy, rates, nu)[0] - tau * kl)


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


# --------------------------------------------------------------------------- 1. vs SLSQP


def _instances(cfg):
    for n in cfg["sizes"]:
        for m, names in ((1, cfg["structures_m1"]), (4, cfg["structures_m4"])):
            for name in names:
                yield name, n, m


def bench_vs_slsqp(cfg, tau: float, log) -> tuple[list[dict], list[dict]]:
    rows = []
    for name, n, m in _instances(cfg):
        s = make_structure(name, n_responses=n, n_prompts=m, seed=SEED, reference="dirichlet")
        rates = win_rates(s.preferences, s.behaviour)
        nu = s.prompt_weights
        start = policy_values(s.reference, rates, nu)[1:]
        top = attainable_max(rates, nu)[1:]
        row = {"structure": name, "N": n, "M": m, "K": s.n_objectives, "fraction": FRACTION}

        def ours(b, s=s):
            return partial(solve_tabular, s.preferences, b, tau, reference=s.reference, behaviour=s.behaviour)

        # K = 3 at 0.5 can be jointly unattainable; then move halfway closer to the reference.
        for fraction in (FRACTION, FRACTION / 2, FRACTION / 4):
            b = start + fraction * (top - start)
            if ours(b)().feasible:
                break
        row["fraction"] = fraction
        t_ours, sol = _timed(ours(b), cfg["ours_repeats"], warmup=1)
        row.update(feasible=bool(sol.feasible), converged=bool(sol.converged), iterations=int(sol.iterations))
        if not sol.feasible:
            row.update(skipped="jointly unattainable thresholds")
            rows.append(row)
            log(f"  {name:17s} N={n:3d} M={m} K={s.n_objectives}: skipped (thresholds unattainable)")
            continue
        t_slsqp, ref_policy = _timed(partial(primal_slsqp, rates, s.reference, nu, b, tau), cfg["slsqp_repeats"])
        ours_policy = sol.policy.reshape(m, n)
        gap = _objective(ours_policy, rates, s.reference, nu, tau) - _objective(ref_policy, rates, s.reference, nu, tau)
        row.update(
            t_ours_s=t_ours,
            t_slsqp_s=t_slsqp,
            ratio=t_slsqp / t_ours,
            max_abs_diff=float(np.max(np.abs(ours_policy - ref_policy))),
            objective_gap=gap,
            slsqp_converged=bool(gap <= SLSQP_STALL_GAP),
        )
        rows.append(row)
        note = "" if row["slsqp_converged"] else f"  (SLSQP stalled: ours better by {gap:.2e})"
        frac = "" if fraction == FRACTION else f" b at {fraction:g}"
        log(
            f"  {name:17s} N={n:3d} M={m} K={s.n_objectives}{frac}: solve_tabular {t_ours * 1e3:7.3f} ms, "
            f"SLSQP {t_slsqp * 1e3:9.1f} ms, ratio {row['ratio']:8.1f}x, |diff| {row['max_abs_diff']:.1e}{note}"
        )

    summary = []
    for n in cfg["sizes"]:
        done = [r for r in rows if r["N"] == n and "ratio" in r]
        conv = [r for r in done if r["slsqp_converged"]]
        ratios = np.array([r["ratio"] for r in done])
        summary.append(
            {
                "N": n,
                "instances": len(done),
                "skipped": sum(1 for r in rows if r["N"] == n and "ratio" not in r),
                "median_ratio": float(np.median(ratios)),
                "min_ratio": float(ratios.min()),
                "median_ratio_M1": float(np.median([r["ratio"] for r in done if r["M"] == 1])),
                "median_ratio_M4": float(np.median([r["ratio"] for r in done if r["M"] == 4] or [np.nan])),
                "max_abs_diff_all": float(max(r["max_abs_diff"] for r in done)),
                "max_abs_diff_slsqp_converged": float(max((r["max_abs_diff"] for r in conv), default=np.nan)),
                "slsqp_stalls": len(done) - len(conv),
                "min_objective_gap": float(min(r["objective_gap"] for r in done)),
                "ours_all_converged": all(r["converged"] for r in done),
            }
        )
    return rows, summary


# --------------------------------------------------------------------------- 2. sweep


def _naive_dual_peer(rates, reference, nu, grid, tau):
    """Each threshold from lambda = 0 with scipy L-BFGS-B on an independent dual, then the
    policy's values and KL (the same outputs the sweep produces)."""
    primary, secondary = rates[0], rates[1:]
    base = np.log(reference) + primary / tau
    slopes = secondary / tau
    values, lams, kls, nits, pgs = [], [], [], [], []

    def dual(lam, b):
        logits = base + np.tensordot(lam, slopes, axes=1)
        mx = logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(logits - mx).sum(axis=1, keepdims=True)) + mx
        pi = np.exp(logits - log_z)
        grad = np.einsum("mn,jmn->j", pi * nu[:, None], secondary) - b
        return tau * float(nu @ log_z[:, 0]) - float(lam @ b), grad

    for b in grid:
        res = minimize(dual, np.zeros(b.size), args=(b,), jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * b.size,
                       options={"gtol": 1e-10, "ftol": 0.0, "maxiter": 1000})
        logits = base + np.tensordot(res.x, slopes, axes=1)
        logits -= logits.max(axis=1, keepdims=True)
        log_pi = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        pi = np.exp(log_pi)
        values.append(policy_values(pi, rates, nu))
        kls.append(float(nu @ (pi * (log_pi - np.log(reference))).sum(axis=1)))
        lams.append(res.x)
        nits.append(int(res.nit))
        grad = dual(res.x, b)[1]
        pgs.append(float(np.max(np.abs(np.where(res.x > 0, grad, np.minimum(grad, 0.0))))))
    return np.array(values), np.array(lams), np.array(kls), nits, pgs


def bench_sweep(cfg, tau: float, profile: bool, log) -> dict:
    n, m, points, repeats = (cfg["sweep"][k] for k in ("n", "m", "points", "repeats"))
    out = {"N": n, "M": m, "K": 2, "structure": "bt_conflict", "points": points, "tau": tau}
    t0 = time.perf_counter()
    structure = make_structure("bt_conflict", n_responses=n, n_prompts=m, seed=SEED)
    out["t_generate_s"] = time.perf_counter() - t0
    out["preferences_gib"] = structure.preferences.nbytes / 2**30
    log(f"  instance: make_structure('bt_conflict', N={n}, M={m}, seed={SEED}): preferences "
        f"{out['preferences_gib']:.2f} GiB float64, built in {out['t_generate_s']:.1f} s")
    t0 = time.perf_counter()
    problem = TabularProblem.build(structure.preferences)  # uniform reference and behaviour, equal weights
    out["t_build_s"] = time.perf_counter() - t0
    log(f"  TabularProblem.build (validation + win-rates): {out['t_build_s']:.2f} s")
    rates, reference, nu = problem.rates, problem.reference, problem.prompt_weights
    start = policy_values(reference, rates, nu)[1]
    top = attainable_max(rates, nu)[1]
    fractions = np.linspace(0.0, 0.95, points)
    grid = start + fractions * (top - start)
    out.update(threshold_min=float(grid[0]), threshold_max=float(grid[-1]), attainable_max=float(top))
    log(f"  thresholds: {points} from {grid[0]:.4f} (reference's value) to {grid[-1]:.4f} "
        f"(95% of the way to the attainable max {top:.4f}), tau = {tau}")

    def sweep():
        return problem.sweep(grid, tau, keep_policies=False)

    t_sweep, result = _timed(sweep, repeats, warmup=1)
    if profile:
        prof = cProfile.Profile()
        prof.runcall(sweep)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(18)
        out["profile_top_tottime"] = text.getvalue()
    out.update(t_sweep_s=t_sweep, t_per_threshold_ms=1e3 * t_sweep / points, meets_1s=bool(t_sweep < SWEEP_TARGET_S))
    out["all_feasible"] = bool(result.feasible.all())
    log(f"  TabularProblem.sweep (problem prebuilt, median of {repeats}): {t_sweep:.3f} s, "
        f"{1e3 * t_sweep / points:.2f} ms per threshold; target < {SWEEP_TARGET_S:g} s: "
        f"{'met' if out['meets_1s'] else 'MISSED'} ({t_sweep / SWEEP_TARGET_S:.2f}x the target)")
    if profile:
        log(out["profile_top_tottime"])
    t_with_build, _ = _timed(lambda: sweep_thresholds(structure.preferences, grid, tau, keep_policies=False), 1)
    out["t_sweep_with_build_s"] = t_with_build
    log(f"  sweep_thresholds including validation and win-rates: {t_with_build:.2f} s")

    t0 = time.perf_counter()
    values, lams, kls, nits, pgs = _naive_dual_peer(rates, reference, nu, grid[:, None], tau)
    t_naive = time.perf_counter() - t0
    out.update(
        t_naive_lbfgsb_s=t_naive,
        naive_over_sweep=t_naive / t_sweep,
        naive_mean_iterations=float(np.mean(nits)),
        naive_max_projected_gradient=float(max(pgs)),
        max_abs_value_diff=float(np.max(np.abs(values - result.values))),
        max_abs_multiplier_diff=float(np.max(np.abs(lams - result.multipliers))),
        max_abs_kl_diff=float(np.max(np.abs(kls - result.kl))),
    )
    log(f"  naive peer (scipy L-BFGS-B on the dual from lambda = 0, no warm start): {t_naive:.2f} s, "
        f"{np.mean(nits):.1f} iterations per threshold, largest projected gradient {max(pgs):.1e}; "
        f"ratio naive / sweep = {t_naive / t_sweep:.1f}x")
    log(f"  agreement with the peer: max |V diff| {out['max_abs_value_diff']:.1e}, "
        f"max |lambda diff| {out['max_abs_multiplier_diff']:.1e}, max |KL diff| {out['max_abs_kl_diff']:.1e}")
    return out


# --------------------------------------------------------------------------- report


def markdown(summary: list[dict], sweep: dict | None) -> str:
    lines = [] if not summary else [
        (
            "| N | instances | median SLSQP / solve_tabular | min ratio | max abs diff (SLSQP converged) "
            "| max abs diff (all) | SLSQP stalls | target (N=64: >=100x, diff < 1e-5) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        target = "-"
        if s["N"] == 64:
            met = s["median_ratio"] >= SPEEDUP_TARGET and s["max_abs_diff_slsqp_converged"] < SAME_ANSWER
            target = "met" if met else "MISSED"
        lines.append(
            f"| {s['N']} | {s['instances']} | {s['median_ratio']:.0f}x | {s['min_ratio']:.0f}x "
            f"| {s['max_abs_diff_slsqp_converged']:.1e} | {s['max_abs_diff_all']:.1e} | {s['slsqp_stalls']} | {target} |"
        )
    if sweep is not None:
        with_build = sweep["t_sweep_with_build_s"]
        lines += [
            *([""] if lines else []),
            "| sweep | points | sweep alone | per threshold | with build | naive L-BFGS-B | naive / sweep | target < 1 s |",
            "|---|---|---|---|---|---|---|---|",
            (
                f"| bt_conflict N={sweep['N']} M={sweep['M']} K=2 | {sweep['points']} | {sweep['t_sweep_s']:.3f} s "
                f"| {sweep['t_per_threshold_ms']:.2f} ms | {'-' if with_build is None else f'{with_build:.2f} s'} "
                f"| {sweep['t_naive_lbfgsb_s']:.2f} s | {sweep['naive_over_sweep']:.1f}x "
                f"| {'met' if sweep['meets_1s'] else 'MISSED'} |"
            ),
        ]
    return "\n".join(lines)


def _jsonable(obj):
    """NaN / inf become null; numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run in well under a minute")
    parser.add_argument("--json", metavar="PATH", help="also save every number to PATH")
    parser.add_argument("--tau", type=float, default=TAU, help=f"KL strength (default {TAU})")
    parser.add_argument("--skip-slsqp", action="store_true", help="run only the sweep benchmark")
    parser.add_argument("--skip-sweep", action="store_true", help="run only the SLSQP comparison")
    parser.add_argument("--profile", action="store_true", help="cProfile one sweep and print the top functions")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL

    def log(msg):
        print(msg, flush=True)

    wall0 = time.perf_counter()
    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "mode": "quick" if args.quick else "full",
        "seed": SEED,
        "tau": args.tau,
    }
    log(f"# bench/tabular.py ({env['mode']}): python {env['python']}, numpy {env['numpy']}, "
        f"scipy {env['scipy']}, {env['cpus']} CPUs, OPENBLAS_NUM_THREADS={env['blas_threads']}, tau = {args.tau}, seed = {SEED}")
    report = {"env": env, "solver": tabular.__file__}
    rows, summary, sweep = [], [], None
    if not args.skip_slsqp:
        log(f"\n## 1. solve_tabular vs SLSQP primal (median of {cfg['ours_repeats']} / {cfg['slsqp_repeats']} runs; "
            "reference 'dirichlet', thresholds halfway to the attainable max)")
        rows, summary = bench_vs_slsqp(cfg, args.tau, log)
        for s in summary:
            log(f"  N={s['N']:3d}: median ratio {s['median_ratio']:.1f}x (M=1 {s['median_ratio_M1']:.1f}x, "
                f"M=4 {s['median_ratio_M4']:.1f}x, min {s['min_ratio']:.1f}x) over {s['instances']} instances; "
                f"max |diff| {s['max_abs_diff_slsqp_converged']:.1e} where SLSQP converged, "
                f"{s['max_abs_diff_all']:.1e} overall ({s['slsqp_stalls']} SLSQP stalls; min objective gap "
                f"ours - SLSQP {s['min_objective_gap']:.1e})")
    if not args.skip_sweep:
        log(f"\n## 2. sweep_thresholds, {cfg['sweep']['points']} thresholds, keep_policies=False")
        sweep = bench_sweep(cfg, args.tau, args.profile, log)
    report.update(instances=rows, summary=summary, sweep=sweep)
    report["wall_s"] = time.perf_counter() - wall0
    report["peak_rss_gib"] = _peak_rss_gib()
    log(f"\nwall time {report['wall_s']:.1f} s, peak RSS {report['peak_rss_gib']:.2f} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps(_jsonable(report), indent=2) + "\n")
        log(f"saved {args.json}")
    log("\n" + markdown(summary, sweep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
