"""DSC and NSD against DeepMind's surface-distance, MONAI (use_subvoxels=True) and hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medsam_lib.evaluation import dice, nsd, spacing_from_xyz, surface_distances
from medsam_lib.evaluation import surface
from medsam_lib.fileio import MedSAMError

sd = pytest.importorskip("surface_distance")


def deepmind_nsd(pred, gt, spacing, tol):
    distances = sd.compute_surface_distances(gt.astype(bool), pred.astype(bool), tuple(spacing))
    return sd.compute_surface_dice_at_tolerance(distances, tol)


def monai_nsd(pred, gt, spacing, tol):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")

    def t(m):
        return torch.from_numpy(np.asarray(m, dtype=np.float32)[None, None])

    value = monai_metrics.compute_surface_dice(t(pred), t(gt), [tol], include_background=True,
                                               spacing=tuple(spacing), use_subvoxels=True)
    return float(value)


def blobs(rng, shape, sigma=2.0):
    return (ndimage.gaussian_filter(rng.random(shape), sigma) > 0.5,
            ndimage.gaussian_filter(rng.random(shape), sigma) > 0.5)


def disk(shape, centre, radius):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


CASES = [((48, 57), (1.0, 1.0)), ((40, 50), (0.7, 1.3)), ((30, 40, 35), (2.5, 0.8, 0.9)),
         ((24, 30, 28), (1.0, 1.0, 1.0)), ((20, 33, 31), (0.3, 0.45, 0.2))]


@pytest.mark.parametrize("shape,spacing", CASES)
@pytest.mark.parametrize("tol", [0.5, 1.0, 2.7])
def test_nsd_equals_deepmind_on_random_masks(shape, spacing, tol):
    rng = np.random.default_rng(hash((shape, spacing)) % 2 ** 32)
    for _ in range(2):
        pred, gt = blobs(rng, shape)
        assert nsd(pred, gt, spacing, tol) == pytest.approx(deepmind_nsd(pred, gt, spacing, tol), abs=1e-6)


@pytest.mark.parametrize("shape,spacing", CASES[1:3])
def test_nsd_equals_monai_with_subvoxels(shape, spacing):
    rng = np.random.default_rng(7)
    pred, gt = blobs(rng, shape)
    assert nsd(pred, gt, spacing, 1.0) == pytest.approx(monai_nsd(pred, gt, spacing, 1.0), abs=1e-6)


def test_monai_default_edges_disagree_subvoxels_agree():
    """MONAI's default counts edge voxels (not the paper's definition); use_subvoxels=True agrees."""
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    gt = disk((64, 64), (32, 32), 15)
    pred = np.roll(gt, 2, axis=1)
    t = lambda m: torch.from_numpy(m.astype(np.float32)[None, None])  # noqa: E731
    default = float(monai_metrics.compute_surface_dice(t(pred), t(gt), [1.0], include_background=True))
    ours = nsd(pred, gt, (1.0, 1.0), 1.0)
    assert ours == pytest.approx(monai_nsd(pred, gt, (1, 1), 1.0), abs=1e-6)
    assert abs(default - ours) > 0.05


def test_tiled_edt_path_equals_offset_path(monkeypatch):
    """The large-tolerance path (tiled EDT) gives the same numbers as the offset-ball path."""
    rng = np.random.default_rng(3)
    pred, gt = blobs(rng, (40, 150, 140), sigma=3.0)
    spacing = (2.0, 0.9, 0.8)
    for tol in (1.0, 2.0):
        fast = nsd(pred, gt, spacing, tol)
        monkeypatch.setattr(surface, "MAX_BALL_OFFSETS", 0)
        tiled = nsd(pred, gt, spacing, tol)
        monkeypatch.undo()
        assert tiled == pytest.approx(fast, abs=1e-12)
        assert fast == pytest.approx(deepmind_nsd(pred, gt, spacing, tol), abs=1e-6)


def test_hand_computed_tiny_masks():
    # One pixel: its contour is a diamond through the 4 edge midpoints, length 4 * sqrt(2)/2.
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    d = surface_distances(one, one)
    assert d["areas_gt"].sum() == pytest.approx(2 * math.sqrt(2))
    # One voxel: an octahedron of 8 triangles of side sqrt(2)/2: area 8 * sqrt(3)/8 = sqrt(3).
    cube = np.zeros((3, 3, 3), bool)
    cube[1, 1, 1] = True
    assert surface_distances(cube, cube)["areas_gt"].sum() == pytest.approx(math.sqrt(3))
    # A 1 x 3 bar with spacing (row 2 mm, col 1 mm): 4 diagonal cuts of 0.5*hypot(2, 1) + 2 * 2 cols of 1 mm.
    bar = np.zeros((3, 5), bool)
    bar[1, 1:4] = True
    expected = 4 * 0.5 * math.hypot(2, 1) + 2 * 2 * 1.0
    assert surface_distances(bar, bar, (2.0, 1.0))["areas_gt"].sum() == pytest.approx(expected)
    # Bar shifted one column: the 2 end cuts of each bar (4 elements) are 1 mm away; the long sides
    # (distance 0 or 1 mm) touch. At tolerance 0.5 mm only the shared elements count.
    shifted = np.roll(bar, 1, axis=1)
    lengths = surface.contour_length_table((2.0, 1.0))
    assert lengths[0b0011] == 1.0 and lengths[0b0101] == 2.0 and lengths[0b0110] == pytest.approx(math.sqrt(5))
    assert nsd(shifted, bar, (2.0, 1.0), 1.0) == pytest.approx(1.0)
    assert nsd(shifted, bar, (2.0, 1.0), 0.5) == pytest.approx(deepmind_nsd(shifted, bar, (2.0, 1.0), 0.5))
    assert 0 < nsd(shifted, bar, (2.0, 1.0), 0.5) < 1
    # Dice by hand: 3 + 3 pixels, 2 shared.
    assert dice(shifted, bar) == pytest.approx(2 * 2 / 6)


def test_empty_masks_conventions():
    empty = np.zeros((10, 10), bool)
    full = np.zeros((10, 10), bool)
    full[3:6, 3:6] = True
    assert dice(empty, empty) == 1.0 and nsd(empty, empty) == 1.0
    assert dice(full, empty) == 0.0 and nsd(full, empty) == 0.0
    assert dice(empty, full) == 0.0 and nsd(empty, full) == 0.0
    empty3 = np.zeros((4, 10, 10), bool)
    assert nsd(empty3, empty3, (3, 1, 1)) == 1.0


def test_unit_axis_variant_measures_area_not_boundary():
    """Concentric disks r=20 and r=25 (5 px apart): no boundary within 1 px, so the true 2D NSD is 0;
    the released LiteMedSAM evaluation's unit-axis slab counts the overlapping faces."""
    outer, inner = disk((80, 80), (40, 40), 25), disk((80, 80), (40, 40), 20)
    true_2d = nsd(inner, outer, (1.0, 1.0), 1.0)
    unit_axis = nsd(inner, outer, (1.0, 1.0), 1.0, nsd_2d="unit_axis")
    assert true_2d == pytest.approx(0.0)
    assert unit_axis == pytest.approx(0.836, abs=0.01)
    assert unit_axis == pytest.approx(deepmind_nsd(inner[None], outer[None], (1, 1, 1), 1.0), abs=1e-6)


