"""Every bad input to `segment` gives exit code 2, one `error:` line naming the problem, and no file."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medsam_lib.cli import main
from medsam_lib.fileio import MedSAMError
from medsam_lib.models.predictor import BoxPredictor


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _ramp(h=64, w=80) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


def _run(capsys, tmp_path, args, expected):
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["segment", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no partial file
    return err


@pytest.fixture()
def image(tmp_path):
    return _png(tmp_path / "img.png", _ramp())


@pytest.mark.parametrize("box, expected", [
    ("-5,0,20,20", "outside"), ("10,10,81,20", "outside"), ("30,10,10,20", "inverted"),
    ("10,10,10,20", "zero area"), ("nan,0,10,10", "non-finite"), ("inf,0,10,10", "non-finite"),
])
def test_bad_boxes(capsys, tmp_path, image, box, expected):
    _run(capsys, tmp_path, ["--image", str(image), f"--box={box}", "--out", str(tmp_path / "m.png")], expected)


def test_constant_image(capsys, tmp_path):
    img = _png(tmp_path / "flat.png", np.full((40, 40), 7, np.uint8))
    err = _run(capsys, tmp_path, ["--image", str(img), "--box", "1,1,20,20", "--out", str(tmp_path / "m.png")],
               "constant")
    assert "flat.png" in err


def test_nan_intensities(capsys, tmp_path):
    vol = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)
    vol[1, 5, 5] = np.nan
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(path))
    err = _run(capsys, tmp_path, ["--image", str(path), "--box", "1,1,20,20", "--slice", "1",
                                  "--out", str(tmp_path / "m.nii.gz")], "NaN")
    assert "nan.nii.gz" in err


def test_empty_file(capsys, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    err = _run(capsys, tmp_path, ["--image", str(empty), "--box", "1,1,20,20", "--out", str(tmp_path / "m.png")],
               "empty")
    assert "empty.png" in err


def test_truncated_png(capsys, tmp_path, image):
    data = image.read_bytes()
    bad = tmp_path / "cut.png"
    bad.write_bytes(data[: len(data) // 2])
    err = _run(capsys, tmp_path, ["--image", str(bad), "--box", "1,1,20,20", "--out", str(tmp_path / "m.png")],
               "truncated")
    assert "cut.png" in err


def test_truncated_nifti(capsys, tmp_path):
    path = tmp_path / "vol.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(4, 64, 64)).astype(np.float32)),
                    str(path))
    raw = gzip.decompress(path.read_bytes())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(raw[: len(raw) // 3]))
    err = _run(capsys, tmp_path, ["--image", str(cut), "--box", "1,1,20,20", "--out", str(tmp_path / "m.nii.gz")],
               "cut.nii.gz")
    assert "truncated or corrupt" in err


def test_unknown_model(capsys, tmp_path, image):
    err = _run(capsys, tmp_path, ["--image", str(image), "--box", "1,1,20,20", "--model", "vit_z",
                                  "--out", str(tmp_path / "m.png")], "unknown model name 'vit_z'")
    assert "litemedsam" in err


def test_output_in_missing_folder(capsys, tmp_path, image):
    _run(capsys, tmp_path, ["--image", str(image), "--box", "1,1,20,20",
                            "--out", str(tmp_path / "nope" / "m.png")], "does not exist")


def test_slice_out_of_range_and_slice_on_2d(capsys, tmp_path, image):
    path = tmp_path / "vol.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)),
                    str(path))
    _run(capsys, tmp_path, ["--image", str(path), "--box", "1,1,20,20", "--slice", "3",
                            "--out", str(tmp_path / "m.nii.gz")], "slice 3 out of range")
    _run(capsys, tmp_path, ["--image", str(image), "--box", "1,1,20,20", "--slice", "0",
                            "--out", str(tmp_path / "m.png")], "2D image")


def test_checkpoint_hash_mismatch(capsys, tmp_path, image, monkeypatch):
    from medsam_lib.models import zoo

    tampered = tmp_path / "lite_medsam.pth"
    data = bytearray(zoo.bundled_lite_checkpoint().read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "bundled_lite_checkpoint", lambda: tampered)
    _run(capsys, tmp_path, ["--image", str(image), "--box", "1,1,20,20", "--out", str(tmp_path / "m.png")],
         "checksum mismatch")


def test_malformed_box_is_one_line(capsys, tmp_path, image):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "--image", str(image), "--box", "1,2,3", "--out", str(tmp_path / "m.png")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err and "four numbers" in err


def test_success_writes_mask_and_prints_score(capsys, tmp_path, image):
    out = tmp_path / "m.png"
    assert main(["segment", "--image", str(image), "--box", "10,10,60,50", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("score=") and f"mask={out}" in line
    mask = np.array(Image.open(out))
    assert mask.shape == (64, 80) and set(np.unique(mask)) <= {0, 255}
    assert [p.name for p in tmp_path.iterdir() if ".part" in p.name] == []


def test_predict_before_set_image(lite_model):
    with pytest.raises(MedSAMError, match="set_image"):
        BoxPredictor(lite_model).predict([[0, 0, 5, 5]])


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "RGBA", "P"])
def test_2d_image_modes(tmp_path, lite_model, mode):
    base = _ramp()
    if mode == "I;16":
        img = Image.fromarray(base.astype(np.uint16) * 200)
    elif mode == "L":
        img = Image.fromarray(base)
    else:
        img = Image.fromarray(np.stack([base] * 3, -1)).convert(mode)
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    img.save(path)
    from medsam_lib.data.readers import read_image

    array = read_image(path).array
    predictor = BoxPredictor(lite_model)
    predictor.set_image(array)
    assert predictor.predict([[10, 10, 60, 50]]).masks.shape == (1, 64, 80)
