"""Figures people would rather look at than read: mask overlays, saved as PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .fileio import atomic_path
from .geometry import outline

PALETTE = ((0.12, 0.56, 1.0), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
           (0.58, 0.40, 0.74), (0.55, 0.34, 0.29))


def display_image(image: np.ndarray) -> np.ndarray:
    """Any 2D image -> (H, W, 3) uint8 for display (non-8-bit data min-max scaled)."""
    from .models.transforms import to_uint8_rgb

    return to_uint8_rgb(image)


def draw_overlay(ax, image: np.ndarray, masks: Sequence[np.ndarray] = (), boxes: Sequence = (),
                 labels: Sequence[str] = (), title: str | None = None, alpha: float = 0.45,
                 contour_masks: Sequence[np.ndarray] = ()) -> None:
    """Draw an image with filled masks, box outlines and optional ground-truth contours on ``ax``.

    With ``labels`` (one per mask) a legend names the masks, the reference contour and the box.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    ax.imshow(display_image(image))
    handles = []
    for i, mask in enumerate(masks):
        color = PALETTE[i % len(PALETTE)]
        rgba = np.zeros((*np.shape(mask), 4))
        rgba[np.asarray(mask, bool)] = (*color, alpha)
        ax.imshow(rgba)
        if i < len(labels):
            handles.append(Patch(color=color, label=labels[i]))
    for mask in contour_masks:
        ax.contour(np.asarray(mask, float), levels=[0.5], colors="yellow", linewidths=1.0)
    if labels and len(contour_masks):
        handles.append(Line2D([], [], color="yellow", lw=1.0, label="reference mask"))
    if labels and len(boxes):
        handles.append(Line2D([], [], color=PALETTE[0], lw=1.5, label="box prompt"))
    for i, box in enumerate(boxes):
        corner, width, height = outline(box)  # the box's pixels, x1/y1 inclusive (medsam_lib.geometry)
        ax.add_patch(Rectangle(corner, width, height, fill=False, lw=1.5, edgecolor=PALETTE[i % len(PALETTE)]))
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.7)
    if title:
        ax.set_title(title, fontsize=9)
    ax.axis("off")


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically (folder created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return path
