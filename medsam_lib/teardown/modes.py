"""SAM's three prompt modes on one slice (paper 2.1, Fig. 2): segment everything, box, points.

They run through segment-anything's own ``SamPredictor`` and ``SamAutomaticMaskGenerator`` via
``models.sam_adapter.PromptPredictor``, for SAM ViT-B or LiteMedSAM. MedSAM and LiteMedSAM were
fine-tuned with box prompts only (paper 2.3): the point and segment-everything modes show what that
leaves of SAM's other modes; they are not MedSAM's use. Simulated clicks come from
``medsam_lib.prompts`` (the evaluation uses the same ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .. import paper
from ..cases import Case
from ..geometry import box_from_mask
from ..evaluation.metrics import dice
from ..models import zoo
from ..models.sam_adapter import PromptPredictor
from ..models.transforms import to_uint8_rgb
from ..prompts import MIN_ERROR_PX, deepest_point, next_background_click

# --- the three modes ------------------------------------------------------------------------------

@dataclass
class ModeResult:
    """One prompt and what came out of it."""

    mode: str
    mask: np.ndarray  # (H, W) bool
    score: float  # the model's predicted IoU
    points: np.ndarray | None = None  # (K, 2) x, y
    point_labels: np.ndarray | None = None  # (K,) 1 foreground, 0 background
    box: np.ndarray | None = None  # (4,) x0, y0, x1, y1
    dice: float | None = None  # against the reference mask


def multimask_outputs(predictor: PromptPredictor, point: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """SAM's three candidate masks for one foreground point (the ambiguity outputs).

    Returns masks (3, H, W) bool and predicted IoU scores (3,).
    """
    masks, scores, _ = predictor.predict(point_coords=np.asarray([point], dtype=np.float64),
                                         point_labels=np.array([1]), multimask_output=True)
    return masks, scores


def box_mode(predictor: PromptPredictor, box: Sequence[float], truth: np.ndarray | None = None) -> ModeResult:
    """One box, one mask (paper 2.3: multimask off for boxes)."""
    box = np.asarray(box, dtype=np.float64)
    masks, scores, _ = predictor.predict(box=box, multimask_output=paper.MULTIMASK_OUTPUT)
    return ModeResult("box", masks[0], float(scores[0]), box=box,
                      dice=None if truth is None else dice(masks[0], truth))


def point_mode(predictor: PromptPredictor, truth: np.ndarray, n_background: int = 3,
               min_error_px: int = MIN_ERROR_PX) -> list[ModeResult]:
    """SAM's interactive point mode, simulated: one foreground click, then background clicks one at a time.

    Step 0: a foreground point at the target's deepest pixel, multimask output, the mask SAM ranks
    best (its highest predicted IoU). Each next step adds one background point: at the deepest pixel
    of the largest false-positive region of the previous mask, or, when there is none of at least
    ``min_error_px`` pixels, at the deepest non-target pixel inside the target's box away from earlier
    clicks (``medsam_lib.prompts``). The previous step's logits go in as the mask input, as in SAM's interactive protocol.
    """
    truth = np.asarray(truth, bool)
    box = box_from_mask(truth)
    points = [deepest_point(truth)]
    labels = [1]
    masks, scores, logits = predictor.predict(point_coords=np.array(points), point_labels=np.array(labels),
                                              multimask_output=True)
    best = int(np.argmax(scores))
    steps = [ModeResult("points", masks[best], float(scores[best]), np.array(points), np.array(labels),
                        dice=dice(masks[best], truth))]
    previous = logits[best:best + 1]
    for _ in range(n_background):
        click = next_background_click(steps[-1].mask, truth, np.array(points), box, min_error_px)
        if click is None:
            break
        points.append(click)
        labels.append(0)
        masks, scores, logits = predictor.predict(point_coords=np.array(points), point_labels=np.array(labels),
                                                  mask_input=previous, multimask_output=False)
        steps.append(ModeResult("points", masks[0], float(scores[0]), np.array(points), np.array(labels),
                                dice=dice(masks[0], truth)))
        previous = logits[:1]
    return steps


def segment_everything(predictor: PromptPredictor, image: np.ndarray, modality: str | None = None,
                       points_per_side: int = 16, pred_iou_thresh: float = 0.88,
                       stability_score_thresh: float = 0.95, min_mask_region_area: int = 0) -> list[dict]:
    """SAM's automatic mask generator (a grid of single-point prompts) on one 2D image.

    Returns segment-anything's records (``segmentation`` (H, W) bool, ``predicted_iou``,
    ``stability_score``, ``area``, ``bbox`` x, y, w, h), largest first.
    """
    from segment_anything import SamAutomaticMaskGenerator

    generator = SamAutomaticMaskGenerator(_GeneratorModel(predictor.loaded.image_size),
                                          points_per_side=points_per_side, points_per_batch=64,
                                          pred_iou_thresh=pred_iou_thresh,
                                          stability_score_thresh=stability_score_thresh,
                                          min_mask_region_area=min_mask_region_area)
    generator.predictor = predictor
    rgb = to_uint8_rgb(image, modality)
    with torch.inference_mode():
        records = generator.generate(rgb)
    predictor.set_image(rgb)  # the generator resets the predictor; the embedding is still cached
    return sorted(records, key=lambda r: -r["area"])


class _GeneratorModel:
    """Just enough of ``Sam`` for ``SamAutomaticMaskGenerator.__init__`` (its predictor is replaced)."""

    def __init__(self, image_size: int):
        self.image_encoder = type("Encoder", (), {"img_size": image_size})()


# --- Fig. 2: the three modes on one slice ---------------------------------------------------------

SAM_DEFAULT_PRED_IOU = 0.88  # SamAutomaticMaskGenerator's defaults
SAM_DEFAULT_STABILITY = 0.95


@dataclass
class ThreeModes:
    everything: list[dict]  # every mask of the point grid left after SAM's NMS, largest first
    n_sam_quality: int  # how many of them pass SAM's default quality filters
    everything_best_dice: float  # Dice of the mask that best matches the target (nan when none)
    box: ModeResult
    points: list[ModeResult]
    points_per_side: int


def three_modes(predictor: PromptPredictor, ct: Case, points_per_side: int = 8,
                n_background: int = 3) -> ThreeModes:
    """Fig. 2: segment everything, the box mode and the point mode on one slice (image already set).

    Segment-everything keeps every mask of the grid (quality filters off, SAM's NMS on) so the figure
    shows what the grid produces; ``n_sam_quality`` counts those that SAM's default filters
    (predicted IoU >= 0.88, stability >= 0.95) would keep.
    """
    everything = segment_everything(predictor, ct.image, ct.modality, points_per_side=points_per_side,
                                    pred_iou_thresh=0.0, stability_score_thresh=0.0)
    n_quality = sum(r["predicted_iou"] >= SAM_DEFAULT_PRED_IOU and r["stability_score"] >= SAM_DEFAULT_STABILITY
                    for r in everything)
    best = max((dice(r["segmentation"], ct.truth) for r in everything), default=float("nan"))
    return ThreeModes(everything, int(n_quality), best, box_mode(predictor, ct.box, ct.truth),
                      point_mode(predictor, ct.truth, n_background), points_per_side)


def fig2_predictor(choice: str, predictors: dict[str, "PromptPredictor"], ct: Case,
                   device: str | torch.device | None = None) -> tuple[str, "PromptPredictor"]:
    """The model for Fig. 2: ``"auto"`` = SAM ViT-B when it has real weights, else the first model;
    a label or zoo name of one of ``predictors``; or any other zoo name or checkpoint path (loaded)."""
    if choice == "auto":
        label = next((k for k, p in predictors.items() if p.loaded.name == "sam_vit_b" and p.loaded.pretrained),
                     next(iter(predictors)))
        return label, predictors[label]
    for label, predictor in predictors.items():
        if choice in (label, predictor.loaded.name):
            return label, predictor
    predictor = PromptPredictor(zoo.load_model(choice, device=device))
    predictor.set_image(ct.image, modality=ct.modality, source=ct.name)
    return predictor.loaded.name, predictor


def _points_text(step: ModeResult) -> str:
    return "; ".join(f"{'+' if label else '-'}({int(x)}, {int(y)})" for (x, y), label in
                     zip(step.points, step.point_labels))


def modes_table(modes: ThreeModes, data_label: str, target: str = "target"):
    """One row per panel of Fig. 2: prompt, the model's predicted IoU, Dice against the reference."""
    import pandas as pd

    dice_col = f"Dice vs {target}"
    rows = [{"panel": "segment everything", "prompt": f"{modes.points_per_side} x {modes.points_per_side} point grid",
             "masks": len(modes.everything), "masks passing SAM's filters": modes.n_sam_quality,
             "predicted IoU": round(max((r["predicted_iou"] for r in modes.everything), default=float("nan")), 3),
             dice_col: round(modes.everything_best_dice, 3)}]
    rows.append({"panel": "box", "prompt": "box (" + ", ".join(str(int(v)) for v in modes.box.box) + ")",
                 "masks": 1, "masks passing SAM's filters": None, "predicted IoU": round(modes.box.score, 3),
                 dice_col: round(modes.box.dice, 3)})
    for step in modes.points:
        n_bg = int((step.point_labels == 0).sum())
        rows.append({"panel": f"points: 1 foreground + {n_bg} background", "prompt": _points_text(step),
                     "masks": 1, "masks passing SAM's filters": None, "predicted IoU": round(step.score, 3),
                     dice_col: round(step.dice, 3)})
    table = pd.DataFrame(rows)
    table["masks passing SAM's filters"] = table["masks passing SAM's filters"].astype("Int64")
    table.insert(0, "data", data_label)
    return table


def multimask_table(outputs: dict[str, tuple[np.ndarray, np.ndarray]], truth: np.ndarray, data_label: str,
                    target: str = "target"):
    """One row per (model, candidate mask) of the multimask output for one click."""
    import pandas as pd

    rows = []
    for label, (masks, scores) in outputs.items():
        best = int(np.argmax(scores))
        for i, (mask, score) in enumerate(zip(masks, scores)):
            rows.append({"data": data_label, "model": label, "candidate": i + 1,
                         "predicted IoU": round(float(score), 3), "mask pixels": int(mask.sum()),
                         f"Dice vs {target}": round(dice(mask, truth), 3), "SAM's pick": i == best})
    return pd.DataFrame(rows)




def multimask_summary(outputs: dict[str, tuple[np.ndarray, np.ndarray]], truth: np.ndarray) -> str:
    """What the multimask figure shows, in words computed from the candidates: per model, each
    candidate's size and Dice, the one SAM picks (highest predicted IoU) and the one that fits best."""
    lines = []
    for label, (masks, scores) in outputs.items():
        dices = [dice(m, truth) for m in masks]
        pick, fit = int(np.argmax(scores)), int(np.argmax(dices))
        parts = ", ".join(f"{i + 1}: {int(m.sum())} px (Dice {d:.2f})" for i, (m, d) in enumerate(zip(masks, dices)))
        empty = sum(int(m.sum()) == 0 for m in masks)
        if max(dices) < 0.1:
            verdict = ("none covers the target: this model does not segment the target from one click "
                       "(MedSAM-style models were fine-tuned on boxes only)")
        elif pick == fit:
            verdict = "it is also the candidate that fits the reference best"
        else:
            verdict = f"the best fit is candidate {fit + 1}: the IoU head, never trained on points, misranks them"
        lines.append(f"{label}: candidates {parts}; SAM's pick (highest predicted IoU) is candidate {pick + 1}, "
                     f"{verdict}" + (f"; {empty} candidate(s) are empty" if empty else ""))
    return "\n".join(lines)
