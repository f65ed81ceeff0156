"""Sweep: threshold sweeps (the MOPO front as the threshold moves) and ablations over τ, ε, n, β and t0,
for one or several structures, with the metrics (how close MOPO's points come to the exact front) beside each
figure. A thin view over
mopo_core.experiments.ablations; every number comes from there, and "Save as run" writes it to the run store."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

from app import shared
from mopo_core.experiments import ablations
from synthetic import STRUCTURES

TAUS = [0.001, 0.005, 0.01, 0.02, 0.05, 0.08, 0.1, 0.2, 0.5, 1.0]
EPSS = [0.0, 0.001, 0.005, 0.01, 0.05, 0.15]
EXACT_DATA = "exact preferences (n = ∞)"
DATA_SIZES = [EXACT_DATA, 10, 30, 100, 300, 1000, 3000, 10000]
VALUE_OPTIONS = {
    "tau": TAUS,
    "eps": EPSS,
    "n": [10, 30, 100, 300, 1000, 3000, 10000, None],
    "beta": [0.5, 0.9, 0.95, 0.99, 0.999, 1.0, None],
    "t0": [1, 10, 50, 100, 200, 500, None],
}
PARAMETER_NAMES = {
    "tau": "τ · KL strength (exact solver)",
    "eps": "ε · robust radius (exact solver)",
    "n": "n · comparisons per prompt (exact solver on estimated preferences)",
    "beta": "β · threshold ratchet (Algorithm 1)",
    "t0": "t0 · lagged-reference period (Algorithm 1)",
}
METHOD_NAMES = {"mopo": "MOPO (exact dual solver)", "mopo_alg1": "MOPO (Algorithm 1)"}
METRIC_PANELS = [  # (column, panel title, axis title with direction)
    ("hv_ratio", "share of the exact front's area (HV ratio) ↑", "HV ratio to the exact front (higher is better ↑)"),
    ("igd_plus", "distance to the exact front (IGD+) ↓", "IGD+ to the exact front (lower is better ↓)"),
    ("satisfaction", "share of thresholds met ↑", "share of thresholds met (higher is better ↑)"),
    ("mean_regret", "primary lost to the best (mean regret) ↓", "mean primary regret vs LP (lower is better ↓)"),
]
#: Half-width of the intervals shown: estimate ± Z · SE (two-sided 95%).
Z = 1.96
#: Sweep points whose threshold is broken on the truth: hollow circles (in the structure's colour), larger than
#: the filled points that meet theirs.
BROKEN_MARKER = dict(symbol="circle-open", size=11, line=dict(width=2.5))
#: Margins offered for the threshold sweep: enforce b + z·SE.
MARGINS = [0.0, 1.0, 1.64]
#: The metrics in plain words (the technical name in brackets), each with its definition (the tables' tooltips).
METRICS = {
    "hv_ratio": ("share of the exact front's area (HV ratio)",
                 "Hypervolume of MOPO's points over the exact front's, both measured from the reference point "
                 "(the reference policy's values). 1 = as good as the exact front; higher is better."),
    "hypervolume": ("area covered (hypervolume)",
                    "Hypervolume: the area (volume for K ≥ 3) dominated by MOPO's points and dominating the reference "
                    "point. Higher is better."),
    "igd_plus": ("distance to the exact front (IGD+)",
                 "Inverted generational distance plus: the mean distance from the exact front (its part above the "
                 "reference point) to MOPO's nearest point, counting only where MOPO is worse. 0 = on the front; "
                 "lower is better."),
    "satisfaction": ("share of thresholds met",
                     "Satisfaction: the share of attainable thresholds whose TRUE secondary value is at or above the "
                     "threshold. Higher is better."),
    "max_violation": ("largest shortfall below a threshold",
                      "Max violation: the largest amount by which a TRUE secondary value falls below its threshold. "
                      "0 = none broken; lower is better."),
    "mean_regret": ("primary lost to the best (mean regret)",
                    "Mean regret: the LP optimum's primary value minus MOPO's, averaged over the thresholds met. "
                    "Lower is better."),
    "mean_kl": ("mean KL to the reference", "Mean KL divergence of MOPO's policies to the reference policy."),
    "gap_to_oracle": ("distance to exact-data MOPO",
                      "Gap to oracle: the mean over thresholds of the largest |V_k − V_k(exact MOPO)|, exact MOPO being "
                      "the dual solver on the TRUE preferences at the same τ and ε = 0. 0 when that is what was run."),
    "winrate_error": ("win-rate estimation error",
                      "Mean |ŵ − w| of the win-rates the policies were fitted on. 0 with exact preferences."),
    "feasible_share": ("share the solver found feasible",
                       "Feasible share: the share of thresholds the solver declared feasible on the data it was "
                       "fitted on."),
    "n_points": ("points", "Number of sweep points (thresholds)."),
}
FRONT_HV = ("exact front's area (front HV)", "Hypervolume of the exact front, from the same reference point.")
TABLE_COLUMNS = {column: plain for column, (plain, _) in METRICS.items()}


def colour(name: str) -> str:
    """One fixed colour per structure, the same whatever else is selected."""
    return qualitative.Plotly[STRUCTURES.index(name) % len(qualitative.Plotly)]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


@st.cache_resource(show_spinner="Computing the exact front…", max_entries=32)
def exact(name: str, n: int, m: int, seed: int) -> ablations.ExactReference:
    return ablations.exact_reference(name, n, m, seed)


@st.cache_data(show_spinner="Sweeping thresholds (with a margin: a fixed point per threshold)…", max_entries=64)
def sweep(name, n, m, seed, tau, eps, n_thresholds, n_comparisons, margin=0.0) -> ablations.SweepOutcome:
    return ablations.threshold_sweep(name, n, m, seed, tau, eps, n_thresholds, n_comparisons,
                                     exact=exact(name, n, m, seed), margin=margin)


@st.cache_data(show_spinner="Running the ablation…", max_entries=64)
def ablate(name, n, m, seed, parameter, values, tau, eps, n_thresholds, n_comparisons, t0, beta, steps):
    return ablations.ablation(name, parameter, list(values), n_responses=n, n_prompts=m, seed=seed, tau=tau, eps=eps,
                              n_thresholds=n_thresholds, n_comparisons=n_comparisons, t0=t0, beta=beta, steps=steps,
                              exact=exact(name, n, m, seed))


# --------------------------------------------------------------------------- figure pieces


def add_exact(fig: go.Figure, ex: ablations.ExactReference, c: str, suffix: str = ""):
    """The exact front: a line for K = 2, LP samples for K >= 3."""
    pts = ex.front.points
    k = ex.n_objectives
    extra = "".join(f"<br>V{j}=%{{customdata[{j - 2}]:.3f}}" for j in range(2, k))
    fig.add_scatter(x=pts[:, 1], y=pts[:, 0], mode="lines" if k == 2 else "markers",
                    customdata=pts[:, 2:] if k > 2 else None,
                    line=dict(color=c, dash="dot"), marker=dict(color=c, size=4, opacity=0.35),
                    name=f"exact front (τ → 0, LP){suffix}", legendgroup=ex.name,
                    hovertemplate=f"exact front (LP, τ → 0)<br>structure: {ex.name}<br>V1=%{{x:.3f}}<br>V0=%{{y:.3f}}"
                                  f"{extra}<extra></extra>")


def add_reference_points(fig: go.Figure, exacts, c: str | None = None):
    """The hypervolume reference point (the reference policy's values), drawn and labelled once per distinct
    point: structures with a uniform reference and mu = pi_ref all share (0.5, 0.5, ...)."""
    distinct: dict[tuple, list] = {}
    for ex in exacts:
        distinct.setdefault(tuple(np.round(ex.reference_point, 12)), []).append(ex)
    for group in distinct.values():
        ref, k, label = group[0].reference_point, group[0].n_objectives, ", ".join(ex.name for ex in group)
        extra = "".join(f"<br>V{j}=%{{customdata[{j - 2}]:.3f}}" for j in range(2, k))
        shade = c or colour(group[0].name)
        fig.add_scatter(x=[ref[1]], y=[ref[0]], mode="markers", customdata=[ref[2:]] if k > 2 else None,
                        marker=dict(symbol="x", size=13, color=shade, line=dict(width=1, color="black")),
                        name=f"HV reference point = π_ref's values ({label})",
                        hovertemplate=f"hypervolume reference point (reference policy π_ref)<br>structure: {label}"
                                      f"<br>V1=%{{x:.3f}}<br>V0=%{{y:.3f}}{extra}<extra></extra>")
        fig.add_annotation(x=ref[1], y=ref[0], text="HV reference point", showarrow=True, arrowhead=2,
                           ax=45, ay=30, font=dict(size=11))


def point_customdata(points: pd.DataFrame, k: int) -> tuple[np.ndarray, str]:
    """customdata columns and the hover lines for MOPO points: thresholds, multipliers, V2.., verdicts,
    and, for a sweep on sampled data, each value's estimate ± 1.96·SE and the enforced thresholds."""
    cols = [f"b{j}" for j in range(1, k)] + [f"lambda{j}" for j in range(1, k)] + [f"V{j}" for j in range(2, k)]
    data = points[cols].to_numpy(dtype=object)
    flags = np.stack([np.where(points.feasible, "yes", "no"), np.where(points.met, "yes", "no")], axis=1)
    data = np.concatenate([data, flags], axis=1)
    lines = [f"threshold b{j}=%{{customdata[{j - 1}]:.3f}}" for j in range(1, k)]
    lines += [f"λ{j}=%{{customdata[{k - 2 + j}]:.3f}}" for j in range(1, k)]
    lines += ["true V1=%{x:.3f}", "true V0=%{y:.3f}"]
    lines += [f"true V{j}=%{{customdata[{2 * (k - 1) + j - 2}]:.3f}}" for j in range(2, k)]
    n = len(cols)
    lines += [f"solver feasible: %{{customdata[{n}]}}", f"meets b on true values: %{{customdata[{n + 1}]}}"]
    if sampled(points):
        extra = [points[f"V{i}_est"].to_numpy() for i in range(k)] + \
                [Z * points[f"se{i}"].to_numpy() for i in range(k)] + \
                [points[f"b{j}_enforced"].to_numpy() for j in range(1, k)]
        start = data.shape[1]
        data = np.concatenate([data, np.stack(extra, axis=1).astype(object)], axis=1)
        lines += [f"estimate V{i}=%{{customdata[{start + i}]:.3f}} ± %{{customdata[{start + k + i}]:.3f}}"
                  for i in range(k)]
        lines += [f"enforced b{j}=%{{customdata[{start + 2 * k + j - 1}]:.3f}}" for j in range(1, k)]
    return data, "<br>".join(lines)


def sampled(points: pd.DataFrame) -> bool:
    """The points come from a sweep on sampled data (they carry estimates with standard errors)."""
    return "se0" in points and bool((points["se0"] > 0).any())


def broken_mask(points: pd.DataFrame) -> np.ndarray:
    """Sweep points whose threshold is broken by the policy's TRUE values (some of them, for K >= 3,
    at thresholds no policy meets: :func:`broken_caption` counts those apart)."""
    return (~points.met).to_numpy()


def front_title(names, what: str) -> str:
    proj = " (projection on V1, V0; V2 in the hover)" if len(names) > 2 else ""
    return f"{what}{proj}"


def front_figure(outs, names, title: str) -> go.Figure:
    """Exact fronts, HV reference points and MOPO sweep points, one colour per structure; the points
    whose threshold is broken on the truth are drawn as hollow circles."""
    fig = go.Figure()
    for out in outs:
        ex, c = out.exact, colour(out.exact.name)
        add_exact(fig, ex, c, f" · {ex.name}")
    add_reference_points(fig, [out.exact for out in outs], "black" if len(outs) > 1 else None)
    for out in outs:
        ex, c = out.exact, colour(out.exact.name)
        cfg = out.config
        broken = broken_mask(out.points)
        margin = f", z={cfg.get('margin', 0):g}" if cfg.get("margin") else ""
        for subset, name, marker in (
                (~broken, f"MOPO sweep (τ={cfg['tau']:g}, ε={cfg['eps']:g}{margin}) · {ex.name}",
                 dict(color=c, size=7)),
                (broken, f"threshold broken on the truth (hollow) · {ex.name}", BROKEN_MARKER | dict(color=c))):
            pts = out.points[subset]
            if not len(pts) and subset is broken:
                continue
            data, lines = point_customdata(pts, ex.n_objectives)
            fig.add_scatter(x=pts.V1, y=pts.V0, mode="markers", customdata=data, legendgroup=ex.name,
                            marker=marker, name=name,
                            hovertemplate=f"method: {METHOD_NAMES['mopo']}<br>structure: {ex.name}<br>"
                                          f"τ={cfg['tau']:g}, ε={cfg['eps']:g}{margin}<br>{lines}<extra></extra>")
    return shared.style(fig, front_title(names, title), shared.axis_title(names, 1), shared.axis_title(names, 0), 520)


def estimate_figure(outs, names) -> go.Figure:
    """Per secondary j: each sweep point's TRUE V_j (filled; hollow when its threshold is broken)
    next to its ESTIMATE ± 1.96·SE (open diamond with error bar), against the threshold b_j; the
    line V_j = b_j separates met (above) from broken (below)."""
    k = len(names)
    fig = make_subplots(rows=1, cols=k - 1, subplot_titles=[f"V{j} {names[j]}" for j in range(1, k)],
                        horizontal_spacing=0.1)
    for out in outs:
        c, pts, name = colour(out.exact.name), out.points, out.exact.name
        broken = broken_mask(pts)
        for j in range(1, k):
            b = pts[f"b{j}"]
            fig.add_scatter(x=[b.min(), b.max()], y=[b.min(), b.max()], mode="lines", row=1, col=j,
                            line=dict(color="grey", dash="dash", width=1), name="V = b (the threshold)",
                            legendgroup="threshold", showlegend=j == 1 and out is outs[0],
                            hovertemplate="V = b: on this line the threshold holds exactly<extra></extra>")
            fig.add_scatter(x=b, y=pts[f"V{j}_est"], mode="markers", row=1, col=j,
                            error_y=dict(type="data", array=Z * pts[f"se{j}"], color=c, thickness=1, width=0),
                            marker=dict(symbol="diamond-open", color=c, size=6, opacity=0.6),
                            name=f"estimate ± 1.96·SE · {name}", legendgroup=f"est {name}", showlegend=j == 1,
                            customdata=Z * pts[f"se{j}"],
                            hovertemplate=f"structure: {name}<br>b{j}=%{{x:.3f}}<br>estimate V{j}=%{{y:.3f}} ± "
                                          "%{customdata:.3f}<extra></extra>")
            for subset, label, marker in (
                    (~broken, f"true value · {name}", dict(color=c, size=6)),
                    (broken, f"true value, threshold broken (hollow) · {name}", BROKEN_MARKER | dict(color=c))):
                if not subset.any():
                    continue
                fig.add_scatter(x=b[subset], y=pts[f"V{j}"][subset], mode="markers", row=1, col=j, marker=marker,
                                name=label, legendgroup=label, showlegend=j == 1,
                                customdata=np.stack([pts[f"V{j}_est"][subset], Z * pts[f"se{j}"][subset]], axis=1),
                                hovertemplate=f"structure: {name}<br>b{j}=%{{x:.3f}}<br>true V{j}=%{{y:.3f}}<br>"
                                              f"estimate V{j}=%{{customdata[0]:.3f}} ± %{{customdata[1]:.3f}}"
                                              "<extra></extra>")
        for j in range(1, k):
            fig.update_xaxes(title_text=f"threshold b{j} (win-rate vs behaviour; stricter →)", row=1, col=j)
            fig.update_yaxes(title_text=f"V{j} (win-rate vs behaviour; higher is better ↑)", row=1, col=j)
    return shared.style(fig, "True value next to the estimate ± 1.96·SE at each threshold (below the dashed line: "
                             "the threshold is broken)", None, None, 460)


def broken_caption(outs) -> str:
    """How many sweep points break their threshold on the truth, per structure."""
    parts = []
    for out in outs:
        pts = out.points
        broken = broken_mask(pts)
        part = f"{out.exact.name}: {int(broken.sum())} of {len(pts)} thresholds broken on the truth"
        unattainable = int((broken & pts.lp_V0.isna().to_numpy()).sum())
        if unattainable:
            part += f" ({unattainable} of them unattainable by any policy)"
        parts.append(part)
    data = outs[0].config["n_comparisons"]
    z = outs[0].config.get("margin", 0)
    source = "exact preferences" if data is None else f"{data} comparisons per prompt, margin z = {z:g}"
    return (f"Fitted on {source}. " + "; ".join(parts) + ". Broken points are drawn as hollow circles; "
            "'broken' means the policy's TRUE secondary value is below the threshold asked for.")


def multiplier_figure(outs, names) -> go.Figure:
    fig = go.Figure()
    k = len(names)
    for out in outs:
        c, pts = colour(out.exact.name), out.points
        for j in range(1, k):
            fig.add_scatter(x=pts[f"b{j}"], y=pts[f"lambda{j}"], mode="lines+markers" if k == 2 else "markers",
                            marker=dict(color=c, size=5, symbol="circle" if j == 1 else "diamond"),
                            line=dict(color=c, dash="solid" if j == 1 else "dash"), legendgroup=out.exact.name,
                            name=f"λ{j} · {out.exact.name}", customdata=pts[["V0", f"V{j}"]].to_numpy(),
                            hovertemplate=f"method: {METHOD_NAMES['mopo']}<br>structure: {out.exact.name}<br>"
                                          f"threshold b{j}=%{{x:.3f}}<br>λ{j}=%{{y:.3f}}<br>V0=%{{customdata[0]:.3f}}"
                                          f"<br>V{j}=%{{customdata[1]:.3f}}<extra></extra>")
    x_title = ("threshold b_j on V_j (win-rate vs behaviour; higher is stricter →)" if k > 2 else
               f"threshold b1 on V1 {names[1]} (win-rate vs behaviour; higher is stricter →)")
    return shared.style(fig, "Multipliers as the threshold moves (λ = 0: the constraint is slack)",
                        x_title, "multiplier λ (≥ 0; the price of the constraint ↑)", 400,
                        subtitle="All objectives maximised · thresholds are win-rates against the behaviour policy; "
                                 "λ is what a constraint costs")


def metrics_figure(tables: pd.DataFrame, parameter: str) -> go.Figure:
    symbol = ablations.SYMBOLS[parameter]
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t, _ in METRIC_PANELS], vertical_spacing=0.16)
    method = METHOD_NAMES["mopo_alg1" if parameter in ablations.ALGORITHM1_PARAMETERS else "mopo"]
    for name, rows in tables.groupby("structure", sort=False):
        for i, (col, _, axis) in enumerate(METRIC_PANELS):
            fig.add_scatter(x=rows.label, y=rows[col], mode="lines+markers", row=i // 2 + 1, col=i % 2 + 1,
                            marker=dict(color=colour(name), size=8), line=dict(color=colour(name)),
                            name=name, legendgroup=name, showlegend=i == 0,
                            hovertemplate=f"method: {method}<br>structure: {name}<br>%{{x}}<br>{axis.split(' (')[0]}"
                                          f"=%{{y:.3f}}<extra></extra>")
    ranges = {"hv_ratio": [0, max(1.05, float(np.nanmax(tables.hv_ratio, initial=0)) + 0.05)],
              "satisfaction": [-0.05, 1.05]}
    for i, (col, _, axis) in enumerate(METRIC_PANELS):
        fig.update_yaxes(title_text=axis.replace(" (", "<br>("), range=ranges.get(col), row=i // 2 + 1,
                         col=i % 2 + 1)
    fig.update_xaxes(type="category")
    fig.update_annotations(font_size=12)
    return shared.style(fig, f"Ablation over {symbol}: how close MOPO comes to the exact front, per value",
                        f"{symbol} (categories, increasing)", None, 640,
                        subtitle="Scores of MOPO's points against the exact front, on the true preferences")


