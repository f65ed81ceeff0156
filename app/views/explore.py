"""Explore: set each threshold, τ and ε, and see the best policy that meets the thresholds,
against the exact front, the reference policy and the baselines (a thin view over mopo_core)."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.shared import axis_title, instance_picker, show_figure, show_table, style
from mopo_core.experiments.suite import METHODS, THRESHOLD_METHODS, SuiteConfig, comparison_data, run_method
from mopo_core.tabular.solver import policy_values

TAUS = [0.005, 0.01, 0.02, 0.05, 0.08, 0.1, 0.2, 0.5, 1.0]
BASELINES = [m for m in METHODS if m not in ("mopo", "mopo_oracle")]
MARKERS = ["square", "diamond", "triangle-up", "cross", "star", "hexagon"]
COLOURS = ["#00a087", "#7e57c2", "#f39c12", "#17becf", "#8c564b", "#e377c2"]  # none close to MOPO's crimson


@st.cache_data(show_spinner="Training the baselines on the exact preferences…", max_entries=64)
def baseline_points(_instance, label: str, method: str, tau: float, thresholds: tuple) -> pd.DataFrame:
    """Values (true win-rates) of a baseline's policies. ``thresholds`` is () for weight-grid methods,
    so that moving a threshold does not retrain them."""
    structure = _instance.structure
    config = SuiteConfig(tau=tau, n_comparisons=None, steps=1000)
    grid = np.array([thresholds]) if thresholds else np.empty((1, 0))
    out = run_method(method, structure, grid, config, comparison_data(structure, None))
    values = np.array([policy_values(p, _instance.problem.rates, _instance.problem.prompt_weights)
                       for p in out.policies])
    rows = [{"method": method, "parameter": _describe(params), **{f"V{k}": v for k, v in enumerate(vals)}}
            for params, vals in zip(out.parameters, values)]
    return pd.DataFrame(rows)


def _describe(params: dict) -> str:
    if "weight" in params:
        return "weight " + ", ".join(f"{w:.2f}" for w in params["weight"])
    if "threshold" in params:
        return "threshold " + ", ".join(f"{b:.3f}" for b in params["threshold"])
    return "single policy"


st.title("Explore: set a threshold, get the best policy that meets it")
instance = instance_picker("explore")
if instance is None:
    st.stop()
names, k = instance.objective_names, instance.n_objectives
rates = instance.problem.rates
with st.sidebar:
    st.subheader("MOPO")
    tau = st.select_slider("KL strength τ", options=TAUS, value=0.08, key="explore_tau")
    eps = st.slider("Robust radius ε (0 = off)", 0.0, 0.3, 0.0, 0.01, key="explore_eps")
    st.subheader("Baselines")
    chosen = st.multiselect("Show baselines (exact preferences, same τ)", BASELINES,
                            default=["scalarised_ipo", "rewarded_soups"], key="explore_baselines",
                            disabled=instance.structure is None)

st.caption(f"Instance: {instance.label}. Thresholds are lower bounds on the secondaries' win-rates "
           "against the behaviour policy.")
threshold_cols = st.columns(k - 1)
thresholds = []
for j in range(1, k):
    low = float(np.floor(min(rates[j].min(), instance.reference_point[j]) * 100) / 100)
    high = float(np.ceil(instance.top[j] * 100) / 100)
    default = float(round((instance.reference_point[j] + instance.top[j]) / 2, 2))
    thresholds.append(threshold_cols[j - 1].slider(f"Threshold b{j} on {names[j]} (V{j} ≥ b{j})", low, high,
                                                   default, 0.01, key=f"threshold_{j}"))
sol = instance.problem.solve(thresholds, tau, eps)
policy = np.atleast_2d(sol.policy)

cols = st.columns(k + 2)
for i in range(k):
    slack = None if i == 0 else f"{round(float(sol.values[i] - thresholds[i - 1]), 4) + 0.0:+.4f} vs b{i}"
    cols[i].metric(f"V{i} {names[i]}", f"{sol.values[i]:.4f}", slack)
cols[k].metric("Multipliers λ", ", ".join(f"{x:.3f}" for x in sol.multipliers))
cols[k + 1].metric("KL to reference", f"{sol.kl:.4f}")
if sol.feasible:
    st.success(f"Feasible: every threshold is met (τ = {tau}, ε = {eps}).")
else:
    attainable = ", ".join(f"{names[j + 1]} ≤ {v:.4f}" for j, v in enumerate(sol.max_attainable))
    st.error(f"These thresholds cannot be met. Largest attainable values: {attainable}. "
             + (f"Showing the policy for the nearest attainable thresholds "
                f"{', '.join(f'{b:.4f}' for b in sol.effective_thresholds)}." if eps == 0 else
                "Showing the most robust policy of the family."))

baselines = pd.concat([baseline_points(instance, instance.label, m, tau,
                                       tuple(thresholds) if m in THRESHOLD_METHODS else ()) for m in chosen],
                      ignore_index=True) if chosen and instance.structure is not None else pd.DataFrame()

for j in range(1, k):
    fig = go.Figure()
    upper = max(instance.top[j], thresholds[j - 1]) + 0.02
    fig.add_vrect(x0=thresholds[j - 1], x1=upper, fillcolor="green", opacity=0.08, line_width=0,
                  annotation_text=f"V{j} ≥ b{j}: meets the threshold", annotation_position="top left")
    front = instance.front_points
    exact_name = "exact front (τ → 0, LP)" if k == 2 else "exact front points (LP grid), projected"
    fig.add_scatter(x=front[:, j], y=front[:, 0], mode="lines" if k == 2 else "markers", name=exact_name,
                    marker=dict(size=4, color="steelblue"), line=dict(color="steelblue"),
                    hovertemplate=f"exact front<br>V{j}=%{{x:.4f}}<br>V0=%{{y:.4f}}<extra></extra>")
    fig.add_scatter(x=[instance.reference_point[j]], y=[instance.reference_point[0]], mode="markers",
                    name="reference policy", marker=dict(symbol="x", size=13, color="black"),
                    hovertemplate=f"reference policy<br>V{j}=%{{x:.4f}}<br>V0=%{{y:.4f}}<extra></extra>")
    for i, (method, rows) in enumerate(baselines.groupby("method", sort=False) if len(baselines) else []):
        fig.add_scatter(x=rows[f"V{j}"], y=rows["V0"], mode="markers", name=method, customdata=rows["parameter"],
                        marker=dict(symbol=MARKERS[i % len(MARKERS)], size=9, opacity=0.85,
                                    color=COLOURS[i % len(COLOURS)]),
                        hovertemplate=f"{method}<br>%{{customdata}}<br>V{j}=%{{x:.4f}}<br>V0=%{{y:.4f}}<extra></extra>")
    fig.add_scatter(x=[sol.values[j]], y=[sol.values[0]], mode="markers", name="MOPO",
                    marker=dict(size=15, color="crimson", line=dict(color="white", width=1)),
                    hovertemplate=(f"MOPO<br>thresholds {', '.join(f'{b:.3f}' for b in thresholds)}, τ={tau}, ε={eps}"
                                   f"<br>V{j}=%{{x:.4f}}<br>V0=%{{y:.4f}}<extra></extra>"))
    style(fig, f"Primary against {names[j]}: the MOPO policy, the exact front and the baselines",
          axis_title(names, j), axis_title(names, 0))
    plane = pd.DataFrame([{"method": "MOPO", "parameter": f"thresholds {thresholds}",
                           **{f"V{i}": v for i, v in enumerate(sol.values)}},
                          {"method": "reference", "parameter": "", **{f"V{i}": v
                                                                      for i, v in enumerate(instance.reference_point)}}])
    show_figure(fig, f"explore_values_V0_V{j}", pd.concat([plane, baselines], ignore_index=True))

bars = go.Figure()
responses = np.arange(policy.shape[1])
for m in range(policy.shape[0]):
    bars.add_bar(x=responses, y=policy[m], name=f"MOPO, prompt {m}",
                 hovertemplate=f"MOPO, prompt {m}<br>response %{{x}}<br>π=%{{y:.4f}}<extra></extra>")
bars.add_scatter(x=responses, y=instance.problem.reference[0], mode="markers", name="reference π_ref (prompt 0)",
                 marker=dict(symbol="line-ew-open", size=20, color="black", line=dict(width=2)),
                 hovertemplate="reference, prompt 0<br>response %{x}<br>π_ref=%{y:.4f}<extra></extra>")
style(bars, "The MOPO policy over responses, per prompt", "response index", "probability π(y | x)", height=380)
bars.update_layout(barmode="group")
policy_table = pd.DataFrame(policy, columns=[f"y{i}" for i in responses]).assign(prompt=range(policy.shape[0]))
show_figure(bars, "explore_policy", policy_table)

summary = pd.DataFrame({
    "objective": [f"V{i} {names[i]}" for i in range(k)],
    "value": sol.values,
    "threshold": [np.nan, *thresholds],
    "slack": [np.nan, *(sol.values[1:] - np.asarray(thresholds))],
    "multiplier λ": [np.nan, *sol.multipliers],
    "largest attainable": [np.nan, *sol.max_attainable],
    "robust bound (ε)": [np.nan, *(sol.robust_values if sol.robust_values is not None else [np.nan] * (k - 1))],
})
st.subheader("Values against thresholds")
show_table(summary, "explore_summary")
