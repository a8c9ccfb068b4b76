"""Small file helpers used everywhere: atomic writes, hashes, and how a user's value is shown.

``quote(value)`` is the one way an error message shows a value the user gave (bounded: a hostile
config cannot make a gigabyte error line); ``one_line(text)`` makes any message a single line
(newlines and other control characters escaped), as the CLI's ``error:`` line needs.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator


class MedSAMError(Exception):
    """A user-facing error: its message names the file or value and what to do."""


QUOTE_LIMIT = 80  # characters of a user's value shown in an error message
MESSAGE_LIMIT = 2000  # characters of one error line


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters (with how long it was): the one way error messages
    quote a user's value. Containers are cut before their repr is built in full."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)} items>"
    try:
        text = repr(value)
    except RecursionError:
        return f"<deeply nested {type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` as one printable line: newlines, tabs and other control characters escaped (a file
    name holding a newline cannot split an error), cut to ``limit`` characters."""
    text = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))
    return text if len(text) <= limit else f"{text[:limit]}... (message cut at {limit} characters)"


_DISK_FULL = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large for the file system "
              "or the process's file size limit", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system"}


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "not a regular file"


def check_input_path(path: str | os.PathLike, what: str = "input", allow_dir: bool = True) -> Path:
    """``path`` as a Path if it is a regular file (or, with ``allow_dir``, a folder); MedSAMError otherwise.

    Checked with ``os.stat`` before anything opens the path, so a named pipe, a device or a socket is
    refused instead of blocking or reading forever.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MedSAMError(f"{path}: no such file or folder ({what})") from None
    except OSError as exc:
        raise MedSAMError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(mode):
        if not allow_dir:
            raise MedSAMError(f"{path}: is a folder; the {what} must be a file")
        return path
    if not stat.S_ISREG(mode):
        raise MedSAMError(f"{path}: is {_kind_of(mode)}; the {what} must be a regular file"
                          + (" or a folder" if allow_dir else ""))
    return path


def ensure_parent_exists(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path; raise a clear error if its folder does not exist."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        if parent.exists():
            raise MedSAMError(f"cannot write {path}: {parent} is a file, not a folder")
        raise MedSAMError(f"cannot write {path}: folder {parent} does not exist (create it first)")
    return path


def make_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """``mkdir -p``, with a file in the way or a permission problem as a MedSAMError naming the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), path)
        raise MedSAMError(f"cannot create the {what} {path}: {blocker} is a file, not a folder") from None
    except OSError as exc:
        raise MedSAMError(f"cannot create the {what} {path}: {exc.strerror or exc}") from exc
    return path


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if ``a`` and ``b`` name the same file or folder (through symbolic or hard links too)."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return Path(a).resolve() == Path(b).resolve()


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True if ``path`` (resolved) lies inside ``folder`` (resolved) or is it."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_output_path(out: str | os.PathLike, inputs=(), what: str = "--out") -> Path:
    """Check an output file path before any work: its folder exists and is writable, nothing but a
    regular file is in the way, and it is none of ``inputs`` (files or folders, compared through
    links) nor inside an input folder. Returns ``out`` as a Path."""
    out = ensure_parent_exists(out)
    if out.exists() or out.is_symlink():
        try:
            mode = os.stat(out).st_mode
        except OSError:
            mode = 0
        if stat.S_ISDIR(mode):
            raise MedSAMError(f"{what} {out}: a folder of that name is in the way; give a file name")
        if mode and not stat.S_ISREG(mode):
            raise MedSAMError(f"{what} {out}: is {_kind_of(mode)}; give the path of a regular file")
    for item in inputs:
        if item is None or not os.path.exists(item):
            continue
        if same_path(out, item) or (os.path.isdir(item) and is_within(out, item)):
            relation = "is" if same_path(out, item) else "lies inside"
            raise MedSAMError(f"{what} {out} {relation} the input {item}; writing there would change your input. "
                              "Choose another output path")
    parent = out.parent if str(out.parent) else Path(".")
    if not os.access(parent, os.W_OK):
        raise MedSAMError(f"cannot write {out}: folder {parent} is not writable")
    return out


def check_output_folder(out: str | os.PathLike, inputs=(), what: str = "--out") -> Path:
    """Check an output *folder* before any work: nothing but a folder is in the way, and it neither
    is, lies inside, nor contains any of ``inputs`` (input files, folders or stores; ``(label, path)``
    pairs name them, e.g. ``("--curated", path)``), compared after resolving links. Returns ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MedSAMError(f"{what} {out}: exists and is not a folder; give a folder")
    target = out.resolve()
    for item in inputs:
        label, path = item if isinstance(item, tuple) else ("input", item)
        if path is None or str(path) == "" or not os.path.exists(path):
            continue
        real = Path(path).resolve()
        if same_path(out, path) or real == target:
            relation = "is"
        elif real in target.parents:
            relation = "lies inside"
        elif target in real.parents:
            relation = "contains"
        else:
            continue
        raise MedSAMError(f"{what} {out} {relation} the {label} {path}; writing there would change an input. "
                          "Choose a folder outside the inputs")
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file keeps ``path``'s suffixes (writers such as SimpleITK choose the format from
    them). On any error it is removed, so no partial output is ever left behind.
    """
    path = ensure_parent_exists(path)
    if path.is_dir():
        raise MedSAMError(f"cannot write {path}: a folder of that name is in the way")
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the final file ordinary permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno in _DISK_FULL:  # nothing half-written: the temporary file is gone, ``path`` untouched
            raise MedSAMError(f"cannot write {path}: {_DISK_FULL[exc.errno]}; nothing was written (free space "
                              "or choose another output folder)") from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
