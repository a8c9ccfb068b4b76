"""Helpers shared by the embedding-store tests: a small curated store cut from the demo phantoms."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from profile_helpers import profile_in


def curate_demo(root: Path) -> Path:
    """Curate the synthetic phantom set into ``root`` and return the curated store's folder."""
    from medsam_lib.data.curate import curate_profile

    return curate_profile(profile_in(root)).path


def subset_store(source: Path, out: Path, n_images: int, preset: str | None = None) -> Path:
    """A curated store holding the first ``n_images`` images of ``source`` (cases shared by symlink),
    one per modality first so that every modality is present when ``n_images`` allows it."""
    from medsam_lib.data.store import read_index
    from medsam_lib.data.store_commit import write_index

    index = read_index(source / "index.csv")
    firsts = index.drop_duplicates("modality")["image_id"].tolist()
    order = firsts + [i for i in index["image_id"].drop_duplicates() if i not in firsts]
    keep = order[:n_images]
    out.mkdir(parents=True)
    info = json.loads((source / "curation.json").read_text(encoding="utf-8"))
    if preset is not None:
        info["preset"] = preset
    (out / "curation.json").write_text(json.dumps(info))
    (out / "cases").symlink_to((source / "cases").resolve(), target_is_directory=True)
    write_index(out, index[index["image_id"].isin(keep)])  # recorded as the committed index
    return out


def copy_store(source: Path, out: Path) -> Path:
    shutil.copytree(source, out, symlinks=True)
    return out


def store_arrays(store) -> dict[str, np.ndarray]:
    return {i: store.get(i) for i in store.ids()}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
