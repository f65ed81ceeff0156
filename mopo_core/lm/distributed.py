"""torch.distributed in the few forms the trainer needs; every helper is a no-op in one process.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`init_from_env` starts the
process group: NCCL when CUDA is available, gloo otherwise (CPU). The trainer then splits
each step's rows over the processes (:func:`shard_bounds`), lets DDP average the gradients,
and sums its logged quantities over processes (:func:`all_reduce_sum`).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env() -> bool:
    """Start the process group when launched by torchrun with more than one process.

    Returns True when running distributed. The backend is NCCL on CUDA (each process on its
    ``LOCAL_RANK`` device) and gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def shard_bounds(n: int, index: int | None = None, count: int | None = None) -> tuple[int, int]:
    """The contiguous slice ``[start, stop)`` of ``n`` items that process ``index`` of ``count``
    takes (sizes differ by at most one; defaults: this process of the current group)."""
    index = rank() if index is None else index
    count = world_size() if count is None else count
    return index * n // count, (index + 1) * n // count


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum of ``values`` over processes (a copy on ``values``' device; ``values`` itself
    in one process)."""
    if not is_distributed():
        return values
    total = values.detach().to(_collective_device(), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(values.device)


def any_process(flag: bool) -> bool:
    """True when ``flag`` is true in any process (every process gets the same answer)."""
    if not is_distributed():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)])).item() > 0)


def gather_objects(items: list) -> list:
    """Concatenate each process's ``items`` in rank order (picklable objects)."""
    if not is_distributed():
        return items
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]
