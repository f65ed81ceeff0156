"""Finite comparison datasets drawn from a structure, and the estimates made from them.

Shapes: ``K`` objectives, ``M`` prompts, ``N`` responses, ``T`` comparisons.

Win counts count both orderings of a comparison: a comparison ``(a, b)`` with label ``l``
on objective k adds ``l`` to ``W[k, m, a, b]`` and ``1 - l`` to ``W[k, m, b, a]``, so every
comparison adds exactly 1 to ``W[k, m].sum()``. A self-comparison ``(i, i)`` is a tie: it
adds 0.5 for each ordering, 1 in all, to ``W[k, m, i, i]`` whatever its label (the labels
sum to 1 either way). ``exact_win_counts`` is the expectation of this for one comparison
per prompt, ``2 mu_i mu_j P_k[i, j]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mopo_core.validation import check_int, check_nonnegative, check_preferences
from synthetic.structures import Structure


@dataclass(frozen=True, eq=False)
class ComparisonData:
    """``T`` pairwise comparisons with one label per objective (validated, read-only).

    ``prompt``, ``first``, ``second``: ``(T,)`` integer indices; ``labels``: ``(T, K)``,
    1.0 when ``first`` is preferred on objective k, 0.0 otherwise (soft labels in [0, 1]
    are allowed).
    """

    prompt: np.ndarray
    first: np.ndarray
    second: np.ndarray
    labels: np.ndarray
    n_prompts: int
    n_responses: int

    def __post_init__(self):
        m = check_int(self.n_prompts, "n_prompts", 1)
        n = check_int(self.n_responses, "n_responses", 2)
        labels = np.array(self.labels, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[1] < 1:
            raise ValueError(f"labels: expected shape (T, K) with K >= 1, got {labels.shape}")
        if not np.all((labels >= 0.0) & (labels <= 1.0)):
            raise ValueError("labels: every label must be a number in [0, 1]")
        arrays = {"labels": labels}
        for field, size in (("prompt", m), ("first", n), ("second", n)):
            arrays[field] = _check_indices(getattr(self, field), field, size, labels.shape[0])
        for field, value in arrays.items():
            value.setflags(write=False)
            object.__setattr__(self, field, value)
        object.__setattr__(self, "n_prompts", m)
        object.__setattr__(self, "n_responses", n)

    @property
    def n_comparisons(self) -> int:
        """``T``."""
        return self.labels.shape[0]

    @property
    def n_objectives(self) -> int:
        """``K``."""
        return self.labels.shape[1]

    def win_counts(self) -> np.ndarray:
        """``(K, M, N, N)``: ``W[k, m, i, j]``, total (soft) wins of i over j on objective
        k, both orderings counted (see the module docstring)."""
        m, n = self.n_prompts, self.n_responses
        forward = (self.prompt * n + self.first) * n + self.second
        backward = (self.prompt * n + self.second) * n + self.first
        return _outcome_sums(forward, backward, self.labels, m * n * n).reshape(-1, m, n, n)


def _outcome_sums(
    winner: np.ndarray, loser: np.ndarray, labels: np.ndarray, size: int
) -> np.ndarray:
    """``(K, size)``: for each objective, ``labels[:, k]`` summed at the bins ``winner``
    plus ``1 - labels[:, k]`` summed at the bins ``loser`` (``(T,)`` bin indices)."""
    return np.stack(
        [
            np.bincount(winner, weights=label, minlength=size)
            + np.bincount(loser, weights=1.0 - label, minlength=size)
            for label in labels.T
        ]
    ).reshape(labels.shape[1], size)


def _check_indices(value, name: str, size: int, length: int) -> np.ndarray:
    """A ``(length,)`` integer array with entries in ``[0, size)``."""
    arr = np.array(value)
    if arr.shape != (length,):
        raise ValueError(
            f"{name}: expected shape ({length},), one entry per comparison, got {arr.shape}"
        )
    if length and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected integer indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if length and (arr.min() < 0 or arr.max() >= size):
        raise ValueError(
            f"{name}: indices must lie in [0, {size}), got range [{arr.min()}, {arr.max()}]"
        )
    return arr


def _check_structure(structure) -> Structure:
    if not isinstance(structure, Structure):
        raise ValueError(
            "structure: expected a Structure (see make_structure), "
            f"got {type(structure).__name__}"
        )
    return structure


def sample_comparisons(structure: Structure, n_per_prompt: int, seed: int = 0) -> ComparisonData:
    """Draw ``n_per_prompt`` comparisons for each prompt.

    Pairs ``(first, second)`` are independent draws from ``behaviour[m] x behaviour[m]``
    (self-pairs included); each objective's label is an independent Bernoulli with the
    true ``P_k[m, first, second]``. Comparisons are ordered by prompt. ``T = M * n_per_prompt``.
    """
    structure = _check_structure(structure)
    n = check_int(n_per_prompt, "n_per_prompt", 1)
    rng = np.random.default_rng(check_int(seed, "seed", 0))
    m_count, n_resp = structure.n_prompts, structure.n_responses
    pairs = np.stack(
        [rng.choice(n_resp, size=(n, 2), p=structure.behaviour[m]) for m in range(m_count)]
    ).reshape(-1, 2)
    prompt = np.repeat(np.arange(m_count), n)
    first, second = pairs[:, 0], pairs[:, 1]
    truth = structure.preferences[:, prompt, first, second].T
    labels = (rng.random(truth.shape) < truth).astype(np.float64)
    return ComparisonData(prompt, first, second, labels, m_count, n_resp)


def exact_win_counts(structure: Structure) -> np.ndarray:
    """``(K, M, N, N)``: the expected ``win_counts()`` of one comparison per prompt,
    ``W[k, m, i, j] = 2 mu_i mu_j P_k[m, i, j]`` (both orderings), so ``W[k, m].sum() = 1``.
    The ``n = infinity`` analogue of sampled counts."""
    structure = _check_structure(structure)
    mu = structure.behaviour
    return 2.0 * mu[None, :, :, None] * mu[None, :, None, :] * structure.preferences


def _check_win_counts(value) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 4 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"win_counts: expected shape (K, M, N, N), got {arr.shape}")
    if not np.all(np.isfinite(arr) & (arr >= 0.0)):
        raise ValueError("win_counts: every count must be finite and >= 0")
    return arr


def estimate_preferences(win_counts, prior: float = 1.0) -> np.ndarray:
    """``(K, M, N, N)`` preference estimate ``(W + prior/2) / (W + W^T + prior)``.

    ``prior`` (>= 0) is a symmetric pseudo-count: half a win for each side. With
    ``prior = 0`` a pair never compared gets 0.5. The diagonal is exactly 0.5 and
    ``P + P^T = 1``; the result passes ``check_preferences``.
    """
    wins = _check_win_counts(win_counts)
    prior = check_nonnegative(prior, "prior")
    total = wins + np.swapaxes(wins, -1, -2) + prior
    estimate = np.divide(wins + prior / 2.0, total, out=np.full_like(wins, 0.5), where=total > 0)
    n = wins.shape[-1]
    estimate[..., np.arange(n), np.arange(n)] = 0.5
    return check_preferences(estimate, "estimated preferences")


def empirical_win_rates(data: ComparisonData) -> tuple[np.ndarray, np.ndarray]:
    """MOPO.md's Monte-Carlo win-rates: ``(win_rates (K, M, N), counts (M, N))``.

    ``win_rates[k, m, i]`` is the mean outcome of response i over the comparisons it took
    part in (as ``first``: its label; as ``second``: 1 - label); it estimates
    ``w_k = P_k mu``. ``counts[m, i]`` is the number of such appearances (a self-pair
    counts twice, outcomes l and 1 - l). A response never seen gets win-rate 0.5 and
    count 0.
    """
    if not isinstance(data, ComparisonData):
        raise ValueError(f"data: expected ComparisonData, got {type(data).__name__}")
    m, n = data.n_prompts, data.n_responses
    as_first = data.prompt * n + data.first
    as_second = data.prompt * n + data.second
    counts = np.bincount(as_first, minlength=m * n) + np.bincount(as_second, minlength=m * n)
    wins = _outcome_sums(as_first, as_second, data.labels, m * n)
    rates = np.divide(wins, counts, out=np.full_like(wins, 0.5), where=counts > 0)
    return rates.reshape(data.n_objectives, m, n), counts.reshape(m, n)
