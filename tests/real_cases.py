"""Real cases of ../shared/data and ../shared/cohorts as (name, image, bool ground truth) for tests
and benchmarks that compare two paths case by case (tests/test_exported.py,
benchmarks/exported_accuracy.py). Independent of the curation code: files read with the readers,
a 3D case's slice of most ground truth through the paper's intensity preset, a label image's most
frequent label."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medsam_lib.data.preprocess import slice_pixels
from medsam_lib.data.readers import read_image

# 2D folders of ../shared/data: (image folder, mask folder, mask name from image name)
FOLDERS_2D = {
    "endoscopy_polyp": ("images", "masks", lambda n: n),
    "mr_cardiac_acdc_2d": ("images", "masks", lambda n: n),
    "mr_hippocampus_msd_2d": ("images", "masks", lambda n: n),
    "pathology_gland": ("images", "masks", lambda n: n),
    "us_breast_tumor": ("images", "masks", lambda n: n.replace(".png", "_mask.png")),
    "us_carotid_artery": ("images", "masks", lambda n: n),
    "xray_chest_lungs": ("images", "masks", lambda n: n),
    "fundus_retinal_vessel": ("images", "1st_manual", lambda n: n.split("_")[0] + "_manual1.gif"),
}
# 3D cases of ../shared/data: (image, mask)
CASES_3D = [("ct_abdomen_organs/example_ct_sm.nii.gz", "ct_abdomen_organs/example_seg.nii.gz"),
            ("mr_abdomen_organs/example_mr_sm.nii.gz", "mr_abdomen_organs/example_seg_mr.nii.gz"),
            ("ct_soft_tissue_sarcoma/STS_002/CT_image.nii.gz", "ct_soft_tissue_sarcoma/STS_002/CT_mask.nii.gz"),
            ("mr_soft_tissue_sarcoma/STS_002/MR_T1_image.nii.gz", "mr_soft_tissue_sarcoma/STS_002/MR_T1_mask.nii.gz"),
            ("pet_soft_tissue_sarcoma/STS_001/PET_image.nii.gz", "pet_soft_tissue_sarcoma/STS_001/PET_mask.nii.gz"),
            ("mr_brain_tumor_pyradiomics/brain1_image.nrrd", "mr_brain_tumor_pyradiomics/brain1_label.nrrd"),
            ("mr_breast_tumor/breast1_image.nrrd", "mr_breast_tumor/breast1_label.nrrd"),
            ("mr_prostate_phantom/prostate_phantom_subvolume.nrrd",
             "mr_prostate_phantom/prostate_phantom_subvolume-label.nrrd"),
            ("mr_spinal_cord/t1/t1w.nii.gz", "mr_spinal_cord/t1/t1w_seg-manual.nii.gz")]


def _largest_label(mask: np.ndarray, lossy: bool = False) -> np.ndarray:
    """The most frequent non-zero value of a label image (JPEG masks: > 127), as a bool mask."""
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        mask = mask[..., 0]
    if lossy:
        return mask > 127
    values, counts = np.unique(mask[mask > 0], return_counts=True)
    return mask == values[np.argmax(counts)] if len(values) else mask > 0


def cases_2d(root: Path, per_folder: int | None = None):
    for folder, (images, masks, name) in FOLDERS_2D.items():
        for path in sorted((root / folder / images).iterdir())[:per_folder]:
            mask = root / folder / masks / name(path.name)
            yield f"{folder}/{path.name}", read_image(path).array, _largest_label(
                read_image(mask).array, lossy=mask.suffix == ".jpg")


def cases_3d(root: Path):
    for image_rel, mask_rel in CASES_3D:
        image = read_image(root / image_rel)
        truth = _largest_label(read_image(root / mask_rel).array)
        z = int(np.argmax(truth.reshape(len(truth), -1).sum(1)))
        assert truth[z].any(), f"{mask_rel}: no ground truth"
        yield f"{image_rel} slice {z}", slice_pixels(image.array, z, image.modality, source=image_rel), truth[z]


def cases_cohorts(root: Path, per_folder: int | None = None):
    from test_cohorts import README_CASES, _independent

    for folder in README_CASES:
        for name in sorted(p.name for p in (root / folder / "images").iterdir())[:per_folder]:
            image, masks = _independent(root, folder, name)
            truth = next(m for k, m in masks.items() if k != "fov")
            if image.ndim == 3 and folder == "mr_hippocampus_msd_3d":  # (z, y, x): the slice of most label
                z = int(np.argmax((truth > 0).reshape(len(truth), -1).sum(1)))
                image, truth = slice_pixels(image, z, "MR", source=name), truth[z]
            yield f"{folder}/{name}", image, truth > 0
