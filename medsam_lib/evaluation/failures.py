"""Notebook 06's figures: a Fig. 4-style grid per task, the failure modes of Fig. 5 picked by rules
from the worst cases, a box-looseness sweep and DSC by target size.

Failure rules (paper Fig. 5), each evaluated on the worst ground-truth slice of the failed targets
(DSC under ``FAILURE_DSC`` for the model under study, lowest first); a case is labelled with every
rule it meets, in this order:
- ``tiny object``: the ground truth covers < 1% of the 256 x 256 slice (655 px);
- ``low contrast``: |mean inside - mean in a 5 px ring around it| / sd of the ring < 0.5;
- ``missing boundaries``: on over half the ground-truth contour the grey-level gradient is under
  10 grey levels (Sobel magnitude / 4: a step of h levels reads h), i.e. no visible edge;
- ``loose box over similar instances``: other instances of the same target (or other pixels of
  its labels) cover >= 10% of the box, or the box is more than 4 times the object's area.
A failed case meeting none is shown as ``other``.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..figures import (BOX_COLOUR, PALETTE, REFERENCE_COLOUR, display_image, draw_box, draw_contour, fill_mask,
                       legend_handles, save_figure, zoom_to)
from ..geometry import box_from_mask
from ..paper import BOX_JITTER_PX
from .inference import EmbeddingCache, SliceSource, prompt_box, segment
from .metrics import dice
from .tables import bootstrap_ci

TINY_FRACTION = 0.01
LOW_CONTRAST = 0.5
WEAK_EDGE = 10.0
LOOSE_OTHER_FRACTION = 0.10
LOOSE_AREA_RATIO = 4.0
SIZE_BINS = (0.0, 0.005, 0.02, 0.08, 1.0)  # fraction of the 256 x 256 slice
SIZE_LABELS = ("< 0.5%", "0.5-2%", "2-8%", "> 8%")
FAILURE_DSC = 0.9  # a target scoring under this DSC counts as a failure case
MODEL_COLOURS = {"base": PALETTE[1], "finetuned": PALETTE[0]}  # orange, blue: in every figure of notebook 06
MODEL_NAMES = {"base": "base", "finetuned": "fine-tuned"}  # as figures say them
GROUND_TRUTH_COLOUR = PALETTE[2]  # green (filled); its contour is REFERENCE_COLOUR


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def _image_row(store, meta: dict, slice_index: int):
    """The index row of one target's image at a curated slice (its dataset, volume, image key)."""
    index = store.index
    return index[(index["dataset"] == meta["dataset"]) & (index["volume"] == meta["volume"])
                 & (index["image_key"] == meta["image_key"]) & (index["slice"] == slice_index)].iloc[0]


def worst_cases(store, predictions, n: int = 6, below: float = FAILURE_DSC) -> list[dict]:
    """Up to ``n`` targets with DSC under ``below``, lowest first, each at its worst slice, with the
    rules it meets. Each case records how many targets were under ``below`` (``failed``) of how many
    the model was scored on (``of``)."""
    from .chain import worst_slice

    scored = sorted((dice(t.pred, t.gt), i) for i, t in enumerate(predictions))
    failed = [(d, i) for d, i in scored if d < below]
    out = []
    for dsc, i in failed[:n]:
        t = predictions[i]
        z = worst_slice(t)
        image = store.load_image(_image_row(store, t.meta, t.z0 + z))
        box = t.boxes.get(z, prompt_box(t.gt[z]) if t.gt[z].any() else (0, 0, 1, 1))
        same = None
        if int(t.meta["instance"]) > 0:
            index = store.index
            match = index[(index["dataset"] == t.meta["dataset"]) & (index["volume"] == t.meta["volume"])
                          & (index["slice"] == t.z0 + z) & (index["target"] == t.meta["target"])]
            if len(match):
                same = store.load_label_map(match.iloc[0]) > 0
        rules = failure_rules(image, t.gt[z], box, same) or ["other: none of the rules"]
        out.append({"position": i, "slice": z, "dsc": dsc, "slice_dsc": dice(t.pred[z], t.gt[z]),
                    "rules": rules, "image": image, "gt": t.gt[z], "pred": t.pred[z], "box": box, "meta": t.meta,
                    "failed": len(failed), "of": len(predictions)})
    return out


def failure_table(cases: dict):
    """One row per (model, case, rule): the rule's name and what was measured, short enough to read."""
    import pandas as pd

    rows = []
    for name, found in cases.items():
        for case in found:
            for rule in case["rules"]:
                rule_name, _, measured = rule.partition(": ")
                rows.append({"model": name, "target": case["meta"]["target"], "modality": case["meta"]["modality"],
                             "DSC": round(case["dsc"], 3), "rule": rule_name, "measured": measured})
    return pd.DataFrame(rows, columns=["model", "target", "modality", "DSC", "rule", "measured"])


