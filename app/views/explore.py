"""Explore: set each threshold, τ and ε (and how much data MOPO gets), and see the best policy that meets
the thresholds: its TRUE values next to its estimates, MOPO's own front at this τ, the baselines at
the same KL as MOPO's point, the τ → 0 front and the reference policy. A thin view over
app.presenters.explore (which calls mopo_core)."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.presenters import explore as logic
from app.shared import (
    CONVENTION,
    DEFAULT_TAU,
    PROBABILITY_SUBTITLE,
    axis_title,
    instance_picker,
    number_text,
    presenting,
    show_figure,
    show_table,
    style,
    threshold_input,
)
from mopo_core.experiments.suite import METHODS, THRESHOLD_METHODS

TAUS = [0.005, 0.01, 0.02, 0.05, 0.08, 0.1, 0.2, 0.5, 1.0]
BASELINES = [m for m in METHODS if m not in ("mopo", "mopo_oracle")]
MARKERS = ["square", "diamond", "triangle-up", "cross", "star", "hexagon"]
COLOURS = ["#00a087", "#7e57c2", "#f39c12", "#17becf", "#8c564b", "#e377c2"]  # none close to MOPO's crimson
EXACT = "∞ (exact)"
DATA_OPTIONS = [*(n for n in logic.DATA_SIZES if n is not None), EXACT]  # left to right: more data
#: Less room above the title, and a one-line title, so the main plot is on the first screen at 1280×720.
COMPACT_CSS = """<style>
.stMainBlockContainer, .block-container {padding-top: 3.9rem !important;}
h1 {font-size: 1.6rem !important; padding-bottom: 0.2rem !important;}
</style>"""
#: The planes' height (px, before the legend's rows): the first one fits the first screen at 1280×720.
PLANE_HEIGHT, PLANE_HEIGHT_PRESENTING = 400, 380
SAME_KL, SAME_TAU = "same KL as MOPO's point", "same τ as MOPO"
#: The policy heatmap's subtitle (its colours are probabilities, not win-rates; the bars': PROBABILITY_SUBTITLE).
HEATMAP_SUBTITLE = "Colour: the probability π(y | x) of each response (darker: likelier); each row sums to 1"
#: Up to this many prompts the policy is drawn as grouped bars (one series per prompt); beyond, as a heatmap.
MAX_PROMPT_BARS = 6


@st.cache_resource(show_spinner="Sampling the comparisons…", max_entries=32)
def fitted(_instance, label: str, n, seed: int) -> logic.FittedData:
    return logic.fitted_data(_instance.exact, n, seed)


@st.cache_data(show_spinner="Tracing MOPO's own front at this τ…", max_entries=128)
def own_front(_instance, _data, label: str, n, seed: int, tau: float, eps: float, j: int, others: tuple):
    """``others``: the enforced thresholds with b_j's slot zeroed (the cache key: b_j does not move the curve)."""
    return logic.own_front(_instance.exact, _data, list(others), j, tau, eps)


@st.cache_resource(show_spinner="Training the baseline at a ladder of temperatures…", max_entries=32)
def tau_curve(_instance, _data, label: str, n, seed: int, method: str) -> logic.TauCurve:
    return logic.tau_curve(method, _instance.exact, _data)


@st.cache_data(show_spinner="Training the baseline…", max_entries=64)
def same_tau(_instance, _data, label: str, n, seed: int, method: str, tau: float, thresholds: tuple) -> pd.DataFrame:
    return logic.baseline_same_tau(method, _instance.exact, _data, list(thresholds), tau)


@st.cache_data(show_spinner="Matching the baseline's KL…", max_entries=64)
def threshold_at_kl(_instance, _data, label: str, n, seed: int, method: str, thresholds: tuple, kl: float):
    return logic.threshold_baseline_at_kl(method, _instance.exact, _data, list(thresholds), kl)


def baseline_rows(method: str, temperature: str, thresholds: list, answer) -> pd.DataFrame:
    if temperature == SAME_TAU:
        return same_tau(instance, data, instance.label, n_comparisons, data_seed, method, tau,
                        tuple(thresholds) if method in THRESHOLD_METHODS else ())
    if method in THRESHOLD_METHODS:
        return threshold_at_kl(instance, data, instance.label, n_comparisons, data_seed, method, tuple(thresholds),
                               round(answer.kl, 10))
    return logic.at_kl(tau_curve(instance, data, instance.label, n_comparisons, data_seed, method), answer.kl,
                       instance.exact)


