"""benchmarks/challenge.py: the released LiteMedSAM 3D / 2D procedures and ours give the same masks, and each
path encodes as many slices as its algorithm implies (stock: every slice again for every box; ours: once).

A 3-slice crop of the TotalSegmentator CT (slices 17-19) with two labels of different extents: the right kidney
(label 2, on the crop's first two slices) and the liver (label 5, on all three). The liver's middle slice is 1,
so its walk goes up (1, 2) and down (0); the kidney's middle slice is 0, so slice 0 is visited by the kidney's
upward walk and by the liver's downward one: ours must encode it once and reuse it across the two sweeps.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import challenge  # noqa: E402

pytestmark = pytest.mark.shared

CT = "ct_abdomen_organs/example_ct_sm.nii.gz"
SEG = "ct_abdomen_organs/example_seg.nii.gz"
CROP = slice(17, 20)
LABELS = [2, 5]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@pytest.fixture(scope="module")
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(two_threads):
    return challenge.stock_model(), challenge.ours_predictor("auto")


def test_stock_and_ours_3d_agree_and_count_their_encodings(shared_data, models):
    from medsam_lib.data.readers import read_image, read_mask

    volume = read_image(shared_data / CT).array[CROP]
    labels = read_mask(shared_data / SEG).array[CROP]
    boxes, kept, notes = challenge.boxes_3d(labels, LABELS)
    assert kept == LABELS and not notes
    # the boxes, computed here from the label map: (x_min, y_min, z_min, x_max, y_max, z_max)
    for box, value in zip(boxes, LABELS):
        z, y, x = np.nonzero(labels == value)
        assert list(box) == [x.min(), y.min(), z.min(), x.max(), y.max(), z.max()]
    assert [(b[2], b[5]) for b in boxes] == [(0, 1), (0, 2)]
    imgs = challenge.challenge_uint8(volume, "CT")
    assert imgs.dtype == np.uint8 and imgs.shape == volume.shape
    # pre_CT_MR.py's CT preparation, stated here once more: window [-160, 240] HU, min-max, truncated to uint8
    clipped = np.clip(volume.astype(np.float64), -160, 240)
    np.testing.assert_array_equal(imgs, ((clipped - clipped.min()) / np.ptp(clipped) * 255).astype(np.uint8))

    stock_net, ours = models
    stock_segs, stock_n = challenge.stock_3d(stock_net, imgs, boxes)
    ours_segs, ours_n = challenge.ours_3d(ours, imgs, boxes)
    visited = [set(range(int(b[2]), int(b[5]) + 1)) for b in boxes]  # the released script: z_min..z_max
    assert stock_n == sum(len(v) for v in visited) == 5
    assert ours_n == len(set().union(*visited)) == 3
    assert stock_segs.shape == ours_segs.shape == imgs.shape
    for idx, value in enumerate(LABELS, start=1):
        stock_mask, ours_mask = stock_segs == idx, ours_segs == idx
        for z in sorted(visited[idx - 1]):  # every visited slice has a prediction, none outside the box's slices
            assert stock_mask[z].any(), f"label {value}: the stock path predicted nothing on slice {z}"
        outside = [z for z in range(len(imgs)) if z not in visited[idx - 1]]
        assert not stock_mask[outside].any() and not ours_mask[outside].any()
        assert _dice(stock_mask, ours_mask) >= 0.99, f"label {value}: stock and ours disagree"
        assert _dice(stock_mask, labels == value) > 0.5, f"label {value}: the stock path missed the organ"


def test_stock_and_ours_2d_agree(shared_data, models):
    case = challenge.load_case_2d(shared_data / challenge.DEFAULT_2D[0], shared_data / challenge.DEFAULT_2D[1])
    assert len(case.boxes) > 1 and case.imgs.dtype == np.uint8 and case.imgs.ndim == 3
    stock_net, ours = models
    stock_segs, stock_n = challenge.stock_2d(stock_net, case.imgs, case.boxes)
    ours_segs, ours_n = challenge.ours_2d(ours, case.imgs, case.boxes)
    assert stock_n == ours_n == 1
    for idx, truth in enumerate(case.targets, start=1):
        y, x = np.nonzero(truth)
        assert list(case.boxes[idx - 1]) == [x.min(), y.min(), x.max(), y.max()]
        assert (stock_segs == idx).any()
        assert _dice(stock_segs == idx, ours_segs == idx) >= 0.99
