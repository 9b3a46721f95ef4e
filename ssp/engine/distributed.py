"""torchrun / DDP: this process's rank and device, and the few collectives training uses.

Launched by ``torchrun`` (env ``WORLD_SIZE`` > 1) a process joins a process group (gloo
on CPU, nccl on CUDA); alone it is rank 0 of 1 and every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ssp.errors import SSPError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """torchrun env vars -> process group (gloo on CPU, nccl on CUDA) and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise SSPError(f"--device {device_name}: CUDA is not available here")
    if device_name == "cuda" and info.enabled:
        device_name = f"cuda:{info.local_rank}"
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def mean_over_ranks(total: torch.Tensor, count: int, dist_info: Dist) -> list[float]:
    """``total / count`` over every rank's ``total`` and ``count`` (one process: its own;
    a count of 0 counts as 1)."""
    if not dist_info.enabled:
        return (total / max(count, 1)).tolist()
    reduced = total.clone()
    dist.all_reduce(reduced)
    steps = torch.tensor([count], dtype=torch.float64, device=total.device)
    dist.all_reduce(steps)
    return (reduced / steps.clamp(min=1)).tolist()


def broadcast_from_main(value: str | None, dist_info: Dist) -> str | None:
    """Rank 0's ``value`` (e.g. its MLflow run id) on every rank; one process: ``value``."""
    if not dist_info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist_info: Dist) -> None:
    if dist_info.enabled:
        dist.barrier()
