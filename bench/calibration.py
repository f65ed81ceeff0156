"""Do MOPO's thresholds hold on the truth when the win-rates come from n comparisons? (issue 13)

Run from the repository root: ``.venv/bin/python bench/calibration.py [--jobs 2]`` (the full run:
20 seeds x n in {100, 400, 1600, 6400} comparisons per prompt x 4 structures), or ``--quick``
(2 seeds, n in {100, 400}, 2 structures, 1 threshold, 20 resamples: a smoke run in seconds whose
numbers mean little). Writes to ``--out`` (default ``bench/results``): ``calibration.txt`` (what
it prints), ``calibration.csv`` (the summary), ``calibration_runs.csv`` (per structure, seed, n
and variant), ``calibration_thresholds.csv`` (per threshold) and ``calibration.png`` (headless
Chromium's picture of the plotly figure; ``calibration.html`` when no Chromium is on the PATH).

One case is a structure (N = 8 responses; one prompt, four for ``multi_prompt``), a seed (the
structure's and the data's, as in the suite), and n comparisons per prompt
(``synthetic.sample_comparisons``). Its thresholds (T, 1) lie at FRACTIONS of the way from the
reference policy's secondary value to the attainable maximum. Every variant answers each
threshold with one policy fitted on the n comparisons, scored on the TRUE preferences:

    mopo             plug-in: the solve on the estimated preferences (the bootstrap's point, z = 0)
    mopo_z1          margin: meet b + 1 SE (mopo_core.tabular.uncertainty.solve_with_margin)
    mopo_z1.64       margin: meet b + 1.64 SE
    mopo_robust      the robust solve with eps = eps_for_sample_size(n, N) (its stated rule)
    grid11, grid41   a weight grid of 11 / 41 points, the point chosen on the ESTIMATED values
                     (mopo_core.experiments.suite.choose_grid_points); each point is scalarised
                     IPO's population optimum pi ∝ pi_ref exp(sum_k a_k w_hat_k / tau), exact (no
                     optimiser error: only the choice on estimates and the grid's spacing count)
    mopo_oracle      MOPO on the true preferences: the floor of regret at this tau, not a variant

Metrics (mopo_core.experiments.suite.score_points, per case), then a 95% t-interval over seeds
(suite.mean_ci): ``satisfaction`` (share of the thresholds met on the truth), ``regret`` (the
LP optimum of the true primary at b minus the answer's true primary, averaged over the
thresholds met; seeds meeting none drop out), ``hv_ratio`` (the T answers' hypervolume over the
exact front's), ``declared_feasible`` (share of thresholds the variant's solve called attainable on
its data; "-" for the grids). Rows "all" pool the structures: per seed, the mean over structures.

Calibration: for the plug-in answer, the bootstrap's probability of meeting b
(``uncertainty.bootstrap``, B resamples, ``prob_meet``) against whether the answer met b on the
truth, in bins of the predicted probability, with Wilson 95% intervals of the observed share.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.special import softmax  # noqa: E402
from scipy.stats import norm  # noqa: E402

from mopo_core.experiments.suite import (  # noqa: E402
    MET_TOL,
    SuiteConfig,
    choose_grid_points,
    exact_answers,
    mean_ci,
    score_points,
)
from mopo_core.tabular.baselines import weight_grid  # noqa: E402
from mopo_core.tabular.solver import kl_divergence, policy_values, win_rates  # noqa: E402
from mopo_core.tabular.uncertainty import bootstrap, eps_for_sample_size, solve_with_margin  # noqa: E402
from synthetic import estimate_preferences, make_structure, sample_comparisons  # noqa: E402

STRUCTURES = ("bt_conflict", "cyclic", "mixture", "multi_prompt")
SIZES = (100, 400, 1600, 6400)
SEEDS = 20
#: Thresholds at these fractions of the way from pi_ref's secondary value to the attainable maximum.
FRACTIONS = (0.25, 0.5, 0.75)
TAU = 0.01
RESAMPLES = 200
MARGINS = (1.0, 1.64)
GRIDS = (11, 41)
N_RESPONSES = 8
MOPO_VARIANTS = ("mopo", *(f"mopo_z{z:g}" for z in MARGINS), "mopo_robust")
VARIANTS = (*MOPO_VARIANTS, *(f"grid{g}" for g in GRIDS), "mopo_oracle")
METRICS = ("satisfaction", "mean_regret", "hv_ratio", "declared_feasible")
TARGET = 0.95
BINS = np.linspace(0.0, 1.0, 11)
QUICK = {"structures": ("bt_conflict", "multi_prompt"), "sizes": (100, 400), "seeds": 2, "fractions": (0.5,),
         "resamples": 20}


def scalarised_grid(rates: np.ndarray, reference: np.ndarray, tau: float, weights: np.ndarray) -> np.ndarray:
    """(G, M, N): ``pi_a ∝ pi_ref exp(sum_k a_k w_k / tau)`` per prompt for each weight row a of
    ``weights`` (G, K), rates (K, M, N), reference (M, N): scalarised IPO's population optimum
    (mopo_core.tabular.baselines.scalarised_ipo)."""
    return softmax(np.log(reference)[None] + np.einsum("gk,kmn->gmn", weights, rates) / tau, axis=-1)


def run_case(name: str, seed: int, n: int, fractions, tau: float, resamples: int):
    """One structure, seed and n: (per-variant metric rows, per-threshold rows)."""
    m = SuiteConfig.multi_prompt_prompts if name == "multi_prompt" else 1
    s = make_structure(name, n_responses=N_RESPONSES, n_prompts=m, seed=seed)
    exact = exact_answers(s)
    start, top = exact.reference_point[1], exact.attainable_max[1]
    grid = start + np.asarray(fractions, float)[:, None] * (top - start)  # (T, 1)
    best = exact.best_primary(grid)
    data = sample_comparisons(s, n, seed=seed)
    counts = data.win_counts()
    estimated_rates = win_rates(estimate_preferences(counts), s.behaviour)
    args = (s.reference, s.behaviour, s.prompt_weights)
    solutions = {variant: [] for variant in VARIANTS if not variant.startswith("grid")}
    prob_meet = []
    eps = eps_for_sample_size(n, N_RESPONSES)
    for b in grid:
        boot = bootstrap(data, b, tau, resamples, seed, *args)
        prob_meet.append(float(boot.prob_meet[0]))
        solutions["mopo"].append(boot.point.solution)
        for z in MARGINS:
            solutions[f"mopo_z{z:g}"].append(solve_with_margin(counts, b, tau, z, *args).solution)
        solutions["mopo_robust"].append(solve_with_margin(counts, b, tau, 0.0, *args, eps=eps).solution)
        solutions["mopo_oracle"].append(exact.problem.solve(b, tau))
    answers = {variant: ([sol.policy for sol in sols], [sol.feasible for sol in sols])
               for variant, sols in solutions.items()}
    for g in GRIDS:
        policies = scalarised_grid(estimated_rates, s.reference, tau, weight_grid(2, g))
        estimated = np.array([policy_values(p, estimated_rates, s.prompt_weights) for p in policies])
        answers[f"grid{g}"] = (policies[choose_grid_points(estimated, grid)], [np.nan] * len(grid))
    runs, thresholds = [], []
    key = {"structure": name, "seed": seed, "n": n}
    for variant in VARIANTS:
        policies, feasible = answers[variant]
        policies = np.asarray(policies).reshape(len(grid), *s.reference.shape)
        values = np.array([policy_values(p, exact.rates, s.prompt_weights) for p in policies])
        kls = [kl_divergence(p, s.reference, s.prompt_weights) for p in policies]
        metrics = score_points(values, grid, exact, best, kls)
        runs.append({**key, "variant": variant, **{k: metrics[k] for k in ("satisfaction", "mean_regret", "hv_ratio",
                                                                             "mean_kl")},
                     "declared_feasible": float(np.mean(feasible))})
        for t, (b, v) in enumerate(zip(grid[:, 0], values)):
            thresholds.append({**key, "variant": variant, "threshold": t, "b": b, "lp_best": best[t], "V0": v[0],
                               "V1": v[1], "met": bool(v[1] >= b - MET_TOL), "declared_feasible": feasible[t],
                               "prob_meet": prob_meet[t] if variant == "mopo" else np.nan})
    return runs, thresholds


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% half-width over seeds per (structure, n, variant, metric); structure "all" pools
    the structures (per seed and n, the mean over structures)."""
    pooled = runs.groupby(["seed", "n", "variant"], sort=False)[list(METRICS)].mean().reset_index()
    frames = [runs, pooled.assign(structure="all")]
    rows = []
    for (structure, n, variant), group in pd.concat(frames).groupby(["structure", "n", "variant"], sort=False):
        for metric in METRICS:
            mean, half, count = mean_ci(group[metric])
            rows.append({"structure": structure, "n": n, "variant": variant, "metric": metric, "mean": mean,
                         "ci": half, "seeds": count})
    return pd.DataFrame(rows)


