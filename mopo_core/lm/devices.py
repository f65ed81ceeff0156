"""Where and in what precision a model runs: the device (``"auto"``: CUDA when available), the
weights' dtype (``"auto"``: bf16 on CUDA, fp32 elsewhere) and seeded blocks of torch's global
random number generators, shared by building, loading and LoRA-wrapping models
(:mod:`mopo_core.lm.models`, :mod:`mopo_core.lm.lora`) and the memory estimates
(:mod:`mopo_core.lm.checkpoints`)."""
from __future__ import annotations

from contextlib import contextmanager

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: cuda when available, else cpu; anything else as ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 on CUDA, fp32 elsewhere; or one of ``"fp32"``, ``"bf16"``, ``"fp16"``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


@contextmanager
def seeded(seed: int):
    """Run the block with torch's global RNGs seeded; their state is restored on exit."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
