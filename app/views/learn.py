"""Learn: a guided walk through MOPO on a small instance (a thin view over app.presenters.learn).

Six numbered steps: the reference policy, the win-rates, the tilt for a chosen λ, the dual
steps (Step / Play / Reset; the current step lives in st.session_state["learn_step"]), the
effect of τ, and a capability table of the methods. Every number comes from
app.presenters.learn / mopo_core.tabular.solver; this file only draws.
"""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app.shared import (
    CONVENTION,
    DEFAULT_TAU,
    PROBABILITY_SUBTITLE,
    axis_title,
    export_buttons,
    presenting,
    show_figure,
    show_table,
    structure_instance,
    style,
    threshold_input,
)
from app.presenters import learn as learn_presenter
from synthetic import TWO_OBJECTIVE_STRUCTURES

#: Dual steps computed for the walk-through (Play runs to the last one).
N_STEPS = 30
#: Seconds between two frames of Play (st.session_state["learn_play_delay"] overrides it): each frame is one
#: run of the dual-steps fragment, timed by the browser (st.fragment's run_every), so every step is drawn.
PLAY_DELAY_S = 0.25
#: Step sizes offered, as multiples of the solver's safe step 1/L.
STEP_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
TAUS = (0.01, 0.02, 0.05, 0.08, 0.1, 0.2, 0.5, 1.0)
#: The τ grid of step 5 (the sidebar's τ is added to it).
TAU_GRID = tuple(float(t) for t in np.geomspace(0.005, 2.0, 15))
LAMBDA_MAX = 8.0

PRIMARY, SECONDARY, TILT, THRESHOLD, REFERENCE = "#1f77b4", "#ff7f0e", "crimson", "#2ca02c", "#555555"

# ----------------------------------------------------------------------------- state

st.session_state.setdefault("learn_step", 0)


def _advance():
    st.session_state.learn_step = min(st.session_state.learn_step + 1, N_STEPS)


def _play():
    if st.session_state.learn_step >= N_STEPS:
        st.session_state.learn_step = 0
    st.session_state.learn_playing = True
    st.session_state.learn_play_next = st.session_state.learn_step  # the first frame: the step shown now
    st.session_state.learn_play_start = True  # rerun the page once, to start the fragment's timer


def _reset():
    st.session_state.learn_step = 0
    st.session_state.learn_playing = False


# ----------------------------------------------------------------------------- figures


def _labels(n: int) -> list[str]:
    return [f"y{i}" for i in range(n)]


def _finish(fig: go.Figure, title: str, x_title: str | None, y_title: str | None, height: int = 440,
            subtitle: str = CONVENTION) -> go.Figure:
    """:func:`app.shared.style` with the legend shown; ``subtitle``: what the chart's values are (by default the
    win-rate convention; a chart of probabilities, multipliers or KL says so instead)."""
    style(fig, title, x_title, y_title, height=height, subtitle=subtitle)
    fig.update_layout(showlegend=True)
    return fig


def _value_plane(inst, responses: bool = True) -> go.Figure:
    """Primary (up) against secondary (right): the exact front, the single responses, the reference."""
    names = inst.objective_names
    fig = go.Figure()
    front = inst.front_points
    fig.add_scatter(x=front[:, 1], y=front[:, 0], mode="lines", name="exact front (τ → 0, LP)",
                    line=dict(color="grey", width=2),
                    hovertemplate="exact front (τ → 0)<br>V₁ = %{x:.4f}<br>V₀ = %{y:.4f}<extra></extra>")
    if responses:
        w = inst.problem.rates[:, 0]
        fig.add_scatter(x=w[1], y=w[0], mode="markers+text", text=_labels(w.shape[1]), textposition="top center",
                        name="one response, always (w₁, w₀)",
                        marker=dict(size=9, color="lightgrey", line=dict(color="grey", width=1)),
                        hovertemplate=f"always answer %{{text}}<br>w₁ {names[1]} = %{{x:.4f}}"
                                      f"<br>w₀ {names[0]} = %{{y:.4f}}<extra></extra>")
    ref = inst.reference_point
    fig.add_scatter(x=[ref[1]], y=[ref[0]], mode="markers", name="reference policy π_ref (HV reference point)",
                    marker=dict(symbol="x", size=12, color=REFERENCE),
                    hovertemplate="reference policy π_ref<br>V₁ = %{x:.4f}<br>V₀ = %{y:.4f}<extra></extra>")
    return fig


