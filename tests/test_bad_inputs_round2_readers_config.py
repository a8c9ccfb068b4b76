"""Bad input, round 2 (issue 16), classes 3, 5 and 7: unbounded input, silent wrong answers in reading
images, unclear errors. Every row: exit code 2, one ``error:`` line naming the file or option and
the problem, no traceback, nothing written (``bad_input_helpers``). Where the rule lives:
- 3: ``training.config.load_config`` (size bound, FIFO, YAML without anchors/aliases) and
  ``fileio.quote`` / ``fileio.one_line`` (bounded values, one-line errors; ``cli.main`` prints);
- 5: ``data.preprocess`` (intensity window in float64, overflow refused), ``data.dicom`` (sizes,
  orientations, duplicate positions), ``data.nifti`` (compression, NIfTI-2, shear, qform vs sform);
- 7: ``evaluation.metrics.as_binary`` ({0, max} is binary), ``check_spacing`` / ``check_tolerance``
  and ``surface.within_tolerance`` (bounded work), ``models.safe_load`` (one checkpoint loader),
  ``training.config`` (every value finite and in range), ``data.splits.check_seed``,
  ``models.transforms.to_uint8_rgb`` (elongated images), ``fileio.atomic_path`` (full disk).
"""
from __future__ import annotations

import functools
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from bad_input_helpers import REPO, BadInput, check_bad_input, run_cli, snapshot, write_dicom_series, write_manifest
from medsam_lib.fileio import MedSAMError, one_line, quote

BOX = ["--box", "4,4,20,20"]


def _seg(image, out, *extra) -> list[str]:
    return ["segment", "--image", str(image), *BOX, "--out", str(out), *extra]


def _nifti(path: Path, array=None, affine=None, qform=None, cls=None) -> Path:
    import nibabel as nib

    array = np.random.default_rng(0).normal(size=(32, 32, 3)).astype(np.float32) if array is None else array
    img = (cls or nib.Nifti1Image)(array, np.eye(4) if affine is None else affine)
    if qform is not None:
        img.set_qform(qform, code=1)
        img.set_sform(np.eye(4), code=1)
    nib.save(img, path)
    return path


def _sheared(path: Path) -> Path:
    affine = np.eye(4)
    affine[0, 1] = 0.5
    return _nifti(path, affine=affine)


def _shifted_qform(path: Path) -> Path:
    q = np.eye(4)
    q[:3, 3] = (100.0, 0.0, 0.0)
    return _nifti(path, qform=q)


def _plain_named_gz(tmp: Path) -> Path:
    _nifti(tmp / "plain.nii")
    (tmp / "plain.nii").rename(tmp / "plain.nii.gz")
    return tmp / "plain.nii.gz"


def _dicom(folder: Path, n: int = 4, z=None, sizes=None, orient=None) -> Path:
    """A CT series of ``n`` slices; ``z``, ``sizes`` and ``orient`` override per slice."""
    return write_dicom_series(folder, [(0, 0, (z or {}).get(i, float(i))) for i in range(n)], sizes, orient)


def _float_tiff(path: Path, low: float, high: float) -> Path:
    Image.fromarray(np.linspace(low, high, 64 * 64, dtype=np.float64).astype(np.float32).reshape(64, 64)).save(path)
    return path


def _train(tmp: Path, text: str, name: str = "run.toml") -> list[str]:
    (tmp / name).write_text(text)
    return ["train", "--config", str(tmp / name), "--quiet"]


_BASE = 'curated = "store"\nembeddings = "emb"\nout = "run"\nsteps = 3\ndevice = "cpu"\n'


def _pair(tmp: Path, pred: np.ndarray, gt: np.ndarray, *extra: str) -> list[str]:
    Image.fromarray(pred).save(tmp / "pred.png")
    Image.fromarray(gt).save(tmp / "gt.png")
    return ["evaluate", "--pred", str(tmp / "pred.png"), "--gt", str(tmp / "gt.png"), *extra]


def _blob(value: int = 1) -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 16:40] = value
    return mask


def _yaml_bomb(tmp: Path, ctx=None) -> list[str]:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    return _train(tmp, "\n".join(lines) + "\n", "bomb.yaml")


def _evil_best_pt(tmp: Path, ctx=None) -> list[str]:
    import torch

    from medsam_lib.models.finetuned import FORMAT

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp / 'PWNED'}",))

    (tmp / "run").mkdir()
    torch.save({"format": FORMAT, "format_version": 1, "x": Evil()}, tmp / "run" / "best.pt")
    return _seg(_png(tmp / "in.png"), tmp / "m.png", "--model", str(tmp / "run" / "best.pt"))


def _png(path: Path) -> Path:
    Image.fromarray((np.arange(64 * 80).reshape(64, 80) % 251).astype(np.uint8)).save(path)
    return path


