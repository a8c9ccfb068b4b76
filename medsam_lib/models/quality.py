"""Is a mask likely wrong? The quality flag: the decoder's predicted IoU read against one threshold.

    quality_flag(prediction.scores[0])    # True: the model's own estimate says the mask is likely wrong
    quality_label(prediction.scores[0])   # "likely-wrong" or "ok": what ``segment`` and notebook 07 show

SAM's decoder outputs, beside each mask, a predicted IoU (an MLP head on the IoU token, trained to regress
the mask's IoU with the truth). The flag takes the decoder at its word: a mask is likely wrong when its
predicted IoU is under ``QUALITY_IOU_THRESHOLD``, the IoU of a mask whose DSC is ``LIKELY_WRONG_DSC``
(IoU = DSC / (2 - DSC): 0.538 for DSC 0.7). How often that word holds, per model, is what
``evaluation.calibration`` measures (notebook 08). This module is the constants' one home; it needs no
model and no scipy, so the CLI's ``segment`` and the widgets read it cheaply.
"""
from __future__ import annotations

import math

from ..fileio import MedSAMError

LIKELY_WRONG_DSC = 0.7  # a mask under this DSC counts as a failure (the flag; calibration's failure AUROC)
QUALITY_IOU_THRESHOLD = LIKELY_WRONG_DSC / (2 - LIKELY_WRONG_DSC)  # IoU of a DSC-0.7 mask: 0.538...
QUALITY_OK, QUALITY_LIKELY_WRONG = "ok", "likely-wrong"


def quality_flag(predicted_iou) -> bool:
    """True when the decoder's predicted IoU (``Prediction.scores``) is under ``QUALITY_IOU_THRESHOLD``: its
    own estimate puts the mask under DSC ``LIKELY_WRONG_DSC``, so the mask is likely wrong."""
    value = float(predicted_iou)
    if not math.isfinite(value):
        raise MedSAMError(f"predicted IoU {predicted_iou!r} is not a finite number")
    return value < QUALITY_IOU_THRESHOLD


def quality_label(predicted_iou) -> str:
    """``"likely-wrong"`` where ``quality_flag`` is True, else ``"ok"`` (the word printed beside the score)."""
    return QUALITY_LIKELY_WRONG if quality_flag(predicted_iou) else QUALITY_OK