def ablation_front_figure(out: ablations.AblationOutcome) -> go.Figure:
    ex, names, parameter = out.exact, out.exact.objective_names, out.config["parameter"]
    fig = go.Figure()
    add_exact(fig, ex, "#444444")
    add_reference_points(fig, [ex], "black")
    labels = list(dict.fromkeys(out.points.label))
    shades = sample_colorscale("Viridis", [i / max(len(labels) - 1, 1) for i in range(len(labels))])
    for label, shade in zip(labels, shades, strict=True):
        pts = out.points[out.points.label == label]
        data, lines = point_customdata(pts, ex.n_objectives)
        method = METHOD_NAMES[pts.method.iloc[0]]
        fig.add_scatter(x=pts.V1, y=pts.V0, mode="markers", customdata=data, marker=dict(color=shade, size=8),
                        name=f"{method} · {label}",
                        hovertemplate=f"method: {method}<br>structure: {ex.name}<br>{label}<br>{lines}<extra></extra>")
    title = f"{ex.name}: MOPO points for each {ablations.SYMBOLS[parameter]} (true values)"
    return shared.style(fig, front_title(names, title), shared.axis_title(names, 1), shared.axis_title(names, 0), 500)


def grouped(outs):
    """Outcomes grouped by objective names (structures with the same axes share a figure)."""
    groups: dict[tuple, list] = {}
    for out in outs:
        groups.setdefault(out.exact.objective_names, []).append(out)
    return groups.items()


