"""Intensity normalisation presets (paper 3.1), one function each.

``paper`` (default): CT clipped to [-500, 1000] HU; every other modality clipped at its 0.5 and 99.5
percentiles; then scaled to [0, 255].
``official_code``: the released MedSAM code: CT window level 40 / width 400 ([-160, 240] HU);
other modalities clipped at the 0.5/99.5 percentiles of voxels > 0, with the background kept at 0.
"""
from __future__ import annotations

import numpy as np

from .. import paper
from ..fileio import MedSAMError

PRESETS = ("paper", "official_code")


def is_ct(modality: str | None) -> bool:
    return bool(modality) and modality.strip().upper().startswith("CT")


def _scale(array: np.ndarray, low: float, high: float) -> np.ndarray:
    lo, hi = paper.INTENSITY_RANGE
    if high <= low:
        return np.zeros(array.shape, dtype=np.float32)
    clipped = np.clip(array.astype(np.float32), low, high)
    return (clipped - low) / (high - low) * (hi - lo) + lo


def ct_window(preset: str) -> tuple[float, float]:
    if preset == "paper":
        return paper.CT_WINDOW_HU
    level, width = paper.OFFICIAL_CODE_CT_WINDOW_LEVEL_WIDTH
    return level - width / 2, level + width / 2


def normalize_intensity(array: np.ndarray, modality: str | None = None, preset: str = "paper",
                        source: str = "image") -> np.ndarray:
    """Map raw intensities (any dtype, any range) to float32 in [0, 255] as the preset says.

    ``source`` names the file or case in error messages.
    """
    if preset not in PRESETS:
        raise MedSAMError(f"unknown preprocessing preset {preset!r}; choose one of {PRESETS}")
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise MedSAMError(f"{source}: pixel type {array.dtype} is not a real number type")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise MedSAMError(f"{source}: {bad} pixels are NaN or infinite; fix or mask them before segmenting")
    if is_ct(modality):
        low, high = ct_window(preset)
        return _scale(array, low, high)
    p_lo, p_hi = paper.PERCENTILES
    if preset == "official_code":
        foreground = array[array > 0]
        if foreground.size == 0:
            return np.zeros(array.shape, dtype=np.float32)
        low, high = np.percentile(foreground, [p_lo, p_hi])
        out = _scale(array, low, high)
        out[array == 0] = 0.0
        return out
    low, high = np.percentile(array, [p_lo, p_hi])
    return _scale(array, low, high)
