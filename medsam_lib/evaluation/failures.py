"""Notebook 06's figures: a Fig. 4-style grid per task, the failure modes of Fig. 5 picked by rules
from the worst cases, a box-looseness sweep and DSC by target size.

Failure rules (paper Fig. 5), each evaluated on the worst ground-truth slice of a target (the slice
with the lowest DSC for the model under study); a case is labelled with every rule it meets, in this order:
- ``tiny object``: the ground truth covers < 1% of the 256 x 256 slice (655 px);
- ``low contrast``: |mean inside - mean in a 5 px ring around it| / sd of the ring < 0.5;
- ``missing boundaries``: on over half the ground-truth contour the grey-level gradient is under
  10 grey levels (Sobel magnitude / 4: a step of h levels reads h), i.e. no visible edge;
- ``loose box over similar instances``: other instances of the same target (or other pixels of
  its labels) cover >= 10% of the box, or the box holds 2 or more separate objects of the target
  (8-connected parts of >= 0.1% of the slice: glands, two lungs in one box), or the box is more than
  4 times the object's area.
A failed case meeting none is shown as ``other``.

Fig. 5's three failure modes (``MODES``) are read from those rules: ``missing boundaries``;
``low contrast + tiny object`` (both rules, as the paper's small low-contrast liver tumour); ``loose box
over similar instances``. ``failure_modes_table`` counts, per model and task, the targets under
``FAILURE_DSC`` meeting each mode (0 where looked for and not found) and ``mode_examples`` picks the
lowest-DSC failure of each mode for a Fig. 5-style figure. The box sweep's CIs resample the split's
groups (``dataset/case``: a patient, an acquisition's frames, a child's eyes), not targets.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..figures import (BOX_COLOUR, MODEL_COLOURS, MODEL_NAMES, PALETTE, REFERENCE_COLOUR, display_image, draw_box,
                       draw_contour, fill_mask, legend_handles, save_figure, zoom_to)
from ..geometry import box_from_mask
from ..paper import BOX_JITTER_PX
from .inference import EmbeddingCache, SliceSource, prompt_box, segment
from .metrics import dice
from .tables import bootstrap_ci, group_bootstrap_ci

TINY_FRACTION = 0.01
LOW_CONTRAST = 0.5
WEAK_EDGE = 10.0
LOOSE_OTHER_FRACTION = 0.10
LOOSE_AREA_RATIO = 4.0
SIZE_BINS = (0.0, 0.005, 0.02, 0.08, 1.0)  # fraction of the 256 x 256 slice
SIZE_LABELS = ("< 0.5%", "0.5-2%", "2-8%", "> 8%")
FAILURE_DSC = 0.9  # a target scoring under this DSC counts as a failure case
MIN_OBJECT_PX = 66  # a separate object of the target counts from 0.1% of the 256 x 256 slice
MODES = ("missing boundaries", "low contrast + tiny object", "loose box over similar instances")  # Fig. 5
NO_MODE = "none of the three"
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
    labelled, _ = ndimage.label(gt & inside, structure=np.ones((3, 3), bool))
    objects = int((np.bincount(labelled.ravel())[1:] >= MIN_OBJECT_PX).sum())
    if objects >= 2 and not any(f.startswith("loose") for f in found):
        found.append(f"loose box over similar instances: the box holds {objects} separate objects of the target")
    ratio = box_area / max(1, int(gt.sum()))
    if ratio > LOOSE_AREA_RATIO and not any(f.startswith("loose") for f in found):
        found.append(f"loose box over similar instances: the box is {ratio:.1f} x the object's area")
    return found


def _image_row(store, meta: dict, slice_index: int):
    """The index row of one target's image at a curated slice (its dataset, volume, image key)."""
    index = store.index
    return index[(index["dataset"] == meta["dataset"]) & (index["volume"] == meta["volume"])
                 & (index["image_key"] == meta["image_key"]) & (index["slice"] == slice_index)].iloc[0]


