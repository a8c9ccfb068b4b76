"""The real cohorts of ../shared/cohorts (issue 20) through manifest ``cohorts``: every folder's quirks
read as its README / SOURCE.md say, checked against an independent Pillow / nibabel load; splits by
the grouping key; a small curation. Plus the manifest features they need (mask ``scale``, ``split``
fractions) on made-up input."""
from __future__ import annotations

import copy
import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from medsam_lib.data.curate import CuratedDataset, curate
from medsam_lib.data.manifests import load_manifest, manifest_from_dict, resolve_cases
from medsam_lib.data.readers import read_image, read_mask
from medsam_lib.data.splits import split_cases, split_groups
from medsam_lib.fileio import MedSAMError

# Two cases per folder: (image file, the grouping key the README names). The carotid frames and the
# CHASE_DB1 eyes are pairs of one group; BUSI has one mask of each encoding; JSRT's JPCLN037 is posterised.
TWO = {
    "us_breast_tumor_busi": [("benign (114).png", "benign (114)"), ("malignant (10).png", "malignant (10)")],
    "us_carotid_artery_cca": [("202201121748100022VAS_slice_1069.png", "202201121748100022VAS"),
                              ("202201121748100022VAS_slice_2990.png", "202201121748100022VAS")],
    "xray_chest_heart_lungs_jsrt": [("JPCLN001.IMG.png", "JPCLN001"), ("JPCLN037.IMG.png", "JPCLN037")],
    "xray_chest_lungs_shenzhen": [("CHNCXR_0001_0.jpg", "CHNCXR_0001_0"), ("CHNCXR_0426_1.jpg", "CHNCXR_0426_1")],
    "endoscopy_polyp_kvasir": [("cju0s2a9ekvms080138tjjpxr.jpg", "cju0s2a9ekvms080138tjjpxr"),
                               ("cju2u4pymvc720988wsxrmi84.jpg", "cju2u4pymvc720988wsxrmi84")],
    "fundus_retinal_vessel_drive": [("06_test.tif", "06"), ("22_training.tif", "22")],
    "fundus_retinal_vessel_chasedb1": [("Image_01L.jpg", "Image_01"), ("Image_01R.jpg", "Image_01")],
    "pathology_gland_glas": [("testA_28.jpg", "testA_28"), ("testB_8.jpg", "testB_8")],
    "mr_hippocampus_msd_3d": [("hippocampus_004.nii.gz", "hippocampus_004"),
                              ("hippocampus_083.nii.gz", "hippocampus_083")],
}
README_CASES = {"us_breast_tumor_busi": 33, "us_carotid_artery_cca": 50, "xray_chest_heart_lungs_jsrt": 16,
                "xray_chest_lungs_shenzhen": 42, "endoscopy_polyp_kvasir": 42, "fundus_retinal_vessel_drive": 30,
                "fundus_retinal_vessel_chasedb1": 24, "pathology_gland_glas": 10, "mr_hippocampus_msd_3d": 34}


def _readme_group(folder: str, image_name: str) -> str:
    """The grouping key as README.md / SOURCE.md state it, from the image file name."""
    stem = image_name.split(".")[0]
    if folder == "us_carotid_artery_cca":
        return stem.split("_slice_")[0]
    if folder == "fundus_retinal_vessel_chasedb1":
        return re.fullmatch(r"(Image_\d+)[LR]", stem).group(1)
    if folder == "fundus_retinal_vessel_drive":
        return stem.split("_")[0]
    return stem