def _rows() -> list[BadInput]:
    r = []

    def row(name, build, *expect, **kw):
        r.append(BadInput(name, build, tuple(expect), **kw))

    # 3. unbounded input
    row("yaml_nested_aliases", _yaml_bomb, "bomb.yaml", "anchors and aliases are not accepted")
    row("yaml_one_alias", lambda t, c: _train(t, "curated: &s store\nembeddings: *s\nout: run\nsteps: 3\n", "a.yaml"),
        "a.yaml", "line 1")
    row("config_too_large", lambda t, c: _train(t, _BASE + "# " + "x" * (1 << 20) + "\n"), "run.toml", "larger than")
    row("config_is_a_fifo", lambda t, c: (os.mkfifo(t / "f.toml"), ["train", "--config", str(t / "f.toml")])[-1],
        "f.toml", "named pipe", "regular file")
    row("config_long_value_quoted_bounded", lambda t, c: _train(t, _BASE.replace('"cpu"', '"' + "y" * 100_000 + '"')),
        "run.toml", "device", "characters)")

    # 5. silent wrong answers in reading images
    row("dicom_duplicate_position_of_two", lambda t, c: _seg(_dicom(t / "dcm", 2, z={1: 0.0}), t / "m.nii.gz"),
        "dcm", "same position", "s0.dcm", "s1.dcm")
    row("dicom_duplicate_position_among_four", lambda t, c: _seg(_dicom(t / "dcm", 4, z={3: 2.0}), t / "m.nii.gz"),
        "dcm", "same position")
    row("dicom_orientations_differ", lambda t, c: _seg(_dicom(t / "dcm", 3, orient={2: "0\\1\\0\\1\\0\\0"}),
                                                       t / "m.nii.gz"), "dcm", "orientation")
    row("nifti_qform_sform_disagree", lambda t, c: _seg(_shifted_qform(t / "qs.nii.gz"), t / "m.nii.gz"),
        "qs.nii.gz", "qform", "sform", "disagree")
    row("float64_range_overflows", lambda t, c: _seg(_huge_range_nrrd(t / "v.nrrd"), t / "m.nii.gz"),
        "v.nrrd", "too wide to normalise")

    # 7. unclear errors, named
    row("nifti_sheared", lambda t, c: _seg(_sheared(t / "sh.nii.gz"), t / "m.nii.gz"), "sh.nii.gz", "sheared")
    row("nifti2_unsupported", lambda t, c: _seg(_nifti2(t / "n2.nii.gz"), t / "m.nii.gz"), "n2.nii.gz", "NIfTI-2")
    row("nifti_plain_named_gz", lambda t, c: _seg(_plain_named_gz(t), t / "m.nii.gz"), "plain.nii.gz",
        "not gzip-compressed")
    row("dicom_slice_sizes_differ", lambda t, c: _seg(_dicom(t / "dcm", 3, sizes={1: 20}), t / "m.nii.gz"),
        "dcm", "differ in size", "s0.dcm", "s1.dcm")
    row("elongated_png", lambda t, c: (Image.fromarray(np.tile(np.arange(250, dtype=np.uint8), (2, 400))).save(t / "w.png"),
                                       ["segment", "--image", str(t / "w.png"), "--box", "0,0,50,1",
                                        "--out", str(t / "m.png")])[-1], "w.png", "too elongated")
    row("pickled_code_in_best_pt", _evil_best_pt, "best.pt", "posix.system", "would run", model_allowed=True)
    row("spacing_subnormal", lambda t, c: _pair(t, _blob(), _blob(), "--spacing=1e-320,1e-320"), "--spacing", "1e-06")
    row("tolerance_1e19", lambda t, c: _pair(t, _blob(), _blob(), "--tolerance-mm=1e19"), "--tolerance-mm", "beyond")
    row("tolerance_1e10", lambda t, c: _pair(t, _blob(), _blob(), "--tolerance-mm=1e10"), "--tolerance-mm", "beyond")
    row("evaluate_two_foreground_values", lambda t, c: _pair(t, _three_values(), _blob()), "pred.png", "not binary",
        "0/255")
    for key, value, expect in (("lr", "nan", "finite"), ("lr", "inf", "finite"), ("lr", "1e30", "<= 1"),
                               ("val_fraction", "nan", "finite"), ("weight_decay", "nan", "finite"),
                               ("seed", "-1", ">= 0"), ("seed", str(2**63 - 1), "<= 4294967295"),
                               ("batch_size", "100000000000", "<= 65536"), ("steps", "10000000000", "<= ")):
        row(f"train_{key}_{value}", functools.partial(
            lambda t, c, k, v: _train(t, _BASE.replace("steps = 3\n", "") + ("steps = 3\n" if k != "steps" else "")
                                      + f"{k} = {v}\n"), k=key, v=value), "run.toml", f"'{key}'", expect)
    row("curate_seed_negative", lambda t, c: (_manifest(t), ["data", "curate", "--manifest", str(t / "m.json"),
                                                             "--out", str(t / "store"), "--seed", "-1"])[-1],
        "--seed", "-1")
    row("newline_in_file_name", lambda t, c: ((t / "a\nb.png").write_bytes(b"junk"), _seg(t / "a\nb.png", t / "m.png"))[-1],
        "a\\nb.png")
    row("newline_in_manifest_value", lambda t, c: (_manifest(t, name="bad\nname"),
                                                   ["data", "validate", str(t / "m.json")])[-1], "m.json")
    return r


