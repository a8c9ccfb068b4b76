"""What a training run is built from (``prepare``) and how it is scored (``validate``); the loop is ``loop.py``.

- ``prepare(cfg, device)``: the base model (only the recipe's modules trainable), the curated train and
  validation pairs (config ``datasets``, ``validation``, ``val_max_targets`` stratified per data set,
  ``exclude_unfit``) with the validation boxes (``val_boxes``), and the input source: the embedding
  store bound to the base model and the curated store (recipe ``paper``; ``EmbeddingStore.bind``,
  read-only), or curated images (recipe ``full``). ``open_base`` is its first half (model and inputs),
  also what ``experiments.score_decoders`` scores with.
- ``StepModel``: (inputs, boxes) -> low-resolution mask logits; what DDP wraps.
- ``validate``: per-target Dice at 256 on the validation pairs with the validation boxes;
  ``summarize``: those as the run's one number (``val_average``) and per data set.
- ``autocast``: the one precision rule (bfloat16 autocast on CUDA unless ``fp32``, or with ``bf16``).
Notebook 04's before/after table (``report.before_after``) reuses all four.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..fileio import MedSAMError
from .config import TrainConfig
from .data import (Pairs, embedding_source, image_source, load_pairs, make_batch, select_datasets, split_rows,
                   stratified_sample, unfit_reasons, unfit_table, validation_boxes)
from .loss import dice_score

VAL_BATCH = 16


class StepModel(nn.Module):
    """What DDP wraps: (inputs, boxes in model pixels) -> (B, 1, 256, 256) low-resolution logits.
    ``inputs`` are embeddings (B, 256, 64, 64), or model input images (B, 3, S, S) with ``from_images``."""

    def __init__(self, model: nn.Module, from_images: bool):
        super().__init__()
        self.model, self.from_images = model, from_images

    def forward(self, inputs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        m = self.model
        embeddings = m.image_encoder(inputs) if self.from_images else inputs
        with torch.no_grad():  # the prompt encoder is frozen in both recipes
            sparse, dense = m.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        low_res, _ = m.mask_decoder(image_embeddings=embeddings, image_pe=m.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)
        return low_res


def autocast(device: torch.device, precision: str):
    """The run's autocast context: bfloat16 on CUDA unless ``precision`` is ``fp32``; anywhere with ``bf16``."""
    bf16 = device.type == "cuda" and precision != "fp32" or precision == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def checkpoint_blocks(blocks) -> None:
    """Activation checkpointing: each block recomputed in the backward pass while training. The
    blocks' forward is wrapped in place, so the state-dict keys (and checkpoints) are unchanged."""
    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        def forward(*args, _inner=block.forward, _block=block):
            if _block.training and torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False)
            return _inner(*args)
        block.forward = forward


@dataclass
class Run:
    """Everything a run is built from (also what notebook 04's before/after comparison reuses)."""

    cfg: TrainConfig
    loaded: object  # zoo.LoadedModel of the base
    base: dict  # zoo.base_reference
    transform: object
    curated: object
    train: Pairs
    val: Pairs
    source: object  # image_ids -> inputs
    modules: list[str]  # trained top-level modules
    val_boxes: np.ndarray | None = None  # (N, 4) the validation boxes at 256 (None: val.boxes)
    unfit: object = None  # DataFrame: per data set, unfit training targets and how many were left out
    val_source: str = ""  # where the validation rows came from: "index" or "carve"

    @property
    def box_scale(self) -> torch.Tensor:
        sx, sy = self.transform.geometry((256, 256)).box_scale
        return torch.tensor([sx, sy, sx, sy], dtype=torch.float32)


def check_embeddings_path(cfg: TrainConfig) -> None:
    """Refuse a missing embedding store (cheap: before the model is loaded)."""
    path = Path(cfg.embeddings)
    if not (path / "store.json").is_file():
        raise MedSAMError(f"{cfg.source}: key 'embeddings': {path} is not an embedding store (no store.json); "
                          f"build it with `python -m medsam_lib embed --curated {cfg.curated} --model {cfg.model} "
                          f"--out {path}`")


def open_embeddings(cfg: TrainConfig, loaded, curated, store=None):
    """The run's embedding store (``store``: one already open), bound to the base model and the curated
    store (``EmbeddingStore.bind``): refused when incomplete or damaged (naming the command that repairs
    it), made by another model, transform or preset, or from other images than the curated store holds."""
    try:
        if store is None:
            from ..embeddings import open_store

            return open_store(cfg.embeddings, model=loaded, curated=curated)
        return store.bind(loaded, curated)
    except MedSAMError as exc:
        raise MedSAMError(f"{cfg.source}: key 'embeddings': {exc}") from None


