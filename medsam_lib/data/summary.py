"""What notebook 02 shows about a curated store: counts per task and split, intensity histograms
before and after normalisation per modality, and a grid of random slices with their masks.

Figures are saved as PNG (atomically) and returned closed; tables are pandas DataFrames.
Synthetic data are labelled "SYNTHETIC" in every table and figure title.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..figures import BOX_COLOUR, draw_box, fill_mask, legend_handles, save_figure
from .splits import SPLITS
from .store import CuratedDataset

NO_TASK = "(not a paper task)"
MASK_COLOUR = (1.0, 0.35, 0.0)


def coarse_modality(modality: str) -> str:
    """MR-T1, MR-FLAIR, ... -> MR; other names unchanged (CT, PET, X-Ray, ...)."""
    return "MR" if modality.upper().startswith("MR") else modality


def _data_label(index) -> np.ndarray:
    return np.where(index["synthetic"].astype(bool), "SYNTHETIC", "real")


def counts_table(dataset: CuratedDataset):
    """Cases, slices and targets per (data, task) and split: one row per task, columns per split."""
    index = dataset.index.assign(data=_data_label(dataset.index),
                                 task=dataset.index["task"].replace("", NO_TASK),
                                 case_key=dataset.index["dataset"] + "/" + dataset.index["case"])
    grouped = index.groupby(["data", "task", "split"]).agg(cases=("case_key", "nunique"),
                                                           slices=("image_id", "nunique"),
                                                           targets=("mask_member", "size"))
    table = grouped.unstack("split", fill_value=0)
    table.columns = [f"{measure} ({split})" for measure, split in table.columns]
    splits = SPLITS if (index["split"] == "validation").any() else ("train", "test")
    ordered = [f"{m} ({s})" for m in ("cases", "slices", "targets") for s in splits]
    for column in ordered:
        if column not in table.columns:
            table[column] = 0
    return table[ordered].astype(int).sort_index()


def preset_comparison(stores: dict[str, CuratedDataset]):
    """Targets kept per data set under each preset (e.g. {"paper": ..., "official_code": ...})."""
    import pandas as pd

    columns = {}
    for name, store in stores.items():
        index = store.index.assign(data=_data_label(store.index))
        columns[f"targets ({name})"] = index.groupby(["data", "dataset"]).size()
    return pd.DataFrame(columns).fillna(0).astype(int)


def intensity_samples(dataset: CuratedDataset):
    """Long table (data, dataset, modality, stage, value): the raw and normalised samples of every
    curated image (``SAMPLE_SIZE`` random voxels each, drawn before slices were selected)."""
    import pandas as pd

    parts = []
    images = dataset.index.drop_duplicates(["file", "image_key"])
    for _, row in images.iterrows():
        raw, norm = dataset.samples(row["file"], row["image_key"])
        label = "SYNTHETIC" if bool(row["synthetic"]) else "real"
        for stage, values in (("raw", raw), ("normalised", norm)):
            parts.append(pd.DataFrame({"data": label, "dataset": row["dataset"],
                                       "modality": coarse_modality(row["modality"]), "stage": stage,
                                       "value": values.astype(np.float64)}))
    return pd.concat(parts, ignore_index=True)


RAW_UNITS = {"CT": "Hounsfield units (HU)", "PET": "file values (e.g. SUV)"}  # other modalities: no physical unit


def raw_axis_label(modality: str) -> str:
    """The x label of a raw-intensity histogram: HU for CT, the file's own values otherwise."""
    return "raw value, " + RAW_UNITS.get(modality, "file values (no physical unit)")


def plot_intensity_histograms(samples, path: str | Path, preset: str = "paper") -> Path:
    """Per modality: raw intensities (left, one colour per data set) and after the preset (right)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    modalities = sorted(samples["modality"].unique())
    fig, axes = plt.subplots(len(modalities), 2, figsize=(11.5, 2.7 * len(modalities)), squeeze=False)
    synthetic = (samples["data"] == "SYNTHETIC").any()
    for row, modality in enumerate(modalities):
        part = samples[samples["modality"] == modality]
        for col, stage in enumerate(("raw", "normalised")):
            ax = axes[row, col]
            sns.histplot(part[part["stage"] == stage], x="value", hue="dataset", bins=60, stat="density",
                         common_norm=False, element="step", fill=False, ax=ax, legend=(col == 1))
            what = "raw values" if stage == "raw" else f"after the '{preset}' preset (0-255)"
            ax.set_title(f"{modality}: {what}", fontsize=9)
            ax.set_xlabel(raw_axis_label(modality) if stage == "raw" else "grey level after the preset (0-255)",
                          fontsize=8)
            ax.set_ylabel("density (fraction per unit)", fontsize=8)
            if col == 1 and ax.get_legend() is not None:  # outside the panels: it never covers a title or a curve
                sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), title="data set", fontsize=7,
                                title_fontsize=7, frameon=False)
    fig.suptitle(("SYNTHETIC data: " if synthetic else "") + "intensity histograms before and after normalisation",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    return save_figure(fig, path, dpi=110, close=True)


def plot_slice_grid(dataset: CuratedDataset, path: str | Path, per_task: int = 3, seed: int = 0) -> Path:
    """``per_task`` random curated slices per paper task (targets no task uses are pooled in one
    row), with the target's mask filled and its box drawn."""
    import matplotlib.pyplot as plt

    index = dataset.index.assign(group=dataset.index["task"].replace("", NO_TASK))
    groups = sorted(g for g in index["group"].unique() if g != NO_TASK)
    groups += [NO_TASK] if (index["group"] == NO_TASK).any() else []
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(groups), per_task, figsize=(2.3 * per_task, 2.5 * len(groups)), squeeze=False)
    for r, group in enumerate(groups):
        rows = index[index["group"] == group]
        picks = rng.choice(len(rows), size=min(per_task, len(rows)), replace=False)
        for c in range(per_task):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(picks):
                continue
            row = rows.iloc[int(picks[c])]
            image, mask = dataset.load(row)
            ax.imshow(image)
            fill_mask(ax, mask, MASK_COLOUR)
            draw_box(ax, (row["x0"], row["y0"], row["x1"], row["y1"]), linewidth=1.2)
            tag = "SYNTHETIC " if bool(row["synthetic"]) else ""
            what = f"{row['dataset']}: {row['target']}" if group == NO_TASK else group
            ax.set_title(f"{tag}{what}\n{row['volume']} z={row['slice']} ({row['split']})", fontsize=6.5)
    height = fig.get_figheight()  # the title sits in a fixed 0.45 inch band, however many rows there are
    fig.suptitle("Curated 256 x 256 slices with target masks and boxes", fontsize=11, y=1 - 0.1 / height, va="top")
    fig.legend(handles=legend_handles(("patch", MASK_COLOUR, "target mask"), ("line", BOX_COLOUR, "its box")),
               loc="upper center", bbox_to_anchor=(0.5, 1 - 0.3 / height), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))
    return save_figure(fig, path, dpi=110, close=True)
