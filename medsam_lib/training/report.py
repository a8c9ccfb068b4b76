"""Notebook 04's pieces: the profile's run config, the training curves, and the before/after table.

    cfg = profile_config(profile, steps=40, batch_size=8)   # profile: medsam_lib.profile.Profile
    plot_curves(result.metrics, figures / "04_training_curves.png", title)
    table = before_after(cfg)          # base vs fine-tuned Dice on the validation split
"""
from __future__ import annotations

import os
from pathlib import Path

from ..figures import save_figure
from .config import TrainConfig, config_from_dict


def profile_config(profile, run: str = "decoder", **values) -> TrainConfig:
    """A config on a profile's (``medsam_lib.profile.Profile``) curated store and embedding store, with
    its model, seed and device, into ``training/<run>``; ``values`` set the other fields."""
    layout = profile.layout
    base = {"curated": str(layout.curated("paper")), "embeddings": str(layout.embeddings(profile.model)),
            "model": profile.model, "seed": profile.seed, "device": profile.device, "out": str(layout.training(run))}
    base.update(values)
    return config_from_dict(base, source=f"notebook config for {layout.training(run)}")


def plot_curves(metrics, path: str | os.PathLike, title: str) -> Path:
    """Training loss and validation Dice against the step, side by side (seaborn), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    loss = metrics.dropna(subset=["train_loss"])
    sns.lineplot(data=loss, x="step", y="train_loss", ax=left, color="tab:blue", alpha=0.35, label="per step")
    window = max(1, min(10, len(loss) // 5))
    smooth = loss.assign(train_loss=loss["train_loss"].rolling(window, min_periods=1).mean())
    sns.lineplot(data=smooth, x="step", y="train_loss", ax=left, color="tab:blue", label=f"mean of {window} steps")
    left.set(title="training loss (Dice + BCE)", xlabel="optimiser step", ylabel="loss (unitless)")
    val = metrics.dropna(subset=["val_dice"])
    sns.lineplot(data=val, x="step", y="val_dice", ax=right, color="tab:orange", marker="o", label="validation")
    if len(val):
        right.axhline(val["val_dice"].iloc[0], color="grey", linestyle="--", linewidth=1, label="base model (step 0)")
    right.set(title="validation Dice", xlabel="optimiser step", ylabel="validation Dice (0-1)")
    right.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110, close=True, tight=False)


def before_after(cfg: TrainConfig, checkpoint: str | os.PathLike | None = None, device=None):
    """Per data set and target: validation Dice of the base model and of ``checkpoint`` (default
    ``out/best.pt``), the same pairs, boxes and embeddings; plus an ``all`` row averaged as the run's
    validation Dice is (``val_average``: the mean of the data sets' means, or over targets)."""
    import pandas as pd

    from ..models.finetuned import apply_weights, read_checkpoint
    from ..devices import resolve_device
    from .run import StepModel, prepare, summarize, validate

    device = resolve_device(cfg.device, f"{cfg.source}: key 'device'") if device is None else resolve_device(device)
    run = prepare(cfg, device)
    net = StepModel(run.loaded.model, from_images=cfg.recipe == "full").to(device)
    before = validate(run, net, device)
    path = Path(checkpoint) if checkpoint is not None else Path(cfg.out) / "best.pt"
    record = read_checkpoint(path)
    apply_weights(run.loaded.model, record["weights"], str(path))
    after = validate(run, net, device)
    rows = run.val.rows.assign(base=before, finetuned=after)
    table = rows.groupby(["dataset", "target"]).agg(targets=("base", "size"), base_dsc=("base", "mean"),
                                                    finetuned_dsc=("finetuned", "mean")).reset_index()
    total = pd.DataFrame([{"dataset": "all", "target": "all", "targets": len(rows),
                           "base_dsc": summarize(rows, before, cfg.val_average)[0],
                           "finetuned_dsc": summarize(rows, after, cfg.val_average)[0]}])
    table = pd.concat([table, total], ignore_index=True)
    table["change"] = table["finetuned_dsc"] - table["base_dsc"]
    table.attrs["best_step"] = record["step"]
    return table