def _same_label(store, meta: dict, slice_index: int):
    """The pixels of every instance of an instance target's label at one slice (None for a semantic target)."""
    if int(meta["instance"]) <= 0:
        return None
    index = store.index
    match = index[(index["dataset"] == meta["dataset"]) & (index["volume"] == meta["volume"])
                  & (index["slice"] == slice_index) & (index["target"] == meta["target"])]
    return store.load_label_map(match.iloc[0]) > 0 if len(match) else None


def _target_case(store, t) -> dict:
    """One target at its worst slice (``chain.worst_slice``): image, ground truth, prediction, box and rules."""
    from .chain import worst_slice

    z = worst_slice(t)
    image = store.load_image(_image_row(store, t.meta, t.z0 + z))
    box = t.boxes.get(z, prompt_box(t.gt[z]) if t.gt[z].any() else (0, 0, 1, 1))
    rules = failure_rules(image, t.gt[z], box, _same_label(store, t.meta, t.z0 + z))
    return {"slice": z, "curated_slice": t.z0 + z, "image": image, "gt": t.gt[z], "pred": t.pred[z], "box": box,
            "meta": t.meta, "rules": rules}


def modes_of(rules: list[str]) -> list[str]:
    """Which of Fig. 5's ``MODES`` a target's rules (``failure_rules``) make: low contrast + tiny object
    needs both rules."""
    names = {r.partition(":")[0] for r in rules}
    met = {"missing boundaries": "missing boundaries" in names,
           "low contrast + tiny object": {"low contrast", "tiny object"} <= names,
           "loose box over similar instances": "loose box over similar instances" in names}
    return [m for m in MODES if met[m]]


def worst_cases(store, predictions, n: int = 6, below: float = FAILURE_DSC) -> list[dict]:
    """Up to ``n`` targets with DSC under ``below``, lowest first, each at its worst slice, with the
    rules it meets. Each case records how many targets were under ``below`` (``failed``) of how many
    the model was scored on (``of``)."""
    scored = sorted((dice(t.pred, t.gt), i) for i, t in enumerate(predictions))
    failed = [(d, i) for d, i in scored if d < below]
    out = []
    for dsc, i in failed[:n]:
        t = predictions[i]
        case = _target_case(store, t)
        case["rules"] = case["rules"] or ["other: none of the rules"]
        out.append({"position": i, "dsc": dsc, "slice_dsc": dice(t.pred[case["slice"]], t.gt[case["slice"]]),
                    **case, "failed": len(failed), "of": len(predictions)})
    return out


def task_label(meta: dict) -> str:
    """A target's task as the figures name it: the paper task, or "target (modality) *" when none."""
    return meta["task"] or f"{meta['target']} ({meta['modality']}) *"


def target_modes(store, predictions, below: float = FAILURE_DSC, progress: bool = True):
    """One row per target: its DSC, whether it fails (DSC under ``below``), the rules at its worst
    slice and one bool column per Fig. 5 mode (``MODES``)."""
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    for i, t in enumerate(tqdm(predictions, desc="failure rules", unit="target", disable=not progress)):
        case = _target_case(store, t)
        dsc = dice(t.pred, t.gt)
        met = modes_of(case["rules"])
        rows.append({"position": i, "task": task_label(t.meta), "dataset": t.meta["dataset"],
                     "target": t.meta["target"], "case": t.meta.get("case", ""), "volume": t.meta["volume"],
                     "dsc": dsc, "failed": dsc < below, "slice": case["slice"], "rules": "; ".join(case["rules"]),
                     **{m: m in met for m in MODES}})
    columns = ["position", "task", "dataset", "target", "case", "volume", "dsc", "failed", "slice", "rules", *MODES]
    return pd.DataFrame(rows, columns=columns)


