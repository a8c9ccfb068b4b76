"""Every manifest validates; together they cover the paper's 30 tasks; the schema refuses bad ones."""
from __future__ import annotations

import copy
import csv
import json
import re

from pathlib import Path

import pytest

from medsam_lib.cli import main
from medsam_lib.data import phantoms
from medsam_lib.data.manifest_schema import PAPER_TASKS
from medsam_lib.data.manifests import (MANIFESTS_DIR, list_manifests, load_manifest, manifest_from_dict,
                                       resolve_cases)
from medsam_lib.fileio import MedSAMError
from medsam_lib.shared import REPO_ROOT

MANIFESTS = list_manifests()
LOCAL = {"shared_data", "synthetic"}


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_manifest_is_valid_and_honest(path):
    manifest = load_manifest(path)
    assert manifest.name == path.stem
    text = path.read_text(encoding="utf-8")
    assert not re.search(r'"(/|[A-Za-z]:\\\\)[^"]*"', text.replace('"/"', "")), "absolute path in a manifest"
    assert str(REPO_ROOT.parent) not in text and str(Path.home()) not in text  # nothing machine-specific
    obtain = manifest.obtain
    if obtain["method"] == "direct":
        for f in manifest.files:
            assert f.url.startswith("https://") and f.file_name
            if f.checksums:  # never an invented checksum: each one says who published it
                spec = next(s for s in obtain["files"] if s["file_name"] == f.file_name)
                assert spec.get("checksum_source"), f"{f.file_name}: checksum without a source"
        assert isinstance(obtain["checksums_verified"], bool)
    if obtain["method"] == "manual":
        assert obtain["manual_steps"] and obtain["layout"]
    for ds in manifest.datasets:
        assert ds.raw["citation"] and ds.raw["license"]["name"] and ds.raw["license"]["terms"]
        assert all(t.labels for t in ds.targets)


def test_manifests_cover_all_30_paper_tasks():
    covered = set()
    for path in MANIFESTS:
        manifest = load_manifest(path)
        if manifest.name in LOCAL:
            continue
        covered |= {task for ds in manifest.datasets for t in ds.targets for task in t.paper_tasks.values()}
    assert covered == set(PAPER_TASKS) and len(PAPER_TASKS) == 30


def test_paper_task_list_matches_tasks_csv(shared_data):
    rows = list(csv.DictReader((shared_data.parent / "paper" / "tasks.csv").open()))
    assert {f"{r['target']} ({r['modality']})" for r in rows} == set(PAPER_TASKS)


def test_synthetic_manifest_matches_the_phantoms(tmp_path):
    manifest = load_manifest("synthetic")
    assert manifest.synthetic
    by_name = {ds.name: ds for ds in manifest.datasets}
    assert set(by_name) == {c.dataset for c in phantoms.CASES}
    for case in phantoms.CASES:
        ds = by_name[case.dataset]
        (spec,) = [c for c in ds.cases if c.volume == case.case_id]
        assert spec.images[ds.images[0].key] == case.image and spec.masks["label"] == case.mask
        assert ds.images[0].modality == case.modality
        assert set(case.labels) == {v for t in ds.targets for v in t.labels}
    assert all(len(ds.cases) == phantoms.CASES_PER_DATASET >= 5 for ds in manifest.datasets)
    root = phantoms.write_synthetic_set(tmp_path / "synthetic")
    assert all(resolve_cases(ds, root) for ds in manifest.datasets)


def test_shared_manifest_lists_files_that_exist(shared_data):
    manifest = load_manifest("shared_data")
    for ds in manifest.datasets:
        assert resolve_cases(ds, shared_data)  # raises, listing them, if a file is missing
    folders = {p.name for p in shared_data.iterdir() if p.is_dir()}
    assert folders - {ds.name for ds in manifest.datasets} == {"ct_medsam_demo"}  # no mask there


def _valid() -> dict:
    return copy.deepcopy(load_manifest("busi").raw)


