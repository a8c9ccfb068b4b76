"""Taking SAM apart (paper 2.1-2.2): the architecture in numbers and SAM's three prompt modes.

The numbers (parameters per component, FLOPs per image, embedding shape) are counted on the models
themselves in the run: parameters by summing tensor sizes, FLOPs with
``torch.utils.flop_counter.FlopCounterMode`` over one forward pass of a copy of the model on the
``meta`` device (shapes only, no arithmetic: a ViT-B pass at 1024 x 1024 costs no CPU time that way).

The three modes of SAM (segment everything, box, points) run through segment-anything's own
``SamPredictor`` and ``SamAutomaticMaskGenerator``. ``PromptPredictor`` lets them drive either model:
- SAM ViT-B: SAM's own path (longest side to 1024, ImageNet mean/std on 0-255, padded);
- LiteMedSAM: its released pipeline (longest side to 256 with cv2 INTER_AREA, min-max to [0, 1],
  zero-padded to 256 x 256). Its prompt encoder and mask decoder are SAM's (same attribute names).
MedSAM and LiteMedSAM were fine-tuned with box prompts only (paper 2.3): the point and
segment-everything modes show what that leaves of SAM's other modes, they are not MedSAM's use.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import paper
from .data.phantoms import CASES, write_synthetic_set
from .data.readers import read_image
from .fileio import MedSAMError
from .geometry import box_from_mask
from .evaluation.metrics import dice
from .models import zoo
from .models.predictor import to_uint8_rgb

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


def sam_vit_b(seed: int = 0, device: str | torch.device | None = "cpu") -> tuple[zoo.LoadedModel, bool]:
    """SAM ViT-B with Meta's weights when they are in the cache, else randomly initialised.

    Returns (model, pretrained). Random init uses ``torch.manual_seed(seed)`` so it is repeatable.
    """
    try:
        zoo.weights_path("sam_vit_b")
    except MedSAMError:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = zoo.build_model("vit_b")
        finally:
            torch.random.set_rng_state(generator_state)
        model.to(device or "cpu").eval()
        return zoo.LoadedModel(model=model, name="sam_vit_b", arch="vit_b",
                               checkpoint=f"random init (seed {seed}; sam_vit_b weights not in the cache)"), False
    return zoo.load_model("sam_vit_b", device=device), True


def load_models(model: str = zoo.DEFAULT_MODEL, seed: int = 0,
                device: str | torch.device | None = None) -> tuple[dict[str, zoo.LoadedModel], bool]:
    """The two models the notebook compares: ``model`` (LiteMedSAM by default) and SAM ViT-B.

    Returns ({label: model}, whether SAM ViT-B has its real weights); labels say "(random init)".
    """
    first = zoo.load_model(model, device=device)
    vit_b, pretrained = sam_vit_b(seed=seed, device=device)
    first_label = "LiteMedSAM" if first.name == "litemedsam" else first.name
    vit_label = "SAM ViT-B" + ("" if pretrained else " (random init)")
    return {first_label: first, vit_label: vit_b}, pretrained


def weights_note(loaded: zoo.LoadedModel) -> str:
    """Where a model's weights came from, in words."""
    if loaded.checkpoint.startswith("random init"):
        return loaded.checkpoint
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


# --- segment-anything's predictor driving either model ------------------------------------------