def _panel(ax, image, mask=None, box=None, title="", colour=MODEL_COLOURS["base"], contour=None, zoom=None,
           say_zoomed: bool = True):
    """One image with a filled mask, the reference contour and the box; ``zoom``: a box to zoom onto
    when it is small (``figures.zoom_to``), said in the title when ``say_zoomed``."""
    ax.imshow(display_image(image))
    if mask is not None:
        fill_mask(ax, mask, colour)
    if contour is not None:
        draw_contour(ax, contour, linewidth=0.9)
    if box is not None:
        draw_box(ax, box, linewidth=1.2)
    if zoom is not None and zoom_to(ax, zoom, image.shape[:2]) and say_zoomed:
        title += " (zoomed)"
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay_legend(fig, models: list[str], ground_truth_fill: bool = False):
    entries = [("patch", GROUND_TRUTH_COLOUR, "ground truth")] if ground_truth_fill else []
    entries += [("patch", MODEL_COLOURS.get(m, PALETTE[3]), f"{MODEL_NAMES.get(m, m)} prediction") for m in models]
    entries += [("line", REFERENCE_COLOUR, "ground-truth contour"), ("line", BOX_COLOUR, "box prompt")]
    fig.legend(handles=legend_handles(*entries), loc="lower center", ncol=len(entries), fontsize=8, frameon=False)


def task_grid(store, predictions: dict, path, title: str):
    """Fig. 4 style: per task label one row (image, GT, base, fine-tuned), the target with the
    median base DSC at its middle ground-truth slice. Small targets are shown zoomed."""
    plt = _pyplot()
    base = predictions["base"]
    labels = {}
    for i, t in enumerate(base):
        label = t.meta["task"] or f"{t.meta['target']} ({t.meta['modality']}) *"
        labels.setdefault(label, []).append(i)
    names = sorted(labels)
    fig, axes = plt.subplots(len(names), 4, figsize=(8.4, 2.45 * len(names) + 1.0), squeeze=False)
    ft = predictions.get("finetuned")
    for r, label in enumerate(names):
        ranked = sorted(labels[label], key=lambda i: dice(base[i].pred, base[i].gt))
        i = ranked[len(ranked) // 2]
        t = base[i]
        gt_slices = np.flatnonzero(t.gt.any(axis=(1, 2)))
        z = int(gt_slices[len(gt_slices) // 2])
        image = store.load_image(_image_row(store, t.meta, t.z0 + z))
        box = t.boxes.get(z)
        near = box_from_mask(t.gt[z])
        _panel(axes[r, 0], image, title=f"{label}\n{t.meta['volume']} z={t.z0 + z}", zoom=near)
        _panel(axes[r, 1], image, t.gt[z], title="ground truth", colour=GROUND_TRUTH_COLOUR, zoom=near,
               say_zoomed=False)
        _panel(axes[r, 2], image, t.pred[z], box, f"base: DSC {dice(t.pred[z], t.gt[z]):.2f}",
               colour=MODEL_COLOURS["base"], contour=t.gt[z], zoom=near, say_zoomed=False)
        if ft is not None:
            f = ft[i]
            _panel(axes[r, 3], image, f.pred[z], f.boxes.get(z), f"fine-tuned: DSC {dice(f.pred[z], f.gt[z]):.2f}",
                   colour=MODEL_COLOURS["finetuned"], contour=f.gt[z], zoom=near, say_zoomed=False)
        else:
            _panel(axes[r, 3], np.full_like(image, 255), title="fine-tuned: not available")
    height = fig.get_figheight()
    fig.suptitle(f"{title}\ncolumns: image, ground truth, base, fine-tuned; one slice of one target per task "
                 "(DSC of that slice); * = no paper task", fontsize=10, y=1 - 0.05 / height, va="top")
    _overlay_legend(fig, ["base"] + (["finetuned"] if ft is not None else []), ground_truth_fill=True)
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1 - 0.6 / height))
    return save_figure(fig, path, close=True)


def plot_failures(cases: list[dict], path, title: str, model: str = "base"):
    """The failure cases of one model, each with its DSC and the rules it meets (or a note that no
    target fell under ``FAILURE_DSC``)."""
    import textwrap

    plt = _pyplot()
    n = max(1, len(cases))
    cols = min(n, 3)
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 5.0 * rows + 1.0), squeeze=False)
    colour = MODEL_COLOURS.get(model, PALETTE[3])
    for ax, case in zip(axes.ravel(), cases):
        meta = case["meta"]
        rules = "\n".join(textwrap.fill(r, 40) for r in case["rules"])
        name = meta["task"] or f"{meta['target']} ({meta['modality']})"
        _panel(ax, case["image"], case["pred"], case["box"],
               f"{name}, {meta['volume']}\nDSC {case['dsc']:.2f} (this slice {case['slice_dsc']:.2f})\n{rules}",
               colour=colour, contour=case["gt"], zoom=box_from_mask(case["gt"]) if case["gt"].any() else None)
    for ax in axes.ravel()[len(cases):]:
        ax.axis("off")
    if not cases:
        axes[0, 0].text(0.5, 0.5, f"no target under DSC {FAILURE_DSC:g}", ha="center", va="center")
    height = fig.get_figheight()
    fig.suptitle(title, fontsize=10, y=1 - 0.05 / height, va="top")
    _overlay_legend(fig, [model])
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1 - 0.45 / height))
    return save_figure(fig, path, close=True)


