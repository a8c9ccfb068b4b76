"""Pinned prompts: the exact prompts an evaluation used, written beside its metrics, and replayed.

    evaluate_store(store, model, out_dir, options)          # writes out_dir/prompts.json beside metrics.csv
    pinned = read_prompts("run_a/prompts.json")             # checked: MedSAMError naming the file and the problem
    evaluate_store(store, other_model, "run_b", options, prompts=pinned)   # the same boxes, another model
    python -m medsam_lib evaluate --curated DIR --model M --out DIR --prompts run_a/prompts.json

Replaying a file prompts exactly the slices it lists with exactly its boxes (and points) instead of
deriving boxes from the ground truth; slices it does not list get no prompt and predict nothing, as
in the run that wrote it (``gt``: every ground-truth slice; ``propagate``: the middle slice, then each
slice out to the one whose prediction vanished). So replaying a run's own file with the same model
gives the same masks and the same metrics, row for row, and two people compare two models on the
same boxes. The rows' box options (``protocol``, ``test_boxes``, ``box_margin``, ``box_jitter``,
``seed``) are the file's (``replay_options``): they say how its boxes were made.

File (JSON, ``"schema": SCHEMA``, ``"version": PROMPTS_VERSION``; written atomically)::

    {"schema": "medsam_lib pinned prompts", "version": 1,
     "made_by": {"model", "checkpoint_sha256", "protocol", "test_boxes", "box_margin", "box_jitter", "seed",
                 "split"},
     "store": ..., "preset": ..., "image_size": [256, 256], "model_input": "lite256",
     "box_convention": ..., "replayed_from": null or {"file", "sha256"},
     "targets": [{"dataset", "case", "volume", "image_key", "target", "instance",
                  "slices": [{"slice": 12, "image_id": ..., "box": [x0, y0, x1, y1], "box_model": [...],
                              "points": [[x, y], ...], "point_labels": [1, 0, ...], "points_model": [...]}]}]}

``slice`` is the curated slice number (the index's ``slice``); ``box`` and ``points`` are pixel
indices of the curated 256 x 256 image (``medsam_lib.geometry``: x1/y1 inclusive), what the predictor
was given; ``box_model`` / ``points_model`` the same in the model's input pixels as the run's model
used them (``InputTransform.boxes_to_model``; ``model_input`` names the transform). A replay feeds
``box`` and ``points`` to its own model, so a file made by LiteMedSAM (256 input) replays on a ViT-B
model (1024) with the same boxes; ``box_model`` is a record, not an input. Points (labels 1
foreground, 0 background) are optional; a slice without them is a box alone.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import paper
from ..fileio import MedSAMError, atomic_write_text, sha256_file
from .inference import TARGET_KEY, segment

SCHEMA = "medsam_lib pinned prompts"
PROMPTS_VERSION = 1
PROMPTS_FILE = "prompts.json"  # its name in an evaluation's output folder
BOX_OPTIONS = ("protocol", "test_boxes", "box_margin", "box_jitter", "seed")  # the options a file's boxes carry
BOX_CONVENTION = ("(x0, y0, x1, y1) pixel indices of the curated image, x1/y1 inclusive (medsam_lib.geometry); "
                  "points (x, y), labels 1 foreground / 0 background")


def target_key(row) -> tuple:
    """A target's key (``inference.TARGET_KEY``) in one normal form, from an index row or a file's entry."""
    return (str(row["dataset"]), str(row["case"]), str(row["volume"]), str(row["image_key"]), str(row["target"]),
            int(row["instance"]))


def _key_text(key: tuple) -> str:
    return "/".join(str(v) for v in key)


@dataclass(frozen=True)
class SlicePrompt:
    """One slice's prompt: a box, and optionally (K, 2) points with (K,) labels (original pixels)."""

    slice: int
    box: np.ndarray
    points: np.ndarray | None = None
    labels: np.ndarray | None = None