def _threshold_line(fig: go.Figure, b: float, low: float, high: float):
    fig.add_scatter(x=[b, b], y=[low, high], mode="lines", name=f"threshold b = {b:.3f} (V₁ ≥ b to its right)",
                    line=dict(color=THRESHOLD, dash="dash"),
                    hovertemplate=f"threshold b = {b:.4f}<extra></extra>")


def _primary_range(inst) -> tuple[float, float]:
    w0 = inst.problem.rates[0, 0]
    pad = 0.05 * (w0.max() - w0.min() + 1e-9)
    return float(w0.min() - pad), float(w0.max() + pad)


def _dual_figures(inst, path, t: int):
    """Up to step t: λ_t (top) and V₁(π_λt) against b (bottom) over the steps, in one figure with a shared
    step axis; and the iterates on the value plane. Axis ranges cover the whole path, so frames do not jump."""
    names = inst.objective_names
    shown = path.iloc[: t + 1]
    lam_star = path.attrs["lambda_star"]
    b = float(path["threshold"].iloc[0])
    custom = shown[["step", "lambda", "V_secondary", "V_primary", "slack"]].to_numpy()
    now = shown.iloc[-1]

    steps = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                          subplot_titles=("the multiplier λ", f"the constraint value V₁ {names[1]} against b"))
    steps.add_scatter(x=[0, N_STEPS], y=[lam_star, lam_star], mode="lines", name=f"exact λ* = {lam_star:.4f} (Newton)",
                      line=dict(color="grey", dash="dot"),
                      hovertemplate=f"exact multiplier λ* = {lam_star:.4f}<extra></extra>", row=1, col=1)
    steps.add_scatter(x=shown["step"], y=shown["lambda"], mode="lines+markers", name="λ_t (projected gradient)",
                      line=dict(color=TILT), marker=dict(size=6), customdata=custom,
                      hovertemplate="step %{x}<br>λ = %{y:.4f}<br>V₁ − b = %{customdata[4]:+.4f}<extra></extra>",
                      row=1, col=1)
    steps.add_scatter(x=[0, N_STEPS], y=[b, b], mode="lines", name=f"threshold b = {b:.3f}",
                      line=dict(color=THRESHOLD, dash="dash"), hovertemplate=f"threshold b = {b:.4f}<extra></extra>",
                      row=2, col=1)
    steps.add_scatter(x=shown["step"], y=shown["V_secondary"], mode="lines+markers", name="V₁(π_λt)",
                      line=dict(color=SECONDARY), marker=dict(size=6), customdata=custom,
                      hovertemplate="step %{x}<br>V₁ = %{y:.4f}<br>V₁ − b = %{customdata[4]:+.4f}"
                                    "<br>λ = %{customdata[1]:.4f}<extra></extra>", row=2, col=1)
    steps.add_scatter(x=[t], y=[now["lambda"]], mode="markers", name=f"step t = {t}: λ = {now['lambda']:.4f}",
                      marker=dict(size=13, color=TILT, line=dict(color="black", width=1)),
                      hovertemplate="current step %{x}<br>λ = %{y:.4f}<extra></extra>", row=1, col=1)
    steps.add_scatter(x=[t], y=[now["V_secondary"]], mode="markers",
                      name=f"step t = {t}: V₁ = {now['V_secondary']:.4f}",
                      marker=dict(size=13, color=SECONDARY, line=dict(color="black", width=1)),
                      hovertemplate="current step %{x}<br>V₁ = %{y:.4f}<extra></extra>", row=2, col=1)
    top = 1.1 * max(float(path["lambda"].max()), lam_star, 1e-3)
    v1 = path["V_secondary"]
    low, high = min(float(v1.min()), b), max(float(v1.max()), b)
    pad = 0.08 * (high - low + 1e-3)
    _finish(steps, "One dual step at a time: λ and the constraint", None, None, height=440 if presenting() else 600,
            subtitle="Top: the multiplier λ_t ≥ 0 (a price, no win-rate) · bottom: V₁, a win-rate against the "
                     "behaviour policy, against its threshold b")
    steps.update_xaxes(range=[-0.5, N_STEPS + 0.5])
    steps.update_xaxes(title_text="dual step t (count →)", row=2, col=1)
    short = presenting()  # large fonts: short axis titles, or they overlap on the short panels
    steps.update_yaxes(range=[-0.03 * top, top], title_text="λ_t" if short else "λ_t (≥ 0; price of V₁)", row=1,
                       col=1)
    steps.update_yaxes(range=[low - pad, high + pad],
                       title_text="V₁ ↑" if short else "V₁ (win-rate vs behaviour ↑)", row=2, col=1)

    plane = _value_plane(inst)
    y_low, y_high = _primary_range(inst)
    _threshold_line(plane, b, y_low, y_high)
    plane.add_scatter(x=shown["V_secondary"], y=shown["V_primary"], mode="lines+markers", name="iterates π_λt",
                      line=dict(color=TILT, width=1), marker=dict(size=5, color=TILT), customdata=custom,
                      hovertemplate="step %{customdata[0]:.0f}, λ = %{customdata[1]:.4f}<br>V₁ = %{x:.4f}"
                                    "<br>V₀ = %{y:.4f}<extra></extra>")
    plane.add_scatter(x=[now["V_secondary"]], y=[now["V_primary"]], mode="markers",
                      name=f"π_λ at step {t}", marker=dict(size=14, color=TILT, line=dict(color="black", width=1)),
                      hovertemplate=f"step {t}<br>V₁ = %{{x:.4f}}<br>V₀ = %{{y:.4f}}<extra></extra>")
    _finish(plane, "Where the dual iterate's policy sits on the value plane", axis_title(names, 1),
            axis_title(names, 0), height=480)
    return steps, plane


