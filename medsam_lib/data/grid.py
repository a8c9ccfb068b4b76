"""Do two images lie on one voxel grid? The one rule, used wherever two files must line up: an image
and its masks at curation (``case_writer``), a prediction and its ground truth at evaluation
(``evaluation.cli``).

Compared, in this order: the array shape ((Z, Y, X) of a volume, (1, H, W) of a 2D image), volume
vs 2D, then for volumes the spacing (relative tolerance 1e-3, plus 1e-4 mm), the origin (1e-2 mm
plus a relative 1e-4) and the direction cosines (1e-4). An origin or a direction is compared only
where both files carry one (a PNG carries neither). Equal shapes are not enough: a mask shifted by
500 mm or flipped along an axis covers other anatomy, and scoring it voxel by voxel would give a
Dice of 1 for the wrong place.
"""
from __future__ import annotations

import numpy as np

SPACING_RTOL, SPACING_ATOL = 1e-3, 1e-4
ORIGIN_RTOL, ORIGIN_ATOL = 1e-4, 1e-2
DIRECTION_ATOL = 1e-4


def _stack_shape(image) -> tuple:
    array = image.array
    return tuple(array.shape[:3]) if image.is_volume else (1, *array.shape[:2])


def grid_problem(image, other, other_name: str = "mask", spacing: bool = True) -> str | None:
    """What differs between the grids of two ``MedicalImage``s, in words (None: they line up).
    ``spacing=False`` leaves the spacing out (the caller was given one to use for both)."""
    shape, other_shape = _stack_shape(image), _stack_shape(other)
    if shape != other_shape:
        what = "(Z, Y, X)" if image.is_volume else "(1, H, W)"
        return f"shape {what} {shape} vs {other_name} {other_shape}"
    if image.is_volume != other.is_volume:
        return "one is a volume and the other a 2D image"
    if not image.is_volume:
        return None
    if spacing and not np.allclose(image.spacing, other.spacing, rtol=SPACING_RTOL, atol=SPACING_ATOL):
        return (f"spacing (Z, Y, X) {tuple(round(s, 5) for s in image.spacing)} vs {other_name} "
                f"{tuple(round(s, 5) for s in other.spacing)} mm")
    if len(image.origin) and len(other.origin) and (
            len(image.origin) != len(other.origin)
            or not np.allclose(image.origin, other.origin, rtol=ORIGIN_RTOL, atol=ORIGIN_ATOL)):
        return (f"origin {tuple(round(o, 3) for o in image.origin)} vs {other_name} "
                f"{tuple(round(o, 3) for o in other.origin)} mm")
    if len(image.direction) and len(other.direction) and (
            len(image.direction) != len(other.direction)
            or not np.allclose(image.direction, other.direction, atol=DIRECTION_ATOL)):
        return (f"direction {tuple(round(d, 4) for d in image.direction)} vs {other_name} "
                f"{tuple(round(d, 4) for d in other.direction)}")
    return None
