"""Pure-torch building blocks of MOPO's language-model trainer (MOPO.md sections 3-5).

No training loop and no data loading: log-probs of responses under a causal LM (and, beside
a reference, the exact per-token KL over the sampled positions), the
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

import functools
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mopo_core.tabular.robust import chi_dual_value, chi_gradient, robust_lower_bound

# --------------------------------------------------------------------------- log-probs

# Logit elements (positions x vocabulary) of one chunk in the fused path: 2**25 is 128 MiB in
# float32, about 680 positions of a 49k vocabulary.
FUSED_CHUNK_ELEMENTS = 2**25
# Config fields through which a causal LM rescales or caps its logits after the head; a model
# that sets one to anything but None or 1 takes the plain path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
COMPILE_ENV = "MOPO_COMPILE_LOGPROBS"
# Where log-probs are clamped inside a KL term: exp(-1e4) is 0 in every float type, so the
# value is unchanged and a ruled-out token's gradient stays finite.
_LOG_ZERO = -1e4


def _chunk_token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[labels] in at least float32: (..., V), (...) -> (...)."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    picked = torch.gather(x, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(x, dim=-1)


def _head_token_logprobs(hidden: Tensor, labels: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Log-probs of labels under a linear head: (N, H), (N,), (V, H), (V,) or None -> (N,), >= float32."""
    return _chunk_token_logprobs(F.linear(hidden, weight, bias), labels)


@functools.cache
def _compiled_head_token_logprobs():
    return torch.compile(_head_token_logprobs, dynamic=True)


