"""The annotation state of a box-prompting session, without any widget.

    state = Annotations(segment=lambda slice_index, box, points: (mask, predicted_iou), labels=["liver"],
                        image_size=(H, W), is_volume=False)
    state.set_boxes(None, [((10, 12, 40, 50), "liver")])   # the boxes on a slice (None: a 2D image)
    state.set_points(None, 0, [(25, 30, 1), (12, 40, 0)])  # box 0 refined by a foreground and a background click
    state.undo(None); state.clear(None)
    state.masks_by_label((H, W))       # label -> union of its masks
    state.autosave(folder, extra)       # boxes.json + masks.npz, atomically
    read_autosave(folder, identity)     # the boxes of the last session on the same image, to restore
    state.export(folder, stem, image)   # one mask per label (PNG / NIfTI) + <stem>_boxes.json

Boxes follow ``medsam_lib.geometry``: integer pixel indices, x1/y1 inclusive (``BOX_CONVENTION``, which
every saved JSON states). A box may carry points, clicks that refine its mask: (x, y, label) with x, y the
clicked pixel's indices and label 1 (foreground) or 0 (background), SAM's point prompt (``POINT_CONVENTION``);
the box and its points are segmented together. Points belong to a box on its slice: a box moved or resized
in place keeps them, a box removed loses them. Each (slice, box, points) is segmented once: masks are cached.
Autosaves and exports write ``points`` ([[x, y], ...]) and ``point_labels`` per box, as the pinned prompts
do (``evaluation.pinned``); a file without them (written before points existed) restores boxes alone.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.readers import MedicalImage, write_mask
from ..fileio import MedSAMError, atomic_path, atomic_write_text
from ..models.quality import quality_label

MASK_CACHE_SIZE = 512
AUTOSAVE_BOXES, AUTOSAVE_MASKS = "boxes.json", "masks.npz"
BOX_CONVENTION = ("box: [x0, y0, x1, y1], integer pixel indices of the image (x: column, y: row, from 0 at the "
                  "top-left), x1/y1 inclusive (medsam_lib.geometry): the box covers columns x0..x1 and rows "
                  "y0..y1; a drawn rectangle's edges are rounded to the nearest pixel boundary first")
POINT_CONVENTION = ("points: [[x, y], ...], the clicked pixels' indices (as the box's), with point_labels 1 "
                    "(foreground: part of the target) or 0 (background: not part of it), segmented with their box")
Point = tuple[int, int, int]  # x, y (pixel indices), label (1 foreground, 0 background)


@dataclass
class Annotation:
    """One box and its mask."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels (x1, y1 inclusive)
    label: str
    mask: np.ndarray  # (H, W) bool at the image's resolution
    score: float  # the model's predicted IoU
    slice_index: int | None  # None for 2D images
    points: tuple[Point, ...] = ()  # clicks refining the box's mask, in the order given

    @property
    def quality(self) -> str:
        """``models.quality``'s word for the predicted IoU: "ok", "likely-wrong" ("unknown": no mask yet)."""
        return quality_label(self.score) if math.isfinite(self.score) else "unknown"

    def as_dict(self) -> dict:
        return {"box": [int(v) for v in self.box], "label": self.label, "slice_index": self.slice_index,
                "points": [[x, y] for x, y, _ in self.points], "point_labels": [lab for _, _, lab in self.points],
                "predicted_iou": round(self.score, 4), "quality": self.quality, "mask_pixels": int(self.mask.sum())}


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "label"


