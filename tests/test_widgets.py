"""The box-prompting widget without a browser: the kernel side of every mouse event, export, bad input."""
from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsam_lib.data.phantoms import CASES, write_synthetic_set
from medsam_lib.data.readers import read_image
from medsam_lib.fileio import MedSAMError
from medsam_lib.geometry import box_from_mask
from medsam_lib.evaluation import dice
from medsam_lib.models.predictor import BoxPredictor
from medsam_lib import cases, widgets
from medsam_lib.layout import user_dir
from profile_helpers import profile_in

BY_ID = {c.case_id: c for c in CASES}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_set(tmp_path_factory.mktemp("synthetic"), seed=0)


@pytest.fixture(scope="module")
def predictor(lite_model):
    return BoxPredictor(lite_model)


@pytest.fixture(scope="module")
def us_case(synthetic):
    case = BY_ID["synthetic_us_breast"]
    truth = read_image(synthetic / case.mask).array > 0
    return synthetic / case.image, truth, box_from_mask(truth)


@pytest.fixture(autouse=True)
def _own_user_dir(tmp_path, monkeypatch):
    """Each test its own user folder: a session restores the boxes autosaved there for the same image."""
    monkeypatch.setenv("MEDSAM_USER_DIR", str(tmp_path / "user"))


def _ready(*args, **kwargs):
    """A session whose first slice is embedded (the widget embeds on a background thread)."""
    session = widgets.BoxPromptSession(*args, **kwargs)
    assert session.wait(120)
    return session


def _drag(session, box, label=None, existing=()):
    """What the widget sends for one drag over a box's pixels (x1/y1 inclusive): a zero-size box on
    mouse down, the full list on release (rectangle edges in display pixels); then the mask is waited for."""
    label = label or session.labels[0]
    full = session.display.to_widget(box, label)
    session.widget.bboxes = [*existing, {**full, "width": 0, "height": 0}]
    session.widget.bboxes = [*existing, full]
    assert session.wait(120)
    return full


def _decoded(session):
    return np.array(Image.open(io.BytesIO(session.widget.image_bytes)).convert("RGB"))


def test_drag_gives_mask_overlay_and_autosave(us_case, predictor, tmp_path):
    path, truth, box = us_case
    session = _ready(path, model=predictor, labels=["lesion", "other"], autosave_dir=tmp_path)
    assert session.display_scale == 2  # a 256-pixel image is shown at 512
    before = _decoded(session)
    assert before.shape == (512, 512, 3)
    _drag(session, box)
    assert len(session.current) == 1
    annotation = session.current[0]
    assert annotation.box == tuple(float(v) for v in box)
    assert dice(annotation.mask, truth) >= 0.8
    assert "predicted IoU" in session.message.value
    # the picture the widget shows changed exactly where the (enlarged) mask is
    shown = _decoded(session)
    untagged = session.overlay(tags=False)
    changed = np.any(untagged != before, axis=2)
    assert np.array_equal(changed, annotation.mask.repeat(2, 0).repeat(2, 1))
    # ... plus the box's label tag, painted inside its top-left corner
    tag = np.argwhere(np.any(shown != untagged, axis=2))
    assert len(tag) and (tag.min(0) >= np.array([box[1], box[0]]) * 2).all()
    assert (tag.max(0) - tag.min(0) < [30, 80]).all()
    # autosave: what the kernel received and the mask
    state = json.loads((tmp_path / "boxes.json").read_text(encoding="utf-8"))
    assert state["annotations"][0]["box"] == [float(v) for v in box]
    assert state["last_boxes_received"][0]["width"] == (box[2] - box[0] + 1) * 2  # edges: one pixel wider
    assert "integer pixel indices" in state["box_convention"] and "x1/y1 inclusive" in state["box_convention"]
    masks = np.load(tmp_path / "masks.npz")["masks"]
    assert masks.shape == (1, *truth.shape) and np.array_equal(masks[0], annotation.mask)


def test_click_without_drag_is_ignored_with_a_message(us_case, predictor):
    path, truth, box = us_case
    session = _ready(path, model=predictor, labels=["lesion"])
    first = _drag(session, box)
    click = {"x": 20, "y": 30, "width": 0, "height": 0, "label": "lesion"}
    session.widget.bboxes = [first, click]  # mouse down: may become a drag
    assert len(session.current) == 1 and not session.rejected
    assert "drag to size it" in session.message.value
    # mouse up without moving sends the same list: no change, no callback. The next drag shows it was a click.
    session.widget.bboxes = [first, click, {"x": 100, "y": 100, "width": 0, "height": 0, "label": "lesion"}]
    assert "zero area" in session.message.value and "ignored" in session.message.value
    assert len(session.widget.bboxes) == 3  # nothing is taken out of the widget while a drag is under way
    second = {"x": 100, "y": 100, "width": 150, "height": 140, "label": "lesion"}
    session.widget.bboxes = [first, click, second]  # release: the click is not reported twice
    assert len(session.current) == 2 and session.rejected.count(session.rejected[0]) == 1
    assert "box 2" in session.message.value
    assert session.widget.bboxes == [first, second]  # the empty box is taken out of the picture
    session.widget.bboxes = [first]  # the widget's x on a box removes it
    assert len(session.current) == 1 and "1 box(es)" in session.message.value


def test_boxes_outside_or_malformed_are_ignored_and_partial_ones_clipped(us_case, predictor):
    path, truth, box = us_case
    session = _ready(path, model=predictor, labels=["lesion"])
    outside = {"x": 600, "y": 10, "width": 50, "height": 50, "label": "lesion"}  # display px; image is 512 wide
    session.widget.bboxes = [outside]
    assert not session.current and "outside the image" in session.message.value
    session.widget.bboxes = [{"x": "left", "y": 1}]
    assert not session.current and "not of the form" in session.message.value
    session.widget.bboxes = [{"x": 400, "y": 400, "width": 200, "height": 200, "label": "lesion"}]
    assert session.current[0].box == (200.0, 200.0, 255.0, 255.0)  # clipped to the last pixel
    with pytest.raises(MedSAMError, match="zero area"):
        session.apply_box([5, 5, 5, 40])
    with pytest.raises(MedSAMError, match="outside"):
        session.apply_box([300, 300, 400, 400])
    with pytest.raises(MedSAMError, match="not one of"):
        session.apply_box(box, "liver")
    with pytest.raises(MedSAMError, match="4 numbers"):
        session.apply_box([1, 2, 3])
    assert len(session.current) == 1


