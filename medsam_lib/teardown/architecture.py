"""SAM taken apart in numbers (paper 2.1-2.2): parameters per component, FLOPs, embedding shapes.

The numbers are counted on the models themselves in the run: parameters by summing tensor sizes,
FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass of a copy of the
model on the ``meta`` device (shapes only, no arithmetic: a ViT-B pass at 1024 x 1024 costs no CPU
time that way). ``load_models`` gives the two models notebook 01 compares (SAM ViT-B randomly
initialised when its weights are not in the cache).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..devices import resolve_device
from ..fileio import MedSAMError
from ..models import zoo

COMPONENTS = ("image_encoder", "prompt_encoder", "mask_decoder")
COMPONENT_NAMES = {"image_encoder": "image encoder", "prompt_encoder": "prompt encoder",
                   "mask_decoder": "mask decoder"}


# --- the architecture in numbers ------------------------------------------------------------------

def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Number of parameters of each SAM component and in total."""
    counts = {}
    for name in COMPONENTS:
        part = getattr(model, name, None)
        if part is None:
            raise MedSAMError(f"{type(model).__name__} has no {name}: not a SAM-style model")
        counts[name] = sum(p.numel() for p in part.parameters())
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


@dataclass
class FlopCount:
    encoder_per_image: int  # FLOPs of one image through the image encoder
    decoder_per_box: int  # FLOPs of one box through the prompt encoder and mask decoder
    embedding_shape: tuple[int, ...]  # (1, C, h, w) image embedding
    mask_logits_shape: tuple[int, ...]  # (1, masks, H', W') with multimask output
    by_module: dict[str, int] = field(default_factory=dict)  # top-level modules, FLOPs


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose tensors live on the meta device (no memory, no arithmetic)."""
    return copy.deepcopy(model).to("meta")


def count_flops(model: nn.Module, image_size: int, on_meta: bool = True) -> FlopCount:
    """FLOPs of one image (1, 3, S, S) through the encoder and one box through the decoder.

    Counted by ``FlopCounterMode`` (a multiply-add counts as 2 FLOPs). ``on_meta`` runs the pass on
    a meta-device copy; ``False`` runs it for real on the model's device (same count, real time).
    """
    from torch.utils.flop_counter import FlopCounterMode

    net = _meta_copy(model) if on_meta else model
    device = torch.device("meta") if on_meta else next(model.parameters()).device
    image = torch.zeros(1, 3, image_size, image_size, device=device)
    box = torch.tensor([[[0.0, 0.0, image_size / 2, image_size / 2]]], device=device)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as encoder_counter:
            embedding = net.image_encoder(image)
        with FlopCounterMode(display=False) as decoder_counter:
            sparse, dense = net.prompt_encoder(points=None, boxes=box, masks=None)
            logits, _ = net.mask_decoder(image_embeddings=embedding, image_pe=net.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=True)
    by_module: dict[str, int] = {}  # top-level modules (the counter names them by class)
    for counter in (encoder_counter, decoder_counter):
        for key, ops in counter.get_flop_counts().items():
            if key != "Global" and "." not in key:
                by_module[key] = by_module.get(key, 0) + int(sum(ops.values()))
    return FlopCount(encoder_per_image=int(encoder_counter.get_total_flops()),
                     decoder_per_box=int(decoder_counter.get_total_flops()),
                     embedding_shape=tuple(embedding.shape), mask_logits_shape=tuple(logits.shape),
                     by_module=by_module)


def sam_vit_b(seed: int = 0, device: str | torch.device | None = "cpu") -> zoo.LoadedModel:
    """SAM ViT-B with Meta's weights when they are in the cache, else randomly initialised
    (``pretrained`` False; ``torch.manual_seed(seed)``, so it is repeatable)."""
    try:
        zoo.weights_path("sam_vit_b")
    except MedSAMError:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = zoo.build_model("vit_b")
        finally:
            torch.random.set_rng_state(generator_state)
        model.to(resolve_device(device)).eval()
        return zoo.LoadedModel(model=model, name="sam_vit_b", arch="vit_b", checkpoint=None)
    return zoo.load_model("sam_vit_b", device=device)


def load_models(model: str = zoo.DEFAULT_MODEL, seed: int = 0,
                device: str | torch.device | None = None) -> tuple[dict[str, zoo.LoadedModel], bool]:
    """The two models the notebook compares: ``model`` (LiteMedSAM by default) and SAM ViT-B.

    Returns ({label: model}, whether SAM ViT-B has its real weights); labels say "(random init)" for
    the reader, code asks ``loaded.pretrained``.
    """
    first = zoo.load_model(model, device=device)
    vit_b = sam_vit_b(seed=seed, device=device)
    first_label = "LiteMedSAM" if first.name == "litemedsam" else first.name
    vit_label = "SAM ViT-B" + ("" if vit_b.pretrained else " (random init)")
    return {first_label: first, vit_label: vit_b}, vit_b.pretrained


def weights_note(loaded: zoo.LoadedModel) -> str:
    """Where a model's weights came from, in words."""
    if not loaded.pretrained:
        return f"random init ({loaded.name} weights not in the cache)"
    return f"weights {Path(loaded.checkpoint).name} (checksum verified)" if loaded.name in zoo.MODELS \
        else f"weights {Path(loaded.checkpoint).name}"


def architecture_table(models: dict[str, zoo.LoadedModel], flops: dict[str, FlopCount] | None = None):
    """One row per model: parameters per component (millions), FLOPs, input and embedding shapes."""
    import pandas as pd

    rows = []
    for label, loaded in models.items():
        counts = parameter_counts(loaded.model)
        fc = flops[label] if flops and label in flops else count_flops(loaded.model, loaded.image_size)
        rows.append({
            "model": label,
            "input (px)": f"3 x {loaded.image_size} x {loaded.image_size}",
            **{f"{COMPONENT_NAMES[c]} params (M)": round(counts[c] / 1e6, 3) for c in COMPONENTS},
            "total params (M)": round(counts["total"] / 1e6, 3),
            "encoder GFLOPs / image": round(fc.encoder_per_image / 1e9, 2),
            "prompt enc. + decoder GFLOPs / box": round(fc.decoder_per_box / 1e9, 3),
            "image embedding": " x ".join(str(s) for s in fc.embedding_shape[1:]),
            "multimask logits": " x ".join(str(s) for s in fc.mask_logits_shape[1:]),
        })
    return pd.DataFrame(rows)


