"""Issue 20: named test-box protocols, the group bootstrap, Table 1's other targets, the slab NSD
beside the 2D NSD, and the README's results section (``python -m medsam_lib tables``)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsam_lib.evaluation import readme, tables
from medsam_lib.evaluation.options import TEST_BOXES, EvalOptions
from medsam_lib.fileio import MedSAMError
from medsam_lib.geometry import JITTER_MAX_PX

REPO = Path(__file__).resolve().parents[1]


# --- 1. test-box protocols -------------------------------------------------------------------------

def test_test_boxes_names_margin_and_jitter_and_refuses_clashes():
    assert EvalOptions().test_boxes == "tight"
    jit = EvalOptions(test_boxes="jittered")
    assert (jit.box_margin, jit.box_jitter) == (0.0, 19) == (0.0, JITTER_MAX_PX["official_code"])
    assert EvalOptions(box_jitter=19).test_boxes == "jittered"  # named from the numbers too
    assert EvalOptions(box_margin=5).test_boxes == "custom" and EvalOptions(box_jitter=20).test_boxes == "custom"
    assert jit.record()["test_boxes"] == "jittered" and jit.tag == "_jittered" and EvalOptions().tag == ""
    assert EvalOptions().with_(test_boxes="jittered") == jit
    assert jit.with_(test_boxes="tight").box_jitter == 0
    assert jit.with_(box_jitter=5).test_boxes == "custom"
    with pytest.raises(MedSAMError, match="test_boxes 'jittered' means margin 0 / jitter 0-19"):
        EvalOptions(test_boxes="jittered", box_jitter=20)
    with pytest.raises(MedSAMError, match="test_boxes 'tight' means"):
        EvalOptions(test_boxes="tight", box_margin=3)
    with pytest.raises(MedSAMError, match="not one of"):
        EvalOptions(test_boxes="loose")


def test_jittered_boxes_move_each_side_out_0_to_19_inclusive_seeded_per_target():
    """Through the evaluation's own path (predict_volume -> prompt_box): every shift 0..19 occurs, none beyond."""
    from medsam_lib.evaluation.inference import prompt_box, target_rng

    mask = np.zeros((256, 256), bool)
    mask[100:140, 90:160] = True
    tight = np.array([90, 100, 159, 139], float)
    opts = EvalOptions(test_boxes="jittered")
    shifts = np.array([np.abs(prompt_box(mask, opts.box_margin, opts.box_jitter, target_rng(0, ("d", str(k)))) - tight)
                       for k in range(600)])
    assert shifts.min() == 0 and shifts.max() == 19
    assert set(np.unique(shifts)) == set(range(20))
    a = prompt_box(mask, 0, opts.box_jitter, target_rng(0, ("d", "c", "t")))
    assert np.array_equal(a, prompt_box(mask, 0, opts.box_jitter, target_rng(0, ("d", "c", "t"))))  # per target
    assert np.array_equal(prompt_box(mask), tight)  # tight: the GT box itself


def test_metrics_rows_record_the_test_box_protocol():
    from medsam_lib.evaluation.run import METRICS_COLUMNS, PredictedTarget, score_predictions

    gt = np.zeros((1, 256, 256), bool)
    gt[0, 50:100, 50:100] = True
    meta = {"dataset": "d", "case": "c", "volume": "c", "image_key": "k", "target": "t", "instance": 0, "task": "",
            "modality": "X-Ray", "stand_in": False, "synthetic": False, "n_slices": 1, "split": "test",
            "spacing_z": 1.0, "curated_spacing_y": 1.0, "curated_spacing_x": 1.0, "spacing_known": False,
            "pixels": 2500, "model": "m"}
    frame = score_predictions([PredictedTarget(meta, gt, gt.copy(), 0)], EvalOptions(test_boxes="jittered"))
    assert "test_boxes" in METRICS_COLUMNS and list(frame["test_boxes"]) == ["jittered"]
    assert list(frame["box_jitter"]) == [19]


# --- 2. group bootstrap -----------------------------------------------------------------------------

