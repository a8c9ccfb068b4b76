"""Where the work runs: the one device resolver and the one torchrun wrapper (GPU paths chosen at run time).

    device = resolve_device("auto")      # None / "auto": CUDA when a GPU is present, else the CPU
    dist = join("auto")                  # under torchrun: this rank, in the process group, on its own GPU
    ...
    dist.close()

``resolve_device`` takes None, "auto", "cpu", "cuda", "cuda:N", "mps" or a ``torch.device`` and returns a
device that exists here; a misspelt name, CUDA without a GPU, a GPU index that is not there or MPS off a
Mac is a MedSAMError naming the option (``what``, "--device" by default).

``join`` joins torchrun's process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on
the CPU, and a CUDA device becomes the rank's own GPU (``cuda:LOCAL_RANK``). Without torchrun it is one
process of world size 1 and every collective is the identity. ``close`` ends the group only if ``join``
started it (a caller's own group is left alone).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .fileio import MedSAMError

NAMES = "auto, cpu, cuda, cuda:N or mps"
GROUP_TIMEOUT = timedelta(hours=12)  # rank 0 may write a plan or validate for long while the others wait


def resolve_device(device: str | torch.device | None = None, what: str = "--device") -> torch.device:
    """``device`` as a torch.device that exists here (None and "auto": CUDA when present, else CPU)."""
    text = "auto" if device is None else str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise MedSAMError(f"{what} {str(device)!r}: not a device name; use {NAMES}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MedSAMError(f"{what} {str(device)!r}: no CUDA GPU is available here (torch {torch.__version__}, "
                              f"CUDA {torch.version.cuda or 'not built in'}); use {_option(what)} cpu or auto")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise MedSAMError(f"{what} {str(device)!r}: there are {count} CUDA GPU(s) here (cuda:0..cuda:{count - 1})")
        return dev
    if dev.type == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return dev
    raise MedSAMError(f"{what} {str(device)!r}: not available here; use {_option(what)} "
                      f"{'cpu, cuda' if torch.cuda.is_available() else 'cpu'} or auto")


def _option(what: str) -> str:
    """How the advice names the option: ``--device`` on a command line, ``device =`` in a config file."""
    return what if what.startswith("--") else "device ="


class Distributed:
    """This process's place among torchrun's ranks (``join`` makes one), and the collectives it needs."""

    def __init__(self, rank: int, world: int, local_rank: int, device: torch.device, owned: bool = False):
        self.rank, self.world, self.local_rank, self.device, self.owned = rank, world, local_rank, device, owned

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def part(self, numbers: list, source: str = "config") -> list:
        """This rank's contiguous share of a global batch (its size must divide by the world size)."""
        if len(numbers) % self.world:
            raise MedSAMError(f"{source}: batch_size {len(numbers)} does not divide by the {self.world} ranks")
        share = len(numbers) // self.world
        return numbers[self.rank * share:(self.rank + 1) * share]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a tensor over ranks (the identity in one process)."""
        if not self.distributed:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank."""
        if not self.distributed:
            return flag
        box = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        return bool(box.item() > 0)

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in DistributedDataParallel across the ranks (unchanged in one process)."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def close(self) -> None:
        """End the process group if ``join`` started it."""
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
            self.owned = False


def join(device: str | torch.device | None = None, what: str = "--device") -> Distributed:
    """Resolve ``device`` and, under torchrun (WORLD_SIZE > 1), join the process group on the rank's device."""
    chosen = resolve_device(device, what)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(0, 1, 0, chosen)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local)
        torch.cuda.set_device(chosen)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo", timeout=GROUP_TIMEOUT)
    return Distributed(rank, world, local, chosen, owned)