def failure_modes_table(store, predictions_by_model: dict, below: float = FAILURE_DSC, targets: dict | None = None,
                        progress: bool = True):
    """Per model, task (dataset / target) and Fig. 5 mode (plus ``NO_MODE``): ``n_targets`` scored,
    ``n_failed`` under ``below``, ``failed_meeting`` (failures meeting the mode; 0 where looked for and
    not found), ``flagged`` (all targets meeting it) and the mean DSC of the targets meeting it
    (``dsc_meeting``) and not (``dsc_not``; nan where no target). ``targets``: ``target_modes`` frames
    per model already made (computed here otherwise)."""
    import pandas as pd

    rows = []
    for name, predictions in predictions_by_model.items():
        frame = targets[name] if targets is not None else target_modes(store, predictions, below, progress)
        frame = frame.assign(**{NO_MODE: ~frame[list(MODES)].any(axis=1)})
        for (task, dataset, target), part in frame.groupby(["task", "dataset", "target"], sort=True):
            for mode in (*MODES, NO_MODE):
                meets = part[mode].to_numpy(bool)
                dsc = part["dsc"].to_numpy(float)
                rows.append({"model": name, "task": task, "dataset": dataset, "target": target, "mode": mode,
                             "n_targets": len(part), "n_failed": int(part["failed"].sum()),
                             "failed_meeting": int((meets & part["failed"].to_numpy(bool)).sum()),
                             "flagged": int(meets.sum()),
                             "dsc_meeting": float(dsc[meets].mean()) if meets.any() else math.nan,
                             "dsc_not": float(dsc[~meets].mean()) if (~meets).any() else math.nan})
    return pd.DataFrame(rows, columns=["model", "task", "dataset", "target", "mode", "n_targets", "n_failed",
                                       "failed_meeting", "flagged", "dsc_meeting", "dsc_not"])


def plot_failure_modes(table, path, title: str):
    """Bars: per task, the failures meeting each Fig. 5 mode (and none), one panel per model; the
    tick labels give n failed / n targets."""
    plt = _pyplot()
    names = list(dict.fromkeys(table["model"]))
    modes = [*MODES, NO_MODE]
    tasks = list(dict.fromkeys(zip(table["dataset"], table["target"])))
    fig, axes = plt.subplots(len(names), 1, figsize=(max(7.0, 0.9 * len(tasks) + 3), 3.6 * len(names) + 1.4),
                             squeeze=False)
    width = 0.8 / len(modes)
    for ax, name in zip(axes[:, 0], names):
        part = table[table["model"] == name]
        x = np.arange(len(tasks))
        ticks = []
        for dataset, target in tasks:
            row = part[(part["dataset"] == dataset) & (part["target"] == target)]
            ticks.append(f"{dataset}\n{target}\n{int(row['n_failed'].iloc[0])} of {int(row['n_targets'].iloc[0])} "
                         "failed" if len(row) else f"{dataset}\n{target}")
        top = 1
        for k, mode in enumerate(modes):
            counts = [int(part[(part["dataset"] == d) & (part["target"] == t) & (part["mode"] == mode)]
                          ["failed_meeting"].sum()) for d, t in tasks]
            top = max(top, *counts)
            colour = "lightgrey" if mode == NO_MODE else PALETTE[(k + 2) % len(PALETTE)]
            ax.bar(x + k * width, counts, width, color=colour, label=mode)
            for xi, count in zip(x + k * width, counts):  # every count written, 0 included: looked for
                ax.text(xi, count, str(count), ha="center", va="bottom", fontsize=6)
        ax.set_xticks(x + width * (len(modes) - 1) / 2)
        ax.set_xticklabels(ticks, fontsize=6)
        ax.set_ylabel(f"failures (DSC < {FAILURE_DSC:g}), count")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(0, top * 1.15 + 0.5)
        ax.set_title(f"{MODEL_NAMES.get(name, name)} model", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(modes), fontsize=8, frameon=False,
               title="Fig. 5 failure mode (a failure may meet several; 0 = looked for, none found)", title_fontsize=8)
    fig.suptitle(title, fontsize=10)
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, 0.55 / height, 1, 1))
    return save_figure(fig, path, close=True)


