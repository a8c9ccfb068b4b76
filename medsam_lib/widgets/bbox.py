"""``jupyter_bbox_widget.BBoxWidget`` that draws a new box wherever the mouse is pressed, and takes clicks as points.

The stock widget moves a box when the mouse is pressed inside it, so a box could not be drawn
inside another (a tumour inside its organ). ``DrawingBBoxWidget`` adds two synced traits:

- ``move_mode``: off (the default), pressing inside a box starts a new box (the box's body lets the
  press through; its edge and corner handles still resize it); on, pressing inside a box moves it, as
  the stock widget does;
- ``point_mode``: on, a press on the picture draws no box (the stock widget never sees it): it is sent
  to the kernel as a point, the custom message ``{"type": "point", "x": ..., "y": ...}`` in pixels of the
  picture shown (the picture's natural pixels, whatever size the browser shows it at), handed to the
  ``on_point`` callbacks (the session adds it to the selected box: ``controls``); off (the default),
  presses draw boxes as before.

The stock label tags above each box are hidden: the session paints its own tags into the picture,
placed so that they never overlap (``drawing.place_tags``), and its points.

It wraps the stock front end (same version pinned in requirements.txt): the stock module's default
export is kept and its ``render`` called inside ours, which toggles CSS classes and, in point mode,
takes the mouse press first (a capturing listener on the widget's element).
"""
from __future__ import annotations

import re

from traitlets import Bool

POINT_MESSAGE = "point"  # the "type" of the message a click in point mode sends
WRAPPER = """
function render({ model, el }) {
  el.classList.add("medsam-bbox");
  const sync = () => {
    el.classList.toggle("medsam-draw", !model.get("move_mode"));
    el.classList.toggle("medsam-point", !!model.get("point_mode"));
  };
  sync();
  model.on("change:move_mode", sync);
  model.on("change:point_mode", sync);
  const press = (event) => {
    if (!model.get("point_mode") || event.button !== 0) return;
    const img = el.querySelector("img");
    if (!img || !img.naturalWidth) return;
    const r = img.getBoundingClientRect();
    const outside = event.clientX < r.left || event.clientX >= r.right || event.clientY < r.top
      || event.clientY >= r.bottom;
    if (outside) return;
    event.stopPropagation();
    event.preventDefault();
    model.send({ type: "__POINT_MESSAGE__", x: (event.clientX - r.left) * img.naturalWidth / r.width,
                 y: (event.clientY - r.top) * img.naturalHeight / r.height });
  };
  el.addEventListener("mousedown", press, true);
  const cleanup = __medsam_stock.render({ model, el });
  return () => {
    model.off("change:move_mode", sync);
    model.off("change:point_mode", sync);
    el.removeEventListener("mousedown", press, true);
    if (typeof cleanup === "function") cleanup();
  };
}
export default { render };
""".replace("__POINT_MESSAGE__", POINT_MESSAGE)
CSS = """
.medsam-bbox.medsam-draw svg rect.movable { pointer-events: none; }
.medsam-bbox svg text { display: none; }
.medsam-bbox.medsam-point img, .medsam-bbox.medsam-point svg,
.medsam-bbox.medsam-point svg * { cursor: crosshair !important; }
"""
_DEFAULT_EXPORT = re.compile(r"export\s*\{\s*(\w+)\s+as\s+default\s*\}\s*;?\s*$")


def _wrapped_esm(stock: str) -> str | None:
    """The stock front end with its default export renamed and ours appended (None if unrecognised)."""
    match = _DEFAULT_EXPORT.search(stock)
    if match is None:
        return None
    return stock[:match.start()] + f"const __medsam_stock = {match.group(1)};\n" + WRAPPER


def _widget_class():
    from jupyter_bbox_widget import BBoxWidget

    esm = _wrapped_esm(BBoxWidget._esm)

    class DrawingBBoxWidget(BBoxWidget):
        """BBoxWidget with ``move_mode`` and ``point_mode`` (see the module docstring)."""

        _esm = esm if esm is not None else BBoxWidget._esm
        _css = BBoxWidget._css + (CSS if esm is not None else "")
        move_mode = Bool(False).tag(sync=True)
        point_mode = Bool(False).tag(sync=True)
        draws_inside_boxes = takes_points = esm is not None

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self._point_callbacks = []

        def on_point(self, callback) -> None:
            """Call ``callback(x, y)`` (picture pixels, as sent) for each click in point mode."""
            self._point_callbacks.append(callback)

        def _handle_custom_msg(self, content, buffers):
            # the stock widget handles its own messages (submit, skip) here and calls no on_msg callback
            if isinstance(content, dict) and content.get("type") == POINT_MESSAGE:
                for callback in self._point_callbacks:
                    callback(content.get("x"), content.get("y"))
            else:
                super()._handle_custom_msg(content, buffers)

    return DrawingBBoxWidget


_CLASS = None


def drawing_widget(**kwargs):
    """A new ``DrawingBBoxWidget`` (the class is made once, on first use: ipywidgets loads lazily)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _widget_class()
    return _CLASS(**kwargs)
