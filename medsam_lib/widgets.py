"""Interactive box prompting in Jupyter: draw boxes on an image, get MedSAM masks at once.

    session = BoxPromptSession("scan.nii.gz", labels=["liver", "tumour"], autosave_dir="results/boxes")
    session.view()                       # image (slice slider for volumes), label picker, Undo/Clear/Export
    session.apply_box([40, 30, 90, 80])  # the same path without a browser (papermill): x0, y0, x1, y1 pixels
    session.export("results/boxes")      # PNG per label (2D) or NIfTI per label with the source geometry

The drawing surface is ``jupyter_bbox_widget.BBoxWidget``: it sends the list of boxes on every mouse
release as dicts ``{x, y, width, height, label}`` in pixels of the picture it shows. Each new or
changed box is segmented with the image embedding cached by ``BoxPredictor`` (one encoder pass per
image or slice; a box costs one decoder pass), and the masks are painted into the picture the widget
shows. Boxes with zero area or outside the image are dropped with a message in the widget; errors
never reach the kernel's top level, so the kernel keeps running.

Small images are shown enlarged by an integer factor (``display_min_size``); boxes are mapped back
to image pixels. Volumes are normalised once for the whole volume (paper 3.1: CT window for CT,
0.5/99.5 percentiles otherwise) and shown one slice at a time along their first axis.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .data.preprocess import normalize_intensity
from .data.readers import MedicalImage, read_image, write_mask
from .fileio import MedSAMError, atomic_path, atomic_write_text
from .models.predictor import BoxPredictor, to_uint8_rgb
from .models.zoo import LoadedModel

OVERLAY_ALPHA = 0.45
DEFAULT_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf")  # BBoxWidget's own defaults, so mask and box colours agree


@dataclass
class Annotation:
    """One box and its mask."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels (x1, y1 exclusive edges)
    label: str
    mask: np.ndarray  # (H, W) bool at the image's resolution
    score: float  # the model's predicted IoU
    slice_index: int | None  # None for 2D images

    def as_dict(self) -> dict:
        return {"box": [round(v, 2) for v in self.box], "label": self.label, "slice_index": self.slice_index,
                "predicted_iou": round(self.score, 4), "mask_pixels": int(self.mask.sum())}


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    if not re.fullmatch(r"[0-9a-fA-F]{6}", value):
        raise MedSAMError(f"colour {color!r} is not of the form #rrggbb")
    return tuple(int(value[i:i + 2], 16) for i in (0, 2, 4))


