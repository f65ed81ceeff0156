"""Numbers and defaults shared by every page, without Streamlit (``app.shared`` re-exports them).

- :data:`DEFAULT_TAU`: the KL strength τ every page starts at (Explore, Sweep, Learn, Train), so that the
  same instance looks the same on every page.
- :func:`number_text`: a number rounded for reading on screen (``0.631``; ``0.000``, never ``-0.000``; an
  empty value as ``–``). Screens round; downloads and exports keep full precision.
- :func:`readable_table`: a table's on-screen formatting (a pandas ``Styler`` whose display values are
  :func:`number_text`), the data underneath unchanged.
"""
from __future__ import annotations

import math
import numbers

import pandas as pd

#: The KL strength τ every page starts at (the paper's value).
DEFAULT_TAU = 0.08
#: Decimals shown on screen for win-rates, thresholds, KL, slack and the other values in [0, ~1].
DIGITS = 3
#: What an empty cell (None, NaN) reads on screen.
EMPTY = "–"


def is_empty(value) -> bool:
    """None, NaN or pandas' missing markers."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays, lists: not a single missing value
        return False


def number_text(value, digits: int = DIGITS, signed: bool = False) -> str:
    """``value`` rounded to ``digits`` decimals for the screen: ``–`` for an empty value, ``yes``/``no`` for a
    bool, ``0.000`` for anything that rounds to zero (never ``-0.000``, e.g. a slack of -5e-15), ``+0.012`` with
    ``signed``; integers as they are; magnitudes of 1e5 and more in ``%g`` form (``1.23e+05``); ∞ as ``∞``."""
    if is_empty(value):
        return EMPTY
    if isinstance(value, bool) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "b"):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):+d}" if signed else f"{int(value)}"
    if not isinstance(value, numbers.Real):
        return str(value)
    x = float(value)
    if math.isinf(x):
        return ("+∞" if signed else "∞") if x > 0 else "−∞"
    rounded = round(x, digits) + 0.0  # + 0.0: no negative zero
    if rounded == 0.0:
        return f"{0:.{digits}f}"  # e.g. a slack of -5e-15: 0.000, not -0.000 (nor +0.000)
    if abs(x) >= 1e5:
        return f"{x:+.{digits}g}" if signed else f"{x:.{digits}g}"
    return f"{rounded:+.{digits}f}" if signed else f"{rounded:.{digits}f}"


def text_columns(df: pd.DataFrame) -> list:
    """The columns Streamlit would draw badly: flags (a checkbox), and columns with an empty cell (drawn as
    "None") or mixed types. :func:`readable_table` turns them into text."""
    columns = []
    for c in df.columns:
        col = df[c]
        if pd.api.types.is_bool_dtype(col):
            columns.append(c)
        elif pd.api.types.is_numeric_dtype(col):
            if col.isna().any():
                columns.append(c)
        elif not all(isinstance(v, str) for v in col):
            columns.append(c)
    return columns


def readable_table(df: pd.DataFrame, digits: int = DIGITS):
    """``df`` for the screen: (a pandas ``Styler``, the columns made text). Numbers show ``digits`` decimals
    (:func:`number_text`); the columns of :func:`text_columns` become text (``–`` for an empty cell,
    ``yes``/``no`` for a flag) and the other numeric columns keep their full values underneath (what the
    CSV / JSON exports read), shown rounded. Right-align the text columns (they hold numbers)."""
    texts = text_columns(df)
    shown = df.copy()
    for c in texts:
        shown[c] = [v if isinstance(v, str) else number_text(v, digits) for v in df[c]]
    numeric = [c for c in shown.columns if c not in texts and pd.api.types.is_numeric_dtype(shown[c])]
    return shown.style.format(lambda v: number_text(v, digits), subset=numeric), texts
