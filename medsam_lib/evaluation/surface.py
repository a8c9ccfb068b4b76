"""Surface elements and surface distances: the definition behind the paper's NSD (3.3).

The surface of a binary mask lives on the grid of voxel *corners*: each corner point sees a
2 x 2 (2D) or 2 x 2 x 2 (3D) neighbourhood of voxels, encoded as a neighbour code (one bit per
voxel). A code that is neither all-background nor all-foreground is a surface element ("surfel"),
weighted by the length (2D, marching squares) or area (3D, marching cubes) of the iso-contour
through that neighbourhood, scaled by the voxel spacing. Distances between surfels come from
scipy's Euclidean distance transform with ``sampling=spacing``. This is the DeepMind
``surface-distance`` definition that the released MedSAM code (``utils/SurfaceDice.py``) used.

Spacing is always given in ARRAY AXIS ORDER: (z, y, x) for a volume indexed ``volume[z, y, x]``,
(y, x) for an image ``image[y, x]``. SimpleITK's ``GetSpacing()`` and most file headers give
(x, y, z): reverse it first (``medsam_lib.evaluation.metrics.spacing_from_xyz``).

Speed (NSD needs only the area within the tolerance, never the distances themselves, so nothing is
sorted): codes come from shifted slices instead of a generic correlation, element areas are looked
up on the border points only, and "is the other surface within the tolerance" is answered exactly
without a full distance map. A point p is within ``tol`` of the other surface iff some other-surface
point lies at an offset d with ``sqrt(sum((d_i * s_i)^2)) <= tol``: the ball of offsets is small
(5 offsets at 1 mm on a 0.8 x 0.8 x 2.5 mm grid), so we test those offsets at the border points,
computing the offset lengths with the same expression scipy's EDT uses for ``sampling``. Where the
ball is large (a big tolerance on a fine grid) the EDT (``sampling=spacing``) runs tile by tile on
the tiles that hold border points, each tile padded by the tolerance (every point within the
tolerance of the tile is then inside the padded tile, so the thresholded result is the same).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
from scipy import ndimage

# Bit of each neighbourhood voxel in a code: the (0, 0[, 0]) corner is the highest bit, as the
# DeepMind kernels [[8, 4], [2, 1]] and [[[128, 64], [32, 16]], [[8, 4], [2, 1]]].
_N_CORNERS = {2: 4, 3: 8}


def _corner_offsets(ndim: int) -> list[tuple[int, ...]]:
    return [tuple(int(b) for b in np.binary_repr(i, width=ndim)) for i in range(2 ** ndim)]


@functools.lru_cache(maxsize=64)
def contour_length_table(spacing: tuple[float, float]) -> np.ndarray:
    """(16,) length of the marching-squares contour through each 2 x 2 neighbour code, in mm.

    Bits: 8 = (0, 0), 4 = (0, 1), 2 = (1, 0), 1 = (1, 1) in (row, column). One or three voxels
    set: a diagonal cut between two edge midpoints; two voxels in a row: a line along the row
    (one column spacing long); in a column: one row spacing; two diagonal voxels (saddle): two cuts.
    """
    s_row, s_col = spacing
    diag = 0.5 * math.hypot(s_row, s_col)
    table = np.zeros(16)
    for code in range(16):
        on = [(a, b) for (a, b), bit in zip(_corner_offsets(2), (8, 4, 2, 1)) if code & bit]
        if len(on) in (1, 3):
            table[code] = diag
        elif len(on) == 2:
            (a0, b0), (a1, b1) = on
            if a0 == a1:
                table[code] = s_col
            elif b0 == b1:
                table[code] = s_row
            else:
                table[code] = 2 * diag
    return table


@functools.lru_cache(maxsize=1)
def _marching_cube_normals() -> list[np.ndarray]:
    """Per 2 x 2 x 2 neighbour code, the marching-cubes triangles' area vectors (half cross
    products, unit voxel). The table of triangle normals is the one shipped with DeepMind's
    ``surface-distance`` (a pinned requirement), so the triangulation of ambiguous cubes matches."""
    from surface_distance import lookup_tables

    return [np.asarray(n, dtype=np.float64).reshape(-1, 3) for n in lookup_tables._NEIGHBOUR_CODE_TO_NORMALS]


@functools.lru_cache(maxsize=64)
def surface_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """(256,) area in mm^2 of the marching-cubes surface through each 2 x 2 x 2 neighbour code.

    An area vector (a, b, c) in voxel units becomes (a s1 s2, b s0 s2, c s0 s1) in mm^2."""
    s0, s1, s2 = spacing
    scale = np.array([s1 * s2, s0 * s2, s0 * s1])
    return np.array([float(np.linalg.norm(n * scale, axis=1).sum()) for n in _marching_cube_normals()])


def element_table(spacing: Sequence[float]) -> np.ndarray:
    spacing = tuple(float(s) for s in spacing)
    return contour_length_table(spacing) if len(spacing) == 2 else surface_area_table(spacing)


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(first, last) index per axis of the foreground, or None for an empty mask."""
    lo, hi = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        lo.append(hits[0])
        hi.append(hits[-1])
    return np.array(lo), np.array(hi)


