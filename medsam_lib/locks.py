"""One writer per output folder: the lock every command that writes a folder takes.

    with output_folder(out, "--out"):      # curate, embed (shared), train, evaluate, run
        ... write into out ...

The lock is ``fcntl.flock`` on ``<folder>/.medsam.lock``: the kernel releases it when the process
ends, however it ends, so a run killed with ``kill -9`` never blocks the next one (its lock file is
merely reused). The holder writes its pid, host, command and start time into the file, and a
second writer is refused at once with a MedSAMError that names them. The file is removed when the
lock is released (after checking, on acquiring, that the file locked is still the one at the path).

``shared=True`` is for writers designed to share a folder (several ``embed`` processes, or the ranks
of a torchrun job, splitting one store's chunks under their own per-chunk locks): they exclude the
other commands but not each other.

A process may take the same folder's lock again (nested calls, e.g. a notebook helper calling a
library function): the inner call is counted, not refused.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from .fileio import MedSAMError, make_folder

LOCK_NAME = ".medsam.lock"
_HELD: dict[str, list] = {}  # resolved folder -> [file object, count], this process's locks


def _holder_line() -> str:
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)) or "python"
    command = " ".join(command.split())  # one line, whatever the arguments held
    if len(command) > 200:
        command = command[:197] + "..."
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"pid {os.getpid()} on host {socket.gethostname()}, command `{command}`, since {started}"


def _describe_holder(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        text = []
    return text[0][:400] if text else "another process (it has not said which yet)"


def _try_lock(path: Path, mode: int):
    """The open lock file with the lock taken, or None when another process holds it."""
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        handle.close()  # the previous holder removed the file between our open and our lock: again


def acquire(folder: str | os.PathLike, what: str = "--out", shared: bool = False):
    """Take the folder's lock (the folder must exist); MedSAMError naming the holder if it is in use."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return key
    path = folder / LOCK_NAME
    try:
        handle = _try_lock(path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    except OSError as exc:
        raise MedSAMError(f"{what} {folder}: cannot take the folder's lock {path} ({exc.strerror or exc})") from exc
    if handle is None:
        raise MedSAMError(f"{what} {folder}: the folder is in use by another run ({_describe_holder(path)}); "
                          "wait for it to finish or choose another folder")
    handle.seek(0)  # the holder, for whoever is refused (with sharers: the latest one)
    handle.truncate()
    handle.write(_holder_line() + (" (shared with other writers of its kind)" if shared else "") + "\n")
    handle.flush()
    _HELD[key] = [handle, 1]
    return key


def release(key: str) -> None:
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    handle = _HELD.pop(key)[0]
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the last holder (of a shared lock too) removes the file
        with contextlib.suppress(OSError):
            os.unlink(Path(key) / LOCK_NAME)
    except OSError:
        pass  # other sharers still hold it: they remove it
    finally:
        handle.close()


@contextlib.contextmanager
def output_folder(folder: str | os.PathLike, what: str = "--out", shared: bool = False,
                  create: bool = True) -> Iterator[Path]:
    """Create ``folder`` if needed and hold its lock while the block runs.

    A folder this call created is removed again if the block fails and leaves it empty, and when the
    lock is refused: a refused or failed run leaves no new folder behind.
    """
    folder = Path(folder)
    created = not folder.exists()
    if create:
        make_folder(folder, f"{what} folder")
    try:
        key = acquire(folder, what, shared)
    except MedSAMError:
        _remove_if_empty(folder, created)
        raise
    ok = False
    try:
        yield folder
        ok = True
    finally:
        release(key)
        if not ok:
            _remove_if_empty(folder, created)


def _remove_if_empty(folder: Path, created: bool) -> None:
    if created:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds when empty