# ----------------------------------------------------------------------------- page

st.title("Learn: how MOPO turns a threshold into a policy")
st.markdown(
    "A guided walk through Multi-Objective Preference Optimization on one prompt with a handful of "
    "candidate responses. MOPO maximises a **primary** objective while a **secondary** one stays above a "
    "threshold you choose, without straying far from a reference policy. Every number below is computed "
    "exactly; move the sliders and watch."
)
st.caption(CONVENTION + " · objective 0 is the primary, objective 1 the secondary")

with st.sidebar:
    st.subheader("Walk-through instance")
    name = st.selectbox("Structure", TWO_OBJECTIVE_STRUCTURES, index=TWO_OBJECTIVE_STRUCTURES.index("bt_conflict"),
                        key="learn_structure",
                        help="bt_conflict: the two objectives disagree (a long trade-off). cyclic, deterministic "
                             "and mixture: preferences no reward model explains.")
    n_responses = st.slider("Responses (N)", 3, 8, 6, key="learn_n")
    seed = st.number_input("Seed", 0, 10_000, 0, key="learn_seed")
    tau = st.select_slider("KL strength τ", TAUS, value=DEFAULT_TAU, key="learn_tau",
                           help=f"How strongly the policy is held to the reference ({DEFAULT_TAU:g} is the paper's "
                                "value; every page starts there).")
    reference_kind = st.radio("Reference policy", ["dirichlet", "uniform"], horizontal=True, key="learn_reference",
                              help="A random (Dirichlet) reference shows how the tilt starts from an uneven model.")

