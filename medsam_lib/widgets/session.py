"""Interactive box prompting in Jupyter: the thin widget layer over ``annotations`` and ``events``.

    session = BoxPromptSession("scan.nii.gz", labels=["liver", "tumour"])
    session.view()                       # picture (draw boxes on it) beside the controls
    session.apply_box([40, 30, 90, 80])  # the same path without a browser (papermill): x0, y0, x1, y1
    session.export(folder)               # PNG per label (2D) or NIfTI per label with the source geometry

Each new or changed box is segmented with the image embedding cached by ``BoxPredictor`` (one encoder
pass per image or slice; a box costs one decoder pass) and its mask painted into the picture. Boxes
with zero area or outside the image are dropped with a message; errors never reach the kernel's top
level. Autosaves (``boxes.json``, ``masks.npz``) and the Export button's default folder are the
user's (``layout.user_dir() / <image name>``), never ``results/<profile>/``. Volumes are normalised
once (paper 3.1) and shown one slice at a time along their first axis; small images are enlarged by
an integer factor, large ones shrunk by the browser to ``DISPLAY_MAX_PX`` wide.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.preprocess import normalize_intensity
from ..data.readers import MedicalImage, read_image
from ..fileio import MedSAMError
from ..layout import user_dir
from ..models.predictor import BoxPredictor
from ..models.transforms import to_uint8_rgb
from ..models.zoo import LoadedModel
from .annotations import Annotation, Annotations, stem
from .bbox import drawing_widget
from .drawing import DEFAULT_COLORS, draw_tags, encode_png, enlarge, hex_to_rgb, paint
from .events import Display, parse_boxes

DISPLAY_MAX_PX = 560  # the picture's widest on screen, so the controls fit beside it


class BoxPromptSession:
    """Box prompting on one image or volume, with or without a browser.

    image: a path the readers open, a ``MedicalImage`` or a 2D array. model: a zoo name, a
    ``LoadedModel`` or a ``BoxPredictor``. labels: the classes offered. slice_index: the slice shown
    first (volumes; default the middle one). modality: e.g. "CT" for the CT window. autosave_dir:
    where ``boxes.json`` and ``masks.npz`` are rewritten after every box (default: the user's folder
    for this image, created; ``False``: no autosave; a given folder must exist).
    """

    def __init__(self, image: str | os.PathLike | MedicalImage | np.ndarray,
                 model: str | LoadedModel | BoxPredictor = "litemedsam", device: str | None = None,
                 labels: Sequence[str] = ("target",), slice_index: int | None = None,
                 modality: str | None = None, autosave_dir: str | os.PathLike | bool | None = None,
                 display_min_size: int = 512):
        self.image = self._read(image)
        self.source = self.image.path
        self.modality = modality or self.image.modality
        self.labels = [str(label) for label in labels]
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise MedSAMError(f"labels must be a non-empty list of distinct names, got {list(labels)}")
        self.predictor = model if isinstance(model, BoxPredictor) else BoxPredictor(model, device=device)
        self.default_dir = user_dir() / stem(self.source)
        if autosave_dir is None:
            self.default_dir.mkdir(parents=True, exist_ok=True)
        self.autosave_dir = None if autosave_dir is False else Path(autosave_dir or self.default_dir)
        if self.autosave_dir is not None and not self.autosave_dir.is_dir():
            raise MedSAMError(f"autosave folder {self.autosave_dir} does not exist (create it first)")
        self._volume = self._normalise(self.image, self.modality)
        self.image_size = tuple(self._volume.shape[1:3])
        self.display = Display.for_image(self.image_size, display_min_size)
        self.state = Annotations(self._segment, self.labels, self.image_size, self.image.is_volume)
        self.messages: list[str] = []
        self.received: list[list[dict]] = []  # every box list the widget sent, as sent
        self.rejected: list[str] = []  # why each dropped box was dropped
        self.last_callback_s: float | None = None
        self._syncing = False
        self._reported: set[str] = set()
        self._slice_error: str | None = None
        self._base_cache: dict[int | None, np.ndarray] = {}
        self.current_slice: int | None = None
        self._build_widgets()
        if self.image.is_volume and self.image.n_slices == 1:
            self._note(f"{Path(self.source).name}: a volume with one slice; shown as a 2D image, "
                       "exports keep the volume's geometry")
        start = None
        if self.is_volume:
            start = self.image.n_slices // 2 if slice_index is None else int(slice_index)
            if not 0 <= start < self.image.n_slices:
                raise MedSAMError(f"{self.source}: slice {start} out of range (the volume has "
                                  f"{self.image.n_slices} slices, 0..{self.image.n_slices - 1})")
        elif slice_index is not None and not (self.image.is_volume and int(slice_index) == 0):
            raise MedSAMError(f"{self.source} is a 2D image; slice_index applies to volumes only")
        self.set_slice(start)
        self._autosave()

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
    def _normalise(image: MedicalImage, modality: str | None) -> np.ndarray:
        """(Z, H, W, 3) uint8: a 2D image as one slice; volumes normalised once, as a whole."""
        array = np.asarray(image.array)
        if not image.is_volume:
            return to_uint8_rgb(array, modality, image.path)[None]
        if array.ndim != 3:
            raise MedSAMError(f"{image.path}: expected a (Z, Y, X) volume, got shape {array.shape}")
        if min(array.shape[1:]) < 2:
            raise MedSAMError(f"{image.path}: slices of size {array.shape[1:]} are too small to segment")
        grey = array if array.dtype == np.uint8 else np.round(normalize_intensity(array, modality, "paper",
                                                                                   image.path)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=3)

    def _segment(self, slice_index: int | None, box) -> tuple[np.ndarray, float]:
        result = self.predictor.predict([box])
        return result.masks[0], float(result.scores[0])

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

    # --- slices ----------------------------------------------------------------------------------
    def set_slice(self, index: int | None) -> None:
        """Show slice ``index`` (volumes; None for 2D images): embed it and restore its boxes.

        The new slice is shown at once, with "embedding slice N..." under it, while it is embedded.
        """
        if index is not None and not self.image.is_volume:
            raise MedSAMError(f"{self.source} is a 2D image; it has no slices")
        if index is not None and not 0 <= index < self.image.n_slices:
            raise MedSAMError(f"{self.source}: slice {index} out of range (0..{self.image.n_slices - 1})")
        self.current_slice = index
        name = self.source if index is None else f"{self.source} slice {index}"
        self._slice_error = None
        if self.slider is not None and self.slider.value != index:
            self._syncing = True
            try:
                self.slider.value = index
            finally:
                self._syncing = False
        if index is not None:
            self._note(f"embedding slice {index}...")
            self._sync_boxes()
            self._render()
        started = time.perf_counter()
        try:
            self.predictor.set_image(self._volume[0 if index is None else index], source=name)
        except MedSAMError as exc:
            self._slice_error = str(exc)
            self._note(f"error: {exc}")
        else:
            if index is not None:
                self._note(f"slice {index}: ready ({time.perf_counter() - started:.1f} s); "
                           f"{len(self.current)} box(es) on it")
        self._sync_boxes()
        self._render()

    # --- the callback ----------------------------------------------------------------------------
    def _on_boxes(self, change) -> None:
        if self._syncing:
            return
        self._guarded(self._update_boxes, list(change["new"]))

    def _update_boxes(self, raw_boxes: list[dict]) -> None:
        """Every box list the widget sends (see ``events.parse_boxes``)."""
        started = time.perf_counter()
        self.received.append([dict(b) if isinstance(b, dict) else b for b in raw_boxes])
        parsed = parse_boxes(raw_boxes, self.display, self.labels, self._slice_error, self._reported)
        self.rejected.extend(parsed.dropped)
        previous, annotations = self.state.set_boxes(self.current_slice, parsed.kept)
        if parsed.drawing is None and len(parsed.keep_raw) != len(raw_boxes):
            self._set_widget_boxes(parsed.keep_raw)  # no drag under way: take the dropped boxes out
            self._reported.clear()
        old_keys = [(a.box, a.label) for a in previous]
        new_keys = [(a.box, a.label) for a in annotations]
        if new_keys != old_keys:
            self._render()
        self.last_callback_s = time.perf_counter() - started
        fresh = [a for a in annotations if (a.box, a.label) not in set(old_keys)]
        notes = []
        if fresh:
            a = fresh[-1]
            notes.append(f"box {annotations.index(a) + 1} ({a.label}) at ({', '.join(f'{v:.0f}' for v in a.box)}): "
                         f"{int(a.mask.sum())} pixels, predicted IoU {a.score:.3f}")
        elif new_keys != old_keys:
            notes.append(f"{len(annotations)} box(es) on this {'slice' if self.is_volume else 'image'}")
        if parsed.dropped:
            notes.append("ignored: " + "; ".join(parsed.dropped))
        if parsed.drawing is not None and not notes:
            s = self.display.scale
            notes.append(f"box started at ({float(parsed.drawing.get('x', 0)) / s:.0f}, "
                         f"{float(parsed.drawing.get('y', 0)) / s:.0f}): drag to size it (a click alone draws nothing)")
        if notes:
            self._note("\n".join(notes))
        self._autosave()

    # --- drawing ---------------------------------------------------------------------------------
    def _color(self, label: str) -> tuple[int, int, int]:
        colors = list(self.widget.colors) or list(DEFAULT_COLORS)
        return hex_to_rgb(colors[self.labels.index(label) % len(colors)])

    def overlay(self, index: int | None = None, tags: bool = True) -> np.ndarray:
        """(H*s, W*s, 3) uint8: the picture the widget shows for a slice (default: the current one)."""
        index = self.current_slice if index is None else index
        if index not in self._base_cache:
            self._base_cache[index] = enlarge(self._volume[0 if index is None else index], self.display.scale)
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

    def _sync_boxes(self) -> None:
        """Put the current slice's boxes back into the widget (display pixels), without a callback."""
        self._set_widget_boxes([self.display.to_widget(a.box, a.label) for a in self.current])

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

        Takes exactly the path of a box drawn with the mouse; raises MedSAMError where the widget
        would drop the box with a message.
        """
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
        if not np.isfinite(values).all() or x1 <= x0 or y1 <= y0 or self._slice_error is not None:
            why = (f"no mask on this slice: {self._slice_error}" if self._slice_error is not None else
                   f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has zero area or is inverted; need x0 < x1 and y0 < y1")
            self.rejected.append(why)
            self._note(f"ignored: {why}")
            raise MedSAMError(f"{self.source}: {why}")
        raw = self.display.to_widget(values, label)
        errors_before, boxes_before = len(self.messages), len(self.current)
        self.widget.bboxes = [*self.widget.bboxes, raw]
        unexpected = [m for m in self.messages[errors_before:] if m.startswith(("error", "unexpected", "ignored"))]
        if unexpected or len(self.current) != boxes_before + 1:
            detail = unexpected[-1] if unexpected else "see the widget's message"
            raise MedSAMError(f"{self.source}: the box was not segmented ({detail})")
        return self.current[-1]

    def undo(self) -> Annotation | None:
        """Remove the last box drawn on the slice shown; returns it (None when there is none)."""
        removed = self.state.undo(self.current_slice)
        if removed is None:
            self._note("nothing to undo on this " + ("slice" if self.is_volume else "image"))
            return None
        self._sync_boxes()
        self._render()
        self._note(f"undone: box ({', '.join(f'{v:.0f}' for v in removed.box)}) {removed.label}")
        self._autosave()
        return removed

    def clear(self) -> None:
        """Remove every box on the slice shown."""
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
        volumes) and ``<image>_boxes.json``; every file atomically."""
        return self.state.export(Path(folder), stem(self.source), self.image, **self._extra())

    def _export_clicked(self) -> None:
        folder = Path(self.export_dir.value)
        if folder == self.default_dir:
            folder.mkdir(parents=True, exist_ok=True)  # the user's default folder is created on demand
        written = self.export(folder)
        self._note(f"exported to {folder}: " + ", ".join(p.name for p in written))

    def _extra(self) -> dict:
        return {"source": self.source, "display_scale": self.display.scale, "current_slice": self.current_slice,
                "last_boxes_received": self.received[-1] if self.received else [],
                "n_updates": len(self.received), "messages": self.messages[-20:]}

    def _autosave(self) -> None:
        if self.autosave_dir is not None:
            self.state.autosave(self.autosave_dir, **self._extra())
