"""Ready-made example cases for the quickstart: synthetic phantoms offline, real cases when present."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.phantoms import CASES, write_synthetic_set
from .data.readers import read_image
from .geometry import box_from_mask

OFFICIAL_DEMO_BOX = (95.0, 255.0, 190.0, 350.0)  # MedSAM_Inference.py's --box for assets/img_demo.png
BOX_MARGIN_PX = 5


@dataclass
class Example:
    name: str
    image: np.ndarray  # 2D (H, W) or (H, W, 3), raw intensities
    box: np.ndarray  # (x0, y0, x1, y1)
    truth: np.ndarray | None  # (H, W) bool, when a reference mask exists
    modality: str
    synthetic: bool


def _padded_box(mask: np.ndarray, margin: int = BOX_MARGIN_PX) -> np.ndarray:
    x0, y0, x1, y1 = box_from_mask(mask)
    h, w = mask.shape
    return np.array([max(0, x0 - margin), max(0, y0 - margin), min(w - 1, x1 + margin), min(h - 1, y1 + margin)])


def synthetic_examples(synthetic_dir: str | Path, seed: int = 0) -> list[Example]:
    """The ultrasound lesion and the CT liver tumour (low contrast, tiny) of the phantom set."""
    folder = write_synthetic_set(synthetic_dir, seed)
    by_id = {c.case_id: c for c in CASES}
    us = by_id["synthetic_us_breast"]
    us_img, us_lab = read_image(folder / us.image).array, read_image(folder / us.mask).array > 0
    ct = by_id["synthetic_ct_abdomen"]
    ct_vol, ct_lab = read_image(folder / ct.image), read_image(folder / ct.mask).array
    z = int(np.argmax((ct_lab == 2).sum(axis=(1, 2))))  # the slice where the tumour is largest
    tumour = ct_lab[z] == 2
    return [
        Example("synthetic ultrasound lesion", us_img, _padded_box(us_lab), us_lab, "Ultrasound", True),
        Example(f"synthetic CT liver tumour (slice {z})", ct_vol.array[z], _padded_box(tumour), tumour, "CT", True),
    ]


def shared_examples(shared_data_dir: str | Path) -> list[Example]:
    """The official MedSAM demo CT slice with its official box, and one real BUSI ultrasound case."""
    root = Path(shared_data_dir)
    demo = read_image(root / "ct_medsam_demo" / "img_demo.png").array
    busi_img = read_image(root / "us_breast_tumor" / "images" / "malignant (1).png").array
    busi_mask = read_image(root / "us_breast_tumor" / "masks" / "malignant (1)_mask.png").array > 0
    return [
        Example("MedSAM demo CT (official box)", demo, np.array(OFFICIAL_DEMO_BOX), None, "CT", False),
        Example("BUSI breast ultrasound, malignant (1)", busi_img, _padded_box(busi_mask), busi_mask,
                "Ultrasound", False),
    ]


def quickstart_examples(data_source: str, shared_data_dir: str | Path, results_dir: str | Path,
                        seed: int = 0) -> list[Example]:
    if data_source == "shared":
        return shared_examples(shared_data_dir)
    if data_source != "synthetic":
        raise ValueError(f"data_source must be 'synthetic' or 'shared', got {data_source!r}")
    return synthetic_examples(Path(results_dir) / "data" / "synthetic", seed)
