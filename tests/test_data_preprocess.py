"""Preprocessing presets: hand-computed windows, percentiles, resizing, small-object rules."""
from __future__ import annotations

import numpy as np
import pytest

from medsam_lib import paper
from medsam_lib.data import preprocess
from medsam_lib.data.preprocess import (PRESET_SPECS, Window, apply_window, intensity_window, normalize_intensity,
                                        remove_small_objects, resize_image, resize_mask)
from medsam_lib.fileio import MedSAMError


def test_paper_ct_window_hand_computed():
    hu = np.array([[[-1000, -500, 0], [250, 1000, 2000]]], dtype=np.int16)  # (Z=1, Y=2, X=3)
    out = normalize_intensity(hu, "CT", "paper")
    # clip to [-500, 1000], then (v + 500) / 1500 * 255
    expected = np.array([[[0.0, 0.0, 85.0], [127.5, 255.0, 255.0]]], dtype=np.float32)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 255.0
    assert intensity_window(hu, "CT", "paper") == Window(-500.0, 1000.0)


def test_official_code_ct_window_hand_computed():
    hu = np.array([-1000, -160, 0, 40, 240, 500], dtype=np.float32)
    out = normalize_intensity(hu, "ct", "official_code")  # modality names are case-insensitive
    # level 40 / width 400 -> [-160, 240]; (v + 160) / 400 * 255
    np.testing.assert_allclose(out, [0.0, 0.0, 102.0, 127.5, 255.0, 255.0], atol=1e-4)


def test_percentile_presets_match_numpy_and_keep_background():
    rng = np.random.default_rng(0)
    mr = rng.gamma(2.0, 100.0, size=(4, 32, 32)).astype(np.float32)
    mr[:, :8] = 0.0  # background
    low, high = np.percentile(mr, paper.PERCENTILES)
    paper_out = normalize_intensity(mr, "MR", "paper")
    np.testing.assert_allclose(paper_out, np.clip((mr - low) / (high - low) * 255, 0, 255), atol=1e-3)
    fg = mr[mr > 0]
    f_low, f_high = np.percentile(fg, paper.PERCENTILES)
    official = normalize_intensity(mr, "MR", "official_code")
    assert (official[mr == 0] == 0).all()  # background kept at 0
    inside = mr > 0
    np.testing.assert_allclose(official[inside], np.clip((mr[inside] - f_low) / (f_high - f_low) * 255, 0, 255),
                               atol=1e-3)
    assert intensity_window(mr, "MR", "official_code").keep_zero


def test_window_per_slice_equals_whole_volume():
    """Curation windows a volume once and scales slice by slice; that must equal scaling the volume."""
    rng = np.random.default_rng(1)
    vol = rng.normal(300, 80, size=(5, 16, 16)).astype(np.float32)
    window = intensity_window(vol, "PET", "paper")
    stacked = np.stack([apply_window(vol[z], window) for z in range(5)])
    np.testing.assert_array_equal(stacked, normalize_intensity(vol, "PET", "paper"))


def test_degenerate_and_bad_inputs():
    assert (normalize_intensity(np.full((4, 4), 7.0), "MR") == 0).all()
    assert (normalize_intensity(np.zeros((4, 4)), "MR", "official_code") == 0).all()
    with pytest.raises(MedSAMError, match="NaN"):
        normalize_intensity(np.array([1.0, np.nan]), "MR", source="case7")
    with pytest.raises(MedSAMError, match="unknown preprocessing preset"):
        normalize_intensity(np.ones(3), "CT", "v2")


def test_resize_image_antialiases_and_keeps_constants():
    checker = (np.indices((512, 512)).sum(axis=0) % 2 * 255).astype(np.float32)
    small = resize_image(checker, 256)
    assert small.shape == (256, 256) and small.dtype == np.uint8
    # antialiased: a 1-pixel checkerboard averages to mid-grey (nearest neighbour would give 0 or 255)
    assert abs(float(small[8:-8, 8:-8].mean()) - 127.5) < 2 and small[8:-8, 8:-8].std() < 3
    rgb = np.zeros((300, 200, 3), np.float32)
    rgb[..., 1] = 200.0
    out = resize_image(rgb)
    assert out.shape == (256, 256, 3)
    assert (out[..., 1] == 200).all() and (out[..., 0] == 0).all()


def test_resize_mask_is_nearest():
    labels = np.zeros((101, 122), np.uint8)
    labels[10:40, 20:70] = 3
    labels[60:90, 80:120] = 7
    out = resize_mask(labels)
    assert out.shape == (256, 256) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 3, 7}  # no interpolated label values
    assert resize_mask(labels == 3).dtype == bool


def test_remove_small_objects_follows_the_released_code():
    labels = np.zeros((10, 64, 64), np.uint8)
    labels[0:10, 0:10, 0:10] = 1  # 1000 voxels: kept
    labels[0:9, 20:31, 20:30] = 2  # 990 voxels: removed in 3D
    labels[5, 50:60, 50:60] = 3  # 100 pixels in one slice, 100 voxels: removed (3D rule)
    out = remove_small_objects(labels, "official_code")
    assert (out == 1).sum() == 1000 and (out == 2).sum() == 0 and (out == 3).sum() == 0
    assert remove_small_objects(labels, "paper") is labels  # the paper's rule acts at 256 x 256 instead
    big = np.zeros((4, 64, 64), np.uint8)
    big[0:3, 0:40, 0:40] = 1  # 4800 voxels
    big[3, 10:15, 10:15] = 1  # the same 3D object's 25-pixel tip on slice 3: survives 3D, not 2D
    out = remove_small_objects(big, "official_code")
    assert out[3].sum() == 0 and out[0:3, 0:40, 0:40].all()


def test_presets_take_their_numbers_from_paper_py():
    assert PRESET_SPECS["paper"].min_target_pixels == paper.MIN_TARGET_PIXELS == 100
    assert PRESET_SPECS["official_code"].min_object_voxels_3d == paper.OFFICIAL_CODE_MIN_OBJECT_VOXELS_3D
    assert preprocess.ct_window("official_code") == (-160.0, 240.0)
    assert preprocess.PRESETS == ("paper", "official_code")
