"""One ground-truth slice per target: the unit of the studies beyond the paper's ideal boxes (the
annotator sweep, calibration and the correction loop of notebook 08).

    targets = middle_slices(store, split="test")      # one SliceTarget per target of the split
    targets = limit_targets(targets, 40, seed=0)      # at most 40, seeded, spread over the tasks
    predictor.set_embedding(...)  # via set_slice(predictor, targets[0].source(cache)): stored embedding, else encoded
    frame = ...                                        # annotator.annotator_sweep / correction.correction_loop
    summary = task_means(frame, by=("level",))         # per task: mean and group-bootstrap 95% CI

A 2D target is its image; a 3D target is its middle ground-truth slice (as ``failures.box_sweep``), so
every study prompts each target once per setting, from its stored embedding where the cache has one
(``EmbeddingCache`` over the profile's embedding store: no image is encoded twice). A slice's scores
(``score_slice``): DSC, IoU, and NSD in 2D at ``tolerance_mm`` on the curated spacing (one curated
pixel where the file carried no spacing, as ``run._spacing``).

Rows carry ``group`` = ``dataset/case`` (the split unit: a patient, an acquisition's frames, a child's
eyes), the resampling unit of ``tables.group_bootstrap_ci``, and ``task_label`` (``tables.task_labels``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..fileio import MedSAMError
from ..geometry import box_from_mask
from ..paper import NSD_TOLERANCE_MM
from .inference import TARGET_KEY, SliceSource
from .metrics import dice, nsd

META_KEYS = (*TARGET_KEY, "task", "modality", "split")


@dataclass(frozen=True)
class SliceTarget:
    """One target's slice: ``meta`` (the index's ``META_KEYS`` + ``group``, ``task_label``), its curated
    ``slice`` number, ``image_id`` (the embedding store's key), ground truth ``gt`` (H, W) bool,
    ``image()`` giving the (H, W, 3) uint8 image, and the slice's ``spacing`` (y, x) for NSD."""

    meta: dict
    slice: int
    image_id: str
    gt: np.ndarray
    image: Callable[[], np.ndarray]
    spacing: tuple[float, float] = (1.0, 1.0)

    @property
    def key(self) -> tuple:
        return tuple(self.meta[k] for k in TARGET_KEY)

    @property
    def tight_box(self) -> np.ndarray:
        """The ideal box: tight around the ground truth (x0, y0, x1, y1, x1/y1 inclusive)."""
        return box_from_mask(self.gt, f"{'/'.join(map(str, self.key))} slice {self.slice}")

    def source(self, cache=None) -> SliceSource:
        """The slice as ``inference.SliceSource``: its embedding from ``cache`` (an ``EmbeddingCache``)
        when given, else the image (encoded by the predictor)."""
        if cache is None:
            return SliceSource(image=self.image, size=tuple(self.gt.shape))
        return SliceSource(image=self.image, embedding=lambda: cache.get(self.image_id, self.image),
                           size=tuple(self.gt.shape))

    def row(self) -> dict:
        """The target's identifying columns for a long frame."""
        return {**self.meta, "slice": self.slice, "image_id": self.image_id}


def _spacing(row) -> tuple[float, float]:
    known = str(row.get("spacing_known", True)) in ("True", "true", "1")
    if not known:
        return 1.0, 1.0
    return float(row["curated_spacing_y"]), float(row["curated_spacing_x"])


def middle_slices(store, split: str = "test", modalities=None) -> list[SliceTarget]:
    """One ``SliceTarget`` per target of ``split`` (``"all"``: every split): its middle ground-truth slice."""
    from ..data.store import CuratedDataset
    from .run import select

    store = store if isinstance(store, CuratedDataset) else CuratedDataset(store)
    rows = select(store.index, split)
    if modalities is not None:
        rows = rows[rows["modality"].isin(modalities)]
    out = []
    for key, group in rows.groupby(TARGET_KEY, sort=True):
        row = group.sort_values("slice").iloc[len(group) // 2]
        meta = {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in META_KEYS}
        meta["group"] = f"{row['dataset']}/{row['case']}"
        meta["task_label"] = meta["task"] if meta["task"] else f"{meta['target']} ({meta['modality']})"
        out.append(SliceTarget(meta=meta, slice=int(row["slice"]), image_id=str(row["image_id"]),
                               gt=store.load_mask(row), image=(lambda r=row: store.load_image(r)),
                               spacing=_spacing(row)))
    return out


def score_slice(pred: np.ndarray, target: SliceTarget, with_nsd: bool = True,
                tolerance_mm: float = NSD_TOLERANCE_MM) -> dict:
    """``{"dsc", "iou", "nsd"}`` of one predicted slice (NSD nan when ``with_nsd`` is False)."""
    pred, gt = np.asarray(pred, dtype=bool), target.gt
    union = int((pred | gt).sum())
    iou = 1.0 if union == 0 else float((pred & gt).sum() / union)
    value = nsd(pred, gt, target.spacing, tolerance_mm) if with_nsd else math.nan
    return {"dsc": dice(pred, gt), "iou": iou, "nsd": value}


def task_means(frame, by=("level",), metrics=("dsc", "nsd"), seed: int = 0):
    """Per task label (and each ``by`` column): targets, groups, and each metric's mean over targets with
    its 95% CI from ``tables.group_bootstrap_ci`` (whole groups resampled; nan under 2 groups)."""
    import pandas as pd

    from .tables import group_bootstrap_ci

    rows = []
    keys = [*by, "task_label"]
    for values, part in frame.groupby(keys, sort=True):
        out = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        out.update(n_targets=len(part), n_groups=int(part["group"].nunique()))
        for metric in metrics:
            data = part[metric].to_numpy(dtype=np.float64)
            keep = np.isfinite(data)
            lo, hi = group_bootstrap_ci(data[keep], part["group"][keep], seed) if keep.any() else (math.nan,) * 2
            out.update({metric: float(data[keep].mean()) if keep.any() else math.nan,
                        f"{metric}_lo": lo, f"{metric}_hi": hi})
        rows.append(out)
    return pd.DataFrame(rows)


def limit_targets(targets: list[SliceTarget], max_targets: int = 0, seed: int = 0) -> list[SliceTarget]:
    """At most ``max_targets`` of ``targets`` (0 or more than there are: all), drawn seeded and spread over
    the task labels (one per task in turn, each task's targets in a seeded order), in their given order."""
    if int(max_targets) != max_targets or max_targets < 0:
        raise MedSAMError(f"max_targets {max_targets!r} must be a whole number >= 0 (0: every target)")
    if max_targets == 0 or max_targets >= len(targets):
        return list(targets)
    rng = np.random.default_rng(seed)
    queues = {}
    for i, target in enumerate(targets):
        queues.setdefault(target.meta["task_label"], []).append(i)
    queues = {label: list(rng.permutation(queues[label])) for label in sorted(queues)}
    chosen = []
    while len(chosen) < max_targets:
        for label in queues:
            if queues[label] and len(chosen) < max_targets:
                chosen.append(int(queues[label].pop(0)))
    return [targets[i] for i in sorted(chosen)]


def means_table(summary, column: str, metric: str = "dsc", rows=("task_label", "model"), digits: int = 3):
    """``task_means`` rows as a table to read: one row per ``rows`` values, one column per value of
    ``column``, each cell "mean [95% CI]" of ``metric`` ("mean" alone where there is no CI)."""
    def cell(r):
        mean, lo, hi = r[metric], r[f"{metric}_lo"], r[f"{metric}_hi"]
        if math.isnan(mean):
            return "n/a"
        return f"{mean:.{digits}f}" + ("" if math.isnan(lo) else f" [{lo:.{digits}f}, {hi:.{digits}f}]")

    frame = summary.assign(cell=[cell(r) for _, r in summary.iterrows()])
    return frame.pivot_table(index=list(rows), columns=column, values="cell", aggfunc="first", sort=True)