def test_several_boxes_labels_cache_and_undo(us_case, predictor):
    path, truth, box = us_case
    session = _ready(path, model=predictor, labels=["lesion", "background"])
    calls = []
    original = session.predictor.predict
    session.predictor.predict = lambda boxes: calls.append(boxes) or original(boxes)
    try:
        a = session.apply_box(box, "lesion")
        b = session.apply_box([5, 5, 60, 50], "background")
        assert len(calls) == 2  # the first box was not decoded again
        assert [x.label for x in session.current] == ["lesion", "background"]
        colours = {tuple(_decoded(session)[int(y) * 2, int(x) * 2]) for x, y in
                   (np.argwhere(a.mask & ~b.mask)[0][::-1], np.argwhere(b.mask & ~a.mask)[0][::-1])}
        assert len(colours) == 2  # each label in its own colour
        by_label = session.masks_by_label()
        assert set(by_label) == {"lesion", "background"} and np.array_equal(by_label["lesion"], a.mask)
        removed = session.undo()
        assert removed.label == "background" and len(session.current) == 1
        assert len(session.widget.bboxes) == 1 and session.widget.bboxes[0]["label"] == "lesion"
        assert len(calls) == 2  # undo re-draws from the cache
        session.undo()
        assert session.undo() is None and "nothing to undo" in session.message.value
        assert np.array_equal(_decoded(session), session.overlay())
    finally:
        session.predictor.predict = original


def test_export_png_and_bad_folders(us_case, predictor, tmp_path):
    path, truth, box = us_case
    session = _ready(path, model=predictor, labels=["lesion"])
    with pytest.raises(MedSAMError, match="nothing to export"):
        session.export(tmp_path)
    session.apply_box(box)
    missing = tmp_path / "no" / "such"
    with pytest.raises(MedSAMError, match="does not exist"):
        session.export(missing)
    assert not missing.exists()
    # the button shows the error instead of raising
    session.export_dir.value = str(missing)
    session.export_button.click()
    assert "does not exist" in session.message.value
    session.export_dir.value = str(tmp_path)
    session.export_button.click()
    assert "exported" in session.message.value
    png = tmp_path / "synthetic_us_breast_lesion.png"
    written = np.array(Image.open(png))
    assert set(np.unique(written)) == {0, 255}
    assert np.array_equal(written > 0, session.current[0].mask)
    boxes = json.loads((tmp_path / "synthetic_us_breast_boxes.json").read_text(encoding="utf-8"))
    assert boxes["annotations"][0]["label"] == "lesion"
    assert not list(tmp_path.glob("*.part*"))


def test_volume_slices_and_nifti_export_keep_geometry(synthetic, predictor, tmp_path):
    case = BY_ID["synthetic_ct_abdomen"]
    labels = read_image(synthetic / case.mask).array
    session = _ready(synthetic / case.image, model=predictor, labels=["liver", "kidney"],
                                       modality="CT", slice_index=3)
    assert session.is_volume and session.slider is not None and session.slider.value == 3
    assert session.display_scale == 4  # 128 -> 512
    liver3 = np.isin(labels[3], (1, 2))
    x0, y0, x1, y1 = box_from_mask(liver3)
    _drag(session, [x0, y0, x1, y1])
    assert session.current[0].slice_index == 3
    assert dice(session.current[0].mask, liver3) >= 0.8
    session.slider.value = 7  # the slider moves to another slice: its own (empty) box list
    assert session.current_slice == 7 and session.current == [] and session.widget.bboxes == []
    kidney7 = labels[7] == 3
    kx0, ky0, kx1, ky1 = box_from_mask(kidney7)
    session.apply_box([kx0, ky0, kx1, ky1], "kidney")
    session.slider.value = 3  # back: the box of slice 3 is shown again
    assert len(session.widget.bboxes) == 1 and session.widget.bboxes[0]["x"] == x0 * 4
    written = session.export(tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["synthetic_ct_abdomen_boxes.json", "synthetic_ct_abdomen_kidney.nii.gz",
                     "synthetic_ct_abdomen_liver.nii.gz"]
    source = read_image(synthetic / case.image)
    liver = read_image(tmp_path / "synthetic_ct_abdomen_liver.nii.gz")
    assert liver.array.shape == source.array.shape
    assert liver.spacing == pytest.approx(source.spacing) and liver.origin == pytest.approx(source.origin)
    assert liver.direction == pytest.approx(source.direction)
    assert liver.array[3].sum() > 0 and liver.array.sum() == liver.array[3].sum()
    kidney = read_image(tmp_path / "synthetic_ct_abdomen_kidney.nii.gz").array
    assert dice(kidney[7] > 0, kidney7) >= 0.7 and kidney.sum() == kidney[7].sum()
    with pytest.raises(MedSAMError, match="out of range"):
        session.set_slice(12)


def test_bad_inputs(tmp_path, predictor, synthetic):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(MedSAMError, match="broken.png"):
        widgets.BoxPromptSession(broken, model=predictor)
    with pytest.raises(MedSAMError, match="no such file"):
        widgets.BoxPromptSession(tmp_path / "missing.nii.gz", model=predictor)
    with pytest.raises(MedSAMError, match="out of range"):
        widgets.BoxPromptSession(synthetic / BY_ID["synthetic_ct_abdomen"].image, model=predictor, slice_index=40)
    with pytest.raises(MedSAMError, match="2D image"):
        widgets.BoxPromptSession(synthetic / BY_ID["synthetic_us_breast"].image, model=predictor, slice_index=2)
    with pytest.raises(MedSAMError, match="autosave folder"):
        widgets.BoxPromptSession(synthetic / BY_ID["synthetic_us_breast"].image, model=predictor,
                                 autosave_dir=tmp_path / "nope")
    with pytest.raises(MedSAMError, match="distinct"):
        widgets.BoxPromptSession(synthetic / BY_ID["synthetic_us_breast"].image, model=predictor, labels=["a", "a"])


def test_one_slice_volume_and_constant_slice(tmp_path, predictor):
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    volume = np.zeros((1, 64, 80), np.int16)
    volume[0, 20:44, 25:60] = 300
    volume[0] += rng.integers(0, 20, size=(64, 80)).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.7, 0.7, 5.0))
    image.SetOrigin((10.0, -4.0, 2.5))
    path = tmp_path / "one_slice.nii.gz"
    sitk.WriteImage(image, str(path))
    session = _ready(path, model=predictor, labels=["block"])
    assert not session.is_volume and session.slider is None and "one slice" in session.messages[0]
    session.apply_box([22, 18, 63, 46])
    assert dice(session.current[0].mask, volume[0] > 150) >= 0.8
    written = session.export(tmp_path)
    out = read_image(written[0])
    assert written[0].name == "one_slice_block.nii.gz"
    assert out.array.shape == (1, 64, 80) and out.origin == pytest.approx((10.0, -4.0, 2.5))
    assert out.spacing == pytest.approx((5.0, 0.7, 0.7))

    two = np.zeros((2, 32, 32), np.int16)
    two[1, 8:20, 8:20] = 500
    path2 = tmp_path / "two.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(two), str(path2))
    session = _ready(path2, model=predictor, slice_index=0, modality="CT")
    assert "constant" in session.message.value  # slice 0 is all zeros: said, not raised
    session.widget.bboxes = [{"x": 10, "y": 10, "width": 100, "height": 100, "label": "target"}]
    assert not session.current and "no mask on this slice" in session.message.value
    session.slider.value = 1
    session.apply_box([6, 6, 22, 22])
    assert session.current[0].slice_index == 1