inst = structure_instance(name, n_responses, 1, int(seed), (("reference", reference_kind),))
problem, names = inst.problem, inst.objective_names
labels = _labels(n_responses)
rates = problem.rates[:, 0]  # (2, N)
reference = problem.reference[0]

# --- 1 ------------------------------------------------------------------------------------------------
st.header("1 · The reference policy")
st.markdown(
    "We start from a **reference policy** π_ref, usually the fine-tuned model before alignment. For a prompt x "
    "it is a probability over the candidate responses. MOPO stays close to it: the price of moving away is "
    "τ times the KL divergence. Here the comparisons were also drawn from π_ref (the behaviour policy "
    "μ = π_ref)."
)
ref_fig = go.Figure()
ref_fig.add_bar(x=labels, y=reference, name="reference π_ref(y|x)", marker_color=REFERENCE,
                hovertemplate="response %{x}<br>π_ref = %{y:.4f}<extra></extra>")
_finish(ref_fig, f"Reference policy over the {n_responses} responses ({inst.label})", "response y",
        "probability π_ref(y|x) (sums to 1)", height=360, subtitle=PROBABILITY_SUBTITLE)
show_figure(ref_fig, "learn_reference",
            data=learn_presenter.tilt_table(problem, 0.0, tau)[["response", "reference"]])

# --- 2 ------------------------------------------------------------------------------------------------
st.header("2 · Win-rates: how good is each response, per objective")
st.markdown(
    "MOPO needs no reward model, only pairwise preferences P_k(y ≻ y′): the chance that y is preferred to "
    "y′ on objective k. The **win-rate** of a response is its chance of beating a response drawn from μ; "
    "the **value** of a policy is its expected win-rate."
)
st.latex(r"w_k(y) = \sum_{y'} \mu(y')\, P_k(y \succ y'), \qquad V_k(\pi) = \sum_y \pi(y)\, w_k(y)")
rate_table = learn_presenter.tilt_table(problem, 0.0, tau)[["response", "w_0", "w_1"]]
wr_fig = go.Figure()
wr_fig.add_bar(x=labels, y=rates[0], name=f"w₀ {names[0]} (primary)", marker_color=PRIMARY,
               hovertemplate=f"response %{{x}}<br>w₀ {names[0]} = %{{y:.4f}}<extra></extra>")
wr_fig.add_bar(x=labels, y=rates[1], name=f"w₁ {names[1]} (secondary)", marker_color=SECONDARY,
               hovertemplate=f"response %{{x}}<br>w₁ {names[1]} = %{{y:.4f}}<extra></extra>")
wr_fig.update_layout(barmode="group")
_finish(wr_fig, "Win-rate of each response, per objective", "response y",
        "win-rate vs behaviour (higher is better ↑)", height=400)
show_figure(wr_fig, "learn_win_rates", data=rate_table)
pts = _value_plane(inst)
_finish(pts, "Responses on the value plane", axis_title(names, 1), axis_title(names, 0), height=480)
show_figure(pts, "learn_value_plane", data=rate_table)
st.markdown(
    "Each grey point is the policy that always gives one response. Any policy is a mixture of them, so its "
    "values lie inside their hull; the **exact front** (τ → 0) is its upper-right edge. On `bt_conflict` the "
    "responses best for the primary are poor for the secondary: there is a trade-off."
)
with st.expander("See the preference matrices P₀ and P₁"):
    heat = make_subplots(rows=1, cols=2, subplot_titles=[f"P₀ {names[0]}", f"P₁ {names[1]}"])
    prefs = problem.preferences[:, 0]
    for k in range(2):
        heat.add_heatmap(z=prefs[k], x=labels, y=labels, coloraxis="coloraxis", name=f"P{k} {names[k]}",
                         hovertemplate=f"P{k}(%{{y}} ≻ %{{x}}) = %{{z:.3f}}<extra>{names[k]}</extra>",
                         row=1, col=k + 1)
    heat.update_layout(coloraxis=dict(colorscale="RdBu", cmin=0, cmax=1, colorbar=dict(title="P(y ≻ y′)")))
    heat.update_yaxes(autorange="reversed")
    _finish(heat, "Pairwise preferences: row y beats column y′ with this probability", "opponent y′ (column)",
            "response y (row)", height=420,
            subtitle="Colour: P_k(y ≻ y′), the probability that row y is preferred to column y′ on objective k")
    st.caption("P + Pᵀ = 1 and the diagonal is 0.5. Nothing requires the rows to be ordered by a reward: try "
               "the `cyclic` structure in the sidebar, where y0 ≻ y1 ≻ y2 ≻ y0 can happen.")
    pairs = pd.DataFrame([(names[k], i, j, prefs[k, i, j]) for k in range(2) for i in range(n_responses)
                          for j in range(n_responses)], columns=["objective", "response", "opponent", "P_wins"])
    show_figure(heat, "learn_preferences", data=pairs)

