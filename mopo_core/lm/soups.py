"""Rewarded Soups for language models: interpolate the weights of policies fine-tuned on one
objective each (Ramé et al., 2023). Works on full models and on peft LoRA models alike: the
floating-point entries of the state dicts are mixed, everything else comes from the first model."""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch


def _check_weights(weights: Sequence[float], n_models: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_models,):
        raise ValueError(f"weights: expected {n_models} weights, one per model, got shape {w.shape}")
    if (w < 0).any() or abs(w.sum() - 1.0) > 1e-9:
        raise ValueError(f"weights: must be non-negative and sum to 1, got {w.tolist()}")
    return w


def interpolate_state_dicts(state_dicts: Sequence[dict], weights: Sequence[float]) -> dict:
    """``sum_k weights[k] * state_dicts[k]`` for floating-point tensors (same keys and shapes
    required); integer buffers are taken from the first state dict."""
    if not state_dicts:
        raise ValueError("state_dicts: need at least one model")
    w = _check_weights(weights, len(state_dicts))
    keys = list(state_dicts[0])
    for i, sd in enumerate(state_dicts[1:], start=1):
        if list(sd) != keys:
            raise ValueError(f"state_dicts[{i}]: parameter names differ from model 0's (not the same architecture)")
        for key in keys:
            if sd[key].shape != state_dicts[0][key].shape:
                raise ValueError(f"state_dicts[{i}]: {key} has shape {tuple(sd[key].shape)}, "
                                 f"model 0 has {tuple(state_dicts[0][key].shape)}")
    mixed = {}
    for key in keys:
        first = state_dicts[0][key]
        if first.is_floating_point():
            mixed[key] = sum(float(wk) * sd[key].to(torch.float64) for wk, sd in zip(w, state_dicts)).to(first.dtype)
        else:
            mixed[key] = first.clone()
    return mixed


def soup(models: Sequence[torch.nn.Module], weights: Sequence[float]) -> torch.nn.Module:
    """A new model whose weights interpolate ``models`` with ``weights`` (one per model)."""
    mixed = interpolate_state_dicts([m.state_dict() for m in models], weights)
    out = copy.deepcopy(models[0])
    out.load_state_dict(mixed)
    return out