def _hand_group_bootstrap(values, groups, seed, n=tables.BOOTSTRAP):
    """Written out with loops: groups in order of appearance, n draws of len(groups) groups with
    replacement from default_rng(seed).integers, the mean of all values of the drawn groups."""
    order = []
    for g in groups:
        if g not in order:
            order.append(g)
    members = {g: [v for v, h in zip(values, groups) if h == g] for g in order}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(order), size=(n, len(order)))
    means = []
    for draw in draws:
        pooled = [v for i in draw for v in members[order[i]]]
        means.append(sum(pooled) / len(pooled))
    return tuple(np.quantile(means, [0.025, 0.975]))


def test_group_bootstrap_equals_a_hand_written_one_and_the_case_bootstrap_for_singletons():
    values = [0.9, 0.8, 0.3, 0.35, 0.7, 0.6, 0.95]
    groups = ["a", "a", "b", "b", "c", "d", "e"]
    assert tables.group_bootstrap_ci(values, groups, 3) == pytest.approx(_hand_group_bootstrap(values, groups, 3))
    singles = list("abcdefg")
    assert tables.group_bootstrap_ci(values, singles, 3) == tables.bootstrap_ci(values, 3)
    assert tables.group_bootstrap_ci(values, groups, 3) != tables.bootstrap_ci(values, 3)
    assert all(math.isnan(v) for v in tables.group_bootstrap_ci([0.1, 0.2], ["a", "a"], 0))


def _metrics(rows, model_shift=0.0):
    base = {"dataset": "us", "volume": "", "image_key": "k", "modality": "Ultrasound", "stand_in": False,
            "synthetic": False, "n_slices": 1, "instance": 0, "split": "test", "task": "Vessel (Ultrasound)",
            "target": "artery", "dimensionality": "2D"}
    return pd.DataFrame([{**base, **r, "dsc": r["dsc"] + model_shift, "nsd": r["dsc"] - 0.1 + model_shift}
                         for r in rows])


