"""Bad input, round 3 (issue 16, found after round 2). Every CLI row: exit code 2, one ``error:`` line
naming the file or option and the problem, no traceback, nothing written (``bad_input_helpers``).
Where each rule lives:
- full disk while SimpleITK writes a volume: ``data.readers.write_itk`` (the written file is read
  back before the rename; SimpleITK does not report a failed write);
- gantry-tilted DICOM series: ``data.dicom`` (slices must advance along the slice normal);
- ``data curate --out`` inside / equal to / containing the images root: ``fileio.check_output_folder``;
- an index row that resolves outside the store through a link: ``data.store.check_index``;
- the repair hint for a damaged embedding chunk names the curated store the caller gave;
- bounded one-line messages: ``training.config`` (unknown keys), ``data.manifest_schema``;
- a subnormal intensity range: ``data.preprocess`` (window computed without overflow);
- API: ``models.predictor.check_original_size`` (bounded), ``models.zoo.load_model`` (accepted types).
"""
from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_input_helpers import REPO, BadInput, check_bad_input, run_cli, snapshot, write_dicom_series, write_manifest
from medsam_lib.fileio import MedSAMError


def _png(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)).save(path)
    return path


def _limited_run(argv: list[str], limit: int) -> subprocess.CompletedProcess:
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MEDSAM_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "medsam_lib", *argv], capture_output=True, text=True,
                          timeout=120, env=env, preexec_fn=set_limit)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_full_disk_while_writing_a_volume_mask_is_refused(tmp_path, suffix):
    """A file size limit (EFBIG, as a full disk's ENOSPC) while SimpleITK writes the mask: SimpleITK
    reports nothing, so the read-back must: exit 2, one line, no file left, the input unchanged."""
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600)).astype(np.uint8)).save(image)
    before = snapshot(tmp_path)
    out = tmp_path / f"m{suffix}"
    done = _limited_run(["segment", "--image", str(image), "--box", "10,10,500,500", "--out", str(out),
                         "--device", "cpu"], limit=1000)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and out.name in errors[0] and "nothing was written" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(tmp_path) == before


def test_write_itk_verifies_and_keeps_valid_writes(tmp_path):
    import SimpleITK as sitk

    from medsam_lib.data.readers import write_itk

    for dtype in (np.uint8, np.int16, np.float32):
        array = (np.random.default_rng(1).normal(size=(3, 20, 24)) * 100).astype(dtype)
        for name, compress in (("a.nii.gz", True), ("b.nrrd", False), ("c.mha", False), ("d.nii", False)):
            path = tmp_path / dtype.__name__ / name  # one folder each: niftilib may read d.nii for d.nii.gz
            path.parent.mkdir(exist_ok=True)
            write_itk(sitk.GetImageFromArray(array), path, compress=compress)
            assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), array)
        assert sorted(p.name for p in path.parent.iterdir()) == ["a.nii.gz", "b.nrrd", "c.mha", "d.nii"]


def _dicom(folder: Path, positions) -> Path:
    """A CT series with one slice at each of ``positions`` (x, y, z in mm), orientation 1\\0\\0\\0\\1\\0."""
    return write_dicom_series(folder, positions)


def _seg(image, out) -> list[str]:
    return ["segment", "--image", str(image), "--box", "4,4,12,12", "--out", str(out), "--device", "cpu"]


