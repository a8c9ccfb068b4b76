"""``jupyter_bbox_widget.BBoxWidget`` that draws a new box wherever the mouse is pressed.

The stock widget moves a box when the mouse is pressed inside it, so a box could not be drawn
inside another (a tumour inside its organ). ``DrawingBBoxWidget`` adds one synced trait,
``move_mode``: off (the default), pressing inside a box starts a new box (the box's body lets the
press through; its edge and corner handles still resize it); on, pressing inside a box moves it, as
the stock widget does. The stock label tags above each box are hidden: the session paints its own
tags into the picture, placed so that they never overlap (``drawing.place_tags``).

It wraps the stock front end (same version pinned in requirements.txt): the stock module's default
export is kept and its ``render`` called inside ours, which only toggles a CSS class.
"""
from __future__ import annotations

import re

from traitlets import Bool

WRAPPER = """
function render({ model, el }) {
  el.classList.add("medsam-bbox");
  const sync = () => el.classList.toggle("medsam-draw", !model.get("move_mode"));
  sync();
  model.on("change:move_mode", sync);
  const cleanup = __medsam_stock.render({ model, el });
  return () => { model.off("change:move_mode", sync); if (typeof cleanup === "function") cleanup(); };
}
export default { render };
"""
CSS = """
.medsam-bbox.medsam-draw svg rect.movable { pointer-events: none; }
.medsam-bbox svg text { display: none; }
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
        """BBoxWidget with ``move_mode`` (see the module docstring)."""

        _esm = esm if esm is not None else BBoxWidget._esm
        _css = BBoxWidget._css + (CSS if esm is not None else "")
        move_mode = Bool(False).tag(sync=True)
        draws_inside_boxes = esm is not None

    return DrawingBBoxWidget


_CLASS = None


def drawing_widget(**kwargs):
    """A new ``DrawingBBoxWidget`` (the class is made once, on first use: ipywidgets loads lazily)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _widget_class()
    return _CLASS(**kwargs)
