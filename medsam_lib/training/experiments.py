"""Fine-tuning experiments (issue 20): named variants of one config, one decoder per task, and every
decoder scored on the curated test split with tight and jittered boxes.

    results = run_variants(cfg, {"paper": {}, "no_jitter_train": {"box_jitter": "none"},
                                 "unfit_excluded": {"exclude_unfit": True}})
    per_task(cfg)                                   # one decoder per data set: out/<data set>/
    scores = score_decoders(cfg, {name: r.out / "best.pt" for name, r in results.items()})
    plot_task_curves(results["paper"].val_per_dataset, figures / "curves.png", "paper recipe")

Each variant trains into ``<cfg.out>/<name>`` with ``train(cfg, resume=True)``: a batch killed half
way resumes each run where its last.pt left it, and finished runs are reused as they are.
``score_decoders`` reads the stored embeddings only (recipe ``paper``'s decoders): per target, the
Dice at 256 (``run.validate``) of the base model and of each checkpoint's mask decoder, with the
ground-truth boxes (``tight``) and the fixed jittered boxes (``jittered``, ``data.validation_boxes``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..fileio import MedSAMError
from .config import TrainConfig, config_from_dict

SCORE_COLUMNS = ("variant", "boxes", "dataset", "case", "target", "dice")
BASE_VARIANT = "base"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def variant_config(cfg: TrainConfig, name: str, changes: dict) -> TrainConfig:
    """``cfg`` with ``changes`` (checked as a config is), training into ``<cfg.out>/<name>``."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise MedSAMError(f"{cfg.source}: variant name {name!r} must be a folder name (letters, digits, _ . -)")
    if not isinstance(changes, dict) or "out" in changes:
        raise MedSAMError(f"{cfg.source}: variant {name!r}: changes must be a dict of config keys other than "
                          "'out' (each variant trains into its own folder)")
    values = dict(cfg.as_dict(), **changes, out=str(Path(cfg.out) / name))
    return config_from_dict(values, source=f"{cfg.source} (variant {name})")


def run_variants(cfg: TrainConfig, variants: dict, progress: bool = True) -> dict:
    """Train each ``{name: changes}`` variant of ``cfg`` into ``<cfg.out>/<name>`` (resuming or reusing what
    is there); {name: loop.RunResult}. Every variant's config is checked before any trains."""
    from tqdm.auto import tqdm

    from .loop import train

    configs = {name: variant_config(cfg, name, changes) for name, changes in variants.items()}
    results = {}
    for name, vcfg in tqdm(configs.items(), desc="variants", unit="run", disable=not progress):
        results[name] = train(vcfg, resume=True, progress=progress)
    return results


def per_task(cfg: TrainConfig, datasets: list[str] | None = None, progress: bool = True) -> dict:
    """One decoder per data set (``datasets``; default every data set of the curated store, or the config's
    own ``datasets``), each trained and validated on that data set only, into ``<cfg.out>/<data set>``."""
    from ..data.store import CuratedDataset

    if datasets is None:
        datasets = cfg.dataset_names or sorted(CuratedDataset(cfg.curated).index["dataset"].unique())
    return run_variants(cfg, {name: {"datasets": name} for name in datasets}, progress)