def box_sweep(store, models, margins, split: str, seed: int = 0, progress: bool = True):
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
        for row in tqdm(picks, desc=f"box sweep ({name})", unit="target", disable=not progress):
            image_fn = (lambda r=row: store.load_image(r))
            gt = store.load_mask(row)
            source = SliceSource(image=image_fn, embedding=(lambda r=row, f=image_fn: cache.get(r["image_id"], f)))
            for margin in margins:
                box = prompt_box(gt, margin)
                pred = segment(predictor, source, box, row["image_id"])
                rows.append({"model": name, "margin": margin, "modality": row["modality"], "target": row["target"],
                             "image_id": row["image_id"], "dsc": dice(pred, gt)})
    return pd.DataFrame(rows)


def plot_box_sweep(sweep, path, title: str, seed: int = 0, training_jitter: int = BOX_JITTER_PX[1]):
    """Mean DSC per modality against the margin, one panel per model; a bootstrap 95% CI band only
    where a modality has 2 or more targets (n is in the legend); the paper's training jitter range shaded."""
    plt = _pyplot()
    names = list(dict.fromkeys(sweep["model"]))
    modalities = sorted(sweep["modality"].unique())
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.4), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        part = sweep[sweep["model"] == name]
        ax.axvline(training_jitter, color="grey", ls="--", lw=1)
        for k, modality in enumerate(modalities):
            m = part[part["modality"] == modality]
            n_targets = int((m["margin"] == m["margin"].min()).sum())
            stats = [(margin, g["dsc"].mean(), *bootstrap_ci(g["dsc"], seed)) for margin, g in m.groupby("margin")]
            x, mean, lo, hi = (np.array(v, dtype=float) for v in zip(*stats))
            colour = PALETTE[k % len(PALETTE)]
            ax.plot(x, mean, marker="o", color=colour, label=f"{modality} (n={n_targets})")
            if n_targets >= 2:
                ax.fill_between(x, lo, hi, color=colour, alpha=0.15)
        ax.set_title(f"{MODEL_NAMES.get(name, name)} model", fontsize=9)
        ax.set_xlabel("box enlarged by (px per side, at 256 x 256)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("DSC of the middle GT slice (0-1)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    jitter = f"training jitter: up to {training_jitter} px (paper 3.2)"
    handles += [plt.Line2D([], [], color="grey", ls="--", lw=1)]
    labels += [jitter]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False,
               title="modality (n = targets); band: bootstrap 95% CI where n >= 2", title_fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return save_figure(fig, path, close=True)


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
    """Bars of mean DSC per size stratum and model (colours as in the overlays); error bars only
    where a stratum has 2 or more targets; n under each bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    models = list(dict.fromkeys(strata["model"]))
    width = 0.8 / max(1, len(models))
    for k, name in enumerate(models):
        part = strata[strata["model"] == name].reset_index(drop=True)
        x = np.arange(len(part)) + k * width
        colour = MODEL_COLOURS.get(name, PALETTE[k % len(PALETTE)])
        ax.bar(x, part["dsc"].fillna(0), width, color=colour, label=MODEL_NAMES.get(name, name))
        ci = (part["n"] >= 2) & part["lo"].notna()
        if ci.any():
            mean = part.loc[ci, "dsc"]
            ax.errorbar(x[ci.to_numpy()], mean, yerr=np.vstack([mean - part.loc[ci, "lo"], part.loc[ci, "hi"] - mean]),
                        fmt="none", ecolor="black", capsize=3, lw=1)
        for xi, n, v in zip(x, part["n"], part["dsc"]):
            ax.text(xi, 0.02, f"n={n}" if n else "none", ha="center", va="bottom", fontsize=7, rotation=90,
                    color="white" if n and not math.isnan(v) and v > 0.15 else "black")
    ax.set_xticks(np.arange(len(SIZE_LABELS)) + width * (len(models) - 1) / 2)
    ax.set_xticklabels(SIZE_LABELS)
    ax.set_xlabel("target size (mean GT pixels per slice, % of the 256 x 256 slice)")
    ax.set_ylabel("DSC per target (0-1), mean")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8, title="model (error bars: bootstrap 95% CI where n >= 2)", title_fontsize=7,
              loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(models), frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, close=True)
