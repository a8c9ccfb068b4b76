"""Downloads with a progress bar, checksum verification and an atomic final move.

Used by ``python -m medsam_lib weights fetch`` and ``python -m medsam_lib data fetch``. Nothing in
``medsam_lib`` downloads on its own: a download happens only when a user asks for it.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping

from .fileio import MedSAMError, atomic_path, make_folder

CHUNK = 1 << 20


def _hasher(algorithm: str):
    if algorithm == "xxh128":
        try:
            import xxhash
        except ImportError as exc:  # pragma: no cover - xxhash is a pinned requirement
            raise MedSAMError("verifying an xxh128 checksum needs the 'xxhash' package") from exc
        return xxhash.xxh128()
    try:
        return hashlib.new(algorithm)
    except ValueError:
        raise MedSAMError(f"unknown checksum algorithm {algorithm!r} (use sha256, md5, xxh128, "
                          "or one of them with '_prefix')") from None


def verify_file(path: str | os.PathLike, hashes: Mapping[str, str], size: int | None = None,
                name: str | None = None) -> None:
    """Check ``path`` against its expected size and hashes; raise MedSAMError naming the file if not.

    ``hashes`` maps an algorithm (``sha256``, ``md5``, ``xxh128``) to its hex digest, or
    ``<algorithm>_prefix`` to the start of one (file names that carry it: torch.hub names carry
    the SHA-256's, Meta's SAM names the MD5's). Every entry must match.
    """
    path = Path(path)
    shown = name or str(path)
    if not path.is_file():
        raise MedSAMError(f"{shown}: file not found")
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise MedSAMError(
            f"{shown}: size {actual_size} bytes, expected {size} bytes (truncated or wrong file); "
            "delete it and fetch again")
    digests = {algo.replace("_prefix", ""): _hasher(algo.replace("_prefix", "")) for algo in hashes}
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            for digest in digests.values():
                digest.update(block)
    for algo, expected in hashes.items():
        actual = digests[algo.replace("_prefix", "")].hexdigest()
        expected = expected.lower()
        if algo.endswith("_prefix"):
            ok = bool(expected) and actual.startswith(expected)
        else:
            ok = actual == expected
        if not ok:
            raise MedSAMError(
                f"{shown}: {algo.replace('_prefix', '')} checksum mismatch (expected {expected}, got {actual}); "
                "the file is corrupted or not the published one")


def fetch_url(url: str, dest: str | os.PathLike, hashes: Mapping[str, str] | None = None,
              size: int | None = None, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``: stream to a temporary file, verify, then rename.

    A truncated transfer, an HTTP error or a checksum mismatch raises MedSAMError and leaves
    neither ``dest`` nor a temporary file behind; an existing good ``dest`` is never touched
    until a verified replacement is ready; folders it had to create are removed again on failure.
    """
    dest = Path(dest)
    if dest.is_dir():
        raise MedSAMError(f"cannot download {url} to {dest}: a folder of that name is in the way")
    missing = [p for p in [dest.parent, *dest.parent.parents] if not p.exists()]
    make_folder(dest.parent, "download folder")
    try:
        return _fetch_into(url, dest, hashes, size, timeout, progress)
    except BaseException:
        for folder in missing:  # innermost first: the folders this call made, if still empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _fetch_into(url: str, dest: Path, hashes, size, timeout: float, progress: bool) -> Path:
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "medsam-companion"})
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                announced_text = response.headers.get("Content-Length")
                announced = int(announced_text) if announced_text and announced_text.isdigit() else None
                total = announced if announced is not None else size
                received = 0
                with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                                  desc=dest.name, disable=not progress) as bar:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        out.write(block)
                        received += len(block)
                        bar.update(len(block))
        except urllib.error.HTTPError as exc:
            raise MedSAMError(f"downloading {url}: HTTP {exc.code} {exc.reason}; nothing was saved") from exc
        except http.client.HTTPException as exc:  # IncompleteRead (chunked), bad status line, ...
            raise MedSAMError(f"downloading {url}: transfer broken ({type(exc).__name__}); "
                              "nothing was saved") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MedSAMError(f"downloading {url} to {dest}: {reason}; nothing was saved") from exc
        if announced is not None and received != announced:
            raise MedSAMError(
                f"downloading {url}: transfer truncated at {received} of {announced} bytes; nothing was saved")
        verify_file(tmp, hashes or {}, size, name=f"{dest} (from {url})")
    return dest