# --- 3 ------------------------------------------------------------------------------------------------
st.header("3 · The tilt: the best policy for a given price λ")
st.markdown(
    "For a multiplier λ ≥ 0 (the **price** of the secondary objective) the best KL-regularised policy is "
    "the reference, tilted towards responses with a high score s_λ. λ = 0 tilts for the primary alone; "
    "a larger λ buys more of the secondary, at a cost in primary value. A smaller τ sharpens the tilt."
)
st.latex(r"s_\lambda(y) = w_0(y) + \lambda\, w_1(y), \qquad "
         r"\pi_\lambda(y) = \frac{\pi_{\mathrm{ref}}(y)\, e^{s_\lambda(y)/\tau}}"
         r"{\sum_{y'} \pi_{\mathrm{ref}}(y')\, e^{s_\lambda(y')/\tau}}")
lam = st.slider("Multiplier λ", 0.0, LAMBDA_MAX, 1.0, 0.05, key="learn_lambda")
table = learn_presenter.tilt_table(problem, lam, tau)
point = learn_presenter.tilt_values(problem, [lam], tau).iloc[0]
m = st.columns(3)
m[0].metric(f"V₀ {names[0]}", f"{point.V_primary:.4f}")
m[1].metric(f"V₁ {names[1]}", f"{point.V_secondary:.4f}")
m[2].metric("KL to reference (nats)", f"{point.kl:.4f}")
tilt_fig = go.Figure()
tilt_fig.add_bar(x=labels, y=table["reference"], name="reference π_ref", marker_color="lightgrey",
                 hovertemplate="response %{x}<br>π_ref = %{y:.4f}<extra></extra>")
tilt_fig.add_bar(x=labels, y=table["tilted"], name=f"tilted π_λ (λ = {lam:.2f}, τ = {tau})", marker_color=TILT,
                 customdata=table[["score"]].to_numpy(),
                 hovertemplate="response %{x}<br>π_λ = %{y:.4f}<br>score s_λ = %{customdata[0]:.4f}<extra></extra>")
tilt_fig.update_layout(barmode="group")
_finish(tilt_fig, f"Reference against the tilt at λ = {lam:.2f}", "response y", "probability π(y|x) (sums to 1)",
        height=400, subtitle=PROBABILITY_SUBTITLE)
show_figure(tilt_fig, "learn_tilt", data=table)
curve = learn_presenter.tilt_values(problem, np.concatenate([np.linspace(0, 1, 21), np.geomspace(1.05, 200, 60)]), tau)
fam = _value_plane(inst)
fam.add_scatter(x=curve["V_secondary"], y=curve["V_primary"], mode="lines",
                name=f"tilt family π_λ, λ ≥ 0 (τ = {tau})", line=dict(color=TILT, dash="dot"),
                customdata=curve[["lambda", "kl"]].to_numpy(),
                hovertemplate="tilt λ = %{customdata[0]:.3f}<br>V₁ = %{x:.4f}<br>V₀ = %{y:.4f}"
                              "<br>KL = %{customdata[1]:.4f}<extra></extra>")
