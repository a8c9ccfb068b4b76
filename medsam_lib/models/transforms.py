"""What each model family does to its input and to its output: the one home for model transforms.

Every module that feeds a model (the predictor, the teardown's SamPredictor adapter, the embedding
store, training and evaluation) goes through ``for_model(loaded, vit_preprocess)``:

    t = for_model(loaded)                      # an InputTransform for this model
    prepared = t.prepare(rgb)                  # (H, W, 3) uint8 -> Prepared (tensor (3, S, S) float32)
    model_boxes = t.boxes_to_model(boxes, prepared)          # original pixels -> model input pixels
    model_points = t.points_to_model(points, prepared)       # (..., 2) points (x, y), the same scaling
    masks = t.logits_to_masks(low_res_logits, prepared)      # (N, M, s, s) logits -> (N, H, W) bool

Families (``InputTransform.key`` names each one; embedding stores record it):
- ``lite256``: LiteMedSAM's released pipeline: longest side to 256 (cv2 INTER_AREA), min-max to
  [0, 1], zero-padded to 256 x 256, boxes (and points) scaled by 256 / max(H, W).
- ``vit1024-paper`` (default for ViT-B): SAM's own path, as arXiv v1 used it: longest side to 1024
  (``ResizeLongestSide``), ImageNet mean/std on 0-255, zero-padded.
- ``vit1024-official_code``: the released MedSAM inference: image squashed to 1024 x 1024 (bicubic),
  min-max to [0, 1], boxes scaled per axis.

Masks: the first mask's logits are upsampled to S x S, cropped to the resized image, resized to the
original size (bilinear) and thresholded at ``LOGIT_THRESHOLD`` (sigmoid(x) > 0.5 is x > 0).
Non-8-bit input is first brought to [0, 255] by ``to_uint8_rgb`` with the paper's intensity preset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import paper
from ..data.preprocess import normalize_intensity
from ..fileio import MedSAMError

VIT_PREPROCESS = ("paper", "official_code")
# sigmoid(x) > p  <=>  x > log(p / (1 - p)): the mask threshold on logits (0.0 for p = 0.5)
LOGIT_THRESHOLD = math.log(paper.MASK_THRESHOLD / (1.0 - paper.MASK_THRESHOLD))
MASK_CHUNK = 4  # masks upsampled together on the CPU (bounds the memory of large originals)


@dataclass(frozen=True)
class Prepared:
    tensor: torch.Tensor | None  # (3, S, S) float32 model input (None: geometry only, see ``geometry``)
    original_size: tuple[int, int]  # (H, W)
    input_size: tuple[int, int]  # (h, w) of the resized image inside the S x S input
    box_scale: tuple[float, float]  # x and y factors from original pixels to model input pixels


MIN_MODEL_INPUT = 256  # the smallest model input side (LiteMedSAM); ViT-B's is 1024


def to_uint8_rgb(image: np.ndarray, modality: str | None = None, source: str = "image") -> np.ndarray:
    """(H, W) / (H, W, 1|3|4) of any numeric dtype -> (H, W, 3) uint8, validating on the way."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        image = image[..., :3] if image.shape[2] != 1 else image[..., 0]
    elif image.ndim != 2:
        raise MedSAMError(f"{source}: expected a 2D image (H, W) or (H, W, 3), got shape {image.shape}")
    if min(image.shape[:2]) < 2:
        raise MedSAMError(f"{source}: image of size {image.shape[:2]} is too small to segment")
    h, w = image.shape[:2]
    if min(h, w) * MIN_MODEL_INPUT < 2 * max(h, w):  # the long side goes to 256 (or 1024): the short one must stay >= 2 px
        raise MedSAMError(f"{source}: image of {h} x {w} pixels is too elongated to segment: scaled to the "
                          f"model's {MIN_MODEL_INPUT}-pixel input its short side would be under 2 pixels; crop it")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise MedSAMError(f"{source}: {bad} pixels are NaN or infinite; fix or mask them before segmenting")
    if image.min() == image.max():
        raise MedSAMError(f"{source}: the image is constant (every pixel is {image.flat[0]}); nothing to segment")
    if image.dtype != np.uint8:
        image = np.round(normalize_intensity(image, modality, "paper", source)).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image)


