"""Smoothing of logged training curves, as TensorBoard and W&B smooth theirs: used by Compare's overlaid
curves and the Train page's live panels (plain functions on arrays; no Streamlit)."""
from __future__ import annotations

import numpy as np


def ema(values, smoothing: float) -> np.ndarray:
    """Exponential moving average of a series: ``s_t = smoothing · s_{t-1} + (1 - smoothing) · x_t``,
    started at the first value and debiased as TensorBoard does; NaN entries are skipped (they
    stay NaN). ``smoothing`` in [0, 1) (0: the raw series); ``ValueError`` naming it otherwise."""
    if not 0.0 <= float(smoothing) < 1.0:
        raise ValueError(f"smoothing: must lie in [0, 1), got {smoothing}")
    x = np.asarray(values, dtype=float)
    out = np.full_like(x, np.nan)
    level, weight = 0.0, 0.0
    for i, v in enumerate(x):
        if np.isnan(v):
            continue
        level = smoothing * level + (1.0 - smoothing) * v
        weight = smoothing * weight + (1.0 - smoothing)
        out[i] = level / weight
    return out
