"""Where and in what precision a model runs: the device (``"auto"``: CUDA when available), the
weights' dtype (``"auto"``: bf16 on CUDA, fp32 elsewhere) and seeded blocks of torch's global
random number generators, shared by building, loading and LoRA-wrapping models
(:mod:`mopo_core.lm.models`, :mod:`mopo_core.lm.lora`) and the memory estimates
(:mod:`mopo_core.lm.checkpoints`)."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: cuda when available, else cpu; anything else as ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bf16 instructions (x86 ``avx512_bf16`` or ``amx_bf16``); False where
    ``cpuinfo`` cannot be read."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 on CUDA, fp32 elsewhere; or one of ``"fp32"``, ``"bf16"``, ``"fp16"``.

    bf16 asked for on a CPU without bf16 instructions is given, with a warning: torch's bf16
    backward is very slow there (the 1.3B LoRA step of ``tests/lm/test_checkpoints.py`` on a 2-core
    AMD EPYC: not done after 400 s in bf16, 10.7-12.0 s in fp32 over two runs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    if dtype == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("dtype: bf16 on a CPU without bf16 instructions (avx512_bf16/amx_bf16) trains many times "
                      "slower than fp32 here; use dtype 'fp32' or 'auto' unless memory forces bf16", stacklevel=2)
    return DTYPES[dtype]


@contextmanager
def seeded(seed: int):
    """Run the block with torch's global RNGs seeded; their state is restored on exit."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