def test_resolve_case_and_box(tmp_path, synthetic):
    case = cases.prompting_case(profile_in(tmp_path))
    assert case.synthetic and case.image_path.name == "synthetic_ct_abdomen.nii.gz" and case.modality == "CT"
    labels = read_image(case.mask_path).array
    assert case.slice_index == int(np.argmax(np.isin(labels, (1, 2)).sum(axis=(1, 2))))
    box, _ = widgets.resolve_box("from_mask", case, case.slice_index)
    assert box.tolist() == box_from_mask(np.isin(labels[case.slice_index], (1, 2))).tolist()  # as it is
    assert widgets.resolve_box("auto", case, case.slice_index)[0].tolist() == box.tolist()
    assert widgets.resolve_box(None, case, 3)[0] is None
    assert widgets.resolve_box([1, 2, 3, 4], case, 3)[0].tolist() == [1, 2, 3, 4]
    with pytest.raises(MedSAMError, match="from_mask"):
        widgets.resolve_box("mask", case, 3)
    us = synthetic / BY_ID["synthetic_us_breast"].image
    own = cases.prompting_case(profile_in(tmp_path), image_path=us)
    assert own.labels == ["target", "other"] and own.mask_path is None
    with pytest.raises(MedSAMError, match="needs a reference mask"):
        widgets.resolve_box("from_mask", own, None)
    none, why = widgets.resolve_box("auto", own, None)  # image_path alone: the default runs through
    assert none is None and "draw one" in why
    with pytest.raises(MedSAMError, match="without image_path"):
        cases.prompting_case(profile_in(tmp_path), mask_path=us)
    with pytest.raises(MedSAMError, match="data_source"):
        cases.prompting_case(profile_in(tmp_path, data_source="cloud"))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a volume")
    with pytest.raises(MedSAMError, match="bad.nii.gz"):
        cases.prompting_case(profile_in(tmp_path), image_path=bad)


def test_summary_table_scores_target_boxes(us_case, predictor, synthetic):
    path, truth, box = us_case
    case = cases.prompting_case(profile_in(synthetic.parent), image_path=path,
                                mask_path=synthetic / BY_ID["synthetic_us_breast"].mask, labels=["lesion", "other"])
    session = _ready(path, model=predictor, labels=case.labels)
    session.apply_box(box, "lesion")
    session.apply_box([5, 5, 40, 40], "other")
    table = widgets.summary_table(session, case)
    assert list(table["label"]) == ["lesion", "other"]
    assert table["Dice vs reference"][0] == pytest.approx(dice(session.current[0].mask, truth), abs=1e-3)
    assert pd.isna(table["Dice vs reference"][1])  # "other" is not the reference's target


@pytest.mark.shared
def test_real_ultrasound_box_with_jitter(shared_data, predictor):
    """A person's box is never exact: a few pixels off, the carotid mask still matches (the browser test's case)."""
    image = shared_data / "us_carotid_artery" / "images" / "202201121815070032VAS_slice_470.png"
    truth = read_image(shared_data / "us_carotid_artery" / "masks" / image.name).array > 0
    session = _ready(image, model=predictor, labels=["artery"])
    x0, y0, x1, y1 = box_from_mask(truth)
    rng = np.random.default_rng(0)
    for _ in range(4):
        jitter = rng.integers(-3, 4, size=4)
        a = session.apply_box(np.array([x0, y0, x1, y1]) + jitter)
        assert dice(a.mask, truth) >= 0.85


# --- the pure layers: state, events, tags; the first-contact details -----------------------------

