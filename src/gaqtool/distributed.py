"""Data-parallel training with torch.distributed when launched by ``torchrun``.

Gradients are averaged with an explicit all-reduce after each backward pass (force training
needs double backward, which DistributedDataParallel's hooks do not cover). Backend: nccl on
GPU, gloo on CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "is_main", "average_gradients",
           "broadcast_state"]


def init_from_env() -> bool:
    """Join the process group described by torchrun's environment (WORLD_SIZE > 1)."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return is_distributed()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def average_gradients(model: torch.nn.Module) -> None:
    """All-reduce and average every parameter gradient across processes (no-op when alone)."""
    if not is_distributed():
        return
    size = float(world_size())
    for parameter in model.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= size


def broadcast_state(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64, torch.int8):
                dist.broadcast(tensor, 0)
