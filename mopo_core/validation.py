"""Input checks shared by the engine and the synthetic suite.

Every check raises ``ValueError`` whose message names the argument (and the index of the
offending entry) so that a user sees what to fix. Nothing is clipped or repaired silently.
"""
from __future__ import annotations

import io
import json
import operator

import numpy as np

#: Absolute tolerance for ``P + P^T = 1`` and for distributions summing to one.
ATOL = 1e-8


def as_finite_array(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot be read as an array of numbers ({exc})") from None
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: non-finite value {arr[idx]} at index {idx}")
    return arr


def check_preferences(preferences, name: str = "preferences") -> np.ndarray:
    """Validate pairwise preference matrices and return them as ``(K, M, N, N)``.

    ``preferences[k, m, i, j]`` is ``P_k(y_i > y_j | x_m)``. A ``(K, N, N)`` input is one
    prompt and comes back with ``M = 1``. Requires ``K >= 2``, values in [0, 1] and
    ``P + P^T = 1`` (so the diagonal is 0.5).
    """
    arr = as_finite_array(preferences, name)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"{name}: expected shape (K, N, N) or (K, M, N, N), got {arr.shape}")
    k, m, n, n2 = arr.shape
    if n != n2:
        raise ValueError(f"{name}: last two axes must be square (N, N), got {(n, n2)}")
    if k < 2:
        raise ValueError(f"{name}: need K >= 2 objectives (a primary and a secondary), got K = {k}")
    if n < 2:
        raise ValueError(f"{name}: need at least 2 responses per prompt, got N = {n}")
    if m < 1:
        raise ValueError(f"{name}: need at least one prompt, got M = 0")
    for mm in range(m):  # one prompt at a time keeps temporaries small at N = 1000
        _check_prompt_matrices(arr[:, mm], mm, name)
    return arr


def _check_prompt_matrices(block: np.ndarray, prompt: int, name: str) -> None:
    """Range and ``P + P^T = 1`` checks for one prompt's (K, N, N) matrices."""
    out_of_range = (block < 0.0) | (block > 1.0)
    if out_of_range.any():
        kk, i, j = (int(v) for v in np.argwhere(out_of_range)[0])
        raise ValueError(
            f"{name}: value {block[kk, i, j]} outside [0, 1] at (objective, prompt, i, j) = {(kk, prompt, i, j)}"
        )
    skew = np.abs(block + np.swapaxes(block, -1, -2) - 1.0) > 1e-6
    if skew.any():
        kk, i, j = (int(v) for v in np.argwhere(skew)[0])
        raise ValueError(
            f"{name}: P + P^T != 1 at (objective, prompt, i, j) = {(kk, prompt, i, j)}: "
            f"P[i,j] = {block[kk, i, j]:.6g}, P[j,i] = {block[kk, j, i]:.6g}"
        )


def read_preference_array(name: str, data: bytes) -> np.ndarray:
    """Parse the bytes of a ``.npy`` or ``.json`` preference file (an array, or
    ``{"preferences": array}``) named ``name``; not validated (see :func:`check_preferences`).

    Errors are ValueErrors whose message starts with ``name``."""
    try:
        if name.endswith(".npy"):
            return np.load(io.BytesIO(data), allow_pickle=False)
        if name.endswith(".json"):
            doc = json.loads(data.decode("utf-8"))
            return np.asarray(doc["preferences"] if isinstance(doc, dict) else doc, dtype=float)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        reason = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ValueError(f"{name}: {reason}") from None
    raise ValueError(f"{name}: expected a .npy or .json file")


def check_distribution(value, n_prompts: int, n_responses: int, name: str, row_label: str = "prompt") -> np.ndarray:
    """Validate a per-prompt distribution over responses; return ``(M, N)``.

    ``None`` gives the uniform distribution; an ``(N,)`` vector is shared by all prompts.
    Entries must be non-negative and each row must sum to 1 (within 1e-8); ``row_label``
    names the rows in error messages.
    """
    if value is None:
        return np.full((n_prompts, n_responses), 1.0 / n_responses)
    arr = as_finite_array(value, name)
    if arr.ndim == 1:
        arr = np.broadcast_to(arr, (n_prompts, arr.shape[0])).copy()
    if arr.shape != (n_prompts, n_responses):
        raise ValueError(
            f"{name}: expected shape ({n_responses},) or ({n_prompts}, {n_responses}), "
            f"got {np.shape(value)}"
        )
    if (arr < 0).any():
        idx = tuple(int(i) for i in np.argwhere(arr < 0)[0])
        raise ValueError(f"{name}: negative value {arr[idx]} at ({row_label}, entry) = {idx}")
    sums = arr.sum(axis=1)
    bad = np.abs(sums - 1.0) > ATOL
    if bad.any():
        m = int(np.argmax(bad))
        raise ValueError(f"{name}: row for {row_label} {m} sums to {sums[m]:.10g}, not 1")
    return arr


def check_prompt_weights(value, n_prompts: int, name: str = "prompt_weights") -> np.ndarray:
    """Validate prompt weights ``(M,)``; ``None`` gives equal weights. Must sum to 1."""
    return check_distribution(
        None if value is None else np.asarray(value, dtype=float)[None, :], 1, n_prompts, name
    )[0]


def check_thresholds(value, n_constraints: int, name: str = "thresholds") -> np.ndarray:
    """Validate a threshold vector ``(K-1,)`` (a scalar is accepted when ``K-1 = 1``)."""
    arr = np.atleast_1d(as_finite_array(value, name))
    if arr.shape != (n_constraints,):
        raise ValueError(
            f"{name}: expected {n_constraints} value(s), one per secondary objective, got shape {arr.shape}"
        )
    return arr


def check_positive(value, name: str) -> float:
    """A finite scalar ``> 0`` (for example the KL strength ``tau``)."""
    x = float(as_finite_array(value, name))
    if x <= 0:
        raise ValueError(f"{name}: must be > 0, got {x}")
    return x


def check_nonnegative(value, name: str) -> float:
    """A finite scalar ``>= 0`` (for example the robustness radius ``eps``)."""
    x = float(as_finite_array(value, name))
    if x < 0:
        raise ValueError(f"{name}: must be >= 0, got {x}")
    return x


def check_int(value, name: str, minimum: int) -> int:
    """An integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {number}")
    return number
