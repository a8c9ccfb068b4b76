"""The training loop: ``train(config, resume=False)``, one process or one torchrun rank.

Recipe ``paper`` (default; paper 2.3/3.2): image and prompt encoders frozen, the mask decoder trained
from stored embeddings (no image encoder in the loop), one mask per box, Adam. Recipe ``full`` (the
released train_one_gpu.py): image encoder + mask decoder trained from curated images, prompt encoder
frozen, AdamW; optional activation checkpointing of ViT-B's blocks.

Each step: the sampler's next global batch (this rank's part), boxes jittered (paper 3.2) and scaled
to the model input, loss = Dice + BCE (``loss``), a non-finite loss stops the run (MedSAMError with
the step and the batch's image ids; nothing is written, the last good checkpoint stays). Every
``val_every`` steps (and at step 0: the base model) rank 0 computes the mean validation Dice with
the unjittered boxes; a better one writes ``best.pt``. (The released code kept the lowest
*training* loss as its best model; we select on validation Dice. Without a validation split,
``best.pt`` is the last step's weights.) The IoU head gets no gradient (its score is not in the
loss) and is marked frozen. Every ``checkpoint_every`` steps
and at the end: ``last.pt`` and ``metrics.csv``. bfloat16 autocast on CUDA, float32 on CPU.
"""
from __future__ import annotations

import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import devices
from ..fileio import MedSAMError, atomic_path, check_output_folder
from ..locks import output_folder
from ..models.zoo import MODELS
from . import checkpoint as ckpt
from .config import TrainConfig, write_config
from .data import Pairs, StreamSampler, embedding_source, image_source, jitter_box, load_pairs, make_batch, train_val_split
from .loss import dice_bce_loss, dice_score

METRIC_COLUMNS = ("step", "epoch", "train_loss", "val_dice")
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

    @property
    def box_scale(self) -> torch.Tensor:
        sx, sy = self.transform.geometry((256, 256)).box_scale
        return torch.tensor([sx, sy, sx, sy], dtype=torch.float32)


@dataclass
class RunResult:
    out: Path
    step: int
    best_step: int
    best_val_dice: float
    metrics: object  # DataFrame
    reused: bool  # a finished run found and returned as it was


def check_embeddings_path(cfg: TrainConfig) -> None:
    """Refuse a missing embedding store (cheap: before the model is loaded)."""
    path = Path(cfg.embeddings)
    if not (path / "store.json").is_file():
        raise MedSAMError(f"{cfg.source}: key 'embeddings': {path} is not an embedding store (no store.json); "
                          f"build it with `python -m medsam_lib embed --curated {cfg.curated} --model {cfg.model} "
                          f"--out {path}`")


def open_embeddings(cfg: TrainConfig, base: dict, transform_key: str, preset: str, needed: list[str], store=None,
                    needed_sha: dict | None = None):
    """The run's embedding store, refused when missing, incomplete or made by another model."""
    path = Path(cfg.embeddings)
    if store is None:
        check_embeddings_path(cfg)
        from ..embeddings import open_store

        store = open_store(path, hint_curated=cfg.curated)
    meta, header = store.meta, path / "store.json"
    if meta.get("weights_sha256") != base["weights_sha256"]:
        raise MedSAMError(f"{header}: embeddings made by model {meta.get('model')!r} (weights SHA-256 "
                          f"{str(meta.get('weights_sha256'))[:12]}...), not by the base model {cfg.model!r} "
                          f"({base['weights_sha256'][:12]}...); embed with {cfg.model!r} or set model to theirs")
    for key, want in (("transform", transform_key), ("preset", preset)):
        if meta.get(key) not in (None, want):
            raise MedSAMError(f"{header}: embeddings made with {key} {meta.get(key)!r}, this run needs {want!r}")
    have = set(store.ids())
    missing = sorted({i for i in needed if i not in have})
    if missing:
        raise MedSAMError(f"{header}: no embeddings for {len(missing)} of the {len(set(needed))} train/validation "
                          f"images (e.g. {missing[0]!r}); rerun `python -m medsam_lib embed` on {cfg.curated}")
    images, curated_sha = meta.get("images") or {}, dict(needed_sha or {})
    changed = sorted(i for i, sha in curated_sha.items() if i in images and images[i].get("image_sha256") not in (None, sha))
    if changed:
        raise MedSAMError(f"{header}: {len(changed)} embeddings were made from other images than {cfg.curated} now "
                          f"holds (e.g. {changed[0]!r}); rerun `python -m medsam_lib embed` to update the store")
    return store


