"""Notebook 07 without a browser: the papermill box, its points and the table of boxes drawn."""
from __future__ import annotations

import numpy as np

from ..cases import Case
from ..fileio import MedSAMError
from ..geometry import box_from_mask
from ..evaluation.metrics import dice
from ..prompts import next_correction_click
from .annotations import Annotation, check_point
from .session import BoxPromptSession

BOX_CHOICES = ("auto", "from_mask")
POINT_CHOICES = ("auto",)


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


def resolve_points(points, case: Case, annotation: Annotation | None) -> tuple[list[tuple[int, int, int]], str]:
    """The papermill points for a box (``annotation``, the box the notebook applied) and a sentence saying
    where they came from.

    ``points``: None (none), [[x, y, label], ...] (pixel indices of the image, label 1 foreground / 0
    background) or ``"auto"``: one corrective click from the reference mask, as a person would click where
    the box's mask is most wrong (``prompts.next_correction_click``: the deepest pixel of the largest error
    region, foreground in a missed part, background in a wrongly included one, as notebook 08's correction
    loop clicks); none without a reference, for a box of another label, or when the mask has no error. A box
    that has points already (restored from the autosave) gets none added: a rerun changes nothing.
    """
    if points is None:
        return [], "points=None: no points added (add them in the widget: + point / \u2212 point)"
    if isinstance(points, str) and points not in POINT_CHOICES:
        raise MedSAMError(f"points must be [[x, y, label], ...], one of {POINT_CHOICES} or None, got {points!r}")
    if annotation is None:
        return [], "no box: no points"
    if annotation.points:
        return [], (f"the box already has {len(annotation.points)} point(s) (restored from the autosave): "
                    "none added")
    if not isinstance(points, str):
        if not isinstance(points, (list, tuple)):
            raise MedSAMError(f"points must be [[x, y, label], ...], one of {POINT_CHOICES} or None, got {points!r}")
        return [check_point(p, annotation.mask.shape) for p in points], "the points given"
    target = annotation.label == case.labels[0]
    truth = case.reference(annotation.slice_index) if target else None
    if truth is None:
        return [], ("no reference mask for this box's label, so no corrective click: add points in the widget "
                    "(or set points=[[x, y, label], ...])")
    click = next_correction_click(annotation.mask, truth)
    if click is None:
        return [], "the box's mask equals the reference: no corrective click"
    (x, y), label = click
    kind = "foreground: a missed part" if label == 1 else "background: a wrongly included part"
    return [(int(x), int(y), int(label))], (f"one corrective click from the reference {case.target} at the centre "
                                            f"of the largest error ({kind})")


def summary_table(session: BoxPromptSession, case: Case | None = None):
    """One row per box drawn: slice, label, box, its points (+foreground -background), predicted IoU and its
    quality flag (``models.quality``), pixels, Dice against the reference (for boxes of the case's first
    label, the reference's target, when the case has a reference)."""
    import pandas as pd

    data = "synthetic" if case is not None and case.synthetic else "real" if case is not None else "user"
    rows = []
    for i, a in enumerate(session.all_annotations(), start=1):
        target = case is not None and a.label == case.labels[0]
        truth = case.reference(a.slice_index) if target else None
        rows.append({"data": data, "box #": i, "slice": a.slice_index, "label": a.label,
                     "box (x0, y0, x1, y1)": tuple(round(v, 1) for v in a.box),
                     "points": _points_cell(a.points),
                     "predicted IoU": round(a.score, 3), "quality": a.quality, "mask pixels": int(a.mask.sum()),
                     "Dice vs reference": None if truth is None else round(dice(a.mask, truth), 3)})
    columns = ["data", "box #", "slice", "label", "box (x0, y0, x1, y1)", "points", "predicted IoU", "quality",
               "mask pixels", "Dice vs reference"]
    return pd.DataFrame(rows, columns=columns)


def _points_cell(points) -> str:
    """"+(12, 30) -(40, 8)": each point, + foreground, - background; "" for none."""
    return " ".join(f"{'+' if label == 1 else '-'}({x}, {y})" for x, y, label in points)
