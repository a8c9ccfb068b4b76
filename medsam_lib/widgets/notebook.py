"""Notebook 07 without a browser: the papermill box and the table of boxes drawn."""
from __future__ import annotations

import numpy as np

from ..cases import Case
from ..fileio import MedSAMError
from ..geometry import box_from_mask
from ..evaluation.metrics import dice
from .session import BoxPromptSession

BOX_CHOICES = ("auto", "from_mask")


def resolve_box(box, case: Case, slice_index: int | None) -> tuple[np.ndarray | None, str]:
    """The papermill box and a sentence saying where it came from.

    ``box``: None (no box), [x0, y0, x1, y1] in image pixels (x1/y1 inclusive), ``"from_mask"`` (the
    reference mask's box; needs a mask) or ``"auto"`` (the reference's box when the case has a mask,
    else no box: draw one in the widget).
    """
    if box is None:
        return None, "box=None: no box applied; draw one in the widget"
    if isinstance(box, str):
        if box not in BOX_CHOICES:
            raise MedSAMError(f"box must be [x0, y0, x1, y1], one of {BOX_CHOICES} or None, got {box!r}")
        truth = case.reference(slice_index)
        if truth is None:
            if box == "from_mask":
                raise MedSAMError("box='from_mask' needs a reference mask (mask_path); give the box as "
                                  "[x0, y0, x1, y1], or box='auto' / None")
            return None, "no reference mask, so no box from it: draw one in the widget (or set box=[x0, y0, x1, y1])"
        if not truth.any():
            return None, f"the reference {case.target} is empty on this slice: no box from it"
        return box_from_mask(truth, str(case.mask_path)), f"the reference {case.target}'s box"
    values = np.asarray(box, dtype=np.float64)
    if values.shape != (4,):
        raise MedSAMError(f"box must be 4 numbers (x0, y0, x1, y1) in image pixels, got {box!r}")
    return values, "the box given"


def summary_table(session: BoxPromptSession, case: Case | None = None):
    """One row per box drawn: slice, label, box, predicted IoU, pixels, Dice against the reference
    (for boxes of the case's first label, the reference's target, when the case has a reference)."""
    import pandas as pd

    data = "synthetic" if case is not None and case.synthetic else "real" if case is not None else "user"
    rows = []
    for i, a in enumerate(session.all_annotations(), start=1):
        target = case is not None and a.label == case.labels[0]
        truth = case.reference(a.slice_index) if target else None
        rows.append({"data": data, "box #": i, "slice": a.slice_index, "label": a.label,
                     "box (x0, y0, x1, y1)": tuple(round(v, 1) for v in a.box),
                     "predicted IoU": round(a.score, 3), "mask pixels": int(a.mask.sum()),
                     "Dice vs reference": None if truth is None else round(dice(a.mask, truth), 3)})
    columns = ["data", "box #", "slice", "label", "box (x0, y0, x1, y1)", "predicted IoU", "mask pixels",
               "Dice vs reference"]
    return pd.DataFrame(rows, columns=columns)