def _independent(root, folder: str, image_name: str) -> tuple[np.ndarray, dict]:
    """(image, {mask key: bool mask}) loaded with Pillow / nibabel as the cohorts README says, without
    the library: JSRT palette images with convert("L") and its half-size masks repeated x2, JPEG masks
    > 127, BUSI (1-bit or RGB) and CHASE_DB1 (1-bit) masks > 0, NIfTI with nibabel, (x, y, z) -> (z, y, x)."""
    base = root / folder
    stem = image_name[:-len(".nii.gz")] if image_name.endswith(".nii.gz") else image_name.rsplit(".", 1)[0]
    if folder == "mr_hippocampus_msd_3d":
        import nibabel as nib

        image = np.asarray(nib.load(base / "images" / image_name).dataobj).transpose(2, 1, 0)
        label = np.asarray(nib.load(base / "masks" / image_name).dataobj).transpose(2, 1, 0)
        return image, {"label": label}
    with Image.open(base / "images" / image_name) as img:
        image = np.asarray(img.convert("L") if folder == "xray_chest_heart_lungs_jsrt" else img)

    def grey(path):
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB")).max(axis=2)  # any channel (BUSI: green or red)

    if folder == "xray_chest_heart_lungs_jsrt":
        return image, {k: (grey(base / "masks" / k / f"{stem[:-4]}.gif") > 127).repeat(2, 0).repeat(2, 1)
                       for k in ("heart", "left_lung", "right_lung")}
    if folder == "us_breast_tumor_busi":
        return image, {"lesion": grey(base / "masks" / f"{stem}_mask.png") > 0}
    if folder == "fundus_retinal_vessel_drive":
        number = stem.split("_")[0]
        return image, {"vessels": grey(base / "masks" / f"{number}_manual1.gif") > 127,
                       "fov": grey(base / "fov" / f"{stem}_mask.gif") > 127}
    if folder == "fundus_retinal_vessel_chasedb1":
        return image, {"vessels": grey(base / "masks" / f"{stem}_1stHO.png") > 0}
    key = {"us_carotid_artery_cca": "artery", "xray_chest_lungs_shenzhen": "lungs", "endoscopy_polyp_kvasir": "polyp",
           "pathology_gland_glas": "glands"}[folder]
    return image, {key: grey(base / "masks" / image_name) > 127}


def _cases_of(manifest, root, folder):
    """The manifest's cases of ``folder`` keyed by image file name."""
    ds = manifest.dataset(folder)
    return ds, {c.images[ds.images[0].key].rsplit("/", 1)[1]: c for c in resolve_cases(ds, root)}


# --- the manifest against the folders ---------------------------------------------------------------

def test_manifest_finds_every_case_of_the_readme(shared_cohorts):
    manifest = load_manifest("cohorts")
    assert {ds.name for ds in manifest.datasets} == set(README_CASES)
    for folder, n in README_CASES.items():
        ds, cases = _cases_of(manifest, shared_cohorts, folder)
        assert len(cases) == n, folder
        files = sorted(p.name for p in (shared_cohorts / folder / "images").iterdir())
        assert sorted(cases) == files, f"{folder}: the manifest's cases are not the folder's images"
        for name, case in cases.items():  # the split unit is the README's grouping key
            assert case.case == _readme_group(folder, name), (folder, name)
    tasks = {(ds.name, t.name): (t.paper_tasks, t.stand_in) for ds in manifest.datasets for t in ds.targets}
    assert tasks[("us_carotid_artery_cca", "common carotid artery")] == ({"us": "Vessel (Ultrasound)"}, True)
    assert tasks[("xray_chest_heart_lungs_jsrt", "heart")] == ({"xray": "Heart (X-Ray)"}, False)
    assert tasks[("fundus_retinal_vessel_chasedb1", "retinal vessels")][1] is True
    assert tasks[("mr_hippocampus_msd_3d", "anterior hippocampus")] == ({}, False)


@pytest.mark.parametrize("folder", sorted(TWO))
def test_two_cases_read_as_the_readme_says(shared_cohorts, folder):
    manifest = load_manifest("cohorts")
    ds, cases = _cases_of(manifest, shared_cohorts, folder)
    for image_name, _ in TWO[folder]:
        case = cases[image_name]
        want_image, want_masks = _independent(shared_cohorts, folder, image_name)
        image = read_image(shared_cohorts / case.images[ds.images[0].key]).array
        if folder == "xray_chest_heart_lungs_jsrt":  # palette -> grey (R = G = B), not the inverted indices
            assert image.shape == (2048, 2048, 3) and (image == image[..., :1]).all()
            image = image[..., 0]
            with Image.open(shared_cohorts / case.images["xray"]) as img:
                assert np.array_equal(np.asarray(img), 255 - want_image)  # the palette is the inverted ramp
        np.testing.assert_array_equal(image, want_image)
        assert set(want_masks) == {m.key for m in ds.masks}
        for spec in ds.masks:
            mask = read_mask(shared_cohorts / case.masks[spec.key], spec.encoding, spec.threshold, spec.palette,
                             spec.scale).array
            want = want_masks[spec.key]
            if folder == "mr_hippocampus_msd_3d":
                np.testing.assert_array_equal(mask, want)
                assert set(np.unique(mask)) == {0, 1, 2}
            else:
                assert mask.shape == image.shape[:2]
                np.testing.assert_array_equal(mask.astype(bool), want)
                assert 0.001 < want.mean() < 0.95, f"{folder}/{image_name} {spec.key}: implausible foreground"


