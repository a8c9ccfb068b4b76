"""The widget's box events, parsed without a widget: display geometry and box lists.

``jupyter_bbox_widget`` sends the whole list of boxes on every mouse press and release, as dicts
``{x, y, width, height, label}`` in pixels of the picture it shows (rectangle EDGES). ``parse_boxes``
turns one such list into boxes of the image in the project's convention (``medsam_lib.geometry``:
integer pixel indices, x1/y1 inclusive), through ``geometry.box_from_edges`` and nowhere else: each
edge of the drawn rectangle goes to the nearest pixel boundary first, so a box is whole pixels (the
mask is computed from, and the exports record, the same integer box).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ..geometry import box_from_edges, box_to_edges

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Display:
    """How an image of ``image_size`` (H, W) is shown: enlarged ``scale`` times (an integer >= 1)."""

    image_size: tuple[int, int]
    scale: int = 1

    @staticmethod
    def for_image(image_size: tuple[int, int], min_size: int) -> "Display":
        """Small images enlarged by an integer factor to at least ``min_size`` on their longer side."""
        return Display(tuple(int(v) for v in image_size), max(1, math.ceil(min_size / max(image_size))))

    @property
    def shown_size(self) -> tuple[int, int]:
        h, w = self.image_size
        return h * self.scale, w * self.scale

    def to_widget(self, box: Box, label: str) -> dict:
        """An image box -> the dict the widget draws (display pixels, rectangle edges)."""
        left, top, right, bottom = (v * self.scale for v in box_to_edges(box))
        return {"x": left, "y": top, "width": right - left, "height": bottom - top, "label": label}


@dataclass
class Parsed:
    """One box of a widget list: ``box`` in image pixels, or None and why (``kind``: ok, zero,
    small, malformed, outside)."""

    box: Box | None
    why: str = ""
    kind: str = "ok"


def parse_box(raw, display: Display) -> Parsed:
    """One widget dict -> a box of the image (clipped to it), or why it cannot be one."""
    if not isinstance(raw, dict):
        return Parsed(None, f"box {raw!r} is not of the form {{x, y, width, height, label}}", "malformed")
    try:
        x, y, width, height = (float(raw[k]) for k in ("x", "y", "width", "height"))
    except (KeyError, TypeError, ValueError):
        return Parsed(None, f"box {raw!r} is not of the form {{x, y, width, height, label}}", "malformed")
    if not all(map(math.isfinite, (x, y, width, height))):
        return Parsed(None, f"box {raw!r} has a non-finite coordinate", "malformed")
    s = display.scale
    h, w = display.image_size
    left, top, right, bottom = x / s, y / s, (x + width) / s, (y + height) / s
    text = f"edges ({left:g}, {top:g}) to ({right:g}, {bottom:g})"
    if width <= 0 or height <= 0:
        return Parsed(None, f"box at {text} has zero area; press and drag to draw a box", "zero")
    left, top, right, bottom = max(0.0, left), max(0.0, top), min(float(w), right), min(float(h), bottom)
    if right <= left or bottom <= top:
        return Parsed(None, f"box at {text} lies outside the image ({w} x {h} pixels)", "outside")
    box = box_from_edges(*(math.floor(v + 0.5) for v in (left, top, right, bottom)))  # edges to pixel boundaries
    if box[2] <= box[0] or box[3] <= box[1]:
        return Parsed(None, f"box at {text} is under 2 pixels wide or high; drag a larger box", "small")
    return Parsed(tuple(float(v) for v in box))


@dataclass
class BoxList:
    """A parsed widget list: the boxes to segment, the raw dicts to keep showing, what was dropped."""

    kept: list[tuple[Box, str]] = field(default_factory=list)
    keep_raw: list[dict] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    drawing: dict | None = None  # a zero-size box still being dragged (last in the list)


def parse_boxes(raw_boxes: list, display: Display, labels: list[str], slice_error: str | None = None,
                reported: set[str] | None = None) -> BoxList:
    """Parse one list the widget sent.

    On mouse down the widget sends the new box with zero size, last in the list; it becomes a real
    box on release after a drag. A release without a drag sends the same list again, which the
    kernel never sees (the value did not change). So a zero-size box is left alone while it is last
    (a drag may be under way) and dropped, with a message, once another box follows it. ``reported``
    (kept by the caller) holds the boxes already reported, so each is reported once.
    """
    out = BoxList()
    reported = set() if reported is None else reported
    for index, raw in enumerate(raw_boxes):
        raw = raw if isinstance(raw, dict) else {"value": raw}
        parsed = parse_box(raw, display)
        label = str(raw.get("label") or labels[0])
        if parsed.kind == "zero" and index == len(raw_boxes) - 1:
            out.drawing = raw
            out.keep_raw.append(raw)
            continue
        box, why = parsed.box, parsed.why
        if box is not None and slice_error is not None:
            box, why = None, f"no mask on this slice: {slice_error}"
        if box is not None and label not in labels:
            box, why = None, f"label {label!r} is not one of {labels}"
        if box is None:
            key = json.dumps(raw, sort_keys=True, default=str)
            if key not in reported:
                reported.add(key)
                out.dropped.append(why)
            continue
        out.kept.append((box, label))
        out.keep_raw.append(raw)
    return out


def plural(n: int, word: str) -> str:
    """"1 box", "2 boxes", "3 slices": a count in the session's messages."""
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("x") else "s")
