"""The one home of overlays (medsam_lib.figures): boxes drawn around their pixels, zoom, saving."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from medsam_lib import figures  # noqa: E402
from medsam_lib.geometry import enlarge_box  # noqa: E402


def _rendered_box(box, shape=(20, 20)):
    """Draw ``box`` on a black image at 10 screen pixels per image pixel; the screen pixels its outline lights."""
    h, w = shape
    fig = plt.figure(figsize=(w / 10, h / 10), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(np.zeros(shape), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    figures.draw_box(ax, box, colour="white", linewidth=0.72)  # 1 screen pixel
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis("off")
    fig.canvas.draw()
    picture = np.asarray(fig.canvas.buffer_rgba())[..., 0]
    plt.close(fig)
    return picture > 128


def test_drawn_box_covers_pixels_x0_to_x1_inclusive():
    fig, ax = plt.subplots()
    ax.imshow(np.zeros((20, 20)))
    patch = figures.draw_box(ax, (3, 5, 8, 11))
    (left, top), (right, bottom) = patch.get_xy(), (patch.get_x() + patch.get_width(),
                                                   patch.get_y() + patch.get_height())
    plt.close(fig)
    # pixel i spans [i - 0.5, i + 0.5] on imshow: the outline runs along the outer edges of x0 and x1
    assert (left, right) == (2.5, 8.5) and (top, bottom) == (4.5, 11.5)
    for x in range(3, 9):
        assert left < x < right
    assert not left < 9 < right and not left < 2 < right


def test_rendered_box_outlines_the_last_column_and_row():
    drawn = _rendered_box((3, 5, 8, 11))
    cols = np.flatnonzero(drawn.any(axis=0)) / 10  # in image pixels: pixel i spans [i - 0.5, i + 0.5)
    rows = np.flatnonzero(drawn.any(axis=1)) / 10
    # the outline runs along the outer edges of pixels 3..8 and 5..11 (screen 2.5..8.5, 4.5..11.5); a box
    # drawn one pixel short (x1 - x0 wide, from x0) would end at 8.0 / 11.0, inside the last pixel
    assert cols.min() - 0.5 == pytest.approx(2.5, abs=0.15) and cols.max() - 0.5 == pytest.approx(8.5, abs=0.15)
    assert rows.min() - 0.5 == pytest.approx(4.5, abs=0.15) and rows.max() - 0.5 == pytest.approx(11.5, abs=0.15)


def test_zoom_only_for_small_boxes():
    fig, ax = plt.subplots()
    ax.imshow(np.zeros((256, 256)))
    assert figures.zoom_to(ax, (100, 100, 110, 108), (256, 256))
    x0, x1 = ax.get_xlim()
    y1, y0 = ax.get_ylim()
    assert x0 <= 99.5 and x1 >= 110.5 and y0 <= 99.5 and y1 >= 108.5  # the whole box stays in view
    assert x1 - x0 == pytest.approx(48)  # the minimum window for a 11 x 9 px box
    assert not figures.zoom_to(ax, (10, 10, 200, 200), (256, 256))
    corner = figures.zoom_to(ax, (0, 0, 5, 5), (256, 256))
    assert corner and ax.get_xlim()[0] == -0.5  # clipped to the image
    plt.close(fig)


def test_enlarge_box_clips_to_the_image():
    assert enlarge_box((2, 3, 10, 12), 5, (14, 13)).tolist() == [0.0, 0.0, 12.0, 13.0]
    assert enlarge_box((2, 3, 10, 12), 0, (14, 13)).tolist() == [2.0, 3.0, 10.0, 12.0]


def test_save_figure_writes_png_and_closes(tmp_path):
    fig, ax = plt.subplots()
    figures.fill_mask(ax, np.eye(4, dtype=bool), figures.PALETTE[0])
    out = figures.save_figure(fig, tmp_path / "sub" / "f.png", close=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)


class _FakeStore:
    """Two 2D targets on one 64 x 64 image: what worst_cases and the failure figures read."""

    def __init__(self):
        import pandas as pd

        self.index = pd.DataFrame([{"dataset": "d", "volume": "v", "image_key": "k", "slice": 0, "target": t,
                                    "instance": 0} for t in ("big", "tiny")])

    def load_image(self, row):
        image = np.full((64, 64, 3), 60, np.uint8)
        image[10:50, 10:50] = 200
        return image

    def load_label_map(self, row):
        return np.zeros((64, 64), np.uint8)


def _targets():
    from medsam_lib.evaluation.run import PredictedTarget

    big = np.zeros((1, 64, 64), bool)
    big[0, 10:50, 10:50] = True
    tiny = np.zeros((1, 64, 64), bool)
    tiny[0, 30:33, 30:33] = True
    near_miss = np.zeros_like(tiny)
    near_miss[0, 31:34, 31:34] = True  # 4 of 9 pixels overlap: DSC 4/9
    meta = {"dataset": "d", "volume": "v", "image_key": "k", "instance": 0, "task": "", "modality": "CT"}
    return [PredictedTarget({**meta, "target": "big"}, big, big.copy(), 0, {0: np.array([10, 10, 49, 49.0])}),
            PredictedTarget({**meta, "target": "tiny"}, tiny, near_miss, 0, {0: np.array([30, 30, 32, 32.0])})]


def test_failure_cases_only_under_the_threshold_and_their_figure(tmp_path):
    from medsam_lib.evaluation import failures

    cases = failures.worst_cases(_FakeStore(), _targets(), n=6)
    assert [c["meta"]["target"] for c in cases] == ["tiny"]  # the DSC 1.0 target is no failure
    assert cases[0]["dsc"] == pytest.approx(4 / 9) and (cases[0]["failed"], cases[0]["of"]) == (1, 2)
    table = failures.failure_table({"base": cases})
    assert set(table["rule"]) >= {"tiny object"} and (table["DSC"] == round(4 / 9, 3)).all()
    out = failures.plot_failures(cases, tmp_path / "f.png", "test", model="base")
    assert out.read_bytes()[:4] == b"\x89PNG"
    none = failures.plot_failures([], tmp_path / "none.png", "no failures", model="finetuned")
    assert none.is_file()
