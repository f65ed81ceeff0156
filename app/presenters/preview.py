"""Threshold preview's page logic, without Streamlit: what the Train page shows before a run starts
(issue 14 item 6). The engine is :func:`mopo_core.data.preview.threshold_preview`: the exact tabular
MOPO over a preference file's own responses (win-rates from its labels smoothed by a tie-centred
prior, π_ref uniform over each prompt's responses, one λ shared across prompts, prompts equally
weighted). Here its result becomes the page's sentences, table and figure.

- :func:`preview_file`: the preview of a file with the form's values; a ``ValueError`` names the
  form field (:data:`FIELD_LABELS`) or the file and row.
- :func:`summary_lines`: which thresholds this data can support at all, in words.
- :func:`preview_table`: the per-threshold table with the page's column names.
- :func:`preview_figure`: the predicted trade-off (primary value against the threshold), with
  π_ref, the λ = 0 policy and the attainable maximum marked, and optionally trained runs' achieved
  points drawn over the prediction (:func:`achieved_points` reads them from finished runs).

All values are win-rates against the file's responses (0.5 = as good as the data); objectives are
maximised. A trained run is measured on another scale (its judge's win-rate against the reference
model's samples on held-out prompts), so its point is drawn over the prediction for orientation,
not as a check of it; the legend says so.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from mopo_core.data.preview import DEFAULT_PRIOR, DEFAULT_TAU, PreviewResult, threshold_preview

#: The form fields the preview reads, and their labels on the page (errors name these).
FIELD_LABELS = {
    "data": "Preference file",
    "tau": "τ (KL strength)",
    "prior": "Label prior (pseudo-comparisons per pair)",
    "thresholds": "Preview thresholds",
}
#: Colours of the figure's elements.
COLOURS = {"prediction": "#1f77b4", "infeasible": "#7f7f7f", "reference": "#2ca02c", "free": "#ff7f0e",
           "edge": "#d62728", "achieved": "#9467bd"}
SCALE = "win-rate against the file's responses"
SCALE_PLURAL = "win-rates against the file's responses"


def preview_file(path, tau: float = DEFAULT_TAU, prior: float = DEFAULT_PRIOR, thresholds=None,
                 fmt: str = "auto", objective: str | None = None) -> PreviewResult:
    """:func:`threshold_preview` of the file at ``path`` with the form's values.

    A bad value raises ``ValueError`` starting with its field's label (:data:`FIELD_LABELS`); a bad
    file raises the reader's ``ValueError`` (file, row and field), prefixed with the file field's label.
    """
    for name, value, positive in (("tau", tau, True), ("prior", prior, False)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or (
                value <= 0 if positive else value < 0):
            need = "a finite number > 0" if positive else "a finite number >= 0"
            raise ValueError(f"{FIELD_LABELS[name]}: expected {need}, got {value!r}")
    if path is None or str(path).strip() == "":
        raise ValueError(f"{FIELD_LABELS['data']}: no file given")
    try:
        return threshold_preview(path, thresholds=thresholds, tau=tau, prior=prior, fmt=fmt, objective=objective)
    except ValueError as exc:
        field = "thresholds" if str(exc).startswith("thresholds") else "data"
        raise ValueError(f"{FIELD_LABELS[field]}: {exc}") from None
    except OSError as exc:
        raise ValueError(f"{FIELD_LABELS['data']}: {exc.filename or path}: {exc.strerror or exc}") from None


def summary_lines(result: PreviewResult) -> list[str]:
    """Plain sentences: π_ref's values, the λ = 0 policy, the attainable range of each secondary,
    and how many of the previewed thresholds are attainable."""
    names = result.objectives
    lines = [f"{result.n_pairs} pairs over {result.n_prompts} prompts ({result.n_responses} distinct responses, "
             f"at most {result.max_responses_per_prompt} per prompt); values are {SCALE_PLURAL} (0.5 = as good as the "
             f"data), τ = {result.tau:g}, label prior {result.prior:g}."]
    for j, name in enumerate(names[1:], start=1):
        lines.append(
            f"{name}: π_ref reaches {result.reference_values[j]:.3f}; without a constraint (λ = 0) the policy "
            f"reaches {result.unconstrained_values[j]:.3f}; no policy over these responses exceeds "
            f"{result.attainable_max[j - 1]:.3f}, so a threshold b{j} ≥ {result.attainable_max[j - 1]:.3f} cannot be "
            f"met, and thresholds up to {max(result.unconstrained_values[j], result.reference_values[j]):.3f} cost "
            f"nothing (λ = 0).")
    n_feasible = int(result.table["feasible"].sum())
    lines.append(f"{n_feasible} of {len(result.table)} previewed thresholds are attainable; "
                 f"{names[0]} (primary) at λ = 0: {result.unconstrained_values[0]:.3f}, at π_ref: "
                 f"{result.reference_values[0]:.3f}.")
    return lines


def preview_table(result: PreviewResult) -> pd.DataFrame:
    """The preview table with the page's column names (thresholds, attainable, λ, values, KL)."""
    names = result.objectives
    renames = {f"b{j}": f"threshold b{j} ({name})" for j, name in enumerate(names[1:], start=1)}
    renames.update({f"lambda{j}": f"λ{j}" for j in range(1, len(names))})
    renames.update({f"V{k}": f"V{k} {name}" + (" (primary)" if k == 0 else "") for k, name in enumerate(names)})
    renames.update({"feasible": "attainable", "KL": "KL to π_ref (nats)"})
    return result.table.rename(columns=renames)


