"""One case of a manifest -> one case file of a curated store (paper 3.1-3.2).

``curate_case`` reads a case's masks and images, checks they line up, and writes the case file in
one atomic step (temporary file, then rename): the slices that keep a target (windowed once over
the whole volume; each slice's uint8 pixels from ``preprocess.slice_pixels``, the rule the CLI and
the widget prompt with, resized to 256 x 256), the resized label maps (each stored once per slice,
shared by the targets on it), intensity samples, and the case's
index rows (``rows``) and description (``meta``). ``case_key`` and ``case_done`` let a run skip a
case whose file already holds the same inputs. The run over a manifest is ``curate.curate``; the
format is described, and read, in ``store``.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
from scipy.ndimage import find_objects

from .. import paper
from ..fileio import MedSAMError, atomic_path, sha256_file
from .grid import grid_problem
from .manifests import CaseSpec, DatasetSpec
from .preprocess import (Window, apply_window, check_preset, intensity_window, remove_small_objects, resize_image,
                         resize_mask, slice_pixels)
from .readers import MedicalImage, compact_labels, read_image, read_mask
from .store import read_json_member

STORE_VERSION = 3  # part of every case key: bump when a case file's content changes (older cases are redone)
IMAGE_SIZE = paper.CURATED_IMAGE_SIZE
SAMPLE_SIZE = 2000  # raw/normalised intensity samples kept per image, for the histograms


def fingerprint(path: Path) -> list:
    if path.is_dir():
        return sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in path.iterdir() if p.is_file())
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _sha256(path: Path) -> str:
    if path.is_dir():  # DICOM series: hash of the sorted file hashes
        digest = hashlib.sha256()
        for p in sorted(q for q in path.iterdir() if q.is_file()):
            digest.update(f"{p.name}:{sha256_file(p)}\n".encode())
        return digest.hexdigest()
    return sha256_file(path)


def _as_stack(image: MedicalImage) -> np.ndarray:
    """(Z, H, W[, C]) view: volumes as they are, a 2D image as one slice."""
    return image.array if image.is_volume else image.array[None]


def _geometry_problem(image: MedicalImage, mask: MedicalImage) -> str | None:
    return grid_problem(image, mask, "mask")  # the one grid rule (data/grid.py)


def _present_labels(labels: np.ndarray) -> set[int]:
    if labels.dtype in (np.uint8, np.uint16):
        counts = np.bincount(labels.ravel())
        return {int(v) for v in np.flatnonzero(counts)}
    return {int(v) for v in np.unique(labels)}


class _CaseWriter:
    """Members of one case file, streamed into a zip that ``np.load`` reads as an .npz."""

    def __init__(self, path: Path):
        self.zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)

    def add(self, name: str, array: np.ndarray) -> None:
        with self.zip.open(name + ".npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)

    def add_json(self, name: str, value) -> None:
        self.add(name, np.frombuffer(json.dumps(value).encode(), dtype=np.uint8))

    def close(self) -> None:
        self.zip.close()


def case_key(dataset: DatasetSpec, case: CaseSpec, preset: str, fingerprints: dict) -> str:
    definition = {k: v for k, v in dataset.raw.items() if k not in ("cases", "notes", "citation", "license", "title")}
    payload = {"store_version": STORE_VERSION, "preset": preset, "size": IMAGE_SIZE, "dataset": definition,
               "case": [case.volume, case.case, case.images, case.masks], "files": fingerprints}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def case_done(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path) as npz:
            return read_json_member(npz, "meta").get("key") == key
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return False


def _write_masks(writer: _CaseWriter, dataset: DatasetSpec, stacks: dict, instance_maps: dict,
                 min_pixels: int) -> tuple[list, int]:
    """Resize and store each slice's label maps; return the kept targets and how many were dropped.

    Each label map (and instance map) of a slice is resized once (nearest neighbour commutes with
    picking label values) and stored once; a target's mask is then isin(map, its labels), or
    map == its instance number. Kept entries: (slice, target index, instance, member, pixels, box).
    """
    kept, dropped = [], 0
    n_slices = next(iter(stacks.values())).shape[0]
    for z in range(n_slices):
        maps = {("labels", key): stack[z] for key, stack in stacks.items() if stack[z].any()}
        maps.update({("instances", t_idx): comp[z] for t_idx, comp in instance_maps.items() if comp[z].any()})
        small, stats, written = {}, {}, set()
        for map_key, plane in maps.items():
            small[map_key] = resize_mask(plane, IMAGE_SIZE)
            stats[map_key] = (np.bincount(small[map_key].ravel()),  # pixels per value at 256 x 256
                              find_objects(small[map_key]),  # bounding slices per value
                              set(np.flatnonzero(np.bincount(plane.ravel())).tolist()))  # values at native size
        for t_idx, t in enumerate(dataset.targets):
            map_key = ("instances", t_idx) if t_idx in instance_maps else ("labels", t.mask)
            if map_key not in maps:
                continue
            counts, objects, native_values = stats[map_key]
            if t_idx in instance_maps:
                pieces = [(i, (i,)) for i in sorted(native_values - {0})]
            else:
                pieces = [(0, t.labels)] if native_values & set(t.labels) else []
            for inst, values in pieces:
                present = [v for v in values if v < len(counts) and counts[v]]
                pixels = int(sum(counts[v] for v in present))
                if not present or pixels < min_pixels:
                    dropped += 1
                    continue
                member = (f"labels_{t.mask}_{z:04d}" if map_key[0] == "labels" else f"instances_{t_idx:02d}_{z:04d}")
                if member not in written:
                    writer.add(member, small[map_key])
                    written.add(member)
                rows_, cols_ = zip(*(objects[v - 1] for v in present))
                box = (min(c.start for c in cols_), min(r.start for r in rows_),
                       max(c.stop for c in cols_) - 1, max(r.stop for r in rows_) - 1)
                kept.append((z, t_idx, inst, member, pixels, box))
    return kept, dropped


def _write_images(writer: _CaseWriter, dataset: DatasetSpec, case: CaseSpec, root: Path, reference: MedicalImage,
                  preset: str, slices: list[int]) -> dict[str, str]:
    """Window each image of the case once, then normalise, resize and store the needed slices one at
    a time (plus intensity samples); returns image key -> source SHA-256."""
    where = f"{dataset.name}/{case.volume}"
    hashes = {}
    for image_spec in dataset.images:
        image = read_image(root / case.images[image_spec.key], channel=image_spec.channel)
        problem = _geometry_problem(image, reference)
        if problem:
            raise MedSAMError(f"{where}: image {image.path} and mask {reference.path} do not line up: "
                              f"{problem}; resample one onto the other")
        stack = _as_stack(image)
        if stack.ndim == 4 and stack.shape[3] == 3 and (stack == stack[..., :1]).all():
            stack = stack[..., 0]  # grey stored as RGB
        source = f"{where} image {image_spec.key} ({image.path})"
        if image_spec.intensity == "display":
            low, high = float(stack.min()), float(stack.max())
            if low < 0 or high > 255:
                raise MedSAMError(f"{source}: intensity 'display' needs values within 0-255, found "
                                  f"{low:g}..{high:g}; use intensity 'raw' to apply the preset's window")
            window = Window(0.0, 255.0)
        else:
            window = intensity_window(stack, image_spec.modality, preset, source)
        rng = np.random.default_rng(zlib.crc32(f"{where}/{image_spec.key}".encode()))
        flat = stack.reshape(-1)
        raw_sample = flat[rng.integers(0, flat.size, size=min(SAMPLE_SIZE, flat.size))].astype(np.float32)
        writer.add(f"sample_raw_{image_spec.key}", raw_sample)
        writer.add(f"sample_norm_{image_spec.key}", apply_window(raw_sample, window))
        for z in slices:
            pixels = slice_pixels(stack, z, source=source, window=window)  # what the CLI and the widget prompt
            writer.add(f"image_{image_spec.key}_{z:04d}", resize_image(pixels, IMAGE_SIZE))
        hashes[image_spec.key] = _sha256(root / case.images[image_spec.key])
        del stack, flat, image  # one image volume in memory at a time
    return hashes


def curate_case(dataset: DatasetSpec, case: CaseSpec, root: Path, out_file: Path, preset: str = "paper",
                synthetic: bool = False, key: str = "") -> dict:
    """Curate one case into ``out_file`` (atomically); returns {"rows", "slices", "dropped_small"}.

    Raises MedSAMError naming the data set, case and file for any bad input; nothing is left behind.
    A case whose mask holds none of a required target's labels (an empty mask, say) is refused;
    ``data init`` applies the same rule and lists such a pair instead of writing it (``byod``).
    """
    spec = check_preset(preset)
    where = f"{dataset.name}/{case.volume}"
    masks = {m.key: read_mask(root / case.masks[m.key], m.encoding, m.threshold, m.palette, m.scale)
             for m in dataset.masks}
    reference = masks[dataset.masks[0].key]
    for m in masks.values():
        problem = _geometry_problem(m, reference)
        if problem:
            raise MedSAMError(f"{where}: masks {m.path} and {reference.path} do not line up: {problem}")
    present = {k: _present_labels(m.array) for k, m in masks.items()}
    for t in dataset.targets:
        if not (set(t.labels) & present[t.mask]) and not t.optional:
            shown = sorted(present[t.mask] - {0})
            if not shown:
                raise MedSAMError(f"{where}: mask {masks[t.mask].path} is empty (no foreground label), but target "
                                  f"{t.name!r} needs label(s) {list(t.labels)}; fix the mask, leave the case out, "
                                  "or mark the target optional")
            raise MedSAMError(f"{where}: target {t.name!r} needs label(s) {list(t.labels)} but mask "
                              f"{masks[t.mask].path} holds only {shown[:30]}{' ...' if len(shown) > 30 else ''}; "
                              "fix the manifest's labels or mark the target optional")
    stacks = {k: remove_small_objects(_as_stack(m), preset) for k, m in masks.items()}
    n_slices, height, width = next(iter(stacks.values())).shape[:3]
    instance_maps = {}
    for t_idx, t in enumerate(dataset.targets):
        if t.instance:
            import cc3d

            binary = np.isin(stacks[t.mask], t.labels)
            if n_slices > 1:
                components = cc3d.connected_components(binary, connectivity=26)
            else:
                components = cc3d.connected_components(np.ascontiguousarray(binary[0]), connectivity=8)[None]
            instance_maps[t_idx] = compact_labels(components)
    if reference.is_volume:
        spacing, spacing_known = tuple(float(s) for s in reference.spacing), True
    else:
        sp = dataset.spacing_2d or (1.0, 1.0)
        spacing, spacing_known = (1.0, float(sp[0]), float(sp[1])), dataset.spacing_2d is not None
    mask_hashes = ";".join(_sha256(root / case.masks[m.key]) for m in dataset.masks)

    with atomic_path(out_file) as tmp:
        writer = _CaseWriter(tmp)
        try:
            kept, dropped = _write_masks(writer, dataset, stacks, instance_maps, spec.min_target_pixels)
            image_hashes = _write_images(writer, dataset, case, root, reference, preset, sorted({k[0] for k in kept}))
            rows = [{
                "dataset": dataset.name, "case": case.case, "volume": case.volume,
                "image_key": image_spec.key, "modality": image_spec.modality,
                "task": dataset.targets[t_idx].paper_tasks.get(image_spec.key, ""),
                "stand_in": dataset.targets[t_idx].stand_in, "synthetic": synthetic, "slice": z, "n_slices": n_slices,
                "target": dataset.targets[t_idx].name, "labels": ";".join(map(str, dataset.targets[t_idx].labels)),
                "instance": inst, "x0": int(box[0]), "y0": int(box[1]), "x1": int(box[2]), "y1": int(box[3]),
                "pixels": pixels, "height": height, "width": width, "spacing_z": spacing[0],
                "spacing_y": spacing[1], "spacing_x": spacing[2], "spacing_known": spacing_known,
                "curated_spacing_y": spacing[1] * height / IMAGE_SIZE,
                "curated_spacing_x": spacing[2] * width / IMAGE_SIZE,
                "image_sha256": image_hashes[image_spec.key], "mask_sha256": mask_hashes,
                "image_member": f"image_{image_spec.key}_{z:04d}", "mask_member": member,
                "image_id": f"{dataset.name}/{case.volume}/{image_spec.key}/{z}"}
                for image_spec in dataset.images for z, t_idx, inst, member, pixels, box in kept]
            writer.add_json("rows", rows)
            writer.add_json("meta", {"key": key, "dataset": dataset.name, "volume": case.volume, "case": case.case,
                                     "preset": preset, "image_size": IMAGE_SIZE, "dropped_small": dropped,
                                     "modalities": {i.key: i.modality for i in dataset.images}})
        finally:
            writer.close()
    return {"rows": len(rows), "slices": len({(r["image_key"], r["slice"]) for r in rows}), "dropped_small": dropped}