def test_annotation_state_without_widgets(tmp_path):
    calls = []

    def segment(slice_index, box, points):
        calls.append((slice_index, box, points))
        mask = np.zeros((20, 30), bool)
        x0, y0, x1, y1 = (int(v) for v in box)
        mask[y0:y1 + 1, x0:x1 + 1] = True  # the box's pixels, x1/y1 inclusive
        return mask, 0.5

    state = widgets.Annotations(segment, ["organ", "lesion"], (20, 30), is_volume=False)
    state.set_boxes(None, [((2, 3, 20, 15), "organ"), ((5, 6, 9, 10), "lesion")])  # a box inside a box
    assert [a.label for a in state.on(None)] == ["organ", "lesion"] and int(state.on(None)[1].mask.sum()) == 25
    state.set_boxes(None, [((2, 3, 20, 15), "organ")])
    assert len(calls) == 2  # cached: the organ box was not segmented again
    assert state.undo(None).label == "organ" and state.undo(None) is None
    state.set_boxes(None, [((2, 3, 20, 15), "organ")])
    state.autosave(tmp_path, source="x")
    assert json.loads((tmp_path / "boxes.json").read_text(encoding="utf-8"))["annotations"][0]["box"] == [2, 3, 20, 15]
    with pytest.raises(MedSAMError, match="not one of"):
        state.annotate(None, (1, 1, 4, 4), "bone")
    assert state.clear(None) == 1 and state.all() == []
    # points: segmented with their box, cached per (box, points), following a box moved in place
    state.set_boxes(None, [((2, 3, 20, 15), "organ"), ((5, 6, 9, 10), "lesion")])
    before, after = state.set_points(None, 1, [(7, 8, 1), (25, 4, 0)])
    assert before.points == () and after.points == ((7, 8, 1), (25, 4, 0))
    assert calls[-1] == (None, (5.0, 6.0, 9.0, 10.0), ((7, 8, 1), (25, 4, 0)))
    assert state.on(None)[1].points == after.points and state.on(None)[0].points == ()
    n = len(calls)
    state.set_points(None, 1, [])
    state.set_points(None, 1, [(7, 8, 1), (25, 4, 0)])
    assert len(calls) == n  # both masks were cached
    state.set_boxes(None, [((2, 3, 20, 15), "organ"), ((6, 6, 10, 10), "lesion")])  # the lesion box moved
    assert state.on(None)[1].points == ((7, 8, 1), (25, 4, 0)) and calls[-1][2] == ((7, 8, 1), (25, 4, 0))
    back = [((2, 3, 20, 15), "organ"), ((5, 6, 9, 10), "lesion")]
    assert state.cached(None, back)  # moved back, its points with it: that mask is cached
    assert not state.cached(None, [((2, 3, 20, 15), "organ"), ((5, 7, 9, 10), "lesion")])  # moved elsewhere
    for bad, match in (((30, 4, 1), "outside the image"), ((-1, 4, 1), "outside the image"),
                       ((3.5, 4, 1), "whole pixel indices"), ((3, 4, 2), "label 2"), ((3, 4), "not \\(x, y, label\\)")):
        with pytest.raises(MedSAMError, match=match):
            state.set_points(None, 0, [bad])
    assert state.on(None)[0].points == ()  # a refused point changes nothing
    with pytest.raises(MedSAMError, match="no box 3"):
        state.set_points(None, 2, [(1, 1, 1)])
    assert state.undo(None).points == ((7, 8, 1), (25, 4, 0)) and state.points == {}  # its points went with it


def test_widget_events_parse_into_inclusive_boxes():
    display = widgets.Display.for_image((100, 200), 512)
    assert display.scale == 3
    raw = display.to_widget((10, 20, 29, 39), "a")
    assert raw == {"x": 30.0, "y": 60.0, "width": 60.0, "height": 60.0, "label": "a"}
    assert widgets.parse_box(raw, display).box == (10.0, 20.0, 29.0, 39.0)  # round trip
    assert widgets.parse_box({**raw, "width": 2}, display).kind == "small"
    parsed = widgets.parse_boxes([raw, {**raw, "x": 45, "width": 9, "label": "a"},
                                  {"x": 5, "y": 5, "width": 0, "height": 0, "label": "a"}], display, ["a"])
    assert [b for b, _ in parsed.kept] == [(10.0, 20.0, 29.0, 39.0), (15.0, 20.0, 17.0, 39.0)]
    assert parsed.drawing is not None and not parsed.dropped  # the last one is being dragged


