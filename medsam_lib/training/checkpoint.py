"""Training checkpoints: written atomically, holding everything an exact resume needs.

``last.pt`` is a fine-tuned checkpoint (``models.finetuned``: loadable as a model by path) plus
``training``: the optimiser state, step, epoch, sampler position, the metrics and per-data-set
validation rows so far, the best validation Dice and the step it came from, the config's identity,
and every RNG state (torch CPU, CUDA per device, numpy's global RNG, Python's ``random``).
``best.pt`` is the same without ``training``; its record also names the validation (``val_average``,
``val_boxes``) and holds the per-data-set validation Dice of its step (``val_per_dataset``).
``resume_record`` finds the ``last.pt`` a ``--resume`` continues from (and refuses one of another
config, or a run folder that would be overwritten; a field its identity lacks counts as the value
``config.IDENTITY_BEFORE`` gives). Each file is written to a temporary file beside it and renamed, so
a kill at any moment leaves the previous file whole. Everything is plain tensors, numbers, strings,
lists and dicts: ``torch.load(weights_only=True)`` reads it.

(micro-sam's trainer saves no RNG state, and its resume adds the requested iterations on top of
those done; here ``steps`` is the total and a resumed run replays the same stream.)
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..fileio import MedSAMError, atomic_path
from ..models.finetuned import FORMAT, FORMAT_VERSION, read_checkpoint
from .config import IDENTITY_BEFORE


def rng_state() -> dict:
    """Every RNG state, in weights_only-loadable types."""
    legacy = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"bit_generator": legacy["bit_generator"], "key": torch.from_numpy(legacy["state"]["key"].astype(np.int64)),
                  "pos": int(legacy["state"]["pos"]), "has_gauss": int(legacy["has_gauss"]),
                  "gauss": float(legacy["gauss"])},
        "python": {"version": version, "state": list(internal), "gauss": gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def trained_weights(model: torch.nn.Module, modules: list[str]) -> dict:
    """The trained modules' state (parameters and buffers), detached CPU copies, prefixed by module."""
    out = {}
    for name in modules:
        for key, value in getattr(model, name).state_dict().items():
            out[f"{name}.{key}"] = value.detach().cpu().clone()
    return out


def model_record(model, modules: list[str], base: dict, recipe: str, step: int, val_dice, **extra) -> dict:
    """A fine-tuned checkpoint record; ``extra``: more plain keys (best.pt: ``val_average``, ``val_boxes``
    and ``val_per_dataset``, {data set: mean target Dice} at ``step``), which readers ignore or use."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "base": dict(base), "recipe": recipe,
            "trained_modules": list(modules), "weights": trained_weights(model, modules), "step": int(step),
            "val_dice": None if val_dice is None else float(val_dice), **extra}


def save(path: str | Path, record: dict) -> Path:
    """torch.save to a temporary file beside ``path``, then rename: never half a checkpoint."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    return path


def load_training(path: str | Path) -> dict:
    """A ``last.pt`` with its ``training`` part; MedSAMError naming the file otherwise."""
    record = read_checkpoint(path)
    if "training" not in record:
        raise MedSAMError(f"{path}: holds weights only (a best.pt?), not a training state to resume from")
    return record


def resume_record(cfg, resume: bool) -> dict | None:
    """The ``last.pt`` record in ``cfg.out`` to resume from (None: start fresh); refuse to overwrite a
    run without ``resume``, and a record of another config (``cfg.identity()``) or past ``cfg.steps``."""
    out, last = Path(cfg.out), Path(cfg.out) / "last.pt"
    if not resume:
        present = [p.name for p in (last, out / "best.pt") if p.exists()]
        if present:
            state = ""
            if last.exists():
                done = load_training(last)["training"]
                state = (f"a finished run ({done['step']} steps)" if done["step"] >= done["steps"]
                         else f"a run stopped at step {done['step']} of {done['steps']}")
            raise MedSAMError(f"{out}: already holds {state or ', '.join(present)}; pass --resume to continue or "
                              "reuse it, or choose another out folder (nothing is overwritten)")
        return None
    if not last.exists():
        return None
    record = load_training(last)
    training = record["training"]
    saved = dict(IDENTITY_BEFORE, **training["identity"])  # a run saved before a field existed did its old thing
    differ = [k for k, v in cfg.identity().items() if saved.get(k) != v]
    if differ:
        k = differ[0]
        raise MedSAMError(f"{last}: --resume from a run with {k} = {saved.get(k)!r}, but {cfg.source} "
                          f"has {k} = {getattr(cfg, k)!r}" + (f" (and {differ[1:]} differ)" if differ[1:] else "")
                          + "; resume with the config it was made with, or train into another out folder")
    if training["step"] > cfg.steps:
        raise MedSAMError(f"{last}: the run is already at step {training['step']}, past steps = {cfg.steps} in "
                          f"{cfg.source}")
    return record
