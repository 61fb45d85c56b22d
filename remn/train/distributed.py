"""Running one training script on one device or on many under `torchrun`.

`torchrun --nproc_per_node=N -m remn.train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; the
trainer then joins the process group (NCCL on CUDA, gloo on CPU), wraps its objective in
DistributedDataParallel and shards the data per rank (`ClipBatchSampler`). Without those
variables it runs as a single process. Rank 0 alone writes logs, the progress bar and
checkpoints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False  # this module started the process group (and ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def choose_device(requested: str | None, local_rank: int) -> torch.device:
    if requested is not None:
        device = torch.device(requested)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def setup(requested_device: str | None = None) -> DistributedContext:
    """Join the process group when launched by torchrun (or one already exists); else single process."""
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank,
                                  choose_device(requested_device, local_rank))
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistributedContext(device=choose_device(requested_device, 0))
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = choose_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device, initialised_here=True)


def teardown(context: DistributedContext) -> None:
    if context.initialised_here and dist.is_initialized():
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


def broadcast_flag(context: DistributedContext, flag: bool) -> bool:
    """True on every rank when `flag` is True on any rank."""
    if not context.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def wrap(module: torch.nn.Module, context: DistributedContext, find_unused_parameters: bool = False):
    """DistributedDataParallel around `module` in a distributed run; the module itself otherwise."""
    if not context.distributed:
        return module
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )
