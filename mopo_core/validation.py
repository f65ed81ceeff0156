"""Input checks shared by the engine and the synthetic suite.

Every check raises ``ValueError`` whose message names the argument (and the index of the
offending entry) so that a user sees what to fix. Nothing is clipped or repaired silently:
complex input is refused, not cut to its real part.

Array sizes are capped at :data:`MAX_ARRAY_BYTES` before anything of that size is allocated
(:func:`check_array_bytes`): a ``.npy`` header is checked against the limit and against the
bytes the file actually holds, and the synthetic structures check ``N``, ``M`` and ``K``.
"""
from __future__ import annotations

import io
import json
import math
import operator
import os
import tokenize

import numpy as np

#: Absolute tolerance for ``P + P^T = 1`` and for distributions summing to one.
ATOL = 1e-8
#: The largest array (in bytes) a file or a size argument may ask for: 1 GiB.
MAX_ARRAY_BYTES = 2**30
#: Bytes a preference file may hold beyond :data:`MAX_ARRAY_BYTES` (a ``.npy`` header).
_NPY_HEADER_ROOM = 2**16
#: ``.npy`` dtype kinds read as numbers: bool, signed and unsigned integers, floats.
_REAL_KINDS = "biuf"


def as_finite_array(value, name: str) -> np.ndarray:
    """``value`` as a float64 array; ``ValueError`` naming ``name`` for anything that is not
    an array of finite real numbers (complex values, text that is not a number, ragged nesting,
    NaN, infinity)."""
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name}: cannot be read as an array of real numbers ({exc})") from None
    if raw.dtype.kind == "c":
        raise ValueError(f"{name}: complex values (dtype {raw.dtype}) are not accepted; pass real numbers")
    try:
        arr = raw.astype(np.float64, copy=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name}: cannot be read as an array of real numbers ({exc})") from None
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


def format_bytes(size: int) -> str:
    """``size`` in bytes for a message: ``"149 GiB"``, ``"5 MiB"``, ``"12 KiB"``, ``"100 bytes"``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def check_array_bytes(shape, itemsize: int, name: str) -> None:
    """``ValueError`` naming ``name`` when an array of ``shape`` and ``itemsize`` bytes per
    entry would exceed :data:`MAX_ARRAY_BYTES`; call it before allocating."""
    size = math.prod(int(d) for d in shape) * int(itemsize)
    if size > MAX_ARRAY_BYTES:
        raise ValueError(f"{name}: shape {tuple(int(d) for d in shape)} of {itemsize}-byte numbers needs "
                         f"{format_bytes(size)}, over the {format_bytes(MAX_ARRAY_BYTES)} limit")


def read_preference_array(name: str, data: bytes) -> np.ndarray:
    """Parse the bytes of a ``.npy`` or ``.json`` preference file (an array, or
    ``{"preferences": array}``) named ``name``; not validated (see :func:`check_preferences`).

    A ``.npy`` header is checked before its array is allocated: real numbers only, at most
    :data:`MAX_ARRAY_BYTES`, and exactly the bytes the header declares. JSON must be UTF-8.
    Errors are ValueErrors whose message starts with ``name``."""
    if name.endswith(".npy"):
        return _read_npy(name, data)
    if name.endswith(".json"):
        doc = _load_json(name, data)
        try:
            return np.asarray(doc["preferences"] if isinstance(doc, dict) else doc, dtype=float)
        except KeyError:
            raise ValueError(f"{name}: missing key 'preferences' "
                             "(expected an array or {\"preferences\": array})") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{name}: cannot be read as an array of real numbers ({exc})") from None
    raise ValueError(f"{name}: expected a .npy or .json file")


def read_preference_file(path) -> np.ndarray:
    """:func:`read_preference_array` of the file at ``path``, its size checked before it is
    read (at most :data:`MAX_ARRAY_BYTES` plus room for a ``.npy`` header); ``ValueError``
    starting with the path for a file that is missing, unreadable or too big."""
    name = str(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_ARRAY_BYTES + _NPY_HEADER_ROOM:
                raise ValueError(f"{name}: {format_bytes(size)}, over the {format_bytes(MAX_ARRAY_BYTES)} limit "
                                 "for a preference file")
            data = handle.read()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read the file ({exc.strerror or exc})") from None
    return read_preference_array(name, data)


def _load_json(name: str, data: bytes):
    """The JSON document in ``data`` (UTF-8, an optional byte-order mark); ``ValueError``
    starting with ``name`` for invalid UTF-8, invalid JSON or nesting too deep to parse."""
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise ValueError(f"{name}: invalid JSON (nested too deeply to read)") from None
    except ValueError as exc:
        raise ValueError(f"{name}: invalid JSON ({exc})") from None


#: The first bytes of every ``.npy`` file (``numpy.lib.format.MAGIC_PREFIX``).
_NPY_MAGIC = b"\x93NUMPY"


def _read_npy(name: str, data: bytes) -> np.ndarray:
    """A ``.npy`` file's array, its header checked against the limit and the file's size first."""
    if not data:
        raise ValueError(f"{name}: empty file (not a .npy array)")
    if not data.startswith(_NPY_MAGIC):  # e.g. a text, pickle or .npz file renamed .npy: never unpickled
        raise ValueError(f"{name}: not a NumPy .npy array file (it does not start with the .npy signature; save "
                         "the array with numpy.save, or upload a .json list)")
    handle = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]} (1.0 or 2.0 are read)")
    except (ValueError, EOFError, SyntaxError, TypeError, RecursionError, tokenize.TokenError) as exc:
        raise ValueError(f"{name}: not a readable .npy file ({exc})") from None
    if dtype.kind not in _REAL_KINDS or dtype.hasobject:
        raise ValueError(f"{name}: dtype {dtype} is not a real number type (bool, integer or float)")
    check_array_bytes(shape, dtype.itemsize, name)
    declared, present = math.prod(shape) * dtype.itemsize, len(data) - handle.tell()
    if present != declared:
        raise ValueError(f"{name}: the header declares shape {shape} of {dtype} ({declared} bytes) but the file "
                         f"holds {present} bytes of data{' (truncated)' if present < declared else ''}")
    handle.seek(0)
    try:
        return np.load(handle, allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise ValueError(f"{name}: not a readable .npy file ({exc})") from None


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
