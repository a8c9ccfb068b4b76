"""Interactive box prompting (notebook 07): draw boxes on an image, get MedSAM masks at once.

- ``annotations``: the pure state (boxes per slice, their points, masks, undo, export, autosave and its restore);
- ``events``: the widget's box events parsed into image boxes (no widget needed);
- ``drawing``: the picture shown (masks, label tags that never overlap, points);
- ``bbox``: the drawing surface (jupyter_bbox_widget with a move-mode toggle and a point mode: clicks become points);
- ``embedding``: the background worker that embeds only the slice last asked for;
- ``pixels``: the session's input read and checked, its slices' pixels and pictures (cached, bounded);
- ``slices``: the session's slice embedding and the boxes waiting for their slice;
- ``saving``: the session's autosave, its restore and the export;
- ``controls``: the session's ipywidgets (picture, slider, buttons, message line);
- ``session``: ``BoxPromptSession`` made of those parts: the box and point callbacks and actions;
- ``notebook``: the papermill box and points, and the summary table.
"""
from .annotations import Annotation, Annotations
from .drawing import encode_png, hex_to_rgb, paint
from .events import Display, parse_box, parse_boxes
from .notebook import resolve_box, resolve_points, summary_table
from .session import DISPLAY_MAX_PX, BoxPromptSession

__all__ = ["Annotation", "Annotations", "BoxPromptSession", "DISPLAY_MAX_PX", "Display", "encode_png", "hex_to_rgb",
           "paint", "parse_box", "parse_boxes", "resolve_box", "resolve_points", "summary_table"]