fam.add_scatter(x=[point.V_secondary], y=[point.V_primary], mode="markers", name=f"π_λ at λ = {lam:.2f}",
                marker=dict(size=14, color=TILT, line=dict(color="black", width=1)),
                hovertemplate=f"π_λ, λ = {lam:.2f}<br>V₁ = %{{x:.4f}}<br>V₀ = %{{y:.4f}}<extra></extra>")
_finish(fam, "The tilt's values: sliding along the MOPO family", axis_title(names, 1), axis_title(names, 0),
        height=480)
show_figure(fam, "learn_tilt_plane", data=curve)
st.markdown("The dotted curve is every tilt, λ from 0 to ∞: MOPO only ever picks a point on it. As τ → 0 it "
            "hugs the exact front. The tilt, response by response (w_0, w_1: win-rates; score: s_λ; tilted: π_λ):")
show_table(table, "learn_tilt_table")

# --- 4 ------------------------------------------------------------------------------------------------
st.header("4 · Finding λ for a threshold: the dual steps")
st.markdown(
    "Nobody wants to guess a price. You state a **threshold** instead: \"the secondary value must be at least "
    "b\". MOPO finds the λ whose tilt just meets it by minimising the convex **dual** g(λ), whose slope is the "
    "constraint's slack. The paper's update: when V₁ is below b the slack is negative and λ rises; when there "
    "is room to spare λ falls, but never below 0."
)
st.latex(r"g(\lambda) = \tau \log \sum_y \pi_{\mathrm{ref}}(y)\, e^{s_\lambda(y)/\tau} - \lambda b, \qquad "
         r"g'(\lambda) = V_1(\pi_\lambda) - b")
st.latex(r"\lambda \leftarrow \max\!\big(0,\ \lambda - \eta\,(V_1(\pi_\lambda) - b)\big)")
low = float(np.floor(rates[1].min() * 100) / 100)
high = float(np.ceil(inst.top[1] * 100) / 100)
default_b = float(round((inst.reference_point[1] + inst.top[1]) / 2, 2))
cols = st.columns(2)
b = threshold_input(cols[0], f"Threshold b on V₁ {names[1]}", "b", low, high, default_b, "learn_threshold",
                    inst.label)
eta0 = learn_presenter.default_step_size(problem, tau)
factor = cols[1].select_slider("Step size η", STEP_FACTORS, value=1.0, key="learn_eta",
                               format_func=lambda f: f"{f:g} × 1/L = {f * eta0:.3f}",
                               help="1/L is the solver's safe step (L bounds the dual's curvature). Larger steps "
                                    "move faster; too large, and they overshoot and oscillate.")
path = learn_presenter.dual_path(problem, b, tau, step_size=factor * eta0, n_steps=N_STEPS)
path_key = (inst.label, tau, b, factor)
if st.session_state.get("learn_path_key") != path_key:
    st.session_state.learn_path_key = path_key
    st.session_state.learn_step = 0
    st.session_state.learn_playing = False
if not path.attrs["feasible"]:
    st.warning(f"b = {b:.3f} cannot be met: the largest attainable {names[1]} value is {inst.top[1]:.4f} (always "
               f"giving the best response; with τ > 0 a tilt only approaches it). The steps chase the nearest "
               f"attainable threshold, {path['threshold'].iloc[0]:.4f}.")


def _signed(x: float) -> str:
    return f"{round(float(x), 4) + 0.0:+.4f}"  # + 0.0 turns -0.0 into 0.0


