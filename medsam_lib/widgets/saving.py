"""What a box-prompting session keeps: the autosave, its restore, and the export (part of ``BoxPromptSession``).

Autosaves (``boxes.json``, ``masks.npz``) and the Export button's default folder are the user's
(``layout.user_dir() / <image name>``), never ``results/<profile>/``. A new session on the same image
(same file, same pixels) restores the boxes autosaved there and segments them again; an autosave of
another image is kept aside under a dated name, never replaced (``annotations.read_autosave``).

``Saving`` is a part of ``session.BoxPromptSession`` and uses its ``autosave_dir``, ``identity``,
``image``, ``is_volume``, ``display``, ``labels``, ``state``, ``source``, ``restored``, ``received``,
``messages``, ``current_slice``, ``export_dir``, ``default_dir``, the waiting boxes of ``SliceQueue``
(``_waiting``, ``_state_lock``, ``wait``, ``_segment_elsewhere``) and ``_note``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..fileio import MedSAMError
from .annotations import AUTOSAVE_BOXES, check_point, read_autosave, stem
from .events import parse_box, plural


class Saving:
    """Restore on start, autosave after every change, export on demand (see the module docstring)."""

    def _restorable(self) -> tuple[dict[int | None, list[tuple]], dict[tuple, tuple], list[str]]:
        """The boxes of the last session on this image (autosave), each re-checked, per slice as [(box, label)],
        their points as {(slice, box, label): points} (``Annotations.points``); labels it used are added."""
        if self.autosave_dir is None:
            return {}, {}, []
        saved, notes = read_autosave(self.autosave_dir, self.identity)
        out: dict[int | None, list[tuple]] = {}
        points: dict[tuple, tuple] = {}
        for index, boxes in saved.items():
            valid = index is not None and 0 <= index < self.image.n_slices if self.is_volume else index is None
            if not valid:  # the identity matched, so only a hand-edited file gets here
                notes.append(f"autosave: {plural(len(boxes), 'box')} on slice {index} left out (no such slice)")
                continue
            for box, label, box_points in boxes:
                parsed = parse_box(self.display.to_widget(box, label), self.display)
                if parsed.box is None:
                    notes.append(f"autosave: box {list(box)} left out ({parsed.why})")
                    continue
                if label not in self.labels:
                    self.labels.append(label)
                    notes.append(f"autosave: label {label!r} of a restored box added to the labels")
                out.setdefault(index, []).append((parsed.box, label))
                kept = []
                for point in box_points:
                    try:
                        kept.append(check_point(point, self.image_size))
                    except MedSAMError as exc:
                        notes.append(f"autosave: a point of box {list(box)} left out ({exc})")
                if kept:
                    points[(index, parsed.box, label)] = tuple(kept)
        return out, points, notes

    def autosave_summary(self) -> str:
        """Where the autosave is and what was restored from it (one line, for the notebook)."""
        if self.autosave_dir is None:
            return "autosave: off"
        restored = f"; restored {plural(self.restored, 'box')} of the last session on this image" \
            if self.restored else ""
        return f"autosave: {self.autosave_dir / AUTOSAVE_BOXES} (and masks.npz){restored}"

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
            self._note(f"{plural(sum(map(len, self._waiting.values())), 'box')} on slices "
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
        waiting = []
        for index, boxes in self._waiting.items():
            for box, label in boxes:
                points = self.state.points_of(index, box, label)
                waiting.append({"box": [int(v) for v in box], "label": label, "slice_index": index,
                                "points": [[x, y] for x, y, _ in points], "point_labels": [p[2] for p in points]})
        return {"image_identity": self.identity, "boxes_waiting": waiting, "source": self.source,
                "display_scale": self.display.scale, "current_slice": self.current_slice,
                "last_boxes_received": self.received[-1] if self.received else [],
                "n_updates": len(self.received), "messages": self.messages[-20:]}

    def _autosave(self) -> None:
        if self.autosave_dir is not None:
            with self._state_lock:
                self.state.autosave(self.autosave_dir, **self._extra())
