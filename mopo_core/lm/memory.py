"""Releasing a loaded model's memory, and measuring the process's memory around it.

The app keeps models in a cache (``st.cache_resource``) and releases the old one when the user
switches model. Dropping the cache entry is not enough while anything else still refers to the
model (a figure's closure, a traceback, a session value), so :func:`unload` empties the model
itself: every parameter, gradient and buffer becomes an empty tensor, then garbage is collected
and, on CUDA, the caching allocator's free blocks go back to the driver. What was freed is
measured as the drop in the process's resident memory (``VmRSS`` from ``/proc/self/status``;
``None`` where there is no ``/proc``) and in CUDA memory allocated and reserved by torch.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class MemoryUse:
    """The process's memory in bytes: resident set (``None`` without ``/proc``) and CUDA
    memory allocated / reserved by torch's caching allocator on all devices (0 without CUDA)."""

    rss: int | None
    cuda_allocated: int
    cuda_reserved: int


def rss_bytes() -> int | None:
    """The process's resident set size in bytes (``VmRSS``), ``None`` without ``/proc``."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"/proc/self/status: unexpected VmRSS unit {unit!r}")
            return int(value) * 1024
    return None


def memory_use() -> MemoryUse:
    """The process's memory now (see :class:`MemoryUse`)."""
    devices = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else ()
    return MemoryUse(rss_bytes(), sum(torch.cuda.memory_allocated(d) for d in devices),
                     sum(torch.cuda.memory_reserved(d) for d in devices))


def unload(model) -> MemoryUse:
    """Free ``model``'s weights, gradients and buffers in place and return the memory freed
    (before minus after; a field is ``None`` where it cannot be measured). The model is
    unusable afterwards: drop every reference to it (e.g. clear its cache entry)."""
    before = memory_use()
    with torch.no_grad():
        for module in model.modules():
            for param in module._parameters.values():
                if param is not None:
                    param.grad = None
                    param.data = torch.empty(0, dtype=param.dtype, device=param.device)
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = torch.empty(0, dtype=buffer.dtype, device=buffer.device)
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    after = memory_use()
    rss = None if before.rss is None or after.rss is None else before.rss - after.rss
    return MemoryUse(rss, before.cuda_allocated - after.cuda_allocated, before.cuda_reserved - after.cuda_reserved)
