"""Readers for every supported format: arrays, spacing, axis order; masks in every encoding."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medsam_lib.data.readers import read_image, read_mask, read_volume
from medsam_lib.fileio import MedSAMError


def _volume(shape=(4, 5, 6)):
    return np.arange(np.prod(shape), dtype=np.int16).reshape(shape)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_volumes_keep_axis_order_and_spacing(tmp_path, suffix):
    array = _volume()
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 2.5))  # SimpleITK order (x, y, z)
    image.SetOrigin((1.0, -2.0, 3.0))
    path = tmp_path / f"vol{suffix}"
    sitk.WriteImage(image, str(path))
    read = read_image(path)
    assert read.is_volume and read.array.shape == (4, 5, 6)  # (Z, Y, X)
    np.testing.assert_array_equal(read.array, array)
    np.testing.assert_allclose(read.spacing, (2.5, 0.8, 0.7))  # (Z, Y, X)
    np.testing.assert_allclose(read.origin, (1.0, -2.0, 3.0))


def test_nifti_written_by_nibabel_matches(tmp_path):
    import nibabel as nib

    data = np.random.default_rng(0).integers(0, 100, size=(6, 5, 4)).astype(np.int16)  # nibabel (x, y, z)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.6, 3.0, 1.0])), tmp_path / "n.nii.gz")
    read = read_image(tmp_path / "n.nii.gz")
    np.testing.assert_array_equal(read.array, data.transpose(2, 1, 0))
    np.testing.assert_allclose(read.spacing, (3.0, 0.6, 0.5))


def test_dicom_series_folder(shared_data):
    read = read_image(shared_data / "ct_dicom_liver_spine_heart" / "ct-3slice")
    assert read.array.shape == (3, 512, 512) and read.modality == "CT"
    np.testing.assert_allclose(read.spacing, (1.0, 0.810547, 0.810547), rtol=1e-5)
    label = read_mask(shared_data / "ct_dicom_liver_spine_heart" / "liver_seg.nrrd")
    np.testing.assert_allclose(label.origin, read.origin, atol=1e-3)


def test_four_d_needs_a_channel(tmp_path):
    import nibabel as nib

    data = np.stack([np.full((6, 5, 4), 10, np.int16), np.full((6, 5, 4), 20, np.int16)], axis=-1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "mp.nii.gz")
    with pytest.raises(MedSAMError, match="4D or multi-component.*channel"):
        read_volume(tmp_path / "mp.nii.gz")
    assert (read_volume(tmp_path / "mp.nii.gz", channel=1).array == 20).all()
    assert read_volume(tmp_path / "mp.nii.gz", channel=0).array.shape == (4, 5, 6)
    with pytest.raises(MedSAMError, match="channel 2 out of range"):
        read_volume(tmp_path / "mp.nii.gz", channel=2)


@pytest.mark.parametrize("mode,suffix", [("L", ".png"), ("I;16", ".png"), ("RGB", ".png"), ("RGBA", ".png"),
                                         ("P", ".png"), ("L", ".tif"), ("RGB", ".tiff"), ("L", ".gif"),
                                         ("RGB", ".jpg"), ("L", ".jpeg")])
def test_2d_images(tmp_path, mode, suffix):
    grey = (np.indices((20, 30)).sum(axis=0) * 4 % 250).astype(np.uint8)
    if mode == "I;16":
        img = Image.fromarray((grey.astype(np.uint16) * 200))
    elif mode in ("RGB", "RGBA"):
        img = Image.fromarray(np.stack([grey] * 3, -1)).convert(mode)
    elif mode == "P":
        img = Image.fromarray(np.stack([grey] * 3, -1)).convert("P")
    else:
        img = Image.fromarray(grey)
    path = tmp_path / f"img{suffix}"
    img.save(path)
    read = read_image(path)
    assert not read.is_volume and read.spacing == (1.0, 1.0)
    assert read.array.shape[:2] == (20, 30)
    assert read.array.ndim == 2 or read.array.shape[2] == 3  # alpha dropped, palette expanded
    if mode == "I;16":
        assert read.array.dtype == np.uint16 and read.array.max() > 255
    if suffix not in (".jpg", ".jpeg") and mode != "P":
        plane = read.array if read.array.ndim == 2 else read.array[..., 0]
        np.testing.assert_array_equal(plane.astype(np.int64) // (200 if mode == "I;16" else 1), grey)


def test_masks_in_every_encoding(tmp_path, shared_data):
    hippo = read_mask(shared_data / "mr_hippocampus_msd_2d" / "masks" / "100001_9.png", "rgb",
                      palette={1: (255, 0, 0), 2: (0, 255, 0)})
    assert set(np.unique(hippo.array)) == {0, 1, 2}  # interpolated edge colours land on a label or 0
    glands = read_mask(shared_data / "pathology_gland" / "masks" / "testA_25.jpg", "binary")
    assert set(np.unique(glands.array)) == {0, 1}
    busi = read_mask(shared_data / "us_breast_tumor" / "masks" / "malignant (1)_mask.png", "binary")  # 1-bit PNG
    assert busi.array.shape == (598, 449) and set(np.unique(busi.array)) == {0, 1}
    brats = read_mask(shared_data / "mr_brain_tumor_brats" / "brats_2013_pat0001_1" / "OTMultiClass.nii.gz")
    assert brats.array.dtype == np.uint8 and set(np.unique(brats.array)) == {0, 1, 2, 3, 4}  # float32 on disk

    palette_png = Image.fromarray(np.array([[0, 1], [2, 5]], np.uint8), mode="P")
    palette_png.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * 759)
    palette_png.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").array.tolist() == [[0, 1], [2, 5]]  # palette indices are the labels


def test_bad_masks_are_refused(tmp_path, shared_data):
    with pytest.raises(MedSAMError, match="JPEG mask cannot hold exact label values"):
        read_mask(shared_data / "xray_chest_lungs" / "masks" / "CHNCXR_0017_0.jpg", "label")
    with pytest.raises(MedSAMError, match="colour mask with encoding 'label'"):
        read_mask(shared_data / "mr_cardiac_acdc_2d" / "masks" / "10005.png", "label")
    with pytest.raises(MedSAMError, match="needs a palette"):
        read_mask(shared_data / "mr_cardiac_acdc_2d" / "masks" / "10005.png", "rgb")
    image = sitk.GetImageFromArray(np.full((2, 3, 3), 0.5, np.float32))
    sitk.WriteImage(image, str(tmp_path / "soft.nii.gz"))
    with pytest.raises(MedSAMError, match="non-integer values"):
        read_mask(tmp_path / "soft.nii.gz")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(MedSAMError, match="empty"):
        read_mask(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(MedSAMError, match="not a readable mask"):
        read_mask(tmp_path / "junk.png")
    with pytest.raises(MedSAMError, match="unknown mask encoding"):
        read_mask(tmp_path / "p.png", "onehot")


@pytest.mark.parametrize("name, ok", [("m.png", True), ("m.tif", True), ("m.nii.gz", True), ("m.nrrd", True),
                                      ("m.mha", True), ("m.jpg", False), ("m.webp", False), ("m.mhd", False),
                                      ("m.txt", False), ("m", False)])
def test_mask_outputs_are_lossless_single_files(tmp_path, name, ok):
    from medsam_lib.data.readers import check_mask_output, write_mask

    if ok:
        assert check_mask_output(tmp_path / name) == tmp_path / name
        write_mask(np.eye(8, dtype=bool), tmp_path / name)
        assert (read_mask(tmp_path / name, "binary").array == np.eye(8)).all()
    else:
        with pytest.raises(MedSAMError, match=name.replace(".", r"\.")):
            write_mask(np.eye(8, dtype=bool), tmp_path / name)
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_float_masks_with_nonfinite_values_are_refused(tmp_path, value):
    labels = np.zeros((2, 6, 6), np.float32)
    labels[1, 2, 3] = value
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp_path / "lab.nii.gz"))
    with pytest.raises(MedSAMError, match=r"lab\.nii\.gz: 1 voxel\(s\) are NaN or infinite, e\.g\. at array index \(1, 2, 3\)"):
        read_mask(tmp_path / "lab.nii.gz")
    Image.fromarray(labels[1]).save(tmp_path / "lab.tif")
    with pytest.raises(MedSAMError, match=r"lab\.tif: 1 voxel\(s\) are NaN or infinite"):
        read_mask(tmp_path / "lab.tif")