def paint(base: np.ndarray, masks: Sequence[np.ndarray], colors: Sequence[tuple[int, int, int]],
          alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8 with each (H, W) bool mask blended in its colour; later masks on top."""
    out = base.copy()
    for mask, color in zip(masks, colors):
        if not mask.any():
            continue
        region = out[mask].astype(np.float32)
        out[mask] = np.round((1 - alpha) * region + alpha * np.asarray(color, np.float32)).astype(np.uint8)
    return out


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes, fast (zlib level 1)."""
    import cv2

    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise MedSAMError("could not encode the overlay as PNG")
    return buffer.tobytes()


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "label"


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
                   ".bmp", ".gif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class BoxPromptSession:
    """Box prompting on one image or volume, with or without a browser.

    image: a path the readers open (2D image, NIfTI/NRRD/MHA volume, DICOM folder), a
        ``MedicalImage``, or a 2D array. model: a zoo name, a ``LoadedModel`` or a ``BoxPredictor``.
    labels: the classes offered in the widget. slice_index: the slice shown first (volumes; default
        the middle one). modality: e.g. "CT" to apply the CT window (read from DICOM when known).
    autosave_dir: when given, ``boxes.json`` and ``masks.npz`` there are rewritten (atomically)
        after every box, so nothing drawn is lost if the kernel stops.
    """

    def __init__(self, image: str | os.PathLike | MedicalImage | np.ndarray,
                 model: str | LoadedModel | BoxPredictor = "litemedsam", device: str | None = None,
                 labels: Sequence[str] = ("target",), slice_index: int | None = None,
                 modality: str | None = None, autosave_dir: str | os.PathLike | None = None,
                 display_min_size: int = 512):
        self.image = self._read(image)
        self.source = self.image.path
        self.modality = modality or self.image.modality
        self.labels = [str(label) for label in labels]
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise MedSAMError(f"labels must be a non-empty list of distinct names, got {list(labels)}")
        self.predictor = model if isinstance(model, BoxPredictor) else BoxPredictor(model, device=device)
        self.autosave_dir = None if autosave_dir is None else Path(autosave_dir)
        if self.autosave_dir is not None and not self.autosave_dir.is_dir():
            raise MedSAMError(f"autosave folder {self.autosave_dir} does not exist (create it first)")
        self._volume = self._normalise(self.image, self.modality)
        h, w = self._volume.shape[1:3]
        self.image_size = (h, w)
        self.display_scale = max(1, math.ceil(display_min_size / max(h, w)))
        self.annotations: dict[int | None, list[Annotation]] = {}
        self._mask_cache: dict[tuple, tuple[np.ndarray, float]] = {}
        self._base_cache: dict[int | None, np.ndarray] = {}
        self.messages: list[str] = []
        self.received: list[list[dict]] = []  # every box list the widget sent, as sent
        self.rejected: list[str] = []  # why each dropped box was dropped
        self.last_callback_s: float | None = None
        self._syncing = False
        self._reported: set[str] = set()
        self._slice_error: str | None = None
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

    def _slice_rgb(self, index: int | None) -> np.ndarray:
        return self._volume[0 if index is None else index]

    # --- widgets ---------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        import ipywidgets as w
        from jupyter_bbox_widget import BBoxWidget

        self.widget = BBoxWidget(classes=self.labels, colors=list(DEFAULT_COLORS), hide_buttons=True)
        self.widget.observe(self._on_boxes, names=["bboxes"])
        self.message = w.HTML(value="")
        self.slider = None
        if self.is_volume:
            self.slider = w.IntSlider(min=0, max=self.image.n_slices - 1, description="slice",
                                      continuous_update=False)
            self.slider.observe(self._on_slider, names=["value"])
        self.undo_button = w.Button(description="Undo", tooltip="remove the last box on this slice")
        self.clear_button = w.Button(description="Clear", tooltip="remove every box on this slice")
        self.export_button = w.Button(description="Export", tooltip="write masks to the folder beside")
        default_dir = "" if self.autosave_dir is None else str(self.autosave_dir)
        self.export_dir = w.Text(value=default_dir, placeholder="existing folder", description="to folder")
        self.undo_button.on_click(lambda _: self._guarded(self.undo))
        self.clear_button.on_click(lambda _: self._guarded(self.clear))
        self.export_button.on_click(lambda _: self._guarded(self._export_clicked))

    def _on_slider(self, change) -> None:
        if not self._syncing:
            self._guarded(self.set_slice, change["new"])

    def view(self):
        """The widget to display: picture (draw boxes on it), slice slider, buttons, messages."""
        import ipywidgets as w

        rows = [self.widget]
        if self.slider is not None:
            rows.append(self.slider)
        rows += [w.HBox([self.undo_button, self.clear_button, self.export_button, self.export_dir]), self.message]
        return w.VBox(rows)

    def _note(self, text: str) -> None:
        import html

        self.messages.append(text)
        self.message.value = f"<pre style='margin:0'>{html.escape(text)}</pre>"

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
        """Show slice ``index`` (volumes; None for 2D images): embed it and restore its boxes."""
        if index is not None and not self.image.is_volume:
            raise MedSAMError(f"{self.source} is a 2D image; it has no slices")
        if index is not None and not 0 <= index < self.image.n_slices:
            raise MedSAMError(f"{self.source}: slice {index} out of range (0..{self.image.n_slices - 1})")
        self.current_slice = index
        name = self.source if index is None else f"{self.source} slice {index}"
        self._slice_error = None
        try:
            self.predictor.set_image(self._slice_rgb(index), source=name)
        except MedSAMError as exc:
            self._slice_error = str(exc)
            self._note(f"error: {exc}")
        if self.slider is not None and self.slider.value != index:
            self._syncing = True
            try:
                self.slider.value = index
            finally:
                self._syncing = False
        self._sync_boxes()
        self._render()

    # --- the callback ----------------------------------------------------------------------------
    def _to_image_box(self, raw: dict) -> tuple[tuple[float, float, float, float] | None, str, str]:
        """A widget box dict -> ((x0, y0, x1, y1) in image pixels, "", "ok") or (None, why, kind)."""
        try:
            x, y, width, height = (float(raw[k]) for k in ("x", "y", "width", "height"))
        except (KeyError, TypeError, ValueError):
            return None, f"box {raw!r} is not of the form {{x, y, width, height, label}}", "malformed"
        if not all(map(math.isfinite, (x, y, width, height))):
            return None, f"box {raw!r} has a non-finite coordinate", "malformed"
        s = self.display_scale
        h, w = self.image_size
        x0, y0, x1, y1 = x / s, y / s, (x + width) / s, (y + height) / s
        text = f"({x0:g}, {y0:g}, {x1:g}, {y1:g})"
        if width <= 0 or height <= 0:
            return None, f"box {text} has zero area; press and drag to draw a box", "zero"
        cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
        if cx1 <= cx0 or cy1 <= cy0:
            return None, f"box {text} lies outside the image ({w} x {h} pixels)", "outside"
        return (cx0, cy0, cx1, cy1), "", "ok"

    def _on_boxes(self, change) -> None:
        if self._syncing:
            return
        self._guarded(self._update_boxes, list(change["new"]))

    def _update_boxes(self, raw_boxes: list[dict]) -> None:
        """The callback: every box list the widget sends (on mouse down and on mouse release).

        On mouse down the widget sends the new box with zero size, last in the list; it becomes a
        real box on release after a drag. A release without a drag sends the same list again, which
        the kernel never sees (the value did not change). So a zero-size box is left alone while it
        is last (a drag may be under way) and dropped, with a message, once another box follows it.
        """
        start = time.perf_counter()
        self.received.append([dict(b) if isinstance(b, dict) else b for b in raw_boxes])
        kept, keep_raw, dropped, drawing = [], [], [], None
        for index, raw in enumerate(raw_boxes):
            raw = raw if isinstance(raw, dict) else {"value": raw}
            box, why, kind = self._to_image_box(raw)
            label = str(raw.get("label") or self.labels[0])
            if kind == "zero" and index == len(raw_boxes) - 1:
                drawing = raw
                keep_raw.append(raw)
                continue
            if box is not None and self._slice_error is not None:
                box, why = None, f"no mask on this slice: {self._slice_error}"
            if box is not None and label not in self.labels:
                box, why = None, f"label {label!r} is not one of {self.labels}"
            if box is None:
                key = json.dumps(raw, sort_keys=True, default=str)
                if key not in self._reported:
                    self._reported.add(key)
                    dropped.append(why)
                    self.rejected.append(why)
                continue
            kept.append((box, label))
            keep_raw.append(raw)
        annotations = [self._annotate(box, label) for box, label in kept]
        previous = self.annotations.get(self.current_slice, [])
        self.annotations[self.current_slice] = annotations
        if drawing is None and len(keep_raw) != len(raw_boxes):
            self._syncing = True  # no drag under way: take the dropped boxes out of the picture too
            try:
                self.widget.bboxes = keep_raw
            finally:
                self._syncing = False
            self._reported.clear()
        old_keys = [(a.box, a.label) for a in previous]
        new_keys = [(a.box, a.label) for a in annotations]
        if new_keys != old_keys:
            self._render()
        self.last_callback_s = time.perf_counter() - start
        fresh = [a for a in annotations if (a.box, a.label) not in set(old_keys)]
        unit = "slice" if self.is_volume else "image"
        notes = []
        if fresh:
            a = fresh[-1]
            notes.append(f"box {annotations.index(a) + 1} ({a.label}) at ({', '.join(f'{v:.0f}' for v in a.box)}): "
                         f"{int(a.mask.sum())} pixels, predicted IoU {a.score:.3f}")
        elif new_keys != old_keys:
            notes.append(f"{len(annotations)} box(es) on this {unit}")
        if dropped:
            notes.append("ignored: " + "; ".join(dropped))
        if drawing is not None and not notes:
            s = self.display_scale
            notes.append(f"box started at ({float(drawing.get('x', 0)) / s:.0f}, {float(drawing.get('y', 0)) / s:.0f}): "
                         "drag to size it (a click alone draws nothing)")
        if notes:
            self._note("\n".join(notes))
        self._autosave()

    def _annotate(self, box: tuple[float, float, float, float], label: str) -> Annotation:
        key = (self.current_slice, *box)
        if key not in self._mask_cache:
            result = self.predictor.predict([box])
            self._mask_cache[key] = (result.masks[0], float(result.scores[0]))
            while len(self._mask_cache) > 512:
                self._mask_cache.pop(next(iter(self._mask_cache)))
        mask, score = self._mask_cache[key]
        return Annotation(box=box, label=label, mask=mask, score=score, slice_index=self.current_slice)

    # --- drawing ---------------------------------------------------------------------------------
    def _base(self, index: int | None) -> np.ndarray:
        if index not in self._base_cache:
            rgb = self._slice_rgb(index)
            s = self.display_scale
            self._base_cache[index] = np.repeat(np.repeat(rgb, s, axis=0), s, axis=1) if s > 1 else rgb
        return self._base_cache[index]

    def _color(self, label: str) -> tuple[int, int, int]:
        colors = list(self.widget.colors) or list(DEFAULT_COLORS)
        return hex_to_rgb(colors[self.labels.index(label) % len(colors)])

    def overlay(self, index: int | None = None) -> np.ndarray:
        """(H*s, W*s, 3) uint8: the picture the widget shows for a slice (default: the current one)."""
        index = self.current_slice if index is None else index
        annotations = self.annotations.get(index, [])
        s = self.display_scale
        masks = [a.mask if s == 1 else np.repeat(np.repeat(a.mask, s, axis=0), s, axis=1) for a in annotations]
        return paint(self._base(index), masks, [self._color(a.label) for a in annotations])

    def _render(self) -> None:
        self.widget.image_bytes = encode_png(self.overlay())

    def _sync_boxes(self) -> None:
        """Put the current slice's boxes back into the widget (display pixels), without a callback."""
        s = self.display_scale
        boxes = [{"x": a.box[0] * s, "y": a.box[1] * s, "width": (a.box[2] - a.box[0]) * s,
                  "height": (a.box[3] - a.box[1]) * s, "label": a.label}
                 for a in self.annotations.get(self.current_slice, [])]
        self._syncing = True
        try:
            self.widget.bboxes = boxes
        finally:
            self._syncing = False

    # --- actions ---------------------------------------------------------------------------------
    @property
    def current(self) -> list[Annotation]:
        """The boxes and masks on the slice shown."""
        return list(self.annotations.get(self.current_slice, []))

    def all_annotations(self) -> list[Annotation]:
        return [a for key in sorted(self.annotations, key=lambda k: -1 if k is None else k)
                for a in self.annotations[key]]

    def apply_box(self, box: Sequence[float], label: str | None = None) -> Annotation:
        """Add a box (x0, y0, x1, y1, image pixels) as if drawn in the widget; returns its annotation.

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
        if not np.isfinite(values).all() or x1 <= x0 or y1 <= y0:
            why = f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has zero area or is inverted; need x0 < x1 and y0 < y1"
            self.rejected.append(why)
            self._note(f"ignored: {why}")
            raise MedSAMError(f"{self.source}: {why}")
        s = self.display_scale
        raw = {"x": x0 * s, "y": y0 * s, "width": (x1 - x0) * s, "height": (y1 - y0) * s, "label": label}
        parsed, why, _ = self._to_image_box(raw)
        if parsed is None or self._slice_error is not None:
            why = why or f"no mask on this slice: {self._slice_error}"
            self.rejected.append(why)
            self._note(f"ignored: {why}")
            raise MedSAMError(f"{self.source}: {why}")
        errors_before = len(self.messages)
        self.widget.bboxes = [*self.widget.bboxes, raw]
        unexpected = [m for m in self.messages[errors_before:] if m.startswith(("error", "unexpected"))]
        if unexpected or not self.current or self.current[-1].box != parsed:
            detail = unexpected[-1] if unexpected else "see the widget's message"
            raise MedSAMError(f"{self.source}: the box was not segmented ({detail})")
        return self.current[-1]

    def undo(self) -> Annotation | None:
        """Remove the last box drawn on the slice shown; returns it (None when there is none)."""
        current = self.current
        if not current:
            self._note("nothing to undo on this " + ("slice" if self.is_volume else "image"))
            return None
        removed = current[-1]
        self.annotations[self.current_slice] = current[:-1]
        self._sync_boxes()
        self._render()
        self._note(f"undone: box ({', '.join(f'{v:.0f}' for v in removed.box)}) {removed.label}")
        self._autosave()
        return removed

    def clear(self) -> None:
        """Remove every box on the slice shown."""
        self.annotations[self.current_slice] = []
        self._sync_boxes()
        self._render()
        self._note("cleared")
        self._autosave()

    def masks_by_label(self) -> dict[str, np.ndarray]:
        """Label -> union of its masks: (H, W) bool for 2D images, (Z, H, W) for volumes."""
        out: dict[str, np.ndarray] = {}
        shape = self.image.array.shape[:3] if self.image.is_volume else self.image_size
        for a in self.all_annotations():
            target = out.setdefault(a.label, np.zeros(shape, dtype=bool))
            if self.image.is_volume:
                target[a.slice_index or 0] |= a.mask
            else:
                target |= a.mask
        return out

    def export(self, folder: str | os.PathLike) -> list[Path]:
        """Write one mask per label into an existing folder, and the boxes as JSON.

        2D images: ``<image>_<label>.png`` (0/255). Volumes: ``<image>_<label>.nii.gz`` (0/1) with the
        source's spacing, origin and direction. Every file is written atomically.
        """
        folder = Path(folder)
        if not str(folder).strip() or not folder.is_dir():
            raise MedSAMError(f"export folder {str(folder)!r} does not exist (create it first); nothing written")
        masks = self.masks_by_label()
        if not masks:
            raise MedSAMError("nothing to export: draw a box first")
        stem = _safe_name(_stem(self.source))
        suffix = ".nii.gz" if self.image.is_volume else ".png"
        written = []
        for label, mask in masks.items():
            path = folder / f"{stem}_{_safe_name(label)}{suffix}"
            write_mask(mask, path, reference=self.image if self.image.is_volume else None)
            written.append(path)
        boxes_path = folder / f"{stem}_boxes.json"
        atomic_write_text(boxes_path, json.dumps(self._state(), indent=2))
        written.append(boxes_path)
        return written

    def _export_clicked(self) -> None:
        written = self.export(self.export_dir.value)
        self._note("exported: " + ", ".join(p.name for p in written))

    # --- autosave --------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"source": self.source, "image_size": list(self.image_size), "is_volume": self.image.is_volume,
                "display_scale": self.display_scale, "labels": self.labels, "current_slice": self.current_slice,
                "annotations": [a.as_dict() for a in self.all_annotations()],
                "last_boxes_received": self.received[-1] if self.received else [],
                "n_updates": len(self.received), "messages": self.messages[-20:]}

    def _autosave(self) -> None:
        if self.autosave_dir is None:
            return
        annotations = self.all_annotations()
        with atomic_path(self.autosave_dir / "masks.npz", suffix=".npz") as tmp:
            np.savez_compressed(tmp, masks=np.array([a.mask for a in annotations], dtype=bool).reshape(
                len(annotations), *self.image_size), slices=np.array([-1 if a.slice_index is None else
                                                                      a.slice_index for a in annotations]))
        atomic_write_text(self.autosave_dir / "boxes.json", json.dumps(self._state(), indent=2))


# --- the notebook's case: default data, reference mask, the papermill box -------------------------

@dataclass
class PromptCase:
    """What notebook 07 opens: an image or volume, optionally with a reference mask."""

    image_path: Path
    mask_path: Path | None
    mask_label: tuple[int, ...] | None  # label values of the target in the mask (None: any non-zero)
    slice_index: int | None
    modality: str | None
    labels: list[str]
    description: str
    synthetic: bool

    def reference(self, slice_index: int | None = None) -> np.ndarray | None:
        """(H, W) bool reference mask of the target on a slice (2D images: the image), or None."""
        if self.mask_path is None:
            return None
        mask = read_image(self.mask_path)
        array = np.asarray(mask.array)
        if mask.is_volume:
            index = self.slice_index if slice_index is None else slice_index
            if index is None:
                raise MedSAMError(f"{self.mask_path} is a volume: give the slice to compare with")
            if not 0 <= index < array.shape[0]:
                raise MedSAMError(f"{self.mask_path}: slice {index} out of range (0..{array.shape[0] - 1})")
            array = array[index]
        elif array.ndim == 3:
            array = array[..., 0]
        return np.isin(array, self.mask_label) if self.mask_label else array > 0


def resolve_case(data_source: str, shared_data_dir: str | os.PathLike, results_dir: str | os.PathLike,
                 seed: int = 0, image_path: str | os.PathLike | None = None,
                 mask_path: str | os.PathLike | None = None, mask_label: int | Sequence[int] | None = None,
                 slice_index: int | None = None, modality: str | None = None,
                 labels: Sequence[str] | None = None) -> PromptCase:
    """The image notebook 07 opens: ``image_path`` when given, else the default case of ``data_source``.

    Defaults: the SYNTHETIC CT phantom volume (liver) offline; the TotalSegmentator example CT
    (liver, label 5, a model-made mask) from ../shared/data when ``data_source == "shared"``.
    """
    label_values = None if mask_label is None else tuple(int(v) for v in np.atleast_1d(mask_label))
    if image_path is not None:
        path = Path(image_path)
        read_image(path)  # fail early, with the readers' message, on anything unreadable
        mask = None if mask_path is None else Path(mask_path)
        if mask is not None:
            read_image(mask)
        return PromptCase(path, mask, label_values, slice_index, modality, list(labels or ("target", "other")),
                          f"your image {path.name}", False)
    if mask_path is not None:
        raise MedSAMError("mask_path was given without image_path; give both, or neither for the default case")
    if data_source == "shared":
        root = Path(shared_data_dir) / "ct_abdomen_organs"
        image, mask = root / "example_ct_sm.nii.gz", root / "example_seg.nii.gz"
        for p in (image, mask):
            if not p.is_file():
                raise MedSAMError(f"{p}: not found; data_source 'shared' needs ../shared/data "
                                  "(or set shared_data_dir)")
        values = label_values or (5,)
        index = slice_index if slice_index is not None else _largest_slice(mask, values)
        return PromptCase(image, mask, values, index, modality or "CT", list(labels or ("liver", "spleen", "kidney")),
                          "real CT (TotalSegmentator example; its mask is a model output, not manual)", False)
    if data_source != "synthetic":
        raise MedSAMError(f"data_source must be 'synthetic' or 'shared', got {data_source!r}")
    from .data.phantoms import CASES, write_synthetic_set

    folder = write_synthetic_set(Path(results_dir) / "data" / "synthetic", seed)
    case = next(c for c in CASES if c.case_id == "synthetic_ct_abdomen")
    values = label_values or (1, 2)  # liver, including its tumour
    mask = folder / case.mask
    index = slice_index if slice_index is not None else _largest_slice(mask, values)
    return PromptCase(folder / case.image, mask, values, index, modality or case.modality,
                      list(labels or ("liver", "tumour", "kidney")), "SYNTHETIC CT phantom (liver)", True)


def _largest_slice(mask_path: Path, values: tuple[int, ...]) -> int:
    array = read_image(mask_path).array
    return int(np.argmax(np.isin(array, values).sum(axis=(1, 2))))


def resolve_box(box, case: PromptCase, slice_index: int | None) -> np.ndarray | None:
    """The papermill box: None, [x0, y0, x1, y1] in image pixels, or "from_mask" (the reference's box)."""
    if box is None:
        return None
    if isinstance(box, str):
        if box != "from_mask":
            raise MedSAMError(f"box must be [x0, y0, x1, y1], 'from_mask' or None, got {box!r}")
        truth = case.reference(slice_index)
        if truth is None:
            raise MedSAMError("box='from_mask' needs a reference mask (mask_path); give the box as "
                              "[x0, y0, x1, y1] instead")
        from .geometry import box_from_mask

        x0, y0, x1, y1 = box_from_mask(truth, str(case.mask_path))
        return np.array([x0, y0, x1 + 1, y1 + 1])  # last pixel inclusive -> outer edge, as the widget draws
    values = np.asarray(box, dtype=np.float64)
    if values.shape != (4,):
        raise MedSAMError(f"box must be 4 numbers (x0, y0, x1, y1) in image pixels, got {box!r}")
    return values


def summary_table(session: BoxPromptSession, case: PromptCase | None = None):
    """One row per box drawn: slice, label, box, predicted IoU, pixels, Dice against the reference."""
    import pandas as pd

    from .evaluation.metrics import dice

    data = "synthetic" if case is not None and case.synthetic else "real" if case is not None else "user"
    rows = []
    for i, a in enumerate(session.all_annotations(), start=1):
        target = case is not None and a.label == case.labels[0]
        truth = case.reference(a.slice_index) if target else None
        rows.append({"data": data, "box #": i, "slice": a.slice_index, "label": a.label,
                     "box (x0, y0, x1, y1)": tuple(round(v, 1) for v in a.box),
                     "predicted IoU": round(a.score, 3), "mask pixels": int(a.mask.sum()),
                     "Dice vs reference": None if truth is None else round(dice(a.mask, truth), 3)})
    columns = ["data", "box #", "slice", "label", "box (x0, y0, x1, y1)", "predicted IoU", "mask pixels",
               "Dice vs reference"]  # Dice for boxes of the case's first label (the reference's target)
    return pd.DataFrame(rows, columns=columns)