def prepare(cfg: TrainConfig, device, store=None, progress: bool = False) -> Run:
    """Load the base model, the curated pairs and the input source; freeze what the recipe freezes."""
    from ..data.store import CuratedDataset
    from ..models.zoo import base_reference
    from ..models.transforms import for_model
    from ..models.zoo import load_model

    if not (Path(cfg.curated) / "curation.json").is_file():
        raise MedSAMError(f"{cfg.source}: key 'curated': {cfg.curated} is not a curated store (no curation.json); "
                          "run `python -m medsam_lib data curate` first")
    curated = CuratedDataset(cfg.curated)
    if cfg.recipe == "paper" and store is None:
        check_embeddings_path(cfg)
    loaded = load_model(cfg.model, device=device)
    base = base_reference(cfg.model, loaded.arch)
    transform = for_model(loaded)
    train_rows, val_rows = train_val_split(curated.index, cfg.val_fraction, cfg.seed)
    if cfg.val_max_targets and len(val_rows) > cfg.val_max_targets:
        val_rows = val_rows.sample(cfg.val_max_targets, random_state=cfg.seed).sort_index()
    train, val = load_pairs(curated, train_rows, progress, "train"), load_pairs(curated, val_rows, progress, "validation")
    if cfg.recipe == "paper":
        rows = curated.index.drop_duplicates("image_id")
        store = open_embeddings(cfg, base, transform.key, curated.preset, train.image_ids + val.image_ids, store,
                                dict(zip(rows["image_id"], rows["image_sha256"])))
        source, modules = embedding_source(store), ["mask_decoder"]
    else:
        source, modules = image_source(curated, curated.index, transform), ["image_encoder", "mask_decoder"]
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
    return Run(cfg, loaded, base, transform, curated, train, val, source, modules)


def validate(run: Run, net: StepModel, device, autocast, pairs: Pairs | None = None) -> np.ndarray:
    """Per-target Dice on the validation pairs with their unjittered boxes (eval mode, no grad;
    the caller puts the modules back in training mode)."""
    pairs = run.val if pairs is None else pairs
    scores = np.empty(len(pairs), dtype=np.float64)
    net.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), VAL_BATCH):
            idx = list(range(start, min(start + VAL_BATCH, len(pairs))))
            batch = make_batch(pairs, idx, pairs.boxes[idx], run.source)
            with autocast():
                logits = net(batch.inputs.to(device), (batch.boxes * run.box_scale).to(device))
            scores[idx] = dice_score(logits, batch.targets.to(device)).cpu().numpy()
    return scores


def _check_out(cfg: TrainConfig, resume: bool):
    """The record to resume from (None: start fresh); refuse to overwrite a run without --resume."""
    out, last = Path(cfg.out), Path(cfg.out) / "last.pt"
    if not resume:
        present = [p.name for p in (last, out / "best.pt") if p.exists()]
        if present:
            state = ""
            if last.exists():
                done = ckpt.load_training(last)["training"]
                state = (f"a finished run ({done['step']} steps)" if done["step"] >= done["steps"]
                         else f"a run stopped at step {done['step']} of {done['steps']}")
            raise MedSAMError(f"{out}: already holds {state or ', '.join(present)}; pass --resume to continue or "
                              "reuse it, or choose another out folder (nothing is overwritten)")
        return None
    if not last.exists():
        return None
    record = ckpt.load_training(last)
    training = record["training"]
    differ = [k for k, v in cfg.identity().items() if training["identity"].get(k) != v]
    if differ:
        k = differ[0]
        raise MedSAMError(f"{last}: --resume from a run with {k} = {training['identity'].get(k)!r}, but {cfg.source} "
                          f"has {k} = {getattr(cfg, k)!r}" + (f" (and {differ[1:]} differ)" if differ[1:] else "")
                          + "; resume with the config it was made with, or train into another out folder")
    if training["step"] > cfg.steps:
        raise MedSAMError(f"{last}: the run is already at step {training['step']}, past steps = {cfg.steps} in "
                          f"{cfg.source}")
    return record


