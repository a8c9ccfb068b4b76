"""How notebook 05 shows its tables: the shared caption once, the choice table with readable names."""
from __future__ import annotations

import pandas as pd
import pytest

from medsam_lib.evaluation import tables


def test_split_captions_says_the_shared_part_once():
    captions = {1: "Table 1 (3D tasks), profile 'demo': DSC. Models: base a. Boxes: at 256 x 256. NSD at 1 mm.",
                2: "Table 2 (2D tasks), profile 'demo': DSC. Models: base a. Boxes: at 256 x 256. NSD at 1 mm."}
    shared, own = tables.split_captions(captions)
    assert shared == "Models: base a. Boxes: at 256 x 256. NSD at 1 mm."
    assert own == {1: "Table 1 (3D tasks), profile 'demo': DSC.", 2: "Table 2 (2D tasks), profile 'demo': DSC."}


def _effects():
    return pd.DataFrame([
        {"choice": "paper defaults", "setting": "-", "model": "base", "T1 DSC": 80.0, "T1 DSC change": 0.0},
        {"choice": "nsd_2d", "setting": "unit_axis", "model": "base", "T1 DSC": 80.0, "T1 DSC change": 0.0},
        {"choice": "paper defaults", "setting": "-", "model": "finetuned", "T1 DSC": 82.0, "T1 DSC change": 0.0},
    ])


def test_choice_table_names_rows_and_columns():
    frame = tables.choice_table(_effects())
    assert list(frame.columns) == ["Table 1 (3D) DSC", "Table 1 (3D) DSC change"]
    assert list(frame.index) == ["paper defaults (base)", "2D NSD: unit_axis (base)", "paper defaults (finetuned)"]


def test_choice_caption_explains_the_other_average():
    # Table 1: two paper tasks (90, 70 -> 80 in its Average row) and one other target (scored, 50):
    # the choice table's mean over all three labels is (90 + 70 + 50) / 3 = 70.
    long = pd.DataFrame({"table": [1, 1, 1], "n_cases": [1, 1, 1], "paper_task": [True, True, False],
                         "dsc_base": [90.0, 70.0, 50.0]})
    effects = _effects().assign(**{"T1 DSC": [70.0, 70.0, 72.0]})
    text = tables.choice_caption(effects, long)
    assert "3 labels (2 paper tasks + 1 other targets), base DSC 70.00 here vs 80.00 in its Average row" in text
    assert "Table 2" not in text.split("included")[1]  # no Table 2 rows, no Table 2 note
    paper_only = tables.choice_caption(effects, long[long["paper_task"]])
    assert "Table 1: paper tasks only, as in its Average row" in paper_only


@pytest.mark.parametrize("finetuned", [True, False])
def test_notebook_view_has_both_tables_and_one_shared_caption(finetuned):
    long = pd.DataFrame([{"task": t, "paper_task": True, "table": k, "stand_in": False, "n_cases": 1,
                          "published_available": False, **{f"{m}_{w}{s}": 50.0 for m in ("dsc", "nsd")
                                                           for w in ("base", "finetuned") for s in ("", "_lo", "_hi")},
                          "dsc_improve": 0.0, "nsd_improve": 0.0, "dsc_p": float("nan"), "nsd_p": float("nan")}
                         for t, k in (("Liver (CT)", 1), ("Lungs (X-Ray)", 2))])
    captions = {1: "Table 1 (3D). Shared sentence.", 2: "Table 2 (2D). Shared sentence."}
    text = tables.notebook_view(long, captions, finetuned)
    assert text.count("Shared sentence.") == 1 and "**Table 1 (3D).**" in text and "**Table 2 (2D).**" in text
    assert "Liver (CT)" in text and "Lungs (X-Ray)" in text