def dual_steps(path):
    """Buttons, metrics and the two figures, in a fragment: in the browser a button reruns only this. Play
    draws one frame per run, a step further each time, the runs timed by the browser every PLAY_DELAY_S
    (run_every), so no frame is skipped; Play's click and its last frame rerun the page once, to start
    and stop the timer. The current step is st.session_state.learn_step."""
    if st.session_state.pop("learn_play_start", False):
        st.rerun()  # the page's run registers this fragment with its timer
    playing = st.session_state.get("learn_playing", False)
    if playing:
        st.session_state.learn_step = min(st.session_state.get("learn_play_next", 0), N_STEPS)
        st.session_state.learn_play_next = st.session_state.learn_step + 1
    t = st.session_state.learn_step
    compact = presenting()
    c = st.columns([1, 1, 1, 5] if compact else [1, 1, 1, 3], vertical_alignment="center")
    c[0].button("Step ▶", key="learn_step_button", on_click=_advance, help="One dual update.",
                disabled=playing or t >= N_STEPS)
    c[1].button("Play ▶▶", key="learn_play_button", on_click=_play, disabled=playing,
                help=f"Animate the updates up to step {N_STEPS}, one frame per step.")
    c[2].button("Reset ⟲", key="learn_reset_button", on_click=_reset, help="Back to step 0, λ = 0.")
    lam_star = path.attrs["lambda_star"]
    row = path.iloc[t]
    if compact:  # one line beside the buttons, so that the buttons and the chart share one screen
        c[3].markdown(f"**Step {t} / {N_STEPS}** · λ = {row['lambda']:.4f} (λ* = {lam_star:.4f}) · "
                      f"V₁ = {row['V_secondary']:.4f} ({_signed(row['slack'])} vs b)")
    else:
        mc = st.columns(4)
        mc[0].metric("Step", f"{t} / {N_STEPS}")
        mc[1].metric(f"λ (exact λ* = {lam_star:.4f})", f"{row['lambda']:.4f}",
                     f"{_signed(row['lambda'] - lam_star)} vs λ*", delta_color="off")
        mc[2].metric(f"V₁ {names[1]}", f"{row['V_secondary']:.4f}", f"{_signed(row['slack'])} vs b")
        mc[3].metric("Dual g(λ)", f"{row['dual']:.4f}")
    shown = path.iloc[: t + 1]
    for fig, fname in zip(_dual_figures(inst, path, t), ("learn_dual_steps", "learn_dual_plane")):
        show_figure(fig, fname, data=shown)
    if playing and t >= N_STEPS:
        st.session_state.learn_playing = False
        st.rerun()  # the last frame: the page's run stops the timer


def _play_delay() -> float:
    return max(float(st.session_state.get("learn_play_delay", PLAY_DELAY_S)), 0.05)


st.fragment(dual_steps, run_every=_play_delay() if st.session_state.get("learn_playing") else None)(path)
st.markdown(
    f"With the safe step 1/L = {eta0:.3f} the steps settle on the exact multiplier λ* that the app's Newton "
    "solver finds in a handful of iterations; the dual value falls at every step and ends at the best objective "
    "V₀ − τ·KL (strong duality). Larger steps get there faster, until they overshoot: try η = 8 × 1/L (on the "
    "default instance λ then jumps back and forth around λ* without settling)."
)

# --- 5 ------------------------------------------------------------------------------------------------
st.header("5 · The effect of τ")
st.markdown(
    "τ is the length of the leash. At each τ below, MOPO solves the constrained problem exactly for the "
    f"threshold b = {b:.2f} of step 4. A small τ lets the policy move far from π_ref: it approaches the exact "
    "front (the best trade-off, τ → 0), at a large KL. A large τ keeps it near π_ref, and λ must rise to still "
    "meet b. Either way the threshold is met whenever it is attainable: τ changes *how* it is met, not *whether*."
)
st.latex(r"\max_\pi\ V_0(\pi) - \tau\, \mathrm{KL}(\pi \,\|\, \pi_{\mathrm{ref}})"
         r" \quad \text{s.t.} \quad V_1(\pi) \ge b")
