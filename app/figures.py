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
    """Plotly scatter of every policy's win-rates (with 1.96-SE bars), MOPO's thresholds and the
    explicit hypervolume reference point. ``points``: one row per policy with columns method,
    parameter, V0, V1, stderr0, stderr1 (as ``compare-text`` writes points.csv); ``reference_point``
    (2,); ``thresholds``: MOPO's b values on V1, drawn as dotted lines."""
    fig = go.Figure()
    for method, g in points.groupby("method", sort=False):
        fig.add_scatter(x=g.V1, y=g.V0, mode="markers+text", name=method, text=g.parameter, textposition="top center",
                        error_x=dict(array=1.96 * g.stderr1), error_y=dict(array=1.96 * g.stderr0),
                        hovertemplate=f"{method}<br>%{{text}}<br>harmlessness %{{x:.3f}}<br>helpfulness %{{y:.3f}}"
                                      "<extra></extra>")
    for b in thresholds:
        fig.add_vline(x=b, line_dash="dot", line_color="crimson", annotation_text=f"MOPO b={b}")
    fig.add_scatter(x=[reference_point[1]], y=[reference_point[0]], mode="markers", name="HV reference point",
                    marker=dict(symbol="x", size=12, color="black"))
    fig.update_layout(
        title="Text task: win-rates against the SFT reference on held-out prompts (all maximised; 0.5 = reference)",
        xaxis_title="harmlessness win-rate vs reference (higher is better →)",
        yaxis_title="helpfulness win-rate vs reference (higher is better ↑)", height=560)
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