def wilson(successes: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if total == 0:
        return np.nan, np.nan
    z = norm.ppf(0.5 + level / 2)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def calibration_bins(thresholds: pd.DataFrame) -> pd.DataFrame:
    """The plug-in answers' predicted probability of meeting b against the observed share, per bin
    of BINS (the last bin includes 1)."""
    plain = thresholds[thresholds.variant == "mopo"]
    index = np.clip(np.digitize(plain.prob_meet, BINS) - 1, 0, len(BINS) - 2)
    rows = []
    for i in range(len(BINS) - 1):
        cases = plain[index == i]
        met = int(cases.met.sum())
        low, high = wilson(met, len(cases))
        rows.append({"bin": f"[{BINS[i]:.1f}, {BINS[i + 1]:.1f}{']' if i == len(BINS) - 2 else ')'}",
                     "cases": len(cases), "predicted": cases.prob_meet.mean() if len(cases) else np.nan,
                     "observed": met / len(cases) if len(cases) else np.nan, "observed_low": low,
                     "observed_high": high})
    return pd.DataFrame(rows)


def cell(mean: float, half: float) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.3f}" + (f" ± {half:.3f}" if np.isfinite(half) else "")


def tables(summary: pd.DataFrame) -> str:
    """Per metric, a Markdown table: rows (structure, n), columns variants, cells mean ± 95% half-width."""
    out = []
    for metric in METRICS:
        rows = summary[summary.metric == metric]
        wide = rows.assign(cell=[cell(a, b) for a, b in zip(rows["mean"], rows["ci"])]).pivot(
            index=["structure", "n"], columns="variant", values="cell")
        order = [s for s in dict.fromkeys(rows.structure) if s != "all"] + ["all"]
        wide = wide.reindex(pd.MultiIndex.from_product([order, sorted(set(rows.n))]))[list(VARIANTS)]
        wide = wide.reset_index().rename(columns={"level_0": "structure", "level_1": "n"})
        out.append(f"## {metric} (mean ± 95% half-width over seeds)\n\n{wide.to_markdown(index=False)}\n")
    return "\n".join(out)


