"""Notebook 06's figures: a Fig. 4-style grid per task, the failure modes of Fig. 5 picked by rules
from the worst cases, a box-looseness sweep and DSC by target size.

Failure rules (paper Fig. 5), each evaluated on the worst ground-truth slice of the worst targets
(lowest DSC of the model under study); a case is labelled with every rule it meets, in this order:
- ``tiny object``: the ground truth covers < 1% of the 256 x 256 slice (655 px);
- ``low contrast``: |mean inside - mean in a 5 px ring around it| / sd of the ring < 0.5;
- ``missing boundaries``: on over half the ground-truth contour the grey-level gradient is under
  10 grey levels (Sobel magnitude / 4: a step of h levels reads h), i.e. no visible edge;
- ``loose box over similar instances``: other instances of the same target (or other pixels of
  its labels) cover >= 10% of the box, or the box is more than 4 times the object's area.
A worst case meeting none is shown as ``other``.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..figures import PALETTE, save_figure
from .inference import EmbeddingCache, prompt_box, segment
from .tables import bootstrap_ci

TINY_FRACTION = 0.01
LOW_CONTRAST = 0.5
WEAK_EDGE = 10.0
LOOSE_OTHER_FRACTION = 0.10
LOOSE_AREA_RATIO = 4.0
SIZE_BINS = (0.0, 0.005, 0.02, 0.08, 1.0)  # fraction of the 256 x 256 slice
SIZE_LABELS = ("< 0.5%", "0.5-2%", "2-8%", "> 8%")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def slice_dice(gt: np.ndarray, pred: np.ndarray) -> float:
    total = gt.sum() + pred.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(gt, pred).sum() / total)


def failure_rules(image: np.ndarray, gt: np.ndarray, box, same_label: np.ndarray | None = None) -> list[str]:
    """The rules (module docstring) one slice meets, each as 'rule: measured value'."""
    grey = image.mean(axis=2) if image.ndim == 3 else image.astype(np.float64)
    found = []
    fraction = gt.sum() / gt.size
    if fraction < TINY_FRACTION:
        found.append(f"tiny object: {int(gt.sum())} px = {fraction:.2%} of the slice (< 1%)")
    ring = ndimage.binary_dilation(gt, iterations=5) & ~gt
    if ring.any() and gt.any():
        contrast = abs(grey[gt].mean() - grey[ring].mean()) / (grey[ring].std() + 1e-6)
        if contrast < LOW_CONTRAST:
            found.append(f"low contrast: |in - around| / sd = {contrast:.2f} (< {LOW_CONTRAST})")
    contour = gt & ~ndimage.binary_erosion(gt)
    if contour.any():
        gradient = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1)) / 4.0  # a step of h levels gives h
        weak = float((gradient[contour] < WEAK_EDGE).mean())
        if weak > 0.5:
            found.append(f"missing boundaries: {weak:.0%} of the contour has an edge < {WEAK_EDGE:g} grey levels")
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    box_area = max(1, (x1 - x0 + 1) * (y1 - y0 + 1))
    inside = np.zeros_like(gt)
    inside[y0:y1 + 1, x0:x1 + 1] = True
    if same_label is not None:
        others = float((same_label & ~gt & inside).sum() / box_area)
        if others >= LOOSE_OTHER_FRACTION:
            found.append(f"loose box over similar instances: other pixels of the target cover {others:.0%} of the box")
    ratio = box_area / max(1, int(gt.sum()))
    if ratio > LOOSE_AREA_RATIO and not any(f.startswith("loose") for f in found):
        found.append(f"loose box over similar instances: the box is {ratio:.1f} x the object's area")
    return found


def worst_cases(store, predictions, n: int = 6) -> list[dict]:
    """The ``n`` lowest-DSC targets, each at its worst slice, with the rules it meets."""
    from .chain import worst_slice

    scored = sorted(((slice_dice(t.gt, t.pred), i) for i, t in enumerate(predictions)))[:n]
    out = []
    for dsc, i in scored:
        t = predictions[i]
        z = worst_slice(t)
        row = store.index[(store.index["dataset"] == t.meta["dataset"]) & (store.index["volume"] == t.meta["volume"])
                          & (store.index["image_key"] == t.meta["image_key"])
                          & (store.index["slice"] == t.z0 + z)].iloc[0]
        image = store.load_image(row)
        box = t.boxes.get(z, prompt_box(t.gt[z]) if t.gt[z].any() else (0, 0, 1, 1))
        same = None
        if int(t.meta["instance"]) > 0:
            match = store.index[(store.index["dataset"] == t.meta["dataset"])
                                & (store.index["volume"] == t.meta["volume"]) & (store.index["slice"] == t.z0 + z)
                                & (store.index["target"] == t.meta["target"])]
            if len(match):
                same = store._npz(match.iloc[0]["file"])[match.iloc[0]["mask_member"]] > 0
        rules = failure_rules(image, t.gt[z], box, same) or ["other: none of the rules (lowest DSC)"]
        out.append({"position": i, "slice": z, "dsc": dsc, "slice_dsc": slice_dice(t.gt[z], t.pred[z]),
                    "rules": rules, "image": image, "gt": t.gt[z], "pred": t.pred[z], "box": box, "meta": t.meta})
    return out


def _panel(ax, image, mask=None, box=None, title="", colour=PALETTE[1], contour=None):
    from matplotlib.patches import Rectangle

    ax.imshow(image if image.ndim == 3 else image, cmap=None if image.ndim == 3 else "gray")
    if mask is not None and mask.any():
        rgba = np.zeros((*mask.shape, 4))
        rgba[mask] = (*colour, 0.45)
        ax.imshow(rgba)
    if contour is not None and contour.any():
        ax.contour(contour.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
    if box is not None:
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.2, edgecolor="cyan"))
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def task_grid(store, predictions: dict, path, title: str):
    """Fig. 4 style: per task label one row (image, GT, base, fine-tuned), the target with the
    median base DSC at its middle ground-truth slice, box in cyan."""
    plt = _pyplot()
    base = predictions["base"]
    labels = {}
    for i, t in enumerate(base):
        label = t.meta["task"] or f"{t.meta['target']} ({t.meta['modality']}) *"
        labels.setdefault(label, []).append(i)
    names = sorted(labels)
    cols = ["image", "ground truth", "base", "fine-tuned"]
    fig, axes = plt.subplots(len(names), 4, figsize=(8.4, 2.2 * len(names) + 0.6), squeeze=False)
    for r, label in enumerate(names):
        ranked = sorted(labels[label], key=lambda i: slice_dice(base[i].gt, base[i].pred))
        i = ranked[len(ranked) // 2]
        t = base[i]
        gt_slices = np.flatnonzero(t.gt.any(axis=(1, 2)))
        z = int(gt_slices[len(gt_slices) // 2])
        row = store.index[(store.index["dataset"] == t.meta["dataset"]) & (store.index["volume"] == t.meta["volume"])
                          & (store.index["image_key"] == t.meta["image_key"]) & (store.index["slice"] == t.z0 + z)]
        image = store.load_image(row.iloc[0])
        box = t.boxes.get(z)
        _panel(axes[r, 0], image, title=f"{label}\n{t.meta['volume']} z={t.z0 + z}")
        _panel(axes[r, 1], image, t.gt[z], title="ground truth", colour=PALETTE[2])
        _panel(axes[r, 2], image, t.pred[z], box, f"base: DSC {slice_dice(t.gt[z], t.pred[z]):.2f}",
               contour=t.gt[z])
        ft = predictions.get("finetuned")
        if ft is not None:
            f = ft[i]
            _panel(axes[r, 3], image, f.pred[z], f.boxes.get(z), f"fine-tuned: DSC {slice_dice(f.gt[z], f.pred[z]):.2f}",
                   colour=PALETTE[0], contour=f.gt[z])
        else:
            _panel(axes[r, 3], np.full_like(image, 255), title="fine-tuned: not available")
    fig.suptitle(f"{title}\ncolumns: {', '.join(cols)}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def plot_failures(cases: list[dict], path, title: str):
    plt = _pyplot()
    n = max(1, len(cases))
    import textwrap

    cols = min(n, 3)
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 5.2 * rows), squeeze=False,
                             gridspec_kw={"hspace": 0.75})
    for ax, case in zip(axes.ravel(), cases):
        meta = case["meta"]
        rules = "\n".join(textwrap.fill(r, 44) for r in case["rules"])
        name = meta["task"] or f"{meta['target']} ({meta['modality']})"
        _panel(ax, case["image"], case["pred"], case["box"],
               f"{name}, {meta['volume']}\nDSC {case['dsc']:.2f} (this slice {case['slice_dsc']:.2f})\n{rules}",
               contour=case["gt"])
    for ax in axes.ravel()[len(cases):]:
        ax.axis("off")
    height = fig.get_figheight()  # title band above the tallest panel title (up to ~8 lines)
    fig.suptitle(title + "\norange: prediction, yellow: ground truth, cyan: box", fontsize=10,
                 y=1 - 0.05 / height, va="top")
    fig.subplots_adjust(top=1 - 1.7 / height, bottom=0.02, left=0.02, right=0.98, wspace=0.08)
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def box_sweep(store, models, margins, split: str, seed: int = 0, progress: bool = False):
    """DSC of each target's middle ground-truth slice with the tight box enlarged by each margin
    (px at 256 x 256, clipped to the image), per model. One row per (model, margin, target)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from .run import select

    rows = []
    index = select(store.index, split)
    picks = []
    for key, group in index.groupby(["dataset", "volume", "image_key", "target", "instance"], sort=True):
        group = group.sort_values("slice")
        picks.append(group.iloc[len(group) // 2])
    for name, predictor in models.pairs:
        cache: EmbeddingCache = models.cache_for(predictor)
        for row in tqdm(picks, desc=f"box sweep ({name})", disable=not progress):
            image_fn = (lambda r=row: store.load_image(r))
            gt = store.load_mask(row)
            from .inference import SliceSource

            source = SliceSource(image=image_fn, embedding=(lambda r=row, f=image_fn: cache.get(r["image_id"], f)))
            for margin in margins:
                box = prompt_box(gt, margin)
                pred = segment(predictor, source, box, row["image_id"])
                rows.append({"model": name, "margin": margin, "modality": row["modality"], "target": row["target"],
                             "image_id": row["image_id"], "dsc": slice_dice(gt, pred)})
    return pd.DataFrame(rows)


def plot_box_sweep(sweep, path, title: str, seed: int = 0):
    plt = _pyplot()
    fig, axes = plt.subplots(1, sweep["model"].nunique(), figsize=(5.2 * sweep["model"].nunique(), 3.8),
                             squeeze=False, sharey=True)
    for ax, (name, part) in zip(axes[0], sweep.groupby("model", sort=False)):
        for k, (modality, m) in enumerate(part.groupby("modality")):
            stats = [(margin, g["dsc"].mean(), *bootstrap_ci(g["dsc"], seed)) for margin, g in m.groupby("margin")]
            x, mean, lo, hi = (np.array(v, dtype=float) for v in zip(*stats))
            colour = PALETTE[k % len(PALETTE)]
            n_targets = int((m["margin"] == m["margin"].min()).sum())
            ax.plot(x, mean, marker="o", color=colour, label=f"{modality} (n={n_targets} targets)")
            if not np.isnan(lo).all():
                ax.fill_between(x, lo, hi, color=colour, alpha=0.2)
        ax.set_title(f"{name} model", fontsize=9)
        ax.set_xlabel("box enlarged by (px per side, 256 x 256)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("DSC (middle GT slice), mean and 95% CI")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def size_strata(frames: dict, seed: int = 0):
    """Mean DSC per target-size stratum (mean GT pixels per slice as a fraction of 256 x 256)."""
    import pandas as pd

    rows = []
    for name, frame in frames.items():
        size = frame["pixels"] / frame["n_slices"].clip(lower=1) / (256 * 256)
        strata = pd.cut(size, SIZE_BINS, labels=SIZE_LABELS, include_lowest=True)
        for label in SIZE_LABELS:
            vals = frame.loc[strata == label, "dsc"].to_numpy()
            lo, hi = bootstrap_ci(vals, seed) if vals.size else (math.nan, math.nan)
            rows.append({"model": name, "size": label, "n": int(vals.size),
                         "dsc": float(vals.mean()) if vals.size else math.nan, "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def plot_size_strata(strata, path, title: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    models = list(dict.fromkeys(strata["model"]))
    width = 0.8 / max(1, len(models))
    for k, name in enumerate(models):
        part = strata[strata["model"] == name].reset_index(drop=True)
        x = np.arange(len(part)) + k * width
        err = np.vstack([part["dsc"] - part["lo"], part["hi"] - part["dsc"]]).clip(min=0)
        err = np.nan_to_num(err)
        ax.bar(x, part["dsc"].fillna(0), width, yerr=err, capsize=3, color=PALETTE[k % len(PALETTE)], label=name)
        for xi, (n, v) in zip(x, zip(part["n"], part["dsc"])):
            ax.text(xi, (0 if math.isnan(v) else v) + 0.02, f"n={n}", ha="center", fontsize=7)
    ax.set_xticks(np.arange(len(SIZE_LABELS)) + width * (len(models) - 1) / 2)
    ax.set_xticklabels(SIZE_LABELS)
    ax.set_xlabel("target size (mean GT pixels per slice, % of the 256 x 256 slice)")
    ax.set_ylabel("DSC per target, mean and 95% CI")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out
