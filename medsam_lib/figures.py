"""Figures people would rather look at than read: the one home of mask overlays, contours, box
outlines, legends and PNG saving, used by every notebook's figures.

    fill_mask(ax, mask, colour)          # a filled, semi-transparent mask
    draw_contour(ax, mask)               # the reference outline (yellow by default)
    draw_box(ax, box)                    # a box prompt around its pixels, x1/y1 inclusive
    zoom_to(ax, box, shape)              # show a small target's neighbourhood, not the whole slice
    legend_handles(("patch", c, "..."))  # legend entries that say what each colour means
    save_figure(fig, path)               # PNG, atomically

Boxes follow ``medsam_lib.geometry`` (pixel indices, x1/y1 inclusive); on ``imshow`` pixel centres
sit on integers, so a box's outline runs half a pixel outside its first and last pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .fileio import atomic_path
from .geometry import outline

PALETTE = ((0.12, 0.56, 1.0), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
           (0.58, 0.40, 0.74), (0.55, 0.34, 0.29))
REFERENCE_COLOUR = "yellow"  # the reference (ground-truth) contour, in every figure
BOX_COLOUR = "cyan"  # the box prompt, in every figure of the evaluation
MASK_ALPHA = 0.45
MODEL_COLOURS = {"base": PALETTE[1], "finetuned": PALETTE[0]}  # orange, blue: the two models in every figure
MODEL_NAMES = {"base": "base", "finetuned": "fine-tuned"}  # as figures and findings say them


def display_image(image: np.ndarray, modality: str | None = None) -> np.ndarray:
    """Any 2D image -> (H, W, 3) uint8 for display (non-8-bit data min-max scaled, or the modality's window)."""
    from .models.transforms import to_uint8_rgb

    return to_uint8_rgb(image, modality)


def fill_mask(ax, mask: np.ndarray, colour, alpha: float = MASK_ALPHA) -> None:
    """Overlay a (H, W) bool mask on ``ax`` in ``colour`` (an RGB tuple or a matplotlib colour name)."""
    from matplotlib.colors import to_rgb

    mask = np.asarray(mask, bool)
    if not mask.any():
        return
    rgba = np.zeros((*mask.shape, 4))
    rgba[mask] = (*to_rgb(colour), alpha)
    ax.imshow(rgba)


def draw_contour(ax, mask: np.ndarray, colour=REFERENCE_COLOUR, linewidth: float = 1.0, linestyle: str = "solid") -> None:
    """The outline of a (H, W) bool mask (nothing for an empty mask)."""
    mask = np.asarray(mask, float)
    if mask.any():
        ax.contour(mask, levels=[0.5], colors=[colour], linewidths=linewidth, linestyles=linestyle)


def draw_box(ax, box, colour=BOX_COLOUR, linewidth: float = 1.5):
    """The rectangle around a box's pixels x0..x1, y0..y1 (inclusive); returns the patch."""
    from matplotlib.patches import Rectangle

    corner, width, height = outline(box)
    return ax.add_patch(Rectangle(corner, width, height, fill=False, lw=linewidth, edgecolor=colour))


def zoom_to(ax, box, shape: tuple[int, int], margin: float = 0.5, min_size: int = 48) -> bool:
    """Zoom ``ax`` onto ``box`` when it is small: a window of at least ``min_size`` px, the box plus
    ``margin`` times its size on each side, inside the image. Returns True when it zoomed (the box
    is under a quarter of the image in both directions), False when the whole image stays in view."""
    h, w = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    if bw > w / 4 or bh > h / 4:
        return False
    side = max(min_size, (1 + 2 * margin) * max(bw, bh))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(-0.5, cx - side / 2), w - 0.5 - side)
    top = min(max(-0.5, cy - side / 2), h - 0.5 - side)
    ax.set_xlim(max(-0.5, left), min(w - 0.5, left + side))
    ax.set_ylim(min(h - 0.5, top + side), max(-0.5, top))
    return True


