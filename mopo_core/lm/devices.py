"""Where and in what precision a model runs: the device (``"auto"``: CUDA when available), the
weights' dtype and seeded blocks of torch's global random number generators, shared by
building, loading and LoRA-wrapping models (:mod:`mopo_core.lm.models`, :mod:`mopo_core.lm.lora`)
and the memory estimates (:mod:`mopo_core.lm.checkpoints`).

Two meanings of dtype ``"auto"``: for training and everything built or loaded through
:func:`resolve_dtype` (the trainers, :func:`mopo_core.lm.models.load_model`), bf16 on CUDA and
fp32 elsewhere, as a CPU without bf16 instructions runs bf16 backward many times slower; for a
model loaded only to sample from (the Models page, :func:`sampling_dtype`), also bf16 on a CPU
when the model is large, where fp32 would double its memory and the load time."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Device types on which the trainer's AdamW runs torch's fused kernel (``AdamW(fused=True)``:
#: one kernel over every parameter, updating in place with no temporaries); elsewhere, and for
#: FSDP's sharded parameters, torch's per-tensor loop.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


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


#: A model with more parameters than this is large: :func:`sampling_dtype`'s ``"auto"`` picks bf16 on a CPU.
LARGE_MODEL_PARAMETERS = 1_000_000_000
#: ... as it does when the model's fp32 weights would take more than this fraction of the available memory.
LARGE_MODEL_MEMORY_FRACTION = 0.25


def sampling_dtype(dtype: str | torch.dtype, device: torch.device, n_parameters: int | None,
                   available: int | None = None) -> torch.dtype:
    """The dtype to load a model in to sample from it (not to train it).

    ``"auto"`` on a CPU: bf16 when the model is large, i.e. it has more than
    :data:`LARGE_MODEL_PARAMETERS` parameters or its fp32 weights (4 bytes a parameter) would
    take more than :data:`LARGE_MODEL_MEMORY_FRACTION` of ``available`` bytes (default: the
    CPU's available memory, :func:`mopo_core.lm.checkpoints.available_memory`; only the count is
    used where that cannot be told); fp32 otherwise, and when ``n_parameters`` is unknown.
    Anything else (and ``"auto"`` on CUDA): :func:`resolve_dtype`.

    Why: a 1.5B checkpoint stored in bf16 loads memory-mapped in bf16 (1.4 s, +0.16 GiB RSS)
    against 39 s and +6.8 GiB in fp32 (issue 15). No warning for it: the slow path of bf16 on a
    CPU without bf16 instructions is the backward pass, which sampling does not run (greedy
    generation from a 95M-parameter Llama on a 2-core AMD EPYC without them, one thread:
    15.8 tokens/s in bf16, 14.9 in fp32)."""
    if dtype != "auto" or device.type != "cpu" or n_parameters is None:
        return resolve_dtype(dtype, device)
    if n_parameters > LARGE_MODEL_PARAMETERS:
        return torch.bfloat16
    if available is None:
        from mopo_core.lm.checkpoints import available_memory

        try:
            available = available_memory(device)
        except RuntimeError:  # cannot be told here: the parameter count decides alone
            return torch.float32
    return torch.bfloat16 if 4 * n_parameters > LARGE_MODEL_MEMORY_FRACTION * available else torch.float32


@contextmanager
def seeded(seed: int):
    """Run the block with torch's global RNGs seeded; their state is restored on exit."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
