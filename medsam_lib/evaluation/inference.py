"""Box-prompted inference for evaluation: one 2D image, or a 3D target slice by slice.

A 3D target is segmented slice by slice (the paper's models are 2D) and the slices are stacked
back into the volume, which is then scored in 3D. Two box protocols:

- ``gt`` (the paper's): every slice that holds ground truth gets a box from that slice's ground
  truth (enlarged by ``margin`` px per side, then each side by a seeded random 0..``jitter`` px);
  slices without ground truth get no prompt and predict nothing.
- ``propagate`` (no ground truth beyond one slice, as an annotator would work): a ground-truth
  box on the middle ground-truth slice only; then outward in both directions each slice is
  prompted with the box of its neighbour's prediction (plus ``margin``), until the prediction
  vanishes or no image is available (the curated store holds images only of the slices it kept).

Boxes are (x0, y0, x1, y1) at 256 x 256 with x1/y1 inclusive (``medsam_lib.geometry``).
``embeddings`` maps a slice index to a stored (256, 64, 64) image embedding; where one is given
the image encoder is skipped (``BoxPredictor.set_embedding``).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from ..fileio import MedSAMError
from ..geometry import box_from_mask, enlarge_box, jitter_box

PROTOCOLS = ("gt", "propagate")
# What names one evaluated target: a row of metrics.csv, an entry of a pinned prompts file (``pinned``).
TARGET_KEY = ["dataset", "case", "volume", "image_key", "target", "instance"]


def target_rng(seed: int, key: tuple) -> np.random.Generator:
    """The random generator of one target (its ``TARGET_KEY`` values) under ``seed``: a target's random
    boxes do not depend on which other targets ran."""
    return np.random.default_rng([int(seed), zlib.crc32("/".join(map(str, key)).encode())])


def prompt_box(mask: np.ndarray, margin: float = 0, jitter: int = 0, rng: np.random.Generator | None = None,
               source: str = "mask") -> np.ndarray:
    """The evaluation box of one slice's ground truth: tight box, + margin, + seeded jitter."""
    box = enlarge_box(box_from_mask(mask, source), margin, mask.shape)
    if jitter:
        if rng is None:
            raise MedSAMError("box jitter needs a seeded random generator (pass --seed)")
        box = jitter_box(box, mask.shape, rng, max_shift=int(jitter))
    return box


@dataclass
class SliceSource:
    """Where one slice's pixels come from: ``image()`` gives the (256, 256, 3) uint8 image, or
    ``embedding()`` a stored (256, 64, 64) embedding (None when there is none)."""

    image: Callable[[], np.ndarray]
    embedding: Callable[[], np.ndarray | None] = lambda: None
    size: tuple[int, int] = (256, 256)


def set_slice(predictor, source: SliceSource, where: str = "slice") -> None:
    """Make ``source``'s slice the predictor's current image: its stored embedding where there is one."""
    embedding = source.embedding()
    if embedding is not None:
        predictor.set_embedding(embedding, source.size, source=where)
    else:
        predictor.set_image(source.image(), source=where)


def segment(predictor, source: SliceSource, box: np.ndarray, where: str = "slice", points=None,
            labels=None) -> np.ndarray:
    """(H, W) bool mask of one box (with its (K, 2) ``points`` and (K,) ``labels``, when given) on one slice."""
    set_slice(predictor, source, where)
    boxes = np.asarray(box, dtype=np.float64)[None]
    if points is None:
        return np.asarray(predictor.predict(boxes).masks[0], dtype=bool)
    return np.asarray(predictor.predict(boxes, points=points, labels=labels).masks[0], dtype=bool)


def _slice_sources(images, embeddings) -> dict[int, SliceSource]:
    if isinstance(images, Mapping):
        return dict(images)
    sources = {}
    for z in range(len(images)):
        emb = None if embeddings is None else embeddings[z]
        sources[z] = SliceSource(image=(lambda z=z: images[z]), embedding=(lambda e=emb: e),
                                 size=tuple(images[z].shape[:2]))
    return sources


