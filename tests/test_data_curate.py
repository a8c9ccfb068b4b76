"""Curation: the real cases of ../shared/data, the paper's rules, splits, resumability and bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsam_lib.data import curate as curation
from medsam_lib.data.curate import CuratedDataset, curate
from medsam_lib.data.splits import split_cases
from medsam_lib.data.manifests import load_manifest, manifest_from_dict
from medsam_lib.data.preprocess import resize_mask
from medsam_lib.data.readers import read_image, read_mask
from medsam_lib.fileio import MedSAMError


@pytest.fixture(scope="module")
def shared_store(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("curated_shared")
    report = curate("shared_data", out, preset="paper", seed=0, progress=False)
    assert not report.failed
    return out, report


# --- the real cases ------------------------------------------------------------------------------

@pytest.mark.slow
def test_every_case_of_shared_data_curates(shared_store, shared_data):
    out, report = shared_store
    manifest = load_manifest("shared_data")
    store = CuratedDataset(out)
    index = store.index
    for ds in manifest.datasets:
        for case in ds.cases:
            assert f"{ds.name}/{case.volume}" in report.curated
            rows = index[(index["dataset"] == ds.name) & (index["volume"] == case.volume)]
            assert len(rows) > 0, f"{ds.name}/{case.volume} gave no targets"
    image, mask = store.load(0)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert mask.shape == (256, 256) and mask.dtype == bool


@pytest.mark.slow
def test_spacing_survives_for_3d_cases(shared_store, shared_data):
    out, _ = shared_store
    index = CuratedDataset(out).index
    manifest = load_manifest("shared_data")
    for ds in manifest.datasets:
        if ds.dimensionality != "3D":
            continue
        for case in ds.cases:
            key = ds.images[0].key
            source = read_image(shared_data / case.images[key])
            rows = index[(index["dataset"] == ds.name) & (index["volume"] == case.volume)].iloc[0]
            np.testing.assert_allclose((rows["spacing_z"], rows["spacing_y"], rows["spacing_x"]), source.spacing,
                                       rtol=1e-6)
            assert (rows["height"], rows["width"]) == source.array.shape[1:3]
            assert rows["n_slices"] == source.array.shape[0]
            assert rows["curated_spacing_y"] == pytest.approx(source.spacing[1] * source.array.shape[1] / 256)


@pytest.mark.slow
def test_no_case_in_both_splits_and_small_targets_gone(shared_store):
    out, _ = shared_store
    store = CuratedDataset(out)
    index = store.index
    assert (index.groupby(["dataset", "case"])["split"].nunique() == 1).all()
    per_dataset = index.groupby("dataset").agg(cases=("case", "nunique"), splits=("split", "nunique"))
    assert (per_dataset.loc[per_dataset["cases"] >= 2, "splits"] == 2).all()  # >= 2 cases: both splits used
    assert index["pixels"].min() >= 100  # paper 3.2: targets under 100 pixels at 256 x 256 dropped
    for _, row in index.sample(200, random_state=0).iterrows():
        mask = store.load_mask(row)
        assert int(mask.sum()) == row["pixels"]
        rows, cols = np.nonzero(mask)
        assert (cols.min(), rows.min(), cols.max(), rows.max()) == (row["x0"], row["y0"], row["x1"], row["y1"])


@pytest.mark.slow
def test_totalsegmentator_ct_gives_one_binary_target_per_named_organ(shared_store, shared_data):
    out, _ = shared_store
    store = CuratedDataset(out)
    rows = store.index[store.index["dataset"] == "ct_abdomen_organs"]
    labels = read_mask(shared_data / "ct_abdomen_organs" / "example_seg.nii.gz").array
    targets = load_manifest("shared_data").dataset("ct_abdomen_organs").targets
    assert len(targets) == 41 and {v for t in targets for v in t.labels} == set(np.unique(labels)) - {0}
    for target in targets:
        (value,) = target.labels
        expected = {}
        for z in range(labels.shape[0]):
            small = resize_mask(labels[z] == value)
            if small.sum() >= 100:
                expected[z] = small
        got = rows[rows["target"] == target.name]
        assert set(got["slice"]) == set(expected), target.name
        assert (got["labels"] == str(value)).all()
        for _, row in got.iterrows():
            np.testing.assert_array_equal(store.load_mask(row), expected[row["slice"]])
    assert {"liver", "spleen", "pancreas", "gallbladder", "stomach", "aorta"} <= set(rows["target"])
    assert rows.loc[rows["target"] == "liver", "task"].eq("Liver (CT)").all()


@pytest.mark.slow
def test_rerun_skips_everything_and_keeps_the_index(shared_store):
    out, _ = shared_store
    before = (out / "index.csv").read_bytes()
    report = curate("shared_data", out, preset="paper", seed=0, progress=False)
    assert report.curated == [] and len(report.skipped) == 60
    assert (out / "index.csv").read_bytes() == before
    with pytest.raises(MedSAMError, match="curated with preset 'paper'"):
        curate("shared_data", out, preset="official_code", progress=False)


# --- splits ---------------------------------------------------------------------------------------

def test_split_by_case_is_seeded_and_80_20():
    ids = [f"c{i:02d}" for i in range(50)]
    split = split_cases(ids, seed=0, dataset="d")
    assert sum(v == "test" for v in split.values()) == 10
    assert split == split_cases(list(reversed(ids)), seed=0, dataset="d")  # order does not matter
    assert split != split_cases(ids, seed=1, dataset="d")
    assert split != split_cases(ids, seed=0, dataset="other")  # each data set its own permutation
    assert sorted(split_cases(["a", "b"], 0, "d").values()) == ["test", "train"]
    assert split_cases(["a"], 0, "d") == {"a": "train"}
    assert sum(v == "test" for v in split_cases([str(i) for i in range(10)], 3, "d").values()) == 2


# --- small hand-made cases ------------------------------------------------------------------------

def _write_volume(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                  direction=None) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


def _ct_case(root: Path, name: str, size=64, slices=6, tumour=True):
    z, y, x = np.mgrid[:slices, :size, :size]
    hu = np.where((y - 32) ** 2 + (x - 32) ** 2 < 20 ** 2, 60, -1000).astype(np.int16)
    labels = np.zeros(hu.shape, np.uint8)
    labels[(y - 32) ** 2 + (x - 32) ** 2 < 20 ** 2] = 1
    if tumour:
        labels[2:4, 28:36, 28:36] = 2
    _write_volume(root / f"{name}.nii.gz", hu)
    _write_volume(root / f"{name}_seg.nii.gz", labels)


def _manifest(root: Path, cases, targets=None, modality="CT", tmp_name="m") -> dict:
    return {
        "schema_version": 1, "name": tmp_name, "description": "test", "data_root": {"kind": "argument"},
        "obtain": {"method": "local", "source_url": "test"},
        "datasets": [{
            "name": "toy", "title": "toy", "modality": modality, "dimensionality": "3D", "citation": "none",
            "license": {"name": "none", "terms": "test data"},
            "images": [{"key": "img", "modality": modality}], "masks": [{"key": "label", "encoding": "label"}],
            "targets": targets or [{"name": "organ", "labels": [1, 2]}, {"name": "tumour", "labels": [2], "optional": True}],
            "cases": [{"id": c, "images": {"img": f"{c}.nii.gz"}, "masks": {"label": f"{c}_seg.nii.gz"}} for c in cases]}]}


def _files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in (out / "cases").rglob("*") if p.is_file()}


def test_ct_preset_output_range_and_clipping_points(tmp_path):
    """A 256 x 256 CT volume (no resampling) with known HU: curated pixels are the hand-computed values."""
    hu_values = [-1000, -500, 0, 250, 1000, 1500]
    volume = np.zeros((2, 256, 256), np.int16)
    for i, v in enumerate(hu_values):
        volume[:, :, i * 40:(i + 1) * 40] = v
    labels = np.zeros_like(volume, dtype=np.uint8)
    labels[:, 100:150, 100:150] = 1
    _write_volume(tmp_path / "ct.nii.gz", volume)
    _write_volume(tmp_path / "ct_seg.nii.gz", labels)
    manifest = manifest_from_dict(_manifest(tmp_path, ["ct"], [{"name": "box", "labels": [1]}]))
    for preset, expected in (("paper", [0, 0, 85, 128, 255, 255]),  # (v + 500) / 1500 * 255, rounded
                             ("official_code", [0, 0, 102, 255, 255, 255])):  # (v + 160) / 400 * 255
        out = tmp_path / preset
        curate(manifest, out, preset=preset, root=tmp_path, progress=False)
        image, mask = CuratedDataset(out).load(0)
        assert image.min() == 0 and image.max() == 255
        assert [int(image[128, i * 40 + 20, 0]) for i in range(6)] == expected
        assert mask.sum() == 2500


def test_official_code_preset_removes_small_3d_objects(tmp_path):
    _ct_case(tmp_path, "a")  # tumour: 2 x 8 x 8 = 128 voxels, each slice 64 px -> 256 px at 256 x 256
    manifest = manifest_from_dict(_manifest(tmp_path, ["a"]))
    paper_rows = curate(manifest, tmp_path / "p", root=tmp_path, progress=False).rows
    official = curate(manifest, tmp_path / "o", preset="official_code", root=tmp_path, progress=False)
    paper_index = CuratedDataset(tmp_path / "p").index
    official_index = CuratedDataset(tmp_path / "o").index
    assert set(paper_index["target"]) == {"organ", "tumour"} and paper_rows == 6 + 2
    assert set(official_index["target"]) == {"organ"} and official.rows == 6


def test_instance_targets_split_connected_objects(tmp_path):
    _ct_case(tmp_path, "a", tumour=False)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a_seg.nii.gz")))
    labels[1:4, 20:28, 20:28] = 2
    labels[1:4, 40:48, 40:48] = 2
    _write_volume(tmp_path / "a_seg.nii.gz", labels)
    targets = [{"name": "tumour", "labels": [2], "instance": True}]
    curate(manifest_from_dict(_manifest(tmp_path, ["a"], targets)), tmp_path / "out", root=tmp_path, progress=False)
    index = CuratedDataset(tmp_path / "out").index
    assert sorted(index.groupby("instance")["slice"].apply(list).to_dict().items()) == [(1, [1, 2, 3]), (2, [1, 2, 3])]


@pytest.mark.parametrize("change,message", [
    ("shape", "shape"), ("spacing", "spacing"), ("origin", "origin"), ("direction", "direction")])
def test_image_and_mask_must_line_up(tmp_path, change, message):
    _ct_case(tmp_path, "a")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a_seg.nii.gz")))
    kwargs = {}
    if change == "shape":
        labels = labels[:, :, :60]
    elif change == "spacing":
        kwargs["spacing"] = (1.0, 1.0, 2.5)
    elif change == "origin":
        kwargs["origin"] = (0.0, 5.0, 0.0)
    else:
        kwargs["direction"] = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    _write_volume(tmp_path / "a_seg.nii.gz", labels, **kwargs)
    with pytest.raises(MedSAMError, match=f"toy/a: image .* and mask .* do not line up: {message}"):
        curate(manifest_from_dict(_manifest(tmp_path, ["a"])), tmp_path / "out", root=tmp_path, progress=False)
    assert _files(tmp_path / "out") == set()


def test_four_d_volume_and_missing_label_are_clear_errors(tmp_path):
    import nibabel as nib

    _ct_case(tmp_path, "a")
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 6, 2), np.int16), np.eye(4)), tmp_path / "b.nii.gz")
    _write_volume(tmp_path / "b_seg.nii.gz", np.ones((6, 64, 64), np.uint8))
    with pytest.raises(MedSAMError, match="b.nii.gz: 4D or multi-component volume"):
        curate(manifest_from_dict(_manifest(tmp_path, ["b"])), tmp_path / "o1", root=tmp_path, progress=False)
    targets = [{"name": "organ", "labels": [1]}, {"name": "vessel", "labels": [9]}]
    with pytest.raises(MedSAMError, match=r"toy/a: target 'vessel' needs label\(s\) \[9\] but mask .* holds only \[1, 2\]"):
        curate(manifest_from_dict(_manifest(tmp_path, ["a"], targets)), tmp_path / "o2", root=tmp_path,
               progress=False)


def test_duplicate_case_ids_are_refused(tmp_path):
    data = _manifest(tmp_path, ["a", "a"])
    with pytest.raises(MedSAMError, match=r"duplicate case id\(s\) \['a'\]"):
        manifest_from_dict(data)


def test_a_case_that_fails_halfway_leaves_nothing_and_earlier_cases_stay(tmp_path, monkeypatch):
    for name in ("a", "b", "c"):
        _ct_case(tmp_path, name)
    manifest = manifest_from_dict(_manifest(tmp_path, ["a", "b", "c"]))
    out = tmp_path / "out"
    real_resize = curation.resize_image
    calls = {"n": 0}

    def failing_resize(image, size=256):
        calls["n"] += 1
        if calls["n"] == 9:  # case a writes 6 slices; fail in the middle of case b's images
            raise RuntimeError("disk full (simulated)")
        return real_resize(image, size)

    monkeypatch.setattr(curation, "resize_image", failing_resize)
    with pytest.raises(MedSAMError, match="toy/b: RuntimeError: disk full"):
        curate(manifest, out, root=tmp_path, progress=False)
    assert _files(out) == {"cases/toy/a.npz"}  # a stays, b left nothing (no partial file), c not started
    assert not (out / "index.csv").exists() and not (out / "curation.json").exists()
    with pytest.raises(MedSAMError, match="incomplete.*run data curate again to finish"):
        CuratedDataset(out)  # a first run that failed: not a store yet, and it says how to finish

    calls["n"] = -100  # the next run resumes: a is skipped, b and c are curated
    report = curate(manifest, out, root=tmp_path, progress=False)
    assert report.skipped == ["toy/a"] and report.curated == ["toy/b", "toy/c"]
    assert set(CuratedDataset(out).index["volume"]) == {"a", "b", "c"}


def test_keep_going_reports_the_bad_case_and_curates_the_rest(tmp_path):
    for name in ("a", "b", "c"):
        _ct_case(tmp_path, name)
    (tmp_path / "b_seg.nii.gz").write_bytes(b"\x1f\x8b truncated")
    report = curate(manifest_from_dict(_manifest(tmp_path, ["a", "b", "c"])), tmp_path / "out", root=tmp_path,
                    keep_going=True, progress=False)
    assert report.curated == ["toy/a", "toy/c"] and list(report.failed) == ["toy/b"]
    assert "corrupt" in report.failed["toy/b"] and "b_seg.nii.gz" in report.failed["toy/b"]
    assert set(CuratedDataset(tmp_path / "out").index["volume"]) == {"a", "c"}


def test_interrupted_run_leftovers_are_cleaned_and_changed_sources_recurated(tmp_path):
    _ct_case(tmp_path, "a")
    manifest = manifest_from_dict(_manifest(tmp_path, ["a"]))
    out = tmp_path / "out"
    curate(manifest, out, root=tmp_path, progress=False)
    stale = out / "cases" / "toy" / ".a.npz.abc123.part.npz"  # what kill -9 during a write leaves
    stale.write_bytes(b"partial")
    assert curate(manifest, out, root=tmp_path, progress=False).skipped == ["toy/a"]
    assert not stale.exists()
    _ct_case(tmp_path, "a", tumour=False)  # the source changes: the case is curated again
    report = curate(manifest, out, root=tmp_path, progress=False)
    assert report.curated == ["toy/a"]
    assert "tumour" not in set(CuratedDataset(out).index["target"])


def test_multichannel_manifest_with_patterns(tmp_path):
    """An MSD-style layout (4D T2 + ADC file, '._' junk) through the shipped msd_prostate manifest."""
    import nibabel as nib

    root = tmp_path / "root"
    (root / "Task05_Prostate" / "imagesTr").mkdir(parents=True)
    (root / "Task05_Prostate" / "labelsTr").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for case in ("prostate_00", "prostate_01", "prostate_02"):
        image = np.stack([rng.normal(500, 50, (48, 48, 5)), rng.normal(1500, 100, (48, 48, 5))], -1)
        labels = np.zeros((48, 48, 5), np.uint8)
        labels[14:30, 14:30, 1:4] = 2
        labels[14:30, 30:36, 1:4] = 1
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), root / "Task05_Prostate" / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(labels, np.eye(4)), root / "Task05_Prostate" / "labelsTr" / f"{case}.nii.gz")
    (root / "Task05_Prostate" / "imagesTr" / "._prostate_00.nii.gz").write_bytes(b"resource fork")
    report = curate("msd_prostate", tmp_path / "out", root=root, progress=False)
    assert len(report.curated) == 3 and not report.failed
    index = CuratedDataset(tmp_path / "out").index
    prostate = index[index["target"] == "prostate"]
    assert set(prostate["task"]) == {"Prostate (MR-T2)", "Prostate (MR-ADC)"}
    assert set(index["image_key"]) == {"t2", "adc"} and set(index["modality"]) == {"MR-T2", "MR-ADC"}
    assert sorted(index.drop_duplicates("case")["split"]) == ["test", "train", "train"]


def test_kill_9_mid_run_then_rerun_gives_the_same_store(tmp_path):
    """A real SIGKILL of ``python -m medsam_lib data curate`` after its first case: the rerun resumes (finished
    cases skipped, nothing half-written used) and ends with the same index as an uninterrupted run."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import pandas as pd

    names = [f"c{i:02d}" for i in range(10)]
    for name in names:
        _ct_case(tmp_path, name, size=192, slices=40)
    manifest_file = tmp_path / "m.json"
    manifest_file.write_text(json.dumps(_manifest(tmp_path, names)))
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "medsam_lib", "data", "curate", "--manifest", str(manifest_file),
               "--root", str(tmp_path), "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cases = out / "cases" / "toy"
    deadline = time.monotonic() + 120
    try:
        while not (cases.is_dir() and any(not p.name.startswith(".") for p in cases.glob("*.npz"))):
            assert process.poll() is None, "curation ended before it could be killed"
            assert time.monotonic() < deadline, "no case was written within 120 s"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    done = sorted(p.stem for p in cases.glob("*.npz") if not p.name.startswith("."))
    assert 1 <= len(done) < len(names), f"the kill came too late to test anything: {done}"

    report = curate(str(manifest_file), out, root=tmp_path, progress=False)
    assert report.skipped == [f"toy/{n}" for n in done]
    assert sorted(report.curated + report.skipped) == [f"toy/{n}" for n in names] and not report.failed
    assert not [p for p in out.rglob(".*") if ".part" in p.name]

    clean = tmp_path / "clean"
    curate(str(manifest_file), clean, root=tmp_path, progress=False)
    with CuratedDataset(out) as resumed, CuratedDataset(clean) as fresh:
        key = ["volume", "slice", "target"]
        pd.testing.assert_frame_equal(resumed.index.sort_values(key).reset_index(drop=True),
                                      fresh.index.sort_values(key).reset_index(drop=True))
        for _, row in fresh.index.sample(20, random_state=0).iterrows():
            np.testing.assert_array_equal(resumed.load_mask(row), fresh.load_mask(row))