grid = sorted(set(TAU_GRID) | {float(tau)})
effect = learn_presenter.tau_effect(problem, b, grid)
current = effect[np.isclose(effect["tau"], tau)].iloc[0]
custom = effect[["tau", "lambda", "kl", "slack"]].to_numpy()
tau_plane = _value_plane(inst, responses=False)
y_low, y_high = _primary_range(inst)
_threshold_line(tau_plane, float(effect["threshold"].iloc[0]), y_low, y_high)
tau_plane.add_scatter(x=effect["V_secondary"], y=effect["V_primary"], mode="lines+markers",
                      name="MOPO solution at each τ (colour: log₁₀ τ)", line=dict(color="grey", width=1),
                      marker=dict(size=9, color=np.log10(effect["tau"]), colorscale="Viridis",
                                  colorbar=dict(title="log₁₀ τ")),
                      customdata=custom,
                      hovertemplate="τ = %{customdata[0]:.4g}<br>V₁ = %{x:.4f}<br>V₀ = %{y:.4f}"
                                    "<br>λ = %{customdata[1]:.4f}<br>KL = %{customdata[2]:.4f}<extra></extra>")
tau_plane.add_scatter(x=[current.V_secondary], y=[current.V_primary], mode="markers", name=f"sidebar τ = {tau}",
                      marker=dict(size=15, color=TILT, symbol="diamond", line=dict(color="black", width=1)),
                      hovertemplate=f"τ = {tau}<br>V₁ = %{{x:.4f}}<br>V₀ = %{{y:.4f}}<extra></extra>")
_finish(tau_plane, f"MOPO's policy at b = {b:.2f} as τ varies", axis_title(names, 1), axis_title(names, 0),
        height=480)
show_figure(tau_plane, "learn_tau_plane", data=effect)
kl_fig = go.Figure()
kl_fig.add_scatter(x=effect["tau"], y=effect["kl"], mode="lines+markers", name="KL(π ‖ π_ref) of the solution",
                   line=dict(color=PRIMARY), customdata=custom,
                   hovertemplate="τ = %{x:.4g}<br>KL = %{y:.4f} nats<br>λ = %{customdata[1]:.4f}<extra></extra>")
kl_fig.add_scatter(x=[current.tau], y=[current.kl], mode="markers", name=f"sidebar τ = {tau}",
                   marker=dict(size=15, color=TILT, symbol="diamond", line=dict(color="black", width=1)),
                   hovertemplate="τ = %{x:.4g}<br>KL = %{y:.4f} nats<extra></extra>")
kl_fig.update_xaxes(type="log")
_finish(kl_fig, "Distance from the reference against τ", "KL strength τ (log scale; stronger leash →)",
        "KL(π ‖ π_ref) in nats (lower = closer to π_ref)", height=400,
        subtitle="KL divergence of MOPO's policy from the reference, in nats: 0 at the reference itself")
show_figure(kl_fig, "learn_tau_kl", data=effect)

# --- 6 ------------------------------------------------------------------------------------------------
st.header("6 · What each method can do")
st.markdown(
    "A plain-language comparison. Honest fine print: with exact preferences and one prompt, MOPO's family "
    "π_λ *is* KL-regularised linear scalarisation (scalarised IPO with weight λ reaches the same policies). "
    "MOPO's gain there is that you state the threshold, and λ is found for you and the threshold met. The "
    "methods part ways when preferences are not Bradley–Terry (cyclic, deterministic, mixtures), when "
    "win-rates are estimated from finite data, and with many prompts (see the README's suite tables)."
)
show_table(learn_presenter.capability_summary(), "learn_capabilities")
with st.expander("The answers in full"):
    full = learn_presenter.capabilities()
    for row in full.itertuples(index=False):
        st.markdown(f"**{row[0]}**\n" + "\n".join(f"- *{q}* {a}" for q, a in zip(learn_presenter.QUESTIONS, row[1:])))
    export_buttons(full, "learn_capabilities_full")