def test_label_tags_never_overlap():
    from medsam_lib.widgets.drawing import place_tags

    rects = [(10, 10, 200, 200), (10, 10, 60, 60), (12, 11, 50, 40), (300, 5, 320, 30)]
    sizes = [(50, 16)] * 4
    corners = place_tags(rects, sizes, (256, 330))
    tags = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, sizes)]
    for i, a in enumerate(tags):
        assert 0 <= a[0] and a[2] <= 330 and 0 <= a[1] and a[3] <= 256
        for b in tags[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_autosave_and_export_default_to_the_user_folder(us_case, predictor, tmp_path):
    path, truth, box = us_case
    session = _ready(path, model=predictor, labels=["lesion"])
    assert session.autosave_dir == user_dir() / "synthetic_us_breast" and session.autosave_dir.is_dir()
    assert "results" not in session.autosave_dir.parts
    session.apply_box(box)
    assert (session.autosave_dir / "boxes.json").is_file()
    assert session.export_dir.value == str(session.autosave_dir)
    session.export_button.click()
    assert (session.autosave_dir / "synthetic_us_breast_lesion.png").is_file(), session.message.value
    off = _ready(path, model=predictor, autosave_dir=False)
    assert off.autosave_dir is None


def test_move_toggle_large_images_and_the_slider_message(synthetic, predictor):
    from medsam_lib.widgets.bbox import CSS

    big = np.random.default_rng(0).integers(0, 255, size=(950, 850), dtype=np.uint8)
    session = _ready(big, model=predictor, autosave_dir=False)
    assert session.display_scale == 1 and session.widget.layout.width == f"{widgets.DISPLAY_MAX_PX + 10}px"
    assert session.widget.draws_inside_boxes and "pointer-events: none" in session.widget._css and CSS
    assert "__medsam_stock" in session.widget._esm and not session.widget.move_mode
    session.move_toggle.value = True
    assert session.widget.move_mode and "move mode" in session.message.value
    case = BY_ID["synthetic_ct_abdomen"]
    volume = _ready(synthetic / case.image, model=predictor, modality="CT", autosave_dir=False)
    seen = []
    original = volume.predictor.set_image
    volume.predictor.set_image = lambda *a, **k: seen.append(volume.message.value) or original(*a, **k)
    try:
        volume.slider.value = 2
        assert volume.wait(120)
    finally:
        volume.predictor.set_image = original
    assert "embedding slice 2…" in seen[0]  # said while the slice is embedded
    assert "slice 2: ready" in volume.message.value


# --- waiting made visible, boxes never lost, whole-pixel boxes (a slow fake encoder, no model) ---------

class GatedPredictor(BoxPredictor):
    """A predictor without a model: ``set_image`` waits for ``gate`` (a slow encoder) and records the
    slice; ``predict`` returns the box's pixels as the mask, with a 5 x 5 square added around each
    foreground point and taken out around each background point, and ``score`` as the predicted IoU."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.started: list[str] = []
        self.decoded: list[list] = []
        self.prompted: list[tuple] = []  # (box, points, labels) of every call with points
        self.score = 0.75

    def set_image(self, image, modality=None, source="image"):
        self.started.append(source)
        assert self.gate.wait(60)
        self._size = np.asarray(image).shape[:2]

    def predict(self, boxes, points=None, labels=None):
        import torch
        from medsam_lib.models.predictor import Prediction

        self.decoded.append([list(b) for b in boxes])
        mask = np.zeros(self._size, bool)
        x0, y0, x1, y1 = (int(v) for v in boxes[0])
        mask[y0:y1 + 1, x0:x1 + 1] = True
        if points is not None:
            self.prompted.append((list(boxes[0]), [list(p) for p in points[0]], list(labels[0])))
            for (x, y), label in zip(points[0], labels[0]):
                mask[max(0, y - 2):y + 3, max(0, x - 2):x + 3] = bool(label)
        return Prediction(masks=mask[None], scores=np.array([self.score]), low_res_logits=torch.zeros(1, 1, 256, 256))


def _box_mask(shape, box, points=()):
    """The fake's mask, computed here: the box's pixels, +/- a 5 x 5 square per foreground/background point."""
    mask = np.zeros(shape, bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    mask[y0:y1 + 1, x0:x1 + 1] = True
    for x, y, label in points:
        mask[max(0, y - 2):y + 3, max(0, x - 2):x + 3] = bool(label)
    return mask


@pytest.fixture
def small_volume(tmp_path):
    import SimpleITK as sitk

    volume = np.random.default_rng(0).normal(100, 30, size=(12, 40, 48)).astype(np.float32)
    path = tmp_path / "images" / "scan.nii.gz"
    path.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(path))
    return path


def _until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_slider_embeds_only_the_slice_it_rests_on_and_boxes_wait_visibly(small_volume):
    fake = GatedPredictor()
    fake.gate.clear()  # the encoder is slow: nothing finishes until the gate opens
    session = widgets.BoxPromptSession(small_volume, model=fake, slice_index=1)
    _until(lambda: len(fake.started) == 1)
    assert "embedding slice 1…" in session.message.value
    for k in range(2, 10):  # the slider is dragged quickly across eight slices
        session.slider.value = k
        assert session.current_slice == k and f"embedding slice {k}…" in session.message.value
    _drag_raw = session.display.to_widget((10, 8, 30, 25), "target")
    session.widget.bboxes = [_drag_raw]  # a box drawn before slice 9 is ready
    assert session.current == [] and "1 box waiting for slice 9" in session.message.value
    saved = json.loads((session.autosave_dir / "boxes.json").read_text(encoding="utf-8"))
    assert saved["boxes_waiting"] == [{"box": [10, 8, 30, 25], "label": "target", "slice_index": 9,  # never lost
                                       "points": [], "point_labels": []}]
    fake.gate.set()
    assert session.wait(30)
    assert fake.started == [f"{small_volume} slice 1", f"{small_volume} slice 9"]  # 2..8 never embedded
    assert not any("slice 1: ready" in m for m in session.messages)  # the superseded result is not shown
    assert "slice 9: ready" in session.message.value and "box 1 (target)" in session.message.value
    assert [a.box for a in session.current] == [(10.0, 8.0, 30.0, 25.0)] and session.current[0].slice_index == 9
    assert json.loads((session.autosave_dir / "boxes.json").read_text(encoding="utf-8"))["boxes_waiting"] == []
    # back to a slice embedded before: its boxes are shown at once, then it is embedded again (cached)
    session.slider.value = 1
    assert session.wait(30) and "slice 1: ready" in session.message.value


def test_a_second_session_on_the_same_image_restores_the_boxes(small_volume, tmp_path):
    fake = GatedPredictor()
    first = _ready(small_volume, model=fake, slice_index=2, labels=["liver", "kidney"])
    print(first.autosave_summary())
    first.apply_box([5, 6, 20, 22], "liver")
    first.slider.value = 7
    first.apply_box([12, 10, 30, 33], "kidney")
    first.slider.value = 3
    fake.gate.clear()
    first.widget.bboxes = [first.display.to_widget((2, 2, 9, 9), "liver")]  # waits: slice 3 is still embedding
    assert "1 box waiting for slice 3" in first.message.value
    drawn = {(2, (5.0, 6.0, 20.0, 22.0), "liver"), (7, (12.0, 10.0, 30.0, 33.0), "kidney"),
             (3, (2.0, 2.0, 9.0, 9.0), "liver")}
    # Run All again before slice 3 was ready: the new session, on the same image, restores all three
    fake.gate.set()
    first.wait(30)
    second = _ready(small_volume, model=fake, slice_index=7, labels=["liver"])
    assert second.restored == 3 and "restored 3 box(es)" in second.messages[0]
    assert "kidney" in second.labels  # a label of a restored box is offered again
    assert {(a.slice_index, a.box, a.label) for a in second.all_annotations()} == drawn
    assert "boxes.json" in second.autosave_summary() and "restored 3 boxes" in second.autosave_summary()
    assert len(second.widget.bboxes) == 1 and second.widget.bboxes[0]["label"] == "kidney"
    assert len(json.loads((second.autosave_dir / "boxes.json").read_text(encoding="utf-8"))["annotations"]) == 3
    # the same file name elsewhere is another image: its autosave is kept aside, not restored or replaced
    import SimpleITK as sitk

    other = tmp_path / "other" / "scan.nii.gz"
    other.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 40, 48), np.float32) * np.arange(48)), str(other))
    third = _ready(other, model=fake)
    assert third.restored == 0 and third.all_annotations() == [] and "another image" in third.messages[0]
    kept = sorted(third.autosave_dir.glob("boxes.*.json"))
    assert len(kept) == 1 and len(json.loads(kept[0].read_text(encoding="utf-8"))["annotations"]) == 3
    assert len(list(third.autosave_dir.glob("masks.*.npz"))) == 1
    fourth = _ready(small_volume, model=fake)  # and back: the volume's boxes are in the kept file, not here
    assert fourth.restored == 0 and len(list(fourth.autosave_dir.glob("boxes.*.json"))) == 2


def test_autosave_writes_are_atomic(small_volume, monkeypatch):
    session = _ready(small_volume, model=GatedPredictor())
    session.apply_box([5, 6, 20, 22])
    folder = session.autosave_dir
    before = {name: (folder / name).read_bytes() for name in ("boxes.json", "masks.npz")}

    def crash(path, **arrays):  # the process dies half-way through writing the masks
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", crash)
    session.widget.bboxes = [*session.widget.bboxes, session.display.to_widget((22, 20, 40, 35), "target")]
    assert session.wait(30) and len(session.current) == 2  # the box got its mask; only the autosave failed
    assert "error" in session.message.value and "nothing was written" in session.message.value
    assert {name: (folder / name).read_bytes() for name in before} == before  # the last good autosave is whole
    assert not list(folder.glob(".*part*"))


def test_exported_boxes_are_integer_pixel_indices(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, size=(100, 120), dtype=np.uint8)
    session = _ready(image, model=GatedPredictor(), autosave_dir=tmp_path)
    assert session.display_scale == 5
    # a drag between pixel boundaries: edges 17.5, 29.75 .. 37.7, 45.27 in image pixels
    session.widget.bboxes = [{"x": 87.5, "y": 148.75, "width": 101.0, "height": 77.6, "label": "target"}]
    assert session.wait(30)
    assert session.current[0].box == (18.0, 30.0, 37.0, 44.0)  # edges to the nearest boundary, x1/y1 inclusive
    assert session.predictor.decoded[-1] == [[18.0, 30.0, 37.0, 44.0]]  # the box segmented is the box exported
    written = session.export(tmp_path)
    exported = json.loads(written[-1].read_text(encoding="utf-8"))
    box = exported["annotations"][0]["box"]
    assert box == [18, 30, 37, 44] and all(isinstance(v, int) for v in box)
    assert "integer pixel indices" in exported["box_convention"] and "inclusive" in exported["box_convention"]
    assert int(np.array(Image.open(written[0])).astype(bool).sum()) == (37 - 18 + 1) * (44 - 30 + 1)


def test_a_box_drawn_while_its_slice_embeds_needs_no_second_embedding(small_volume):
    """The slider rests on slice 5 and a box is drawn while 5 embeds: the box waits for that one
    embedding; the pass that then segments it reuses the slice the predictor holds (no second
    ``set_image``: a cached one still recomputes the decoder's image terms, 0.1-0.3 s on 2 cores)."""
    fake = GatedPredictor()
    session = _ready(small_volume, model=fake, slice_index=1, autosave_dir=False)
    fake.gate.clear()
    session.slider.set_state({"value": 5})  # the slider's release, as the browser's comm message delivers it
    _until(lambda: fake.started[-1] == f"{small_volume} slice 5")  # under way
    session.widget.bboxes = [session.display.to_widget((10, 8, 30, 25), "target")]
    assert "1 box waiting for slice 5" in session.message.value
    fake.gate.set()
    assert session.wait(30)
    assert fake.started == [f"{small_volume} slice 1", f"{small_volume} slice 5"]  # slice 5 embedded once
    assert [a.box for a in session.current] == [(10.0, 8.0, 30.0, 25.0)] and session.current[0].mask.sum() == 21 * 18
    assert fake.decoded == [[[10.0, 8.0, 30.0, 25.0]]]
    assert "slice 5: ready" in session.message.value and "1 box on it" in session.message.value


def test_pictures_of_slices_shown_are_cached_within_bounds(small_volume, monkeypatch):
    """Scrolling through a volume keeps at most ``PIXEL_CACHE_SIZE`` slices' pixels and enlarged pictures
    (not one per slice ever shown); a slice shown again after leaving the cache gets the same picture."""
    import SimpleITK as sitk
    from medsam_lib.data.preprocess import slice_pixels
    from medsam_lib.widgets import pixels

    monkeypatch.setattr(pixels, "PIXEL_CACHE_SIZE", 3)
    session = _ready(small_volume, model=GatedPredictor(), slice_index=0, autosave_dir=False)
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(small_volume)))
    first = session.overlay(0)
    for k in range(1, 12):
        session.slider.set_state({"value": k})
        assert session.wait(30)
        grey = slice_pixels(volume, k, None)  # independent: the one rule for a slice, then enlarged
        expected = np.repeat(np.repeat(np.repeat(grey[..., None], 3, axis=2), session.display.scale, axis=0),
                             session.display.scale, axis=1)
        assert np.array_equal(_decoded(session), expected)
        assert len(session._pixels._cache) <= 3 and len(session._pixels._shown) <= 3
    session.slider.set_state({"value": 0})
    assert session.wait(30) and np.array_equal(session.overlay(0), first)