@dataclass
class PinnedPrompts:
    """A checked prompts file: {target key: {curated slice: SlicePrompt}} and what made it."""

    path: Path
    made_by: dict
    targets: dict
    sha256: str

    def replay_options(self, options):
        """``options`` (an ``EvalOptions``) with the box options of the run that made the file."""
        try:
            return options.with_(**{k: self.made_by[k] for k in BOX_OPTIONS})
        except (MedSAMError, TypeError, ValueError) as exc:
            raise MedSAMError(f"{self.path}: 'made_by' box options are not valid: {exc}") from None

    def check(self, targets: dict, size: tuple[int, int] = (paper.CURATED_IMAGE_SIZE,) * 2,
              split: str | None = None) -> None:
        """Refuse a file that does not match the data: ``targets`` {key: curated slices with an image}
        of the targets about to be evaluated; every one needs an entry and every entry a target, every
        prompted slice an image, every box and point a place inside the (H, W) image."""
        made_split = self.made_by.get("split")
        hint = (f" (the file was made on split {made_split!r}, this run evaluates {split!r}: pass --split {made_split})"
                if split is not None and made_split not in (None, split) else "")
        unknown = [k for k in self.targets if k not in targets]
        if unknown:
            raise MedSAMError(f"{self.path}: prompts for {len(unknown)} target(s) that are not in the data evaluated, "
                              f"e.g. {_key_text(unknown[0])}{hint}")
        missing = [k for k in targets if k not in self.targets]
        if missing:
            raise MedSAMError(f"{self.path}: no prompts for {len(missing)} target(s) of the data evaluated, "
                              f"e.g. {_key_text(missing[0])}{hint}")
        h, w = size
        for key, slices in self.targets.items():
            for z, prompt in slices.items():
                where = f"{self.path}: target {_key_text(key)} slice {z}"
                if z not in targets[key]:
                    raise MedSAMError(f"{where}: the curated store holds no image of this slice "
                                      f"(slices with an image: {min(targets[key])}..{max(targets[key])})")
                x0, y0, x1, y1 = prompt.box
                if x0 < 0 or y0 < 0 or x1 > w - 1 or y1 > h - 1:
                    raise MedSAMError(f"{where}: box ({', '.join(f'{v:g}' for v in prompt.box)}) lies outside the "
                                      f"{w} x {h} image (pixel indices 0..{w - 1} / 0..{h - 1}, x1/y1 inclusive)")
                if prompt.points is not None:
                    for x, y in prompt.points:
                        if x < 0 or y < 0 or x > w - 1 or y > h - 1:
                            raise MedSAMError(f"{where}: point ({x:g}, {y:g}) lies outside the {w} x {h} image")

    def for_target(self, key: tuple) -> dict:
        return self.targets[key]


def _number_list(value, n: int | None, where: str) -> list[float]:
    if not isinstance(value, list) or (n is not None and len(value) != n) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise MedSAMError(f"{where}: expected {n or 'a list of'} finite numbers, got {json.dumps(value)[:80]}")
    return [float(v) for v in value]


def _read_slice(entry, where: str) -> SlicePrompt:
    if not isinstance(entry, dict) or "slice" not in entry or "box" not in entry:
        raise MedSAMError(f"{where}: each slice needs 'slice' and 'box'")
    z = entry["slice"]
    if not isinstance(z, int) or isinstance(z, bool) or z < 0:
        raise MedSAMError(f"{where}: 'slice' must be a whole number >= 0, got {json.dumps(z)[:40]}")
    where = f"{where} (slice {z})"
    box = np.array(_number_list(entry["box"], 4, f"{where} 'box'"))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise MedSAMError(f"{where}: box ({', '.join(f'{v:g}' for v in box)}) is inverted or has zero area: "
                          "need x0 < x1 and y0 < y1")
    points = labels = None
    if entry.get("points") is not None or entry.get("point_labels") is not None:
        raw, raw_labels = entry.get("points"), entry.get("point_labels")
        if not isinstance(raw, list) or not isinstance(raw_labels, list) or len(raw) != len(raw_labels):
            raise MedSAMError(f"{where}: 'points' and 'point_labels' must be lists of the same length")
        points = np.array([_number_list(p, 2, f"{where} point") for p in raw]).reshape(-1, 2)
        if not all(v in (0, 1) and not isinstance(v, bool) for v in raw_labels):
            raise MedSAMError(f"{where}: 'point_labels' must be 1 (foreground) or 0 (background), got {raw_labels[:5]}")
        labels = np.array(raw_labels, dtype=np.int64)
        if not len(points):
            points = labels = None
    return SlicePrompt(z, box, points, labels)


