"""The ipywidgets layer of a box-prompting session: the picture, its controls, the message line.

``Controls`` is a part of ``session.BoxPromptSession``: it builds the widgets (``widget`` the drawing
surface, ``slider`` for volumes, ``move_toggle``, ``undo_button``, ``clear_button``, ``click_mode`` (box /
+ point / - point), ``box_select`` (the slice's boxes, each with its predicted IoU, quality flag and points;
the one chosen gets the points), ``undo_point_button``, ``clear_points_button``, ``export_button``,
``export_dir``, ``message``), lays them out (``view``), paints the picture (``overlay``: masks, tags,
points) and writes the message line (``_note``). It uses the session's ``display``, ``labels``, ``state``,
``current_slice``, ``current``, ``selected``, ``default_dir``, ``_pixels``, ``_boxes_on``
and its actions (``undo``, ``clear``, ``undo_point``, ``clear_points``, ``set_slice``, ``_on_boxes``,
``_point_clicked``, ``_export_clicked``). Small images are enlarged by an integer factor, large ones
shrunk by the browser to ``DISPLAY_MAX_PX`` wide. Every callback goes through ``_guarded``: errors
become a message, never reach the kernel's top level.
"""
from __future__ import annotations

import numpy as np

from ..fileio import MedSAMError
from .bbox import drawing_widget
from .drawing import DEFAULT_COLORS, draw_points, draw_tags, encode_png, enlarge, hex_to_rgb, paint
from .events import parse_box

DISPLAY_MAX_PX = 560  # the picture's widest on screen, so the controls fit beside it
CLICK_MODES = (("box", "box"), ("+ point", "foreground"), ("\u2212 point", "background"))  # (shown, value)
POINT_LABELS = {"foreground": 1, "background": 0}  # a click's point label in each point mode (SAM's 1 / 0)


class Controls:
    """The widgets of a session and what they show (see the module docstring)."""

    def _build_widgets(self) -> None:
        import ipywidgets as w

        self.widget = drawing_widget(classes=self.labels, colors=list(DEFAULT_COLORS), hide_buttons=True)
        shown_w = self.display.shown_size[1]
        self.widget.layout = w.Layout(width=f"{min(shown_w, DISPLAY_MAX_PX) + 10}px", flex="0 0 auto")
        self.widget.observe(self._on_boxes, names=["bboxes"])
        self.widget.observe(self._on_widget_selected, names=["selected_index"])
        self.widget.on_point(lambda x, y: self._guarded(self._point_clicked, x, y))
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
        self.click_mode = w.ToggleButtons(options=list(CLICK_MODES), value="box", description="click",
                                          tooltips=["press and drag: a new box",
                                                    "click: a foreground point (part of the target) for the box below",
                                                    "click: a background point (not the target) for the box below"],
                                          style={"button_width": "70px"}, disabled=not self.widget.takes_points)
        self.click_mode.observe(self._on_click_mode, names=["value"])
        self.box_select = w.Dropdown(options=[], value=None, description="points to",
                                     layout=w.Layout(width="98%"))
        self.box_select.observe(self._on_box_select, names=["value"])
        self.undo_point_button = w.Button(description="Undo point", tooltip="remove the last point of the box above")
        self.clear_points_button = w.Button(description="Clear points", tooltip="remove every point of the box above")
        self.undo_button.on_click(lambda _: self._guarded(self.undo))
        self.clear_button.on_click(lambda _: self._guarded(self.clear))
        self.undo_point_button.on_click(lambda _: self._guarded(self.undo_point))
        self.clear_points_button.on_click(lambda _: self._guarded(self.clear_points))
        self.export_button.on_click(lambda _: self._guarded(self._export_clicked))
        self._listing = False  # True while the box list is rewritten (its value changes are not the user's)

    def _on_move_toggle(self, change) -> None:
        self.widget.move_mode = bool(change["new"])
        self._note("move mode: drag inside a box to move it" if change["new"] else
                   "draw mode: every drag draws a new box, also inside another box")

    def _on_slider(self, change) -> None:
        if not self._syncing:
            self._guarded(self.set_slice, change["new"])

    def _on_click_mode(self, change) -> None:
        mode = change["new"]
        self.widget.point_mode = mode != "box"
        if mode == "box":
            self._note("box mode: press and drag to draw a box")
        else:
            target = "the box chosen under 'points to'" if self.selected is not None else "a box (draw one first)"
            self._note(f"{mode} point mode: each click adds a {mode} point to {target}; its mask is segmented again")

    def _on_box_select(self, change) -> None:
        if not self._listing and change["new"] is not None:
            self._guarded(self.select_box, change["new"])

    def _on_widget_selected(self, change) -> None:
        """The widget's own selection (a box's handle pressed, or a box moved) picks the box for points too."""
        index = change["new"]
        current = self.current
        if isinstance(index, int) and 0 <= index < len(current) and index < len(self.widget.bboxes):
            if parse_box(self.widget.bboxes[index], self.display).box == current[index].box:
                self._guarded(self.select_box, index)

    def _click_label(self) -> int | None:
        """The point label a click on the picture adds (None in box mode)."""
        return POINT_LABELS.get(self.click_mode.value)

    def _list_boxes(self) -> None:
        """The slice's boxes in ``box_select`` (predicted IoU, quality flag, points), the selected one chosen."""
        annotations = self.current
        if self.selected is not None and self.selected >= len(annotations):
            self.selected = None
        if self.selected is None and annotations:
            self.selected = len(annotations) - 1
        options = []
        for i, a in enumerate(annotations):
            plus = sum(label == 1 for *_, label in a.points)
            points = f", points +{plus} \u2212{len(a.points) - plus}" if a.points else ""
            options.append((f"{i + 1} {a.label}: IoU {a.score:.2f} {a.quality}{points}", i))
        self._listing = True
        try:
            self.box_select.options = options
            self.box_select.value = self.selected
        finally:
            self._listing = False

    def view(self):
        """The widget to display: the picture (draw boxes on it) with the controls beside it."""
        import ipywidgets as w

        controls = [self.slider] if self.slider is not None else []
        controls += [w.HBox([self.move_toggle, self.undo_button, self.clear_button]), self.click_mode,
                     self.box_select, w.HBox([self.undo_point_button, self.clear_points_button]),
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
        """(H*s, W*s, 3) uint8: the picture the widget shows for a slice (default: the current one); ``tags``:
        with the label tags and points (False: the masks alone)."""
        index = self.current_slice if index is None else index
        annotations = self.state.on(index)
        colors = [self._color(a.label) for a in annotations]
        scale = self.display.scale
        picture = paint(self._pixels.shown(index, scale), [enlarge(a.mask, scale) for a in annotations], colors)
        if tags and annotations:
            picture = draw_tags(picture, [a.box for a in annotations],
                                [f"{i} {a.label}" for i, a in enumerate(annotations, 1)], colors, scale)
        points = [p for a in annotations for p in a.points]
        if tags and points:
            picture = draw_points(picture, points, scale)
        return picture

    def _render(self) -> None:
        """The picture of the slice shown, and its boxes in the list (points go to the selected one)."""
        self.widget.image_bytes = encode_png(self.overlay())
        self._list_boxes()

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
