"""Bring your own data: ``data init`` pairs files, lists what does not pair, and the result curates."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from medsam_lib.cli import main
from medsam_lib.data.byod import init_manifest
from medsam_lib.data.curate import CuratedDataset
from medsam_lib.data.manifests import load_manifest
from medsam_lib.fileio import MedSAMError

BUSI = [f"malignant ({i})" for i in range(1, 5)]


@pytest.fixture
def busi_folders(shared_data, tmp_path):
    images, masks = tmp_path / "mine" / "images", tmp_path / "mine" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for name in BUSI:
        shutil.copy(shared_data / "us_breast_tumor" / "images" / f"{name}.png", images)
        shutil.copy(shared_data / "us_breast_tumor" / "masks" / f"{name}_mask.png", masks)
    return images, masks


def test_2d_pairs_need_an_explicit_mask_suffix(busi_folders, tmp_path):
    images, masks = busi_folders
    with pytest.raises(MedSAMError, match=r"(?s)8 problem\(s\).*no mask named malignant \(1\).*"
                                          r"hint: every mask name ends in '_mask'"):
        init_manifest(images, masks, "Ultrasound", tmp_path / "busi.json")
    assert not (tmp_path / "busi.json").exists()
    path, problems = init_manifest(images, masks, "Ultrasound", tmp_path / "busi.json", mask_suffix="_mask",
                                   labels="1=breast tumour")
    assert problems == []
    manifest = load_manifest(path)
    (ds,) = manifest.datasets
    assert [c.volume for c in ds.cases] == sorted(BUSI)
    assert ds.masks[0].encoding == "binary" and [t.name for t in ds.targets] == ["breast tumour"]
    text = path.read_text(encoding="utf-8")
    assert str(tmp_path) not in text and manifest.data_root == {"kind": "relative_to_manifest", "path": "mine"}


def test_missing_and_mismatched_pairs_are_listed(busi_folders, tmp_path):
    images, masks = busi_folders
    (masks / "malignant (4)_mask.png").unlink()
    (masks / "stray_mask.png").write_bytes((masks / "malignant (1)_mask.png").read_bytes())
    Image.new("L", (10, 10)).save(masks / "malignant (3)_mask.png")  # wrong size
    with pytest.raises(MedSAMError) as error:
        init_manifest(images, masks, "Ultrasound", tmp_path / "m.json", mask_suffix="_mask")
    message = str(error.value)
    assert "image malignant (4).png: no mask named malignant (4)_mask.*" in message
    assert "mask stray_mask.png: no image named stray.*" in message
    assert "pair malignant (3): image malignant (3).png has size (475, 425) but mask malignant (3)_mask.png has (10, 10)" in message
    path, problems = init_manifest(images, masks, "Ultrasound", tmp_path / "m.json", mask_suffix="_mask",
                                   skip_unpaired=True)
    assert len(problems) == 3
    assert [c.volume for c in load_manifest(path).datasets[0].cases] == ["malignant (1)", "malignant (2)"]


def test_volumes_with_label_maps_and_the_cli_chain(shared_data, tmp_path, capsys):
    images, masks = tmp_path / "vol" / "img", tmp_path / "vol" / "seg"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    shutil.copy(shared_data / "mr_prostate_phantom" / "prostate_phantom_subvolume.nrrd", images / "phantom.nrrd")
    shutil.copy(shared_data / "mr_prostate_phantom" / "prostate_phantom_subvolume-label.nrrd", masks / "phantom.nrrd")
    shutil.copy(shared_data / "mr_breast_tumor" / "breast1_image.nrrd", images / "breast1.nrrd")
    shutil.copy(shared_data / "mr_breast_tumor" / "breast1_label.nrrd", masks / "breast1.nrrd")
    out = tmp_path / "manifests" / "mine.json"
    out.parent.mkdir()
    assert main(["data", "init", "--images", str(images), "--masks", str(masks), "--modality", "MR",
                 "--out", str(out), "--labels", "8=outer,9=inner"]) == 0
    manifest = load_manifest(out)
    (ds,) = manifest.datasets
    assert ds.dimensionality == "3D" and manifest.data_root["path"] == "../vol"
    by_value = {t.labels[0]: t for t in ds.targets}
    assert sorted(by_value) == [1, 7, 8, 9]
    assert by_value[8].name == "outer" and by_value[1].name == "label_1"
    assert by_value[8].optional and not by_value[1].optional  # 8 is absent from breast1, 1 in both
    assert main(["data", "curate", "--manifest", str(out), "--out", str(tmp_path / "curated")]) == 0
    assert "2 case(s) curated" in capsys.readouterr().out
    index = CuratedDataset(tmp_path / "curated").index
    assert {"outer", "inner", "label_1"} <= set(index["target"])
    assert main(["data", "init", "--images", str(images), "--masks", str(masks), "--modality", "MR",
                 "--out", str(out), "--labels", "5=ghost"]) == 2
    assert "--labels names value(s) [5]" in capsys.readouterr().err


def test_colour_masks_become_a_palette(tmp_path):
    images, masks = tmp_path / "i", tmp_path / "m"
    images.mkdir()
    masks.mkdir()
    for n in range(2):
        Image.fromarray(np.full((40, 40), 100 + n, np.uint8)).save(images / f"s{n}.png")
        colour = np.zeros((40, 40, 3), np.uint8)
        colour[5:20, 5:20] = (255, 0, 0)
        if n:
            colour[25:35, 25:35] = (0, 255, 0)
        Image.fromarray(colour).save(masks / f"s{n}.png")
    path, _ = init_manifest(images, masks, "MR", tmp_path / "c.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    mask = data["datasets"][0]["masks"][0]
    assert mask["encoding"] == "rgb" and mask["palette"] == {"1": [0, 255, 0], "2": [255, 0, 0]}
    targets = {t["name"]: t for t in data["datasets"][0]["targets"]}
    assert targets["label_1"].get("optional") and not targets["label_2"].get("optional")


def test_bad_folders(tmp_path):
    with pytest.raises(MedSAMError, match="the image folder does not exist"):
        init_manifest(tmp_path / "nope", tmp_path, "CT", tmp_path / "x.json")
    (tmp_path / "i").mkdir()
    (tmp_path / "i" / "notes.txt").write_text("hello")
    with pytest.raises(MedSAMError, match="no image files found in the image folder"):
        init_manifest(tmp_path / "i", tmp_path / "i", "CT", tmp_path / "x.json")
    with pytest.raises(MedSAMError, match="must end in .json"):
        init_manifest(tmp_path / "i", tmp_path / "i", "CT", tmp_path / "x.yaml")
