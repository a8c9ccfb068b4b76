"""The SHA-256 of a model's weights: what embeddings and fine-tuned checkpoints are keyed by.

Zoo models carry theirs in the registry (their file is verified against it on first use); any other
file is hashed once and remembered, in this process and in ``<cache dir>/checkpoint_sha256.json``
keyed by (path, size, mtime), so reopening a store of a 375 MB ViT-B checkpoint does not rehash it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..fileio import MedSAMError, atomic_write_text, sha256_file
from . import zoo

_MEMO: dict[tuple, str] = {}
CACHE_FILE = "checkpoint_sha256.json"


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
    cache_path = zoo.cache_dir() / CACHE_FILE
    text_key = json.dumps(list(key))
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
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


def weights_sha256(model) -> str:
    """SHA-256 of the weights behind a zoo name, a checkpoint path or a ``LoadedModel``."""
    if isinstance(model, zoo.LoadedModel):
        name, path = model.name, Path(model.checkpoint)
    else:
        name, path = str(model), None
    if name in zoo.MODELS:
        spec = zoo.get_spec(name)
        named = zoo.weights_path(name)  # verified against the registry once per process
        if path is None or path.resolve() == named.resolve():
            if "sha256" in spec.hashes:
                return spec.hashes["sha256"]
            path = named
    return file_sha256(path if path is not None else Path(name))