def stem(path: str) -> str:
    """A file name without its (possibly double) image suffix."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
                   ".bmp", ".gif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_point(point, image_size: tuple[int, int]) -> Point:
    """(x, y, label) -> whole-number pixel indices inside an (H, W) image and a label 1 or 0; MedSAMError otherwise."""
    try:
        x, y, label = (float(v) for v in point)
    except (TypeError, ValueError):
        raise MedSAMError(f"point {point!r} is not (x, y, label) with label 1 (foreground) or 0 (background)") from None
    h, w = image_size
    if not all(math.isfinite(v) and v.is_integer() for v in (x, y)):
        raise MedSAMError(f"point ({x:g}, {y:g}) is not whole pixel indices")
    if not (0 <= x < w and 0 <= y < h):
        raise MedSAMError(f"point ({x:g}, {y:g}) lies outside the image ({w} x {h} pixels)")
    if label not in (0.0, 1.0):
        raise MedSAMError(f"point ({x:g}, {y:g}) has label {label:g}; need 1 (foreground) or 0 (background)")
    return int(x), int(y), int(label)


class Annotations:
    """Boxes, their points and masks per slice; ``segment(slice_index, box, points) -> (mask, score)`` makes
    the masks (``points``: a tuple of (x, y, label), empty for a box alone)."""

    def __init__(self, segment: Callable, labels: list[str], image_size: tuple[int, int], is_volume: bool):
        self._segment = segment
        self.labels = list(labels)
        self.image_size = tuple(image_size)
        self.is_volume = is_volume
        self.by_slice: dict[int | None, list[Annotation]] = {}
        self.points: dict[tuple, tuple[Point, ...]] = {}  # (slice_index, box, label) -> that box's points
        self._cache: dict[tuple, tuple[np.ndarray, float]] = {}

    def on(self, slice_index: int | None) -> list[Annotation]:
        return list(self.by_slice.get(slice_index, []))

    def all(self) -> list[Annotation]:
        return [a for key in sorted(self.by_slice, key=lambda k: -1 if k is None else k) for a in self.by_slice[key]]

    def points_of(self, slice_index: int | None, box, label: str) -> tuple[Point, ...]:
        return self.points.get((slice_index, tuple(float(v) for v in box), label), ())

    def annotate(self, slice_index: int | None, box, label: str) -> Annotation:
        if label not in self.labels:
            raise MedSAMError(f"label {label!r} is not one of {self.labels}")
        box = tuple(float(v) for v in box)
        if not all(v.is_integer() for v in box):
            raise MedSAMError(f"box {box} is not whole pixel indices (events.parse_box rounds drawn boxes)")
        points = self.points_of(slice_index, box, label)
        key = (slice_index, *box, points)
        if key not in self._cache:
            self._cache[key] = self._segment(slice_index, box, points)
            while len(self._cache) > MASK_CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
        mask, score = self._cache[key]
        return Annotation(box=box, label=label, mask=mask, score=float(score), slice_index=slice_index, points=points)

    def has_mask(self, slice_index: int | None, box, label: str) -> bool:
        """True when the mask of the box (with its points) on that slice is cached (setting it needs no model pass)."""
        return (slice_index, *(float(v) for v in box), self.points_of(slice_index, box, label)) in self._cache

    def cached(self, slice_index: int | None, boxes: list[tuple]) -> bool:
        """True when ``set_boxes(slice_index, boxes)`` needs no model pass: every box's mask, with the points
        it would have (``_points_following``), is cached."""
        points = self._points_following(slice_index, self.on(slice_index), boxes)
        keys = [(slice_index, tuple(float(v) for v in box), label) for box, label in boxes]
        return all((k[0], *k[1], points.get(k, ())) in self._cache for k in keys)

    def _points_following(self, slice_index: int | None, before: list[Annotation], boxes: list[tuple]) -> dict:
        """The slice's points once its boxes are ``boxes``: a box kept keeps its points; where exactly one box of
        a list of the same length changed (moved, resized or relabelled in the widget), the changed box takes
        the points of the one it replaced; the points of boxes no longer there are dropped."""
        mine = {k: v for k, v in self.points.items() if k[0] == slice_index}
        old = [(a.box, a.label) for a in before]
        new = [(tuple(float(v) for v in box), label) for box, label in boxes]
        changed = [i for i, (o, n) in enumerate(zip(old, new)) if o != n] if len(old) == len(new) else []
        if len(changed) == 1 and old[changed[0]] not in new and (slice_index, *new[changed[0]]) not in mine:
            carried = mine.get((slice_index, *old[changed[0]]))
            if carried:
                mine[(slice_index, *new[changed[0]])] = carried
        keep = {(slice_index, *b) for b in new}
        return {k: v for k, v in mine.items() if k in keep}

    def set_boxes(self, slice_index: int | None, boxes: list[tuple]) -> tuple[list[Annotation], list[Annotation]]:
        """Make ``boxes`` [(box, label), ...] the boxes of a slice (with their points, ``_points_following``);
        returns (before, after)."""
        before = self.on(slice_index)
        saved = self.points
        self.points = {**{k: v for k, v in saved.items() if k[0] != slice_index},
                       **self._points_following(slice_index, before, boxes)}
        try:
            self.by_slice[slice_index] = [self.annotate(slice_index, box, label) for box, label in boxes]
        except BaseException:
            self.points = saved  # nothing changed: the boxes and points stay as they were
            raise
        return before, self.on(slice_index)

    def set_points(self, slice_index: int | None, position: int, points) -> tuple[Annotation, Annotation]:
        """Make ``points`` [(x, y, label), ...] the points of the slice's box ``position`` (0: its first box) and
        segment the box with them (none: the box alone); returns (before, after). MedSAMError for no such box
        or a bad point (``check_point``); then nothing changes."""
        current = self.on(slice_index)
        if not 0 <= position < len(current):
            raise MedSAMError(f"no box {position + 1} here: {len(current)} box(es) on this "
                              f"{'slice' if self.is_volume else 'image'}")
        checked = tuple(check_point(p, self.image_size) for p in points)
        before = current[position]
        key = (slice_index, before.box, before.label)
        saved = self.points.get(key)
        self.points.pop(key, None)
        if checked:
            self.points[key] = checked
        try:
            after = self.annotate(slice_index, before.box, before.label)
        except BaseException:
            self.points.pop(key, None)
            if saved:
                self.points[key] = saved
            raise
        self.by_slice[slice_index] = [after if (a.box, a.label) == (before.box, before.label) else a for a in current]
        return before, after

    def _prune(self, slice_index: int | None) -> None:
        """Forget the points of boxes no longer on the slice."""
        keep = {(slice_index, a.box, a.label) for a in self.on(slice_index)}
        self.points = {k: v for k, v in self.points.items() if k[0] != slice_index or k in keep}

    def undo(self, slice_index: int | None) -> Annotation | None:
        current = self.on(slice_index)
        if not current:
            return None
        self.by_slice[slice_index] = current[:-1]
        self._prune(slice_index)
        return current[-1]

    def clear(self, slice_index: int | None) -> int:
        removed = len(self.on(slice_index))
        self.by_slice[slice_index] = []
        self._prune(slice_index)
        return removed

    def masks_by_label(self, volume_shape: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
        """Label -> union of its masks: (H, W) bool for 2D images, ``volume_shape`` (Z, H, W) for volumes."""
        out: dict[str, np.ndarray] = {}
        shape = volume_shape if self.is_volume else self.image_size
        for a in self.all():
            target = out.setdefault(a.label, np.zeros(shape, dtype=bool))
            if self.is_volume:
                target[a.slice_index or 0] |= a.mask
            else:
                target |= a.mask
        return out

    def state(self, **extra) -> dict:
        return {"image_size": list(self.image_size), "is_volume": self.is_volume, "labels": self.labels,
                "box_convention": BOX_CONVENTION, "point_convention": POINT_CONVENTION,
                "annotations": [a.as_dict() for a in self.all()], **extra}

    def autosave(self, folder: Path, **extra) -> None:
        """``boxes.json`` and ``masks.npz`` in ``folder``, each written atomically (a crash mid-write
        leaves the previous file whole)."""
        annotations = self.all()
        masks = np.array([a.mask for a in annotations], dtype=bool).reshape(len(annotations), *self.image_size)
        slices = np.array([-1 if a.slice_index is None else a.slice_index for a in annotations])
        with atomic_path(folder / AUTOSAVE_MASKS, suffix=".npz") as tmp:
            np.savez_compressed(tmp, masks=masks, slices=slices)
        atomic_write_text(folder / AUTOSAVE_BOXES, json.dumps(self.state(**extra), indent=2))

    def export(self, folder: Path, name: str, image: MedicalImage, **extra) -> list[Path]:
        """One mask per label into an existing folder, and the boxes as JSON; every file atomically.

        2D images: ``<name>_<label>.png`` (0/255). Volumes: ``<name>_<label>.nii.gz`` (0/1) with the
        source's spacing, origin and direction.
        """
        if not str(folder).strip() or not Path(folder).is_dir():
            raise MedSAMError(f"export folder {str(folder)!r} does not exist (create it first); nothing written")
        folder = Path(folder)
        masks = self.masks_by_label(image.array.shape[:3] if self.is_volume else None)
        if not masks:
            raise MedSAMError("nothing to export: draw a box first")
        base = safe_name(name)
        suffix = ".nii.gz" if self.is_volume else ".png"
        written = []
        for label, mask in masks.items():
            path = folder / f"{base}_{safe_name(label)}{suffix}"
            write_mask(mask, path, reference=image if self.is_volume else None)
            written.append(path)
        boxes_path = folder / f"{base}_boxes.json"
        atomic_write_text(boxes_path, json.dumps(self.state(**extra), indent=2))
        written.append(boxes_path)
        return written


def image_identity(image: MedicalImage) -> dict:
    """What makes an autosave belong to an image: its resolved path, shape and a digest of its pixels."""
    array = np.ascontiguousarray(image.array)
    path = image.path if image.path == "array" else str(Path(image.path).resolve())
    return {"path": path, "shape": list(array.shape), "dtype": str(array.dtype),
            "blake2b": hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest()}


def keep_aside(folder: Path) -> list[Path]:
    """Rename ``boxes.json`` and ``masks.npz`` to ``boxes.<time>.json`` / ``masks.<time>.npz`` (the
    time the boxes were last saved), so that a new session's autosave never replaces them."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime((folder / AUTOSAVE_BOXES).stat().st_mtime))
    for n in itertools.count():
        tag = stamp + (f"-{n}" if n else "")
        targets = {name: folder / f"{Path(name).stem}.{tag}{Path(name).suffix}" for name in (AUTOSAVE_BOXES,
                                                                                            AUTOSAVE_MASKS)}
        if not any(t.exists() for t in targets.values()):
            break
    kept = []
    for name, target in targets.items():
        if (folder / name).is_file():
            os.replace(folder / name, target)
            kept.append(target)
    return kept