def _write_metrics(path: Path, metrics: list[dict]):
    import pandas as pd

    frame = pd.DataFrame(metrics, columns=list(METRIC_COLUMNS))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return frame


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, store=None) -> RunResult:
    """Train as ``cfg`` says (see the module docstring); under torchrun each rank calls this, and
    the main rank holds ``out``'s lock (a second run into the same ``out`` is refused)."""
    ctx = devices.join(cfg.device, f"{cfg.source}: key 'device'")
    try:
        if not ctx.is_main:
            return _train(cfg, resume, progress, store, ctx)
        check_output_folder(cfg.out, [("curated store", cfg.curated), ("embedding store", cfg.embeddings or None),
                                      ("model", None if cfg.model in MODELS else cfg.model)], f"{cfg.source}: key 'out':")
        with output_folder(cfg.out, f"{cfg.source}: key 'out':"):
            return _train(cfg, resume, progress, store, ctx)
    finally:
        ctx.close()


def _train(cfg: TrainConfig, resume: bool, progress: bool, store, ctx) -> RunResult:
    from tqdm.auto import tqdm

    from ..models.finetuned import apply_weights

    out = Path(cfg.out)
    record = _check_out(cfg, resume)
    if ctx.distributed:
        ctx.part(list(range(cfg.batch_size)), cfg.source)  # batch_size must divide by the ranks
    run = prepare(cfg, ctx.device, store, progress and ctx.is_main)
    if record is not None and record["base"]["weights_sha256"] != run.base["weights_sha256"]:
        raise MedSAMError(f"{out / 'last.pt'}: --resume from a run on base weights "
                          f"{record['base']['weights_sha256'][:12]}... ({record['base']['model']}), but model "
                          f"{cfg.model!r} has {run.base['weights_sha256'][:12]}...; resume with its base model")
    model = run.loaded.model
    bf16 = ctx.device.type == "cuda" and cfg.precision != "fp32" or cfg.precision == "bf16"

    def autocast():
        return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=bf16)

    net = StepModel(model, from_images=cfg.recipe == "full").to(ctx.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    optimizer = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = StreamSampler(len(run.train), cfg.seed, cfg.box_jitter)
    metrics: list[dict] = []
    best = {"val_dice": -math.inf, "step": -1}
    start = 0
    if record is not None:
        training = record["training"]
        apply_weights(model, record["weights"], str(out / "last.pt"))
        optimizer.load_state_dict(training["optimizer"])
        sampler.load_state_dict(training["sampler"])
        metrics, best, start = list(training["metrics"]), dict(training["best"]), int(training["step"])
        ckpt.set_rng_state(training["rng"])
    else:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
    if start >= cfg.steps and record is not None:
        import pandas as pd

        return RunResult(out, start, best["step"], best["val_dice"], pd.DataFrame(metrics, columns=METRIC_COLUMNS),
                         reused=True)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(cfg, out / "config.toml")
    ddp = ctx.wrap(net)

    def training_modes() -> None:
        net.train()
        for name in ("prompt_encoder",) + (() if cfg.recipe == "full" else ("image_encoder",)):
            getattr(model, name).eval()  # frozen parts stay in inference mode (BatchNorm statistics)

    training_modes()

    def keep(step: int, val_dice: float | None) -> None:
        if ctx.is_main and not len(run.val) and step == cfg.steps:  # no validation split: best.pt = the last
            best.update(val_dice=math.nan, step=step)
            ckpt.save(out / "best.pt", ckpt.model_record(model, run.modules, run.base, cfg.recipe, step, None))
        if ctx.is_main and val_dice is not None and len(run.val) and val_dice > best["val_dice"]:
            best.update(val_dice=val_dice, step=step)
            ckpt.save(out / "best.pt", ckpt.model_record(model, run.modules, run.base, cfg.recipe, step, val_dice))

    saved = {"step": start}

    def checkpoint(step: int, consumed: int) -> None:
        saved["step"] = step
        if not ctx.is_main:
            return
        record = ckpt.model_record(model, run.modules, run.base, cfg.recipe, step, None)
        state = dict(sampler.state_dict(), position=consumed)  # the prefetched batch is not consumed yet
        record["training"] = {"optimizer": optimizer.state_dict(), "step": step, "steps": cfg.steps,
                              "epoch": consumed // sampler.n, "sampler": state, "rng": ckpt.rng_state(),
                              "metrics": metrics, "best": best, "identity": cfg.identity(), "world": ctx.world}
        ckpt.save(out / "last.pt", record)
        _write_metrics(out / "metrics.csv", metrics)

    if start == 0:  # the base model's validation Dice: step 0 of the curves, and best.pt until beaten
        val = float(validate(run, net, ctx.device, autocast).mean()) if ctx.is_main and len(run.val) else None
        metrics.append({"step": 0, "epoch": 0, "train_loss": math.nan, "val_dice": math.nan if val is None else val})
        keep(0, val)
        ctx.barrier()

    def assemble(numbers):
        indices = [sampler.sample(n) for n in numbers]
        boxes = np.stack([jitter_box(run.train.boxes[i], sampler.rng(n), cfg.box_jitter)
                          for i, n in zip(indices, numbers)])
        return make_batch(run.train, indices, boxes, run.source)

    def next_numbers():
        return sampler.take(cfg.batch_size)

    pool = ThreadPoolExecutor(max_workers=1)  # the next batch is read while this one computes
    numbers = next_numbers()
    pending = pool.submit(assemble, ctx.part(numbers))
    bar = tqdm(total=cfg.steps, initial=start, desc=f"training ({cfg.recipe})", unit="step",
               disable=not (progress and ctx.is_main))
    try:
        for step in range(start + 1, cfg.steps + 1):
            batch, batch_numbers = pending.result(), numbers
            if step < cfg.steps:
                numbers = next_numbers()
                pending = pool.submit(assemble, ctx.part(numbers))
            with autocast():
                logits = ddp(batch.inputs.to(ctx.device, non_blocking=True), (batch.boxes * run.box_scale).to(ctx.device))
            loss = dice_bce_loss(logits, batch.targets.to(ctx.device, non_blocking=True))
            if ctx.any(not bool(torch.isfinite(loss))):
                ids = sorted({run.train.rows["image_id"].iat[sampler.sample(n)] for n in batch_numbers})
                kept = (f"the last good checkpoint {out / 'last.pt'} (step {saved['step']}) is kept"
                        if (out / "last.pt").exists() else "no checkpoint had been written yet")
                raise MedSAMError(f"{cfg.source}: the loss is {loss.item()} at step {step} (batch image ids: "
                                  f"{', '.join(ids)}); training stopped before updating the weights, {kept}; check "
                                  "those images' embeddings, or lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(ctx.mean(loss.detach()).item())
            row = {"step": step, "epoch": batch_numbers[-1] // sampler.n, "train_loss": value, "val_dice": math.nan}
            if step % cfg.val_every == 0 or step == cfg.steps:
                if ctx.is_main and len(run.val):
                    row["val_dice"] = float(validate(run, net, ctx.device, autocast).mean())
                    training_modes()
                keep(step, None if math.isnan(row["val_dice"]) else row["val_dice"])
                ctx.barrier()
            metrics.append(row)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint(step, batch_numbers[-1] + 1)
                ctx.barrier()
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    import pandas as pd

    return RunResult(out, cfg.steps, best["step"], best["val_dice"], pd.DataFrame(metrics, columns=METRIC_COLUMNS),
                     reused=False)
