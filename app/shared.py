"""UI helpers shared by the pages: instance pickers, figure conventions, exports, the run store.

Pages stay thin views: every number comes from mopo_core / synthetic; this module only
turns them into widgets, figures and download buttons.
"""
from __future__ import annotations

import gc
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.presenters.formats import DEFAULT_TAU, EMPTY, number_text, readable_table  # noqa: F401 (re-exported)
from mopo_core.runs import RunStore, to_jsonable
from mopo_core.experiments.suite import ExactReference, exact_answers
from mopo_core.tabular.solver import TabularProblem
from mopo_core.validation import check_preferences, read_preference_array
from synthetic import PARAMETER_CHOICES, STRUCTURES, Structure, make_structure, structure_parameters

#: Session-state key of the sidebar toggle "Presentation (projector)", shared by every page.
PRESENTATION = "presentation"
#: Plotly fonts in presentation mode: large and near-black (Streamlit's theme draws ticks light grey).
PRESENTATION_FONT = dict(size=18, color="#111111")
PRESENTATION_TICKS = dict(size=16, color="#111111")
#: The page in presentation mode: larger, darker text and less padding, so a step's buttons and its chart
#: share one 1280×720 screen.
PRESENTATION_CSS = """<style>
.stMainBlockContainer, .block-container {padding-top: 3.9rem !important; padding-bottom: 1rem !important;}
.stApp, .stMarkdown p, [data-testid="stCaptionContainer"], [data-testid="stCaptionContainer"] *,
[data-testid="stWidgetLabel"] p {color: #111 !important;}
.stMarkdown p, .stMarkdown li {font-size: 1.15rem;}
[data-testid="stCaptionContainer"] {font-size: 1.0rem;}
h1 {font-size: 1.6rem !important; padding: 0.2rem 0 0.3rem 0 !important;}
h2 {font-size: 1.5rem !important; padding: 0.4rem 0 0.2rem 0 !important;}
[data-testid="stMetricValue"] {font-size: 1.6rem;}
[data-testid="stVerticalBlock"] {gap: 0.6rem;}
</style>"""

CONVENTION = "All objectives maximised · values are win-rates against the behaviour policy"
#: The subtitle of a chart of a policy's probabilities (its axes are no win-rates).
PROBABILITY_SUBTITLE = "Bars: the probability π(y | x) of each response; each prompt's probabilities sum to 1"
#: Largest preference file accepted by the upload widget (the server also caps uploads).
MAX_UPLOAD_BYTES = 5 * 2**20


@dataclass
class Instance:
    """What a page works on: a label and the instance's exact answers
    (:class:`mopo_core.experiments.suite.ExactReference`: the validated problem, the exact front, the
    reference policy's values = the hypervolume reference point)."""

    label: str
    exact: ExactReference

    @property
    def problem(self) -> TabularProblem:
        return self.exact.problem

    @property
    def structure(self) -> Structure:
        return self.exact.structure

    @property
    def objective_names(self) -> tuple[str, ...]:
        return self.exact.objective_names

    @property
    def n_objectives(self) -> int:
        return self.exact.n_objectives

    @property
    def front_points(self) -> np.ndarray:
        """(P, K) the exact unregularised front."""
        return self.exact.front.points

    @property
    def reference_point(self) -> np.ndarray:
        return self.exact.reference_point

    @property
    def top(self) -> np.ndarray:
        """(K,) attainable maxima."""
        return self.exact.attainable_max


@st.cache_resource(show_spinner="Building the instance and its exact front…", max_entries=16)
def structure_instance(name: str, n_responses: int, n_prompts: int, seed: int, params: tuple = ()) -> Instance:
    """A synthetic structure; ``params`` is a tuple of (name, value) overrides (hashable for the cache)."""
    s = make_structure(name, n_responses=n_responses, n_prompts=n_prompts, seed=seed, **dict(params))
    changed = "".join(f", {k}={v}" for k, v in params)
    return Instance(f"{name} (N={n_responses}, M={n_prompts}, seed={seed}{changed})", exact_answers(s))


def _parameter_widgets(name: str, key: str) -> tuple:
    """Widgets for a structure's knobs; returns the values that differ from the defaults."""
    changed = []
    with st.expander("Structure parameters"):
        for param, default in structure_parameters(name).items():
            widget_key = f"{key}_{name}_{param}"
            if param in PARAMETER_CHOICES:
                options = PARAMETER_CHOICES[param]
                value = st.selectbox(param, options, index=options.index(default), key=widget_key)
            elif isinstance(default, float):
                value = st.number_input(param, value=default, step=0.1, format="%.2f", key=widget_key)
            else:
                st.caption(f"{param} = {default}")
                continue
            if value != default:
                changed.append((param, value))
    return tuple(changed)


