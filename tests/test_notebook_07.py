"""Notebook 07 through papermill with every documented parameter combination, on small inputs.

Each run executes the whole notebook (Run All without a browser): the default case, your image
alone (no mask: the prose calls it optional), your volume with its mask and label values (and the
"auto" corrective click from it), an explicit box with an explicit point, and your own labels and
modality. (The default case, with its box and its "auto" click, is what the committed notebook runs
under nbval.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "07_box_prompting.ipynb"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    import SimpleITK as sitk
    from PIL import Image

    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 40, size=(96, 120), dtype=np.uint8)
    image[30:60, 40:90] += 150
    Image.fromarray(image).save(folder / "photo.png")
    volume = rng.integers(0, 30, size=(3, 64, 64)).astype(np.int16)
    volume[:, 20:40, 18:50] += 400
    labels = np.zeros((3, 64, 64), np.uint8)
    labels[1:, 20:40, 18:50] = 4
    for array, name in ((volume, "scan.nii.gz"), (labels, "scan_mask.nii.gz")):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / name))
    return folder


COMBINATIONS = {
    "image only (no mask)": lambda d: {"image_path": str(d / "photo.png")},
    "image, explicit box, point and labels, no mask": lambda d: {"image_path": str(d / "photo.png"),
                                                               "box": [38, 28, 91, 61], "points": [[60, 45, 1]],
                                                               "labels": ["blob", "other"], "box_label": "blob"},
    "volume with mask, label, modality, slice": lambda d: {"image_path": str(d / "scan.nii.gz"),
                                                          "mask_path": str(d / "scan_mask.nii.gz"), "mask_label": 4,
                                                          "modality": "CT", "slice_index": 2, "box": "from_mask"},
}


@pytest.fixture(autouse=True)
def _own_folders(tmp_path, monkeypatch):
    """Each run its own user folder (a rerun on the same image restores its boxes) and results root (the
    demo profile's results in tmp_path/results/demo); the kernel inherits both."""
    monkeypatch.setenv("MEDSAM_USER_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("MEDSAM_RESULTS_ROOT", str(tmp_path / "results"))


def _run(params: dict, out: Path) -> str:
    import nbformat
    import papermill as pm

    pm.execute_notebook(str(NOTEBOOK), str(out), parameters=params, cwd=str(NOTEBOOK.parent), kernel_name="python3",
                        progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_notebook_07_runs_through(name, inputs, tmp_path):
    results = tmp_path / "results" / "demo"
    params = {"profile": "demo", **COMBINATIONS[name](inputs)}
    text = _run(params, tmp_path / "out.ipynb")
    assert "autosave: " in text and "restored" not in text  # where the autosave is; nothing to restore yet
    table = (results / "tables" / "07_boxes.csv").read_text(encoding="utf-8").splitlines()
    if name == "image only (no mask)":
        assert "draw one in the widget" in text and len(table) == 1  # header only: no box, no error
    else:
        assert len(table) == 2 and (results / "figures" / "07_widget_overlay.png").is_file()
    if "mask_path" in params:
        assert table[1].split(",")[-1] not in ("", None)  # Dice against the reference is filled in
        assert "corrective click" in text and "with the box alone" in text  # points="auto": a click from the reference
    if "points" in params:
        assert "foreground point (60, 45) added" in text and "+(60, 45)" in table[1]
    # the widget's autosave went to the user's folder, not under results/
    assert not list(results.rglob("boxes.json"))


@pytest.mark.slow
def test_a_second_run_all_restores_the_boxes(inputs, tmp_path):
    """Run All twice on the same image: the second session restores the first one's box (from the
    autosave in the user's folder) and the papermill box is not added twice."""
    results = tmp_path / "results" / "demo"
    params = {"profile": "demo", **COMBINATIONS["image, explicit box, point and labels, no mask"](inputs)}
    _run(params, tmp_path / "first.ipynb")
    first = (results / "tables" / "07_boxes.csv").read_text(encoding="utf-8")
    text = _run(params, tmp_path / "second.ipynb")
    assert "restored 1 box of the last session on this image" in text
    assert "already on this image" in text and "already has 1 point(s)" in text  # its point restored, not added again
    assert (results / "tables" / "07_boxes.csv").read_text(encoding="utf-8") == first  # the same one box, not two
