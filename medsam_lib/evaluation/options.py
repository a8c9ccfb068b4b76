"""The evaluation choices that move the numbers, with the paper's reading as the default.

Each option is recorded in every row of ``metrics.csv`` and in ``evaluation.json``.

- ``protocol``: ``gt`` (paper: a ground-truth box on every slice) or ``propagate`` (a box on
  the middle slice, then boxes from the neighbouring predictions); see ``inference``.
- ``box_margin`` / ``box_jitter`` (px at 256 x 256): the tight ground-truth box enlarged by a
  fixed margin, then each side by a random 0..jitter px (both ends included: ``geometry.jitter_box``
  draws ``rng.integers(0, jitter + 1)``) drawn from ``seed`` (per target, so a row does not depend
  on which other targets ran). Defaults 0 / 0: the tight box.
- ``test_boxes``: the name of the test-box protocol, recorded in every row. ``tight`` (paper: the
  tight ground-truth box; margin 0, jitter 0) or ``jittered`` (the released v1 MedSAM tutorial
  ``finetune_and_inference_tutorial.py``: each side moved out by ``np.random.randint(0, 20)``, i.e.
  0..19 px at 256 x 256, ``geometry.JITTER_MAX_PX["official_code"]``; seeded per target). Giving
  the name sets margin and jitter; left empty it is read from them (``custom`` when they match
  neither protocol).
- ``nsd_spacing``: ``physical`` (paper 3.3: tolerance 1 mm, the curated grid's spacing in mm:
  ``spacing_z``, ``curated_spacing_y``, ``curated_spacing_x``; where the file carried no spacing,
  e.g. PNG/JPEG, one curated pixel: mm would be invented) or ``unit`` (released code: a
  maintainer states in bowang-lab/MedSAM issue #109 that 3D NSD used spacing (1, 1, 1) for every
  task, i.e. a tolerance of 1 voxel).
- ``slices``: which ground-truth slices of a 3D target count. ``curated`` (default: the slices
  curation kept, as the paper's data pipeline; what curation dropped under 100 px counts nowhere)
  or ``volume`` (every slice of the source mask, resized to 256 the same way; the slices curation
  dropped get no prompt and count as misses, issue #136's point). ``volume`` needs the source
  data (``source_root``).
- ``nsd_2d``: ``true`` (2D contour NSD) or ``unit_axis`` (released LiteMedSAM evaluation:
  2D mask scored as a one-voxel slab; see ``metrics``).
- ``tolerance_mm``: 1.0 (paper 3.3); in voxels when ``nsd_spacing="unit"``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..fileio import MedSAMError
from ..geometry import JITTER_MAX_PX
from ..paper import NSD_TOLERANCE_MM
from .inference import PROTOCOLS
from .metrics import NSD_2D_VARIANTS

NSD_SPACINGS = ("physical", "unit")
SLICE_RULES = ("curated", "volume")
SPLITS = ("test", "train", "all")
# The named test-box protocols: (margin, jitter) px at 256 x 256. "custom" = any other margin / jitter.
TEST_BOXES = {"tight": (0.0, 0), "jittered": (0.0, JITTER_MAX_PX["official_code"])}
TEST_BOX_WORDS = {"tight": "the tight ground-truth box, the paper's",
                  "jittered": f"each side of the tight box moved out by a random 0-{JITTER_MAX_PX['official_code']} px, "
                              "as the released v1 MedSAM tutorial's test boxes"}
# The released code's reading of each choice, for the "paper vs code" table.
OFFICIAL_CODE = {"nsd_spacing": "unit", "slices": "volume", "nsd_2d": "unit_axis"}


@dataclass(frozen=True)
class EvalOptions:
    protocol: str = "gt"
    box_margin: float = 0.0
    box_jitter: int = 0
    seed: int = 0
    nsd_spacing: str = "physical"
    slices: str = "curated"
    nsd_2d: str = "true"
    tolerance_mm: float = NSD_TOLERANCE_MM
    split: str = "test"
    test_boxes: str = ""

    def __post_init__(self):
        for name, allowed in (("protocol", PROTOCOLS), ("nsd_spacing", NSD_SPACINGS), ("slices", SLICE_RULES),
                              ("nsd_2d", NSD_2D_VARIANTS), ("split", SPLITS)):
            if getattr(self, name) not in allowed:
                raise MedSAMError(f"{name} {getattr(self, name)!r} is not one of {allowed}")
        if not (math.isfinite(float(self.tolerance_mm)) and float(self.tolerance_mm) > 0):
            raise MedSAMError(f"tolerance {self.tolerance_mm!r} must be a finite number of mm > 0")
        if not (math.isfinite(float(self.box_margin)) and float(self.box_margin) >= 0):
            raise MedSAMError(f"box margin {self.box_margin!r} must be >= 0 px")
        if int(self.box_jitter) < 0:
            raise MedSAMError(f"box jitter {self.box_jitter!r} must be >= 0 px")
        self._name_test_boxes()

    def _name_test_boxes(self) -> None:
        """Fill ``test_boxes`` from margin/jitter, or margin/jitter from a given name (refusing a clash)."""
        given = (float(self.box_margin), int(self.box_jitter))
        if not self.test_boxes:
            name = next((n for n, v in TEST_BOXES.items() if v == given), "custom")
            object.__setattr__(self, "test_boxes", name)
            return
        if self.test_boxes == "custom":
            if given in TEST_BOXES.values():
                raise MedSAMError(f"test_boxes 'custom' with margin {given[0]:g} / jitter {given[1]} px is protocol "
                                  f"{next(n for n, v in TEST_BOXES.items() if v == given)!r}; name it so")
            return
        if self.test_boxes not in TEST_BOXES:
            raise MedSAMError(f"test_boxes {self.test_boxes!r} is not one of {tuple(TEST_BOXES)}")
        margin, jitter = TEST_BOXES[self.test_boxes]
        if given not in ((0.0, 0), (margin, jitter)):
            raise MedSAMError(f"test_boxes {self.test_boxes!r} means margin {margin:g} / jitter 0-{jitter} px; "
                              f"got margin {given[0]:g} / jitter {given[1]} px: give one or the other")
        object.__setattr__(self, "box_margin", margin)
        object.__setattr__(self, "box_jitter", jitter)

    def record(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> "EvalOptions":
        fields = {**asdict(self), **changes}
        if {"box_margin", "box_jitter"} & set(changes) and "test_boxes" not in changes:
            fields["test_boxes"] = ""  # named again from the new margin / jitter
        if "test_boxes" in changes and not {"box_margin", "box_jitter"} & set(changes):
            fields["box_margin"], fields["box_jitter"] = 0.0, 0  # set by the name
        return EvalOptions(**fields)

    @property
    def tag(self) -> str:
        """Suffix of this protocol's results folders (``layout.evaluation(model + tag)``): "" for the
        tight boxes (the paper's, and the folders earlier runs wrote), "_jittered", "_custom"."""
        return "" if self.test_boxes == "tight" else f"_{self.test_boxes}"
