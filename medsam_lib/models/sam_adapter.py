"""segment-anything's ``SamPredictor`` driving SAM ViT-B or LiteMedSAM, through ``models.transforms``.

``PromptPredictor`` is a ``SamPredictor`` (points, boxes, mask input, multimask output; what
``SamAutomaticMaskGenerator`` drives) whose every step on the image goes through the one home for
model transforms: ``for_model(loaded).prepare`` for the image, its box scale for points and boxes,
``upsample_logits`` for each candidate mask, and ``LOGIT_THRESHOLD`` for the masks. The prompt
encoder and mask decoder are the model's own (LiteMedSAM's are SAM's, with the same names).

    predictor = PromptPredictor(zoo.load_model("litemedsam"))
    predictor.set_image(ct_slice, modality="CT")          # (H, W) any dtype, or (H, W, 3) uint8
    masks, iou, logits = predictor.predict(point_coords=np.array([[x, y]]), point_labels=np.array([1]),
                                           multimask_output=True)   # (3, H, W) bool, (3,), (3, 256, 256)
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from . import zoo
from .transforms import LOGIT_THRESHOLD, InputTransform, Prepared, for_model, to_uint8_rgb


class _SamParts:
    """The parts of segment-anything's ``Sam`` that ``SamPredictor`` and the mask generator use."""

    image_format = "RGB"
    mask_threshold = LOGIT_THRESHOLD  # on logits: sigmoid(x) > paper.MASK_THRESHOLD

    def __init__(self, model: nn.Module, transform: InputTransform):
        self.model = model
        self.image_encoder = model.image_encoder
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self._transform = transform

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, ...],
                          original_size: tuple[int, ...]) -> torch.Tensor:
        """(B, C, s, s) logits -> (B, C, H, W) logits at the original size, one candidate at a time."""
        geometry = self._transform.geometry(tuple(original_size))
        b, c = masks.shape[:2]
        flat = masks.reshape(b * c, 1, *masks.shape[2:])
        return self._transform.upsample_logits(flat, geometry).reshape(b, c, *geometry.original_size)


class _PromptCoords:
    """``SamPredictor.transform``: original pixels -> model input pixels, by the transform's box scale."""

    def __init__(self, predictor: "PromptPredictor"):
        self._predictor = predictor

    def _scale(self, original_size) -> np.ndarray:
        prepared: Prepared = self._predictor.transform_model.geometry(tuple(original_size))
        return np.asarray(prepared.box_scale, dtype=np.float64)

    def apply_coords(self, coords: np.ndarray, original_size) -> np.ndarray:
        return np.asarray(coords, dtype=np.float64) * self._scale(original_size)

    def apply_boxes(self, boxes: np.ndarray, original_size) -> np.ndarray:
        return self.apply_coords(np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 2), original_size).reshape(-1, 4)


def _sam_predictor_class():
    from segment_anything import SamPredictor

    return SamPredictor


class PromptPredictor(_sam_predictor_class()):
    """segment-anything's ``SamPredictor`` for SAM ViT-B or LiteMedSAM (see the module docstring)."""

    def __init__(self, loaded: zoo.LoadedModel, vit_preprocess: str = "paper"):
        self.loaded = loaded
        self.transform_model = for_model(loaded, vit_preprocess)
        self.model = _SamParts(loaded.model, self.transform_model)
        self.transform = _PromptCoords(self)
        self._last = None
        self.reset_image()

    @torch.inference_mode()
    def set_image(self, image: np.ndarray, image_format: str = "RGB", modality: str | None = None,
                  source: str = "image") -> None:
        """Embed one image: (H, W) of any dtype (brought to 8 bit by the paper's preset) or (H, W, 3).

        The last embedding is kept: setting the same image again (as SamAutomaticMaskGenerator does
        after ``reset_image``) costs no encoder pass.
        """
        rgb = to_uint8_rgb(image, modality, source)
        key = hashlib.blake2b(rgb.tobytes(), digest_size=16).hexdigest() + str(rgb.shape)
        if self._last is not None and self._last[0] == key:
            _, self.features, self.original_size, self.input_size = self._last
            self.is_image_set = True
            return
        self.reset_image()
        prepared = self.transform_model.prepare(rgb)
        self.features = self.model.image_encoder(prepared.tensor[None].to(self.device))
        self.original_size, self.input_size = prepared.original_size, prepared.input_size
        self.is_image_set = True
        self._last = (key, self.features, self.original_size, self.input_size)

    @torch.inference_mode()
    def predict(self, *args, **kwargs):
        return super().predict(*args, **kwargs)
