"""Ground truth of a whole source volume on the curated 256 grid (``slices="volume"``).

Curation keeps only the slices where a target has at least 100 px at 256 x 256 (paper 3.2) and
stores images only for kept slices. The released code's evaluation counted every ground-truth
slice; to score that way we re-read the source mask through the store's manifest, apply the same
preset rule for small objects and the same nearest-neighbour resize, and take every slice.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ..fileio import MedSAMError


@functools.lru_cache(maxsize=4)
def _label_stack(manifest_name: str, dataset_name: str, volume: str, mask_key: str, root: str, preset: str):
    from ..data.manifests import load_manifest, resolve_cases
    from ..data.preprocess import remove_small_objects
    from ..data.readers import read_mask

    manifest = load_manifest(manifest_name)
    dataset = manifest.dataset(dataset_name)
    case = next((c for c in resolve_cases(dataset, root) if c.volume == volume), None)
    if case is None:
        raise MedSAMError(f"{root}: volume {volume!r} of data set {dataset_name!r} not found; "
                          "slices='volume' needs the data the store was curated from")
    spec = next(m for m in dataset.masks if m.key == mask_key)
    mask = read_mask(Path(root) / case.masks[mask_key], spec.encoding, spec.threshold, spec.palette, spec.scale)
    stack = mask.array if mask.is_volume else mask.array[None]
    return dataset, remove_small_objects(stack, preset)


def source_target_volume(store, row, source_root: str | os.PathLike) -> np.ndarray:
    """(n_slices, 256, 256) bool: the row's target (or instance) on every slice of its source."""
    from ..data.preprocess import resize_mask
    from ..data.readers import compact_labels

    manifests = list(store.info.get("manifests", {}))
    name = next((m for m in manifests if row["dataset"] in store.info["manifests"][m]["datasets"]), None)
    if name is None:
        raise MedSAMError(f"{store.path}: data set {row['dataset']!r} is not in the store's manifests")
    from ..data.manifests import load_manifest

    dataset = load_manifest(name).dataset(row["dataset"])
    target = next((t for t in dataset.targets if t.name == row["target"]), None)
    if target is None:
        raise MedSAMError(f"manifest {name}: data set {row['dataset']!r} has no target {row['target']!r}")
    _, stack = _label_stack(name, row["dataset"], row["volume"], target.mask, str(source_root), store.preset)
    binary = np.isin(stack, target.labels)
    if int(row["instance"]) > 0:
        import cc3d

        if binary.shape[0] > 1:
            comp = cc3d.connected_components(binary, connectivity=26)
        else:
            comp = cc3d.connected_components(np.ascontiguousarray(binary[0]), connectivity=8)[None]
        planes = compact_labels(comp) == int(row["instance"])
    else:
        planes = binary
    return np.stack([resize_mask(p.astype(np.uint8)) > 0 for p in planes])