def legend_handles(*entries):
    """Legend entries ``(kind, colour, label)``; kind ``"patch"`` (a filled mask), ``"line"`` (a contour
    or a box outline) or ``"star"`` (a click)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    for kind, colour, label in entries:
        if kind == "patch":
            handles.append(Patch(facecolor=colour, alpha=0.6, label=label))
        elif kind == "line":
            handles.append(Line2D([], [], color=colour, lw=1.5, label=label))
        elif kind == "star":
            handles.append(Line2D([], [], marker="*", ls="", ms=11, color=colour, markeredgecolor="white",
                                  label=label))
        else:
            raise ValueError(f"unknown legend entry kind {kind!r}")
    return handles


def draw_overlay(ax, image: np.ndarray, masks: Sequence[np.ndarray] = (), boxes: Sequence = (),
                 labels: Sequence[str] = (), title: str | None = None, alpha: float = MASK_ALPHA,
                 contour_masks: Sequence[np.ndarray] = ()) -> None:
    """Draw an image with filled masks, box outlines and optional ground-truth contours on ``ax``.

    With ``labels`` (one per mask) a legend names the masks, the reference contour and the box.
    """
    ax.imshow(display_image(image))
    entries = []
    for i, mask in enumerate(masks):
        colour = PALETTE[i % len(PALETTE)]
        fill_mask(ax, mask, colour, alpha)
        if i < len(labels):
            entries.append(("patch", colour, labels[i]))
    for mask in contour_masks:
        draw_contour(ax, mask)
    if labels and len(contour_masks):
        entries.append(("line", REFERENCE_COLOUR, "reference mask"))
    if labels and len(boxes):
        entries.append(("line", PALETTE[0], "box prompt"))
    for i, box in enumerate(boxes):
        draw_box(ax, box, PALETTE[i % len(PALETTE)])
    if entries:
        ax.legend(handles=legend_handles(*entries), loc="lower right", fontsize=7, framealpha=0.7)
    if title:
        ax.set_title(title, fontsize=9)
    ax.axis("off")


def save_figure(fig, path: str | Path, dpi: int = 120, close: bool = False, tight: bool = True) -> Path:
    """Save a matplotlib figure as PNG atomically (folder created); ``close`` frees it afterwards."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight" if tight else None, format="png")
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def task_curves(summary, x: str, metric: str, path: str | Path, title: str, xlabel: str, ylabel: str,
                scale_x: float = 1.0, marks: Sequence[tuple[str, float, str]] = (), ylim=(0.0, 1.02),
                integer_x: bool = False) -> Path:
    """One panel per task of ``summary`` (rows of ``evaluation.targets.task_means``: ``model``, ``task_label``,
    column ``x``, ``metric`` with its 95% CI ``<metric>_lo`` / ``_hi``, ``n_targets``, ``n_groups``): each
    model's mean against ``x`` (times ``scale_x``), the CI as a band where the task has 2 or more groups;
    ``marks``: ("v" or "h", value, label) lines drawn in every panel and named in the legend; ``xlabel`` under
    the lowest panel of each column; ``integer_x``: whole-number x ticks. PNG, atomically."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    if not len(summary):
        raise ValueError("task_curves: no rows to plot")
    tasks = sorted(summary["task_label"].unique())
    models = list(dict.fromkeys(summary["model"]))
    ncols = min(4, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows + 1.4), squeeze=False, sharey=True,
                             layout="constrained")
    for ax in axes.ravel()[len(tasks):]:
        ax.axis("off")
    for ax, task in zip(axes.ravel(), tasks):
        part = summary[summary["task_label"] == task]
        for k, model in enumerate(models):
            rows = part[part["model"] == model].sort_values(x)
            if not len(rows):
                continue
            colour = MODEL_COLOURS.get(model, PALETTE[k % len(PALETTE)])
            xs = rows[x].to_numpy(dtype=float) * scale_x
            ax.plot(xs, rows[metric], marker="o", ms=3, color=colour)
            if (rows["n_groups"] >= 2).all():
                ax.fill_between(xs, rows[f"{metric}_lo"], rows[f"{metric}_hi"], color=colour, alpha=0.15)
        for kind, value, _ in marks:
            (ax.axvline if kind == "v" else ax.axhline)(value, color="grey", ls="--", lw=1)
        first = part.iloc[0]
        ax.set_title(f"{task}\n(targets: {int(first['n_targets'])}, groups: {int(first['n_groups'])})", fontsize=8)
        ax.set_ylim(*ylim)
        ax.tick_params(labelsize=8)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for k in range(min(ncols, len(tasks))):  # the lowest panel of each column
        lowest = max(i for i in range(len(tasks)) if i % ncols == k)
        axes.ravel()[lowest].set_xlabel(xlabel, fontsize=8)
    fig.supylabel(ylabel, fontsize=9)
    handles = [Line2D([], [], color=MODEL_COLOURS.get(m, PALETTE[k % len(PALETTE)]), marker="o", ms=3,
                      label=f"{MODEL_NAMES.get(m, m)} model") for k, m in enumerate(models)]
    handles += [Line2D([], [], color="grey", ls="--", lw=1, label=label) for _, _, label in marks]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=8, frameon=False,
               title="band: 95% CI, bootstrap resampling whole groups (cases), where a task has >= 2 groups",
               title_fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, close=True)
