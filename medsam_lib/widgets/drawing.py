"""The picture the widget shows: masks blended in their label's colour, label tags that never overlap, points.

Pure numpy + OpenCV: ``paint`` blends the masks into the (H*s, W*s, 3) uint8 image, ``place_tags``
decides where each box's label tag goes (inside the box's top-left corner, pushed down past any tag
already placed), ``draw_points`` marks the clicks (a green disc with a white + for a foreground point, a
red one with a white - for a background point, on the clicked pixel's centre), ``encode_png`` makes the
bytes the widget displays.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ..fileio import MedSAMError
from ..geometry import box_to_edges

OVERLAY_ALPHA = 0.45
DEFAULT_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf")  # BBoxWidget's own defaults, so mask and box colours agree
TAG_FONT_SCALE = 0.45
TAG_PAD_PX = 2
POINT_COLORS = {1: (0, 170, 0), 0: (220, 30, 30)}  # foreground green, background red (as SAM's demos)
POINT_RADIUS_PX = 6


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    if not re.fullmatch(r"[0-9a-fA-F]{6}", value):
        raise MedSAMError(f"colour {color!r} is not of the form #rrggbb")
    return tuple(int(value[i:i + 2], 16) for i in (0, 2, 4))


def paint(base: np.ndarray, masks: Sequence[np.ndarray], colors: Sequence[tuple[int, int, int]],
          alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8 with each (H, W) bool mask blended in its colour; later masks on top."""
    out = base.copy()
    for mask, color in zip(masks, colors):
        if not mask.any():
            continue
        region = out[mask].astype(np.float32)
        out[mask] = np.round((1 - alpha) * region + alpha * np.asarray(color, np.float32)).astype(np.uint8)
    return out


def enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    return image if scale == 1 else np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def _overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_tags(rects: Sequence[tuple[float, float, float, float]], sizes: Sequence[tuple[int, int]],
               picture_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of one tag per rectangle (left, top, right, bottom; display pixels) such that
    no two tags overlap: each starts in its rectangle's top-left corner and moves down (then, past
    the picture's bottom, right) until it is clear of the tags already placed."""
    h, w = picture_size
    placed: list[tuple[int, int, int, int]] = []
    corners = []
    for (left, top, _right, _bottom), (tw, th) in zip(rects, sizes):
        x, y = int(max(0, min(left + 1, w - tw))), int(max(0, min(top + 1, h - th)))
        for _ in range(4 * (h + w)):
            tag = (x, y, x + tw, y + th)
            clash = next((p for p in placed if _overlaps(tag, p)), None)
            if clash is None:
                break
            y = clash[3] + 1
            if y + th > h:
                x, y = clash[2] + 1, int(max(0, top + 1))
        placed.append((x, y, x + tw, y + th))
        corners.append((x, y))
    return corners


def tag_size(text: str) -> tuple[int, int]:
    import cv2

    (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, TAG_FONT_SCALE, 1)
    return tw + 2 * TAG_PAD_PX, th + baseline + 2 * TAG_PAD_PX


def draw_tags(picture: np.ndarray, boxes: Sequence, texts: Sequence[str], colors: Sequence[tuple[int, int, int]],
              scale: int) -> np.ndarray:
    """Label tags (white text on the label's colour) for image boxes on a picture enlarged ``scale`` times."""
    import cv2

    out = picture.copy()
    rects = [tuple(v * scale for v in box_to_edges(box)) for box in boxes]
    sizes = [tag_size(t) for t in texts]
    for (x, y), (tw, th), text, color in zip(place_tags(rects, sizes, out.shape[:2]), sizes, texts, colors):
        cv2.rectangle(out, (x, y), (x + tw - 1, y + th - 1), tuple(int(c) for c in color), thickness=-1)
        cv2.putText(out, text, (x + TAG_PAD_PX, y + th - TAG_PAD_PX - 3), cv2.FONT_HERSHEY_SIMPLEX,
                    TAG_FONT_SCALE, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def draw_points(picture: np.ndarray, points: Sequence[tuple[int, int, int]], scale: int) -> np.ndarray:
    """Points (x, y, label; image pixel indices) marked on a picture enlarged ``scale`` times: a disc of
    ``POINT_RADIUS_PX`` on the pixel's centre with a white rim, green with a + (1, foreground) or red with a -
    (0, background)."""
    import cv2

    out = picture.copy()
    r = POINT_RADIUS_PX
    for x, y, label in points:
        cx, cy = int((x + 0.5) * scale), int((y + 0.5) * scale)
        cv2.circle(out, (cx, cy), r, POINT_COLORS[int(label)], thickness=-1, lineType=cv2.LINE_AA)
        cv2.circle(out, (cx, cy), r, (255, 255, 255), thickness=1, lineType=cv2.LINE_AA)
        cv2.line(out, (cx - r + 3, cy), (cx + r - 3, cy), (255, 255, 255), 1)
        if int(label) == 1:
            cv2.line(out, (cx, cy - r + 3), (cx, cy + r - 3), (255, 255, 255), 1)
    return out


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes, fast (zlib level 1)."""
    import cv2

    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise MedSAMError("could not encode the overlay as PNG")
    return buffer.tobytes()