st.html(COMPACT_CSS)
st.title("Explore: set a threshold, get the best policy that meets it")
instance = instance_picker("explore")
if instance is None:
    st.stop()
names, k = instance.objective_names, instance.n_objectives
rates = instance.problem.rates
with st.sidebar:
    st.subheader("Data MOPO is fitted on")
    choice = st.select_slider("Comparisons per prompt (n)", options=DATA_OPTIONS, value=EXACT, key="explore_data_n",
                              help="Win-rates estimated from n sampled comparisons per prompt (labels drawn from the "
                                   "instance's preferences, which are the truth here), or the exact preferences.")
    n_comparisons = None if choice == EXACT else int(choice)
    data_seed = int(st.number_input("Sampling seed", 0, 100_000, 0, key="explore_data_seed",
                                    disabled=n_comparisons is None))
    z = st.select_slider("Margin z: enforce b + z·SE", options=list(logic.MARGINS), value=0.0, key="explore_margin",
                         disabled=n_comparisons is None, format_func=lambda v: f"{v:g}",
                         help="Raise each threshold by z standard errors of the chosen policy's estimated value "
                              "(z = 1.64: one-sided 95%). Only with sampled data.")
    st.subheader("MOPO")
    tau = st.select_slider("KL strength τ", options=TAUS, value=DEFAULT_TAU, key="explore_tau")
    eps = st.slider("Robust radius ε (0 = off)", 0.0, 0.3, 0.0, 0.01, key="explore_eps")
    rule = logic.eps_rule(n_comparisons, instance.structure.n_responses)
    if rule is not None:
        st.caption(f"ε for n = {n_comparisons} by the rule χ²₀.₉₅(N−1) / 2n: {number_text(rule)}")
    st.subheader("Baselines")
    chosen = st.multiselect("Show baselines (same data as MOPO)", BASELINES,
                            default=["scalarised_ipo", "rewarded_soups"], key="explore_baselines",
                            disabled=instance.structure is None)
    temperature = st.radio("Baseline temperature", [SAME_KL, SAME_TAU], key="explore_baseline_temperature",
                           help="Same KL: each baseline point's τ is set so that its KL to π_ref equals MOPO's; "
                                "the fair comparison. Same τ: MOPO's τ, whose KL differs method by method.")

data = fitted(instance, instance.label, n_comparisons, data_seed)
sampled = n_comparisons is not None


def threshold_controls() -> list[float]:
    """A slider and a number box per threshold (:func:`app.shared.threshold_input`). A new instance (new
    range) resets them to its default."""
    values = []
    for j, column in zip(range(1, k), st.columns(k - 1)):
        low = float(np.floor(min(rates[j].min(), instance.reference_point[j]) * 100) / 100)
        high = float(np.ceil(instance.top[j] * 100) / 100)
        default = float(round((instance.reference_point[j] + instance.top[j]) / 2, 2))
        values.append(threshold_input(column, f"Threshold b{j} on {names[j]} (V{j} ≥ b{j})", f"b{j}", low, high,
                                      default, f"threshold_{j}", instance.label))
    return values


def slack_text(answer, j: int) -> str:
    """True slack of threshold j+1 for the metric's delta: ``+0.012``, ``0.000`` when it rounds to zero (never
    ``-0.000``), and two significant digits (``-3.0e-04``) for a broken threshold that would round to zero."""
    slack = float(answer.true_slack[j])
    if answer.broken[j] and abs(slack) < 5e-4:
        return f"{slack:.1e}"
    return number_text(slack, signed=True)