def test_task_rows_means_cases_resamples_groups_and_pairs_group_means(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSAM_SHARED_DIR", str(tmp_path / "absent"))
    # two frames (volumes) of acquisition A1 share a group; a case's two targets average first
    rows = [{"case": "A1", "volume": "A1_1", "dsc": 0.9}, {"case": "A1", "volume": "A1_2", "dsc": 0.7},
            {"case": "A2", "volume": "A2_1", "dsc": 0.4}, {"case": "A3", "volume": "A3_1", "dsc": 0.8},
            {"case": "A3", "volume": "A3_1", "dsc": 0.6, "target": "artery", "instance": 1},
            {"case": "A4", "volume": "A4_1", "dsc": 0.5}, {"case": "A5", "volume": "A5_1", "dsc": 0.65}]
    base = _metrics(rows)
    ft = _metrics(rows, 0.05).assign(dsc=lambda f: f["dsc"] + np.arange(len(f)) * 0.01)
    long = tables.task_rows(base, base, ft, "test", 7)
    row = long.iloc[0]
    # independent: case means, then the mean over cases; CI resampling acquisitions
    case_means = {"A1_1": 0.9, "A1_2": 0.7, "A2_1": 0.4, "A3_1": 0.7, "A4_1": 0.5, "A5_1": 0.65}
    case_groups = ["A1", "A1", "A2", "A3", "A4", "A5"]
    values = [v * 100 for v in case_means.values()]
    assert (row["n_cases"], row["n_groups"]) == (6, 5)
    assert row["dsc_base"] == pytest.approx(np.mean(values))
    lo, hi = _hand_group_bootstrap(values, case_groups, 7)
    assert (row["dsc_base_lo"], row["dsc_base_hi"]) == pytest.approx((lo, hi))
    # Wilcoxon over the 5 acquisition means, paired
    from scipy.stats import wilcoxon

    def group_means(frame):
        per_case = frame.groupby(["case", "volume"])["dsc"].mean().reset_index()
        return per_case.groupby("case")["dsc"].mean().sort_index().to_numpy()
    assert row["dsc_p"] == pytest.approx(wilcoxon(group_means(base), group_means(ft)).pvalue)


def test_a_group_column_overrides_the_split_unit_and_a_split_case_is_refused():
    rows = [{"case": "c1", "dsc": 0.9, "group": "g"}, {"case": "c2", "dsc": 0.5, "group": "g"},
            {"case": "c3", "dsc": 0.7, "group": "h"}]
    cases = tables.per_case(_metrics(rows))
    assert list(cases["group"]) == ["us/g", "us/g", "us/h"]
    bad = _metrics([{"case": "c1", "dsc": 0.9, "group": "g"}, {"case": "c1", "dsc": 0.5, "group": "h"}])
    with pytest.raises(MedSAMError, match="case us/c1/ lies in 2 groups"):
        tables.per_case(bad)


def test_cases_of_two_datasets_with_one_name_stay_apart():
    rows = _metrics([{"case": "001", "dsc": 0.9}, {"case": "002", "dsc": 0.5}])
    other = rows.assign(dataset="jsrt", dsc=[0.1, 0.2])
    long = tables.task_rows(pd.concat([rows, other]), pd.concat([rows, other]), None, "test", 0)
    assert (long.iloc[0]["n_cases"], long.iloc[0]["n_groups"]) == (4, 4)
    assert long.iloc[0]["dsc_base"] == pytest.approx(42.5)


# --- 3./4. Table 1's other targets, the slab NSD ------------------------------------------------------

def _index_3d_and_2d():
    rows = []
    for case in ("h1", "h2", "h3"):
        for target in ("anterior hippocampus", "posterior hippocampus"):
            rows.append({"dataset": "mr", "case": case, "volume": case, "image_key": "mr", "modality": "MR",
                         "task": "", "target": target, "n_slices": 30, "split": "test", "stand_in": False,
                         "synthetic": False, "instance": 0, "dimensionality": "3D"})
    for case in ("x1", "x2"):
        rows.append({"dataset": "xr", "case": case, "volume": case, "image_key": "xray", "modality": "X-Ray",
                     "task": "Heart (X-Ray)", "target": "heart", "n_slices": 1, "split": "test", "stand_in": False,
                     "synthetic": False, "instance": 0, "dimensionality": "2D"})
    return pd.DataFrame(rows)


def test_table1_lists_other_3d_targets_and_table2_shows_the_slab_nsd(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSAM_SHARED_DIR", str(tmp_path / "absent"))
    index = _index_3d_and_2d()
    frame = index.assign(dsc=[0.8, 0.7, 0.6, 0.5, 0.9, 0.85, 0.9, 0.8], nsd=[0.7] * 6 + [0.5, 0.4])
    slab = frame[frame["dimensionality"] == "2D"].assign(nsd=[0.95, 0.85])
    long = tables.task_rows(index, frame, None, "test", 0, slab={"base": slab}, test_boxes="tight")
    t1 = tables.formatted(long, 1, False, False)
    assert list(t1["Task"]) == ["anterior hippocampus (MR) *", "posterior hippocampus (MR) *"]
    assert list(t1["Cases (groups)"]) == ["3 (3)", "3 (3)"]
    heart = long[long["task"] == "Heart (X-Ray)"].iloc[0]
    assert heart["nsd_base"] == pytest.approx(45.0) and heart["nsd_slab_base"] == pytest.approx(90.0)
    assert long[long["table"] == 1]["nsd_slab_base"].isna().all()
    t2 = tables.formatted(long, 2, False, False)
    assert t2.loc[0, "NSD slab base"].startswith("90.00") and t2.loc[0, "NSD base"].startswith("45.00")
    assert "NSD slab ours-MedSAM" in t2.columns and "NSD slab base" not in t1.columns


def test_captions_say_when_table1_has_no_paper_task_and_which_nsd_compares(tmp_path):
    from types import SimpleNamespace

    from medsam_lib.evaluation import chain

    store = SimpleNamespace(index=_index_3d_and_2d(), info={"manifests": {"cohorts": {}}}, preset="paper")
    loaded = SimpleNamespace(name="litemedsam")
    models = chain.Models(SimpleNamespace(loaded=loaded), None, "")
    opts = EvalOptions(test_boxes="jittered")
    one = chain.caption(1, "cohorts", store, models, opts, "")
    two = chain.caption(2, "cohorts", store, models, opts, "")
    assert "no 3D task of the paper in this profile's data: only its other 3D targets, marked *" in one
    assert "test boxes 'jittered'" in one and "0-19 px" in one
    assert "(2D tasks of the paper)" in two and "compare the paper's NSD with 'NSD slab'" in two
    assert "slab" not in chain.caption(2, "cohorts", store, models, opts, "", slab_nsd=False)


def test_write_tables_keeps_each_protocol_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM_SHARED_DIR", str(tmp_path / "absent"))
    index = _index_3d_and_2d()
    frame = index.assign(dsc=0.8, nsd=0.7)
    captions = {1: "Table 1. x.", 2: "Table 2. x."}
    for name in TEST_BOXES:
        tables.write_tables(tables.task_rows(index, frame, None, "test", 0, test_boxes=name), tmp_path, captions, False)
    assert {p.name for p in tmp_path.glob("tables_1_2*.csv")} == {"tables_1_2.csv", "tables_1_2_jittered.csv"}
    assert (tmp_path / "table2_2d_jittered.md").is_file()
    mixed = pd.concat([tables.task_rows(index, frame, None, "test", 0, test_boxes=n) for n in TEST_BOXES])
    with pytest.raises(MedSAMError, match="mixes"):
        tables.write_tables(mixed, tmp_path, captions, False)


# --- 5. the README section ---------------------------------------------------------------------------

def _long(name, shift):
    return pd.DataFrame([
        {"table": 2, "task": "Vessel (Ultrasound)", "paper_task": True, "stand_in": True, "n_cases": 12, "n_groups": 3,
         "test_boxes": name, "dsc_base": 80.0 + shift, "dsc_base_lo": 70.04, "dsc_base_hi": 88.0,
         "dsc_finetuned": 85.0, "dsc_finetuned_lo": 80.0, "dsc_finetuned_hi": 90.0, "dsc_p": float("nan"),
         "nsd_base": 60.0, "nsd_base_lo": 50.0, "nsd_base_hi": 70.0, "nsd_finetuned": 65.0, "nsd_finetuned_lo": 60.0,
         "nsd_finetuned_hi": 70.0, "nsd_p": float("nan"), "nsd_slab_base": 90.0, "nsd_slab_base_lo": 85.0,
         "nsd_slab_base_hi": 95.0, "nsd_slab_finetuned": 92.0, "nsd_slab_finetuned_lo": 88.0,
         "nsd_slab_finetuned_hi": 96.0, "paper_dsc_medsam": 80.84, "paper_nsd_medsam": 84.6},
        {"table": 1, "task": "anterior hippocampus (MR)", "paper_task": False, "stand_in": False, "n_cases": 7,
         "n_groups": 7, "test_boxes": name, "dsc_base": 70.0, "dsc_base_lo": 60.0, "dsc_base_hi": 80.0,
         "dsc_finetuned": 75.0, "dsc_finetuned_lo": 65.0, "dsc_finetuned_hi": 85.0, "dsc_p": 0.0312,
         "nsd_base": 50.0, "nsd_base_lo": 40.0, "nsd_base_hi": 60.0, "nsd_finetuned": 52.0, "nsd_finetuned_lo": 45.0,
         "nsd_finetuned_hi": 60.0, "nsd_p": 0.5, "nsd_slab_base": float("nan"), "paper_dsc_medsam": float("nan"),
         "paper_nsd_medsam": float("nan")},
        {"table": 1, "task": "Liver (CT)", "paper_task": True, "stand_in": False, "n_cases": 0, "n_groups": 0,
         "test_boxes": name, "dsc_base": float("nan"), "nsd_base": float("nan"), "dsc_finetuned": float("nan")}])


def test_render_table_rows_cells_and_order():
    text = readme.render_table(_long("tight", 0.0))
    lines = text.splitlines()
    assert lines[0].startswith("| Table | Task | Cases (groups) | DSC base |")
    assert lines[2] == ("| 1 | anterior hippocampus (MR) * | 7 (7) | 70.0 [60.0, 80.0] | 75.0 [65.0, 85.0] | 0.031 | "
                        "50.0 [40.0, 60.0] | 52.0 [45.0, 60.0] | 0.500 |  |  |  |  |")
    assert lines[3] == ("| 2 | Vessel (Ultrasound) † | 12 (3) | 80.0 [70.0, 88.0] | 85.0 [80.0, 90.0] | n<5 | "
                        "60.0 [50.0, 70.0] | 65.0 [60.0, 70.0] | n<5 | 90.0 [85.0, 95.0] | 92.0 [88.0, 96.0] | "
                        "80.8 | 84.6 |")
    assert "Paper tasks with data here but no test case: Liver (CT)." in text


def test_readme_section_is_rendered_between_markers_atomically_and_refused_without(tmp_path):
    tables_dir = tmp_path / "tables"
    tables_dir.mkdir()
    target = tmp_path / "README.md"
    target.write_text("# Title\n\n<!-- results:p:begin -->\nold\n<!-- results:p:end -->\n\nafter\n", encoding="utf-8")
    with pytest.raises(MedSAMError, match="no tables_1_2.csv, tables_1_2_jittered.csv"):
        readme.update_readme(target, tables_dir, "p")
    _long("tight", 0.0).to_csv(tables_dir / "tables_1_2.csv", index=False)
    _long("jittered", -5.0).to_csv(tables_dir / "tables_1_2_jittered.csv", index=False)
    readme.update_readme(target, tables_dir, "p")
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\n<!-- results:p:begin -->\n") and text.endswith("<!-- results:p:end -->\n\nafter\n")
    body = readme.section(text, "p")
    assert body == readme.render(readme.read_longs(tables_dir), "p").rstrip()
    assert "**Test boxes 'tight'**" in body and "**Test boxes 'jittered'**" in body and "75.0 [70.0, 88.0]" in body
    assert "old" not in body
    readme.update_readme(target, tables_dir, "p")  # idempotent
    assert target.read_text(encoding="utf-8") == text
    (tmp_path / "plain.md").write_text("# no markers\n", encoding="utf-8")
    with pytest.raises(MedSAMError, match="marker <!-- results:p:begin --> found 0 times"):
        readme.update_readme(tmp_path / "plain.md", tables_dir, "p")
    swapped = tmp_path / "swapped.md"
    swapped.write_text("<!-- results:p:end -->\n<!-- results:p:begin -->\n", encoding="utf-8")
    with pytest.raises(MedSAMError, match="comes before"):
        readme.update_readme(swapped, tables_dir, "p")


def test_tables_command_exit_codes(tmp_path, monkeypatch):
    from medsam_lib.cli import main

    monkeypatch.setenv("MEDSAM_RESULTS_ROOT", str(tmp_path / "results"))
    target = tmp_path / "README.md"
    target.write_text("<!-- results:cohorts:begin -->\n<!-- results:cohorts:end -->\n", encoding="utf-8")
    assert main(["tables", "--profile", "cohorts", "--readme", str(target)]) == 2  # no CSVs yet
    tables_dir = tmp_path / "results" / "cohorts" / "tables"
    tables_dir.mkdir(parents=True)
    for name, shift in (("tight", 0.0), ("jittered", 1.0)):
        _long(name, shift).to_csv(tables_dir / readme.csv_name(name), index=False)
    assert main(["tables", "--profile", "cohorts", "--readme", str(target)]) == 0
    assert "81.0 [70.0, 88.0]" in target.read_text(encoding="utf-8")  # the jittered protocol's base DSC
    assert main(["tables", "--profile", "cohorts", "--readme", str(tmp_path / "absent.md")]) == 2


def test_committed_readme_section_matches_the_committed_tables():
    tables_dir = REPO / "results" / "cohorts" / "tables"
    missing = [n for n in TEST_BOXES if not (tables_dir / readme.csv_name(n)).is_file()]
    assert not missing, f"{tables_dir}: the committed cohorts tables are missing ({missing})"
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.section(text, "cohorts", "README.md") == \
        readme.render(readme.read_longs(tables_dir), "cohorts").rstrip()


def test_real_cohorts_resample_whole_acquisitions_and_children(shared_cohorts, monkeypatch, tmp_path):
    """On the real cohorts' cases (manifest ``cohorts``, no curation): the tables' cases and groups are
    the README's (50 carotid frames in 13 acquisitions, 24 CHASE_DB1 eyes of 12 children), and the CI
    equals a hand-written bootstrap over the groups the README names, taken from the file names."""
    import re
    import zlib

    from medsam_lib.data.manifests import load_manifest, resolve_cases

    monkeypatch.setenv("MEDSAM_SHARED_DIR", str(tmp_path / "absent"))
    manifest = load_manifest("cohorts")
    readme_group = {"us_carotid_artery_cca": lambda stem: stem.split("_slice_")[0],
                    "fundus_retinal_vessel_chasedb1": lambda stem: re.fullmatch(r"(Image_\d+)[LR]", stem).group(1)}
    expected = {"us_carotid_artery_cca": (50, 13), "fundus_retinal_vessel_chasedb1": (24, 12)}
    for folder, rule in readme_group.items():
        ds = manifest.dataset(folder)
        target = ds.targets[0]
        task = next(iter(target.paper_tasks.values()))
        rows, files = [], []
        for case in resolve_cases(ds, shared_cohorts):
            name = case.images[ds.images[0].key].rsplit("/", 1)[1]
            value = (zlib.crc32(name.encode()) % 1000) / 1000
            rows.append({"dataset": folder, "case": case.case, "volume": case.volume, "image_key": ds.images[0].key,
                         "task": task, "target": target.name, "modality": ds.modality, "stand_in": True,
                         "synthetic": False, "n_slices": 1, "instance": 0, "split": "test", "dsc": value,
                         "nsd": value})
            files.append((name.rsplit(".", 1)[0], value))
        frame = pd.DataFrame(rows)
        row = tables.task_rows(frame, frame, None, "test", 11).iloc[0]
        assert (row["n_cases"], row["n_groups"]) == expected[folder], folder
        values = [v * 100 for _, v in sorted(files)]
        groups = [rule(stem) for stem, _ in sorted(files)]
        assert row["dsc_base"] == pytest.approx(np.mean(values))
        assert (row["dsc_base_lo"], row["dsc_base_hi"]) == pytest.approx(_hand_group_bootstrap(values, groups, 11))


def test_slab_frames_rescore_only_2d_targets_with_the_unit_axis_slab():
    from medsam_lib.evaluation import chain, metrics
    from medsam_lib.evaluation.run import PredictedTarget

    meta = {"dataset": "d", "case": "c", "volume": "c", "image_key": "k", "target": "t", "instance": 0, "task": "",
            "modality": "X-Ray", "stand_in": False, "synthetic": False, "split": "test", "spacing_z": 1.0,
            "curated_spacing_y": 1.0, "curated_spacing_x": 1.0, "spacing_known": False, "pixels": 1, "model": "m"}
    gt = np.zeros((1, 256, 256), bool)
    gt[0, 50:100, 50:100] = True
    pred = np.roll(gt, 3, axis=2)
    flat = PredictedTarget({**meta, "n_slices": 1}, gt, pred, 0)
    vol = PredictedTarget({**meta, "case": "v", "n_slices": 2}, np.repeat(gt, 2, 0), np.repeat(pred, 2, 0), 0)
    out = chain.slab_frames({"base": [flat, vol]}, EvalOptions())
    frame = out["base"]
    assert list(frame["case"]) == ["c"] and list(frame["nsd_2d"]) == ["unit_axis"]
    want = metrics.score(pred[0], gt[0], (1.0, 1.0), 1.0, "unit_axis")["nsd"]
    assert frame["nsd"].iloc[0] == pytest.approx(want)
    assert want != pytest.approx(metrics.score(pred[0], gt[0], (1.0, 1.0), 1.0, "true")["nsd"])


def test_committed_tables_count_the_manifests_test_split(shared_cohorts):
    """Per task, the committed table's test cases and groups are those of the cohorts manifest's own split
    (``splits.split_groups`` over each data set's cases, seed 0 as the profile), computed here from the files
    without curation."""
    from medsam_lib.data.manifests import load_manifest, resolve_cases
    from medsam_lib.data.splits import split_groups

    manifest = load_manifest("cohorts")
    expected: dict[str, tuple[set, set]] = {}
    for ds in manifest.datasets:
        cases = list(resolve_cases(ds, shared_cohorts))
        split = split_groups([c.case for c in cases], 0, ds.name, manifest.split)
        test = [c for c in cases if split[c.case] == "test"]
        for target in ds.targets:
            for label in set(target.paper_tasks.values()) or {f"{target.name} ({ds.modality})"}:
                images, groups = expected.setdefault(label, (set(), set()))
                images |= {(ds.name, c.case, c.volume) for c in test}
                groups |= {(ds.name, c.case) for c in test}
    for name in TEST_BOXES:
        long = pd.read_csv(REPO / "results" / "cohorts" / "tables" / readme.csv_name(name))
        scored = long[long["n_cases"] > 0]
        assert set(scored["task"]) == set(expected), name
        for _, row in scored.iterrows():
            images, groups = expected[row["task"]]
            assert (row["n_cases"], row["n_groups"]) == (len(images), len(groups)), (name, row["task"])