def _map_chunks(fn, split: tuple[Tensor, ...], shared: tuple, dim: int, chunk_size: int) -> Tensor:
    """``fn(*pieces, *shared)`` over slices of ``chunk_size`` along ``dim`` of every ``split``
    tensor, concatenated along ``dim``. Under autograd each call is checkpointed: its
    intermediates (the logits) are recomputed in backward instead of kept, so at most one
    chunk's exist at a time. An empty ``dim`` still makes one (empty) call."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be >= 1 or None, got {chunk_size}")
    inputs = [t for t in (*split, *shared) if isinstance(t, Tensor)]
    keep_graph = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    size = split[0].shape[dim]
    pieces = []
    for start in range(0, max(size, 1), chunk_size):
        part = [t.narrow(dim, start, min(chunk_size, size - start)) for t in split]
        if keep_graph:
            pieces.append(checkpoint(fn, *part, *shared, use_reentrant=False))
        else:
            pieces.append(fn(*part, *shared))
    return torch.cat(pieces, dim=dim)


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
    return _map_chunks(_chunk_token_logprobs, (logits, labels), (), 1, chunk_size)


def _check_response_mask(mask: Tensor) -> None:
    if mask[:, 0].any():
        raise ValueError("response_mask: position 0 cannot be a response token (nothing predicts it)")


def response_logprobs(
    logits: Tensor, input_ids: Tensor, response_mask: Tensor, chunk_size: int | None = None
) -> Tensor:
    """Sum of the response tokens' log-probs from a causal LM's logits: (B, T, V) -> (B,).

    ``logits[:, t]`` predicts ``input_ids[:, t + 1]``; token t counts iff
    ``response_mask[:, t]`` is set. A response token at position 0 has no prediction and is
    an error (every response needs at least one prompt or BOS token before it).
    """
    mask = response_mask.bool()
    _check_response_mask(mask)
    per_token = token_logprobs(logits[:, :-1], input_ids[:, 1:], chunk_size)
    return torch.where(mask[:, 1:], per_token, torch.zeros_like(per_token)).sum(dim=-1)


def fused_response_logprobs(
    hidden: Tensor, head: torch.nn.Linear, input_ids: Tensor, response_mask: Tensor,
    chunk_size: int | None = None, compile: bool = False,
) -> Tensor:
    """:func:`response_logprobs` from the final hidden states (B, T, H) and the linear head
    (V, H), without ever forming the (B, T, V) logits: (B, T, H) -> (B,).

    Only the N positions that predict a response token are gathered, (N, H); the head and
    the float32 log-softmax then run over ``chunk_size`` of them at a time (default:
    ``FUSED_CHUNK_ELEMENTS // V``), each chunk checkpointed, so forward and backward hold
    one chunk's (chunk, V) logits at most. ``compile`` runs the chunk function through
    ``torch.compile`` (dynamic shapes).
    """
    mask = response_mask.bool()
    _check_response_mask(mask)
    rows, cols = mask[:, 1:].nonzero(as_tuple=True)  # position (row, col) predicts token col + 1
    labels = input_ids[rows, cols + 1]
    fn = _compiled_head_token_logprobs() if compile else _head_token_logprobs
    chunk = max(1, FUSED_CHUNK_ELEMENTS // head.out_features) if chunk_size is None else chunk_size
    per_token = _map_chunks(fn, (hidden[rows, cols], labels), (head.weight, head.bias), 0, chunk)
    return torch.zeros(mask.shape[0], dtype=per_token.dtype, device=per_token.device).index_add(0, rows, per_token)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only (B, T): left padding then starts each row at 0."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def lm_body_and_head(model) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """``(body, head)`` of a Hugging Face causal LM (peft-wrapped or not) whose logits are
    exactly ``head(body(...)[0])``, or None when that cannot be relied on.

    body: the base model (``model.base_model``; for peft, that of ``get_base_model()``), which
    returns the final, normalised hidden states (B, T, H); head: ``get_output_embeddings()``
    (V, H), tied or not. None for: no such parts, a head that is not a plain
    ``torch.nn.Linear`` (e.g. a LoRA-adapted or quantised head), a config that rescales or
    soft-caps the logits (``_LOGIT_TRANSFORMS``), peft prompt-learning adapters.
    """
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return None
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    body = getattr(inner, "base_model", None)
    if type(head) is not torch.nn.Linear or body is None or body is inner:
        return None
    config = getattr(inner, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    return body, head


def sequence_logprobs(
    model, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, chunk_size: int | None = None,
    *, fused: bool | None = None, compile: bool | None = None,
) -> Tensor:
    """``log pi(y|x)`` per row (B,): the summed log-probs of the response tokens only.

    Position ids come from the attention mask, so left- and right-padded batches give the
    same values as unpadded sequences. Prompt and padding tokens are masked out (padding is
    also removed from ``response_mask``).

    Fused path (``fused=None``: whenever :func:`lm_body_and_head` finds the parts; ``True``:
    required, ValueError otherwise): the model's body runs to the final hidden states and
    :func:`fused_response_logprobs` scores the response positions only, chunk by chunk, so
    no (B, T, V) logits exist. ``chunk_size`` counts response positions per chunk there
    (default ``FUSED_CHUNK_ELEMENTS // V``); ``compile`` (default: env ``MOPO_COMPILE_LOGPROBS=1``)
    compiles the chunk function.

    Plain path (``fused=False``, or a model without the parts): ``model`` is a causal LM
    called as ``model(input_ids=, attention_mask=, position_ids=)`` that returns ``.logits``
    (B, T, V) (Hugging Face convention), in its own dtype; ``chunk_size``: see
    :func:`token_logprobs`.
    """
    parts = lm_body_and_head(model) if fused is not False else None
    if fused and parts is None:
        raise ValueError(f"fused=True: {type(model).__name__} has no plain linear head over its body's hidden states")
    mask = response_mask.bool() & attention_mask.bool()
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
              "position_ids": position_ids_from_mask(attention_mask)}
    if parts is None:
        return response_logprobs(model(**inputs).logits, input_ids, mask, chunk_size)
    body, head = parts
    hidden = body(**inputs, use_cache=False)[0]
    if compile is None:
        compile = os.environ.get(COMPILE_ENV, "") == "1"
    return fused_response_logprobs(hidden, head, input_ids, mask, chunk_size, compile)


def _position_logits(model, inputs: dict, rows: Tensor, cols: Tensor):
    """``(logits_of, V)``: ``logits_of(a, b)`` gives the (b - a, V) logits at the positions
    ``rows[a:b], cols[a:b]``; on the fused path (see :func:`sequence_logprobs`) only those
    positions' hidden states are kept and the head runs per slice."""
    parts = lm_body_and_head(model)
    if parts is None:
        logits = model(**inputs).logits[rows, cols]
        return (lambda a, b: logits[a:b]), logits.shape[-1]
    body, head = parts
    hidden = body(**inputs, use_cache=False)[0][rows, cols]
    return (lambda a, b: F.linear(hidden[a:b], head.weight, head.bias)), head.out_features


@torch.no_grad()
def policy_reference_scores(
    policy, reference, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per row (B,), without gradient: ``log pi(y|x)``, ``log pi_ref(y|x)`` (as
    :func:`sequence_logprobs`) and the exact per-token KL summed over the response,
    ``sum_t KL(pi(.|x, y_<t) || pi_ref(.|x, y_<t))``, each term over the whole vocabulary.

    The KL column is never negative (each term is a KL; rounding below 0 is clipped to 0).
    For ``y`` drawn from ``pi`` its mean over samples is an unbiased estimate of the sequence
    KL(pi(.|x) || pi_ref(.|x)) (chain rule), as is the mean log-ratio ``log pi(y|x) -
    log pi_ref(y|x)``, which can be negative on a finite sample. A sample cut at a token budget
    (no eos) scores the KL of the process cut there. ``chunk_size`` positions share one
    (chunk, V) pair of log-softmaxes (default ``FUSED_CHUNK_ELEMENTS // V``); the two models
    share the tokenizer (the same V).
    """
    return _scored_positions(policy, reference, input_ids, attention_mask, response_mask, chunk_size)


def per_token_kl(
    policy, reference, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor,
    chunk_size: int | None = None,
) -> Tensor:
    """The KL column of :func:`policy_reference_scores` (B,), with gradient through ``policy``
    (the reference runs without gradient). The responses are held fixed: for ``y`` sampled
    from the policy this is the usual analytic-KL surrogate (the exact per-position KLs along
    the sampled paths), whose gradient leaves out the paths' own dependence on the policy."""
    return _scored_positions(policy, reference, input_ids, attention_mask, response_mask, chunk_size)[2]


def _scored_positions(policy, reference, input_ids, attention_mask, response_mask, chunk_size):
    """``(log pi, log pi_ref, per-token KL)`` per row, gradient through ``policy`` only (see
    :func:`policy_reference_scores`)."""
    mask = response_mask.bool() & attention_mask.bool()
    _check_response_mask(mask)
    rows, cols = mask[:, 1:].nonzero(as_tuple=True)  # position (row, col) predicts token col + 1
    labels = input_ids[rows, cols + 1]
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
              "position_ids": position_ids_from_mask(attention_mask)}
    policy_logits, vocab = _position_logits(policy, inputs, rows, cols)
    with torch.no_grad():
        reference_logits, _ = _position_logits(reference, inputs, rows, cols)
    chunk = max(1, FUSED_CHUNK_ELEMENTS // vocab) if chunk_size is None else chunk_size
    if chunk < 1:
        raise ValueError(f"chunk_size: must be >= 1 or None, got {chunk_size}")
    per_position = []
    for start in range(0, len(rows), chunk):
        stop = min(start + chunk, len(rows))
        logits = policy_logits(start, stop)
        log_p = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        with torch.no_grad():
            log_q = F.log_softmax(reference_logits(start, stop).to(log_p.dtype), dim=-1)
        # a token the policy rules out (log_p = -inf) adds 0; the clamp keeps its gradient finite
        terms = log_p.exp() * (log_p.clamp_min(_LOG_ZERO) - log_q.clamp_min(_LOG_ZERO))
        picked = labels[start:stop, None]
        per_position.append(torch.stack([log_p.gather(-1, picked).squeeze(-1), log_q.gather(-1, picked).squeeze(-1),
                                         terms.sum(dim=-1).clamp_min(0.0)]))
    totals = torch.zeros(3, mask.shape[0], dtype=torch.float32, device=input_ids.device)
    if per_position:
        values = torch.cat(per_position, dim=1)
        totals = totals.to(values.dtype).index_add(1, rows, values)
    return totals[0], totals[1], totals[2]


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
    self-normalised ``r exp((w_0 + lam . w_sec) / tau)``, each prompt's summing to B / G (G
    prompts in the batch), so the loss weighs prompts equally, as :func:`constraint_estimates`
    does, whatever their number of rows; they average to 1 over the batch.
    ``ess = (sum w)^2 / sum w^2`` in rows (B for equal weights).
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
    weights = _group_softmax(logits, index, n_groups) * (w.shape[1] / n_groups)
    return weights, effective_sample_size(weights)


# --------------------------------------------------------------------------- dual updates


def constraint_estimates(w_sec, weights, group) -> Tensor:
    """Batch estimate ``V_sec_hat(rho_lam)`` (J,) of the secondaries' values under pi_lam.

    w_sec (J, B), weights (B,) from :func:`mopo_weights`, group (B,). Estimator: for each
    prompt the weighted mean ``sum_i weight_i w_sec_i / sum_i weight_i`` over its rows (a
    self-normalised importance-sampling estimate of ``E_{pi_lam(.|x)} w_sec``), then the plain
    mean over the batch's prompts (the same equal prompt weighting as the loss). It is consistent but biased at O(1/n) per prompt,
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
    within = weights / torch.zeros(n_groups, dtype=torch.float64).index_add(0, index, weights)[index]
    rho = torch.where(mass > 0, within / mass, torch.zeros_like(mass))
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


def ipo_loss(logp_a, logp_b, ref_a, ref_b, beta: float, labels=None) -> Tensor:
    """IPO with soft labels, both orderings: ``mean [p (z - c)^2 + (1 - p) (z + c)^2]`` over
    pairs (P,), z = h_a - h_b, c = 1/(2 beta) (beta plays IPO's tau); labels p = P(a beats b)
    (P,) in [0, 1], default 1 (a chosen: IPO's ``(h_c - h_r - c)^2``). The minimiser in z is
    ``(2p - 1) c``: the label handling of :func:`weighted_dpo_loss`, so DPO and IPO see the
    same data."""
    z = _log_ratio_gap(logp_a, logp_b, ref_a, ref_b)
    c = 1.0 / (2.0 * beta)
    if labels is None:
        return ((z - c) ** 2).mean()
    p = torch.as_tensor(labels, dtype=z.dtype, device=z.device)
    return (p * (z - c) ** 2 + (1.0 - p) * (z + c) ** 2).mean()


def weighted_dpo_loss(logp_a, logp_b, ref_a, ref_b, beta: float, labels, objective_weights=None,
                      margin=None) -> Tensor:
    """DPO with soft labels, both orderings: ``mean -[p log sigma(z) + (1 - p) log sigma(-z)]``.

    z = beta (h_a - h_b) - margin over pairs (P,). labels: p = P(a beats b) (P,) in [0, 1], or
    (K, P) per-objective labels combined as ``p = sum_k c_k l_k`` with ``objective_weights`` c
    (K,) summing to 1 (the same as the c-weighted sum of the per-objective losses). p = 1 is
    :func:`dpo_loss` with a chosen; p = 0 with b chosen. ``margin`` (scalar or (P,), default 0,
    oriented a minus b) is MODPO's weighted reward gap of the other objectives.
    """
    z = beta * _log_ratio_gap(logp_a, logp_b, ref_a, ref_b)
    if margin is not None:
        z = z - torch.as_tensor(margin, dtype=z.dtype, device=z.device)
    p = torch.as_tensor(labels, dtype=z.dtype, device=z.device)
    if p.ndim == 2:
        if objective_weights is None:
            raise ValueError("labels (K, P) need objective_weights (K,)")
        c = torch.as_tensor(objective_weights, dtype=z.dtype, device=z.device)
        if not torch.isclose(c.sum(), torch.ones((), dtype=z.dtype, device=z.device)):
            raise ValueError(f"objective_weights: must sum to 1, got {float(c.sum())}")
        p = c @ p
    return -(p * F.logsigmoid(z) + (1.0 - p) * F.logsigmoid(-z)).mean()
