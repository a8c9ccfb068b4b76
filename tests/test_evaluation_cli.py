"""``python -m medsam_lib evaluate``: a pair of masks, a curated store, and every bad input (exit 2)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medsam_lib.cli import main
from medsam_lib.evaluation import dice, nsd
from profile_helpers import profile_in


def disk(shape, centre, radius):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def write_png(path, mask):
    Image.fromarray(mask.astype(np.uint8)).save(path)
    return str(path)


def write_nifti(path, volume, spacing_xyz):
    image = sitk.GetImageFromArray(volume.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    sitk.WriteImage(image, str(path))
    return str(path)


def ball_pair():
    zz, yy, xx = np.ogrid[:12, :40, :40]
    gt = (zz - 6) ** 2 / 9 + (yy - 20) ** 2 / 100 + (xx - 20) ** 2 / 100 <= 1
    pred = (zz - 6) ** 2 / 9 + (yy - 21) ** 2 / 100 + (xx - 22) ** 2 / 90 <= 1
    return pred, gt


def run(capsys, *argv):
    code = main(["evaluate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_pair_2d_png(tmp_path, capsys):
    gt, pred = disk((64, 64), (32, 32), 15), disk((64, 64), (32, 34), 15)
    code, out, _ = run(capsys, "--pred", write_png(tmp_path / "p.png", pred), "--gt", write_png(tmp_path / "g.png", gt))
    assert code == 0
    result = json.loads(out)
    assert result["dsc"] == pytest.approx(dice(pred, gt))
    assert result["nsd"] == pytest.approx(nsd(pred, gt, (1.0, 1.0), 1.0))


def test_pair_3d_spacing_from_file_and_override_order(tmp_path, capsys):
    pred, gt = ball_pair()
    p = write_nifti(tmp_path / "p.nii.gz", pred, (0.8, 0.7, 3.0))
    g = write_nifti(tmp_path / "g.nii.gz", gt, (0.8, 0.7, 3.0))
    code, out, _ = run(capsys, "--pred", p, "--gt", g)
    assert code == 0
    result = json.loads(out)
    assert result["spacing_array_order"] == pytest.approx([3.0, 0.7, 0.8])  # NIfTI keeps float32
    assert result["nsd"] == pytest.approx(nsd(pred, gt, tuple(result["spacing_array_order"]), 1.0))
    assert result["nsd"] != pytest.approx(nsd(pred, gt, (0.8, 0.7, 3.0), 1.0))  # x, y, z read the wrong way
    code, out, _ = run(capsys, "--pred", p, "--gt", g, "--spacing", "1,2,0.5", "--tolerance-mm", "2")
    assert json.loads(out)["nsd"] == pytest.approx(nsd(pred, gt, (0.5, 2.0, 1.0), 2.0))


@pytest.mark.parametrize("problem", ["shape", "spacing_files", "binary", "nan", "zero", "negative", "tolerance",
                                     "4d", "missing", "count"])
def test_pair_bad_inputs_exit_2_naming_the_file(tmp_path, capsys, problem):
    pred, gt = ball_pair()
    g = write_nifti(tmp_path / "g.nii.gz", gt, (0.8, 0.7, 3.0))
    p = write_nifti(tmp_path / "p.nii.gz", pred, (0.8, 0.7, 3.0))
    extra = []
    if problem == "shape":
        p = write_nifti(tmp_path / "p.nii.gz", pred[:, :30], (0.8, 0.7, 3.0))
    elif problem == "spacing_files":
        p = write_nifti(tmp_path / "p.nii.gz", pred, (0.8, 0.7, 2.0))
    elif problem == "binary":
        labels = pred.astype(np.uint8) * 3
        labels.flat[0] = 1  # {0, 1, 3}: a label map ({0, 3} alone is binary, issue 16)
        p = write_nifti(tmp_path / "p.nii.gz", labels, (0.8, 0.7, 3.0))
    elif problem in ("nan", "zero", "negative"):
        extra = ["--spacing", {"nan": "nan,1,1", "zero": "0,1,1", "negative": "1,-1,1"}[problem]]
    elif problem == "tolerance":
        extra = ["--tolerance-mm", "0"]
    elif problem == "4d":
        four = sitk.JoinSeries([sitk.GetImageFromArray(gt.astype(np.uint8))] * 2)
        p = str(tmp_path / "p4.nii.gz")
        sitk.WriteImage(four, p)
    elif problem == "missing":
        p = str(tmp_path / "absent.nii.gz")
    elif problem == "count":
        extra = ["--spacing", "1,1"]
    with pytest.raises(SystemExit) if problem in ("nan", "zero", "negative") else _no_exit():
        code, out, err = run(capsys, "--pred", p, "--gt", g, *extra)
    if problem in ("nan", "zero", "negative"):
        err = capsys.readouterr().err
        assert "--spacing" in err
        return
    assert code == 2, err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    named = {"tolerance": "tolerance", "count": "--spacing"}.get(problem, "p")
    assert named in err
    if problem not in ("tolerance", "count"):
        assert "p.nii.gz" in err or "p4.nii.gz" in err or "absent.nii.gz" in err


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """The demo phantoms curated, cut down to the chest X-ray (2 targets on one 2D image) as the test
    split and the MR heart's first 3 slices as train."""
    from medsam_lib.data.curate import curate_profile
    from medsam_lib.data.store import read_index
    from medsam_lib.data.store_commit import write_index

    root = tmp_path_factory.mktemp("eval")
    store = curate_profile(profile_in(root))
    index = read_index(store.path / "index.csv")
    first = index.groupby("dataset")["volume"].transform("min")
    index = index[index["volume"] == first]  # one volume per data set
    keep = index[(index["dataset"] == "synthetic_xray_chest")
                 | ((index["dataset"] == "synthetic_mr_heart") & (index["slice"] < 3)
                    & (index["target"] == "left ventricle"))].copy()
    keep.loc[keep["dataset"] == "synthetic_xray_chest", "split"] = "test"
    write_index(store.path, keep)
    return store.path


