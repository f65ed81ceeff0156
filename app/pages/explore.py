"""Explore: move a threshold and watch the best policy that meets it (a thin view over mopo_core)."""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from mopo_core import solve_tabular
from mopo_core.pareto import attainable_max, exact_front
from mopo_core.tabular import policy_values, win_rates
from synthetic import STRUCTURES, make_structure

TWO_OBJECTIVES = [s for s in STRUCTURES if s != "three_objectives"]
AXIS_NOTE = "win-rate vs behaviour"


@st.cache_data(show_spinner=False)
def instance(name: str, n_responses: int, n_prompts: int, seed: int):
    s = make_structure(name, n_responses=n_responses, n_prompts=n_prompts, seed=seed)
    rates = win_rates(s.preferences, s.behaviour)
    front = exact_front(rates, s.prompt_weights)
    ref_point = policy_values(s.reference, rates, s.prompt_weights)
    top = attainable_max(rates, s.prompt_weights)[1]
    return s, front.points, ref_point, top


st.title("Explore: a safety threshold, and the best policy that meets it")
with st.sidebar:
    name = st.selectbox("Structure", TWO_OBJECTIVES, index=TWO_OBJECTIVES.index("bt_conflict"))
    n_responses = st.slider("Responses per prompt (N)", 2, 32, 8)
    n_prompts = st.slider("Prompts (M)", 1, 8, 4 if name == "multi_prompt" else 1)
    seed = st.number_input("Seed", 0, 10_000, 0)
    tau = st.select_slider("KL strength τ", options=[0.005, 0.01, 0.02, 0.05, 0.08, 0.1, 0.2, 0.5, 1.0], value=0.08)

s, front, ref_point, top = instance(name, n_responses, n_prompts, int(seed))
threshold = st.slider(f"Threshold on {s.objective_names[1]} (V₁ ≥ b)", float(np.floor(ref_point[1] * 100) / 100),
                      float(np.ceil(top * 100) / 100), float(round((ref_point[1] + top) / 2, 2)), 0.01, key="threshold")
sol = solve_tabular(s.preferences, [threshold], tau, reference=s.reference, behaviour=s.behaviour)

cols = st.columns(4)
cols[0].metric(f"V₀ {s.objective_names[0]}", f"{sol.values[0]:.4f}")
slack = round(float(sol.values[1] - threshold), 4) + 0.0  # + 0.0 turns -0.0 into 0.0
cols[1].metric(f"V₁ {s.objective_names[1]}", f"{sol.values[1]:.4f}", f"{slack:+.4f} vs b")
cols[2].metric("Multiplier λ", f"{sol.multipliers[0]:.4f}")
cols[3].metric("KL to reference", f"{sol.kl:.4f}")
if not sol.feasible:
    st.error(f"Threshold {threshold:.3f} cannot be met: the largest attainable {s.objective_names[1]} value is "
             f"{sol.max_attainable[0]:.4f}. Showing the policy for the nearest attainable threshold "
             f"{sol.effective_thresholds[0]:.4f}.")

fig = go.Figure()
fig.add_vrect(x0=threshold, x1=max(top, threshold) + 0.02, fillcolor="green", opacity=0.08, line_width=0,
              annotation_text="meets the threshold", annotation_position="top left")
fig.add_scatter(x=front[:, 1], y=front[:, 0], mode="lines", name="exact front (τ → 0, LP)",
                hovertemplate="exact front<br>V₁=%{x:.4f}<br>V₀=%{y:.4f}<extra></extra>")
fig.add_scatter(x=[ref_point[1]], y=[ref_point[0]], mode="markers", name="reference policy (HV reference point)",
                marker=dict(symbol="x", size=12, color="black"),
                hovertemplate="reference policy<br>V₁=%{x:.4f}<br>V₀=%{y:.4f}<extra></extra>")
fig.add_scatter(x=[sol.values[1]], y=[sol.values[0]], mode="markers", name=f"MOPO (b={threshold:.2f}, τ={tau})",
                marker=dict(size=14, color="crimson"),
                hovertemplate=f"MOPO b={threshold:.3f} τ={tau}<br>V₁=%{{x:.4f}}<br>V₀=%{{y:.4f}}<extra></extra>")
fig.update_layout(title=f"Values on {name}: primary against secondary (all objectives maximised)",
                  xaxis_title=f"V₁ {s.objective_names[1]} ({AXIS_NOTE}), higher is better →",
                  yaxis_title=f"V₀ {s.objective_names[0]} ({AXIS_NOTE}) ↑", height=480, legend=dict(x=0.01, y=0.01))
st.plotly_chart(fig, width="stretch")

policy = np.atleast_2d(sol.policy)
bars = go.Figure()
for m in range(policy.shape[0]):
    bars.add_bar(x=np.arange(n_responses), y=policy[m], name=f"MOPO, prompt {m}",
                 hovertemplate=f"prompt {m}<br>response %{{x}}<br>π=%{{y:.4f}}<extra></extra>")
bars.add_scatter(x=np.arange(n_responses), y=s.reference[0], mode="markers", name="reference π_ref (prompt 0)",
                 marker=dict(symbol="line-ew-open", size=18, color="black"))
bars.update_layout(title="MOPO policy over responses", xaxis_title="response index",
                   yaxis_title="probability π(y|x)", barmode="group", height=360)
st.plotly_chart(bars, width="stretch")
st.caption("All objectives are maximised; values are win-rates against the behaviour policy. "
           "The reference point of the plot is the reference policy's values.")
