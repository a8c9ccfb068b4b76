"""Boxes from masks, and the paper's seeded box jitter.

Boxes are (x0, y0, x1, y1) in pixel coordinates of the image they belong to. ``box_from_mask``
uses the released MedSAM code's convention: x1/y1 are the last foreground column/row (inclusive).
"""
from __future__ import annotations

import numpy as np

from . import paper
from .fileio import MedSAMError


def box_from_mask(mask: np.ndarray, source: str = "mask") -> np.ndarray:
    """Tight box (x0, y0, x1, y1) around the foreground of a 2D mask, as float64."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise MedSAMError(f"{source}: expected a 2D mask, got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise MedSAMError(f"{source}: the mask is empty; no box can be taken from it")
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)


def jitter_box(box: np.ndarray, shape: tuple[int, int], rng: np.random.Generator,
               max_shift: int = paper.BOX_JITTER_PX[1]) -> np.ndarray:
    """Enlarge each side by a random 0..max_shift pixels (paper 3.2), clipped to the image."""
    h, w = shape
    shift = rng.integers(0, max_shift + 1, size=4)
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64)
    return np.array([max(0, x0 - shift[0]), max(0, y0 - shift[1]),
                     min(w - 1, x1 + shift[2]), min(h - 1, y1 + shift[3])], dtype=np.float64)