def test_curated_store_metrics_equal_a_direct_computation(tiny_store, tmp_path, capsys, lite_model):
    import surface_distance as sd

    from medsam_lib.data.store import CuratedDataset
    from medsam_lib.models.predictor import BoxPredictor

    out = tmp_path / "eval"
    code, stdout, err = run(capsys, "--curated", str(tiny_store), "--model", "litemedsam", "--out", str(out),
                            "--device", "cpu")
    assert code == 0, err
    import pandas as pd

    frame = pd.read_csv(out / "metrics.csv")
    assert len(frame) == 2 and set(frame["dimensionality"]) == {"2D"}
    for col in ("dataset", "case", "target", "task", "modality", "dimensionality", "n_slices", "dsc", "nsd",
                "protocol", "nsd_spacing", "slices", "nsd_2d"):
        assert col in frame
    record = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert record["model"] == "litemedsam" and record["options"]["split"] == "test"
    ds = CuratedDataset(tiny_store)
    predictor = BoxPredictor(lite_model)
    for _, row in ds.split("test").iterrows():
        image, gt = ds.load(row)
        predictor.set_image(image)
        pred = predictor.predict([[row.x0, row.y0, row.x1, row.y1]]).masks[0]
        got = frame[frame["target"] == row["target"]].iloc[0]
        known = str(row["spacing_known"]) == "True"  # no spacing in the file: one curated pixel
        spacing = (row["curated_spacing_y"], row["curated_spacing_x"]) if known else (1.0, 1.0)
        assert got["spacing_y"] == pytest.approx(spacing[0])
        expected = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(gt, pred, spacing), 1.0)
        assert got["dsc"] == pytest.approx(2 * (pred & gt).sum() / (pred.sum() + gt.sum()), abs=1e-9)
        assert got["nsd"] == pytest.approx(expected, abs=1e-6)