def score_decoders(cfg: TrainConfig, checkpoints: dict, split: str = "test", boxes=("tight", "jittered"),
                   device=None, progress: bool = True, include_base: bool = True):
    """Per target of the curated ``split`` (the config's ``datasets`` only, when set): the Dice at 256 of the
    base model (variant ``base``) and of each ``{variant: checkpoint path}``'s mask decoder, from the stored
    embeddings, with each box kind; a long DataFrame (``SCORE_COLUMNS``). ``include_base=False`` leaves the
    base model's rows out (a caller that scored it already)."""
    import pandas as pd

    from ..devices import resolve_device
    from ..models.finetuned import apply_weights, read_checkpoint
    from .checkpoint import trained_weights
    from .data import load_pairs, select_datasets, validation_boxes
    from .run import Run, StepModel, open_base, validate

    if cfg.recipe != "paper":
        raise MedSAMError(f"{cfg.source}: score_decoders scores mask decoders from stored embeddings (recipe "
                          f"'paper'), not recipe {cfg.recipe!r}")
    unknown = [b for b in boxes if b not in ("tight", "jittered")]
    if unknown or not boxes:
        raise MedSAMError(f"score_decoders: boxes must be tight and/or jittered, got {list(boxes)!r}")
    if BASE_VARIANT in checkpoints:
        raise MedSAMError(f"score_decoders: variant name {BASE_VARIANT!r} is the base model's; rename that checkpoint")
    device = resolve_device(cfg.device, f"{cfg.source}: key 'device'") if device is None else resolve_device(device)
    curated, loaded, base, transform, source, modules = open_base(cfg, device)
    records = {}
    for name, path in checkpoints.items():  # every checkpoint checked before anything is scored
        record = read_checkpoint(path)
        if record["trained_modules"] != ["mask_decoder"]:
            raise MedSAMError(f"{path}: trained {record['trained_modules']}; only mask decoders (recipe 'paper') "
                              "are scored from stored embeddings")
        if record["base"].get("weights_sha256") != base["weights_sha256"]:
            raise MedSAMError(f"{path}: fine-tuned from other base weights than {cfg.model!r} (SHA-256 "
                              f"{str(record['base'].get('weights_sha256'))[:12]}...); score it with its base model")
        records[name] = (str(path), record["weights"])
    index = select_datasets(curated.index, cfg.dataset_names, f"{cfg.source}: key 'datasets'")
    rows = index.rename_axis("row").reset_index()
    rows = rows[rows["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise MedSAMError(f"{cfg.curated}: the curated store has no {split!r} split rows"
                          + (f" in data sets {cfg.datasets}" if cfg.datasets else ""))
    pairs = load_pairs(curated, rows, progress, split)
    run = Run(cfg, loaded, base, transform, curated, pairs, pairs, source, modules)
    net = StepModel(loaded.model, from_images=False).to(device)
    box_sets = {kind: validation_boxes(pairs, kind, cfg.seed) for kind in boxes}
    original = trained_weights(loaded.model, ["mask_decoder"])
    frames = []
    scored = ([(BASE_VARIANT, ("base", original))] if include_base else []) + list(records.items())
    for name, (path, weights) in scored:
        apply_weights(loaded.model, weights, path)
        for kind, kind_boxes in box_sets.items():
            dice = validate(run, net, device, pairs, kind_boxes, progress=progress)
            frames.append(pd.DataFrame({"variant": name, "boxes": kind, "dataset": rows["dataset"],
                                        "case": rows["case"], "target": rows["target"], "dice": dice}))
    apply_weights(loaded.model, original, "base")
    return pd.concat(frames, ignore_index=True)[list(SCORE_COLUMNS)]


def plot_task_curves(val_per_dataset, path: str | os.PathLike, title: str) -> Path:
    """Validation Dice per data set against the optimiser step (``val_per_dataset.csv``'s frame), one line
    per data set, as a PNG (``figures.save_figure``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from ..figures import save_figure

    frame = val_per_dataset.dropna(subset=["dice"])
    if frame.empty:
        raise MedSAMError(f"plot_task_curves: no validation Dice to plot for {title!r} (a run without validation)")
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.lineplot(data=frame, x="step", y="dice", hue="dataset", marker="o", ax=ax)
    ax.set(title=title, xlabel="optimiser step", ylabel="mean target Dice (0-1)")
    ax.legend(title="data set (validation)", fontsize="small", loc="best")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110, close=True, tight=False)


def score_per_task(cfg: TrainConfig, results: dict, variant: str = "one decoder per task", split: str = "test",
                   boxes=("tight", "jittered"), progress: bool = False):
    """``per_task``'s decoders ({data set: RunResult}) each scored on its own data set's ``split`` targets
    (``score_decoders`` with ``datasets`` set), as one variant; the base rows are left to the caller's
    ``score_decoders`` (they are the same targets and boxes)."""
    import pandas as pd

    frames = []
    for dataset, result in results.items():
        frames.append(score_decoders(cfg.replace(datasets=dataset), {variant: Path(result.out) / "best.pt"}, split,
                                     boxes, progress=progress, include_base=False))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SCORE_COLUMNS))


def group_means(scores):
    """Per (variant, boxes, data set, group) the mean target Dice: the group is the split unit (the
    curated ``case``: a subject, an acquisition, a child), so frames or eyes of one group are one value."""
    return scores.groupby(["variant", "boxes", "dataset", "case"], sort=False)["dice"].mean().reset_index()


def versus_base(scores, seed: int = 0):
    """Each variant minus the base model, per box kind: the mean over groups of all data sets (and per
    data set) of the paired group-mean Dice difference, with a bootstrap 95% CI over groups
    (``tables.bootstrap_ci``; nan under 5 groups). Columns: boxes, variant, dataset ('all' or a name),
    groups, base, variant_dice, change, lo, hi."""
    import math

    import pandas as pd

    from ..evaluation.tables import MIN_CASES_TEST, bootstrap_ci

    means = group_means(scores)
    base = means[means["variant"] == BASE_VARIANT].drop(columns="variant")
    rows = []
    for (kind, name), part in means[means["variant"] != BASE_VARIANT].groupby(["boxes", "variant"], sort=False):
        paired = part.merge(base, on=["boxes", "dataset", "case"], suffixes=("_v", "_b"))
        for dataset, sel in [("all", paired)] + list(paired.groupby("dataset", sort=True)):
            diff = (sel["dice_v"] - sel["dice_b"]).to_numpy()
            lo, hi = bootstrap_ci(diff, seed) if diff.size >= MIN_CASES_TEST else (math.nan, math.nan)
            rows.append({"boxes": kind, "variant": name, "dataset": dataset, "groups": int(diff.size),
                         "base": float(sel["dice_b"].mean()), "variant_dice": float(sel["dice_v"].mean()),
                         "change": float(diff.mean()), "lo": lo, "hi": hi})
    return pd.DataFrame(rows)