def sweep_metrics_table(outs) -> pd.DataFrame:
    """Metrics as rows (plain names), one column per structure (narrow enough to sit beside the figure)."""
    table = pd.DataFrame({"metric": [*TABLE_COLUMNS.values(), FRONT_HV[0]]})
    for out in outs:
        values = [*(out.metrics[c] for c in TABLE_COLUMNS), out.metrics["front_hypervolume"]]
        # the count stays an integer (it reads "100", not "100.000" on screen); the rest are floats
        table[out.exact.name] = pd.Series([int(v) if c == "n_points" else float(v)
                                           for c, v in zip([*TABLE_COLUMNS, "front_hypervolume"], values)], dtype=object)
    return table


def with_intervals(points: pd.DataFrame, k: int) -> pd.DataFrame:
    """The points with each estimate's 95% interval (estimate ± 1.96·SE) as columns, after the SEs."""
    if "se0" not in points:
        return points
    out = points.copy()
    for i in range(k):
        out[f"V{i}_low"] = out[f"V{i}_est"] - Z * out[f"se{i}"]
        out[f"V{i}_high"] = out[f"V{i}_est"] + Z * out[f"se{i}"]
    return out


def glossary() -> str:
    """Each metric's plain name, its technical name and definition (the metric column's tooltip)."""
    return "\n\n".join(f"**{plain}**: {definition}" for plain, definition in [*METRICS.values(), FRONT_HV])