def policy_figure(policy: np.ndarray):
    """The MOPO policy: grouped bars (one series per prompt, π_ref of prompt 0 as ticks) up to MAX_PROMPT_BARS
    prompts; beyond, a heatmap prompts × responses (π_ref in the hover). The export keeps full precision."""
    m_count, n_count = policy.shape
    responses = np.arange(n_count)
    reference = instance.problem.reference
    if m_count <= MAX_PROMPT_BARS:
        bars = [dict(type="bar", x=responses, y=policy[m], name=f"MOPO, prompt {m}",
                     hovertemplate=f"MOPO, prompt {m}<br>response %{{x}}<br>π=%{{y:.3f}}<extra></extra>")
                for m in range(m_count)]
        ticks = dict(type="scatter", x=responses, y=reference[0], mode="markers", name="reference π_ref (prompt 0)",
                     marker=dict(symbol="line-ew-open", size=20, color="black", line=dict(width=2)),
                     hovertemplate="reference, prompt 0<br>response %{x}<br>π_ref=%{y:.3f}<extra></extra>")
        fig = go.Figure(data=[*bars, ticks], layout=dict(barmode="group"))
        style(fig, "The MOPO policy over responses, per prompt", "response index", "probability π(y | x)",
              height=380, subtitle=PROBABILITY_SUBTITLE)
    else:
        fig = go.Figure(data=[dict(
            type="heatmap", z=policy, x=responses, y=np.arange(m_count),
            customdata=np.broadcast_to(reference, policy.shape), colorscale="Blues", zmin=0.0,
            colorbar=dict(title=dict(text="π(y | x)", side="right")), name="MOPO policy", showlegend=False,
            hovertemplate="prompt %{y}, response %{x}<br>π=%{z:.3f}<br>π_ref=%{customdata:.3f}<extra></extra>")],
            layout=dict(xaxis=dict(dtick=1 if n_count <= 32 else None), yaxis=dict(dtick=1, autorange="reversed")))
        style(fig, f"The MOPO policy over responses: {m_count} prompts (one row each)", "response index",
              "prompt", height=max(380, 22 * m_count + 160), subtitle=HEATMAP_SUBTITLE)
    show_figure(fig, "explore_policy",
                lambda: pd.DataFrame(policy, columns=[f"y{i}" for i in responses]).assign(prompt=range(m_count)))


def plane_ranges(x_parts, y_parts, traces: list[dict], pad: float = 0.04) -> tuple[list[float], list[float]]:
    """Fixed axis ranges of a plane: the box around what no threshold b_j moves (the τ → 0 front, π_ref, MOPO's
    own front at τ: ``x_parts``, ``y_parts``, lists of arrays), widened to every point the ``traces`` draw
    (with their error bars), plus ``pad`` of the span on each side. So the axes stay put while b_j moves
    MOPO's point along its own front (and Plotly need not recompute them on every redraw)."""
    ranges = []
    for axis, parts in (("x", x_parts), ("y", y_parts)):
        values = [np.asarray(p, dtype=float).ravel() for p in parts]
        for t in traces:
            centre = np.asarray(t[axis], dtype=float).ravel()
            bar = np.asarray(t.get(f"error_{axis}", {}).get("array", 0.0), dtype=float).ravel()
            values += [centre - bar, centre + bar]
        values = np.concatenate(values)
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        margin = pad * max(high - low, 1e-3)
        ranges.append([low - margin, high + margin])
    return ranges[0], ranges[1]


