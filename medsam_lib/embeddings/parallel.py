"""Who writes which part of an embedding store: file locks for concurrent writers, torchrun ranks, devices."""
from __future__ import annotations

import contextlib
import fcntl
import os
from datetime import timedelta
from pathlib import Path

import torch


@contextlib.contextmanager
def flock(path: Path, mode: int, blocking: bool = True):
    """An advisory lock on ``path`` (created); yields False when non-blocking and held elsewhere."""
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, mode | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        handle.close()  # releases the lock; a killed process releases it too


class Dist:
    """torchrun's rank and world size from the environment (one process when absent)."""

    def __init__(self, device_type: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.td, self.owned = None, False
        if self.world > 1:
            import torch.distributed as td

            if not td.is_initialized():
                self.owned = True
                if device_type == "cuda":
                    torch.cuda.set_device(self.local_rank)
                td.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timedelta(hours=12))
            self.td = td

    def broadcast(self, obj):
        if self.td is None:
            return obj
        box = [obj]
        self.td.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.td is not None:
            self.td.barrier()

    def close(self) -> None:
        """End the process group if this build started it (a caller's own group is left alone)."""
        if self.owned:
            self.td.destroy_process_group()


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``auto`` (or None): CUDA when present, else CPU; a plain ``cuda`` under torchrun is the rank's
    own GPU. Everything else is checked by ``zoo.resolve_device`` (MedSAMError naming the option)."""
    from ..models.zoo import resolve_device as check

    text = "auto" if device is None else str(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    dev = check(text)
    return torch.device("cuda", local_rank) if dev.type == "cuda" and dev.index is None else dev