# --- splits by the grouping key (the full lists: no curation) -------------------------------------

def test_split_never_puts_a_group_on_two_sides(shared_cohorts):
    manifest = load_manifest("cohorts")
    assert manifest.split == {"train": 0.6, "validation": 0.2, "test": 0.2}
    for folder in README_CASES:
        ds, cases = _cases_of(manifest, shared_cohorts, folder)
        split = split_groups([c.case for c in cases.values()], 0, ds.name, manifest.split)
        assert split == split_groups([c.case for c in reversed(list(cases.values()))], 0, ds.name, manifest.split)
        sides: dict[str, set] = {}
        for name in cases:  # by the README's key, derived from the file name here
            group = _readme_group(folder, name)
            sides.setdefault(group, set()).add(split[group])
        assert all(len(s) == 1 for s in sides.values()), folder
        assert set(split.values()) == {"train", "validation", "test"}, folder
        n = len(sides)
        assert abs(sum(v == "test" for v in split.values()) - 0.2 * n) <= 1, folder
    _, carotid = _cases_of(manifest, shared_cohorts, "us_carotid_artery_cca")
    _, chase = _cases_of(manifest, shared_cohorts, "fundus_retinal_vessel_chasedb1")
    assert len({c.case for c in carotid.values()}) == 13 and len({c.case for c in chase.values()}) == 12


def test_split_groups_rules():
    ids = [f"g{i}" for i in range(20)]
    three = split_groups(ids, 0, "d", {"train": 0.6, "validation": 0.2, "test": 0.2})
    assert sorted(three.values()).count("validation") == 4 and sorted(three.values()).count("test") == 4
    assert three != split_groups(ids, 1, "d", {"train": 0.6, "validation": 0.2, "test": 0.2})
    assert set(split_groups(["a", "b", "c"], 0, "d", {"train": 0.8, "validation": 0.1, "test": 0.1}).values()) == {
        "train", "validation", "test"}
    # two fractions: the paper's 80/20 split, exactly as before
    assert split_groups(ids, 5, "d", {"train": 0.8, "test": 0.2}) == split_cases(ids, 5, "d")
    for bad in ({"train": 0.5, "test": 0.2}, {"train": 1.0, "test": 0.0}, {"test": 1.0}, {"train": 0.8, "val": 0.2},
                {"train": True, "test": 0.5}):
        with pytest.raises(MedSAMError, match="split"):
            split_groups(ids, 0, "d", bad)


# --- curation of two cases per folder --------------------------------------------------------------

def _two_case_manifest(root):
    """Manifest ``cohorts`` cut down to the cases of TWO (explicit case lists)."""
    data = copy.deepcopy(load_manifest("cohorts").raw)
    full = load_manifest("cohorts")
    for ds in data["datasets"]:
        _, cases = _cases_of(full, root, ds["name"])
        for part in ds["images"] + ds["masks"]:
            part.pop("pattern")
        ds.pop("case_filter", None)
        ds["cases"] = [{"id": cases[name].volume, "case": cases[name].case, "images": cases[name].images,
                        "masks": cases[name].masks} for name, _ in TWO[ds["name"]]]
    return manifest_from_dict(data)