def neighbour_codes(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Codes on the corner grid of ``mask[lo:hi+1]``: shape (hi - lo + 2) per axis; corner ``p``
    sees voxels ``p - 1`` and ``p`` of the crop along every axis (zero outside)."""
    ndim = mask.ndim
    crop = mask[tuple(slice(a, b + 1) for a, b in zip(lo, hi))]
    padded = np.zeros(tuple(s + 2 for s in crop.shape), dtype=np.uint8)
    padded[tuple(slice(1, -1) for _ in range(ndim))] = crop
    grid = tuple(s + 1 for s in crop.shape)
    codes = np.zeros(grid, dtype=np.uint8)
    n = _N_CORNERS[ndim]
    for i, offset in enumerate(_corner_offsets(ndim)):
        shifted = padded[tuple(slice(o, o + g) for o, g in zip(offset, grid))]
        codes |= shifted << np.uint8(n - 1 - i)
    return codes


def surfels(codes: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(border mask on the corner grid, area of each border element in ``border``'s True order)."""
    full = (1 << _N_CORNERS[codes.ndim]) - 1
    border = (codes != 0) & (codes != full)
    return border, element_table(spacing)[codes[border]]


MAX_BALL_OFFSETS = 729  # above this many offsets (a 9^3 block), the tiled EDT is cheaper


def tolerance_ball(spacing: Sequence[float], tolerance: float) -> np.ndarray:
    """(K, ndim) integer offsets d with sqrt(sum((d_i s_i)^2)) <= tolerance, the sum taken axis by
    axis in the order scipy's ``distance_transform_edt`` uses."""
    spacing = np.asarray(spacing, dtype=np.float64)
    reach = np.floor(tolerance / spacing).astype(int)
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    scaled = offsets.astype(np.float64) * spacing
    squared = scaled[:, 0] * scaled[:, 0]
    for axis in range(1, offsets.shape[1]):
        squared = squared + scaled[:, axis] * scaled[:, axis]
    return offsets[np.sqrt(squared) <= tolerance]


def _tiles(shape: tuple[int, ...], size: int):
    ranges = [range(0, s, size) for s in shape]
    for starts in np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, len(shape)):
        yield tuple(slice(int(a), int(min(a + size, s))) for a, s in zip(starts, shape))


def within_tolerance(source: np.ndarray, target: np.ndarray, spacing: Sequence[float], tolerance: float,
                     tile: int = 64) -> np.ndarray:
    """For every True point of ``source``: is the nearest True point of ``target`` (same grid)
    within ``tolerance`` mm? Returns a bool array aligned with ``source[source]``.

    Exact: the EDT (``sampling=spacing``) runs per tile of ``source`` padded by ``tolerance``,
    so every target point that can be within the tolerance of a point of the tile is present."""
    spacing = np.asarray(spacing, dtype=np.float64)
    if not target.any():
        return np.zeros(int(source.sum()), dtype=bool)
    if tolerance >= float(np.sqrt(np.sum((np.asarray(source.shape) * spacing) ** 2))):
        return np.ones(int(source.sum()), dtype=bool)  # beyond the grid's diagonal: every point is close (work bounded)
    reach = np.floor(tolerance / spacing).astype(int)
    if np.prod(2 * reach + 1) <= MAX_BALL_OFFSETS:
        return _within_by_offsets(source, target, tolerance_ball(spacing, tolerance), reach)
    pad = np.ceil(tolerance / spacing).astype(int) + 1
    out = np.zeros(source.shape, dtype=bool)
    if all(s <= tile for s in source.shape):
        dist = ndimage.distance_transform_edt(~target, sampling=spacing)
        return dist[source] <= tolerance
    for sl in _tiles(source.shape, tile):
        block = source[sl]
        if not block.any():
            continue
        outer = tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(sl, pad, source.shape))
        region = target[outer]
        if not region.any():
            continue
        dist = ndimage.distance_transform_edt(~region, sampling=spacing)
        inner = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(sl, outer))
        out[sl] = block & (dist[inner] <= tolerance)
    return out[source]


def _within_by_offsets(source: np.ndarray, target: np.ndarray, offsets: np.ndarray, reach: np.ndarray) -> np.ndarray:
    padded = np.pad(target, [(int(r), int(r)) for r in reach])
    strides = np.array([int(np.prod(padded.shape[a + 1:])) for a in range(padded.ndim)])
    points = np.nonzero(source)
    flat = np.ravel_multi_index(tuple(p + r for p, r in zip(points, reach)), padded.shape)
    lookup = padded.ravel()
    close = np.zeros(flat.size, dtype=bool)
    for shift in offsets @ strides:
        close |= lookup[flat + shift]
    return close


def distances(source: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance in mm from each True point of ``source`` to the nearest True point of ``target``
    (inf when ``target`` is empty), unsorted, in ``source[source]`` order."""
    if not target.any():
        return np.full(int(source.sum()), np.inf)
    return ndimage.distance_transform_edt(~target, sampling=np.asarray(spacing, dtype=np.float64))[source]
