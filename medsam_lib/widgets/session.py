"""Interactive box prompting in Jupyter: the thin widget layer over ``annotations`` and ``events``.

    session = BoxPromptSession("scan.nii.gz", labels=["liver", "tumour"])
    session.view()                       # picture (draw boxes on it) beside the controls
    session.apply_box([40, 30, 90, 80])  # the same path without a browser (papermill): x0, y0, x1, y1
    session.export(folder)               # PNG per label (2D) or NIfTI per label with the source geometry

Each new or changed box is segmented with the image embedding cached by ``BoxPredictor`` (one encoder
pass per image or slice; a box costs one decoder pass) and its mask painted into the picture. Boxes
with zero area or outside the image are dropped with a message; errors never reach the kernel's top
level. Autosaves (``boxes.json``, ``masks.npz``) and the Export button's default folder are the
user's (``layout.user_dir() / <image name>``), never ``results/<profile>/``. A new session on the
same image (same file, same pixels) restores the boxes autosaved there and segments them again; an
autosave of another image is kept aside under a dated name, never replaced.

Embedding runs on a background thread (``embedding.LatestEmbedder``): the slider shows a slice at
once with "embedding slice k…", only the slice it rests on is embedded (a slice passed over while
another is embedding is never embedded; a superseded result is not shown), and a box drawn before
its slice is ready waits, said in the message ("1 box waiting for slice k"), then gets its mask.
``wait()`` blocks until all of that is done; ``apply_box`` and ``export`` wait by themselves.

Volume slices get their pixels from ``preprocess.slice_pixels`` (the window of the whole volume,
paper 3.1), as the CLI and curation do; they are shown one at a time along the first axis. Small
images are enlarged by an integer factor, large ones shrunk by the browser to ``DISPLAY_MAX_PX`` wide.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.preprocess import intensity_window, slice_pixels
from ..data.readers import MedicalImage, read_image
from ..fileio import MedSAMError
from ..layout import user_dir
from ..models.predictor import BoxPredictor
from ..models.transforms import to_uint8_rgb
from ..models.zoo import LoadedModel
from .annotations import AUTOSAVE_BOXES, Annotation, Annotations, image_identity, read_autosave, stem
from .bbox import drawing_widget
from .drawing import DEFAULT_COLORS, draw_tags, encode_png, enlarge, hex_to_rgb, paint
from .embedding import NOTHING, LatestEmbedder
from .events import Display, parse_box, parse_boxes

DISPLAY_MAX_PX = 560  # the picture's widest on screen, so the controls fit beside it
PIXEL_CACHE_SIZE = 64  # slices whose uint8 pixels are kept


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("x") else "s")


class BoxPromptSession:
    """Box prompting on one image or volume, with or without a browser.

    image: a path the readers open, a ``MedicalImage`` or a 2D array. model: a zoo name, a
    ``LoadedModel`` or a ``BoxPredictor``. labels: the classes offered. slice_index: the slice shown
    first (volumes; default the middle one). modality: e.g. "CT" for the CT window. autosave_dir:
    where ``boxes.json`` and ``masks.npz`` are rewritten after every box (default: the user's folder
    for this image, created; ``False``: no autosave; a given folder must exist); the boxes saved
    there by the last session on the same image are restored. background: embed on a background
    thread (False: every embedding in the caller's thread).
    """

    def __init__(self, image: str | os.PathLike | MedicalImage | np.ndarray,
                 model: str | LoadedModel | BoxPredictor = "litemedsam", device: str | None = None,
                 labels: Sequence[str] = ("target",), slice_index: int | None = None,
                 modality: str | None = None, autosave_dir: str | os.PathLike | bool | None = None,
                 display_min_size: int = 512, background: bool = True):
        self.image = self._read(image)
        self.source = self.image.path
        self.modality = modality or self.image.modality
        self.labels = [str(label) for label in labels]
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise MedSAMError(f"labels must be a non-empty list of distinct names, got {list(labels)}")
        self.default_dir = user_dir() / stem(self.source)
        if autosave_dir is None:
            self.default_dir.mkdir(parents=True, exist_ok=True)
        self.autosave_dir = None if autosave_dir is False else Path(autosave_dir or self.default_dir)
        if self.autosave_dir is not None and not self.autosave_dir.is_dir():
            raise MedSAMError(f"autosave folder {self.autosave_dir} does not exist (create it first)")
        self._window = self._check_pixels(self.image, self.modality)
        self.image_size = tuple(self.image.array.shape[1:3] if self.image.is_volume else self.image.array.shape[:2])
        self.display = Display.for_image(self.image_size, display_min_size)
        self.identity = image_identity(self.image)
        restored, restore_notes = self._restorable()
        self.predictor = model if isinstance(model, BoxPredictor) else BoxPredictor(model, device=device)
        self.state = Annotations(self._segment, self.labels, self.image_size, self.image.is_volume)
        self.messages: list[str] = []
        self.received: list[list[dict]] = []  # every box list the widget sent, as sent
        self.rejected: list[str] = []  # why each dropped box was dropped
        self.last_callback_s: float | None = None
        self.restored = sum(map(len, restored.values()))  # boxes restored from the last session's autosave
        self._syncing = False
        self._reported: set[str] = set()
        self._slice_errors: dict[int | None, str] = {}
        self._pixel_cache: dict[int | None, np.ndarray] = {}
        self._base_cache: dict[int | None, np.ndarray] = {}
        self._waiting: dict[int | None, list[tuple]] = dict(restored)  # box lists whose new boxes need their slice
        self._embedded = NOTHING  # the slice whose embedding the predictor holds
        self._predictor_lock = threading.RLock()  # held while the predictor embeds or decodes (then _state_lock)
        self._state_lock = threading.RLock()  # held while boxes, waiting boxes or the picture change
        self._embedder = LatestEmbedder(self._embed, self._embedding_done, background=background)
        self.current_slice: int | None = None
        self._build_widgets()
        if self.image.is_volume and self.image.n_slices == 1:
            self._note(f"{Path(self.source).name}: a volume with one slice; shown as a 2D image, "
                       "exports keep the volume's geometry")
        for note in restore_notes:
            self._note(note)
        start = None
        if self.is_volume:
            start = self.image.n_slices // 2 if slice_index is None else int(slice_index)
            if not 0 <= start < self.image.n_slices:
                raise MedSAMError(f"{self.source}: slice {start} out of range (the volume has "
                                  f"{self.image.n_slices} slices, 0..{self.image.n_slices - 1})")
        elif slice_index is not None and not (self.image.is_volume and int(slice_index) == 0):
            raise MedSAMError(f"{self.source} is a 2D image; slice_index applies to volumes only")
        self._autosave()  # the restored boxes (or none) under this image's identity, before any change
        self.set_slice(start)

    # --- input -----------------------------------------------------------------------------------
    @staticmethod
    def _read(image) -> MedicalImage:
        if isinstance(image, MedicalImage):
            return image
        if isinstance(image, np.ndarray):
            if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
                raise MedSAMError(f"array image: expected (H, W) or (H, W, 3), got shape {image.shape}; "
                                  "pass volumes as a file or a MedicalImage")
            return MedicalImage(array=image, path="array", spacing=(1.0, 1.0), is_volume=False)
        return read_image(image)

    @property
    def is_volume(self) -> bool:
        """True for volumes with more than one slice (a slider is shown)."""
        return self.image.is_volume and self.image.n_slices > 1

    @property
    def display_scale(self) -> int:
        return self.display.scale

    @staticmethod
    def _check_pixels(image: MedicalImage, modality: str | None):
        """The intensity window of a whole volume (paper 3.1; None for 2D images, windowed as a whole)."""
        array = np.asarray(image.array)
        if not image.is_volume:
            to_uint8_rgb(array, modality, image.path)  # a bad 2D image fails here, before the model loads
            return None
        if array.ndim != 3:
            raise MedSAMError(f"{image.path}: expected a (Z, Y, X) volume, got shape {array.shape}")
        if min(array.shape[1:]) < 2:
            raise MedSAMError(f"{image.path}: slices of size {array.shape[1:]} are too small to segment")
        return intensity_window(array, modality, "paper", image.path)

    def _pixels(self, index: int | None) -> np.ndarray:
        """(H, W, 3) uint8: what is shown and embedded for a slice (``preprocess.slice_pixels``)."""
        if index not in self._pixel_cache:
            if self.image.is_volume:
                grey = slice_pixels(self.image.array, index or 0, self.modality, source=self.source,
                                    window=self._window)
                rgb = np.repeat(grey[..., None], 3, axis=2)
            else:
                rgb = to_uint8_rgb(self.image.array, self.modality, self.source)
            while len(self._pixel_cache) >= PIXEL_CACHE_SIZE:
                self._pixel_cache.pop(next(iter(self._pixel_cache)))
            self._pixel_cache[index] = rgb
        return self._pixel_cache[index]

    def _restorable(self) -> tuple[dict[int | None, list[tuple]], list[str]]:
        """The boxes of the last session on this image (autosave), each re-checked; labels it used are added."""
        if self.autosave_dir is None:
            return {}, []
        saved, notes = read_autosave(self.autosave_dir, self.identity)
        out: dict[int | None, list[tuple]] = {}
        for index, boxes in saved.items():
            valid = index is not None and 0 <= index < self.image.n_slices if self.is_volume else index is None
            if not valid:  # the identity matched, so only a hand-edited file gets here
                notes.append(f"autosave: {_plural(len(boxes), 'box')} on slice {index} left out (no such slice)")
                continue
            for box, label in boxes:
                parsed = parse_box(self.display.to_widget(box, label), self.display)
                if parsed.box is None:
                    notes.append(f"autosave: box {list(box)} left out ({parsed.why})")
                    continue
                if label not in self.labels:
                    self.labels.append(label)
                    notes.append(f"autosave: label {label!r} of a restored box added to the labels")
                out.setdefault(index, []).append((parsed.box, label))
        return out, notes

    def _segment(self, slice_index: int | None, box) -> tuple[np.ndarray, float]:
        with self._predictor_lock:
            if self._embedded != slice_index:  # e.g. a restored box on a slice not shown
                self._embed(slice_index)
            result = self.predictor.predict([box])
        return result.masks[0], float(result.scores[0])

    def autosave_summary(self) -> str:
        """Where the autosave is and what was restored from it (one line, for the notebook)."""
        if self.autosave_dir is None:
            return "autosave: off"
        restored = f"; restored {_plural(self.restored, 'box')} of the last session on this image" \
            if self.restored else ""
        return f"autosave: {self.autosave_dir / AUTOSAVE_BOXES} (and masks.npz){restored}"

    # --- widgets ---------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        import ipywidgets as w

        self.widget = drawing_widget(classes=self.labels, colors=list(DEFAULT_COLORS), hide_buttons=True)
        shown_w = self.display.shown_size[1]
        self.widget.layout = w.Layout(width=f"{min(shown_w, DISPLAY_MAX_PX) + 10}px", flex="0 0 auto")
        self.widget.observe(self._on_boxes, names=["bboxes"])
        self.message = w.HTML(value="")
        self.slider = None
        if self.is_volume:
            self.slider = w.IntSlider(min=0, max=self.image.n_slices - 1, description="slice",
                                      continuous_update=False)
            self.slider.observe(self._on_slider, names=["value"])
        self.move_toggle = w.ToggleButton(value=False, description="Move boxes", icon="arrows",
                                          tooltip="on: drag inside a box to move it; off: every drag draws a new box")
        self.move_toggle.observe(self._on_move_toggle, names=["value"])
        self.undo_button = w.Button(description="Undo", tooltip="remove the last box on this slice")
        self.clear_button = w.Button(description="Clear", tooltip="remove every box on this slice")
        self.export_button = w.Button(description="Export", tooltip="write masks to the folder below")
        self.export_dir = w.Text(value=str(self.default_dir), placeholder="folder", description="to folder",
                                 layout=w.Layout(width="98%"))
        self.undo_button.on_click(lambda _: self._guarded(self.undo))
        self.clear_button.on_click(lambda _: self._guarded(self.clear))
        self.export_button.on_click(lambda _: self._guarded(self._export_clicked))

    def _on_move_toggle(self, change) -> None:
        self.widget.move_mode = bool(change["new"])
        self._note("move mode: drag inside a box to move it" if change["new"] else
                   "draw mode: every drag draws a new box, also inside another box")

    def _on_slider(self, change) -> None:
        if not self._syncing:
            self._guarded(self.set_slice, change["new"])

    def view(self):
        """The widget to display: the picture (draw boxes on it) with the controls beside it."""
        import ipywidgets as w

        controls = [self.slider] if self.slider is not None else []
        controls += [w.HBox([self.move_toggle, self.undo_button, self.clear_button]),
                     w.HBox([self.export_button]), self.export_dir, self.message]
        return w.HBox([self.widget, w.VBox(controls, layout=w.Layout(min_width="320px", flex="1 1 auto"))])

    def _note(self, text: str) -> None:
        import html

        self.messages.append(text)
        self.message.value = f"<pre style='margin:0; white-space:pre-wrap'>{html.escape(text)}</pre>"

    def _guarded(self, action, *args):
        """Run a UI action; any error becomes a message in the widget (the kernel keeps running)."""
        try:
            return action(*args)
        except MedSAMError as exc:
            self._note(f"error: {exc}")
        except Exception as exc:  # noqa: BLE001 - a UI callback must never take the kernel's cell down
            self._note(f"unexpected error ({type(exc).__name__}): {exc}")
        return None

    # --- slices and embedding ---------------------------------------------------------------------
    def _where(self, index: int | None) -> str:
        return "the image" if index is None else f"slice {index}"

    def set_slice(self, index: int | None) -> None:
        """Show slice ``index`` (volumes; None for 2D images) with its boxes at once, and embed it in
        the background ("embedding slice k…" until it is ready; see the module docstring)."""
        if index is not None and not self.image.is_volume:
            raise MedSAMError(f"{self.source} is a 2D image; it has no slices")
        if index is not None and not 0 <= index < self.image.n_slices:
            raise MedSAMError(f"{self.source}: slice {index} out of range (0..{self.image.n_slices - 1})")
        with self._state_lock:
            self.current_slice = index
            if self.slider is not None and self.slider.value != index:
                self._syncing = True
                try:
                    self.slider.value = index
                finally:
                    self._syncing = False
            self._note(self._status(index))
            self._sync_boxes()
            self._render()
        self._embedder.request(index)

    def _status(self, index: int | None) -> str:
        """"embedding slice k…", with the boxes waiting for it."""
        text = f"embedding {self._where(index)}…"
        waiting = self._n_waiting(index)
        if waiting:
            text += f"\n{_plural(waiting, 'box')} waiting for {self._where(index)}"
        return text

    def _n_waiting(self, index: int | None) -> int:
        return sum(not self.state.has_mask(index, box) for box, _ in self._waiting.get(index, []))

    def _embed(self, index: int | None) -> None:
        """Give the predictor slice ``index``'s embedding (worker thread; cached ones are immediate)."""
        with self._predictor_lock:
            self._embedded = NOTHING
            self.predictor.set_image(self._pixels(index), source=f"{self.source}" if index is None else
                                     f"{self.source} slice {index}")
            self._embedded = index

    def _embedding_done(self, index: int | None, seconds: float, error: Exception | None, stale: bool) -> None:
        """Called after each embedding (worker thread): a superseded slice is not shown."""
        with self._state_lock:
            if error is None:
                self._slice_errors.pop(index, None)
            else:
                self._slice_errors[index] = (str(error) if isinstance(error, MedSAMError) else
                                             f"unexpected error ({type(error).__name__}): {error}")
        if stale or index != self.current_slice:
            return
        self._guarded(self._slice_ready, index, seconds)
        if error is None:
            self._guarded(self._segment_elsewhere)

    def _slice_ready(self, index: int | None, seconds: float) -> None:
        error = self._slice_errors.get(index)
        if error is not None:
            with self._state_lock:
                dropped = self._waiting.pop(index, [])
                if dropped:
                    self.rejected.append(f"no mask on this slice: {error}")
                    self._sync_boxes()
            self._note(f"error: {error}" + (f"\nignored: {_plural(len(dropped), 'box')} drawn on it" if dropped else ""))
            if dropped:
                self._autosave()
            return
        ready = f"{self._where(index)}: ready ({seconds:.1f} s)"
        with self._predictor_lock, self._state_lock:
            kept = self._waiting.pop(index, None)
            if kept is None:
                self._note(f"{ready}; {_plural(len(self.current), 'box')} on it")
                return
            previous, annotations = self.state.set_boxes(index, kept)
            self._render()
        self._report(previous, annotations, [ready])
        self._autosave()

    def _segment_elsewhere(self) -> None:
        """Segment the boxes waiting on slices not shown (restored ones) while nothing else is asked
        for; the slice shown is embedded again afterwards (from the predictor's cache)."""
        for index in sorted((k for k in list(self._waiting) if k != self.current_slice), key=lambda k: k or 0):
            if self._embedder.pending is not NOTHING:
                return  # the slider moved: that comes first; these wait on
            with self._predictor_lock, self._state_lock:
                kept = self._waiting.get(index)
                if kept is None or index in self._slice_errors:
                    continue
                try:
                    self.state.set_boxes(index, kept)
                except MedSAMError as exc:
                    self._slice_errors[index] = str(exc)
                    self._note(f"error: {_plural(len(kept), 'box')} on {self._where(index)} not segmented: {exc}")
                    continue
                self._waiting.pop(index)
            self._note(f"{self._where(index)}: {_plural(len(kept), 'box')} segmented")
            self._autosave()
        with self._predictor_lock:
            if self._embedded != self.current_slice and self._embedder.pending is NOTHING:
                self._embed(self.current_slice)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no slice is being embedded and no box waits for its slice; False on timeout."""
        return self._embedder.wait(timeout)

    # --- the callback ----------------------------------------------------------------------------
    def _on_boxes(self, change) -> None:
        if self._syncing:
            return
        self._guarded(self._update_boxes, list(change["new"]))

    def _update_boxes(self, raw_boxes: list[dict]) -> None:
        """Every box list the widget sends (see ``events.parse_boxes``)."""
        started = time.perf_counter()
        index = self.current_slice
        self.received.append([dict(b) if isinstance(b, dict) else b for b in raw_boxes])
        parsed = parse_boxes(raw_boxes, self.display, self.labels, self._slice_errors.get(index), self._reported)
        self.rejected.extend(parsed.dropped)
        if parsed.drawing is None and len(parsed.keep_raw) != len(raw_boxes):
            self._set_widget_boxes(parsed.keep_raw)  # no drag under way: take the dropped boxes out
            self._reported.clear()
        notes = ["ignored: " + "; ".join(parsed.dropped)] if parsed.dropped else []
        taken = self._take(index, parsed.kept)
        self.last_callback_s = time.perf_counter() - started
        if taken is None:
            self._note("\n".join([self._status(index), *notes]))
        elif not self._report(*taken, notes=notes) and parsed.drawing is not None:
            s = self.display.scale
            self._note(f"box started at ({float(parsed.drawing.get('x', 0)) / s:.0f}, "
                       f"{float(parsed.drawing.get('y', 0)) / s:.0f}): drag to size it (a click alone draws nothing)")
        self._autosave()

    def _take(self, index: int | None, kept: list[tuple]):
        """Make ``kept`` the boxes of slice ``index`` now (-> (before, after)) when their masks are cached
        or the slice is embedded and the predictor free; else they wait for it (-> None)."""
        with self._state_lock:
            if all(self.state.has_mask(index, box) for box, _ in kept):
                self._waiting.pop(index, None)
                return self._set_boxes(index, kept)
        if self._predictor_lock.acquire(blocking=False):
            try:
                if self._embedded == index and not self._embedder.busy():
                    with self._state_lock:
                        self._waiting.pop(index, None)
                        return self._set_boxes(index, kept)
            finally:
                self._predictor_lock.release()
        with self._state_lock:
            self._waiting[index] = list(kept)
        self._embedder.request(index)  # embedded already: a cached pass, then the boxes are segmented
        return None

    def _set_boxes(self, index: int | None, kept: list[tuple]):
        previous, annotations = self.state.set_boxes(index, kept)
        if [(a.box, a.label) for a in annotations] != [(a.box, a.label) for a in previous]:
            self._render()
        return previous, annotations

    def _report(self, previous: list[Annotation], annotations: list[Annotation], notes=()) -> bool:
        """Say what changed on the slice (the newest box's mask, or the count); False if nothing did."""
        old_keys = {(a.box, a.label) for a in previous}
        fresh = [a for a in annotations if (a.box, a.label) not in old_keys]
        lines = list(notes)
        if fresh:
            a = fresh[-1]
            lines.append(f"box {annotations.index(a) + 1} ({a.label}) at ({', '.join(f'{v:.0f}' for v in a.box)}): "
                         f"{int(a.mask.sum())} pixels, predicted IoU {a.score:.3f}")
        elif [(a.box, a.label) for a in annotations] != [(a.box, a.label) for a in previous]:
            lines.append(f"{len(annotations)} box(es) on this {'slice' if self.is_volume else 'image'}")
        if lines:
            self._note("\n".join(lines))
        return bool(lines)

    # --- drawing ---------------------------------------------------------------------------------
    def _color(self, label: str) -> tuple[int, int, int]:
        colors = list(self.widget.colors) or list(DEFAULT_COLORS)
        return hex_to_rgb(colors[self.labels.index(label) % len(colors)])

    def overlay(self, index: int | None = None, tags: bool = True) -> np.ndarray:
        """(H*s, W*s, 3) uint8: the picture the widget shows for a slice (default: the current one)."""
        index = self.current_slice if index is None else index
        if index not in self._base_cache:
            self._base_cache[index] = enlarge(self._pixels(index), self.display.scale)
        annotations = self.state.on(index)
        colors = [self._color(a.label) for a in annotations]
        picture = paint(self._base_cache[index], [enlarge(a.mask, self.display.scale) for a in annotations], colors)
        if tags and annotations:
            picture = draw_tags(picture, [a.box for a in annotations],
                                [f"{i} {a.label}" for i, a in enumerate(annotations, 1)], colors, self.display.scale)
        return picture

    def _render(self) -> None:
        self.widget.image_bytes = encode_png(self.overlay())

    def _set_widget_boxes(self, boxes: list[dict]) -> None:
        self._syncing = True
        try:
            self.widget.bboxes = boxes
        finally:
            self._syncing = False

    def _boxes_on(self, index: int | None) -> list[tuple]:
        """A slice's boxes as drawn: those waiting for it, else those with masks."""
        waiting = self._waiting.get(index)
        return list(waiting) if waiting is not None else [(a.box, a.label) for a in self.state.on(index)]

    def _sync_boxes(self) -> None:
        """Put the current slice's boxes back into the widget (display pixels), without a callback."""
        self._set_widget_boxes([self.display.to_widget(box, label) for box, label in
                                self._boxes_on(self.current_slice)])

    # --- actions ---------------------------------------------------------------------------------
    @property
    def annotations(self) -> dict[int | None, list[Annotation]]:
        return self.state.by_slice

    @property
    def current(self) -> list[Annotation]:
        """The boxes and masks on the slice shown."""
        return self.state.on(self.current_slice)

    def all_annotations(self) -> list[Annotation]:
        return self.state.all()

    def apply_box(self, box: Sequence[float], label: str | None = None) -> Annotation:
        """Add a box (x0, y0, x1, y1 image pixels, x1/y1 inclusive) as if drawn in the widget.

        Takes exactly the path of a box drawn with the mouse (its edges rounded to whole pixels),
        waiting for the slice's embedding; raises MedSAMError where the widget would drop the box with
        a message. A box already on the slice with that label is not added twice (a rerun of the
        notebook restores it from the autosave).
        """
        self.wait()
        try:
            values = np.asarray(box, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            values = np.array([])
        if values.shape != (4,):
            raise MedSAMError(f"box must be 4 numbers (x0, y0, x1, y1) in image pixels, got {box!r}")
        label = self.labels[0] if label is None else str(label)
        if label not in self.labels:
            raise MedSAMError(f"label {label!r} is not one of {self.labels}")
        x0, y0, x1, y1 = values
        slice_error = self._slice_errors.get(self.current_slice)
        if not np.isfinite(values).all() or x1 <= x0 or y1 <= y0 or slice_error is not None:
            why = (f"no mask on this slice: {slice_error}" if slice_error is not None else
                   f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has zero area or is inverted; need x0 < x1 and y0 < y1")
            self.rejected.append(why)
            self._note(f"ignored: {why}")
            raise MedSAMError(f"{self.source}: {why}")
        raw = self.display.to_widget(values, label)
        same = [a for a in self.current if (a.box, a.label) == (parse_box(raw, self.display).box, label)]
        if same:
            self._note(f"box ({', '.join(f'{v:.0f}' for v in same[0].box)}) {label} is already on this "
                       f"{'slice' if self.is_volume else 'image'}")
            return same[0]
        errors_before, boxes_before = len(self.messages), len(self.current)
        self.widget.bboxes = [*self.widget.bboxes, raw]
        self.wait()
        unexpected = [m for m in self.messages[errors_before:] if m.startswith(("error", "unexpected", "ignored"))]
        if unexpected or len(self.current) != boxes_before + 1:
            detail = unexpected[-1] if unexpected else "see the widget's message"
            raise MedSAMError(f"{self.source}: the box was not segmented ({detail})")
        return self.current[-1]

    def undo(self) -> Annotation | None:
        """Remove the last box drawn on the slice shown; returns it (None when there is none; a box
        still waiting for its slice comes back with an empty mask and a NaN score)."""
        index = self.current_slice
        with self._state_lock:
            waiting = self._waiting.get(index)
            if waiting:
                (box, label), rest = waiting[-1], waiting[:-1]
                self._waiting[index] = rest
                removed = Annotation(box, label, np.zeros(self.image_size, bool), float("nan"), index)
                if all(self.state.has_mask(index, b) for b, _ in rest):
                    self._waiting.pop(index)
                    self.state.set_boxes(index, rest)
            else:
                removed = self.state.undo(index)
            if removed is None:
                self._note("nothing to undo on this " + ("slice" if self.is_volume else "image"))
                return None
            self._sync_boxes()
            self._render()
        self._note(f"undone: box ({', '.join(f'{v:.0f}' for v in removed.box)}) {removed.label}")
        self._autosave()
        return removed

    def clear(self) -> None:
        """Remove every box on the slice shown (also those waiting for it)."""
        with self._state_lock:
            self._waiting.pop(self.current_slice, None)
            self.state.clear(self.current_slice)
            self._sync_boxes()
            self._render()
        self._note("cleared")
        self._autosave()

    def masks_by_label(self) -> dict[str, np.ndarray]:
        """Label -> union of its masks: (H, W) bool for 2D images, (Z, H, W) for volumes."""
        return self.state.masks_by_label(self.image.array.shape[:3] if self.image.is_volume else None)

    def export(self, folder: str | os.PathLike) -> list[Path]:
        """One mask per label into an existing folder (PNG for 2D, NIfTI with the source geometry for
        volumes) and ``<image>_boxes.json`` (integer boxes, ``annotations.BOX_CONVENTION``); every
        file atomically. Boxes still waiting for their slice are segmented first."""
        self.wait()
        self._segment_elsewhere()
        if self._waiting:  # slices that cannot be embedded: the boxes stay in the JSON's "boxes_waiting"
            self._note(f"{_plural(sum(map(len, self._waiting.values())), 'box')} on slices "
                       f"{sorted(self._waiting, key=lambda k: k or 0)} could not be segmented; their masks are not "
                       "exported")
        return self.state.export(Path(folder), stem(self.source), self.image, **self._extra())

    def _export_clicked(self) -> None:
        folder = Path(self.export_dir.value)
        if folder == self.default_dir:
            folder.mkdir(parents=True, exist_ok=True)  # the user's default folder is created on demand
        written = self.export(folder)
        self._note(f"exported to {folder}: " + ", ".join(p.name for p in written))

    def _extra(self) -> dict:
        waiting = [{"box": [int(v) for v in box], "label": label, "slice_index": index}
                   for index, boxes in self._waiting.items() for box, label in boxes]
        return {"image_identity": self.identity, "boxes_waiting": waiting, "source": self.source,
                "display_scale": self.display.scale, "current_slice": self.current_slice,
                "last_boxes_received": self.received[-1] if self.received else [],
                "n_updates": len(self.received), "messages": self.messages[-20:]}

    def _autosave(self) -> None:
        if self.autosave_dir is not None:
            with self._state_lock:
                self.state.autosave(self.autosave_dir, **self._extra())