# --- points refining the selected box; the quality flag (issue 19) --------------------------------------

def _click(session, x, y):
    """What the front end sends for a click in point mode: a custom comm message with the clicked place in
    display pixels (the pixel's centre here), through ipywidgets' own entry point for front-end messages."""
    s = session.display.scale
    content = {"type": "point", "x": (x + 0.5) * s, "y": (y + 0.5) * s}
    session.widget._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


def test_points_refine_the_selected_box_are_drawn_saved_and_removable(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, size=(60, 80), dtype=np.uint8)
    fake = GatedPredictor()
    session = _ready(image, model=fake, labels=["organ", "lesion"], autosave_dir=tmp_path)
    organ, lesion = (10.0, 8.0, 50.0, 40.0), (30.0, 20.0, 45.0, 35.0)
    session.apply_box(organ, "organ")
    session.apply_box(lesion, "lesion")
    assert session.selected == 1 and session.box_select.value == 1  # points go to the newest box
    assert [o[0] for o in session.box_select.options] == ["1 organ: IoU 0.75 ok", "2 lesion: IoU 0.75 ok"]
    session.widget.selected_index = 1  # a box's handle pressed in the widget chooses it too
    assert session.selected == 1 and "points go to box 2 (lesion)" in session.message.value
    session.widget.selected_index = 2  # a box still being drawn (not segmented yet): no change
    assert session.selected == 1
    session.box_select.value = 0  # the person picks the organ in the list
    assert session.selected == 0 and "points go to box 1 (organ)" in session.message.value
    # a foreground point from the API, then a background click in the widget (point mode)
    a = session.add_point(60, 12, 1)
    assert fake.prompted[-1] == ([10.0, 8.0, 50.0, 40.0], [[60, 12]], [1])  # the box and its point, together
    assert a.points == ((60, 12, 1),) and np.array_equal(a.mask, _box_mask(image.shape, organ, a.points))
    assert "foreground point (60, 12) added" in session.message.value
    session.click_mode.value = "background"
    assert session.widget.point_mode and "background point mode" in session.message.value
    _click(session, 20, 15)
    organ_now = session.current[0]
    assert organ_now.points == ((60, 12, 1), (20, 15, 0))
    assert fake.prompted[-1] == ([10.0, 8.0, 50.0, 40.0], [[60, 12], [20, 15]], [1, 0])
    assert np.array_equal(organ_now.mask, _box_mask(image.shape, organ, organ_now.points))
    assert session.current[1].points == () and "points +1 \u22121" in session.box_select.options[0][0]
    # drawn: a green disc (foreground) and a red one (background), off their white + / - strokes
    s = session.display.scale
    picture = session.overlay()
    for (x, y, label), color in (((60, 12, 1), (0, 170, 0)), ((20, 15, 0), (220, 30, 30))):
        cx, cy = int((x + 0.5) * s), int((y + 0.5) * s)
        assert tuple(picture[cy + 3, cx + 3]) == color, (x, y, picture[cy + 3, cx + 3])
    assert np.array_equal(session.overlay(tags=False), widgets.paint(
        session._pixels.shown(None, s), [m.repeat(s, 0).repeat(s, 1) for m in (organ_now.mask, session.current[1].mask)],
        [widgets.hex_to_rgb(c) for c in widgets.drawing.DEFAULT_COLORS[:2]]))
    # autosaved with the box: points, their labels, the quality word; the mask with the points
    saved = json.loads((tmp_path / "boxes.json").read_text(encoding="utf-8"))
    first = saved["annotations"][0]
    assert first["points"] == [[60, 12], [20, 15]] and first["point_labels"] == [1, 0] and first["quality"] == "ok"
    assert saved["annotations"][1]["points"] == [] and "point_labels" in saved["point_convention"]
    assert np.array_equal(np.load(tmp_path / "masks.npz")["masks"][0], organ_now.mask)
    # clicks that cannot be points say why; nothing changes
    _click(session, 500, 5)
    assert "ignored" in session.message.value and "outside the image" in session.message.value
    session.click_mode.value = "box"
    assert not session.widget.point_mode
    _click(session, 20, 20)
    assert "ignored" in session.message.value and len(session.current[0].points) == 2
    # undo the last point, clear them: the masks come from the cache (no model pass)
    calls = len(fake.decoded)
    assert session.undo_point().points == ((60, 12, 1),) and "last point removed" in session.message.value
    assert np.array_equal(session.current[0].mask, a.mask)
    assert session.clear_points().points == ()
    assert np.array_equal(session.current[0].mask, _box_mask(image.shape, organ))
    assert len(fake.decoded) == calls
    assert session.undo_point() is None and "no points to remove" in session.message.value
    assert json.loads((tmp_path / "boxes.json").read_text(encoding="utf-8"))["annotations"][0]["points"] == []
    # bad points: errors naming the problem
    with pytest.raises(MedSAMError, match="outside the image"):
        session.add_point(80, 10)
    with pytest.raises(MedSAMError, match="label 2"):
        session.add_point(5, 5, 2)
    with pytest.raises(MedSAMError, match="no box 5"):
        session.add_point(5, 5, box=5)
    session.clear()
    with pytest.raises(MedSAMError, match="draw a box first"):
        session.add_point(5, 5)


