"""DSC and NSD (paper 3.3) for 2D images and 3D volumes, with anisotropic spacing.

    dice(pred, gt)                                  # 2 |A n B| / (|A| + |B|)
    nsd(pred, gt, spacing=(sz, sy, sx), tolerance_mm=1.0)

Spacing is in ARRAY AXIS ORDER (z, y, x) / (y, x), in mm. File headers and SimpleITK's
``GetSpacing()`` give (x, y, z): convert with ``spacing_from_xyz``. Reversing the order is a real
error, not a detail: on an anisotropic volume it moved one NSD from 0.63 to 0.86.

Edge cases (documented conventions, tested):
- both masks empty: DSC 1, NSD 1 (nothing to find, nothing wrongly found);
- exactly one empty: DSC 0, NSD 0.
NSD variants (``nsd_2d``): ``"true"`` (default) is the 2D contour definition; ``"unit_axis"`` is
the released LiteMedSAM evaluation's (``compute_metrics.py``): the 2D mask gets a unit axis
(``np.expand_dims``) and is scored as a one-voxel-thick 3D slab, so the slab's faces become
surface and the number measures area overlap more than boundary agreement (concentric disks of
radius 20 and 25 px: true 2D NSD at 1 px = 0.000, unit-axis 0.836).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..fileio import MedSAMError
from ..paper import NSD_TOLERANCE_MM
from . import surface

NSD_2D_VARIANTS = ("true", "unit_axis")


def as_binary(mask, source: str = "mask") -> np.ndarray:
    """A bool array from a bool array or a two-valued one: 0 and one positive value ({0, 1}, {0, 255}
    as ``segment`` writes and most data sets ship, {0, max}). Anything else is refused (a label map
    or probabilities must be thresholded by the caller, who knows which labels mean what)."""
    array = np.asarray(mask)
    if array.dtype == bool:
        return array
    if array.dtype.kind not in "biuf":
        raise MedSAMError(f"{source}: mask of dtype {array.dtype} is not numeric")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise MedSAMError(f"{source}: mask holds NaN or infinite values; expected 0/1")
    values = np.unique(array)
    foreground = values[values != 0]
    if foreground.size > 1 or (foreground.size and foreground[0] < 0):
        shown = ", ".join(str(v) for v in values[:6])
        raise MedSAMError(f"{source}: mask is not binary (values {shown}{', ...' if values.size > 6 else ''}); "
                          "a binary mask holds 0 and one positive value (0/1, 0/255): pass one label as a 0/1 mask")
    return array != 0


# Spacing in mm: below a nanometre or above a kilometre a value is a unit or header error, and the
# NSD's grid arithmetic (tolerance / spacing) would overflow or underflow.
SPACING_RANGE_MM = (1e-6, 1e6)
TOLERANCE_MAX_MM = 1e6


def check_spacing(spacing: Sequence[float], ndim: int, source: str = "spacing") -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise MedSAMError(f"{source}: spacing {spacing!r} is not a list of numbers") from None
    if len(values) != ndim:
        raise MedSAMError(f"{source}: {len(values)} spacing values for a {ndim}D mask (need {ndim}, array order)")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise MedSAMError(f"{source}: spacing {values} must be finite and > 0 mm")
    low, high = SPACING_RANGE_MM
    if not all(low <= v <= high for v in values):
        raise MedSAMError(f"{source}: spacing {values} out of range: each value must be {low:g} .. {high:g} mm")
    return values


def check_tolerance(tolerance_mm: float) -> float:
    tol = float(tolerance_mm)
    if not (math.isfinite(tol) and tol > 0):
        raise MedSAMError(f"NSD tolerance {tolerance_mm!r} must be a finite number of mm > 0")
    if tol > TOLERANCE_MAX_MM:
        raise MedSAMError(f"NSD tolerance {tolerance_mm!r} mm is beyond {TOLERANCE_MAX_MM:g} mm; give the "
                          "tolerance in mm (the paper uses 1)")
    return tol


def spacing_from_xyz(spacing_xyz: Sequence[float]) -> tuple[float, ...]:
    """(x, y[, z]) as files and SimpleITK give it -> array order (z, y, x) / (y, x)."""
    return tuple(float(s) for s in reversed(tuple(spacing_xyz)))


def check_pair(pred, gt, source_pred: str = "prediction", source_gt: str = "ground truth"):
    a, b = as_binary(pred, source_pred), as_binary(gt, source_gt)
    if a.shape != b.shape:
        raise MedSAMError(f"{source_pred}: shape {a.shape} differs from {source_gt}'s {b.shape}")
    if a.ndim not in (2, 3):
        raise MedSAMError(f"{source_pred}: {a.ndim}D array; DSC/NSD take 2D images or 3D volumes")
    return a, b


def dice(prediction, truth) -> float:
    """Dice similarity coefficient of two binary masks of equal shape; 1.0 when both are empty.

    The one metric Dice of medsam_lib: tables, failure figures, the teardown and the widget call it.
    ``training.loss.dice_bce_per_sample`` is another thing, the differentiable soft Dice *loss* on
    probabilities, and stays there; ``training.loss.dice_score`` is the same ratio on a batch of torch
    tensors on the training device (validation without a copy to numpy)."""
    a, b = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def _prepare(pred, gt, spacing, nsd_2d: str):
    a, b = check_pair(pred, gt)
    if nsd_2d not in NSD_2D_VARIANTS:
        raise MedSAMError(f"unknown 2D NSD variant {nsd_2d!r}; choose one of {NSD_2D_VARIANTS}")
    spacing = check_spacing(spacing if spacing is not None else (1.0,) * a.ndim, a.ndim)
    if a.ndim == 2 and nsd_2d == "unit_axis":
        a, b, spacing = a[None], b[None], (1.0, *spacing)
    return a, b, spacing


def surface_elements(pred, gt, spacing=None, nsd_2d: str = "true"):
    """The corner-grid border masks of both masks on their common crop, with each border element's area:
    ``(border_pred, area_pred, border_gt, area_gt, spacing)``; None when both are empty."""
    a, b, spacing = _prepare(pred, gt, spacing, nsd_2d)
    box = surface.bounding_box(a | b)
    if box is None:
        return None
    lo, hi = box
    border_a, area_a = surface.surfels(surface.neighbour_codes(a, lo, hi), spacing)
    border_b, area_b = surface.surfels(surface.neighbour_codes(b, lo, hi), spacing)
    return border_a, area_a, border_b, area_b, spacing


def nsd(prediction, truth, spacing: Sequence[float] | None = None, tolerance_mm: float = NSD_TOLERANCE_MM,
        nsd_2d: str = "true") -> float:
    """Normalised surface distance (surface Dice) at ``tolerance_mm``.

    The fraction of both surfaces (element areas) that lies within the tolerance of the other
    surface. ``spacing`` in array order (mm; default 1 per axis). See the module docstring for
    empty masks and ``nsd_2d``."""
    tol = check_tolerance(tolerance_mm)
    elements = surface_elements(prediction, truth, spacing, nsd_2d)
    if elements is None:
        return 1.0
    border_a, area_a, border_b, area_b, spacing = elements
    if not border_a.any() or not border_b.any():
        return 0.0
    close_a = surface.within_tolerance(border_a, border_b, spacing, tol)
    close_b = surface.within_tolerance(border_b, border_a, spacing, tol)
    wa, wb = area_a, area_b
    total = wa.sum() + wb.sum()
    return float((wa[close_a].sum() + wb[close_b].sum()) / total) if total > 0 else 0.0


def surface_distances(prediction, truth, spacing: Sequence[float] | None = None, nsd_2d: str = "true") -> dict:
    """Unsorted distances (mm) pred -> gt and gt -> pred with the element areas, for other
    surface measures (average surface distance, Hausdorff); empty arrays when both are empty."""
    elements = surface_elements(prediction, truth, spacing, nsd_2d)
    if elements is None:
        empty = np.array([])
        return {"distances_pred_to_gt": empty, "distances_gt_to_pred": empty,
                "areas_pred": empty, "areas_gt": empty}
    border_a, area_a, border_b, area_b, spacing = elements
    return {"distances_pred_to_gt": surface.distances(border_a, border_b, spacing),
            "distances_gt_to_pred": surface.distances(border_b, border_a, spacing),
            "areas_pred": area_a, "areas_gt": area_b}


def score(prediction, truth, spacing: Sequence[float] | None = None, tolerance_mm: float = NSD_TOLERANCE_MM,
          nsd_2d: str = "true") -> dict:
    """``{"dsc": ..., "nsd": ...}`` for one pair (validated once)."""
    a, b = check_pair(prediction, truth)
    return {"dsc": dice(a, b), "nsd": nsd(a, b, spacing, tolerance_mm, nsd_2d)}