def plane_figure(j: int, thresholds: list[float], answer, own: pd.DataFrame, reached: pd.DataFrame) -> go.Figure:
    """The plane (V_j, V0): the band where b_j is met (and the enforced b_j + z·SE), the τ → 0 front, MOPO's
    own front at τ (true, and estimated with sampled data), π_ref, the baselines that reach MOPO's KL (or at
    its τ), MOPO's estimate ± 1.96·SE (sampled data) and MOPO's true point. Traces, shapes and annotations
    are plain dicts validated once by ``go.Figure``, not added one call at a time (each such call validates
    and dispatches again)."""
    b_j = thresholds[j - 1]
    shapes = [dict(type="rect", x0=b_j, x1=max(instance.top[j], b_j) + 0.02, xref="x", y0=0, y1=1, yref="y domain",
                   fillcolor="green", opacity=0.08, line=dict(width=0))]
    annotations = [dict(text=f"V{j} ≥ b{j}: meets the threshold", x=b_j, xref="x", y=1, yref="y domain",
                        xanchor="left", yanchor="top", showarrow=False)]
    if sampled and answer.enforced[j - 1] > b_j + 1e-9:
        enforced = answer.enforced[j - 1]
        shapes.append(dict(type="line", x0=enforced, x1=enforced, xref="x", y0=0, y1=1, yref="y domain",
                           line=dict(color="crimson", dash="dash", width=1)))
        annotations.append(dict(text=f"enforced b{j} + z·SE{j}", x=enforced, xref="x", y=0, yref="y domain",
                                xanchor="left", yanchor="bottom", showarrow=False))
    reference = instance.reference_point
    front = instance.front_points
    traces = [dict(type="scatter", x=front[:, j], y=front[:, 0], mode="lines" if k == 2 else "markers",
                   name="τ → 0 front (LP, no KL limit)" if k == 2 else "τ → 0 front points (LP grid), projected",
                   marker=dict(size=4, color="lightsteelblue"),
                   line=dict(color="lightsteelblue", width=2, dash="dot"), opacity=0.7,
                   hovertemplate=f"τ → 0 front (LP)<br>V{j}=%{{x:.3f}}<br>V0=%{{y:.3f}}<extra></extra>")]
    if len(own):
        fixed = "" if k == 2 else " (other thresholds fixed)"
        traces.append(dict(
            type="scatter", x=own[f"V{j}"], y=own["V0"], mode="lines", line=dict(color="crimson", width=2),
            name=f"MOPO's own front, τ = {tau:g}{fixed} (KL {own.kl.min():.2f}–{own.kl.max():.2f})",
            customdata=own[["b", "kl"]].to_numpy(),
            hovertemplate=f"MOPO's own front (τ={tau:g}, ε={eps:g})<br>b{j}=%{{customdata[0]:.3f}}"
                          f"<br>KL=%{{customdata[1]:.3f}}<br>true V{j}=%{{x:.3f}}<br>true V0=%{{y:.3f}}<extra></extra>"))
        if sampled:
            traces.append(dict(
                type="scatter", x=own[f"V{j}_est"], y=own["V0_est"], mode="lines",
                line=dict(color="crimson", width=1, dash="dash"), opacity=0.6,
                name=f"MOPO's own front, estimated (n = {n_comparisons})",
                hovertemplate=f"MOPO's own front, estimated<br>V{j} est=%{{x:.3f}}<br>V0 est=%{{y:.3f}}<extra></extra>"))
    traces.append(dict(type="scatter", x=[reference[j]], y=[reference[0]], mode="markers",
                       name="π_ref (reference point)", marker=dict(symbol="x", size=13, color="black"),
                       hovertemplate=f"reference policy π_ref<br>V{j}=%{{x:.3f}}<br>V0=%{{y:.3f}}<extra></extra>"))
    for i, (method, rows) in enumerate(reached.groupby("method", sort=False) if len(reached) else []):
        rows = rows.sort_values(f"V{j}")
        if temperature == SAME_KL:
            label = f"{method}, KL = {answer.kl:.3f} (= MOPO's)"
        else:
            label = f"{method}, τ = {tau:g} (KL {rows.kl.min():.2f}–{rows.kl.max():.2f})"
        colour, marker = COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]
        traces.append(dict(
            type="scatter", x=rows[f"V{j}"], y=rows["V0"], name=label,
            mode="lines+markers" if k == 2 and len(rows) > 1 else "markers",
            customdata=np.stack([rows.parameter, rows.tau.replace(np.inf, np.nan), rows.kl], axis=1),
            line=dict(color=colour, width=1), marker=dict(symbol=marker, size=9, opacity=0.85, color=colour),
            hovertemplate=f"{method}<br>%{{customdata[0]}}<br>τ=%{{customdata[1]:.4g}}, "
                          f"KL=%{{customdata[2]:.3f}}<br>true V{j}=%{{x:.3f}}<br>true V0=%{{y:.3f}}<extra></extra>"))
    if sampled:
        half = answer.half_width
        traces.append(dict(
            type="scatter", x=[answer.estimated_values[j]], y=[answer.estimated_values[0]], mode="markers",
            name=f"MOPO estimate ± 1.96·SE (n = {n_comparisons})",
            marker=dict(symbol="diamond-open", size=13, color="crimson", line=dict(width=2)),
            error_x=dict(type="data", array=[half[j]], color="crimson", thickness=1.5),
            error_y=dict(type="data", array=[half[0]], color="crimson", thickness=1.5),
            hovertemplate=(f"MOPO, estimated from n={n_comparisons}<br>V{j}=%{{x:.3f}} ± {half[j]:.3f}"
                           f"<br>V0=%{{y:.3f}} ± {half[0]:.3f}<extra></extra>")))
    broken = bool(answer.broken[j - 1])
    traces.append(dict(
        type="scatter", x=[answer.true_values[j]], y=[answer.true_values[0]], mode="markers",
        name=f"MOPO, true values (KL {answer.kl:.3f})" + (f": b{j} BROKEN" if broken else ""),
        marker=dict(size=15, color="white" if broken else "crimson", symbol="circle",
                    line=dict(color="crimson" if broken else "white", width=3 if broken else 1)),
        hovertemplate=(f"MOPO (true values)<br>thresholds {', '.join(f'{b:.3f}' for b in thresholds)}, "
                       f"τ={tau}, ε={eps}, z={answer.z:g}<br>KL={answer.kl:.3f}"
                       f"<br>V{j}=%{{x:.3f}}<br>V0=%{{y:.3f}}<extra></extra>")))
    x_range, y_range = plane_ranges([front[:, j], [reference[j]], own.get(f"V{j}", [])],
                                    [front[:, 0], [reference[0]], own.get("V0", [])], traces)
    fig = go.Figure(data=traces, layout=dict(shapes=shapes, annotations=annotations,
                                             xaxis=dict(range=x_range), yaxis=dict(range=y_range)))
    what = "same KL" if temperature == SAME_KL else "same τ"
    return style(fig, f"Primary against {names[j]}: MOPO at τ = {tau:g} and the baselines at the {what}",
                 axis_title(names, j), axis_title(names, 0).replace(" (", "<br>("),  # two lines: fits the height
                 height=PLANE_HEIGHT_PRESENTING if presenting() else PLANE_HEIGHT, subtitle=CONVENTION)


