"""Figures drawn outside the Streamlit pages (plotly only, no Streamlit): what the command line's
results become when drawn. The engine (mopo_core) imports no plotly; scripts draw its outputs here."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go


def comparison_figure(points: pd.DataFrame, reference_point: np.ndarray, thresholds=()) -> go.Figure:
    """Plotly scatter of each (method, parameter)'s mean win-rates over its training seeds with
    95% t-interval bars (:func:`mopo_core.training.text_comparison.summarise`), its KL to the
    reference in the label and hover (points without ``seed``, ``labels`` and ``kl`` columns, one
    training seed each: every point with 1.96-SE bars of its evaluation), MOPO's thresholds, the reference model (0.5, 0.5) and the
    explicit hypervolume reference point. ``points``: one row per policy and seed as
    ``compare-text`` writes points.csv (method, parameter, seed, labels, V0, V1, kl, ...);
    ``reference_point`` (2,); ``thresholds``: MOPO's b values on V1, drawn as dotted lines."""
    from mopo_core.training.text_comparison import summarise

    seeded = {"seed", "labels", "kl"} <= set(points.columns)
    fig = go.Figure()
    if not seeded:  # one training seed per point (bench/pku_smollm2.py): 1.96-SE bars of the evaluation
        for method, g in points.groupby("method", sort=False):
            fig.add_scatter(x=g.V1, y=g.V0, mode="markers+text", name=method, text=g.parameter,
                            textposition="top center", error_x=dict(array=1.96 * g.stderr1),
                            error_y=dict(array=1.96 * g.stderr0),
                            hovertemplate=f"{method}<br>%{{text}}<br>harmlessness %{{x:.3f}}<br>helpfulness "
                                          "%{y:.3f}<br>one training seed (bars: 1.96 SE)<extra></extra>")
    else:  # several seeds per policy (compare-text): the seed means with their 95% t-intervals
        for method, g in summarise(points).groupby("method", sort=False):
            text = [f"{p} · KL {k:.1f}" for p, k in zip(g.parameter, g.kl)]
            fig.add_scatter(x=g.V1, y=g.V0, mode="markers+text", name=method, text=text, textposition="top center",
                            error_x=dict(array=g.V1_ci), error_y=dict(array=g.V0_ci),
                            customdata=np.stack([g.kl, g.kl_ci, g.seeds], axis=1),
                            hovertemplate=f"{method}<br>%{{text}}<br>harmlessness %{{x:.3f}}<br>helpfulness "
                                          "%{y:.3f}<br>KL to the reference %{customdata[0]:.2f} ± "
                                          "%{customdata[1]:.2f} nats<br>%{customdata[2]} seeds (bars: 95% "
                                          "t-intervals)<extra></extra>")
    for b in thresholds:
        fig.add_vline(x=b, line_dash="dot", line_color="crimson", annotation_text=f"MOPO b={b}")
    fig.add_scatter(x=[0.5], y=[0.5], mode="markers", name="the SFT reference (0.5, 0.5)",
                    marker=dict(symbol="diamond-open", size=12, color="black"))
    fig.add_scatter(x=[reference_point[1]], y=[reference_point[0]], mode="markers", name="HV reference point",
                    marker=dict(symbol="x", size=12, color="black"))
    fig.update_layout(
        title="Text task: mean win-rates against the SFT reference on held-out prompts over training seeds "
              "(95% t-intervals; label: KL to the reference, nats/response)" if seeded else
              "Win-rates against the reference on held-out prompts (one training seed; bars: 1.96 SE)",
        xaxis_title="harmlessness win-rate vs reference (higher is better →)",
        yaxis_title="helpfulness win-rate vs reference (higher is better ↑)", height=600)
    return fig


def write_text_comparison_figure(folder: str | Path) -> Path:
    """Draw ``compare-text``'s output folder (points.csv, comparison.json) to comparison.html beside them."""
    folder = Path(folder)
    settings = json.loads((folder / "comparison.json").read_text())
    figure = comparison_figure(pd.read_csv(folder / "points.csv"), np.asarray(settings["reference_point"]),
                               settings["thresholds"])
    figure.write_html(folder / "comparison.html", include_plotlyjs=True)
    return folder / "comparison.html"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m app.figures", description=write_text_comparison_figure.__doc__)
    parser.add_argument("folder", help="the --out folder of `python -m mopo_core compare-text`")
    print(f"wrote {write_text_comparison_figure(parser.parse_args().folder)}")