def metric_help(table: pd.DataFrame) -> dict:
    """Column tooltips: a metric column's definition (with its technical name); the metric-name column, the
    glossary. On-screen numbers come from shared.readable_table (one format; the exports keep full precision)."""
    helps = {plain: definition for plain, definition in METRICS.values()}
    config = {c: st.column_config.Column(c, help=helps[c]) for c in table.columns if c in helps}
    if "metric" in table.columns:
        config["metric"] = st.column_config.Column("metric", help=glossary(), pinned=True)
    for name in ("structure", "label"):  # the ablation table: its row names stay in view as it scrolls
        if name in table.columns:
            config[name] = st.column_config.Column(name, pinned=True)
    return config


def run_name(out) -> str:
    """The name a saved run gets: what, on which structure, τ and ε, and the data size (unless ablated)."""
    cfg = out.config
    ablated = cfg.get("parameter") if out.kind == "ablation" else None
    fixed = [f"{ablations.SYMBOLS[p]}={cfg[ablations.CONFIG_KEYS[p]]:g}" for p in ("tau", "eps") if p != ablated]
    if ablated != "n":
        fixed.append("exact" if cfg["n_comparisons"] is None else f"n = {cfg['n_comparisons']} sampled")
    if out.kind == "sweep" and cfg.get("margin"):
        fixed.append(f"z={cfg['margin']:g}")
    what = "sweep" if out.kind == "sweep" else f"ablation over {ablations.SYMBOLS[ablated]}"
    return f"{what} on {cfg['structure']} ({', '.join(fixed)})"