def plane(j: int, thresholds: list[float], answer, baselines: pd.DataFrame, reached: pd.DataFrame):
    """The plane (V_j, V0) with its exports (MOPO, its own front, the reference, the baselines: the table is
    built when a download asks for it) and caption."""
    others = np.array(answer.enforced, dtype=float)
    others[j - 1] = 0.0
    own = own_front(instance, data, instance.label, n_comparisons, data_seed, tau, eps, j, tuple(np.round(others, 10)))

    def export() -> pd.DataFrame:
        rows = pd.DataFrame([{"method": "MOPO (true)", "parameter": f"thresholds {thresholds}", "kl": answer.kl,
                              **{f"V{i}": v for i, v in enumerate(answer.true_values)}},
                             {"method": "MOPO (estimate)", "parameter": f"n={n_comparisons}", "kl": answer.kl,
                              **{f"V{i}": v for i, v in enumerate(answer.estimated_values)},
                              **{f"SE{i}": v for i, v in enumerate(answer.standard_errors)}},
                             {"method": "reference", "parameter": "", "kl": 0.0,
                              **{f"V{i}": v for i, v in enumerate(instance.reference_point)}}])
        own_rows = own.assign(method="MOPO own front", parameter=[f"b{j}={b:.6g}" for b in own.b]) if len(own) else own
        return pd.concat([rows, own_rows, baselines], ignore_index=True)

    show_figure(plane_figure(j, thresholds, answer, own, reached), f"explore_values_V0_V{j}", export)
    ref = ", ".join(number_text(v) for v in (instance.reference_point[0], instance.reference_point[j]))
    kl_words = (f"each baseline point's temperature is set so that its KL to π_ref equals MOPO's, {answer.kl:.3f} "
                "(logits interpolated in 1/τ between trained temperatures; the reward Lagrangian by a root-find on τ)"
                if temperature == SAME_KL else
                f"every baseline is trained at MOPO's τ = {tau:g}, so its KL differs from MOPO's {answer.kl:.3f} "
                "(see the legend): not a like-for-like comparison")
    st.caption(f"Points are TRUE values of policies fitted on {logic.data_label(n_comparisons)}. MOPO's own front is "
               f"the curve its point moves along as b{j} moves at τ = {tau:g} (KL varies along it); {kl_words}. "
               f"The τ → 0 front (dotted, light) is the unregularised LP front: no policy with a finite KL budget "
               f"reaches it. Reference point: π_ref's values (V0, V{j}) = ({ref}).")


