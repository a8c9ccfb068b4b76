"""The training loop: ``train(config, resume=False)``, one process or one torchrun rank.

Recipe ``paper`` (default; paper 2.3/3.2): image and prompt encoders frozen, the mask decoder trained
from stored embeddings (no image encoder in the loop), one mask per box, Adam. Recipe ``full`` (the
released train_one_gpu.py): image encoder + mask decoder trained from curated images, prompt encoder
frozen, AdamW; optional activation checkpointing of ViT-B's blocks.

Each step: the sampler's next global batch (this rank's part), boxes jittered (paper 3.2) and scaled
to the model input, loss = Dice + BCE (``loss``), a non-finite loss stops the run (MedSAMError with
the step and the batch's image ids; nothing is written, the last good checkpoint stays). Every
``val_every`` steps (and at step 0: the base model) rank 0 computes the validation Dice with the
validation boxes (``val_boxes``: tight by default), averaged as ``val_average`` says (by default the
mean of the data sets' means; each data set's mean goes to ``val_per_dataset.csv``); a better one
writes ``best.pt`` (its record holds the per-data-set Dice of its step). (The released code kept
the lowest *training* loss as its best model; we select on validation Dice. Without a validation
split, ``best.pt`` is the last step's weights.) The IoU head gets no gradient (its score is not in
the loss) and is marked frozen. Every ``checkpoint_every`` steps and at the end: ``last.pt``,
``metrics.csv`` and ``val_per_dataset.csv``. At the start: ``unfit_targets.csv`` (training targets
unfit for a box prompt, per data set, and how many ``exclude_unfit`` left out). bfloat16 autocast
on CUDA, float32 on CPU (``run.autocast``).

Pieces, one job each: ``run.prepare`` builds the run (model, pairs, inputs); ``checkpoint.resume_record``
finds what ``--resume`` continues from; ``Trainer.restore`` applies it (or seeds a fresh run);
``Prefetcher`` reads the next batch while this one computes; ``Trainer.step`` is one optimiser step,
``Trainer.validation`` + ``keep_best`` the validation Dice and ``best.pt``, ``Trainer.save_last``
``last.pt`` and ``metrics.csv``; ``medsam_lib.devices`` the torchrun ranks.
"""
from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import devices
from ..fileio import MedSAMError, atomic_path, check_output_folder
from ..locks import output_folder
from ..models.zoo import MODELS
from . import checkpoint as ckpt
from .config import TrainConfig, write_config
from .data import StreamSampler, sampler_batch
from .loss import dice_bce_loss
from .run import Run, StepModel, autocast, prepare, summarize, validate

METRIC_COLUMNS = ("step", "epoch", "train_loss", "val_dice")
PER_DATASET_COLUMNS = ("step", "dataset", "n_targets", "dice")


@dataclass
class RunResult:
    out: Path
    step: int
    best_step: int
    best_val_dice: float
    metrics: object  # DataFrame
    reused: bool  # a finished run found and returned as it was
    val_per_dataset: object = None  # DataFrame (PER_DATASET_COLUMNS): each validation's Dice per data set
    unfit: object = None  # DataFrame: per data set, unfit training targets and how many were left out


@dataclass
class Progress:
    """What a run has done so far: one metrics row per step (step 0: the base model's validation), the
    best validation Dice and its step, the last step done and the last step written to last.pt."""

    metrics: list = field(default_factory=list)
    per_dataset: list = field(default_factory=list)  # one row per (validation step, data set)
    best: dict = field(default_factory=lambda: {"val_dice": -math.inf, "step": -1})
    step: int = 0
    saved: int = 0


def metrics_frame(metrics: list[dict], columns=METRIC_COLUMNS):
    import pandas as pd

    return pd.DataFrame(metrics, columns=list(columns))


def write_metrics(path: Path, metrics: list[dict], columns=METRIC_COLUMNS):
    frame = metrics_frame(metrics, columns)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return frame


