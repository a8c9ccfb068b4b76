"""The project's one box convention, its conversions, boxes from masks and the paper's box jitter.

Box convention (everywhere in medsam_lib: the curated index, the predictor, the widget's
annotations, figures and tables): ``(x0, y0, x1, y1)`` are PIXEL INDICES of the image the box
belongs to, x1/y1 INCLUSIVE (the last column/row inside the box), as the released MedSAM code takes
them from a mask and passes them to the model. A box around one pixel column c has x0 = x1 = c.

The only other form is a drawn rectangle's EDGES (left, top, right, bottom), e.g. the rectangles
jupyter_bbox_widget sends and matplotlib draws: pixel i spans [i, i + 1) there. ``box_from_edges``
and ``box_to_edges`` convert between the two; ``outline`` gives the rectangle that frames a box's
pixels on ``imshow`` (whose pixel centres sit on integers). No other module adds or removes the 1.
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


def box_from_edges(left: float, top: float, right: float, bottom: float) -> np.ndarray:
    """Rectangle edges (pixel i spans [i, i + 1)) -> the box convention (x1, y1 inclusive)."""
    return np.array([left, top, right - 1.0, bottom - 1.0], dtype=np.float64)


def box_to_edges(box) -> tuple[float, float, float, float]:
    """A box (x1, y1 inclusive) -> its rectangle's edges (left, top, right, bottom)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return x0, y0, x1 + 1.0, y1 + 1.0


def outline(box) -> tuple[tuple[float, float], float, float]:
    """((x, y), width, height) of the rectangle around a box's pixels on ``imshow`` (centres on integers),
    for ``matplotlib.patches.Rectangle``."""
    left, top, right, bottom = box_to_edges(box)
    return (left - 0.5, top - 0.5), right - left, bottom - top


def enlarge_box(box, margin: float, shape: tuple[int, int]) -> np.ndarray:
    """Each side moved out by ``margin`` px, clipped to the image of ``shape`` (H, W), as float64."""
    h, w = shape
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64)
    return np.array([max(0.0, x0 - margin), max(0.0, y0 - margin), min(w - 1.0, x1 + margin),
                     min(h - 1.0, y1 + margin)])


# The largest outward shift of a box side per jitter convention (inclusive): the paper's 0-20 px (3.2),
# or the released v1 code's ``np.random.randint(0, 20)``, 0-19 px.
JITTER_MAX_PX = {"paper": paper.BOX_JITTER_PX[1], "official_code": paper.BOX_JITTER_PX[1] - 1}


def jitter_box(box: np.ndarray, shape: tuple[int, int], rng: np.random.Generator,
               max_shift: int = paper.BOX_JITTER_PX[1]) -> np.ndarray:
    """Enlarge each side by a random 0..max_shift pixels (paper 3.2; one ``rng.integers`` draw of 4,
    x0, y0, x1, y1 in that order), clipped to the (H, W) image ``shape``; float64. Training and the
    evaluation's jittered boxes both use this one."""
    h, w = shape
    shift = rng.integers(paper.BOX_JITTER_PX[0], max_shift + 1, size=4)
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64)
    return np.array([max(0, x0 - shift[0]), max(0, y0 - shift[1]),
                     min(w - 1, x1 + shift[2]), min(h - 1, y1 + shift[3])], dtype=np.float64)
