"""Fine-tuned checkpoints: what ``python -m medsam_lib train`` writes, loadable wherever a model name is.

``best.pt`` and ``last.pt`` of a training run are ``torch.save`` of one plain dict (read back with
``torch.load(weights_only=True)``):

    format            "medsam_lib.finetuned"; format_version 1
    base              {"model": zoo name or checkpoint path, "arch": "lite" | "vit_b",
                       "weights_sha256": SHA-256 of the base weights file}
    recipe            "paper" (mask decoder trained) | "full" (image encoder + mask decoder)
    trained_modules   the model's top-level modules whose weights follow, e.g. ["mask_decoder"]
    weights           {"mask_decoder.<param>": tensor, ...}: only the trained modules
    step, val_dice    the optimiser step and validation Dice of these weights
    training          (``last.pt`` only) optimiser, sampler position, RNG states: see training.checkpoint

Reading one (``read_checkpoint``) refuses non-finite weights and weights of modules other than the
declared ``trained_modules``. This module is the file format only (it imports nothing from the zoo):
``zoo.load_model("out/best.pt")`` rebuilds the base model by its name (or path: as written, else
relative to the checkpoint's folder), refuses it when its weights' SHA-256 differs from the one
recorded (``zoo.base_reference``), and applies the trained weights on top (``apply_weights``).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from ..fileio import MedSAMError
from .safe_load import check_finite_weights, load_torch_file

FORMAT = "medsam_lib.finetuned"
FORMAT_VERSION = 1


def is_finetuned(path: str | os.PathLike) -> bool:
    """True when ``path`` is a fine-tuned checkpoint; decided from the pickle's bytes, nothing unpickled."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            return bool(names) and FORMAT.encode() in archive.read(names[0])
    except (OSError, zipfile.BadZipFile):
        return False


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The dict of a fine-tuned checkpoint (weights_only); MedSAMError naming the file otherwise."""
    obj = load_torch_file(path, "checkpoint")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise MedSAMError(f"{path}: not a medsam_lib fine-tuned checkpoint (no format {FORMAT!r})")
    if obj.get("format_version") != FORMAT_VERSION:
        raise MedSAMError(f"{path}: fine-tuned checkpoint format {obj.get('format_version')!r}; this code reads "
                          f"format {FORMAT_VERSION}")
    for key in ("base", "weights", "trained_modules"):
        if key not in obj:
            raise MedSAMError(f"{path}: fine-tuned checkpoint without {key!r}")
    check_declared(obj, str(path))
    return obj


def check_declared(obj: dict, source: str) -> dict:
    """The checkpoint's weights, refused unless they are finite tensors of its ``trained_modules`` only
    (a tensor of another module would change the model behind the declaration's back). Called by
    ``read_checkpoint``: every reader of best.pt / last.pt (loading, resuming, reporting) gets it."""
    modules, weights = obj["trained_modules"], obj["weights"]
    if not (isinstance(modules, list) and all(isinstance(m, str) and m for m in modules)):
        raise MedSAMError(f"{source}: 'trained_modules' must be a list of module names, got {modules!r}")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise MedSAMError(f"{source}: 'weights' must map parameter names to tensors")
    outside = sorted(k for k in weights if str(k).split(".")[0] not in modules)
    if outside:
        found = sorted({str(k).split(".")[0] for k in outside})
        raise MedSAMError(f"{source}: declares trained_modules {modules} but carries {len(outside)} tensor(s) of "
                          f"other modules {found} (e.g. {outside[0]!r}); refusing to apply undeclared weights")
    check_finite_weights(weights, source)
    return weights


def apply_weights(model: torch.nn.Module, weights: dict, source: str) -> None:
    """Load the trained modules' weights into ``model``; every key must exist with its shape."""
    own = model.state_dict()
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise MedSAMError(f"{source}: {len(unknown)} trained weights do not exist in the base model "
                          f"(e.g. {unknown[0]!r}); was it trained from another architecture?")
    wrong = [k for k, v in weights.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise MedSAMError(f"{source}: weight {wrong[0]!r} has shape {tuple(weights[wrong[0]].shape)}, the base "
                          f"model's {tuple(own[wrong[0]].shape)}")
    with torch.no_grad():
        for key, value in weights.items():
            own[key].copy_(value.to(own[key].dtype))
