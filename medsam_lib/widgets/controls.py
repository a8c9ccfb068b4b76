"""The ipywidgets layer of a box-prompting session: the picture, its controls, the message line.

``Controls`` is a part of ``session.BoxPromptSession``: it builds the widgets (``widget`` the drawing
surface, ``slider`` for volumes, ``move_toggle``, ``undo_button``, ``clear_button``, ``export_button``,
``export_dir``, ``message``), lays them out (``view``), paints the picture (``overlay``) and writes the
message line (``_note``). It uses the session's ``display``, ``labels``, ``state``, ``current_slice``,
``default_dir``, ``_pixels``, ``_boxes_on`` and its actions (``undo``, ``clear``,
``set_slice``, ``_on_boxes``, ``_export_clicked``). Small images are enlarged by an integer factor,
large ones shrunk by the browser to ``DISPLAY_MAX_PX`` wide. Every callback goes through ``_guarded``:
errors become a message, never reach the kernel's top level.
"""
from __future__ import annotations

import numpy as np

from ..fileio import MedSAMError
from .bbox import drawing_widget
from .drawing import DEFAULT_COLORS, draw_tags, encode_png, enlarge, hex_to_rgb, paint

DISPLAY_MAX_PX = 560  # the picture's widest on screen, so the controls fit beside it


class Controls:
    """The widgets of a session and what they show (see the module docstring)."""

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

    # --- the picture ------------------------------------------------------------------------------
    def _color(self, label: str) -> tuple[int, int, int]:
        colors = list(self.widget.colors) or list(DEFAULT_COLORS)
        return hex_to_rgb(colors[self.labels.index(label) % len(colors)])

    def overlay(self, index: int | None = None, tags: bool = True) -> np.ndarray:
        """(H*s, W*s, 3) uint8: the picture the widget shows for a slice (default: the current one)."""
        index = self.current_slice if index is None else index
        annotations = self.state.on(index)
        colors = [self._color(a.label) for a in annotations]
        scale = self.display.scale
        picture = paint(self._pixels.shown(index, scale), [enlarge(a.mask, scale) for a in annotations], colors)
        if tags and annotations:
            picture = draw_tags(picture, [a.box for a in annotations],
                                [f"{i} {a.label}" for i, a in enumerate(annotations, 1)], colors, scale)
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
        self._set_widget_boxes([self.display.to_widget(box, label) for box, label in
                                self._boxes_on(self.current_slice)])