def reference_caption(outs) -> str:
    points = "; ".join(f"{o.exact.name} ({', '.join(shared.number_text(v) for v in o.exact.reference_point)})"
                       for o in outs)
    return f"Hypervolume reference point (V0, V1, …) = the reference policy's values: {points}."


def save_button(outs, kind: str):
    """"Save as run": one run per structure; the confirmation stays until the settings change."""
    signature = repr([out.config for out in outs])
    if st.button("Save as run", key="sweep_save", type="primary",
                 help=f"Record each structure's {kind} as a run (kind '{kind}') in the run store"):
        store = shared.run_store()
        ids = [ablations.save_run(store, out, run_name(out)) for out in outs]
        st.session_state["sweep_saved"] = (ids, kind, str(store.path), signature)
    saved = st.session_state.get("sweep_saved")
    if saved and saved[3] == signature:
        ids, saved_kind, path, _ = saved
        st.success(f"Saved as run{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))} (kind '{saved_kind}') "
                   f"in {path}: " + "; ".join(f"“{run_name(out)}”" for out in outs))


# --------------------------------------------------------------------------- the page


st.title("Sweep: the MOPO front as the threshold moves, and ablations")
with st.sidebar:
    st.subheader("Structures")
    names = st.multiselect("Structures (one colour each)", STRUCTURES, default=["bt_conflict"], key="sweep_structures")
    n_resp = st.slider("Responses per prompt (N)", 2, 32, 8, key="sweep_n")
    m_prompts = st.slider("Prompts (M)", 1, 8, 1, key="sweep_m")
    m_multi = st.slider("Prompts for multi_prompt", 1, 16, 4, key="sweep_m_multi") if "multi_prompt" in names else 4
    seed = int(st.number_input("Seed", 0, 100_000, 0, key="sweep_seed"))
    st.subheader("MOPO settings")
    tau = st.select_slider("KL strength τ", TAUS, value=shared.DEFAULT_TAU, key="sweep_tau")
    eps = st.select_slider("Robust radius ε (0: off)", EPSS, value=0.0, key="sweep_eps")
    data = st.selectbox("Data: comparisons per prompt (n)", DATA_SIZES, key="sweep_data",
                        format_func=lambda v: v if isinstance(v, str) else f"{v} sampled comparisons")
