"""The paper's loss (2.3 / 3.2): the unweighted sum of Dice loss and binary cross-entropy, on the
decoder's low-resolution logits against the target resized to them.

Per sample: dice = 1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps) with p = sigmoid(logits), and
bce = mean over pixels of BCE-with-logits; the batch loss is the mean over samples of dice + bce,
so a global batch split evenly across ranks has the mean of the ranks' losses as its loss (what
DDP's gradient averaging assumes). The released code uses MONAI's DiceLoss(sigmoid=True,
squared_pred=True): squared terms in the denominator; the paper does not say, we use plain Dice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.transforms import LOGIT_THRESHOLD

EPS = 1e-5


def resize_target(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) {0, 1} float -> (B, 1, h, w), nearest neighbour (identity at the same size)."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target, size=size, mode="nearest")


def dice_bce_per_sample(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w) logits, (B, 1, H, W) target -> (B,) dice loss + BCE per sample, in float32."""
    logits = logits.float()
    target = resize_target(target.float(), logits.shape[-2:])
    prob = torch.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    dice = 1.0 - (2.0 * (prob * flat).sum(1) + EPS) / (prob.sum(1) + flat.sum(1) + EPS)
    bce = F.binary_cross_entropy_with_logits(logits.flatten(1), flat, reduction="none").mean(1)
    return dice + bce


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``dice_bce_per_sample``."""
    return dice_bce_per_sample(logits, target).mean()


def dice_score(logits: torch.Tensor, target: torch.Tensor, threshold: float = LOGIT_THRESHOLD) -> torch.Tensor:
    """(B,) Dice similarity of (logits > threshold) with the target (1.0 where both are empty)."""
    target = resize_target(target.float(), logits.shape[-2:]).flatten(1) > 0.5
    pred = (logits.float() > threshold).flatten(1)
    inter = (pred & target).sum(1).float()
    total = (pred.sum(1) + target.sum(1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
