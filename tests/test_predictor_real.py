"""LiteMedSAM through the BoxPredictor on real cases from ../shared/data, case by case against the
released inference written out independently in tests/reference_pipeline.py.

Each case (tight ground-truth box, one box per mask): our mask and the reference's agree (Dice
>= 0.99 between them), and our Dice against the ground truth is within 0.005 of the reference's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam_lib.cases import OFFICIAL_DEMO_BOX
from medsam_lib.data.readers import read_image
from medsam_lib.geometry import box_from_mask
from medsam_lib.evaluation import dice
from medsam_lib.models.predictor import BoxPredictor

from reference_pipeline import reference_prediction

pytestmark = pytest.mark.shared

DATASETS = ("us_breast_tumor", "xray_chest_lungs", "us_carotid_artery")


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


@pytest.mark.parametrize("dataset", DATASETS)
def test_each_case_agrees_with_the_reference_pipeline(shared_data, predictor, dataset):
    for image_path, mask_path in _pairs(shared_data / dataset):
        image = read_image(image_path).array
        truth = _binary(read_image(mask_path).array)
        box = box_from_mask(truth)
        want, want_iou = reference_prediction(image, box)
        predictor.set_image(image, source=str(image_path))
        result = predictor.predict([box])
        got = result.masks[0]
        assert got.shape == truth.shape  # original resolution
        case = f"{dataset}/{image_path.name}"
        assert dice(got, want) >= 0.99, f"{case}: Dice(ours, reference) {dice(got, want):.4f}"
        assert abs(dice(got, truth) - dice(want, truth)) <= 0.005, (
            f"{case}: Dice vs ground truth {dice(got, truth):.4f}, reference {dice(want, truth):.4f}")
        assert abs(float(result.scores[0]) - want_iou) <= 0.01, f"{case}: predicted IoU"


def test_demo_ct_matches_official_pipeline(shared_data, predictor):
    image = read_image(shared_data / "ct_medsam_demo" / "img_demo.png").array
    official, _ = reference_prediction(image, OFFICIAL_DEMO_BOX)
    predictor.set_image(image)
    ours = predictor.predict([OFFICIAL_DEMO_BOX]).masks[0]
    assert 4500 < official.sum() < 5500  # SOURCE.md: about 4,970 pixels
    assert dice(ours, official) >= 0.99
    x0, y0, x1, y1 = (int(v) for v in OFFICIAL_DEMO_BOX)
    assert ours[y0:y1 + 1, x0:x1 + 1].sum() == ours.sum()  # the mask lies inside the (inclusive) box


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
