"""Pure-torch building blocks of MOPO's language-model trainer (MOPO.md sections 3-5).

No training loop and no data loading: log-probs of responses under a causal LM, the
normalised closed-form MOPO weights of a batch, the dual updates (lambda, and chi for the
robust bound), and the losses (weighted behaviour cloning, DPO/MODPO, IPO, soft-label DPO, SFT).

Conventions (shapes):
    B                       rows of a batch, one (prompt, response) sequence per row
    input_ids, masks (B, T) left- or right-padded; ``response_mask`` marks response tokens
    group (B,)              integer prompt id of each row (any ints, not necessarily 0..G-1)
    w (K, B)                per-row win-rate estimates in [0, 1]; objective 0 is the primary
    w_sec (J, B)            secondary win-rates, J = K - 1
    lam (J,), chi (J,)      constraint multipliers and robust-bound duals
    log_importance (B,)     log pi_ref(y|x) - log pi_data(y|x): the (possibly lagged)
                            reference against the distribution that produced the rows;
                            None when the rows were drawn from pi_ref itself
    logp, ref (B,) or (P,)  summed response log-probs under the policy / the reference

Weights. For prompt group g with rows i, the weight of row i is

    weight_i = n_g * r_i exp(s_i / tau) / sum_{j in g} r_j exp(s_j / tau),
    s = w_0 + lam . w_sec,   r = exp(log_importance)  (1 without importance),

the self-normalised estimate of pi_lam / pi_data, so a prompt's weights average to exactly 1
over its rows (the empirical data distribution). The paper's unnormalised exp(s/tau - 1) is
NOT used: it makes the dual wrong (MOPO.md section 3). Everything is computed in log-space
in float64, so tau = 0.08 with large multipliers cannot overflow.

Dual variables and weights are bookkeeping: they carry no gradient.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .robust import chi_dual_value, chi_gradient, robust_lower_bound

# --------------------------------------------------------------------------- log-probs


def _chunk_token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[labels] in at least float32: (B, L, V), (B, L) -> (B, L)."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    picked = torch.gather(x, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(x, dim=-1)


def token_logprobs(logits: Tensor, labels: Tensor, chunk_size: int | None = None) -> Tensor:
    """Log-probability of each label under its logits: (B, L, V), (B, L) -> (B, L), >= float32.

    ``chunk_size=None`` upcasts the whole (B, L, V) tensor at once. With ``chunk_size = c``
    the log-softmax runs over c positions at a time, so at most a (B, c, V) float32 copy
    exists; under autograd each chunk is checkpointed (recomputed in backward), so the
    upcast copies are not kept for the backward pass either. Results agree with the
    unchunked path to rounding.
    """
    if chunk_size is None or chunk_size >= labels.shape[1]:
        return _chunk_token_logprobs(logits, labels)
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be >= 1 or None, got {chunk_size}")
    keep_graph = torch.is_grad_enabled() and logits.requires_grad
    pieces = []
    for start in range(0, labels.shape[1], chunk_size):
        part = (logits[:, start:start + chunk_size], labels[:, start:start + chunk_size])
        if keep_graph:
            pieces.append(checkpoint(_chunk_token_logprobs, *part, use_reentrant=False))
        else:
            pieces.append(_chunk_token_logprobs(*part))
    return torch.cat(pieces, dim=1)


def response_logprobs(
    logits: Tensor, input_ids: Tensor, response_mask: Tensor, chunk_size: int | None = None
) -> Tensor:
    """Sum of the response tokens' log-probs from a causal LM's logits: (B, T, V) -> (B,).

    ``logits[:, t]`` predicts ``input_ids[:, t + 1]``; token t counts iff
    ``response_mask[:, t]`` is set. A response token at position 0 has no prediction and is
    an error (every response needs at least one prompt or BOS token before it).
    """
    mask = response_mask.bool()
    if mask[:, 0].any():
        raise ValueError("response_mask: position 0 cannot be a response token (nothing predicts it)")
    per_token = token_logprobs(logits[:, :-1], input_ids[:, 1:], chunk_size)
    return torch.where(mask[:, 1:], per_token, torch.zeros_like(per_token)).sum(dim=-1)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only (B, T): left padding then starts each row at 0."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def sequence_logprobs(
    model, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, chunk_size: int | None = None
) -> Tensor:
    """``log pi(y|x)`` per row (B,): the summed log-probs of the response tokens only.

    ``model`` is a causal LM called as ``model(input_ids=, attention_mask=, position_ids=)``
    that returns ``.logits`` (B, T, V) (Hugging Face convention). Position ids come from the
    attention mask, so left- and right-padded batches give the same values as unpadded
    sequences. Prompt and padding tokens are masked out (padding is also removed from
    ``response_mask``). ``chunk_size``: see :func:`token_logprobs`; the model still
    materialises its own logits in its own dtype.
    """
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    ).logits
    mask = response_mask.bool() & attention_mask.bool()
    return response_logprobs(logits, input_ids, mask, chunk_size)


# --------------------------------------------------------------------------- batch weights


def _as_float64(x, device=None) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64, device=device).detach()


def _group_index(group) -> tuple[Tensor, int]:
    """Map prompt ids (B,) to 0..G-1: returns (index (B,), G)."""
    _, index = torch.unique(torch.as_tensor(group), return_inverse=True)
    return index, int(index.max()) + 1


def _group_logsumexp(x: Tensor, index: Tensor, n_groups: int) -> Tensor:
    """Stable per-group log-sum-exp of x (B,) -> (G,); -inf for a group whose rows are all -inf."""
    peak = torch.full((n_groups,), -torch.inf, dtype=x.dtype, device=x.device)
    peak = peak.scatter_reduce(0, index, x, reduce="amax")
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add(0, index, torch.exp(x - peak[index]))
    return peak + torch.log(total)


def _group_softmax(x: Tensor, index: Tensor, n_groups: int) -> Tensor:
    """Softmax of x (B,) within each group; raises if a group has no finite entry."""
    lse = _group_logsumexp(x, index, n_groups)
    if not torch.isfinite(lse).all():
        raise ValueError("a prompt group has zero total weight (all its log-importances are -inf)")
    return torch.exp(x - lse[index])


def _group_sizes(index: Tensor, n_groups: int) -> Tensor:
    return torch.bincount(index, minlength=n_groups).to(torch.float64)


def effective_sample_size(weights, fraction: bool = False) -> float:
    """``(sum w)^2 / sum w^2`` of weights (B,); divided by B when ``fraction`` is set."""
    w = _as_float64(weights)
    ess = float(w.sum() ** 2 / (w**2).sum())
    return ess / w.numel() if fraction else ess


def mopo_weights(w, lam, tau: float, group, log_importance=None) -> tuple[Tensor, float]:
    """Normalised closed-form MOPO weights of a batch (MOPO.md sections 3 and 5).

    w (K, B) win-rates, lam (J,) = (K-1,) multipliers, tau > 0, group (B,) prompt ids,
    log_importance (B,) or None (see the module docstring; rows with -inf get weight 0).
    Returns ``(weights (B,) float64 detached, ess)``: weights are the per-prompt
    self-normalised ``r exp((w_0 + lam . w_sec) / tau)``, averaging to 1 over each prompt's
    rows; ``ess = (sum w)^2 / sum w^2`` in rows (B for equal weights).
    """
    if not tau > 0:
        raise ValueError(f"tau: must be > 0, got {tau}")
    w = _as_float64(w)
    lam = _as_float64(lam, w.device).reshape(-1)
    if w.ndim != 2 or lam.numel() != w.shape[0] - 1:
        raise ValueError(f"w must be (K, B) and lam (K-1,); got {tuple(w.shape)} and {tuple(lam.shape)}")
    logits = (w[0] + lam @ w[1:]) / tau
    if log_importance is not None:
        logits = logits + _as_float64(log_importance, w.device)
    index, n_groups = _group_index(group)
    index = index.to(w.device)
    weights = _group_softmax(logits, index, n_groups) * _group_sizes(index, n_groups)[index]
    return weights, effective_sample_size(weights)


# --------------------------------------------------------------------------- dual updates


def constraint_estimates(w_sec, weights, group) -> Tensor:
    """Batch estimate ``V_sec_hat(rho_lam)`` (J,) of the secondaries' values under pi_lam.

    w_sec (J, B), weights (B,) from :func:`mopo_weights`, group (B,). Estimator: for each
    prompt the weighted mean ``sum_i weight_i w_sec_i / sum_i weight_i`` over its rows (a
    self-normalised importance-sampling estimate of ``E_{pi_lam(.|x)} w_sec``), then the plain
    mean over the batch's prompts. Since weights average to 1 per prompt this equals the
    per-prompt mean of ``weight * w_sec``. It is consistent but biased at O(1/n) per prompt,
    and a prompt with a single row contributes its raw win-rate whatever lam is: the
    constraint only feels lam through prompts with several responses.
    """
    w_sec = _as_float64(w_sec)
    weights = _as_float64(weights, w_sec.device)
    index, n_groups = _group_index(group)
    index = index.to(w_sec.device)
    numerator = torch.zeros(w_sec.shape[0], n_groups, dtype=torch.float64, device=w_sec.device)
    numerator = numerator.index_add(1, index, w_sec * weights)
    denominator = torch.zeros(n_groups, dtype=torch.float64, device=w_sec.device).index_add(0, index, weights)
    return (numerator / denominator).mean(dim=1)


def lambda_update(lam, constraint_estimates, thresholds, lr: float) -> Tensor:
    """Projected dual step ``[lam - lr (V_sec_hat - b)]_+`` (J,) (MOPO.md section 5)."""
    lam = _as_float64(lam)
    step = _as_float64(constraint_estimates, lam.device) - _as_float64(thresholds, lam.device)
    return torch.clamp(lam - lr * step, min=0.0)


def _robust_tables(w_sec, weights, group, log_importance):
    """Lay a batch out as robust.py's rectangular arrays, padding ragged prompts with zero mass.

    Returns z (J, G, N) = rho * w_sec with rho = pi_lam / pi_ref, reference (G, N) = each
    row's mass under pi_ref within its prompt (uniform, or proportional to the importance
    factor), and prompt weights (G,) uniform.
    """
    w_sec = _as_float64(w_sec).cpu()
    weights = _as_float64(weights).cpu()
    index, n_groups = _group_index(group)
    index = index.cpu()
    sizes = _group_sizes(index, n_groups)
    if log_importance is None:
        mass = 1.0 / sizes[index]
    else:
        mass = _group_softmax(_as_float64(log_importance).cpu(), index, n_groups)
    rho = torch.where(mass > 0, weights / (sizes[index] * mass), torch.zeros_like(mass))
    order = torch.argsort(index, stable=True)
    starts = torch.cumsum(sizes, 0).long() - sizes.long()
    slot = torch.empty_like(index)
    slot[order] = torch.arange(index.numel()) - starts[index[order]]
    reference = torch.zeros(n_groups, int(sizes.max()), dtype=torch.float64)
    reference[index, slot] = mass
    z = torch.zeros(w_sec.shape[0], *reference.shape, dtype=torch.float64)
    z[:, index, slot] = rho * w_sec
    return z.numpy(), reference.numpy(), np.full(n_groups, 1.0 / n_groups)


def robust_lower_bounds(w_sec, weights, group, eps: float, log_importance=None) -> tuple[Tensor, Tensor]:
    """Exact batch robust bounds ``LB_j(rho)`` (J,) and their optimal chi (J,) (MOPO.md section 4).

    The KL ball (radius eps) ranges over each prompt's rows with the reference putting the
    rows' pi_ref mass on them (uniform without importance), prompts weighted equally;
    ``eps = 0`` gives :func:`constraint_estimates` and chi = inf. For monitoring and checks;
    Algorithm 1 itself uses :func:`chi_update` and :func:`robust_constraint_estimates`.
    """
    z, reference, nu = _robust_tables(w_sec, weights, group, log_importance)
    pairs = [robust_lower_bound(zj, reference, nu, eps) for zj in z]
    return _as_float64([p[0] for p in pairs]), _as_float64([p[1] for p in pairs])


def chi_update(chi, w_sec, weights, group, eps: float, lr: float, log_importance=None,
               min_chi: float = 1e-8) -> Tensor:
    """One projected ascent step on the robust duals (J,): ``chi <- max(chi + lr dD/dchi, min_chi)``.

    ``D(chi) = -chi E_x log E_ref exp(-rho w_sec / chi) - chi eps`` is the dual of the robust
    bound, maximised over chi > 0; ``dD/dchi = E_x KL(Q_chi || ref) - eps``. Batch layout as in
    :func:`robust_lower_bounds`. ``min_chi`` keeps chi strictly positive.
    """
    z, reference, nu = _robust_tables(w_sec, weights, group, log_importance)
    chi = _as_float64(chi).cpu()
    grads = _as_float64([chi_gradient(zj, reference, nu, eps, float(c)) for zj, c in zip(z, chi)])
    return torch.clamp(chi + lr * grads, min=min_chi)


def robust_constraint_estimates(chi, w_sec, weights, group, eps: float, log_importance=None) -> Tensor:
    """The robust dual ``D(chi)`` (J,) at the current chi: a lower bound on ``LB_j`` for every
    chi > 0, and the constraint estimate Algorithm 1 feeds to :func:`lambda_update` when eps > 0."""
    z, reference, nu = _robust_tables(w_sec, weights, group, log_importance)
    chi = _as_float64(chi).cpu()
    return _as_float64([chi_dual_value(zj, reference, nu, eps, float(c)) for zj, c in zip(z, chi)])


# --------------------------------------------------------------------------- losses


def weighted_bc_loss(logp: Tensor, weights) -> Tensor:
    """Weighted behaviour cloning ``-mean_i w_i log pi(y_i|x_i)``: logp (B,), weights (B,) detached."""
    weights = torch.as_tensor(weights, device=logp.device).detach().to(logp.dtype)
    return -(weights * logp).mean()


def sft_loss(logp: Tensor, num_tokens=None) -> Tensor:
    """Supervised fine-tuning negative log-likelihood from summed response log-probs logp (B,).

    ``num_tokens=None``: mean over sequences. ``num_tokens`` (B,) response-token counts:
    mean over tokens, ``-sum logp / sum num_tokens``.
    """
    if num_tokens is None:
        return -logp.mean()
    return -logp.sum() / torch.as_tensor(num_tokens, device=logp.device).sum().to(logp.dtype)


def _log_ratio_gap(logp_chosen, logp_rejected, ref_chosen, ref_rejected) -> Tensor:
    """``h_c - h_r`` with ``h = log pi - log pi_ref`` (P,); reference log-probs carry no gradient."""
    return (logp_chosen - ref_chosen.detach()) - (logp_rejected - ref_rejected.detach())


def dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta: float, margin=None) -> Tensor:
    """DPO ``mean -log sigma(beta (h_c - h_r) - margin)`` over pairs (P,).

    ``margin`` (scalar or (P,), default 0) is MODPO's term: the weighted reward gap of the
    other objectives, computed by the caller.
    """
    z = beta * _log_ratio_gap(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    if margin is not None:
        z = z - torch.as_tensor(margin, dtype=z.dtype, device=z.device)
    return -F.logsigmoid(z).mean()


def ipo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta: float) -> Tensor:
    """IPO ``mean (h_c - h_r - 1/(2 beta))^2`` over pairs (P,); beta plays IPO's tau."""
    gap = _log_ratio_gap(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    return ((gap - 1.0 / (2.0 * beta)) ** 2).mean()


def weighted_dpo_loss(logp_a, logp_b, ref_a, ref_b, beta: float, labels, objective_weights=None) -> Tensor:
    """DPO with soft labels, both orderings: ``mean -[p log sigma(z) + (1 - p) log sigma(-z)]``.

    z = beta (h_a - h_b) over pairs (P,). labels: p = P(a beats b) (P,) in [0, 1], or (K, P)
    per-objective labels combined as ``p = sum_k c_k l_k`` with ``objective_weights`` c (K,)
    summing to 1 (the same as the c-weighted sum of the per-objective losses). p = 1 is
    :func:`dpo_loss` with a chosen; p = 0 with b chosen.
    """
    z = beta * _log_ratio_gap(logp_a, logp_b, ref_a, ref_b)
    p = torch.as_tensor(labels, dtype=z.dtype, device=z.device)
    if p.ndim == 2:
        if objective_weights is None:
            raise ValueError("labels (K, P) need objective_weights (K,)")
        c = torch.as_tensor(objective_weights, dtype=z.dtype, device=z.device)
        if not torch.isclose(c.sum(), torch.ones((), dtype=z.dtype, device=z.device)):
            raise ValueError(f"objective_weights: must sum to 1, got {float(c.sum())}")
        p = c @ p
    return -(p * F.logsigmoid(z) + (1.0 - p) * F.logsigmoid(-z)).mean()