def open_base(cfg: TrainConfig, device, store=None):
    """(curated store, loaded base model, its zoo.base_reference, its transform, the input source,
    the trained modules) for ``cfg``: the stores checked before the model is loaded."""
    from ..data.store import CuratedDataset
    from ..models.transforms import for_model
    from ..models.zoo import base_reference, load_model

    if not (Path(cfg.curated) / "curation.json").is_file():
        raise MedSAMError(f"{cfg.source}: key 'curated': {cfg.curated} is not a curated store (no curation.json); "
                          "run `python -m medsam_lib data curate` first")
    curated = CuratedDataset(cfg.curated)
    select_datasets(curated.index, cfg.dataset_names, f"{cfg.source}: key 'datasets'")  # refused before the model
    if cfg.recipe == "paper" and store is None:
        check_embeddings_path(cfg)
    loaded = load_model(cfg.model, device=device)
    base = base_reference(cfg.model, loaded.arch)
    transform = for_model(loaded)
    if cfg.recipe == "paper":
        source, modules = embedding_source(open_embeddings(cfg, loaded, curated, store)), ["mask_decoder"]
    else:
        source, modules = image_source(curated, curated.index, transform), ["image_encoder", "mask_decoder"]
    return curated, loaded, base, transform, source, modules


def prepare(cfg: TrainConfig, device, store=None, progress: bool = False) -> Run:
    """Load the base model, the curated pairs and the input source; freeze what the recipe freezes."""
    curated, loaded, base, transform, source, modules = open_base(cfg, device, store)
    index = select_datasets(curated.index, cfg.dataset_names, f"{cfg.source}: key 'datasets'")
    train_rows, val_rows, val_source = split_rows(index, cfg.validation, cfg.val_fraction, cfg.seed,
                                                  f"{cfg.source}: key 'validation'")
    val_rows = stratified_sample(val_rows, cfg.val_max_targets, cfg.seed)
    train = load_pairs(curated, train_rows, progress, "train")
    val = load_pairs(curated, val_rows, progress, "validation")
    unfit = unfit_table(train, cfg.exclude_unfit)
    if cfg.exclude_unfit:
        train = train.subset(unfit_reasons(train) == "")
        if not len(train):
            raise MedSAMError(f"{cfg.source}: key 'exclude_unfit': every training target is unfit for a box "
                              "prompt; nothing is left to train on")
    model = loaded.model
    for p in model.parameters():
        p.requires_grad_(False)
    for name in modules:
        for p in getattr(model, name).parameters():
            p.requires_grad_(True)
    # The loss never reaches the IoU head (its score is unused), so it gets no gradient in any recipe;
    # marking it frozen says so, and keeps DDP from waiting for gradients that never come.
    for p in model.mask_decoder.iou_prediction_head.parameters():
        p.requires_grad_(False)
    if cfg.activation_checkpointing and hasattr(model.image_encoder, "blocks"):
        checkpoint_blocks(model.image_encoder.blocks)
    return Run(cfg, loaded, base, transform, curated, train, val, source, modules,
               validation_boxes(val, cfg.val_boxes, cfg.seed), unfit, val_source)


def validate(run: Run, net: StepModel, device, pairs: Pairs | None = None, boxes: np.ndarray | None = None,
             progress: bool = False) -> np.ndarray:
    """Per-target Dice at 256 of ``pairs`` (default: the validation pairs) with ``boxes`` (default: the
    run's validation boxes for its own pairs, the ground-truth boxes for others); eval mode, no grad;
    the caller puts the modules back in training mode."""
    from tqdm.auto import tqdm

    if pairs is None:
        pairs, boxes = run.val, run.val_boxes if boxes is None else boxes
    boxes = pairs.boxes if boxes is None else boxes
    scores = np.empty(len(pairs), dtype=np.float64)
    net.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(pairs), VAL_BATCH), desc="validating", unit="batch", disable=not progress):
            idx = list(range(start, min(start + VAL_BATCH, len(pairs))))
            batch = make_batch(pairs, idx, boxes[idx], run.source)
            with autocast(device, run.cfg.precision):
                logits = net(batch.inputs.to(device), (batch.boxes * run.box_scale).to(device))
            scores[idx] = dice_score(logits, batch.targets.to(device)).cpu().numpy()
    return scores


def summarize(rows, scores: np.ndarray, average: str) -> tuple[float, dict]:
    """(the validation Dice, {data set: (targets, mean target Dice)}) of per-target ``scores`` of ``rows``:
    ``average`` ``dataset``: the mean over data sets of their means; ``target``: the mean over targets."""
    per = {}
    datasets = rows["dataset"].to_numpy()
    for name in sorted(set(datasets)):
        mine = scores[datasets == name]
        per[name] = (int(len(mine)), float(mine.mean()))
    if average == "dataset":
        return float(np.mean([dice for _, dice in per.values()])), per
    return float(np.mean(scores)), per