n_comparisons = None if data == EXACT_DATA else int(data)

if not names:
    st.info("Pick at least one structure in the sidebar.")
    st.stop()


def prompts(name: str) -> int:
    return m_multi if name == "multi_prompt" else m_prompts


mode = st.radio("Mode", ["Threshold sweep", "Ablation"], horizontal=True, key="sweep_mode")
st.caption("Thresholds run from the reference policy's secondary value to 95% of the attainable maximum (a product "
           "grid for K = 3). Policies are fitted on the chosen data and every value and metric is on the TRUE "
           "preferences. Hypervolume reference point: the reference policy's values (drawn on every front).")

if mode == "Threshold sweep":
    cols = st.columns(2)
    n_thresholds = cols[0].slider("Number of thresholds", 5, 200, ablations.SWEEP_THRESHOLDS, key="sweep_n_thresholds")
    margin = cols[1].select_slider("Margin z: enforce b + z·SE (sampled data only)", MARGINS, value=0.0,
                                   key="sweep_margin", disabled=n_comparisons is None, format_func=lambda v: f"{v:g}",
                                   help="Each threshold is raised by z standard errors of the chosen policy's "
                                        "estimated value (z = 1.64: one-sided 95%)")
    margin = 0.0 if n_comparisons is None else margin
    try:
        outs = [sweep(name, n_resp, prompts(name), seed, tau, eps, n_thresholds, n_comparisons, margin)
                for name in names]
    except ValueError as exc:
        st.error(str(exc))
        st.stop()
    save_button(outs, "sweep")
    for objective_names, group in grouped(outs):
        key = slug("_".join(objective_names))
        points = pd.concat([o.points for o in group], ignore_index=True)
        left, right = st.columns([5, 4])  # room for the metrics' plain names beside the figure
        with left:
            fig = front_figure(group, objective_names, "Threshold sweep: MOPO against the exact front (true values)")
            shared.show_figure(fig, f"sweep_front_{key}", data=points)
            st.caption(broken_caption(group))
        with right:
            st.markdown("**How close MOPO's points come to the exact front** (on the true preferences; hover the "
                        "header *metric* for each one's definition)")
            metrics = sweep_metrics_table(group)
            shared.show_table(metrics, f"sweep_metrics_{key}", readable=True, column_config=metric_help(metrics))
            st.caption(reference_caption(group))
        if n_comparisons is not None:
            shared.show_figure(estimate_figure(group, objective_names), f"sweep_estimates_{key}", data=points)
            st.caption(f"Each policy was fitted on {n_comparisons} comparisons per prompt. The open diamonds are what "
                       "the data said (its estimated value, ± 1.96 standard errors); the dots are the truth. A "
                       "threshold holds when the dot is on or above the dashed line V = b.")
        shared.show_figure(multiplier_figure(group, objective_names), f"sweep_multipliers_{key}", data=points)
        with st.expander(f"Sweep points ({len(points)} rows)"):
            shared.show_table(with_intervals(points, len(objective_names)), f"sweep_points_{key}", readable=True)