class Prefetcher:
    """Batches in the sampler's order, the next one read on a worker thread while this one computes.
    ``next(more)`` -> (this rank's part of the batch, the global batch's sample numbers); ``more`` is
    False at the last step, so the sampler is not advanced past what the run uses."""

    def __init__(self, run: Run, sampler: StreamSampler, batch_size: int, ctx):
        self.run, self.sampler, self.batch_size, self.ctx = run, sampler, batch_size, ctx
        self.pool = ThreadPoolExecutor(max_workers=1)
        self._request()

    def _request(self) -> None:
        self.numbers = self.sampler.take(self.batch_size)
        self.pending = self.pool.submit(sampler_batch, self.run.train, self.sampler, self.ctx.part(self.numbers),
                                        self.run.source)

    def next(self, more: bool):
        batch, numbers = self.pending.result(), self.numbers
        if more:
            self._request()
        return batch, numbers

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class Trainer:
    """One run's model, optimiser, sampler and progress on this rank, and what a step does with them."""

    def __init__(self, cfg: TrainConfig, ctx, run: Run):
        self.cfg, self.ctx, self.run, self.out = cfg, ctx, run, Path(cfg.out)
        self.model = run.loaded.model
        self.net = StepModel(self.model, from_images=cfg.recipe == "full").to(ctx.device)
        self.ddp = self.net  # DistributedDataParallel around it once wrapped (``start``)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        self.optimizer = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sampler = StreamSampler(len(run.train), cfg.seed, cfg.box_jitter)
        self.progress = Progress()

    def restore(self, record: dict | None) -> None:
        """Continue from ``record`` (a last.pt on the same base weights): weights, optimiser, sampler,
        progress and every RNG state; without one, seed every RNG with the config's seed."""
        cfg = self.cfg
        if record is None:
            torch.manual_seed(cfg.seed)
            np.random.seed(cfg.seed)
            random.seed(cfg.seed)
            return
        base, last = record["base"], self.out / "last.pt"
        if base["weights_sha256"] != self.run.base["weights_sha256"]:
            raise MedSAMError(f"{last}: --resume from a run on base weights {base['weights_sha256'][:12]}... "
                              f"({base['model']}), but model {cfg.model!r} has {self.run.base['weights_sha256'][:12]}"
                              "...; resume with its base model")
        from ..models.finetuned import apply_weights

        training = record["training"]
        apply_weights(self.model, record["weights"], str(last))
        self.optimizer.load_state_dict(training["optimizer"])
        self.sampler.load_state_dict(training["sampler"])
        step = int(training["step"])
        self.progress = Progress(list(training["metrics"]), list(training.get("val_per_dataset", [])),
                                 dict(training["best"]), step, step)
        ckpt.set_rng_state(training["rng"])

    def start(self) -> None:
        """Wrap for DDP (after ``restore``: it broadcasts rank 0's weights) and enter training mode."""
        self.ddp = self.ctx.wrap(self.net)
        self.training_modes()

    def training_modes(self) -> None:
        self.net.train()
        for name in ("prompt_encoder",) + (() if self.cfg.recipe == "full" else ("image_encoder",)):
            getattr(self.model, name).eval()  # frozen parts stay in inference mode (BatchNorm statistics)

    def step(self, step: int, batch, numbers: list[int]) -> float:
        """One optimiser step on this rank's ``batch``; the global batch's mean loss. A non-finite loss on
        any rank stops the run (MedSAMError naming the step and the images) before the weights change."""
        ctx, run = self.ctx, self.run
        with autocast(ctx.device, self.cfg.precision):
            logits = self.ddp(batch.inputs.to(ctx.device, non_blocking=True),
                              (batch.boxes * run.box_scale).to(ctx.device))
        loss = dice_bce_loss(logits, batch.targets.to(ctx.device, non_blocking=True))
        if ctx.any(not bool(torch.isfinite(loss))):
            ids = sorted({run.train.rows["image_id"].iat[self.sampler.sample(n)] for n in numbers})
            last = self.out / "last.pt"
            kept = (f"the last good checkpoint {last} (step {self.progress.saved}) is kept" if last.exists()
                    else "no checkpoint had been written yet")
            raise MedSAMError(f"{self.cfg.source}: the loss is {loss.item()} at step {step} (batch image ids: "
                              f"{', '.join(ids)}); training stopped before updating the weights, {kept}; check "
                              "those images' embeddings, or lower lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(ctx.mean(loss.detach()).item())

    def validation(self, step: int) -> float:
        """The validation Dice at ``step`` (``run.summarize``; rank 0; NaN on the others and without a
        validation split), its data sets' rows kept for val_per_dataset.csv, ``best.pt`` kept up to date
        (``keep_best``); every rank waits for it."""
        val, per = math.nan, {}
        if self.ctx.is_main and len(self.run.val):
            scores = validate(self.run, self.net, self.ctx.device)
            val, per = summarize(self.run.val.rows, scores, self.cfg.val_average)
            self.progress.per_dataset += [{"step": step, "dataset": d, "n_targets": n, "dice": dice}
                                          for d, (n, dice) in per.items()]
            self.training_modes()
        self.keep_best(step, None if math.isnan(val) else val, {d: dice for d, (_, dice) in per.items()})
        self.ctx.barrier()
        return val

    def keep_best(self, step: int, val_dice: float | None, per_dataset: dict | None = None) -> None:
        """best.pt (rank 0): the weights of the best validation Dice so far; without a validation split,
        the last step's weights."""
        cfg, run, best = self.cfg, self.run, self.progress.best
        if not self.ctx.is_main:
            return
        if not len(run.val) and step == cfg.steps:
            best.update(val_dice=math.nan, step=step)
            ckpt.save(self.out / "best.pt", self.weights(step, None))
        elif val_dice is not None and len(run.val) and val_dice > best["val_dice"]:
            best.update(val_dice=val_dice, step=step)
            ckpt.save(self.out / "best.pt", self.weights(step, val_dice, val_per_dataset=dict(per_dataset or {}),
                                                         val_average=cfg.val_average, val_boxes=cfg.val_boxes))

    def weights(self, step: int, val_dice: float | None, **extra) -> dict:
        """The trained modules' weights at ``step`` as a fine-tuned checkpoint record."""
        return ckpt.model_record(self.model, self.run.modules, self.run.base, self.cfg.recipe, step, val_dice,
                                 **extra)

    def save_last(self, step: int, consumed: int) -> None:
        """last.pt (weights, optimiser, the sampler at ``consumed`` samples, progress, RNG states) and
        metrics.csv, written by rank 0; every rank waits for them."""
        cfg, progress = self.cfg, self.progress
        progress.saved = step
        if self.ctx.is_main:
            record = self.weights(step, None)
            state = dict(self.sampler.state_dict(), position=consumed)  # the prefetched batch is not consumed yet
            record["training"] = {"optimizer": self.optimizer.state_dict(), "step": step, "steps": cfg.steps,
                                  "epoch": consumed // self.sampler.n, "sampler": state, "rng": ckpt.rng_state(),
                                  "metrics": progress.metrics, "val_per_dataset": progress.per_dataset,
                                  "best": progress.best, "identity": cfg.identity(),
                                  "world": self.ctx.world}
            ckpt.save(self.out / "last.pt", record)
            write_metrics(self.out / "metrics.csv", progress.metrics)
            write_metrics(self.out / "val_per_dataset.csv", progress.per_dataset, PER_DATASET_COLUMNS)
        self.ctx.barrier()

    def run_steps(self, show: bool) -> None:
        """From the step after ``progress.step`` to ``cfg.steps``: a metrics row per step, validation every
        ``val_every`` steps and last.pt every ``checkpoint_every`` steps, both at the last step too. A
        fresh run first validates the base model (step 0 of the curves, and best.pt until beaten)."""
        from tqdm.auto import tqdm

        cfg, progress = self.cfg, self.progress
        if progress.step == 0:
            progress.metrics.append({"step": 0, "epoch": 0, "train_loss": math.nan, "val_dice": self.validation(0)})
        bar = tqdm(total=cfg.steps, initial=progress.step, desc=f"training ({cfg.recipe})", unit="step",
                   disable=not show)
        try:
            with Prefetcher(self.run, self.sampler, cfg.batch_size, self.ctx) as batches:
                for step in range(progress.step + 1, cfg.steps + 1):
                    batch, numbers = batches.next(more=step < cfg.steps)
                    loss = self.step(step, batch, numbers)
                    row = {"step": step, "epoch": numbers[-1] // self.sampler.n, "train_loss": loss,
                           "val_dice": math.nan}
                    if step % cfg.val_every == 0 or step == cfg.steps:
                        row["val_dice"] = self.validation(step)
                    progress.metrics.append(row)
                    progress.step = step
                    if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                        self.save_last(step, numbers[-1] + 1)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        finally:
            bar.close()

    def result(self, reused: bool) -> RunResult:
        progress = self.progress
        return RunResult(self.out, progress.step, progress.best["step"], progress.best["val_dice"],
                         metrics_frame(progress.metrics), reused,
                         metrics_frame(progress.per_dataset, PER_DATASET_COLUMNS), self.run.unfit)


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
    record = ckpt.resume_record(cfg, resume)
    if ctx.distributed:
        ctx.part(list(range(cfg.batch_size)), cfg.source)  # batch_size must divide by the ranks
    trainer = Trainer(cfg, ctx, prepare(cfg, ctx.device, store, progress and ctx.is_main))
    trainer.restore(record)
    if record is not None and trainer.progress.step >= cfg.steps:
        return trainer.result(reused=True)
    if ctx.is_main:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        write_config(cfg, Path(cfg.out) / "config.toml")
        with atomic_path(Path(cfg.out) / "unfit_targets.csv") as tmp:
            trainer.run.unfit.to_csv(tmp, index=False)
    trainer.start()
    trainer.run_steps(progress and ctx.is_main)
    return trainer.result(reused=False)
