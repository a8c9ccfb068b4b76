"""Notebook 01's figures: the architecture in numbers, the multimask candidates, Fig. 2's three modes.

Images are shown in their own pixels (the axes carry no physical unit); a legend says what each
colour means. "predicted IoU" is the model's own estimate of its mask's quality (its IoU head), not
a measurement; Dice against the reference is the measurement.
"""
from __future__ import annotations

import numpy as np

from ..cases import Case
from ..evaluation.metrics import dice
from ..figures import display_image, draw_box, draw_contour, fill_mask, legend_handles
from .architecture import COMPONENT_NAMES, COMPONENTS
from .modes import ThreeModes

REFERENCE_COLOR = "yellow"
BOX_MASK_COLOR = (0.12, 0.56, 1.0)
POINT_MASK_COLOR = (1.0, 0.5, 0.05)
CANDIDATE_COLORS = ("#d62728", "#2ca02c", "#9467bd")  # multimask candidates 1-3


def _show(ax, image: np.ndarray, modality: str | None, title: str) -> None:
    ax.imshow(display_image(image, modality))
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _clicks(ax, points: np.ndarray, labels: np.ndarray) -> None:
    for (x, y), label in zip(points, labels):
        ax.scatter([x], [y], marker="*", s=140, c="lime" if label else "red", edgecolors="white", linewidths=0.8)


def plot_three_modes(ct: Case, modes: ThreeModes, model_label: str):
    """Fig. 2 in two rows of three: segment everything, the box, then each step of the point mode."""
    import matplotlib.pyplot as plt

    n = 2 + len(modes.points)
    cols = 3
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(10, 3.7 * rows + 1.3), squeeze=False, layout="constrained")
    axes = axes.ravel()
    kind = "SYNTHETIC " if ct.synthetic else ""
    rng = np.random.default_rng(0)
    _show(axes[0], ct.image, ct.modality, f"(a) segment everything: {len(modes.everything)} masks\n"
          f"({modes.n_sam_quality} pass SAM's default filters)")
    for record in modes.everything[::-1]:
        fill_mask(axes[0], record["segmentation"], rng.uniform(0.2, 1.0, 3), alpha=0.5)
    _show(axes[1], ct.image, ct.modality,
          f"(b) box: predicted IoU {modes.box.score:.3f}\nDice vs reference {modes.box.dice:.3f}")
    fill_mask(axes[1], modes.box.mask, BOX_MASK_COLOR)
    draw_box(axes[1], modes.box.box, "lime")
    for i, step in enumerate(modes.points):
        ax = axes[2 + i]
        n_bg = int((step.point_labels == 0).sum())
        _show(ax, ct.image, ct.modality, f"({chr(ord('c') + i)}) points: 1 fg + {n_bg} bg clicks\n"
              f"predicted IoU {step.score:.3f}, Dice {step.dice:.3f}")
        fill_mask(ax, step.mask, POINT_MASK_COLOR)
        _clicks(ax, step.points, step.point_labels)
    for ax in axes[1:n]:
        draw_contour(ax, ct.truth, REFERENCE_COLOR, linewidth=0.8)
    for ax in axes[n:]:
        ax.axis("off")
    handles = legend_handles(("line", REFERENCE_COLOR, f"reference {ct.target}"), ("line", "lime", "box prompt"),
                              ("patch", BOX_MASK_COLOR, "mask from the box"),
                              ("patch", POINT_MASK_COLOR, "mask from the clicks"),
                              ("star", "lime", "foreground click"), ("star", "red", "background click"))
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"Fig. 2: SAM's three prompt modes, {model_label} on a {kind}CT slice ({ct.name})\n"
                 "(a) colours: one per mask; predicted IoU is the model's own estimate, Dice is measured",
                 fontsize=10)
    return fig


def _crop(mask: np.ndarray, margin: int = 12) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = mask.shape
    return (slice(max(0, rows[0] - margin), min(h, rows[-1] + margin + 1)),
            slice(max(0, cols[0] - margin), min(w, cols[-1] + margin + 1)))


