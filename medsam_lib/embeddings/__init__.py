"""The on-disk embedding store: every curated image's image-encoder embedding, computed once.

    from medsam_lib.embeddings import build_store, open_store
    store = build_store(curated_dir, "litemedsam", out)     # resumes / reuses a finished store
    store = open_store(out, model="litemedsam", curated=curated_dir)   # refuses a mismatched store
    store.get(image_id)                                     # (256, 64, 64) float16

``store.py`` holds the format and reader, ``build.py`` the writer, ``keys.py`` what an embedding is
keyed by, ``encoder.py`` the batched fast encoder paths, ``cli.py`` ``python -m medsam_lib embed``.
"""
from .build import build_store
from .store import EmbeddingStore, open_store

__all__ = ["EmbeddingStore", "build_store", "open_store"]