def achieved_points(runs: pd.DataFrame | list[dict]) -> list[dict]:
    """Trained runs as points for :func:`preview_figure`: each a dict with ``label``, ``b`` (the run's
    first threshold) and ``values`` (its evaluated point: V0, V1, ...). Rows missing either are left out."""
    rows = runs.to_dict("records") if isinstance(runs, pd.DataFrame) else list(runs)
    out = []
    for row in rows:
        thresholds, values = row.get("thresholds"), row.get("values")
        if thresholds is None or values is None or len(thresholds) == 0 or len(values) < 2:
            continue
        out.append({"label": str(row.get("label", "run")), "b": float(thresholds[0]),
                    "values": [float(v) for v in values]})
    return out


def preview_figure(result: PreviewResult, achieved: list[dict] | None = None) -> go.Figure:
    """The predicted trade-off: V0 (primary) against the first secondary's threshold b1.

    Traces: the prediction at the attainable thresholds (line), infeasible thresholds (crosses, at the
    nearest attainable policy's V0), π_ref (at the threshold it meets exactly, its own V1), the λ = 0
    policy, the attainable maximum (a dashed vertical line) and, when given, trained runs' achieved
    points (``achieved``: dicts with ``label``, ``b``, ``values``; see :func:`achieved_points`).
    """
    names = result.objectives
    table = result.table
    feasible = table["feasible"].to_numpy(bool)
    hover = ("b1 = %{x:.4f}<br>V0 = %{y:.4f}<br>λ1 = %{customdata[0]:.4f}<br>V1 = %{customdata[1]:.4f}"
             "<br>KL = %{customdata[2]:.4f} nats<extra>%{fullData.name}</extra>")
    custom = np.column_stack([table["lambda1"], table["V1"], table["KL"]])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=table["b1"][feasible], y=table["V0"][feasible], mode="lines+markers",
                             name=f"predicted {names[0]} (exact tabular MOPO, attainable b1)",
                             line=dict(color=COLOURS["prediction"]), customdata=custom[feasible],
                             hovertemplate=hover))
    if (~feasible).any():
        fig.add_trace(go.Scatter(x=table["b1"][~feasible], y=table["V0"][~feasible], mode="markers",
                                 name="infeasible b1 (nearest attainable policy shown)",
                                 marker=dict(symbol="x", size=10, color=COLOURS["infeasible"]),
                                 customdata=custom[~feasible], hovertemplate=hover))
    fig.add_trace(go.Scatter(x=[result.reference_values[1]], y=[result.reference_values[0]], mode="markers",
                             name="π_ref (uniform over each prompt's responses; x: the b1 it meets)",
                             marker=dict(symbol="diamond", size=12, color=COLOURS["reference"])))
    fig.add_trace(go.Scatter(x=[result.unconstrained_values[1]], y=[result.unconstrained_values[0]], mode="markers",
                             name=f"λ = 0 policy (no constraint; KL {result.unconstrained_kl:.3f} nats)",
                             marker=dict(symbol="circle-open", size=12, color=COLOURS["free"])))
    top = float(result.attainable_max[0])
    low = float(np.nanmin([table["V0"].min(), result.reference_values[0]]))
    high = float(np.nanmax([table["V0"].max(), result.reference_values[0], result.unconstrained_values[0]]))
    pad = max(0.02 * (high - low), 1e-3)
    fig.add_trace(go.Scatter(x=[top, top], y=[low - pad, high + pad], mode="lines",
                             name=f"attainable max of {names[1]} = {top:.4f} (b1 ≥ this: infeasible)",
                             line=dict(color=COLOURS["edge"], dash="dash"), hoverinfo="name"))
    for point in achieved or ():
        fig.add_trace(go.Scatter(x=[point["b"]], y=[point["values"][0]], mode="markers",
                                 name=f"achieved: {point['label']} (measured by its judge vs the reference model)",
                                 marker=dict(symbol="star", size=13, color=COLOURS["achieved"]),
                                 hovertemplate=f"b1 = %{{x:.4f}}<br>V0 = %{{y:.4f}}<br>V1 = {point['values'][1]:.4f}"
                                               "<extra>%{fullData.name}</extra>"))
    fig.update_layout(
        title=dict(text=f"Threshold preview: predicted trade-off at τ = {result.tau:g} (before training)<br>"
                        f"<sup>exact tabular MOPO over {Path(result.source).name}'s responses · "
                        f"all objectives maximised · values are {SCALE_PLURAL} (0.5 = as good as the data)</sup>"),
        xaxis_title=f"threshold b1 on {names[1]} ({SCALE}; → stricter)",
        yaxis_title=f"predicted {names[0]} V0 ({SCALE}; ↑ better)",
        legend=dict(orientation="h", yanchor="top", y=-0.2, x=0),
        height=520, margin=dict(t=90, b=160),
    )
    return fig