class _LiteSam:
    """The parts of segment-anything's ``Sam`` that ``SamPredictor`` uses, around LiteMedSAM."""

    image_format = "RGB"
    mask_threshold = 0.0  # on logits, i.e. probability 0.5 (paper.MASK_THRESHOLD)

    def __init__(self, model: nn.Module):
        self.model = model
        self.image_encoder = model.image_encoder
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, h, w) resized image, 0-255 -> min-max to [0, 1], zero-padded to (1, 3, 256, 256)."""
        x = x.float()
        x = (x - x.min()) / torch.clamp(x.max() - x.min(), min=1e-8)
        size = self.image_encoder.img_size
        return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, ...],
                          original_size: tuple[int, ...]) -> torch.Tensor:
        size = self.image_encoder.img_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)


def _sam_predictor_class():
    from segment_anything import SamPredictor

    return SamPredictor


class PromptPredictor(_sam_predictor_class()):
    """segment-anything's ``SamPredictor`` for SAM ViT-B or LiteMedSAM.

        predictor = PromptPredictor(zoo.load_model("litemedsam"))
        predictor.set_image(ct_slice, modality="CT")          # (H, W) any dtype, or (H, W, 3) uint8
        masks, iou, logits = predictor.predict(point_coords=np.array([[x, y]]), point_labels=np.array([1]),
                                               multimask_output=True)   # (3, H, W) bool, (3,), (3, 256, 256)
    """

    def __init__(self, loaded: zoo.LoadedModel):
        from segment_anything.utils.transforms import ResizeLongestSide

        self.loaded = loaded
        self.model = loaded.model if loaded.arch == "vit_b" else _LiteSam(loaded.model)
        self.transform = ResizeLongestSide(loaded.image_size)
        self.reset_image()

    @torch.inference_mode()
    def set_image(self, image: np.ndarray, image_format: str = "RGB", modality: str | None = None,
                  source: str = "image") -> None:
        """Embed one image: (H, W) of any dtype (brought to 8 bit by the paper's preset) or (H, W, 3).

        The last embedding is kept: setting the same image again (as SamAutomaticMaskGenerator does
        after ``reset_image``) costs no encoder pass.
        """
        import hashlib

        rgb = to_uint8_rgb(image, modality, source)
        key = hashlib.blake2b(rgb.tobytes(), digest_size=16).hexdigest() + str(rgb.shape)
        cached = getattr(self, "_last", None)
        if cached is not None and cached[0] == key:
            _, self.features, self.original_size, self.input_size = cached
            self.is_image_set = True
            return
        if self.loaded.arch == "vit_b":
            super().set_image(rgb, "RGB")
        else:
            import cv2

            h, w = rgb.shape[:2]
            nh, nw = self.transform.get_preprocess_shape(h, w, self.transform.target_length)
            small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
            tensor = torch.as_tensor(small, device=self.device).permute(2, 0, 1)[None]
            self.set_torch_image(tensor, (h, w))
        self._last = (key, self.features, self.original_size, self.input_size)

    @torch.inference_mode()
    def predict(self, *args, **kwargs):
        return super().predict(*args, **kwargs)


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


def deepest_point(region: np.ndarray) -> np.ndarray:
    """(x, y) of the pixel of ``region`` farthest from its border (a simulated click)."""
    from scipy.ndimage import distance_transform_edt

    region = np.asarray(region, bool)
    if not region.any():
        raise MedSAMError("cannot place a point in an empty region")
    dist = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([float(x), float(y)])


def _next_background_click(mask: np.ndarray, truth: np.ndarray, clicks: np.ndarray, box: np.ndarray,
                           min_error_px: int, keep_away_px: float) -> np.ndarray | None:
    """Where a user would click 'not this' next: the largest false-positive region, else near the target."""
    import cc3d

    wrong = mask & ~truth
    components = cc3d.connected_components(wrong.astype(np.uint8), connectivity=4)
    if components.max() > 0:
        sizes = np.bincount(components.ravel())[1:]
        if sizes.max() >= min_error_px:
            return deepest_point(components == int(np.argmax(sizes)) + 1)
    # No false positive worth a click: tell the model what lies around the target, inside its box,
    # away from earlier clicks.
    h, w = truth.shape
    yy, xx = np.mgrid[:h, :w]
    x0, y0, x1, y1 = box
    candidate = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1) & ~truth
    for x, y in clicks:
        candidate &= (xx - x) ** 2 + (yy - y) ** 2 > keep_away_px ** 2
    return deepest_point(candidate) if candidate.any() else None


def point_mode(predictor: PromptPredictor, truth: np.ndarray, n_background: int = 3,
               min_error_px: int = 10) -> list[ModeResult]:
    """SAM's interactive point mode, simulated: one foreground click, then background clicks one at a time.

    Step 0: a foreground point at the target's deepest pixel, multimask output, the mask SAM ranks
    best (its highest predicted IoU). Each next step adds one background point: at the deepest pixel
    of the largest false-positive region of the previous mask, or, when there is none of at least
    ``min_error_px`` pixels, at the deepest non-target pixel inside the target's box away from earlier
    clicks. The previous step's logits go in as the mask input, as in SAM's interactive protocol.
    """
    truth = np.asarray(truth, bool)
    box = box_from_mask(truth)
    keep_away = max(4.0, 0.1 * max(box[2] - box[0], box[3] - box[1]))
    points = [deepest_point(truth)]
    labels = [1]
    masks, scores, logits = predictor.predict(point_coords=np.array(points), point_labels=np.array(labels),
                                              multimask_output=True)
    best = int(np.argmax(scores))
    steps = [ModeResult("points", masks[best], float(scores[best]), np.array(points), np.array(labels),
                        dice=dice(masks[best], truth))]
    previous = logits[best:best + 1]
    for _ in range(n_background):
        click = _next_background_click(steps[-1].mask, truth, np.array(points), box, min_error_px, keep_away)
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


# --- the reference CT slice -----------------------------------------------------------------------

@dataclass
class CTSlice:
    name: str
    image: np.ndarray  # (H, W) HU
    truth: np.ndarray  # (H, W) bool, the target
    target: str
    box: np.ndarray  # (4,) tight box of the target
    modality: str
    synthetic: bool
    note: str


def reference_ct_slice(data_source: str, shared_data_dir: str | Path, results_dir: str | Path,
                       seed: int = 0) -> CTSlice:
    """The CT slice of Fig. 2: a real abdominal CT (liver) from ../shared/data, or the synthetic phantom."""
    if data_source == "shared":
        root = Path(shared_data_dir) / "ct_dicom_liver_spine_heart"
        volume = read_image(root / "ct-3slice")
        labels = read_image(root / "liver_seg.nrrd")
        if labels.array.shape != volume.array.shape:
            raise MedSAMError(f"{root}: liver mask {labels.array.shape} does not match the CT {volume.array.shape}")
        z = volume.n_slices // 2
        truth = labels.array[z] == 1
        return CTSlice(f"real CT (dcmqi ct-3slice, slice {z})", volume.array[z], truth, "liver",
                       box_from_mask(truth), "CT", False, "liver mask: semi-automatic (SlicerEditor), dcmqi test data")
    if data_source != "synthetic":
        raise MedSAMError(f"data_source must be 'synthetic' or 'shared', got {data_source!r}")
    folder = write_synthetic_set(Path(results_dir) / "data" / "synthetic", seed)
    case = next(c for c in CASES if c.case_id == "synthetic_ct_abdomen")
    volume = read_image(folder / case.image)
    labels = read_image(folder / case.mask).array
    z = volume.n_slices // 2
    truth = np.isin(labels[z], (1, 2))  # liver including its tumour
    return CTSlice(f"synthetic CT phantom (slice {z})", volume.array[z], truth, "liver", box_from_mask(truth),
                   "CT", True, "SYNTHETIC phantom generated by medsam_lib; liver = labels 1 and 2")


# --- Fig. 2: the three modes on one slice -----------------------------------------------------------

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


def three_modes(predictor: PromptPredictor, ct: CTSlice, points_per_side: int = 8,
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


def fig2_predictor(choice: str, predictors: dict[str, "PromptPredictor"], ct: "CTSlice",
                   device: str | torch.device | None = None) -> tuple[str, "PromptPredictor"]:
    """The model for Fig. 2: ``"auto"`` = SAM ViT-B when it has real weights, else the first model;
    a label or zoo name of one of ``predictors``; or any other zoo name or checkpoint path (loaded)."""
    if choice == "auto":
        label = next((k for k in predictors if k == "SAM ViT-B"), next(iter(predictors)))
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


# --- figures --------------------------------------------------------------------------------------

def _show(ax, image: np.ndarray, modality: str | None, title: str) -> None:
    ax.imshow(to_uint8_rgb(image, modality))
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _fill(ax, mask: np.ndarray, color, alpha: float = 0.45) -> None:
    rgba = np.zeros((*mask.shape, 4))
    rgba[mask] = (*color[:3], alpha)
    ax.imshow(rgba)


def _clicks(ax, points: np.ndarray, labels: np.ndarray) -> None:
    for (x, y), label in zip(points, labels):
        ax.scatter([x], [y], marker="*", s=140, c="lime" if label else "red", edgecolors="white", linewidths=0.8)


def plot_three_modes(ct: CTSlice, modes: ThreeModes, model_label: str):
    """Fig. 2 as the paper lays it out: everything, box, then the point steps; titles carry the IoU scores."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = 2 + len(modes.points)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6))
    kind = "SYNTHETIC " if ct.synthetic else ""
    rng = np.random.default_rng(0)
    _show(axes[0], ct.image, ct.modality, f"(a) segment everything\n{len(modes.everything)} masks, "
          f"{modes.n_sam_quality} pass SAM's filters")
    for record in modes.everything[::-1]:
        _fill(axes[0], record["segmentation"], rng.uniform(0.2, 1.0, 3), alpha=0.5)
    _show(axes[1], ct.image, ct.modality, f"(b) box mode\nIoU score {modes.box.score:.3f}, Dice {modes.box.dice:.3f}")
    _fill(axes[1], modes.box.mask, (0.12, 0.56, 1.0))
    x0, y0, x1, y1 = modes.box.box
    axes[1].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, edgecolor="lime"))
    for i, step in enumerate(modes.points):
        ax = axes[2 + i]
        n_bg = int((step.point_labels == 0).sum())
        _show(ax, ct.image, ct.modality, f"({chr(ord('c') + i)}) points: 1 fg + {n_bg} bg\n"
              f"IoU score {step.score:.3f}, Dice {step.dice:.3f}")
        _fill(ax, step.mask, (1.0, 0.5, 0.05))
        _clicks(ax, step.points, step.point_labels)
    for ax in axes[1:]:
        ax.contour(ct.truth.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
    fig.suptitle(f"{model_label} on a {kind}CT slice: {ct.name} (yellow: reference {ct.target})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def plot_multimask(ct: CTSlice, point: np.ndarray, outputs: dict[str, tuple[np.ndarray, np.ndarray]]):
    """Rows: models; columns: the three candidate masks for one foreground click, with their IoU scores."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(outputs), 3, figsize=(9.6, 3.3 * len(outputs)), squeeze=False)
    for row, (label, (masks, scores)) in zip(axes, outputs.items()):
        best = int(np.argmax(scores))
        for i, ax in enumerate(row):
            pick = " (SAM's pick)" if i == best else ""
            _show(ax, ct.image, ct.modality, f"{label}\ncandidate {i + 1}: IoU score {scores[i]:.3f}{pick}")
            _fill(ax, masks[i], (0.84, 0.15, 0.16))
            _clicks(ax, np.asarray([point]), np.array([1]))
    kind = "SYNTHETIC " if ct.synthetic else ""
    fig.suptitle(f"Multimask output for one click on a {kind}CT slice ({ct.name})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_architecture(table):
    """Bar charts: parameters per component (millions) and encoder GFLOPs per image, per model."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    components = [f"{COMPONENT_NAMES[c]} params (M)" for c in COMPONENTS]
    width = 0.8 / len(table)
    x = np.arange(len(components))
    for i, (_, row) in enumerate(table.iterrows()):
        values = [row[c] for c in components]
        bars = left.bar(x + i * width, values, width, label=row["model"])
        left.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7)
    left.set_xticks(x + width * (len(table) - 1) / 2, [COMPONENT_NAMES[c] for c in COMPONENTS])
    left.set_yscale("log")
    left.set_ylabel("parameters (millions, log scale)")
    left.legend(fontsize=8)
    bars = right.bar(table["model"], table["encoder GFLOPs / image"], color=["C0", "C1", "C2"][:len(table)])
    right.bar_label(bars, labels=[f"{v:.1f}" for v in table["encoder GFLOPs / image"]], fontsize=8)
    right.set_ylabel("image encoder GFLOPs per image")
    fig.tight_layout()
    return fig