def test_points_follow_a_moved_box_and_are_restored_from_old_and_new_autosaves(tmp_path):
    image = np.random.default_rng(1).integers(0, 255, size=(60, 80), dtype=np.uint8)
    fake = GatedPredictor()
    session = _ready(image, model=fake, labels=["organ"], autosave_dir=tmp_path)
    session.apply_box((10, 8, 50, 40))
    session.apply_box((55, 5, 70, 20))
    session.add_point(30, 20, 1, box=0)
    session.add_point(60, 10, 0, box=1)
    # box 1 moved in the widget (move mode): its points go with it; box 2 keeps its own
    moved = dict(session.widget.bboxes[0])
    moved["x"] += 4 * session.display.scale
    session.widget.bboxes = [moved, session.widget.bboxes[1]]
    assert session.wait(30)
    assert session.current[0].box == (14.0, 8.0, 54.0, 40.0) and session.current[0].points == ((30, 20, 1),)
    assert fake.prompted[-1] == ([14.0, 8.0, 54.0, 40.0], [[30, 20]], [1])
    assert session.current[1].points == ((60, 10, 0),)
    # a second session on the same image restores the boxes with their points, and segments them with them
    again = _ready(image, model=GatedPredictor(), labels=["organ"], autosave_dir=tmp_path)
    assert [(a.box, a.points) for a in again.current] == [((14.0, 8.0, 54.0, 40.0), ((30, 20, 1),)),
                                                          ((55.0, 5.0, 70.0, 20.0), ((60, 10, 0),))]
    assert np.array_equal(again.current[0].mask, _box_mask(image.shape, (14, 8, 54, 40), ((30, 20, 1),)))
    # an autosave written before points existed (no "points" keys) still restores its boxes, without points
    saved = json.loads((tmp_path / "boxes.json").read_text(encoding="utf-8"))
    for entry in saved["annotations"]:
        del entry["points"], entry["point_labels"], entry["quality"]
    del saved["point_convention"]
    (tmp_path / "boxes.json").write_text(json.dumps(saved), encoding="utf-8")
    old = _ready(image, model=GatedPredictor(), labels=["organ"], autosave_dir=tmp_path)
    assert old.restored == 2 and [a.points for a in old.current] == [(), ()]
    assert not list(tmp_path.glob("boxes.*.json"))  # read, not kept aside
    # a hand-edited point outside the image is left out with a message; the box is restored
    saved["annotations"][0].update(points=[[30, 20], [500, 3]], point_labels=[1, 1])
    (tmp_path / "boxes.json").write_text(json.dumps(saved), encoding="utf-8")
    edited = _ready(image, model=GatedPredictor(), labels=["organ"], autosave_dir=tmp_path)
    assert edited.current[0].points == ((30, 20, 1),)
    assert any("point of box" in m and "outside the image" in m for m in edited.messages)
    # the box removed (the widget's x): its points go with it
    edited.widget.bboxes = edited.widget.bboxes[1:]
    assert [a.box for a in edited.current] == [(55.0, 5.0, 70.0, 20.0)] and edited.state.points == {}


