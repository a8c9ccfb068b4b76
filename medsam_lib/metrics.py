"""Segmentation metrics. DSC here; NSD (paper 3.3) joins when the evaluation notebooks do."""
from __future__ import annotations

import numpy as np


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity coefficient of two binary masks of equal shape; 1.0 when both are empty."""
    a, b = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)
