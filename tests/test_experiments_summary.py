"""``training.experiments.versus_base`` and ``findings.experiment_findings`` against hand computations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsam_lib import findings
from medsam_lib.evaluation.tables import bootstrap_ci
from medsam_lib.training import experiments


def _scores():
    rows = []
    # data set "us": 6 groups, group g0 has three frames; data set "eye": 2 groups (no CI alone)
    cases = [("us", "g0")] * 3 + [("us", f"g{i}") for i in range(1, 6)] + [("eye", "c1"), ("eye", "c2")]
    rng = np.random.default_rng(4)
    base = rng.uniform(0.3, 0.9, len(cases))
    for kind, shift in (("tight", -0.05), ("jittered", 0.04)):
        for variant, dice in (("base", base), ("paper", base + shift + np.arange(len(cases)) * 0.001)):
            for (dataset, case), d in zip(cases, dice):
                rows.append({"variant": variant, "boxes": kind, "dataset": dataset, "case": case, "target": "t",
                             "dice": float(d)})
    return pd.DataFrame(rows)


def test_versus_base_pairs_group_means_and_bootstraps_groups():
    scores = _scores()
    out = experiments.versus_base(scores, seed=2)
    row = out[(out["boxes"] == "tight") & (out["variant"] == "paper") & (out["dataset"] == "all")].iloc[0]
    # by hand: group means per model, then differences per group
    s = scores[scores["boxes"] == "tight"]
    g = s.groupby(["variant", "dataset", "case"])["dice"].mean().unstack("variant")
    diff = (g["paper"] - g["base"]).to_numpy()
    assert row["groups"] == 8 == diff.size  # 8 groups, not 10 frames
    assert row["change"] == pytest.approx(diff.mean())
    in_order = (g["paper"] - g["base"]).reindex(_order(s)).to_numpy()  # the bootstrap draws depend on the order
    assert (row["lo"], row["hi"]) == pytest.approx(bootstrap_ci(in_order, 2))
    eye = out[(out["boxes"] == "tight") & (out["dataset"] == "eye")].iloc[0]
    assert eye["groups"] == 2 and np.isnan(eye["lo"])  # under 5 groups: no CI
    jit = out[(out["boxes"] == "jittered") & (out["dataset"] == "all")].iloc[0]
    assert jit["change"] > 0 > row["change"]


def _order(s):
    """The groups in the order versus_base meets them (first appearance)."""
    first = s[s["variant"] == "paper"][["dataset", "case"]].drop_duplicates()
    return pd.MultiIndex.from_frame(first)


def test_experiment_findings_names_the_worst_and_best_data_set():
    out = experiments.versus_base(_scores(), seed=0)
    text = findings.experiment_findings(out)
    assert "Test boxes tight, Dice over all test groups: paper is lower than base" in text
    assert "Test boxes jittered, Dice over all test groups: paper is higher than base" in text
    base = _scores().query("variant == 'base' and boxes == 'tight'").groupby(["dataset", "case"])["dice"].mean()
    per = base.groupby(level=0).mean()
    assert f"the base does worst on {per.idxmin()} ({per.min():.3f} Dice)" in text
    assert "No comparison decoder" in findings.experiment_findings(None)