def predict_volume(predictor, images, gt: np.ndarray, protocol: str = "gt", margin: float = 0, jitter: int = 0,
                   rng: np.random.Generator | None = None, embeddings=None, where: str = "target") -> dict:
    """Slice-by-slice prediction of one target.

    ``images``: a (Z, H, W, 3) array / list of slices, or a mapping {slice index: SliceSource} of
    the slices that have an image. ``gt``: (Z, H, W) bool, the ground truth the boxes come from.
    Returns ``{"mask": (Z, H, W) bool, "boxes": {z: box}, "prompted": [z, ...]}``.
    """
    if protocol not in PROTOCOLS:
        raise MedSAMError(f"unknown box protocol {protocol!r}; choose one of {PROTOCOLS}")
    gt = np.asarray(gt, dtype=bool)
    sources = _slice_sources(images, embeddings)
    pred = np.zeros_like(gt)
    boxes: dict[int, np.ndarray] = {}
    gt_slices = [z for z in range(gt.shape[0]) if gt[z].any()]
    if not gt_slices:
        return {"mask": pred, "boxes": boxes, "prompted": []}
    missing = [z for z in gt_slices if z not in sources]
    if protocol == "gt":
        if missing:
            raise MedSAMError(f"{where}: ground truth on slices {missing[:5]} without an image to prompt")
        for z in gt_slices:
            boxes[z] = prompt_box(gt[z], margin, jitter, rng, f"{where} slice {z}")
            pred[z] = segment(predictor, sources[z], boxes[z], f"{where} slice {z}")
        return {"mask": pred, "boxes": boxes, "prompted": list(boxes)}
    centre = gt_slices[len(gt_slices) // 2]
    if centre not in sources:
        raise MedSAMError(f"{where}: middle ground-truth slice {centre} has no image to prompt")
    boxes[centre] = prompt_box(gt[centre], margin, jitter, rng, f"{where} slice {centre}")
    pred[centre] = segment(predictor, sources[centre], boxes[centre], f"{where} slice {centre}")
    for step in (-1, 1):
        previous, z = pred[centre], centre + step
        while previous.any() and 0 <= z < gt.shape[0] and z in sources:
            boxes[z] = enlarge_box(box_from_mask(previous), margin, previous.shape)
            pred[z] = segment(predictor, sources[z], boxes[z], f"{where} slice {z}")
            previous, z = pred[z], z + step
    return {"mask": pred, "boxes": boxes, "prompted": sorted(boxes)}


class EmbeddingCache:
    """Image embeddings computed once per image and reused: by every target on a slice, by every
    box protocol or margin, and by a fine-tuned model that kept the base model's image encoder
    (the paper fine-tunes the mask decoder only, 2.3; ``same_encoder`` checks it).

    ``get(image_id, image_fn)``: from ``backing`` (an embedding store: ``image_id in backing``,
    ``.get(image_id)``) when it has the image, else from memory, else encoded now with ``predictor``'s image encoder.
    Memory is bounded (``max_bytes``, least recently used dropped first).
    """

    def __init__(self, predictor, backing=None, max_bytes: int = 768 << 20):
        from collections import OrderedDict

        self.predictor, self.backing, self.max_bytes = predictor, backing, int(max_bytes)
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self.encoded = 0

    def get(self, image_id: str, image_fn: Callable[[], np.ndarray]):
        if self.backing is not None and image_id in self.backing:
            return self.backing.get(image_id)  # a damaged chunk is an error, never silently re-encoded
        if image_id in self._items:
            self._items.move_to_end(image_id)
            return self._items[image_id]
        embedding = self.predictor.embed(image_fn(), source=image_id)
        self.encoded += 1
        self._items[image_id] = embedding
        self._bytes += embedding.element_size() * embedding.nelement()
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.element_size() * old.nelement()
        return embedding


def same_encoder(model_a, model_b) -> bool:
    """True when two loaded models have identical image-encoder weights (so embeddings are shared)."""
    import torch

    a = getattr(model_a, "model", model_a).image_encoder.state_dict()
    b = getattr(model_b, "model", model_b).image_encoder.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)
