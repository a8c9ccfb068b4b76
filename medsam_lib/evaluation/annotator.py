"""From the ideal box to human ones: a seeded annotator model and a sweep of its noise.

The paper's test boxes are the ideal ones, tight around the ground truth. A person's box misses that
by an amount that grows with the object: each side lands a few percent of the object's size off,
and some people draw loose (outward) or cropped (inward) boxes on purpose. ``Annotator`` models
exactly that and nothing more:

    side displacement (outward positive) = (shift + noise * z) * extent,   z ~ N(0, 1), one per side

for the four sides x0, y0, x1, y1, with ``extent`` the target's width (x0, x1) or height (y0, y1) in
pixels (x1 - x0 + 1). ``noise`` is the standard deviation of a side's placement as a fraction of the
size, ``shift`` a systematic outward (> 0) or inward (< 0) move of every side as a fraction of the
size. The new sides are rounded to whole pixels (boxes are pixel indices, ``medsam_lib.geometry``)
and clipped to the image; a side never crosses the opposite one (a box keeps at least the ideal
box's own width, up to one pixel). At ``noise=0, shift=0`` the box is the ideal box, exactly.

Draws are seeded per target (``inference.target_rng``: seed and the target's key), and every level
of a sweep uses the same four draws z, so a target's box moves smoothly from ideal to loose as the
noise grows (common random numbers: the curve's steps compare the same people, not new ones).

    levels = annotator_grid(noises=NOISE_LEVELS)                       # ideal ... loose, shift 0
    frame = annotator_sweep(predictor, middle_slices(store), levels, seed=0, cache=cache)
    targets.task_means(frame, by=("level", "noise", "shift"))          # per task: mean, group-bootstrap CI
    sweep_levels(noises, shifts)     # notebook 08's two axes: every noise at shift 0, every shift at noise 0
    plot_sweep(summary, "dsc_vs_noise.png", "title", axis="noise")       # per task, base and fine-tuned

The levels' numbers are choices for a sweep, not measured human values: ``NOISE_LEVELS`` run from the
ideal box (0) to a side placed with a standard deviation of 20% of the object's size, ``SHIFT_LEVELS``
from 10% inward to 20% outward. Where the paper's protocol sits: its test boxes are level 0 (noise 0,
shift 0); its training jitter (each side out by 0-20 px at 256, paper 3.2) is an outward shift whose
size relative to the object depends on the object (``mean_offset_px`` and ``box_iou_ideal`` in the
sweep's rows put any box, jittered ones included, on the same axis).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..fileio import MedSAMError
from .inference import set_slice, target_rng
from .targets import SliceTarget, score_slice

NOISE_LEVELS = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2)  # sd of a side's placement, fraction of the object's size
SHIFT_LEVELS = (-0.1, -0.05, 0.0, 0.05, 0.1, 0.2)  # systematic move of every side (> 0 outward), same unit
# Notebook 08 on the synthetic demo (fast on 2 cores): the same range, fewer steps.
DEMO_NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2)
DEMO_SHIFT_LEVELS = (-0.1, 0.0, 0.1, 0.2)
MAX_INWARD_SHIFT = 0.5  # an inward shift of half the size on both sides would leave nothing


@dataclass(frozen=True)
class Annotator:
    """A person drawing a box (module docstring). ``noise``: sd of each side's placement, as a fraction
    of the target's extent along that side's axis (>= 0). ``shift``: systematic displacement of every
    side, same unit; > 0 outward (loose boxes), < 0 inward (cropped boxes), > -0.5."""

    noise: float = 0.0
    shift: float = 0.0

    def __post_init__(self):
        if not (isinstance(self.noise, (int, float)) and math.isfinite(self.noise) and self.noise >= 0):
            raise MedSAMError(f"annotator noise {self.noise!r} must be a finite fraction >= 0 of the target's size")
        if not (isinstance(self.shift, (int, float)) and math.isfinite(self.shift) and self.shift > -MAX_INWARD_SHIFT):
            raise MedSAMError(f"annotator shift {self.shift!r} must be a finite fraction > -{MAX_INWARD_SHIFT} of the "
                              "target's size (> 0 outward, < 0 inward)")

    @property
    def is_ideal(self) -> bool:
        return self.noise == 0 and self.shift == 0

    def draw(self, tight_box, shape: tuple[int, int], z: np.ndarray) -> np.ndarray:
        """The box this annotator draws around ``tight_box`` on an image of ``shape`` (H, W), given the four
        standard normal draws ``z`` (x0, y0, x1, y1); float64 pixel indices."""
        x0, y0, x1, y1 = (float(v) for v in tight_box)
        h, w = shape
        extent = np.array([x1 - x0 + 1, y1 - y0 + 1, x1 - x0 + 1, y1 - y0 + 1])
        out = (self.shift + self.noise * np.asarray(z, dtype=np.float64)) * extent
        box = np.rint(np.array([x0 - out[0], y0 - out[1], x1 + out[2], y1 + out[3]]))
        box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
        for lo, hi, ideal_lo, ideal_hi in ((0, 2, x0, x1), (1, 3, y0, y1)):
            if box[hi] - box[lo] < min(1.0, ideal_hi - ideal_lo):  # collapsed: a one-pixel-wide box at the centre
                centre = math.floor((ideal_lo + ideal_hi) / 2)
                box[lo], box[hi] = centre, centre + 1
        return box

    def box(self, tight_box, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """``draw`` with four fresh draws of ``rng``."""
        return self.draw(tight_box, shape, rng.standard_normal(4))


IDEAL = Annotator()


def annotator_grid(noises: Sequence[float] = NOISE_LEVELS, shifts: Sequence[float] = (0.0,)) -> list[Annotator]:
    """Every (noise, shift) pair as an ``Annotator``, noise fastest."""
    return [Annotator(float(n), float(s)) for s in shifts for n in noises]


def box_iou(a, b) -> float:
    """IoU of two boxes in pixel indices (x1/y1 inclusive)."""
    ix = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iy = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(0.0, ix) * max(0.0, iy)
    area = (lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1))
    return float(inter / (area(a) + area(b) - inter))


SWEEP_COLUMNS = ("model", "level", "noise", "shift", "dataset", "case", "volume", "image_key", "target", "instance",
                 "task", "task_label", "modality", "split", "group", "slice", "image_id", "x0", "y0", "x1", "y1",
                 "mean_offset_px", "box_iou_ideal", "predicted_iou", "iou", "dsc", "nsd")


def annotator_sweep(predictor, targets: Sequence[SliceTarget], annotators: Sequence[Annotator] = None,
                    seed: int = 0, cache=None, with_nsd: bool = True, progress: bool = True, model: str | None = None):
    """Each target prompted with each annotator's box (all of a target's boxes decoded in one batch on its
    embedding); one row per (annotator level, target): the box, its mean outward offset (px) and IoU with
    the ideal box, the decoder's predicted IoU, and the measured IoU, DSC and NSD (``targets.score_slice``).
    ``annotators`` default: ``annotator_grid()``; ``cache``: an ``EmbeddingCache`` (stored embeddings);
    ``model``: the name in the rows (default the predictor's model). Returns a DataFrame (``SWEEP_COLUMNS``)."""
    import pandas as pd
    from tqdm.auto import tqdm

    annotators = list(annotator_grid() if annotators is None else annotators)
    if not annotators or not all(isinstance(a, Annotator) for a in annotators):
        raise MedSAMError("annotator_sweep needs a non-empty list of Annotator levels")
    name = model or getattr(getattr(predictor, "loaded", None), "name", "model")
    rows = []
    for target in tqdm(targets, desc="annotator sweep", unit="target", disable=not progress):
        tight = target.tight_box
        z = target_rng(seed, target.key).standard_normal(4)  # the same draws for every level
        boxes = np.stack([a.draw(tight, target.gt.shape, z) for a in annotators])
        set_slice(predictor, target.source(cache), f"{target.image_id}")
        result = predictor.predict(boxes)
        for level, (annotator, box, mask, score) in enumerate(zip(annotators, boxes, result.masks, result.scores)):
            offset = np.array([tight[0] - box[0], tight[1] - box[1], box[2] - tight[2], box[3] - tight[3]])
            rows.append({"model": name, "level": level, **asdict(annotator), **target.row(),
                         "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3],
                         "mean_offset_px": float(offset.mean()), "box_iou_ideal": box_iou(box, tight),
                         "predicted_iou": float(score), **score_slice(mask, target, with_nsd)})
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


def sweep_levels(noises: Sequence[float] = NOISE_LEVELS, shifts: Sequence[float] = SHIFT_LEVELS) -> list[Annotator]:
    """The two axes of a sweep out from the ideal box: every noise at shift 0, then every other shift at
    noise 0 (the ideal box once, first, when 0 is among the noises)."""
    levels = annotator_grid(sorted(set(float(n) for n in noises)), (0.0,))
    levels += [Annotator(0.0, s) for s in sorted(set(float(s) for s in shifts)) if s != 0]
    return levels


AXIS_WORDS = {"noise": "noise: sd of each side (% of object size)",
              "shift": "shift of every side (% of object size, < 0 in)"}


def plot_sweep(summary, path, title: str, axis: str = "noise", metric: str = "dsc"):
    """``metric`` per task against one axis of the sweep (the other axis at 0), one panel per task, base and
    fine-tuned with 95% group-bootstrap CI bands; the ideal box (the paper's test protocol) marked.
    ``summary``: ``targets.task_means(frame, by=("model", "level", "noise", "shift"))``. PNG, atomically."""
    from ..figures import task_curves

    if axis not in AXIS_WORDS:
        raise MedSAMError(f"plot_sweep: axis {axis!r} must be one of {list(AXIS_WORDS)}")
    other = "shift" if axis == "noise" else "noise"
    rows = summary[summary[other] == 0]
    return task_curves(rows, axis, metric, path, title, AXIS_WORDS[axis],
                       f"{metric.upper()} of the middle GT slice (0-1), mean over targets", scale_x=100,
                       marks=[("v", 0.0, "ideal box: tight around the ground truth (the paper's test protocol)")])