def _three_values() -> np.ndarray:
    mask = _blob(255)
    mask[:4] = 1
    return mask


def _huge_range_nrrd(path: Path) -> Path:
    array = np.zeros((3, 16, 16), np.float64)
    array[:, :8] = -1e308
    array[:, 8:] = 1e308
    image = sitk.GetImageFromArray(array)
    sitk.WriteImage(image, str(path))
    return path


def _nifti2(path: Path) -> Path:
    import nibabel as nib

    return _nifti(path, cls=nib.Nifti2Image)


def _manifest(tmp: Path, name: str = "m") -> Path:
    (tmp / "images").mkdir()
    (tmp / "masks").mkdir()
    _png(tmp / "images" / "a.png")
    Image.fromarray(_blob(255)).save(tmp / "masks" / "a.png")
    return write_manifest(tmp, name, ["a"], file="m.json", dataset="m")


ROWS = _rows()


def test_rows_are_unique():
    assert len({r.name for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input(row, tmp_path, capfd):
    work = tmp_path / "w"
    work.mkdir()
    message = check_bad_input(row, work, capfd)
    assert len(message) < 2100 and "\n" not in message.rstrip("\n")
    assert not (work / "PWNED").exists()


# --- valid inputs that used to be refused or misread ------------------------------------------------

@pytest.mark.parametrize("value", [1, 255, 7])
def test_a_two_valued_mask_is_binary(tmp_path, capfd, value):
    code, out, err = run_cli(_pair(tmp_path, _blob(value), _blob(1)), capfd)
    assert code == 0, err
    assert json.loads(out)["dsc"] == 1.0


def test_float32_range_near_its_limit_is_windowed_in_float64():
    from medsam_lib.data.preprocess import normalize_intensity

    ramp = np.linspace(-3e38, 3e38, 64 * 64).astype(np.float32).reshape(64, 64)
    out = normalize_intensity(ramp)
    assert np.isfinite(out).all() and out.max() == 255.0
    assert (np.diff(out.ravel()) >= 0).all()  # monotone: the brightest quarter is bright, not 0


def test_float64_overflowing_range_is_refused_through_the_api():
    from medsam_lib.models.transforms import to_uint8_rgb

    array = np.zeros((32, 32))
    array[:16], array[16:] = -1e308, 1e308
    with pytest.raises(MedSAMError, match="too wide to normalise"):
        to_uint8_rgb(array, None, "api image")


def test_float_tiff_spanning_float32_segments_the_bright_side(tmp_path, capfd):
    from medsam_lib.data.readers import read_image
    from medsam_lib.models.transforms import to_uint8_rgb

    rgb = to_uint8_rgb(read_image(_float_tiff(tmp_path / "f.tif", -3e38, 3e38)).array)
    assert rgb[-16:].min() > 180  # the brightest quarter stays bright


def test_good_dicom_and_nifti_still_read(tmp_path):
    from medsam_lib.data.readers import read_image

    assert read_image(_dicom(tmp_path / "dcm", 4)).array.shape == (4, 16, 16)
    assert read_image(_dicom(tmp_path / "two", 2)).array.shape == (2, 16, 16)
    assert read_image(_nifti(tmp_path / "ok.nii.gz")).array.shape == (3, 32, 32)
    q = np.eye(4)  # qform and sform both set and equal: read
    assert read_image(_nifti(tmp_path / "same.nii.gz", qform=q)).array.shape == (3, 32, 32)


def test_huge_tolerance_gives_the_same_answer_with_bounded_work():
    from medsam_lib.evaluation.metrics import nsd

    a, b = _blob() > 0, np.roll(_blob() > 0, 10, axis=0)
    assert nsd(a, b, (1.0, 1.0), tolerance_mm=1e5) == 1.0
    assert nsd(a, b, (1.0, 1.0), tolerance_mm=200.0) == nsd(a, b, (1.0, 1.0), tolerance_mm=1e5)


def test_quote_and_one_line_are_bounded():
    assert len(quote("x" * 10**6)) < 120 and "1000002 characters" in quote("x" * 10**6)
    assert quote(list(range(10**6))) == "<list of 1000000 items>"
    assert "\n" not in one_line("a\nb\rc\x00") and len(one_line("y" * 10**6)) < 2100


def test_full_disk_is_a_clear_error_and_nothing_is_left(tmp_path):
    """A file size limit (EFBIG, as a full disk's ENOSPC) while segment writes its mask: exit 2, one
    line naming the output, no temporary file left, the input unchanged."""
    image = _png(tmp_path / "in.png")
    big = np.zeros((600, 600), np.uint8)
    big[::2] = 255
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600)).astype(np.uint8)).save(image)
    before = snapshot(tmp_path)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MEDSAM_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "medsam_lib", "segment", "--image", str(image), "--box",
                           "10,10,500,500", "--out", str(tmp_path / "m.tif"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, env=env, preexec_fn=limit)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "m.tif" in errors[0] and "nothing was written" in errors[0], done.stderr
    assert snapshot(tmp_path) == before
