"""A checkpoint's identity: the SHA-256 of its file, computed once (a leaf: imports nothing from the zoo).

Embeddings, fine-tuned checkpoints, metrics folders and run records are keyed by it. A file is hashed
once and remembered, in this process and in ``<cache dir>/checkpoint_sha256.json`` keyed by (path,
size, mtime), so reopening a store of a 375 MB ViT-B checkpoint does not rehash it. Named models
carry theirs in the zoo's registry (``zoo.weights_sha256``); a loaded model carries its own
(``LoadedModel.sha256``, set at load).

``cache_dir()`` is also where the zoo looks for and fetches weights: ``$MEDSAM_CACHE_DIR``, else
``$XDG_CACHE_HOME/medsam_lib``, else ``~/.cache/medsam_lib``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..fileio import MedSAMError, atomic_write_text, sha256_file

_MEMO: dict[tuple, str] = {}
CACHE_FILE = "checkpoint_sha256.json"


def cache_dir() -> Path:
    """Where weights and their hashes are kept (not created until something is written)."""
    if os.environ.get("MEDSAM_CACHE_DIR"):
        return Path(os.environ["MEDSAM_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medsam_lib"


def _stat_key(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint file, computed once per (path, size, mtime)."""
    path = Path(path)
    if not path.is_file():
        raise MedSAMError(f"checkpoint {path} does not exist")
    key = _stat_key(path)
    if key in _MEMO:
        return _MEMO[key]
    cache_path = cache_dir() / CACHE_FILE
    text_key = json.dumps(list(key))
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    digest = cache.get(text_key) if isinstance(cache, dict) else None
    if not digest:
        digest = sha256_file(path)
        try:
            cache = cache if isinstance(cache, dict) else {}
            cache[text_key] = digest
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache_path, json.dumps(cache, indent=0))
        except OSError:
            pass  # a read-only cache folder only costs a rehash next time
    _MEMO[key] = digest
    return digest