else:
    parameter = st.selectbox("Ablated parameter", ablations.PARAMETERS, format_func=PARAMETER_NAMES.get,
                             key="sweep_parameter")
    algorithm1 = parameter in ablations.ALGORITHM1_PARAMETERS
    picked = st.multiselect(f"Values of {ablations.SYMBOLS[parameter]}", VALUE_OPTIONS[parameter],
                            default=list(ablations.DEFAULT_VALUES[parameter]), key=f"sweep_values_{parameter}",
                            format_func=lambda v: ablations.value_label(parameter, v))
    values = tuple(sorted(picked, key=lambda v: (v is None, 0 if v is None else v)))
    cols = st.columns(3)
    n_thresholds = cols[0].slider("Thresholds per value", 2, 50,
                                  ablations.ALGORITHM1_THRESHOLDS if algorithm1 else ablations.ABLATION_THRESHOLDS,
                                  key=f"sweep_ab_thresholds_{'alg1' if algorithm1 else 'exact'}")
    steps, t0, beta = ablations.ALGORITHM1_STEPS, None, None
    if algorithm1:
        steps = cols[1].select_slider("Algorithm 1 steps per threshold", [200, 500, 1000, 2000, 4000],
                                      ablations.ALGORITHM1_STEPS, key="sweep_steps")
        if parameter == "beta":
            t0 = cols[2].select_slider("Fixed t0 (lagged-reference period)", [1, 10, 50, 100, 200, 500], 100,
                                       key="sweep_fixed_t0")
        else:
            beta = cols[2].selectbox("Fixed β (ratchet)", [None, 0.9, 0.99, 0.999], key="sweep_fixed_beta",
                                     format_func=lambda v: ablations.value_label("beta", v))
        st.caption("Algorithm 1 runs from the reference at each attainable threshold; its last iterate can sit a "
                   "hair on either side of a threshold, and a threshold counts as met only within 1e-6.")
    if not values:
        st.info("Pick at least one value.")
        st.stop()
    try:
        outs = [ablate(name, n_resp, prompts(name), seed, parameter, values, tau, eps, n_thresholds, n_comparisons,
                       t0, beta, steps) for name in names]
    except ValueError as exc:
        st.error(str(exc))
        st.stop()
    save_button(outs, "ablation")
    table = pd.concat([o.table for o in outs], ignore_index=True)
    left, right = st.columns([3, 2])
    with left:
        shared.show_figure(metrics_figure(table, parameter), f"sweep_ablation_{parameter}", data=table)
    with right:
        st.markdown("**How close MOPO comes to the exact front, per value** (on the true preferences; hover a "
                    "column header for its definition)")
        shown = table[["structure", "label", *TABLE_COLUMNS]].rename(columns=TABLE_COLUMNS)
        shared.show_table(shown, f"sweep_ablation_table_{parameter}", readable=True, column_config=metric_help(shown))
        st.caption(reference_caption(outs))
    for out in outs:
        shared.show_figure(ablation_front_figure(out), f"sweep_ablation_front_{out.exact.name}", data=out.points)
