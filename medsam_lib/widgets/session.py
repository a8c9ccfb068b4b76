"""Interactive box prompting in Jupyter: ``BoxPromptSession``, over ``annotations`` and ``events``.

    session = BoxPromptSession("scan.nii.gz", labels=["liver", "tumour"])
    session.view()                       # picture (draw boxes on it) beside the controls
    session.apply_box([40, 30, 90, 80])  # the same path without a browser (papermill): x0, y0, x1, y1
    session.add_point(60, 50, label=1)   # a foreground click refining the selected box (0: background)
    session.undo_point(); session.clear_points()
    session.export(folder)               # PNG per label (2D) or NIfTI per label with the source geometry

Each new or changed box is segmented with the image embedding cached by ``BoxPredictor`` (one encoder
pass per image or slice; a box costs one decoder pass) and its mask painted into the picture, with the
quality flag of its predicted IoU (``models.quality``: "likely-wrong" under the IoU of a DSC-0.7 mask).
Points refine the selected box (the newest drawn, or the one picked in the box list or in the widget):
in *+ point* / *- point* mode a click on the picture adds a foreground / background point, and the box
is segmented again with all its points (SAM's box + point prompt, ``BoxPredictor.predict``). Boxes
with zero area or outside the image are dropped with a message; errors never reach the kernel's top
level. Volume slices are shown one at a time along the first axis.

This module holds the session's making, the widget's box and point callbacks and the box and point
actions (``apply_box``, ``undo``, ``clear``, ``select_box``, ``add_point``, ``undo_point``,
``clear_points``); its other parts each have their own module: ``pixels`` (the input read, checked
and its slices' pixels), ``slices`` (the background slice embedding and the boxes waiting for their
slice; ``apply_box``, ``add_point`` and ``export`` wait by themselves), ``saving`` (autosave, restore,
export) and ``controls`` (the ipywidgets and the picture).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.readers import MedicalImage
from ..fileio import MedSAMError
from ..layout import user_dir
from ..models.predictor import BoxPredictor
from ..models.quality import QUALITY_IOU_THRESHOLD, QUALITY_LIKELY_WRONG
from ..models.zoo import LoadedModel
from .annotations import Annotation, Annotations, image_identity, stem
from .controls import DISPLAY_MAX_PX, Controls
from .events import Display, parse_box, parse_boxes, plural
from .pixels import SlicePixels, read_input
from .saving import Saving
from .slices import SliceQueue

__all__ = ["BoxPromptSession", "DISPLAY_MAX_PX"]


class BoxPromptSession(SliceQueue, Saving, Controls):
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
        self.image = read_input(image)
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
        self._pixels = SlicePixels(self.image, self.modality)  # checks the image, before the model loads
        self.image_size = tuple(self.image.array.shape[1:3] if self.image.is_volume else self.image.array.shape[:2])
        self.display = Display.for_image(self.image_size, display_min_size)
        self.identity = image_identity(self.image)
        restored, restored_points, restore_notes = self._restorable()
        self.predictor = model if isinstance(model, BoxPredictor) else BoxPredictor(model, device=device)
        self.state = Annotations(self._segment, self.labels, self.image_size, self.image.is_volume)
        self.state.points.update(restored_points)
        self.selected: int | None = None  # the box on the slice shown that points go to (its position in current)
        self.messages: list[str] = []
        self.received: list[list[dict]] = []  # every box list the widget sent, as sent
        self.rejected: list[str] = []  # why each dropped box was dropped
        self.last_callback_s: float | None = None
        self.restored = sum(map(len, restored.values()))  # boxes restored from the last session's autosave
        self._syncing = False
        self._reported: set[str] = set()
        self._init_queue(restored, background)
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

    @property
    def is_volume(self) -> bool:
        """True for volumes with more than one slice (a slider is shown)."""
        return self.image.is_volume and self.image.n_slices > 1

    @property
    def display_scale(self) -> int:
        return self.display.scale

    # --- the slice shown --------------------------------------------------------------------------
    def set_slice(self, index: int | None) -> None:
        """Show slice ``index`` (volumes; None for 2D images) with its boxes at once, and embed it in
        the background ("embedding slice k…" until it is ready; see ``slices``)."""
        if index is not None and not self.image.is_volume:
            raise MedSAMError(f"{self.source} is a 2D image; it has no slices")
        if index is not None and not 0 <= index < self.image.n_slices:
            raise MedSAMError(f"{self.source}: slice {index} out of range (0..{self.image.n_slices - 1})")
        with self._state_lock:
            self.current_slice = index
            self.selected = None  # points go to the newest box of the slice shown
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
            if a.slice_index == self.current_slice:
                self.select_box(annotations.index(a), quiet=True)
            lines.append(f"box {annotations.index(a) + 1} ({a.label}) at ({', '.join(f'{v:.0f}' for v in a.box)}): "
                         f"{int(a.mask.sum())} pixels, {_quality(a)}")
        elif [(a.box, a.label) for a in annotations] != [(a.box, a.label) for a in previous]:
            lines.append(f"{len(annotations)} box(es) on this {'slice' if self.is_volume else 'image'}")
        if lines:
            self._note("\n".join(lines))
        return bool(lines)

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
        notebook restores it from the autosave). The box returned becomes the selected one (``add_point``'s).
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
            self.select_box([(a.box, a.label) for a in self.current].index((same[0].box, label)), quiet=True)
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
                if self.state.cached(index, rest):
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

    # --- points -----------------------------------------------------------------------------------
    def select_box(self, position: int, quiet: bool = False) -> Annotation:
        """Make box ``position`` of the slice shown (0: its first; the tags count from 1) the one points go to."""
        current = self.current
        if not isinstance(position, (int, np.integer)) or not 0 <= position < len(current):
            raise MedSAMError(f"no box {position!r} to select: {plural(len(current), 'box')} on this "
                              f"{'slice' if self.is_volume else 'image'} (0..{len(current) - 1})")
        self.selected = int(position)
        self._list_boxes()
        a = current[self.selected]
        if not quiet:
            self._note(f"points go to box {self.selected + 1} ({a.label}): {_points_text(a)}")
        return a

    def add_point(self, x: float, y: float, label: int = 1, box: int | None = None) -> Annotation:
        """Add a point at pixel (x, y) of the image (column, row indices), ``label`` 1 (foreground: part of the
        target) or 0 (background), to a box on the slice shown (``box``: its position in ``current``; default
        the selected box, the newest drawn unless another was picked) and segment the box with all its points,
        as a click in point mode does; waits for the slice's embedding. Returns the box's new annotation;
        MedSAMError for no box, a point outside the image or another label."""
        self.wait()
        return self._change_points(box, lambda points: [*points, (x, y, label)])

    def undo_point(self, box: int | None = None) -> Annotation | None:
        """Remove the last point of a box (default the selected one) and segment it again; None if it has none."""
        return self._change_points(box, lambda points: points[:-1] if points else None)

    def clear_points(self, box: int | None = None) -> Annotation | None:
        """Remove every point of a box (default the selected one): its mask is the box's alone again."""
        return self._change_points(box, lambda points: [] if points else None)

    def _change_points(self, position: int | None, change) -> Annotation | None:
        index = self.current_slice
        if self._waiting.get(index):
            raise MedSAMError(f"{self._where(index)} is still being embedded (boxes wait for it): "
                              "add points once it is ready")
        current = self.current
        position = self.selected if position is None else position
        if position is None or not current:
            raise MedSAMError(f"no box on this {'slice' if self.is_volume else 'image'} to add points to: "
                              "draw a box first (click mode 'box'), then add points to it")
        before = self.select_box(position, quiet=True)
        points = change(list(before.points))
        if points is None:
            self._note(f"box {position + 1} ({before.label}) has no points to remove")
            return None
        with self._predictor_lock, self._state_lock:
            _, after = self.state.set_points(index, position, points)
            self._render()
        if len(after.points) > len(before.points):
            x, y, label = after.points[-1]
            what = f"{'foreground' if label else 'background'} point ({x}, {y}) added"
        else:
            what = "last point removed" if after.points else "points removed"
        self._note(f"box {position + 1} ({after.label}): {what}; {_points_text(after)}: {int(after.mask.sum())} "
                   f"pixels (was {int(before.mask.sum())}), {_quality(after)}")
        self._autosave()
        return after

    def _point_clicked(self, x, y) -> None:
        """A click in point mode (``bbox``'s message): display pixels -> the clicked image pixel, a point of
        the selected box with the mode's label. Clicks that cannot become a point say why, in the message."""
        label = self._click_label()
        try:
            fx, fy = float(x), float(y)
        except (TypeError, ValueError):
            fx = fy = math.nan
        if label is None or not (math.isfinite(fx) and math.isfinite(fy)):
            self._note(f"ignored: a click at ({x!r}, {y!r}) that is not a point (choose + point or \u2212 point)")
            return
        s = self.display.scale
        px, py = math.floor(fx / s), math.floor(fy / s)
        h, w = self.image_size
        if not (0 <= px < w and 0 <= py < h):
            self._note(f"ignored: point ({px}, {py}) lies outside the image ({w} x {h} pixels)")
            return
        if self._embedder.busy():
            self._note(f"ignored: {self._where(self.current_slice)} is still being embedded; click again once "
                       "it is ready")
            return
        self._change_points(None, lambda points: [*points, (px, py, label)])


def _quality(a: Annotation) -> str:
    """"predicted IoU 0.912, quality ok", with a hint where the flag says the mask is likely wrong."""
    text = f"predicted IoU {a.score:.3f}, quality {a.quality}"
    if a.quality == QUALITY_LIKELY_WRONG:
        text += (f" (the model's own estimate is under {QUALITY_IOU_THRESHOLD:.3f}, the IoU of a DSC-0.7 mask: "
                 "check the mask; points can refine it)")
    return text


def _points_text(a: Annotation) -> str:
    plus = sum(label == 1 for *_, label in a.points)
    return f"{plural(len(a.points), 'point')} ({plus} foreground, {len(a.points) - plus} background)" \
        if a.points else "no points"