def verdicts(summary: pd.DataFrame) -> list[str]:
    """Per MOPO variant: does it meet >= TARGET of the thresholds in every (structure, n) cell, and
    does its pooled regret fall as n grows?"""
    lines = []
    for variant in MOPO_VARIANTS:
        sat = summary[(summary.variant == variant) & (summary.metric == "satisfaction")]
        cells = sat[sat.structure != "all"]
        worst = cells.loc[cells["mean"].idxmin()]
        regret = summary[(summary.variant == variant) & (summary.metric == "mean_regret")
                         & (summary.structure == "all")].sort_values("n")["mean"].to_numpy()
        falls = bool(np.all(np.diff(regret) < 0))
        lines.append(f"verdict {variant}: satisfaction >= {TARGET} in every (structure, n): "
                     f"{'yes' if (cells['mean'] >= TARGET).all() else 'no'} (lowest {worst['mean']:.3f}, "
                     f"{worst.structure} n={worst.n}); pooled regret by n: "
                     f"{' > '.join(f'{r:.4f}' for r in regret) if falls else ', '.join(f'{r:.4f}' for r in regret)}"
                     f" ({'falls' if falls else 'does not fall'} at every step)")
    return lines


def figure(summary: pd.DataFrame, bins: pd.DataFrame, out: Path) -> Path:
    """Satisfaction and regret against n (structures pooled) and the bootstrap's calibration; a PNG
    from headless Chromium when one is on the PATH, else the HTML."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "threshold met on the truth (share)", "regret of the primary (met thresholds)",
        "bootstrap P(meet) vs observed (plug-in MOPO)"))
    pooled = summary[summary.structure == "all"]
    colours = dict(zip(VARIANTS, ("#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#1f77b4", "#17becf", "#7f7f7f")))
    for variant in VARIANTS:
        for col, metric in ((1, "satisfaction"), (2, "mean_regret")):
            rows = pooled[(pooled.variant == variant) & (pooled.metric == metric)].sort_values("n")
            fig.add_scatter(x=rows.n, y=rows["mean"], error_y=dict(type="data", array=rows.ci.fillna(0.0)),
                            mode="lines+markers", name=variant, legendgroup=variant, showlegend=col == 1,
                            line=dict(color=colours[variant], dash="dot" if variant == "mopo_oracle" else "solid"),
                            row=1, col=col)
    fig.add_hline(y=TARGET, line=dict(color="black", dash="dash", width=1), row=1, col=1)
    shown = bins[bins.cases > 0]
    fig.add_scatter(x=shown.predicted, y=shown.observed, mode="markers+text", text=shown.cases.astype(str),
                    textposition="top center", name="bins (cases)", marker=dict(size=9, color="#d62728"),
                    error_y=dict(type="data", symmetric=False, array=shown.observed_high - shown.observed,
                                 arrayminus=shown.observed - shown.observed_low), row=1, col=3)
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="black", dash="dash", width=1),
                    name="perfect calibration", row=1, col=3)
    for col in (1, 2):
        fig.update_xaxes(type="log", title_text="comparisons per prompt n", tickvals=sorted(set(pooled.n)), row=1,
                         col=col)
    fig.update_xaxes(title_text="predicted probability of meeting b", range=[-0.02, 1.02], row=1, col=3)
    fig.update_yaxes(range=[-0.02, 1.05], row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    fig.update_yaxes(title_text="observed share", range=[-0.02, 1.05], row=1, col=3)
    fig.update_layout(width=1500, height=520, template="plotly_white", margin=dict(l=50, r=20, t=60, b=50))
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                   None)
    html = out / "calibration.html"
    if browser is None:
        fig.write_html(html, include_plotlyjs=True)
        return html
    png = out / "calibration.png"
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "calibration.html"
        fig.write_html(page, include_plotlyjs=True, config={"staticPlot": True})
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1500,540", "--virtual-time-budget=5000", f"--screenshot={png}",
                        page.as_uri()], check=True, capture_output=True, timeout=120)
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run in seconds (2 seeds, 2 sizes, 2 structures)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for the outputs")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (cases run in parallel)")
    parser.add_argument("--tau", type=float, default=TAU, help=f"KL strength (default {TAU})")
    args = parser.parse_args()
    settings = QUICK if args.quick else {"structures": STRUCTURES, "sizes": SIZES, "seeds": SEEDS,
                                         "fractions": FRACTIONS, "resamples": RESAMPLES}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = [(name, seed, n, settings["fractions"], args.tau, settings["resamples"])
             for name in settings["structures"] for seed in range(settings["seeds"]) for n in settings["sizes"]]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(run_case, *zip(*cases), chunksize=4))
    elapsed = time.perf_counter() - start
    runs = pd.DataFrame([row for r, _ in done for row in r])
    thresholds = pd.DataFrame([row for _, t in done for row in t])
    summary = summarise(runs)
    bins = calibration_bins(thresholds)
    plain = thresholds[thresholds.variant == "mopo"]
    brier = float(np.mean((plain.prob_meet - plain.met) ** 2))
    ece = float(np.nansum(bins.cases * (bins.observed - bins.predicted).abs()) / bins.cases.sum())
    lines = [f"# Calibration: {len(cases)} cases ({len(settings['structures'])} structures x {settings['seeds']} seeds "
             f"x n in {list(settings['sizes'])}), thresholds at fractions {list(settings['fractions'])} of the way "
             f"from pi_ref to the attainable maximum, tau = {args.tau}, N = {N_RESPONSES}; "
             f"{elapsed:.0f} s with {args.jobs} worker(s)\n",
             tables(summary),
             f"## Calibration of the bootstrap (plug-in MOPO, B = {settings['resamples']}, "
             f"{len(plain)} thresholds)\n\n{bins.round(3).to_markdown(index=False)}\n",
             f"calibration of the bootstrap: B = {settings['resamples']}, {len(plain)} thresholds, Brier {brier:.4f}, "
             f"ECE {ece:.4f}\n",
             *verdicts(summary)]
    picture = figure(summary, bins, out)
    lines.append(f"\nwrote {out / 'calibration.txt'}, calibration.csv, calibration_runs.csv, "
                 f"calibration_thresholds.csv, {picture.name}")
    text = "\n".join(lines)
    print(text)
    (out / "calibration.txt").write_text(text + "\n")
    summary.to_csv(out / "calibration.csv", index=False)
    runs.to_csv(out / "calibration_runs.csv", index=False)
    thresholds.to_csv(out / "calibration_thresholds.csv", index=False)


if __name__ == "__main__":
    main()