def test_spacing_order_matters_and_xyz_helper():
    rng = np.random.default_rng(11)
    pred, gt = blobs(rng, (20, 40, 40))
    zyx = spacing_from_xyz((0.8, 0.8, 3.0))
    assert zyx == (3.0, 0.8, 0.8)
    assert nsd(pred, gt, zyx) != pytest.approx(nsd(pred, gt, (0.8, 0.8, 3.0)), abs=1e-3)


@pytest.mark.parametrize("spacing", [(float("nan"), 1.0), (0.0, 1.0), (-1.0, 1.0), (1.0,)])
def test_bad_spacing_refused(spacing):
    m = disk((20, 20), (10, 10), 5)
    with pytest.raises(MedSAMError, match="spacing"):
        nsd(m, m, spacing)


def test_bad_inputs_refused():
    m = disk((20, 20), (10, 10), 5)
    with pytest.raises(MedSAMError, match="tolerance"):
        nsd(m, m, tolerance_mm=0)
    with pytest.raises(MedSAMError, match="shape"):
        nsd(m, m[:10])
    three = m.astype(np.uint8) * 2
    three[0, 0] = 1  # {0, 1, 2}: a label map ({0, 2} alone counts as binary: 0 and one value, issue 16)
    with pytest.raises(MedSAMError, match="not binary"):
        nsd(three, m)
    with pytest.raises(MedSAMError, match="4D"):
        nsd(np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)))


@pytest.mark.shared
def test_real_masks_equal_deepmind_and_monai(shared_data):
    """Real ground truths (3D anisotropic CT/MR, 2D X-ray), each scored against an eroded/shifted copy."""
    from medsam_lib.data.readers import read_mask

    paths = [(shared_data / "ct_soft_tissue_sarcoma/STS_002/CT_mask.nii.gz", "label"),
             (shared_data / "mr_brain_tumor_pyradiomics", None),
             (shared_data / "xray_chest_lungs/masks/CHNCXR_0017_0.jpg", "binary")]
    checked = 0
    for path, encoding in paths:
        if path.is_dir():
            found = sorted(path.rglob("*label*.nrrd"))
            if not found:
                continue
            path, encoding = found[0], "label"
        mask = read_mask(path, encoding)
        gt = mask.array > 0
        spacing = tuple(mask.spacing)
        for pred in (ndimage.binary_erosion(gt, iterations=1), np.roll(gt, 2, axis=-1)):
            ours = nsd(pred, gt, spacing, 1.0)
            assert ours == pytest.approx(deepmind_nsd(pred, gt, spacing, 1.0), abs=1e-6), path
            assert ours == pytest.approx(monai_nsd(pred, gt, spacing, 1.0), abs=1e-6), path
            assert dice(pred, gt) == pytest.approx(2 * (pred & gt).sum() / (pred.sum() + gt.sum()))
        checked += 1
    assert checked >= 2