def read_preferences_file(name: str, data: bytes) -> np.ndarray:
    """Parse and validate an uploaded ``.npy`` or ``.json`` preference file.

    Raises ValueError whose message starts with the file name and says what is wrong.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"{name}: {len(data)} bytes is over the {MAX_UPLOAD_BYTES // 2**20} MiB limit")
    arr = read_preference_array(name, data)
    try:
        return check_preferences(arr)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


@st.cache_resource(show_spinner="Validating the uploaded matrices…", max_entries=4)
def uploaded_instance(name: str, data: bytes) -> Instance:
    """An uploaded file as a structure with uniform reference and behaviour and equal prompt weights."""
    prefs = read_preferences_file(name, data)
    k, m, n, _ = prefs.shape
    uniform = np.full((m, n), 1.0 / n)
    names = ("primary", *[f"secondary {j}" for j in range(1, k)])
    structure = Structure(name=f"upload:{name}", params={}, seed=0, preferences=prefs, reference=uniform,
                          behaviour=uniform, prompt_weights=np.full(m, 1.0 / m), objective_names=names)
    return Instance(f"{name} (K={k}, M={m}, N={n})", exact_answers(structure))


def instance_picker(key: str, allow_upload: bool = True, default: str = "bt_conflict") -> Instance | None:
    """Sidebar widgets choosing a structure (or an uploaded file); returns the instance, or None
    after saying in the main area what to do (upload a file, or fix the one uploaded)."""
    with st.sidebar:
        st.subheader("Instance")
        source = "structure"
        if allow_upload:
            source = st.radio("Source", ["structure", "upload"], horizontal=True, key=f"{key}_source")
        if source == "upload":
            file = st.file_uploader(f"Preference matrices (.npy or .json; (K,N,N) or (K,M,N,N); at most "
                                    f"{MAX_UPLOAD_BYTES // 2**20} MiB)", type=["npy", "json"], key=f"{key}_upload")
        else:
            name = st.selectbox("Structure", STRUCTURES, index=STRUCTURES.index(default), key=f"{key}_structure")
            n = st.slider("Responses per prompt (N)", 2, 64, 8, key=f"{key}_n")
            m = st.slider("Prompts (M)", 1, 16, 4 if name == "multi_prompt" else 1, key=f"{key}_m")
            seed = st.number_input("Seed", 0, 100_000, 0, key=f"{key}_seed")
            params = _parameter_widgets(name, key)
    try:
        if source == "structure":
            return structure_instance(name, n, m, int(seed), params)
        if file is None:
            st.info("Upload a preference file in the sidebar, or switch back to a built-in structure. Format: "
                    "a .npy array or a .json list (or {\"preferences\": ...}) of shape (K, N, N) or (K, M, N, N) "
                    "with P[k, m, i, j] = P_k(y_i beats y_j | x_m), P + Pᵀ = 1; objective 0 is the primary.")
            return None
        return uploaded_instance(file.name, file.getvalue())
    except ValueError as exc:
        st.error(str(exc) if source == "upload" else f"{name}: {exc}")
        return None


def _copy_widget_value(source: str, target: str):
    """Copy one widget's value to its twin, in the callback, before either is drawn again: one value, no
    rerun loop."""
    st.session_state[target] = st.session_state[source]


def threshold_input(container, label: str, short: str, low: float, high: float, default: float, key: str,
                    instance: str) -> float:
    """A threshold's slider (steps of 0.01) in ``container`` and beside it a number box (steps of 0.001, labelled
    ``short``) to type it exactly, kept equal: the slider's key ``key`` holds the value (``default`` at first,
    then clamped to [``low``, ``high``]), the box ``{key}_box`` mirrors it. A new ``instance`` (its label: a new
    range) starts again at ``default``. Returns the value."""
    box, seen = f"{key}_box", f"{key}_instance"
    if st.session_state.get(seen) != instance:
        st.session_state[seen] = instance
        st.session_state.pop(key, None)
    value = float(min(max(st.session_state.get(key, default), low), high))
    st.session_state[key] = value
    st.session_state[box] = value
    left, right = container.columns([4, 1], vertical_alignment="bottom")
    left.slider(label, low, high, step=0.01, key=key, on_change=_copy_widget_value, args=(key, box))
    right.number_input(short, low, high, step=0.001, format="%.3f", key=box, on_change=_copy_widget_value,
                       args=(box, key), help=f"Type {short} exactly (steps of 0.001); the slider follows.")
    return float(st.session_state[key])


def axis_title(names, k: int, axis: str | None = None) -> str:
    """``V_k name (win-rate vs behaviour; higher is better →/↑)``; the arrow points along the axis
    the title labels (``axis`` "x" or "y"; by default y for the primary, x for the others). In presentation
    mode, ``V_k name ↑`` (the figure's subtitle says the rest)."""
    axis = axis or ("y" if k == 0 else "x")
    arrow = "↑" if axis == "y" else "→"
    if presenting():  # large fonts: the short form (the figure's subtitle states the convention)
        return f"V{k} {names[k]} {arrow}"
    return f"V{k} {names[k]} (win-rate vs behaviour; higher is better {arrow})"


def presenting() -> bool:
    """Whether the sidebar's "Presentation (projector)" toggle is on (for this browser session)."""
    return bool(st.session_state.get(PRESENTATION, False))


def presentation_toggle():
    """The sidebar toggle "Presentation (projector)" (one session-state value shared by every page; the
    entry point draws it once for all pages) and, when on, the page's larger, darker, more compact style."""
    with st.sidebar:
        st.toggle("Presentation (projector)", key=PRESENTATION,
                  help="For teaching on a projector: larger, darker fonts and ticks, and a compact layout "
                       "(a step's buttons and its chart on one 1280×720 screen).")
    if presenting():
        st.html(PRESENTATION_CSS)


def presentation_style(fig: go.Figure) -> go.Figure:
    """In presentation mode, large near-black fonts, ticks and annotations; else the figure unchanged."""
    if not presenting():
        return fig
    axis = dict(tickfont=PRESENTATION_TICKS, title=dict(font=PRESENTATION_FONT), linecolor="#444444",
                gridcolor="#d0d0d0")
    fig.update_layout(font=PRESENTATION_FONT, title=dict(font=dict(size=20, color="#111111")),
                      legend=dict(font=dict(size=15, color="#111111")), **dict.fromkeys(axis_names(fig), axis))
    fig.update_annotations(font=dict(size=16, color="#111111"))
    return fig


def axis_names(fig: go.Figure, which: str = "xy") -> list[str]:
    """The layout keys of the figure's cartesian axes (``xaxis``, ``yaxis2``, ...), of ``which`` letters: for
    one ``update_layout`` over every axis, where each ``update_xaxes`` would be an update of its own."""
    return [name for name in fig.layout if name[0] in which and name[1:5] == "axis"]


def style(fig: go.Figure, title: str, x_title: str | None = None, y_title: str | None = None,
          height: int = 460, subtitle: str | None = CONVENTION) -> go.Figure:
    """Title with a subtitle, axis titles and a legend on every figure (:func:`show_figure`, which draws every
    figure, adds presentation mode's fonts last, over whatever a page set after this). The subtitle is by default the sign convention of win-rate axes
    (:data:`CONVENTION`); a chart whose axes are something else says what it shows instead (e.g.
    :data:`PROBABILITY_SUBTITLE`), or passes None for none. One layout update (each update validates and
    dispatches again)."""
    text = f"{title}<br><sup>{subtitle}</sup>" if subtitle else title
    axes = {}
    for letter, axis_title_text in (("x", x_title), ("y", y_title)):
        if axis_title_text:
            axes |= dict.fromkeys(axis_names(fig, letter), dict(title=dict(text=axis_title_text)))
    return fig.update_layout(title=dict(text=text), height=height, margin=dict(t=80), **axes)


def place_legend(fig: go.Figure) -> go.Figure:
    """Put the legend under the plot, measured from the figure's bottom edge, and grow the figure
    by the room it needs, so that it never covers the x-axis title; and start the left margin at
    :func:`left_margin` (called by show_figure). The axes keep Plotly's automargin, so a longer label
    still gets its room; it is the floor that spares the browser a second drawing of the chart."""
    names = [t.name for t in fig.data if getattr(t, "showlegend", None) is not False and getattr(t, "name", None)]
    longest = max((len(n) for n in names), default=10)
    char_px, row_px = (9, 28) if presenting() else (7, 24)
    per_row = max(1, int(1000 // (char_px * longest + 50)))
    legend_px = row_px * -(-len(names) // per_row) + 10
    fig.update_layout(height=(fig.layout.height or 460) + legend_px,
                      margin=dict(b=legend_px + 70, l=left_margin(fig.layout.yaxis.title.text)),
                      legend=dict(orientation="h", yref="container", y=0, yanchor="bottom", x=0),
                      **dict.fromkeys(axis_names(fig), dict(automargin=True)))
    return fig


def left_margin(y_title: str | None) -> int:
    """Pixels left of the plot for a y-axis title of this many lines (``<br>``) and numeric tick labels.
    Streamlit's chart theme sets the left margin to 0, so Plotly's automargin grows it after the first
    drawing, and to grow it Plotly draws the whole chart a second time, on every update. The floors
    cover what automargin settled on for every chart of Explore, Sweep and Learn in headless Chromium
    at 1600×1000 (58–64 px with a one-line title, 76 px with two; 69 px in presentation mode), with
    8 px or more to spare for another machine's fonts."""
    lines = 1 + (y_title or "").count("<br>")
    first, further = (80, 22) if presenting() else (72, 18)
    return first + further * (lines - 1)


class _SentFigure(go.Figure):
    """A figure on its way to ``st.plotly_chart``, which serialises ``figure.to_dict()``: here that is the
    figure's own (already validated) data and layout, not Plotly's defensive deep copy with every numeric
    array turned into a base64 typed array. The JSON is the same figure (arrays as plain lists); on
    Compare with 40 runs the copy and the conversion were most of a rerun's figure time (a profile of
    bench/compare_scale.py's reruns). Safe because :func:`show_figure` changes nothing in a figure after
    sending it."""

    def to_dict(self) -> dict:
        return {"data": self._data, "layout": self._layout}


def show_figure(fig: go.Figure, name: str, data: pd.DataFrame | Callable[[], pd.DataFrame] | None = None, **kwargs):
    """Draw a figure with its exports: PNG from the figure's camera button, a self-contained
    HTML file, and the underlying data as CSV and JSON when given (files are built only when
    a button is clicked; ``data`` may be a function that builds the table then). Extra kwargs go to
    ``st.plotly_chart``; its return value is returned. The figure is sent as it is
    (:class:`_SentFigure`): change nothing in it afterwards."""
    presentation_style(fig)
    place_legend(fig)
    config = {"toImageButtonOptions": {"format": "png", "filename": name, "scale": 2}, "displaylogo": False}
    fig.__class__ = _SentFigure
    event = st.plotly_chart(fig, width="stretch", config=config, key=f"fig_{name}", **kwargs)
    cols = st.columns(4)
    # The export: a full (copied, validated) figure with Plotly's own template: Streamlit's theme colours only
    # exist inside the app.
    cols[0].download_button("Figure HTML", lambda: go.Figure(go.Figure.to_dict(fig)).update_layout(
        template="plotly").to_html(include_plotlyjs=True), f"{name}.html", "text/html", key=f"html_{name}",
        on_click="ignore")
    if data is not None:
        export_buttons(data, name, cols[1:3])
    return event


def export_buttons(df: pd.DataFrame | Callable[[], pd.DataFrame], name: str, columns=None):
    """CSV and JSON download buttons for a table, or for the table a function builds (on click)."""
    table = df if callable(df) else lambda: df
    columns = columns or st.columns(4)[:2]
    columns[0].download_button("Data CSV", lambda: table().to_csv(index=False), f"{name}.csv", "text/csv",
                               key=f"csv_{name}", on_click="ignore")
    columns[1].download_button(
        "Data JSON", lambda: json.dumps(to_jsonable(table().to_dict(orient="records")), indent=1),
        f"{name}.json", "application/json", key=f"json_{name}", on_click="ignore")


def show_table(df: pd.DataFrame, name: str, readable: bool = False, **kwargs):
    """A table with its CSV / JSON downloads. ``readable``: numbers rounded for reading on screen and empty
    cells as "–" (:func:`app.presenters.formats.readable_table`); the downloads keep full precision."""
    if readable:
        shown, texts = readable_table(df)
        config = dict(kwargs.pop("column_config", None) or {})
        for c in texts:  # numbers as text: right-aligned like the numbers beside them
            config[c] = {**config[c], "alignment": "right"} if c in config else \
                st.column_config.TextColumn(c, alignment="right")
        st.dataframe(shown, width="stretch", hide_index=True, column_config=config, **kwargs)
    else:
        st.dataframe(df, width="stretch", hide_index=True, **kwargs)
    export_buttons(df, name)


@st.cache_resource
def run_store() -> RunStore:
    """The run store (path from $MOPO_STORE, else the user data dir)."""
    return RunStore()


@st.cache_resource(show_spinner=False)
def freeze_startup_heap() -> int:
    """Once per server process, after its first page run: collect the garbage, then move every object
    still alive (the imported libraries, the first page's caches) out of Python's cyclic garbage
    collector (``gc.freeze``), so that the collections a rerun triggers walk only what reruns create.
    A frozen object that dies later is still freed by reference counting; only a reference cycle among
    frozen objects would stay. On Compare with 40 of 1,000 runs, the median rerun was 10-14 ms faster
    with the freeze than without in two pairs of runs (bench/compare_scale.py, --repeats 15). Returns
    how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