def test_quality_flag_per_box_in_the_message_list_and_table(tmp_path):
    image = np.random.default_rng(2).integers(0, 255, size=(60, 80), dtype=np.uint8)
    fake = GatedPredictor()
    session = _ready(image, model=fake, autosave_dir=tmp_path)
    session.apply_box((10, 8, 50, 40))
    assert "predicted IoU 0.750, quality ok" in session.message.value
    fake.score = 0.5  # under 0.7 / 1.3 = 0.538: the model's own estimate says the mask is likely wrong
    session.apply_box((55, 5, 70, 20))
    assert "quality likely-wrong" in session.message.value and "0.538" in session.message.value
    assert session.box_select.options[1][0] == "2 target: IoU 0.50 likely-wrong"
    table = widgets.summary_table(session)
    assert list(table["quality"]) == ["ok", "likely-wrong"] and list(table["points"]) == ["", ""]
    fake.score = 0.9  # a point raises the estimate: the flag follows the box's new mask
    session.add_point(60, 10, 1)
    assert "quality ok" in session.message.value and widgets.summary_table(session)["points"][1] == "+(60, 10)"
    saved = json.loads((tmp_path / "boxes.json").read_text(encoding="utf-8"))
    assert [a["quality"] for a in saved["annotations"]] == ["ok", "ok"]


def test_a_point_gives_the_models_box_and_point_mask(us_case, predictor):
    """The session's mask for a box and a point is the model's own for that prompt, computed here; on this
    phantom a foreground click in the largest part the box's mask missed brings the mask closer to the truth."""
    path, truth, box = us_case
    session = _ready(path, model=predictor, labels=["lesion"])
    x0, y0, x1, y1 = box
    first = session.apply_box([x0, y0, x1, y1])
    missed = truth & ~first.mask
    from medsam_lib.prompts import deepest_point

    x, y = (int(v) for v in deepest_point(missed if missed.sum() >= 10 else truth))
    refined = session.add_point(x, y, 1)
    predictor.set_image(session._pixels(None))
    expected = predictor.predict([box], points=[[[x, y]]], labels=[[1]])
    assert np.array_equal(refined.mask, expected.masks[0]) and refined.score == pytest.approx(float(expected.scores[0]))
    assert dice(refined.mask, truth) > dice(first.mask, truth) + 0.01


def test_resolve_points_for_the_papermill_box(us_case, predictor, synthetic):
    from scipy import ndimage

    path, truth, box = us_case
    case = cases.prompting_case(profile_in(synthetic.parent), image_path=path,
                                mask_path=synthetic / BY_ID["synthetic_us_breast"].mask, labels=["lesion", "other"])
    session = _ready(path, model=predictor, labels=case.labels)
    a = session.apply_box(box, "lesion")
    assert widgets.resolve_points(None, case, a)[0] == []
    points, where = widgets.resolve_points("auto", case, a)
    regions = []  # the error regions, computed here: 4-connected missed (label 1) and wrongly included (0) parts
    for label, wrong in ((1, truth & ~a.mask), (0, a.mask & ~truth)):
        components, n = ndimage.label(wrong)
        regions += [(int((components == k).sum()), label, components == k) for k in range(1, n + 1)]
    size, label, region = max(regions, key=lambda r: (r[0], r[1]))
    (x, y, got_label), = points
    assert region[y, x] and got_label == label and "corrective click" in where
    assert widgets.resolve_points([[3, 4, 0]], case, a) == ([(3, 4, 0)], "the points given")
    with pytest.raises(MedSAMError, match="outside the image"):
        widgets.resolve_points([[3, 999, 1]], case, a)
    with pytest.raises(MedSAMError, match="points must be"):
        widgets.resolve_points("everywhere", case, a)
    other = session.apply_box([5, 5, 40, 40], "other")
    assert widgets.resolve_points("auto", case, other)[0] == []  # no reference for this label
    refined = session.add_point(x, y, got_label, box=0)
    assert widgets.resolve_points("auto", case, refined) == ([], "the box already has 1 point(s) (restored from "
                                                                 "the autosave): none added")
    assert widgets.resolve_points("auto", case, None)[0] == []