class InputTransform:
    """One model family's input preparation, box scaling and logits-to-mask step."""

    def __init__(self, arch: str, vit_preprocess: str = "paper"):
        if arch not in ("lite", "vit_b"):
            raise MedSAMError(f"unknown architecture {arch!r} (expected 'lite' or 'vit_b')")
        if vit_preprocess not in VIT_PREPROCESS:
            raise MedSAMError(f"vit_preprocess must be one of {VIT_PREPROCESS}, got {vit_preprocess!r}")
        self.arch = arch
        self.vit_preprocess = vit_preprocess
        self.image_size = paper.LITE_IMAGE_SIZE if arch == "lite" else paper.ENCODER_IMAGE_SIZE

    @property
    def key(self) -> str:
        """A name for this preprocessing, recorded with anything computed from it (embeddings)."""
        return "lite256" if self.arch == "lite" else f"vit1024-{self.vit_preprocess}"

    def __repr__(self) -> str:
        return f"InputTransform({self.key})"

    # --- input ------------------------------------------------------------------------------------
    def prepare(self, rgb: np.ndarray) -> Prepared:
        """(H, W, 3) uint8 -> the model's (3, S, S) float32 input and the geometry to undo it."""
        h, w = rgb.shape[:2]
        size = self.image_size
        if self.arch == "lite":
            import cv2

            scale = size / max(h, w)
            nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
            small = rgb if (nh, nw) == (h, w) else cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
            small = small.astype(np.float32)
            small = (small - small.min()) / np.clip(small.max() - small.min(), 1e-8, None)
            padded = np.zeros((size, size, 3), dtype=np.float32)
            padded[:nh, :nw] = small
            return Prepared(torch.from_numpy(padded).permute(2, 0, 1), (h, w), (nh, nw), (scale, scale))
        if self.vit_preprocess == "paper":
            from segment_anything.utils.transforms import ResizeLongestSide

            resized = ResizeLongestSide(size).apply_image(rgb)
            nh, nw = resized.shape[:2]
            x = torch.from_numpy(resized).permute(2, 0, 1).float()
            mean = torch.tensor(paper.SAM_PIXEL_MEAN).view(3, 1, 1)
            std = torch.tensor(paper.SAM_PIXEL_STD).view(3, 1, 1)
            x = F.pad((x - mean) / std, (0, size - nw, 0, size - nh))
            return Prepared(x, (h, w), (nh, nw), (nw / w, nh / h))
        x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None]
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]
        x = (x - x.min()) / torch.clamp(x.max() - x.min(), min=1e-8)
        return Prepared(x, (h, w), (size, size), (size / w, size / h))

    def geometry(self, original_size: tuple[int, int]) -> Prepared:
        """The geometry ``prepare`` would give an image of this (H, W), without its tensor: for a
        stored embedding (``BoxPredictor.set_embedding``)."""
        h, w = (int(v) for v in original_size)
        size = self.image_size
        if self.arch == "lite":
            scale = size / max(h, w)
            return Prepared(None, (h, w), (int(h * scale + 0.5), int(w * scale + 0.5)), (scale, scale))
        if self.vit_preprocess == "paper":
            from segment_anything.utils.transforms import ResizeLongestSide

            nh, nw = ResizeLongestSide.get_preprocess_shape(h, w, size)
            return Prepared(None, (h, w), (nh, nw), (nw / w, nh / h))
        return Prepared(None, (h, w), (size, size), (size / w, size / h))

    def boxes_to_model(self, boxes: np.ndarray, prepared: Prepared) -> np.ndarray:
        """(N, 4) boxes in original pixels -> (N, 4) float32 boxes in model input pixels."""
        sx, sy = prepared.box_scale
        return (np.asarray(boxes, dtype=np.float64) * np.array([sx, sy, sx, sy])).astype(np.float32)

    def points_to_model(self, points: np.ndarray, prepared: Prepared) -> np.ndarray:
        """(..., 2) points (x, y) in original pixels -> float32 points in model input pixels: the scaling of
        ``boxes_to_model`` (a box is its two corner points), as SAM's ``ResizeLongestSide.apply_coords``."""
        sx, sy = prepared.box_scale
        return (np.asarray(points, dtype=np.float64) * np.array([sx, sy])).astype(np.float32)

    # --- output -----------------------------------------------------------------------------------
    def upsample_logits(self, logits: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        """(N, M, s, s) decoder logits -> (N, 1, H, W) float logits of the first mask, original size."""
        size = self.image_size
        nh, nw = prepared.input_size
        x = logits[:, :1].float()
        if x.shape[-1] != size:
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        return F.interpolate(x[..., :nh, :nw], prepared.original_size, mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def logits_to_masks(self, logits: torch.Tensor, prepared: Prepared) -> np.ndarray:
        """(N, M, s, s) logits -> (N, H, W) bool masks of the first mask, at the original size."""
        masks = np.empty((len(logits), *prepared.original_size), dtype=bool)
        for start in range(0, len(logits), MASK_CHUNK):  # in chunks: large originals stay in bounds
            x = self.upsample_logits(logits[start:start + MASK_CHUNK], prepared)
            masks[start:start + MASK_CHUNK] = (x[:, 0] > LOGIT_THRESHOLD).cpu().numpy()
        return masks


def for_model(loaded, vit_preprocess: str = "paper") -> InputTransform:
    """The transform of a loaded model (``zoo.LoadedModel`` or anything with ``.arch``)."""
    return InputTransform(loaded.arch, vit_preprocess)
