"""Simulated prompts: where a user would click, computed from a reference mask.

Pure numpy (no model): notebook 01's point mode and the evaluation use the same clicks.

- ``deepest_point(region)``: the pixel farthest from the region's border (a first, foreground click);
- ``next_background_click(mask, truth, clicks, box)``: where a user would click "not this" next:
  the deepest pixel of the largest false-positive region of the current mask, or, when none is large
  enough, the deepest non-target pixel inside the target's box away from earlier clicks.
- ``next_correction_click(mask, truth)``: the click that corrects the current mask most where it is
  most wrong: the deepest pixel of the largest error region, a foreground click (label 1) in a missed
  part (false negative) or a background click (label 0) in a wrongly included one (false positive).
  This is the deterministic click of the interactive-segmentation "number of clicks" protocol (the
  click at the interior of the largest error); micro-sam's ``IterativePromptGenerator``
  (``micro_sam/prompt_generators.py``) instead samples one foreground point at random in the false
  negatives and one background point in the false positives per round. The deterministic rule makes
  a correction run repeatable without a seed.

Points are (x, y) in pixel coordinates; boxes follow ``medsam_lib.geometry`` (x1/y1 inclusive).
"""
from __future__ import annotations

import numpy as np

from .fileio import MedSAMError

MIN_ERROR_PX = 10  # a false-positive region smaller than this earns no click
MIN_KEEP_AWAY_PX = 4.0  # a fallback click keeps at least this far from earlier clicks
KEEP_AWAY_FRACTION = 0.1  # ... or this fraction of the box's longer side, whichever is larger


def deepest_point(region: np.ndarray) -> np.ndarray:
    """(x, y) of the pixel of ``region`` farthest from its border (a simulated click)."""
    from scipy.ndimage import distance_transform_edt

    region = np.asarray(region, bool)
    if region.ndim != 2:
        raise MedSAMError(f"expected a 2D region, got shape {region.shape}")
    if not region.any():
        raise MedSAMError("cannot place a point in an empty region")
    dist = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([float(x), float(y)])


def keep_away_px(box) -> float:
    """How far a fallback background click stays from earlier clicks, for a target with this box."""
    x0, y0, x1, y1 = box
    return max(MIN_KEEP_AWAY_PX, KEEP_AWAY_FRACTION * max(x1 - x0, y1 - y0))


def next_background_click(mask: np.ndarray, truth: np.ndarray, clicks: np.ndarray, box,
                          min_error_px: int = MIN_ERROR_PX, keep_away: float | None = None) -> np.ndarray | None:
    """The next "not this" click (x, y), or None when there is nowhere left to click.

    mask: the current prediction (H, W) bool; truth: the reference target; clicks: (K, 2) earlier
    clicks (x, y); box: the target's box (x1, y1 inclusive).
    """
    import cc3d

    mask, truth = np.asarray(mask, bool), np.asarray(truth, bool)
    if mask.shape != truth.shape:
        raise MedSAMError(f"mask {mask.shape} and reference {truth.shape} differ in shape")
    wrong = mask & ~truth
    components = cc3d.connected_components(wrong.astype(np.uint8), connectivity=4)
    if components.max() > 0:
        sizes = np.bincount(components.ravel())[1:]
        if sizes.max() >= min_error_px:
            return deepest_point(components == int(np.argmax(sizes)) + 1)
    # No false positive worth a click: tell the model what lies around the target, inside its box,
    # away from earlier clicks.
    keep_away = keep_away_px(box) if keep_away is None else keep_away
    h, w = truth.shape
    yy, xx = np.mgrid[:h, :w]
    x0, y0, x1, y1 = box
    candidate = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1) & ~truth
    for x, y in np.asarray(clicks, dtype=np.float64).reshape(-1, 2):
        candidate &= (xx - x) ** 2 + (yy - y) ** 2 > keep_away ** 2
    return deepest_point(candidate) if candidate.any() else None


def error_regions(mask: np.ndarray, truth: np.ndarray, connectivity: int = 4):
    """Connected false-negative and false-positive regions of ``mask`` against ``truth``, as a list of
    (size in px, label, region) with label 1 for a missed part (false negative), 0 for a wrongly
    included one (false positive); largest first, a false negative before a false positive of equal size."""
    import cc3d

    mask, truth = np.asarray(mask, bool), np.asarray(truth, bool)
    if mask.shape != truth.shape or mask.ndim != 2:
        raise MedSAMError(f"mask {mask.shape} and reference {truth.shape} must be 2D of the same shape")
    regions = []
    for label, wrong in ((1, truth & ~mask), (0, mask & ~truth)):
        components = cc3d.connected_components(wrong.astype(np.uint8), connectivity=connectivity)
        sizes = np.bincount(components.ravel())[1:]
        regions += [(int(size), label, components == i + 1) for i, size in enumerate(sizes) if size]
    return sorted(regions, key=lambda r: (-r[0], -r[1]))


def next_correction_click(mask: np.ndarray, truth: np.ndarray, min_error_px: int = 1):
    """The next corrective click ((x, y), label), or None when no error region has ``min_error_px``
    pixels: the deepest pixel (``deepest_point``) of the largest error region (``error_regions``),
    label 1 (foreground) in a false negative, 0 (background) in a false positive."""
    regions = error_regions(mask, truth)
    if not regions or regions[0][0] < min_error_px:
        return None
    _, label, region = regions[0]
    return deepest_point(region), label