def plot_multimask(ct: Case, point: np.ndarray, outputs: dict[str, tuple[np.ndarray, np.ndarray]]):
    """One row per model: the three candidates for one click as outlines on a close-up of the target,
    and a bar chart of each candidate's predicted IoU against its measured Dice."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(outputs), 2, figsize=(10, 3.8 * len(outputs)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.3]})
    ys, xs = _crop(ct.truth)
    for (left, right), (label, (masks, scores)) in zip(axes, outputs.items()):
        best = int(np.argmax(scores))
        left.imshow(display_image(ct.image, ct.modality))
        draw_contour(left, ct.truth, REFERENCE_COLOR, linewidth=1.2, linestyle="dashed")
        entries = [("line", REFERENCE_COLOR, f"reference {ct.target}")]
        for i, mask in enumerate(masks):
            color = CANDIDATE_COLORS[i % len(CANDIDATE_COLORS)]
            pick = ", SAM's pick" if i == best else ""
            draw_contour(left, mask, color, linewidth=1.5)
            entries.append(("line", color, f"candidate {i + 1}: {int(mask.sum())} px{pick}"))
        _clicks(left, np.asarray([point]), np.array([1]))
        left.set_xlim(xs.start - 0.5, xs.stop - 0.5)
        left.set_ylim(ys.stop - 0.5, ys.start - 0.5)
        left.legend(handles=legend_handles(*entries, ("star", "lime", "the click")), fontsize=7, loc="upper right",
                    framealpha=0.8)
        left.set_title(f"{label}: close-up of the target", fontsize=9)
        left.set_xlabel("x (pixels)")
        left.set_ylabel("y (pixels)")
        x = np.arange(len(masks))
        dices = [dice(m, ct.truth) for m in masks]
        a = right.bar(x - 0.2, scores, 0.4, label="predicted IoU (the model's estimate)", color="C0")
        b = right.bar(x + 0.2, dices, 0.4, label=f"Dice vs reference {ct.target} (measured)", color="C1")
        right.bar_label(a, labels=[f"{v:.2f}" for v in scores], fontsize=7)
        right.bar_label(b, labels=[f"{v:.2f}" for v in dices], fontsize=7)
        right.set_xticks(x, [f"candidate {i + 1}" + (" (pick)" if i == best else "") for i in x])
        right.set_ylim(0, max(1.05, float(np.max(scores)) + 0.1))
        right.set_ylabel("score (0-1, no unit)")
        right.set_title(f"{label}: what the model expects vs what it gets", fontsize=9)
        right.legend(fontsize=7, loc="upper left")
    kind = "SYNTHETIC " if ct.synthetic else ""
    fig.suptitle(f"Multimask output: three candidate masks for one foreground click on a {kind}CT slice "
                 f"({ct.name})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_architecture(table):
    """Bar charts: parameters per component (millions) and encoder GFLOPs per image, per model."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    components = [f"{COMPONENT_NAMES[c]} params (M)" for c in COMPONENTS]
    width = 0.8 / len(table)
    x = np.arange(len(components))
    for i, (_, row) in enumerate(table.iterrows()):
        values = [row[c] for c in components]
        bars = left.bar(x + i * width, values, width, label=row["model"])
        left.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7)
    left.set_xticks(x + width * (len(table) - 1) / 2, [COMPONENT_NAMES[c] for c in COMPONENTS])
    left.set_yscale("log")
    left.set_ylabel("parameters (millions, log scale)")
    left.set_title("Parameters per component", fontsize=10)
    left.legend(fontsize=8, title="model", title_fontsize=8)
    bars = right.bar(table["model"], table["encoder GFLOPs / image"], color=[f"C{i}" for i in range(len(table))])
    right.bar_label(bars, labels=[f"{v:.1f}" for v in table["encoder GFLOPs / image"]], fontsize=8)
    right.set_ylabel("GFLOPs per image (10^9 FLOPs)")
    right.set_title("Image encoder cost, one image at its input size", fontsize=10)
    fig.tight_layout()
    return fig
