"""The computed "What this run shows" summaries (medsam_lib.findings) against small made-up tables whose
answers are worked out here, independently of the library."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medsam_lib import findings
from medsam_lib.findings import paired_difference


def test_direction_and_ci_excluding_zero():
    base = np.array([0.50, 0.60, 0.70, 0.80, 0.90])
    better = base + np.array([0.10, 0.12, 0.08, 0.11, 0.09])  # every pair up by about 0.1
    d = paired_difference(base, better)
    assert d.n == 5 and d.mean == pytest.approx(0.10)
    assert d.direction == "higher" and d.ci_excludes_zero
    assert 0.08 <= d.lo <= d.mean <= d.hi <= 0.12  # the mean of resampled diffs stays within their range
    worse = paired_difference(better, base)
    assert worse.direction == "lower" and worse.ci_excludes_zero and worse.hi < 0


def test_ci_including_zero():
    a = np.full(6, 0.5)
    b = a + np.array([0.2, -0.2, 0.1, -0.1, 0.05, -0.05])  # mean 0, spread both ways
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(0.0, abs=1e-12)
    assert d.direction == "equal" and not d.ci_excludes_zero
    mixed = paired_difference(a, a + np.array([0.3, -0.2, 0.1, -0.1, 0.05, -0.05]))  # mean +0.0167, CI across 0
    assert mixed.direction == "higher" and not mixed.ci_excludes_zero and mixed.lo < 0 < mixed.hi
    assert "includes 0" in mixed.describe()


def test_one_pair_has_no_ci():
    d = paired_difference([0.8], [0.7])
    assert d.n == 1 and d.mean == pytest.approx(-0.1) and d.direction == "lower"
    assert math.isnan(d.lo) and not d.ci_excludes_zero
    assert "n = 1: too few for a CI" in d.describe()
    few = paired_difference([0.8, 0.7, 0.6, 0.5], [0.7, 0.6, 0.5, 0.4])  # 4 pairs, all down: still no CI
    assert few.direction == "lower" and math.isnan(few.lo) and not few.ci_excludes_zero
    assert "n = 4: too few for a CI, which needs 5" in few.describe()


def test_nan_pairs_dropped_and_empty_input():
    d = paired_difference([0.5, np.nan, 0.7], [0.6, 0.9, np.nan])
    assert d.n == 1 and d.mean == pytest.approx(0.1)
    empty = paired_difference([], [])
    assert empty.n == 0 and empty.direction == "equal"
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1])


def test_best_and_worst():
    frame = pd.DataFrame({"task": ["a", "b", "c"], "dsc": [0.7, np.nan, 0.9]})
    assert findings.best_and_worst(frame, "dsc", "task") == (("c", 0.9), ("a", 0.7))


def test_quickstart_findings():
    table = pd.DataFrame({"example": ["us", "ct", "demo"], "predicted IoU": [0.80, 0.90, 0.95],
                          "Dice vs reference": [0.95, 0.85, None]})
    text = findings.quickstart_findings(table)
    assert text.startswith(findings.HEADING)
    assert "3 example(s)" in text and "2 with a reference" in text
    assert "best 0.950 (us), worst 0.850 (ct)" in text
    assert "by 0.050 to 0.150" in text  # |0.80 - 0.95| = 0.15, |0.90 - 0.85| = 0.05


def test_box_prompting_findings_count_boxes_and_say_when_none_was_drawn():
    table = pd.DataFrame({"box #": [1, 2], "predicted IoU": [0.9, 0.7], "Dice vs reference": [0.8, None]})
    text = findings.quickstart_findings(table, label="box #", noun="box(es)")
    assert "2 box(es) segmented" in text and "1 with a reference" in text
    assert "Dice against the reference: 0.800 (1)." in text and "by 0.100:" in text
    empty = findings.quickstart_findings(table.iloc[:0], label="box #", noun="box(es)")
    assert "No box was drawn" in empty
    # notebook 07's table: the points each box got and the quality flag, counted
    table = table.assign(points=["+(3, 4) -(9, 9)", ""], quality=["ok", "likely-wrong"])
    text = findings.quickstart_findings(table, label="box #", noun="box(es)")
    assert "2 box(es) segmented with one box each, 1 of them refined with points" in text
    assert "under 0.538, the IoU of a DSC-0.7 mask) marks 1 of 2 as likely wrong" in text


def test_finetuning_findings():
    table = pd.DataFrame({"dataset": ["d1", "d1", "d2", "d3", "d3", "all"],
                          "target": ["liver", "kidney", "lung", "heart", "tumour", "all"],
                          "targets": [4, 3, 2, 2, 1, 12], "base_dsc": [0.90, 0.80, 0.70, 0.80, 0.60, 0.78],
                          "finetuned_dsc": [0.85, 0.78, 0.60, 0.77, 0.56, 0.73]})
    text = findings.finetuning_findings(table)
    # differences -0.05, -0.02, -0.10, -0.03, -0.04: all down, mean -0.048
    assert "fine-tuned is lower than base by -0.0480" in text
    assert "excludes 0; n = 5" in text
    assert "0 group(s) improved, 5 got worse" in text and "largest loss -0.1000 (lung)" in text


def _sweep():
    rows = []
    dsc = {("base", 0): [0.8, 0.9], ("base", 10): [0.9, 0.95], ("base", 20): [0.7, 0.8],
           ("finetuned", 0): [0.85, 0.9], ("finetuned", 10): [0.9, 0.9], ("finetuned", 20): [0.6, 0.7]}
    for (model, margin), values in dsc.items():
        for k, v in enumerate(values):
            rows.append({"model": model, "margin": margin, "modality": "CT", "target": f"t{k}",
                         "image_id": f"img{k}", "dsc": v})
    return pd.DataFrame(rows)


def test_failures_findings():
    strata = pd.DataFrame({"model": ["base", "base", "base"], "size": ["< 0.5%", "0.5-2%", "2-8%"],
                           "n": [1, 0, 3], "dsc": [0.6, np.nan, 0.9], "lo": [np.nan] * 3, "hi": [np.nan] * 3})
    cases = {"base": [{"rules": ["tiny object: 20 px", "low contrast: 0.2"], "failed": 2, "of": 8}],
             "finetuned": []}
    text = findings.failures_findings(cases, _sweep(), strata)
    assert "base: 2 of 8 targets under DSC 0.9 (the lowest 1 shown); rules they meet: low contrast, tiny object" in text
    assert "finetuned: no target under DSC 0.9" in text
    # base: +0 px mean 0.85, +10 px 0.925 (the best); +20 px 0.75
    assert "base: a tight box (+0 px) scores 0.850, below +10 px (0.925)" in text
    # at +20 px: differences -0.1, -0.1 -> lower, mean -0.100; a constant difference has a zero-width CI
    assert "fine-tuned is lower than base by -0.100" in text
    assert "highest mean DSC in the 2-8% size stratum (0.900), lowest in < 0.5% (0.600)" in text


def test_curation_findings():
    index = pd.DataFrame({"dataset": ["a", "a", "b"], "case": ["1", "2", "1"], "image_id": ["x", "y", "z"],
                          "split": ["train", "test", "train"]})
    comparison = pd.DataFrame({"targets (paper)": [10, 5], "targets (official_code)": [8, 5]},
                              index=pd.MultiIndex.from_tuples([("S", "ct"), ("S", "mr")], names=["data", "dataset"]))
    text = findings.curation_findings(index, comparison)
    assert "3 cases, 3 curated slices, 3 targets; 2 cases in train, 1 cases in test" in text
    assert "paper -> official_code preset: ct 10 -> 8; 1 data set(s) unchanged" in text
    with_validation = index.assign(split=["train", "test", "validation"])
    assert "1 cases in train, 1 cases in validation, 1 cases in test" in findings.curation_findings(with_validation)


def test_tables_findings_pairs_cases_and_names_the_2d_nsd_definition():
    # Table 1: Liver with two cases, Pancreas with one; fine-tuned lower by 2 and 4 DSC points on Liver,
    # by 6 on Pancreas: per-case differences -2, -4, -6 (n = 3), all below 0.
    def frame(dsc):
        return pd.DataFrame({"task": ["Liver (CT)", "Liver (CT)", "Pancreas (CT)"], "target": ["liver"] * 2 + ["p"],
                             "modality": ["CT"] * 3, "case": ["c1", "c2", "c3"], "dsc": dsc, "nsd": [0.9] * 3})

    frames = {"base": frame([0.90, 0.80, 0.70]), "finetuned": frame([0.88, 0.76, 0.64])}
    long = pd.DataFrame({"task": ["Liver (CT)", "Pancreas (CT)"], "table": [1, 1], "paper_task": [True, True],
                         "n_cases": [2, 1], "dsc_base": [85.0, 70.0], "dsc_finetuned": [82.0, 64.0],
                         "dsc_improve": [-3.0, -6.0], "nsd_vs_medsam": [5.0, -12.0]})
    effects = pd.DataFrame({"choice": ["paper defaults", "nsd_2d"], "setting": ["-", "unit_axis"],
                            "model": ["base", "base"], "T2 NSD": [64.5, 95.1]})
    text = findings.tables_findings(long, frames, effects)
    assert "Table 1: 2 paper task(s), 3 test case(s); average DSC base 77.50, fine-tuned 73.00 (-4.50 points)" in text
    assert "Table 1 DSC per test group: fine-tuned is lower than base by -4.00 points (n = 3: too few" in text
    assert "Table 1 NSD per test group: fine-tuned and base are equal (n = 3)" in text
    assert "best task Liver (CT) (82.00 DSC), worst Pancreas (CT) (64.00)" in text
    assert "largest NSD gap to the published MedSAM: Pancreas (CT) -12.00 points" in text
    assert "Table 2: no task with test cases" in text
    assert "base average 64.50" in text and "it reads 95.10" in text
    assert findings.nsd_2d_note(None) == ""


def test_group_difference_pairs_groups_not_frames():
    # Vessel (US): acquisition a1 has 3 frames (each 10 points lower fine-tuned), a2..a5 one frame each (2
    # points higher). Per group: -10, +2, +2, +2, +2 -> mean -0.4 over 5 groups (per frame it would be -4.75).
    cases = ["a1", "a1", "a1", "a2", "a3", "a4", "a5"]
    volumes = ["f1", "f2", "f3", "f1", "f1", "f1", "f1"]

    def frame(dsc):
        return pd.DataFrame({"task": ["Vessel (Ultrasound)"] * 7, "target": ["vessel"] * 7,
                             "modality": ["US"] * 7, "dataset": ["cca"] * 7, "case": cases, "volume": volumes,
                             "dsc": dsc, "nsd": [0.5] * 7})

    base = np.array([0.8, 0.8, 0.8, 0.5, 0.6, 0.7, 0.9])
    ft = base + np.array([-0.1, -0.1, -0.1, 0.02, 0.02, 0.02, 0.02])
    d = findings.group_difference(frame(base), frame(ft), ["Vessel (Ultrasound)"], "dsc", seed=0)
    assert d.n == 5
    assert d.mean == pytest.approx(-0.4)
    diffs = np.array([-10.0, 2.0, 2.0, 2.0, 2.0])
    assert (d.lo, d.hi) == pytest.approx(findings.bootstrap_ci(diffs, 0))


def test_protocol_findings_counts_tasks_by_wilcoxon_direction():
    from types import SimpleNamespace

    def frame(dsc, task):
        n = len(dsc)
        return pd.DataFrame({"task": [task] * n, "target": ["t"] * n, "modality": ["US"] * n, "dataset": ["d"] * n,
                             "case": [f"c{i}" for i in range(n)], "dsc": dsc, "nsd": [0.5] * n})

    base = frame([0.5, 0.6, 0.7, 0.8, 0.9, 0.55], "Breast Tumor (Ultrasound)")
    up = frame([0.6, 0.7, 0.8, 0.9, 0.95, 0.6], "Breast Tumor (Ultrasound)")
    long = pd.DataFrame({"task": ["Breast Tumor (Ultrasound)"], "table": [2], "paper_task": [True], "n_cases": [6],
                         "dsc_base": [67.5], "dsc_finetuned": [75.8], "dsc_improve": [8.3], "dsc_p": [0.03]})
    runs = {"tight": SimpleNamespace(long=long, frames={"base": base, "finetuned": up}),
            "jittered": SimpleNamespace(long=long.assign(dsc_p=[0.2]), frames={"base": base})}
    text = findings.protocol_findings(runs)
    assert "Test boxes tight, DSC per test group over 1 task(s): fine-tuned is higher than base by +8.33 points" in text
    assert "higher fine-tuned DSC in 1 (Breast Tumor (Ultrasound)) and a lower one in 0 (none)" in text
    assert "Test boxes jittered: no fine-tuned model" in text


def test_teardown_findings():
    modes = pd.DataFrame({"panel": ["segment everything", "box", "points: 1 foreground + 0 background",
                                    "points: 1 foreground + 1 background"],
                          "masks": [12, 1, 1, 1], "masks passing SAM's filters": [3, None, None, None],
                          "Dice vs liver": [0.5, 0.95, 0.40, 0.70]})
    multimask = pd.DataFrame({"model": ["A"] * 3 + ["B"] * 3, "candidate": [1, 2, 3] * 2,
                              "Dice vs liver": [0.2, 0.9, 0.6, 0.01, 0.02, 0.0],
                              "SAM's pick": [True, False, False, False, True, False]})
    text = findings.teardown_findings(modes, multimask)
    assert "The box gives Dice 0.950, above the best point prompt (0.700 with 1 foreground + 1 background" in text
    assert "12 masks; 3 pass" in text
    assert "A: SAM's multimask pick (candidate 1, Dice 0.200) is not the best-fitting one (Dice 0.900)" in text
    assert "B: SAM's multimask pick (candidate 2, Dice 0.020) is one of 3 candidates none of which fits" in text


def test_embeddings_findings_do_not_depend_on_what_the_cache_held():
    """nbval re-executes 03 against a store the test session already built: the summary must read the
    same whether the embeddings were computed now or reused."""
    agreement = pd.DataFrame({"modality": ["CT", "MR"], "cosine (store vs set_image)": [0.9991, 0.9999]})
    computed = findings.embeddings_findings({"computed": 76, "copied": 0, "kept": 0}, agreement)
    reused = findings.embeddings_findings({"computed": 0, "copied": 0, "kept": 76}, agreement)
    assert computed == reused and "76 embeddings in the store" in computed
    assert "lowest cosine similarity 0.9991 (CT)" in computed