def _nearest(plane: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resize to 256 x 256, pixel centres aligned (written here, not the library's)."""
    rows = np.minimum(((np.arange(256) + 0.5) * plane.shape[0] / 256).astype(int), plane.shape[0] - 1)
    cols = np.minimum(((np.arange(256) + 0.5) * plane.shape[1] / 256).astype(int), plane.shape[1] - 1)
    return plane[rows][:, cols]


def test_two_cases_per_folder_curate_as_loaded(shared_cohorts, tmp_path):
    manifest = _two_case_manifest(shared_cohorts)
    start = time.perf_counter()
    report = curate(manifest, tmp_path / "store", root=shared_cohorts, seed=0, progress=False)
    seconds = time.perf_counter() - start
    assert not report.failed and len(report.curated) == 18
    assert seconds < 90, f"curating 18 cases took {seconds:.0f} s"
    store = CuratedDataset(tmp_path / "store")
    index = store.index
    assert set(index["dataset"]) == set(TWO)
    assert index.groupby(["dataset", "case"])["split"].nunique().max() == 1  # a group stays on one side
    info = json.loads((tmp_path / "store" / "curation.json").read_text(encoding="utf-8"))
    assert info["manifests"]["cohorts"]["split"] == manifest.split
    full = load_manifest("cohorts")
    for folder, pairs in TWO.items():
        ds, cases = _cases_of(full, shared_cohorts, folder)
        for image_name, group in pairs:
            rows = index[(index["dataset"] == folder) & (index["volume"] == cases[image_name].volume)]
            assert len(rows) and set(rows["case"]) == {group}
            image, masks = _independent(shared_cohorts, folder, image_name)
            for _, row in rows.iterrows():
                target = next(t for t in ds.targets if t.name == row["target"])
                got_image, got_mask = store.load(row)
                want = np.isin(masks[target.mask], target.labels)
                plane = image.astype(np.float64)
                if want.ndim == 3:  # a volume: the row's slice along the first (z) axis
                    want, plane = want[row["slice"]], plane[row["slice"]]
                np.testing.assert_array_equal(got_mask, _nearest(want))
                grey = plane.mean(axis=2) if plane.ndim == 3 else plane
                r = np.corrcoef(got_image.astype(np.float64).mean(axis=2).ravel(), _nearest(grey).ravel())[0, 1]
                assert r > 0.9, f"{folder}/{image_name}: curated image does not match the source (r = {r:.3f})"
            assert (rows["task"] != "").all() == (folder != "mr_hippocampus_msd_3d")


# --- the manifest features on made-up input ---------------------------------------------------------

def test_mask_scale_repeats_pixels_and_refuses_misuse(tmp_path):
    small = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    Image.fromarray(small).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png", "binary", 127, scale=3).array
    np.testing.assert_array_equal(mask, (small > 127).repeat(3, 0).repeat(3, 1))
    for bad in (0, 17, 1.5, True):
        with pytest.raises(MedSAMError, match="m.png: mask scale"):
            read_mask(tmp_path / "m.png", "binary", 127, scale=bad)
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 3), np.uint8)), str(tmp_path / "v.nii.gz"))
    with pytest.raises(MedSAMError, match="v.nii.gz: mask scale 2 applies to 2D masks only"):
        read_mask(tmp_path / "v.nii.gz", scale=2)


def _manifest_data(**changes):
    data = copy.deepcopy(load_manifest("cohorts").raw)
    data["datasets"] = [d for d in data["datasets"] if d["name"] in ("xray_chest_heart_lungs_jsrt",
                                                                      "mr_hippocampus_msd_3d")]
    for path, value in changes.items():
        where = data
        *parents, last = path.split("/")
        for p in parents:
            where = where[int(p)] if p.isdigit() else where[p]
        where[last] = value
    return data


@pytest.mark.parametrize("path, value, message", [
    ("datasets/0/masks/0/scale", 0, "scale"),
    ("datasets/0/masks/0/scale", 2.5, "scale"),
    ("datasets/1/masks/0/scale", 2, "scale applies to 2D masks only"),
    ("split", {"train": 0.6, "validation": 0.3, "test": 0.2}, "must sum to 1"),
    ("split", {"train": 0.8}, "split"),
    ("split", {"train": 0.8, "valid": 0.1, "test": 0.1}, "split"),
])
def test_manifest_refuses_bad_scale_and_split(path, value, message):
    manifest_from_dict(_manifest_data())  # the cut-down manifest itself is valid
    with pytest.raises(MedSAMError, match=message):
        manifest_from_dict(_manifest_data(**{path: value}))
