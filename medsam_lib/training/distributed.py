"""Distributed data parallel under torchrun: gloo on CPU, NCCL on CUDA; one process is world size 1.

    torchrun --nproc_per_node 2 -m medsam_lib train --config train.toml

Each rank takes a disjoint, contiguous part of the global batch (``part``): batch_size must divide
by the world size, so every rank's mean loss weighs the same and DDP's gradient average equals the
gradient of the global batch's mean loss. Only rank 0 writes files and validates.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..fileio import MedSAMError


@dataclass
class Context:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def part(self, numbers: list, source: str = "config") -> list:
        """This rank's contiguous share of a global batch."""
        if len(numbers) % self.world:
            raise MedSAMError(f"{source}: batch_size {len(numbers)} does not divide by the {self.world} ranks")
        share = len(numbers) // self.world
        return numbers[self.rank * share:(self.rank + 1) * share]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a scalar over ranks (identity in one process)."""
        if not self.distributed:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast_object(self, value):
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedSAMError(f"device {name!r} asked for, but CUDA is not available here; use device 'cpu' or 'auto'")
    return torch.device(name)


def setup(device: str) -> Context:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(0, 1, 0, resolve_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Context(rank, world, local, chosen)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, ctx: Context) -> torch.nn.Module:
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