def _manifest(tmp: Path) -> Path:
    """A one-case 2D manifest at ``tmp/data/m.json`` (data root: its folder), images in images/, masks in masks/."""
    data = tmp / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    _png(data / "images" / "a.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 16:40] = 255
    Image.fromarray(mask).save(data / "masks" / "a.png")
    return write_manifest(data, "m", ["a"])


def _curate(tmp: Path, out: str) -> list[str]:
    return ["data", "curate", "--manifest", str(_manifest(tmp)), "--out", str(tmp / out)]


def _rows() -> list[BadInput]:
    r = []

    def row(name, build, *expect, **kw):
        r.append(BadInput(name, build, tuple(expect), **kw))

    row("dicom_gantry_tilt_x", lambda t, c: _seg(_dicom(t / "tilt", [(2 * i, 0, i) for i in range(4)]), t / "m.nii.gz"),
        "tilt", "tilted", "resample")
    row("dicom_tilt_in_y_small", lambda t, c: _seg(_dicom(t / "tilty", [(0, 0.2 * i, 2 * i) for i in range(4)]),
                                                   t / "m.nii.gz"), "tilty", "tilted")
    row("dicom_tilt_two_slices", lambda t, c: _seg(_dicom(t / "two", [(0, 0, 0), (3, 3, 1)]), t / "m.nii.gz"),
        "two", "tilted")

    # curate --out: the one output-folder rule (fileio.check_output_folder)
    row("curate_out_inside_images_folder", lambda t, c: _curate(t, "data/images/store"), "--out", "images/store",
        "lies inside", "images")
    row("curate_out_is_images_folder", lambda t, c: _curate(t, "data/images"), "--out", "data/images")
    row("curate_out_inside_images_via_link", lambda t, c: (os.symlink(t / "data" / "images", t / "lnk"),
                                                           _curate(t, "lnk/store"))[-1], "--out", "lnk/store", "lies inside")
    row("curate_out_is_data_root_by_link", lambda t, c: (os.symlink(t / "data", t / "lnk"), _curate(t, "lnk"))[-1],
        "--out", "lnk")

    # an index row through a link inside cases/ (data.store.check_index)
    row("embed_store_row_links_outside", lambda t, c: ["embed", "--curated", str(_linked_row_store(t)), "--out",
                                                       str(t / "emb"), "--device", "cpu"],
        "index.csv row 1", "cases/lnk/", "resolves outside the store")
    return r


@pytest.mark.parametrize("row", _rows(), ids=str)
def test_bad_input_round3(row, tmp_path, capfd):
    check_bad_input(row, tmp_path, capfd)


def test_dicom_series_along_the_normal_still_reads(tmp_path):
    from medsam_lib.data.readers import read_image

    image = read_image(_dicom(tmp_path / "ok", [(0, 0, 2.5 * i) for i in range(4)]))
    assert image.array.shape == (4, 16, 16) and np.isclose(image.spacing[0], 2.5)


def test_curate_into_a_folder_beside_the_data_still_works(tmp_path, capfd):
    argv = _curate(tmp_path, "data/store")  # inside the data root, beside images/ and masks/
    code, out, err = run_cli(argv, capfd)
    assert code == 0, err
    assert (tmp_path / "data" / "store" / "index.csv").is_file()
    code, out, err = run_cli(["data", "curate", "--manifest", str(tmp_path / "data" / "m.json"), "--out",
                              str(tmp_path / "store2")], capfd)
    assert code == 0, err


def _store(tmp: Path) -> Path:
    code = __import__("medsam_lib.cli", fromlist=["main"]).main(_curate(tmp, "store"))
    assert code == 0
    return tmp / "store"


def _linked_row_store(tmp: Path) -> Path:
    """A store whose index row names ``cases/lnk/<file>``, ``cases/lnk`` a link to a folder outside the store
    holding a copy of a real case file (so it would be read without a word); the index is re-committed."""
    import shutil

    from medsam_lib.data.store import read_index
    from medsam_lib.data.store_commit import write_index

    store = _store(tmp)
    index = read_index(store / "index.csv")
    outside = tmp / "outside"
    outside.mkdir()
    first = str(index["file"].iloc[0])
    shutil.copy(store / first, outside / Path(first).name)
    os.symlink(outside, store / "cases" / "lnk")
    index.loc[index.index[0], "file"] = f"cases/lnk/{Path(first).name}"
    write_index(store, index)
    return store


def test_index_row_through_a_link_outside_the_store_is_refused(tmp_path):
    from medsam_lib.data.store import CuratedDataset

    store = _linked_row_store(tmp_path)
    with pytest.raises(MedSAMError, match=r"index.csv row 1: file 'cases/lnk/.*' resolves outside the store"):
        CuratedDataset(store)


def test_store_whose_cases_folder_is_a_link_still_opens(tmp_path):
    from medsam_lib.data.store import CuratedDataset

    store = _store(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "curation.json").write_bytes((store / "curation.json").read_bytes())
    (shared / "index.csv").write_bytes((store / "index.csv").read_bytes())
    (shared / "cases").symlink_to((store / "cases").resolve(), target_is_directory=True)
    image, mask = CuratedDataset(shared).load(0)
    assert image.shape == (256, 256, 3) and mask.any()


def test_damaged_chunk_hint_names_the_curated_store_given(tmp_path, lite_model, monkeypatch):
    """The store moved after embedding: the repair hint names the --curated the caller gave, not the
    (stale) path recorded in store.json."""
    from medsam_lib.embeddings import build_store, open_store

    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path / "cache"))
    built = build_store(_store(tmp_path), lite_model, tmp_path / "emb", chunk_size=1, progress=False)
    old = str(built.meta["curated"])
    moved = (tmp_path / "store").rename(tmp_path / "moved")
    chunk = tmp_path / "emb" / "chunks" / built.markers[0]["file"]
    stat = chunk.stat()
    with open(chunk, "r+b") as handle:  # same size, other bytes, mtime kept: found on the first read
        handle.seek(stat.st_size - 64)
        handle.write(b"\x7f" * 64)
    os.utime(chunk, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    store = open_store(tmp_path / "emb", model=lite_model, curated=moved)
    with pytest.raises(MedSAMError, match=f"embed --curated {moved} --model") as info:
        store.get(store.ids()[0])
    assert old not in str(info.value)
    store = open_store(tmp_path / "emb").bind(curated=moved)  # bound after opening (training's store=)
    with pytest.raises(MedSAMError, match=re.escape(f"build_store({str(moved)!r}, ")):
        store.get(store.ids()[0])
    with open(chunk, "r+b") as handle:  # now truncated: refused on open, with the same hint
        handle.truncate(stat.st_size // 2)
    with pytest.raises(MedSAMError, match=f"embed --curated {moved} --model"):
        open_store(tmp_path / "emb", curated=moved)
    with pytest.raises(MedSAMError, match=f"embed --curated {old} --model"):  # nothing given: what was recorded
        open_store(tmp_path / "emb")


def _many_unknown_keys(tmp: Path, ctx=None) -> list[str]:
    (tmp / "run.toml").write_text('curated = "store"\nembeddings = "emb"\nout = "run"\nsteps = 3\n'
                                  + "".join(f"k{i} = 1\n" for i in range(10_000)))
    return ["train", "--config", str(tmp / "run.toml"), "--quiet"]


def _invalid_manifest(tmp: Path, ctx=None) -> list[str]:
    import json

    data = json.loads(_manifest(tmp).read_text(encoding="utf-8"))
    data["name"] = "Bad Name!"
    data["datasets"][0]["title"] = 5
    del data["description"]
    (tmp / "data" / "m.json").write_text(json.dumps(data))
    return ["data", "validate", str(tmp / "data" / "m.json")]


def test_many_unknown_keys_are_counted_not_listed(tmp_path, capfd):
    line = check_bad_input(BadInput("many_unknown_keys", _many_unknown_keys, ("run.toml", "unknown key 'k0'",
                                                                               "(and 9999 more)")), tmp_path, capfd)
    assert "<list" not in line and len(line) < 1000


def test_a_few_unknown_keys_are_named(tmp_path):
    from medsam_lib.training.config import config_from_dict

    with pytest.raises(MedSAMError, match=r"unknown key 'a' \(and 'b', 'c'\)"):
        config_from_dict({"curated": "s", "embeddings": "e", "out": "o", "a": 1, "b": 2, "c": 3})


def test_schema_errors_are_one_line_with_separators(tmp_path, capfd):
    line = check_bad_input(BadInput("invalid_manifest", _invalid_manifest, ("m.json", "not a valid manifest: at ")),
                           tmp_path, capfd)
    assert "\\n" not in line and line.count("; at ") >= 1, line


@pytest.mark.parametrize("top", [1e-310, 1e-320, 1e-40, 1e-300])
def test_subnormal_intensity_range_stays_a_ramp(top):
    """A float image whose values span a subnormal range: windowing must not overflow ((hi - lo) / width
    was inf, the image all black); the ramp stays a monotone ramp over 0..255."""
    from medsam_lib.data.preprocess import normalize_intensity
    from medsam_lib.models.transforms import to_uint8_rgb

    for dtype in (np.float64, np.float32):
        ramp = np.sort(np.linspace(0, top, 1024).astype(dtype)).reshape(32, 32)  # linspace rounds unevenly there
        if not ramp.any():
            continue  # below the dtype's smallest subnormal: all zeros, nothing to check
        rgb = to_uint8_rgb(ramp)
        grey = rgb[..., 0].ravel().astype(int)
        assert rgb.min() == 0 and rgb.max() == 255 and np.all(np.diff(grey) >= 0), (dtype, top)
        for preset in ("paper", "official_code"):
            out = normalize_intensity(ramp, preset=preset).ravel()
            assert np.isfinite(out).all() and out.max() == 255 and np.all(np.diff(out) >= 0), (dtype, top, preset)


def test_original_size_is_bounded(lite_model):
    import torch

    from medsam_lib.models.predictor import MAX_SIDE, BoxPredictor

    predictor = BoxPredictor(lite_model)
    embedding = torch.zeros(1, 256, 64, 64)
    for size in ((10**9, 10**9), (MAX_SIDE + 1, 16), (16, 2**63)):
        with pytest.raises(MedSAMError, match=rf"'original_size'.*from 1 to {MAX_SIDE}"):
            predictor.set_embedding(embedding, size)
    predictor.set_embedding(embedding, (40, 30))  # a valid size still works
    assert predictor.predict([2, 2, 20, 20]).masks.shape == (1, 40, 30)


@pytest.mark.parametrize("model", ["module", 3, b"litemedsam"])
def test_predictor_model_of_another_type_is_named(model):
    import torch

    from medsam_lib.models.predictor import BoxPredictor

    value = torch.nn.Linear(2, 2) if model == "module" else model
    with pytest.raises(MedSAMError, match=r"model: expected a model name .*a checkpoint path .*LoadedModel.*got a "
                                          + type(value).__name__):
        BoxPredictor(value, device="cpu")