def test_curated_refusals(tiny_store, tmp_path, capsys):
    # a split with no targets
    code, _, err = run(capsys, "--curated", str(tiny_store), "--model", "litemedsam", "--split", "test",
                       "--out", str(tmp_path / "a"), "--tolerance-mm", "-1")
    assert code == 2 and "tolerance" in err
    empty = tmp_path / "store"
    shutil.copytree(tiny_store, empty)
    from medsam_lib.data.store import read_index
    from medsam_lib.data.store_commit import write_index

    index = read_index(empty / "index.csv")
    index["split"] = "train"
    write_index(empty, index)
    code, _, err = run(capsys, "--curated", str(empty), "--model", "litemedsam", "--out", str(tmp_path / "b"))
    assert code == 2 and "no targets in split 'test'" in err and str(empty) in err
    # a folder holding another model's results
    other = tmp_path / "other"
    other.mkdir()
    (other / "evaluation.json").write_text(json.dumps({"model": "medsam_vit_b", "checkpoint_sha256": "0" * 64}))
    (other / "metrics.csv").write_text("dataset\nx\n")
    code, _, err = run(capsys, "--curated", str(tiny_store), "--model", "litemedsam", "--out", str(other))
    assert code == 2 and "medsam_vit_b" in err and "--overwrite" in err
    assert (other / "metrics.csv").read_text(encoding="utf-8") == "dataset\nx\n"  # nothing lost
    code, _, err = run(capsys, "--curated", str(tiny_store), "--model", "litemedsam", "--out", str(tmp_path / "c"),
                       "--slices", "volume")
    assert code == 2 and "--source-root" in err


def test_slices_volume_reads_the_source_and_counts_missing_slices(tiny_store):
    """``slices="volume"``: the source mask resized as curation does equals the curated masks on
    kept slices; slices the store does not hold (here: cut from the index) count as misses."""
    from medsam_lib.data.store import CuratedDataset
    from medsam_lib.evaluation.options import EvalOptions
    from medsam_lib.evaluation.run import PredictedTarget, score_target
    from medsam_lib.evaluation.sources import source_target_volume

    ds = CuratedDataset(tiny_store)
    rows = ds.index[ds.index["dataset"] == "synthetic_mr_heart"].sort_values("slice")
    root = tiny_store.parent / "data" / "synthetic"
    full = source_target_volume(ds, rows.iloc[0], root)
    assert full.shape[0] == int(rows.iloc[0]["n_slices"]) > len(rows)
    gt = np.stack([ds.load_mask(r) for _, r in rows.iterrows()])
    assert np.array_equal(full[:len(rows)], gt)
    meta = {k: rows.iloc[0][k] for k in ("dataset", "case", "volume", "image_key", "target", "instance", "task",
                                         "modality", "stand_in", "synthetic", "n_slices", "split", "spacing_z",
                                         "curated_spacing_y", "curated_spacing_x", "spacing_known")}
    meta.update(pixels=int(gt.sum()), model="perfect")
    target = PredictedTarget(meta=meta, gt=gt, pred=gt.copy(), z0=0, row=rows.iloc[0].to_dict())
    kept = score_target(target, EvalOptions(split="all"))
    assert kept["dsc"] == 1.0 and kept["nsd"] == 1.0 and kept["n_slices"] == len(rows)
    whole = score_target(target, EvalOptions(split="all", slices="volume"), ds, root)
    expected = 2 * gt.sum() / (gt.sum() + full.sum())
    assert whole["dsc"] == pytest.approx(expected) and whole["dsc"] < 1
    assert whole["n_slices_volume"] == int(full.any(axis=(1, 2)).sum())
    unit = score_target(target, EvalOptions(split="all", nsd_spacing="unit"))
    assert unit["spacing_z"] == 1.0 and unit["spacing_y"] == 1.0