def numbers(answer):
    """MOPO's true values with their slack, λ and KL; with sampled data the estimates ± 1.96·SE and the
    enforced thresholds; and the verdict in words."""
    sol = answer.solution
    cols = st.columns(k + 2)
    for i in range(k):
        slack = None if i == 0 else f"{slack_text(answer, i - 1)} vs b{i}"
        cols[i].metric(f"V{i} {names[i]} · true value", number_text(answer.true_values[i]), slack,
                       help="On the instance's own preferences; the arrow is the slack against the threshold.")
    cols[k].metric("Multipliers λ", ", ".join(number_text(x) for x in sol.multipliers))
    cols[k + 1].metric("KL to reference", number_text(answer.kl))
    if sampled:
        cols = st.columns([3] * k + [2])  # wide enough for "0.630 ± 0.021"
        for i in range(k):
            cols[i].metric(f"V{i} {names[i]} · estimate ± 1.96·SE", logic.interval_text(answer.estimated_values[i],
                                                                                          answer.standard_errors[i]),
                           help=f"95% interval [{number_text(answer.lower[i])}, {number_text(answer.upper[i])}] from n = {n_comparisons} "
                                "comparisons per prompt (SE of the chosen policy's estimated value)")
        cols[k].metric("Enforced threshold" + ("s" if k > 2 else ""),
                       ", ".join(number_text(b) for b in answer.enforced),
                       help="b + z·SE of the chosen policy's estimated secondary value")
        st.caption("Enforced: " + "; ".join(
            f"b{j} + z·SE{j} = {number_text(answer.thresholds[j - 1])} + {z:g} × {number_text(answer.standard_errors[j])} = "
            f"{number_text(answer.enforced[j - 1])}" for j in range(1, k))
            + (" (z = 0: the plug-in solve enforces b itself)." if z == 0 else "."))

    level, message = logic.verdict(answer, names, instance.top[1:])
    if n_comparisons is None and not sol.feasible:
        attainable = ", ".join(f"{names[j + 1]} ≤ {number_text(v)}" for j, v in enumerate(sol.max_attainable))
        message = (f"These thresholds cannot be met. Largest attainable values: {attainable}. "
                   + (f"Showing the policy for the nearest attainable thresholds "
                      f"{', '.join(number_text(b) for b in sol.effective_thresholds)}." if eps == 0 else
                      "Showing the most robust policy of the family."))
    {"success": st.success, "warning": st.warning, "error": st.error}[level](message)


@st.fragment
def threshold_view():
    """Everything a threshold moves: the controls, the solve, the metrics, the figures, the table. A threshold
    change reruns only this fragment (in the browser); the sidebar's controls rerun the page. The planes are
    sent first (the browser draws them while the rest is computed), into a container above the numbers; text
    that no threshold changes (the "start here" line above, the instance's caption below) is outside."""
    thresholds = threshold_controls()
    answer = logic.solve_mopo(instance.exact, data, thresholds, tau, eps, z)
    sol = answer.solution
    plots, below = st.container(), st.container()  # the planes come first: the main plot is on the first screen
    baselines = pd.concat([baseline_rows(m, temperature, thresholds, answer) for m in chosen], ignore_index=True) \
        if chosen and instance.structure is not None else pd.DataFrame()
    reached = baselines[baselines.reached] if len(baselines) else baselines
    missed = baselines[~baselines.reached] if len(baselines) else baselines
    with plots:
        for j in range(1, k):
            plane(j, thresholds, answer, baselines, reached)
    with below:
        numbers(answer)
    if len(missed):
        st.warning("Not reached at MOPO's KL (even the smallest τ trained stays below it): "
                   + "; ".join(f"{r.method} {r.parameter} (largest KL {r.kl:.3f})" for r in missed.itertuples()))

    policy_figure(answer.policy)

    summary = answer.table(names)
    summary["multiplier λ"] = [np.nan, *sol.multipliers]
    summary["largest attainable (on the data)"] = [np.nan, *sol.max_attainable]
    summary["robust bound (ε)"] = [np.nan, *(sol.robust_values if sol.robust_values is not None else [np.nan] * (k - 1))]
    st.subheader("Values against thresholds: true value, estimate and its 95% interval")
    show_table(summary, "explore_summary", readable=True)


st.caption("**Start here:** move the threshold b1 (slider, or type it in the box) and watch MOPO's red point "
           "move along its own front.")
threshold_view()
st.caption(f"Instance: {instance.label}. Data: {logic.data_label(n_comparisons)}"
           + ("" if n_comparisons is None else f" (sampling seed {data_seed})")
           + ". Thresholds are lower bounds on the secondaries' win-rates against the behaviour policy; "
             "'true' values are on the instance's own preferences.")
