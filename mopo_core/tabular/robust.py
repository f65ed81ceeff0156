"""The robust (KL-ball) lower bound of MOPO.md section 4 and its dual variable chi.

For a per-prompt score ``Z[m, y] = rho(y|x_m) * q(x_m, y)`` (importance ratio times a
secondary win-rate) the bound is

    LB = min_{Q : E_x KL(Q(.|x) || pi_ref(.|x)) <= eps}  E_x E_Q[Z]
       = max_{chi > 0}  -chi * E_x log E_{pi_ref} exp(-Z / chi) - chi * eps .

The ball is over responses within each prompt with the prompt marginal fixed, so one chi
serves a whole constraint (as in the paper: one chi per constraint). The maximiser satisfies
``E_x KL(Q_chi || pi_ref) = eps`` with ``Q_chi ∝ pi_ref * exp(-Z / chi)``; when eps exceeds
the largest reachable KL the worst case puts all mass on each prompt's smallest score and
chi = 0.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import brentq

from mopo_core.validation import check_nonnegative


def _worst_case(z: np.ndarray, log_ref: np.ndarray, chi: float) -> tuple[np.ndarray, np.ndarray]:
    """Worst-case tilt ``Q_chi`` (M, N) and its per-prompt KL to the reference (M,)."""
    logits = log_ref - z / chi
    mx = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - mx)
    zsum = e.sum(axis=1, keepdims=True)
    q = e / zsum
    log_q = logits - mx - np.log(zsum)
    with np.errstate(invalid="ignore"):
        kl = np.where(q > 0, q * (log_q - log_ref), 0.0).sum(axis=1)
    return q, np.maximum(kl, 0.0)


def _min_mass_kl(z: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """KL of the limit chi -> 0: reference mass restricted to each prompt's minimal scores (M,)."""
    support = ref > 0
    zmin = np.where(support, z, np.inf).min(axis=1, keepdims=True)
    scale = np.maximum(np.abs(zmin), 1.0)
    at_min = support & (z <= zmin + 1e-12 * scale)
    return -np.log((ref * at_min).sum(axis=1))


def robust_lower_bound(
    z: np.ndarray, reference: np.ndarray, prompt_weights: np.ndarray, eps: float
) -> tuple[float, float]:
    """Return ``(LB, chi)`` for scores ``z`` (M, N), reference (M, N), weights (M,), radius eps.

    ``eps = 0`` gives ``LB = E_x E_ref[z]`` and ``chi = inf``.
    """
    eps = check_nonnegative(eps, "eps")
    nu = prompt_weights
    if eps == 0.0:
        return float(nu @ (reference * z).sum(axis=1)), float("inf")
    with np.errstate(divide="ignore"):
        log_ref = np.log(reference)
    kl_max = float(nu @ _min_mass_kl(z, reference))
    if eps >= kl_max:
        zmin = np.where(reference > 0, z, np.inf).min(axis=1)
        return float(nu @ zmin), 0.0

    def excess_kl(log_chi: float) -> float:
        _, kl = _worst_case(z, log_ref, float(np.exp(log_chi)))
        return float(nu @ kl) - eps

    # KL(Q_chi) falls from kl_max (chi -> 0) to 0 (chi -> inf); bracket chi around the scores' spread.
    spread = max(float(np.ptp(z[reference > 0])), 1e-300)
    lo, hi = np.log(spread) - 40.0, np.log(spread) + 40.0
    if excess_kl(hi) >= 0:
        log_chi = hi
    elif excess_kl(lo) <= 0:
        log_chi = lo
    else:
        log_chi = brentq(excess_kl, lo, hi, xtol=1e-12, rtol=1e-12)
    chi = float(np.exp(log_chi))
    q, _ = _worst_case(z, log_ref, chi)
    return float(nu @ (q * z).sum(axis=1)), chi


def chi_gradient(z: np.ndarray, reference: np.ndarray, prompt_weights: np.ndarray, eps: float, chi: float) -> float:
    """d/dchi of the dual ``-chi E log E_ref exp(-z/chi) - chi eps``, which is ``E_x KL(Q_chi||ref) - eps``.

    Used by Algorithm 1's projected-gradient ascent on chi.
    """
    with np.errstate(divide="ignore"):
        log_ref = np.log(reference)
    _, kl = _worst_case(z, log_ref, chi)
    return float(prompt_weights @ kl) - eps


def chi_dual_value(z: np.ndarray, reference: np.ndarray, prompt_weights: np.ndarray, eps: float, chi: float) -> float:
    """The dual objective at a given chi > 0 (a lower bound on LB for every chi)."""
    with np.errstate(divide="ignore"):
        log_ref = np.log(reference)
    logits = log_ref - z / chi
    mx = logits.max(axis=1)
    lse = mx + np.log(np.exp(logits - mx[:, None]).sum(axis=1))
    return float(-chi * (prompt_weights @ lse) - chi * eps)