def mode_examples(store, predictions_by_model: dict, model: str = "base", below: float = FAILURE_DSC,
                  targets=None) -> dict:
    """Fig. 5 mode -> the lowest-DSC failure of ``model`` meeting it (at its worst slice, with every
    model's prediction of that slice), or None where this split has none. ``targets``: ``model``'s
    ``target_modes`` frame already made."""
    predictions = predictions_by_model[model]
    frame = targets if targets is not None else target_modes(store, predictions, below, progress=False)
    out = {}
    for mode in MODES:
        found = frame[frame["failed"] & frame[mode]].sort_values(["dsc", "position"])
        if not len(found):
            out[mode] = None
            continue
        i = int(found["position"].iloc[0])
        case = _target_case(store, predictions[i])
        z = case["slice"]
        case.update(position=i, mode=mode, model=model, dsc=float(found["dsc"].iloc[0]),
                    preds={name: p[i].pred[z] for name, p in predictions_by_model.items()},
                    boxes={name: p[i].boxes.get(z, case["box"]) for name, p in predictions_by_model.items()},
                    dscs={name: (dice(p[i].pred, p[i].gt), dice(p[i].pred[z], p[i].gt[z]))
                          for name, p in predictions_by_model.items()})
        out[mode] = case
    return out


def plot_mode_examples(examples: dict, path, title: str):
    """Fig. 5: one row per failure mode (image with the ground-truth contour and the box, then each
    model's prediction), or a "not found in this split" row."""
    import textwrap

    plt = _pyplot()
    models = list(dict.fromkeys(m for case in examples.values() if case for m in case["preds"])) or ["base"]
    cols = 1 + len(models)
    fig, axes = plt.subplots(len(examples), cols, figsize=(3.6 * cols, 4.6 * len(examples) + 1.2), squeeze=False)
    for r, (mode, case) in enumerate(examples.items()):
        if case is None:
            for ax in axes[r]:
                ax.axis("off")
            axes[r, 0].text(0.0, 0.5, f"{mode}:\nnot found in this split", ha="left", va="center", fontsize=9,
                            transform=axes[r, 0].transAxes)
            continue
        meta = case["meta"]
        near = box_from_mask(case["gt"]) if case["gt"].any() else None
        rules = "\n".join(textwrap.fill(rule, 52) for rule in case["rules"])
        _panel(axes[r, 0], case["image"], box=case["box"], contour=case["gt"], zoom=near,
               title=f"{mode}: {task_label(meta)}\n{meta['volume']} z={case['curated_slice']}\n{rules}")
        for c, name in enumerate(models, start=1):
            whole, at = case["dscs"][name]
            _panel(axes[r, c], case["image"], case["preds"][name], case["boxes"][name],
                   f"{MODEL_NAMES.get(name, name)}: DSC {whole:.2f} (this slice {at:.2f})",
                   colour=MODEL_COLOURS.get(name, PALETTE[3]), contour=case["gt"], zoom=near, say_zoomed=False)
    height = fig.get_figheight()
    fig.suptitle(title, fontsize=10, y=1 - 0.05 / height, va="top")
    _overlay_legend(fig, models)
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1 - 0.45 / height))
    return save_figure(fig, path, close=True)


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
                             "dataset": row["dataset"], "group": f"{row['dataset']}/{row['case']}",
                             "image_id": row["image_id"], "dsc": dice(pred, gt)})
    return pd.DataFrame(rows, columns=["model", "margin", "modality", "target", "dataset", "group", "image_id", "dsc"])


def plot_box_sweep(sweep, path, title: str, seed: int = 0, training_jitter: int = BOX_JITTER_PX[1]):
    """Mean DSC per modality against the margin, one panel per model; a bootstrap 95% CI band that
    resamples groups (``group_bootstrap_ci`` over ``box_sweep``'s ``group``: a case's targets move
    together) where a modality has 2 or more groups (targets and groups in the legend); the paper's
    training jitter as a dashed line."""
    from ..fileio import MedSAMError

    if "group" not in sweep:
        raise MedSAMError("box sweep frame: no 'group' column (dataset/case); make it with failures.box_sweep")
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
            n_groups = int(m["group"].nunique())
            stats = [(margin, g["dsc"].mean(), *group_bootstrap_ci(g["dsc"], g["group"], seed))
                     for margin, g in m.groupby("margin")]
            x, mean, lo, hi = (np.array(v, dtype=float) for v in zip(*stats))
            colour = PALETTE[k % len(PALETTE)]
            ax.plot(x, mean, marker="o", color=colour, label=f"{modality} ({n_targets} targets, {n_groups} groups)")
            if n_groups >= 2:
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
               title="modality; band: bootstrap 95% CI resampling groups (cases), where >= 2 groups",
               title_fontsize=8)
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