def read_prompts(path) -> PinnedPrompts:
    """A pinned prompts file, checked for its form (its match with the data: ``PinnedPrompts.check``)."""
    path = Path(path)
    if not path.is_file():
        raise MedSAMError(f"{path}: no such prompts file")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedSAMError(f"{path}: not a JSON prompts file ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise MedSAMError(f"{path}: not a pinned prompts file (expected \"schema\": \"{SCHEMA}\"; an evaluation "
                          f"writes one as {PROMPTS_FILE} in its output folder)")
    if record.get("version") != PROMPTS_VERSION:
        raise MedSAMError(f"{path}: prompts file version {json.dumps(record.get('version'))}; this medsam_lib reads "
                          f"version {PROMPTS_VERSION}")
    made_by = record.get("made_by")
    if not isinstance(made_by, dict) or any(k not in made_by for k in BOX_OPTIONS):
        raise MedSAMError(f"{path}: 'made_by' must record the box options {list(BOX_OPTIONS)} of the run that made it")
    entries = record.get("targets")
    if not isinstance(entries, list):
        raise MedSAMError(f"{path}: 'targets' must be a list")
    targets = {}
    for i, entry in enumerate(entries):
        where = f"{path}: target {i}"
        if not isinstance(entry, dict) or any(k not in entry for k in TARGET_KEY) or not isinstance(
                entry.get("slices"), list):
            raise MedSAMError(f"{where}: each target needs {TARGET_KEY} and a list 'slices'")
        try:
            key = target_key(entry)
        except (TypeError, ValueError):
            raise MedSAMError(f"{where}: 'instance' must be a whole number, got {json.dumps(entry['instance'])[:40]}") \
                from None
        if key in targets:
            raise MedSAMError(f"{where}: target {_key_text(key)} listed twice")
        where = f"{path}: target {_key_text(key)}"
        slices = {}
        for entry_slice in entry["slices"]:
            prompt = _read_slice(entry_slice, where)
            if prompt.slice in slices:
                raise MedSAMError(f"{where}: slice {prompt.slice} listed twice")
            slices[prompt.slice] = prompt
        targets[key] = slices
    return PinnedPrompts(path, made_by, targets, sha256_file(path))


def replay_volume(predictor, sources: dict, gt: np.ndarray, prompts: dict, where: str = "target") -> dict:
    """One target's prediction from its pinned prompts {slice index in ``gt``: SlicePrompt}; slices
    without a prompt predict nothing. The result has ``inference.predict_volume``'s form, plus
    ``points`` {slice: (points, labels)}."""
    pred = np.zeros_like(np.asarray(gt, dtype=bool))
    boxes, points = {}, {}
    for z in sorted(prompts):
        prompt = prompts[z]
        pred[z] = segment(predictor, sources[z], prompt.box, f"{where} slice {z}", prompt.points, prompt.labels)
        boxes[z] = prompt.box
        if prompt.points is not None:
            points[z] = (prompt.points, prompt.labels)
    return {"mask": pred, "boxes": boxes, "points": points, "prompted": sorted(boxes)}


def prompts_record(predictions, transform, options, store, identity: dict, replayed_from=None) -> dict:
    """The JSON record of ``predictions`` (``run.PredictedTarget``: ``meta``, ``z0``, ``boxes``,
    ``points``); ``transform``: the model's ``InputTransform`` (the boxes it was given, in its input pixels)."""
    size = (paper.CURATED_IMAGE_SIZE,) * 2
    geometry = transform.geometry(size)
    targets = []
    for t in predictions:
        slices = []
        points = getattr(t, "points", {}) or {}
        for z in sorted(t.boxes):
            box = np.asarray(t.boxes[z], dtype=np.float64)
            entry = {"slice": int(t.z0 + z), "box": [float(v) for v in box],
                     "box_model": [float(v) for v in transform.boxes_to_model(box[None], geometry)[0]]}
            if z in points and len(points[z][0]):
                coords, labels = (np.asarray(v) for v in points[z])
                entry.update(points=[[float(x), float(y)] for x, y in coords],
                             point_labels=[int(v) for v in labels],
                             points_model=[[float(x), float(y)]
                                           for x, y in transform.points_to_model(coords, geometry)])
            slices.append(entry)
        targets.append({**dict(zip(TARGET_KEY, target_key(t.meta))), "slices": slices})
    made_by = {**identity, **{k: options.record()[k] for k in (*BOX_OPTIONS, "split")}}
    return {"schema": SCHEMA, "version": PROMPTS_VERSION, "made_by": made_by, "store": str(store.path),
            "preset": store.preset, "image_size": list(size), "model_input": transform.key,
            "box_convention": BOX_CONVENTION,
            "replayed_from": None if replayed_from is None else {"file": str(replayed_from.path),
                                                                 "sha256": replayed_from.sha256},
            "targets": targets}


def write_prompts(path, predictions, transform, options, store, identity: dict, replayed_from=None) -> Path:
    """``prompts_record`` written atomically to ``path``."""
    record = prompts_record(predictions, transform, options, store, identity, replayed_from)
    return atomic_write_text(Path(path), json.dumps(record, indent=1))
