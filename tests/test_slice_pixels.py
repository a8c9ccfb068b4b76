"""One intensity rule per volume: the CLI's ``segment``, the widget and curation prompt a slice with the
same uint8 pixels (``preprocess.slice_pixels``: the window of the WHOLE volume, paper 3.1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medsam_lib import cli, widgets
from medsam_lib.data.curate import CuratedDataset, curate
from medsam_lib.data.manifests import manifest_from_dict
from medsam_lib.data.preprocess import resize_image, slice_pixels
from medsam_lib.data.readers import read_image
from medsam_lib.models import predictor as predictor_module
from medsam_lib.models.predictor import BoxPredictor, Prediction


class RecordingPredictor(BoxPredictor):
    """A predictor without a model: it records the pixels it is given and returns the box as the mask."""

    images: list[np.ndarray] = []

    def __init__(self, *args, **kwargs):
        pass

    def set_image(self, image, modality=None, source="image"):
        RecordingPredictor.images.append(np.array(image))
        self._size = np.asarray(image).shape[:2]

    def predict(self, boxes):
        mask = np.zeros(self._size, bool)
        x0, y0, x1, y1 = (int(v) for v in boxes[0])
        mask[y0:y1 + 1, x0:x1 + 1] = True
        return Prediction(masks=mask[None], scores=np.array([0.5]), low_res_logits=torch.zeros(1, 1, 256, 256))


def _volume(kind: str, size: int = 256) -> np.ndarray:
    """A (6, size, size) volume whose slices differ in range: windowing one slice alone gives other pixels."""
    rng = np.random.default_rng(1)
    z, y, x = np.mgrid[:6, :size, :size]
    blob = ((y - size // 2) ** 2 + (x - size // 2) ** 2 < (size // 4) ** 2)
    if kind == "CT":
        return np.where(blob, 40 + 60 * z, -900 + 5 * z).astype(np.int16) + rng.integers(-30, 30, z.shape).astype(np.int16)
    return (blob * (200.0 + 150 * z) + rng.gamma(2.0, 20.0 + 10 * z)).astype(np.float32)


def _cli_pixels(monkeypatch, tmp_path: Path, image: Path, index: int, modality: str) -> np.ndarray:
    RecordingPredictor.images = []
    monkeypatch.setattr(predictor_module, "BoxPredictor", RecordingPredictor)
    rc = cli.main(["segment", "--image", str(image), "--box", "10,10,60,60", "--slice", str(index),
                   "--modality", modality, "--device", "cpu", "--out", str(tmp_path / f"cli_{index}.nii.gz")])
    assert rc == 0 and len(RecordingPredictor.images) == 1
    return RecordingPredictor.images[0]


def _widget_pixels(image: Path, index: int, modality: str) -> np.ndarray:
    RecordingPredictor.images = []
    session = widgets.BoxPromptSession(image, model=RecordingPredictor(), slice_index=index, modality=modality,
                                       autosave_dir=False)
    assert session.wait(60)
    assert len(RecordingPredictor.images) == 1
    return RecordingPredictor.images[0]


def _curated_pixels(tmp_path: Path, root: Path, image: str, mask: str, modality: str, label: int,
                    index: int) -> np.ndarray:
    manifest = manifest_from_dict({
        "schema_version": 1, "name": "one", "description": "test", "data_root": {"kind": "argument"},
        "obtain": {"method": "local", "source_url": "test"},
        "datasets": [{
            "name": "toy", "title": "toy", "modality": modality, "dimensionality": "3D", "citation": "none",
            "license": {"name": "none", "terms": "test data"},
            "images": [{"key": "img", "modality": modality}], "masks": [{"key": "label", "encoding": "label"}],
            "targets": [{"name": "organ", "labels": [label]}],
            "cases": [{"id": "a", "images": {"img": image}, "masks": {"label": mask}}]}]})
    out = tmp_path / f"curated_{modality}"
    curate(manifest, out, root=root, progress=False)
    store = CuratedDataset(out)
    rows = store.index
    row = rows[rows["slice"] == index]
    assert len(row), f"slice {index} was not curated"
    image_256, _ = store.load(row.index[0])
    return image_256


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_cli_widget_and_curation_give_one_slice_the_same_pixels(modality, tmp_path, monkeypatch):
    volume = _volume(modality)
    labels = np.zeros(volume.shape, np.uint8)
    labels[:, 100:160, 100:160] = 1
    for array, name in ((volume, "vol.nii.gz"), (labels, "vol_seg.nii.gz")):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / name))
    index = 4
    expected = slice_pixels(read_image(tmp_path / "vol.nii.gz").array, index, modality)
    if modality == "MR":  # the rule matters here: one slice windowed alone gives other pixels
        alone = slice_pixels(volume[index:index + 1], 0, modality)
        assert (alone != expected).mean() > 0.5
    cli_rgb = _cli_pixels(monkeypatch, tmp_path, tmp_path / "vol.nii.gz", index, modality)
    widget_rgb = _widget_pixels(tmp_path / "vol.nii.gz", index, modality)
    curated = _curated_pixels(tmp_path, tmp_path, "vol.nii.gz", "vol_seg.nii.gz", modality, 1, index)
    assert cli_rgb.dtype == widget_rgb.dtype == curated.dtype == np.uint8
    for rgb in (cli_rgb, widget_rgb, curated):  # 256 x 256 slices: curation's resizing changes nothing
        for channel in range(3):
            np.testing.assert_array_equal(rgb[..., channel], expected)


@pytest.mark.shared
def test_a_real_mr_slice_gets_one_set_of_pixels(shared_data, tmp_path, monkeypatch):
    folder = shared_data / "mr_abdomen_organs"
    image = read_image(folder / "example_mr_sm.nii.gz")
    labels = read_image(folder / "example_seg_mr.nii.gz").array
    label = int(np.unique(labels[labels > 0])[0])
    index = int(np.argmax((labels == label).sum(axis=(1, 2))))
    expected = slice_pixels(image.array, index, "MR")
    assert (slice_pixels(image.array[index:index + 1], 0, "MR") != expected).any()  # the slice alone differs
    cli_rgb = _cli_pixels(monkeypatch, tmp_path, folder / "example_mr_sm.nii.gz", index, "MR")
    widget_rgb = _widget_pixels(folder / "example_mr_sm.nii.gz", index, "MR")
    np.testing.assert_array_equal(cli_rgb[..., 0], expected)
    np.testing.assert_array_equal(widget_rgb[..., 0], expected)
    curated = _curated_pixels(tmp_path, folder, "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "MR", label, index)
    np.testing.assert_array_equal(curated[..., 0], resize_image(expected))
