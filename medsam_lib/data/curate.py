"""Curation (paper 3.1-3.2): a manifest's cases -> 256 x 256 slices and binary targets on disk.

``curate(manifest, out, preset="paper")`` writes a *curated store*:

    out/curation.json                 preset, image size, seed, manifests and their cases
    out/cases/<data set>/<case>.npz   one file per case (a zip of .npy members, see below)
    out/index.csv                     one row per (image key, slice, target): the table below

Each case file is written in one atomic step (temporary file, then rename), so an interrupted run
leaves either the whole case or nothing; a rerun skips every case whose file already holds the
same inputs (same files by size and time, same data-set definition, same preset) and resumes.

Per case, 3D volumes are read once (image volumes one at a time), windowed once (the preset's
window over the whole volume) and then streamed slice by slice along the first array axis (the
out-of-plane axis, paper 3.2): only slices that keep a target are normalised, resized and
written. 2D images are treated as volumes of one slice.

Targets: each manifest target gives one binary mask per slice (several label values merged);
``instance`` targets give one per connected object (26-connected in 3D, 8-connected in 2D). A
target covering fewer than 100 pixels at 256 x 256 is dropped (paper 3.2; ``official_code``
instead removes small objects at native size, see ``preprocess.remove_small_objects``).

Split (paper 3.2): per data set, a seeded 80/20 train/test split by case (``splits.split_cases``).

The store's format (index columns, case-file members) and its reader, ``CuratedDataset``, live in
``medsam_lib.data.store``: training and evaluation import the reader only.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import find_objects

from .. import paper
from ..fileio import MedSAMError, atomic_path, atomic_write_text, make_folder, same_path, sha256_file
from ..layout import ResultsLayout
from .manifests import CaseSpec, DatasetSpec, Manifest, load_manifest, resolve_cases, resolve_root, safe_name
from .preprocess import (Window, apply_window, check_preset, intensity_window, remove_small_objects, resize_image,
                         resize_mask)
from .readers import MedicalImage, compact_labels, read_image, read_mask
from .splits import split_cases  # noqa: F401  (build_index uses it; kept importable from here)
from .store import (INDEX_COLUMNS, NEXT_INFO, PENDING, CuratedDataset, _load_store_info, curated_dir,  # noqa: F401
                    read_index)

STORE_VERSION = 2  # part of every case key: bump when a case file's content changes (older cases are redone)
IMAGE_SIZE = paper.CURATED_IMAGE_SIZE
SAMPLE_SIZE = 2000  # raw/normalised intensity samples kept per image, for the histograms


@dataclass
class CurationReport:
    """What one ``curate`` call did."""

    out: Path
    preset: str
    curated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    slices: int = 0
    dropped_small: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        text = (f"{len(self.curated)} case(s) curated, {len(self.skipped)} already done, {len(self.failed)} failed; "
                f"{self.rows} index rows in {self.out}")
        for case, error in self.failed.items():
            text += f"\n  failed {case}: {error}"
        return text


# --- reading one case -----------------------------------------------------------------------------

def _fingerprint(path: Path) -> list:
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
    img_shape = _as_stack(image).shape[:3]
    mask_shape = _as_stack(mask).shape[:3]
    if img_shape != mask_shape:
        what = "(Z, Y, X)" if image.is_volume else "(1, H, W)"
        return f"shape {what} {img_shape} vs mask {mask_shape}"
    if image.is_volume != mask.is_volume:
        return "one is a volume and the other a 2D image"
    if not image.is_volume:
        return None
    if not np.allclose(image.spacing, mask.spacing, rtol=1e-3, atol=1e-4):
        return f"spacing (Z, Y, X) {tuple(round(s, 5) for s in image.spacing)} vs mask {tuple(round(s, 5) for s in mask.spacing)} mm"
    if not np.allclose(image.origin, mask.origin, rtol=1e-4, atol=1e-2):
        return f"origin {tuple(round(o, 3) for o in image.origin)} vs mask {tuple(round(o, 3) for o in mask.origin)}"
    if not np.allclose(image.direction, mask.direction, atol=1e-4):
        return f"direction {tuple(round(d, 4) for d in image.direction)} vs mask {tuple(round(d, 4) for d in mask.direction)}"
    return None


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


def _case_key(dataset: DatasetSpec, case: CaseSpec, preset: str, fingerprints: dict) -> str:
    definition = {k: v for k, v in dataset.raw.items() if k not in ("cases", "notes", "citation", "license", "title")}
    payload = {"store_version": STORE_VERSION, "preset": preset, "size": IMAGE_SIZE, "dataset": definition,
               "case": [case.volume, case.case, case.images, case.masks], "files": fingerprints}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _read_json_member(npz, name: str):
    return json.loads(bytes(npz[name]).decode())


def _case_done(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path) as npz:
            return _read_json_member(npz, "meta").get("key") == key
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
            writer.add(f"image_{image_spec.key}_{z:04d}", resize_image(apply_window(stack[z], window), IMAGE_SIZE))
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
    masks = {m.key: read_mask(root / case.masks[m.key], m.encoding, m.threshold, m.palette) for m in dataset.masks}
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


# --- the store ------------------------------------------------------------------------------------

def _remove_stale_temporaries(out: Path) -> None:
    for folder in (out / "cases", out / PENDING):
        for tmp in folder.rglob(".*.part*"):
            tmp.unlink(missing_ok=True)


def _check_out(out: Path, manifest: Manifest, data_root: Path, resolved: dict) -> None:
    """Refuse an output folder that is not one: a file in the way, a folder holding other things, or
    one whose store files would land on an input."""
    if out.exists() and not out.is_dir():
        raise MedSAMError(f"--out {out}: a file is in the way; give a folder (new, empty, or a curated store)")
    if out.is_dir() and not (out / "curation.json").exists():
        other = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name != "cases")
        if other:
            raise MedSAMError(f"--out {out}: the folder holds other files ({', '.join(other[:5])}) and is not a curated "
                              "store; give a new or empty folder")
    if out.exists() and same_path(out, data_root):
        raise MedSAMError(f"--out {out} is the data root; choose another folder for the store")
    inputs = [data_root / p for ds in resolved.values() for c in ds for p in list(c.images.values()) + list(c.masks.values())]
    if manifest.path is not None:
        inputs.append(Path(manifest.path))
    target = out.resolve()
    written = {target / n for n in ("curation.json", "index.csv", NEXT_INFO)}
    folders = (target / "cases", target / PENDING)
    for item in inputs:  # each resolved once: data sets have thousands of files
        real = item.resolve()
        if (real == target or real in written or any(f == real or f in real.parents for f in folders)
                or (real.is_dir() and real in target.parents)):
            raise MedSAMError(f"--out {out}: the store would be written over or into the input {item}; "
                              "choose another folder")


def curate(manifest: Manifest | str | os.PathLike, out: str | os.PathLike, preset: str = "paper",
           root: str | os.PathLike | None = None, seed: int = 0, datasets: list[str] | None = None,
           keep_going: bool = False, progress: bool = True) -> CurationReport:
    """Curate every case of ``manifest`` (or of the named ``datasets``) into the store at ``out``.

    Resumable and idempotent (finished cases are skipped). On a bad case: MedSAMError naming it, or
    with ``keep_going`` it is reported and the rest continue.

    What a failure leaves: the store's description (``curation.json``), splits and ``index.csv``
    are written only once every case has succeeded (or been reported, with ``keep_going``). In an
    existing store the run's case files are written under ``.pending/`` and moved in only then, so
    after a failure the store is exactly as it was. Finished case files stay (``.pending/`` or, in a
    new store, ``cases/``), so a rerun resumes; a new store's folder is removed if no case finished. A folder without
    ``curation.json`` (a failed or killed first run) is reported by ``CuratedDataset`` as
    incomplete, with the command that finishes it.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    check_preset(preset)
    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    out = Path(out)
    data_root = resolve_root(manifest, root)
    chosen = [manifest.dataset(n) for n in datasets] if datasets else list(manifest.datasets)
    resolved = {ds.name: resolve_cases(ds, data_root) for ds in chosen}  # fails early on missing files
    _check_out(out, manifest, data_root, resolved)

    old = _load_store_info(out) if out.is_dir() else None
    info = copy.deepcopy(old) if old else {"store_version": STORE_VERSION, "preset": preset, "image_size": IMAGE_SIZE,
                                           "manifests": {}}
    if info.get("image_size") != IMAGE_SIZE:
        raise MedSAMError(f"{out}: store of {info.get('image_size')}-pixel images, not {IMAGE_SIZE}; "
                          "curate into a new folder")
    info["store_version"] = STORE_VERSION  # cases of an older version do not match their key: redone
    if info["preset"] != preset:
        raise MedSAMError(f"{out}: this store was curated with preset {info['preset']!r}, not {preset!r}; "
                          "curate into another folder (one store per preset)")
    info["seed"] = int(seed)
    entry = info["manifests"].setdefault(manifest.name, {"datasets": {}})
    entry.update({"sha256": manifest.sha256, "synthetic": manifest.synthetic})
    for ds in chosen:
        entry["datasets"][ds.name] = {
            "cases": {c.volume: {"case": c.case, "file": f"cases/{ds.name}/{safe_name(c.volume)}.npz"}
                      for c in resolved[ds.name]}}
    created = not out.exists()
    make_folder(out, "store folder")
    folders_before = {p for p in out.rglob("*") if p.is_dir()}
    _remove_stale_temporaries(out)

    report = CurationReport(out=out, preset=preset)
    jobs = [(ds, c) for ds in chosen for c in resolved[ds.name]]
    staged: list[str] = []  # this run's case files under .pending/, moved in by _finish
    try:
        for ds, case in tqdm(jobs, desc=f"curating {manifest.name} ({preset})", unit="case", disable=not progress):
            label = f"{ds.name}/{case.volume}"
            rel = f"cases/{ds.name}/{safe_name(case.volume)}.npz"
            files = [data_root / p for p in list(case.images.values()) + list(case.masks.values())]
            key = _case_key(ds, case, preset, {str(p.relative_to(data_root)): _fingerprint(p) for p in files})
            if _case_done(out / rel, key) or _case_done(out / PENDING / rel, key):
                report.skipped.append(label)
                if (out / PENDING / rel).is_file() and not _case_done(out / rel, key):
                    staged.append(rel)  # finished by an earlier, failed or killed, run
                continue
            out_file = out / PENDING / rel if old else out / rel  # an existing store changes only at the end
            out_file.parent.mkdir(parents=True, exist_ok=True)
            try:
                stats = curate_case(ds, case, data_root, out_file, preset, manifest.synthetic, key)
            except Exception as exc:  # noqa: BLE001 - every failure names its case; KeyboardInterrupt passes
                error = exc if isinstance(exc, MedSAMError) else MedSAMError(
                    f"{label}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
                if not str(error).startswith(label):
                    error = MedSAMError(f"{label}: {error}")
                if not keep_going:
                    raise error from exc
                report.failed[label] = str(error)
                continue
            if old:
                staged.append(rel)
            report.curated.append(label)
            report.dropped_small += stats["dropped_small"]
    except Exception:
        _tidy_after_failure(out, created, folders_before)
        raise
    index = _finish(out, info, staged)
    report.rows = len(index)
    report.slices = int(index[["image_id"]].drop_duplicates().shape[0]) if len(index) else 0
    report.seconds = time.perf_counter() - start
    return report


def _tidy_after_failure(out: Path, created: bool, folders_before: set) -> None:
    """Remove the empty folders a failed run made; a store folder it created with no finished case goes."""
    made = [p for p in out.rglob("*") if p.is_dir() and p not in folders_before]
    for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _finish(out: Path, info: dict, staged: list[str]):
    """Make the finished run the store, in an order that a kill at any point leaves readable or
    clearly incomplete: the new description is staged (its presence marks the store incomplete),
    pending case files move in, the index is rebuilt from the new description, and only then the
    description becomes ``curation.json``."""
    atomic_write_text(out / NEXT_INFO, json.dumps(info, indent=2))
    pending = out / PENDING
    for rel in staged:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(pending / rel, out / rel)
    if pending.is_dir() and not any(p.is_file() for p in pending.rglob("*")):
        shutil.rmtree(pending, ignore_errors=True)
    (out / "cases").mkdir(exist_ok=True)
    index = build_index(out, info)
    os.replace(out / NEXT_INFO, out / "curation.json")
    return index


def build_index(out: str | os.PathLike, info: dict | None = None):
    """Rebuild ``index.csv`` from the case files the store's manifests list (splits from the seed).

    ``info``: the store description to index (default: ``curation.json``)."""
    import pandas as pd

    out = Path(out)
    info = info if info is not None else _load_store_info(out)
    if info is None:
        raise MedSAMError(f"{out}: not a curated store (no curation.json); run `data curate` first")
    rows = []
    for entry in info["manifests"].values():
        for ds_name, ds in entry["datasets"].items():
            splits = split_cases([c["case"] for c in ds["cases"].values()], info.get("seed", 0), ds_name)
            for volume, c in ds["cases"].items():
                path = out / c["file"]
                if not path.is_file():
                    continue
                with np.load(path) as npz:
                    case_rows = _read_json_member(npz, "rows")
                for row in case_rows:
                    row["split"] = splits[c["case"]]
                    row["file"] = c["file"]
                rows.extend(case_rows)
    frame = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    with atomic_path(out / "index.csv") as tmp:
        frame.to_csv(tmp, index=False)
    return frame


# --- the notebooks' entry point -------------------------------------------------------------------

def curate_profile(data_source: str, shared_data_dir: str | os.PathLike, results_dir: str | os.PathLike,
                   seed: int = 0, preset: str = "paper", progress: bool = False) -> CuratedDataset:
    """Curate a profile's data and open the store.

    ``data_source="synthetic"``: the phantom set written (idempotently) to
    the results layout's ``synthetic_data`` folder with manifest ``synthetic``; ``"shared"``: the real cases in
    ``shared_data_dir`` with manifest ``shared_data``. Reruns reuse finished cases.
    """
    if data_source == "synthetic":
        from .phantoms import write_synthetic_set

        manifest, root = "synthetic", write_synthetic_set(ResultsLayout(results_dir).synthetic_data, seed)
    elif data_source == "shared":
        manifest, root = "shared_data", Path(shared_data_dir)
    else:
        raise MedSAMError(f"data_source must be 'synthetic' or 'shared', got {data_source!r}")
    out = curated_dir(results_dir, preset)
    curate(manifest, out, preset=preset, root=root, seed=seed, progress=progress)
    return CuratedDataset(out)
