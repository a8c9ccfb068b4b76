"""File locks for concurrent writers of an embedding store (torchrun ranks and devices: ``medsam_lib.devices``)."""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path


@contextlib.contextmanager
def flock(path: Path, mode: int, blocking: bool = True):
    """An advisory lock on ``path`` (created); yields False when non-blocking and held elsewhere."""
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, mode | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        handle.close()  # releases the lock; a killed process releases it too