@pytest.mark.parametrize("mutate,message", [
    (lambda m: m.pop("obtain"), "'obtain' is a required property"),
    (lambda m: m["datasets"][0].pop("license"), "'license' is a required property"),
    (lambda m: m["datasets"][0]["targets"][0].update(labels=[]), "should be non-empty|is too short"),
    (lambda m: m["datasets"][0]["targets"][0].update(labels=[0]), "less than the minimum"),
    (lambda m: m["obtain"]["files"][0].update(checksums={"sha256": "abc"}), "does not match"),
    (lambda m: m["obtain"]["files"][0].update(url="file:///etc/passwd"), "does not match"),
    (lambda m: m["obtain"].pop("checksums_verified"), "'checksums_verified' is a required property"),
    (lambda m: m.update(name="Bad Name"), "does not match"),
    (lambda m: m["datasets"][0]["targets"][0]["paper_tasks"].update(us="Kidney (CT)"), "not one of the paper's 30 tasks"),
    (lambda m: m["datasets"][0]["targets"][0]["paper_tasks"].update(ct="Liver (CT)"), "maps image key 'ct'"),
    (lambda m: m["datasets"][0]["targets"][0].update(mask="nope"), "refers to mask 'nope'"),
    (lambda m: m["datasets"][0]["targets"].append(dict(m["datasets"][0]["targets"][0])), "duplicate target name"),
    (lambda m: m["datasets"][0]["masks"][0].update(encoding="rgb"), "encoding 'rgb' but no palette"),
    (lambda m: m["datasets"][0]["images"][0].update(pattern="/data/{case}.png"), "must be relative"),
    (lambda m: m["datasets"][0]["masks"][0].update(pattern="../{case}_mask.png"), "must be relative"),
    (lambda m: m["datasets"][0]["images"][0].update(pattern="x/{cls}.png"), "must contain {case}"),
    (lambda m: m["datasets"][0]["masks"][0].update(pattern="x/{other}.png"), "placeholder"),
    (lambda m: m["datasets"][0].update(case_filter="(unclosed"), "not a valid regular expression"),
    (lambda m: m["datasets"][0].update(cases=[{"id": "a", "images": {"us": "a.png"}, "masks": {"label": "a_m.png"}}]),
     "either an explicit 'cases' list or 'pattern'"),
])
def test_schema_and_rules_refuse_bad_manifests(mutate, message):
    data = _valid()
    mutate(data)
    with pytest.raises(MedSAMError, match=message):
        manifest_from_dict(data)


def test_explicit_cases_must_be_complete_and_relative():
    data = copy.deepcopy(load_manifest("shared_data").raw)
    data["datasets"][0]["cases"][0]["images"]["ct"] = "/abs/example.nii.gz"
    with pytest.raises(MedSAMError, match="must be relative to the data root"):
        manifest_from_dict(data)
    data = copy.deepcopy(load_manifest("shared_data").raw)
    dicom = next(d for d in data["datasets"] if d["name"] == "ct_dicom_liver_spine_heart")
    del dicom["cases"][0]["masks"]["heart"]
    with pytest.raises(MedSAMError, match="must give exactly the images"):
        manifest_from_dict(data)
    data = copy.deepcopy(load_manifest("shared_data").raw)
    us = next(d for d in data["datasets"] if d["name"] == "us_breast_tumor")
    us["cases"][1]["id"] = "malignant  (1)"  # differs from "malignant (1)" only in characters files cannot hold
    with pytest.raises(MedSAMError, match="differ only in characters"):
        manifest_from_dict(data)


def test_invalid_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "schema_version": 1,\n  "name": }\n')
    with pytest.raises(MedSAMError, match=r"broken.json: invalid JSON at line 3"):
        load_manifest(path)
    with pytest.raises(MedSAMError, match="no manifest named 'nonexistent'"):
        load_manifest("nonexistent")


def test_missing_files_are_listed_not_guessed(tmp_path):
    ds = load_manifest("busi").datasets[0]
    folder = tmp_path / "Dataset_BUSI_with_GT" / "benign"
    folder.mkdir(parents=True)
    for name in ("benign (1).png", "benign (1)_mask.png", "benign (2).png", "normal (1).png"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "Dataset_BUSI_with_GT" / "normal").mkdir()
    (tmp_path / "Dataset_BUSI_with_GT" / "normal" / "normal (1).png").write_bytes(b"x")
    with pytest.raises(MedSAMError, match=r"(?s)1 file\(s\) missing.*benign_benign \(2\): Dataset_BUSI_with_GT/benign/benign \(2\)_mask.png"):
        resolve_cases(ds, tmp_path)
    (folder / "benign (2)_mask.png").write_bytes(b"x")
    cases = resolve_cases(ds, tmp_path)
    assert [c.case for c in cases] == ["benign (1)", "benign (2)"]  # case_filter left out the normal class
    abdomen = load_manifest("abdomenct1k").datasets[0]
    (tmp_path / "AbdomenCT-1K-ImagePart1").mkdir()
    (tmp_path / "Mask").mkdir()
    for case in ("Case_00001", "Case_00002"):
        (tmp_path / "AbdomenCT-1K-ImagePart1" / f"{case}_0000.nii.gz").write_bytes(b"x")
    (tmp_path / "Mask" / "Case_00001.nii.gz").write_bytes(b"x")
    assert [c.volume for c in resolve_cases(abdomen, tmp_path)] == ["1_Case_00001"]  # unlabelled image skipped


def test_data_list_show_validate_cli(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == len(MANIFESTS) and "msd_prostate" in out and "Prostate (MR-ADC)" in out
    assert main(["data", "show", "msd_prostate"]) == 0
    out = capsys.readouterr().out
    assert "Task05_Prostate.tar" in out and "md5 35138f08b1efaef89d7424d2bcc928db" in out
    assert "checksums verified by the manifest's author: False" in out
    assert main(["data", "validate", *map(str, MANIFESTS)]) == 0
    assert main(["data", "validate", str(MANIFESTS_DIR / "missing.json")]) == 2
    assert "no such manifest file" in capsys.readouterr().err
    json.loads((MANIFESTS_DIR / "synthetic.json").read_text(encoding="utf-8"))