def _saved_points(entry: dict) -> tuple:
    """An entry's ``points`` and ``point_labels`` as ((x, y, label), ...); none in a file written before points."""
    xy, labels = entry.get("points") or [], entry.get("point_labels") or []
    if len(xy) != len(labels):
        raise ValueError(f"{len(xy)} points but {len(labels)} point_labels in {entry!r}")
    out = []
    for point, label in zip(xy, labels):
        x, y = point
        out.append((float(x), float(y), float(label)))
    return tuple(out)


def _grouped(entries: list[dict]) -> dict[int | None, list[tuple]]:
    out: dict[int | None, list[tuple]] = {}
    for entry in entries:
        index = None if entry["slice_index"] is None else int(entry["slice_index"])
        out.setdefault(index, []).append((tuple(float(v) for v in entry["box"]), str(entry["label"]),
                                          _saved_points(entry)))
    return out


def read_autosave(folder: Path, identity: dict) -> tuple[dict[int | None, list[tuple]], list[str]]:
    """The boxes saved in ``folder/boxes.json`` by the last session on the same image, per slice, as
    [(box, label, points), ...] (the boxes still waiting for their slice included; ``points`` as
    ((x, y, label), ...), unchecked, empty in files written before points), and what to tell the user.

    An autosave of another image, or one that cannot be read, is kept aside (``keep_aside``), never
    overwritten; then nothing is restored.
    """
    path = folder / AUTOSAVE_BOXES
    if not path.is_file():
        return {}, []
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        same = isinstance(saved, dict) and saved.get("image_identity") == identity
        by_slice = _grouped(saved.get("annotations", [])) if same else {}
        by_slice.update(_grouped(saved.get("boxes_waiting", [])) if same else {})  # a slice's newest boxes
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        kept = keep_aside(folder)
        return {}, [f"autosave {path} could not be read ({type(exc).__name__}: {exc}); kept as "
                    f"{', '.join(p.name for p in kept)}"]
    if not same:
        kept = keep_aside(folder)
        return {}, [f"autosave {path} is of another image; kept as {', '.join(p.name for p in kept)}"]
    n = sum(map(len, by_slice.values()))
    return by_slice, [f"restored {n} box(es) from {path} (the last session on this image)"] if n else []
