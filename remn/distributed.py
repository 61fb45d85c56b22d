"""One process or many under `torchrun`: the context `remn segment` and `remn train` run in.

`torchrun --nproc_per_node=N -m remn ...` sets RANK, WORLD_SIZE and LOCAL_RANK. With
WORLD_SIZE > 1 the process joins the process group (NCCL on CUDA, gloo on the CPU) on its
own device, cuda:LOCAL_RANK; otherwise it runs alone. A process group that already
exists is joined as it is (its rank and world size are used). The collectives below do
nothing in a single process: `barrier`, `mean_over_ranks`, and `wrap` (DistributedDataParallel
for training).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among `world_size` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised: bool = False  # this process started the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def choose_device(requested: str | None, local_rank: int, world_size: int) -> torch.device:
    """requested None: CUDA when available, else the CPU; "cuda" without an index becomes
    cuda:LOCAL_RANK under torchrun (cuda:0 alone). CUDA asked for but missing: ValueError."""
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested} was asked for but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank if world_size > 1 else 0)
    return device


def init_distributed(device: str | None = None) -> DistributedContext:
    """Read torchrun's environment; with WORLD_SIZE > 1 join the process group.

    device: see `choose_device`; on CUDA it becomes the current device.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    joined = dist.is_available() and dist.is_initialized()
    if joined:
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    chosen = choose_device(device, local_rank, world_size)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size == 1 or joined:
        return DistributedContext(rank, world_size, local_rank, chosen)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, chosen, initialised=True)


def close_distributed(context: DistributedContext) -> None:
    """Leave the process group if this process started it."""
    if context.initialised and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.distributed:
        dist.barrier()


def mean_over_ranks(context: DistributedContext, values: torch.Tensor) -> torch.Tensor:
    """values [K] (float) → the mean over ranks, [K]; a non-finite value anywhere stays non-finite."""
    if not context.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / context.world_size


def wrap(module: torch.nn.Module, context: DistributedContext, find_unused_parameters: bool = False):
    """DistributedDataParallel around `module` in a distributed run; the module itself otherwise."""
    if not context.distributed:
        return module
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )
