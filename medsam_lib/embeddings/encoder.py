"""Batched image encoding with the fastest path that computes the stock embedding, chosen at run time.

- CPU, LiteMedSAM: the exported encoder on OpenVINO (``models.exported``; ``runtime="auto"``), or with
  ``runtime="torch"`` ``models.fast_encode`` (BatchNorms folded, in-place activations, channels-last
  input), exactly as ``BoxPredictor`` encodes with the same runtime, so stored embeddings are the predictor's.
- CUDA, ViT-B: ``models.sam_vit_sdpa`` (bfloat16 weights, ``scaled_dot_product_attention`` carrying
  SAM's decomposed relative-position bias as an additive mask; ``compile=True`` adds
  ``torch.compile``). On a model whose modules are not stock segment-anything, the module forward.
- Anything else: the encoder module's own forward (float32).

``path`` names the one chosen; the embedding store records it.
"""
from __future__ import annotations

import torch

from ..models import exported, fast_encode, sam_vit_sdpa
from ..models.zoo import LoadedModel


class BatchEncoder:
    """``(B, 3, S, S)`` float32 model input -> ``(B, 256, 64, 64)`` float32 embeddings on the CPU."""

    def __init__(self, loaded: LoadedModel, device: torch.device, fast: bool = True, compile: bool = False,
                 runtime: str = "auto"):
        self.loaded = loaded
        self.device = device
        self.encoder = loaded.model.image_encoder
        self._fn = self.encoder
        if next(self.encoder.parameters()).device != device:
            self.encoder.to(device)
        self.runtime = exported.resolve_runtime(runtime if fast else "torch", loaded.arch, device)
        encoder = exported.encoder_for(self.encoder, self.runtime, runtime)
        if encoder is not None:
            self._fn, self.path = encoder, encoder.path
            return
        self.runtime = "torch"
        if fast and device.type == "cpu" and loaded.arch == "lite" and fast_encode.supports(self.encoder):
            self.path = "fast_encode-cpu-float32"
            self._fn = self._lite_cpu
        elif fast and device.type == "cuda" and loaded.arch == "vit_b" and sam_vit_sdpa.supports(self.encoder):
            self.path = "sdpa-relpos-bfloat16" + ("-compiled" if compile else "")
            self._fn = sam_vit_sdpa.SdpaViTEncoder(self.encoder, dtype=torch.bfloat16, compile=compile)
        else:
            self.path = f"module-{device.type}-float32"

    def _lite_cpu(self, batch: torch.Tensor) -> torch.Tensor:
        # channels-last input: oneDNN runs TinyViT's full-resolution convolutions without reorders
        return fast_encode.encode(self.encoder, batch.contiguous(memory_format=torch.channels_last))

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = self._fn(batch.to(self.device, non_blocking=True))
        return out.float().contiguous().cpu()
