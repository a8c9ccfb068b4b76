"""Beyond the paper's ideal boxes (issue 19, library half): the annotator model and its sweep, the
decoder's calibration and the correction loop. Numbers are checked against independent computations
written out here (brute-force AUROC, a hand ECE loop, scipy's labelling and distance transform,
surface-distance's NSD, a direct prediction per box)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from medsam_lib.evaluation import calibration
from medsam_lib.evaluation.annotator import (IDEAL, Annotator, annotator_grid, annotator_sweep, box_iou)
from medsam_lib.evaluation.correction import clicks_to_reach, correction_loop
from medsam_lib.evaluation.targets import middle_slices, task_means
from medsam_lib.fileio import MedSAMError
from medsam_lib.geometry import box_from_mask
from medsam_lib.prompts import next_correction_click
from profile_helpers import profile_in


# --- the annotator model (no model needed) -------------------------------------------------------

def random_masks(n=20, seed=0, shape=(64, 80)):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        mask = np.zeros(shape, bool)
        y0, x0 = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        mask[y0:y0 + rng.integers(1, shape[0] - y0), x0:x0 + rng.integers(1, shape[1] - x0)] = True
        yield mask


def test_zero_noise_and_shift_is_the_ideal_box_exactly():
    rng = np.random.default_rng(1)
    for mask in random_masks():
        tight = box_from_mask(mask)
        for _ in range(5):
            got = IDEAL.box(tight, mask.shape, rng)
            assert got.dtype == np.float64 and np.array_equal(got, tight)
    assert IDEAL.is_ideal and not Annotator(0.01).is_ideal


def test_noise_and_shift_have_the_documented_size():
    """sd of a side's placement = noise x extent, mean = shift x extent (outward), per axis (a box far
    from the image border, so nothing is clipped); computed from 4000 draws."""
    tight = np.array([400.0, 300.0, 599.0, 399.0])  # width 200, height 100 pixels
    person = Annotator(noise=0.05, shift=0.03)
    rng = np.random.default_rng(7)
    boxes = np.stack([person.box(tight, (1000, 1000), rng) for _ in range(4000)])
    outward = np.column_stack([tight[0] - boxes[:, 0], tight[1] - boxes[:, 1], boxes[:, 2] - tight[2],
                               boxes[:, 3] - tight[3]])
    extent = np.array([200, 100, 200, 100])
    assert np.allclose(outward.mean(axis=0), 0.03 * extent, atol=0.5)
    # rounding to whole pixels adds a variance of 1/12 px^2
    assert np.allclose(outward.std(axis=0), np.sqrt((0.05 * extent) ** 2 + 1 / 12), rtol=0.06)
    assert np.array_equal(boxes, np.rint(boxes))


def test_boxes_stay_in_the_image_and_never_collapse():
    rng = np.random.default_rng(3)
    for mask in random_masks(30, seed=5):
        tight = box_from_mask(mask)
        for person in (Annotator(0.5, 0.4), Annotator(0.3, -0.45), Annotator(1.0, 0.0)):
            box = person.box(tight, mask.shape, rng)
            assert 0 <= box[0] and 0 <= box[1] and box[2] <= mask.shape[1] - 1 and box[3] <= mask.shape[0] - 1
            assert box[2] - box[0] >= min(1, tight[2] - tight[0]) and box[3] - box[1] >= min(1, tight[3] - tight[1])


def test_sweep_levels_share_draws_so_boxes_loosen_monotonically():
    tight = np.array([100.0, 100.0, 149.0, 139.0])
    z = np.random.default_rng(11).standard_normal(4)
    levels = annotator_grid(noises=(0, 0.05, 0.1, 0.2))
    boxes = np.stack([a.draw(tight, (512, 512), z) for a in levels])
    moves = np.abs(boxes - tight)
    assert np.array_equal(boxes[0], tight)
    assert (np.diff(moves, axis=0) >= 0).all()  # each side only moves further as the noise grows
    assert [box_iou(b, tight) for b in boxes] == sorted((box_iou(b, tight) for b in boxes), reverse=True)
    assert [(a.noise, a.shift) for a in annotator_grid((0, 0.1), (-0.05, 0.1))] == [
        (0, -0.05), (0.1, -0.05), (0, 0.1), (0.1, 0.1)]


@pytest.mark.parametrize("noise, shift", [(-0.1, 0), (math.nan, 0), (0.1, -0.5), (0.1, math.inf)])
def test_bad_annotator_parameters_are_refused(noise, shift):
    with pytest.raises(MedSAMError, match="annotator"):
        Annotator(noise, shift)


def test_box_iou_equals_a_pixel_count():
    rng = np.random.default_rng(2)
    for _ in range(50):
        a = np.sort(rng.integers(0, 40, 4).reshape(2, 2), axis=0).T.ravel()[[0, 2, 1, 3]].astype(float)
        b = np.sort(rng.integers(0, 40, 4).reshape(2, 2), axis=0).T.ravel()[[0, 2, 1, 3]].astype(float)
        grid_a, grid_b = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
        grid_a[int(a[1]):int(a[3]) + 1, int(a[0]):int(a[2]) + 1] = True
        grid_b[int(b[1]):int(b[3]) + 1, int(b[0]):int(b[2]) + 1] = True
        assert box_iou(a, b) == pytest.approx((grid_a & grid_b).sum() / (grid_a | grid_b).sum())


# --- calibration numbers against hand computations -----------------------------------------------

def brute_auroc(scores, positive):
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def hand_ece(predicted, measured, n_bins):
    edges = [b / n_bins for b in range(n_bins + 1)]
    total, err = len(predicted), 0.0
    for b in range(n_bins):
        members = [i for i, p in enumerate(predicted)
                   if (edges[b] <= p < edges[b + 1]) or (b == n_bins - 1 and p >= edges[b + 1])
                   or (b == 0 and p < 0)]
        if members:
            mp = sum(predicted[i] for i in members) / len(members)
            mm = sum(measured[i] for i in members) / len(members)
            err += len(members) / total * abs(mp - mm)
    return err


def test_calibration_numbers_equal_a_hand_computation():
    rng = np.random.default_rng(4)
    measured = rng.uniform(0, 1, 300)
    predicted = np.clip(measured + rng.normal(0.1, 0.15, 300), -0.05, 1.08)  # over-confident, some > 1
    predicted[:6] = [0.3, 0.5, 1.0, 0.0, 0.7, 0.7]  # values on bin edges
    dsc = 2 * measured / (1 + measured)
    for n_bins in (5, 10, 15):
        assert calibration.expected_calibration_error(predicted, measured, n_bins) == pytest.approx(
            hand_ece(list(predicted), list(measured), n_bins), abs=1e-12)
        bins = calibration.reliability_bins(predicted, measured, n_bins)
        assert bins["count"].sum() == 300 and len(bins) == n_bins
    bins = calibration.reliability_bins(predicted, measured, 10)
    above = predicted >= 0.9
    assert bins.iloc[-1]["count"] == above.sum()  # values > 1 stay in the last bin, with their own value
    assert bins.iloc[-1]["mean_predicted"] == pytest.approx(predicted[above].mean())
    assert bins.iloc[3]["count"] == ((predicted >= 0.3) & (predicted < 0.4)).sum()  # 0.3 itself in bin 3
    # AUROC: the failures (DSC < 0.7) should carry the lower predicted IoU
    failed = dsc < 0.7
    assert calibration.failure_auroc(predicted, dsc) == pytest.approx(brute_auroc(-predicted, failed), abs=1e-12)
    ties = np.round(predicted, 1)  # many ties
    assert calibration.auroc(ties, failed) == pytest.approx(brute_auroc(ties, failed), abs=1e-12)
    assert math.isnan(calibration.auroc([0.1, 0.2], [True, True]))  # no negatives
    assert calibration.auroc([1, 2, 3], [False, False, True]) == 1.0


def test_bin_edges_follow_the_documented_rule():
    values = np.concatenate([np.arange(11) / 10, [-0.2, 1.3, 0.29999, 0.7000001]])
    want = [min(i, 9) for i in range(11)] + [0, 9, 2, 7]  # an inner edge b / 10 goes to bin b (the one above)
    assert calibration.bin_index(values, 10).tolist() == want


def test_quality_flag_and_its_performance():
    t = calibration.QUALITY_IOU_THRESHOLD
    assert t == pytest.approx(0.7 / 1.3)  # the IoU of a mask of DSC 0.7
    assert calibration.quality_flag(t - 1e-9) and not calibration.quality_flag(t) and not calibration.quality_flag(1.02)
    with pytest.raises(MedSAMError):
        calibration.quality_flag(float("nan"))
    predicted = np.array([0.2, 0.3, 0.9, 0.95, 0.4, 0.99])
    dsc = np.array([0.5, 0.9, 0.6, 0.95, 0.3, 0.92])
    got = calibration.flag_performance(predicted, dsc)
    # flagged: 0.2, 0.3, 0.4; failures: 0.5, 0.6, 0.3 (rows 0, 2, 4)
    assert got == {"targets": 6, "failures": 3, "flagged": 3, "sensitivity": 2 / 3, "specificity": 2 / 3,
                   "precision": 2 / 3}


# --- corrective clicks -----------------------------------------------------------------------------

def test_the_click_goes_to_the_centre_of_the_largest_error_region():
    truth = np.zeros((60, 60), bool)
    truth[10:40, 10:40] = True
    mask = truth.copy()
    mask[10:40, 30:40] = False  # missed: 30 x 10 = 300 px
    mask[45:50, 45:55] = True  # wrongly included: 5 x 10 = 50 px
    point, label = next_correction_click(mask, truth)
    assert label == 1
    missed = truth & ~mask
    dist = ndimage.distance_transform_edt(np.pad(missed, 1))[1:-1, 1:-1]
    assert dist[int(point[1]), int(point[0])] == dist.max() and missed[int(point[1]), int(point[0])]
    mask[10:40, 30:40] = True  # now only the false positive is left
    point, label = next_correction_click(mask, truth)
    assert label == 0 and 45 <= point[1] < 50 and 45 <= point[0] < 55
    assert next_correction_click(truth, truth) is None


def test_clicks_to_reach_reads_the_first_round_at_the_goal():
    base = {"model": "m", "case": "c", "volume": "v", "image_key": "k", "instance": 0, "task_label": "t",
            "modality": "CT", "group": "d/c"}
    rows = []
    for target, dscs in (("a", [0.95, 0.96]), ("b", [0.5, 0.85, 0.91]), ("c", [0.2, 0.3, 0.4])):
        rows += [{**base, "dataset": "d", "target": target, "round": r, "clicks": r, "dsc": d}
                 for r, d in enumerate(dscs)]
    need = clicks_to_reach(pd.DataFrame(rows)).set_index("target")
    assert need.loc["a", "clicks_to_goal"] == 0 and need.loc["b", "clicks_to_goal"] == 2
    assert need.loc["c", "clicks_to_goal"] == math.inf and not need.loc["c", "reached"]
    assert need.loc["b", "dsc_final"] == 0.91


def test_task_means_equal_a_direct_computation():
    from medsam_lib.evaluation.tables import group_bootstrap_ci

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"level": np.repeat([0, 1], 12), "task_label": np.tile(["A"] * 6 + ["B"] * 6, 2),
                          "group": np.tile(["g1", "g1", "g2", "g3", "g3", "g4"] * 2, 2),
                          "dsc": rng.uniform(0, 1, 24), "nsd": rng.uniform(0, 1, 24)})
    got = task_means(frame, by=("level",)).set_index(["level", "task_label"])
    for (level, task), part in frame.groupby(["level", "task_label"]):
        assert got.loc[(level, task), "dsc"] == pytest.approx(part["dsc"].mean())
        assert got.loc[(level, task), "n_groups"] == 4 and got.loc[(level, task), "n_targets"] == 6
        lo, hi = group_bootstrap_ci(part["nsd"], part["group"], 0)
        assert (got.loc[(level, task), "nsd_lo"], got.loc[(level, task), "nsd_hi"]) == (lo, hi)


# --- with LiteMedSAM on the demo phantoms ---------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory, lite_model):
    """The demo phantoms' chest X-ray (2 lungs, one 2D image) and the MR heart's left ventricle on
    3 slices; one predictor and one embedding cache (every image encoded once)."""
    from medsam_lib.data.curate import curate_profile
    from medsam_lib.data.store import CuratedDataset, read_index
    from medsam_lib.data.store_commit import write_index
    from medsam_lib.evaluation.inference import EmbeddingCache
    from medsam_lib.models.predictor import BoxPredictor

    store = curate_profile(profile_in(tmp_path_factory.mktemp("beyond")))
    index = read_index(store.path / "index.csv")
    index = index[index["volume"] == index.groupby("dataset")["volume"].transform("min")]
    keep = index[(index["dataset"] == "synthetic_xray_chest")
                 | ((index["dataset"] == "synthetic_mr_heart") & (index["slice"] < 3)
                    & (index["target"] == "left ventricle"))].copy()
    keep["split"] = "test"
    write_index(store.path, keep)
    predictor = BoxPredictor(lite_model)
    return CuratedDataset(store.path), predictor, EmbeddingCache(predictor)


def test_middle_slices_are_the_targets_middle_ground_truth_slices(demo):
    store, _, _ = demo
    targets = middle_slices(store, "test")
    assert len(targets) == 3
    heart = next(t for t in targets if t.meta["dataset"] == "synthetic_mr_heart")
    assert heart.slice == 1  # slices 0, 1, 2: the middle one
    row = store.index[(store.index["dataset"] == "synthetic_mr_heart") & (store.index["slice"] == 1)].iloc[0]
    assert np.array_equal(heart.gt, store.load_mask(row)) and heart.image_id == row["image_id"]
    assert heart.meta["group"] == f"synthetic_mr_heart/{row['case']}"
    assert np.array_equal(heart.tight_box, [row.x0, row.y0, row.x1, row.y1])


def test_annotator_sweep_scores_equal_a_direct_prediction(demo):
    import surface_distance as sd

    store, predictor, cache = demo
    targets = middle_slices(store, "test")
    levels = [IDEAL, Annotator(0.1, 0.0), Annotator(0.2, 0.15)]
    frame = annotator_sweep(predictor, targets, levels, seed=0, cache=cache, progress=False)
    assert len(frame) == 9 and list(frame["level"].unique()) == [0, 1, 2]
    again = annotator_sweep(predictor, targets, levels, seed=0, cache=cache, progress=False)
    pd.testing.assert_frame_equal(frame, again)  # seeded
    other = annotator_sweep(predictor, targets, levels, seed=1, cache=cache, progress=False)
    assert not np.array_equal(frame[["x0", "y0", "x1", "y1"]].to_numpy(), other[["x0", "y0", "x1", "y1"]].to_numpy())
    for target in targets:
        image = target.image()
        predictor.set_image(image)  # the image path, not the cached embedding
        rows = frame[(frame["dataset"] == target.meta["dataset"]) & (frame["target"] == target.meta["target"])]
        for _, row in rows.iterrows():
            box = row[["x0", "y0", "x1", "y1"]].to_numpy(dtype=float)
            if row["level"] == 0:
                assert np.array_equal(box, target.tight_box)
            result = predictor.predict([box])
            pred, gt = result.masks[0], target.gt
            assert row["dsc"] == pytest.approx(2 * (pred & gt).sum() / (pred.sum() + gt.sum()), abs=1e-12)
            assert row["iou"] == pytest.approx((pred & gt).sum() / (pred | gt).sum(), abs=1e-12)
            assert row["predicted_iou"] == pytest.approx(float(result.scores[0]), abs=1e-6)
            want = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(gt, pred, target.spacing), 1.0)
            assert row["nsd"] == pytest.approx(want, abs=1e-6)
    ideal, loose = frame[frame["level"] == 0], frame[frame["level"] == 2]
    assert (loose["box_iou_ideal"] < 1).all() and (ideal["box_iou_ideal"] == 1).all()
    assert (ideal["mean_offset_px"] == 0).all()
    summary = task_means(frame, by=("level", "noise", "shift"))
    assert set(summary["task_label"]) == set(t.meta["task_label"] for t in targets)


def test_correction_loop_clicks_where_the_previous_mask_was_wrong(demo):
    store, predictor, cache = demo
    targets = middle_slices(store, "test")
    person = Annotator(0.15, 0.2)  # loose boxes: something to correct
    frame = correction_loop(predictor, targets, rounds=3, cache=cache, annotator=person, progress=False)
    assert len(frame) == len(targets) * 4 and (frame.groupby("target")["round"].max() == 3).all()
    sweep = annotator_sweep(predictor, targets, [person], cache=cache, progress=False)
    for target in targets:
        rows = frame[(frame["dataset"] == target.meta["dataset"]) & (frame["target"] == target.meta["target"])]
        rows = rows.sort_values("round")
        box = rows.iloc[0][["x0", "y0", "x1", "y1"]].to_numpy(dtype=float)
        same = sweep[(sweep["dataset"] == target.meta["dataset"]) & (sweep["target"] == target.meta["target"])]
        assert rows.iloc[0]["dsc"] == same.iloc[0]["dsc"]  # round 0: the annotator's box alone
        predictor.set_image(target.image())
        points, labels = [], []
        previous = predictor.predict([box]).masks[0]
        for _, row in rows.iloc[1:].iterrows():
            if math.isnan(row["click_x"]):
                continue
            x, y, label = int(row["click_x"]), int(row["click_y"]), int(row["click_label"])
            missed, extra = target.gt & ~previous, previous & ~target.gt
            wrong = missed if label == 1 else extra
            assert wrong[y, x]  # a foreground click in a missed pixel, a background one in a wrong one
            sizes = {}
            for kind, region in ((1, missed), (0, extra)):
                labelled, n = ndimage.label(region)  # 4-connected regions
                sizes[kind] = (labelled, np.bincount(labelled.ravel())[1:])
            largest = max(int(v.max()) if v.size else 0 for _, v in sizes.values())
            labelled, counts = sizes[label]
            assert counts[labelled[y, x] - 1] == largest  # in the largest error region ...
            depth = ndimage.distance_transform_edt(np.pad(labelled == labelled[y, x], 1))[1:-1, 1:-1]
            assert depth[y, x] == depth.max()  # ... at its deepest pixel
            points.append([row["click_x"], row["click_y"]])
            labels.append(label)
            previous = predictor.predict([box], points=points, labels=labels).masks[0]
            gt = target.gt
            assert row["dsc"] == pytest.approx(2 * (previous & gt).sum() / (previous.sum() + gt.sum()), abs=1e-12)
            assert row["clicks"] == len(points)
    need = clicks_to_reach(frame)
    assert len(need) == len(targets) and set(need["rounds"]) == {3}


def test_reliability_plot_and_summary(demo, tmp_path):
    store, predictor, cache = demo
    targets = middle_slices(store, "test")
    frame = annotator_sweep(predictor, targets, annotator_grid((0.0, 0.1, 0.3), (0.0, 0.3)), cache=cache,
                            with_nsd=False, progress=False)
    summary = calibration.calibration_summary({"base": frame})
    assert summary.loc[0, "targets"] == len(frame) == 18
    assert summary.loc[0, "ece"] == pytest.approx(hand_ece(list(frame["predicted_iou"]), list(frame["iou"]), 10))
    path = calibration.plot_reliability({"base": frame, "again": frame}, tmp_path / "fig" / "reliability.png",
                                        "Reliability: demo phantoms")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "fig").glob("*.tmp*"))


# --- notebook 08's helpers -------------------------------------------------------------------------

def _fake_target(task, group, i):
    from medsam_lib.evaluation.targets import SliceTarget

    meta = {"dataset": group.split("/")[0], "case": group.split("/")[1], "volume": "v", "image_key": "k",
            "target": f"t{i}", "instance": 1, "task": task, "modality": "CT", "split": "test", "group": group,
            "task_label": task}
    return SliceTarget(meta=meta, slice=0, image_id=f"img{i}", gt=np.ones((4, 4), bool), image=lambda: None)


def test_limit_targets_is_seeded_spread_over_tasks_and_keeps_order():
    from medsam_lib.evaluation.targets import limit_targets

    targets = [_fake_target("A", f"d/c{i}", i) for i in range(10)] + [_fake_target("B", "d/x", 10),
                                                                      _fake_target("C", "d/y", 11)]
    assert limit_targets(targets, 0) == targets and limit_targets(targets, 50) == targets
    picked = limit_targets(targets, 5, seed=3)
    assert len(picked) == 5 and {t.meta["task_label"] for t in picked} == {"A", "B", "C"}  # every task kept
    positions = [targets.index(t) for t in picked]
    assert positions == sorted(positions)  # the given order
    assert limit_targets(targets, 5, seed=3) == picked  # seeded
    assert any(limit_targets(targets, 5, seed=s) != picked for s in range(4, 12))  # the seed matters
    with pytest.raises(MedSAMError, match="max_targets"):
        limit_targets(targets, -1)


def test_sweep_levels_are_two_axes_through_the_ideal_box():
    from medsam_lib.evaluation.annotator import sweep_levels

    levels = sweep_levels((0.1, 0.0, 0.05), (0.2, 0.0, -0.1))
    assert [(a.noise, a.shift) for a in levels] == [(0.0, 0.0), (0.05, 0.0), (0.1, 0.0), (0.0, -0.1), (0.0, 0.2)]
    assert levels[0].is_ideal


def test_means_table_reads_task_means():
    from medsam_lib.evaluation.targets import means_table

    summary = pd.DataFrame({"model": ["base"] * 3, "task_label": ["A", "A", "B"], "noise": [0.0, 0.1, 0.0],
                            "dsc": [0.91234, 0.8, 0.5], "dsc_lo": [0.9, math.nan, 0.4],
                            "dsc_hi": [0.95, math.nan, 0.6]})
    table = means_table(summary, "noise", "dsc")
    assert table.loc[("A", "base"), 0.0] == "0.912 [0.900, 0.950]"
    assert table.loc[("A", "base"), 0.1] == "0.800"  # no CI: the mean alone
    assert table.loc[("B", "base"), 0.0] == "0.500 [0.400, 0.600]" and pd.isna(table.loc[("B", "base"), 0.1])


def test_flag_table_counts_what_a_direct_loop_counts():
    rng = np.random.default_rng(9)
    frames = {}
    for name in ("base", "finetuned"):
        predicted = rng.uniform(0.2, 1.05, 60)
        dsc = np.clip(predicted + rng.normal(0, 0.2, 60), 0, 1)
        frames[name] = pd.DataFrame({"predicted_iou": predicted, "dsc": dsc})
    table = calibration.flag_table(frames).set_index("model")
    for name, frame in frames.items():
        flagged = [calibration.quality_flag(p) for p in frame["predicted_iou"]]
        failed = [d < 0.7 for d in frame["dsc"]]
        row = table.loc[name]
        assert row["masks"] == 60 and row["flagged"] == sum(flagged) and row["failures"] == sum(failed)
        assert row["flagged and failed"] == sum(f and g for f, g in zip(flagged, failed))
        assert row["flagged but fine"] == sum(f and not g for f, g in zip(flagged, failed))
        assert row["failures not flagged"] == sum(g and not f for f, g in zip(flagged, failed))


def test_clicks_table_counts_per_task():
    from medsam_lib.evaluation.correction import clicks_table

    need = pd.DataFrame({"model": ["m"] * 4 + ["n"], "task_label": ["A", "A", "A", "B", "A"],
                         "clicks_to_goal": [0.0, 2.0, math.inf, 3.0, 1.0], "goal_dsc": 0.9,
                         "dsc_box": [0.95, 0.5, 0.2, 0.6, 0.8], "dsc_final": [0.95, 0.92, 0.4, 0.91, 0.93],
                         "rounds": 5})
    table = clicks_table(need).set_index(["model", "task_label"])
    a = table.loc[("m", "A")]
    assert (a["targets"], a["with the box"], a["after clicks"], a["never"]) == (3, 1, 1, 1)
    assert a["median clicks (reached)"] == 1.0  # median of 0 and 2
    assert a["dsc box"] == pytest.approx(0.55) and a["dsc final"] == pytest.approx((0.95 + 0.92 + 0.4) / 3)
    assert table.loc[("m", "B"), "after clicks"] == 1 and len(table) == 3


def test_ideal_box_position_from_a_made_up_sweep():
    """Task A peaks at noise 0, task B at 0.05: the ideal box is best in 1 of 2 tasks; the mean curve over tasks
    (0.7, 0.75, 0.5) puts the ideal box second of three."""
    from medsam_lib import findings

    rows = []
    for task, curve in (("A", (0.9, 0.8, 0.6)), ("B", (0.5, 0.7, 0.4))):
        for noise, dsc in zip((0.0, 0.05, 0.2), curve):
            for k in range(2):  # two targets per task with the same DSC
                rows.append({"model": "base", "task_label": task, "noise": noise, "shift": 0.0, "dsc": dsc,
                             "dataset": task, "case": str(k), "volume": "v", "image_key": "i", "target": "t",
                             "instance": 1})
    sweep = pd.DataFrame(rows)
    text = findings.ideal_box_position(sweep)[0]
    assert "mean DSC 0.700 over 2 task(s), rank 2 of 3 noise levels" in text
    assert "noise 5% scores higher, 0.750" in text and "best noise level in 1 of 2 task(s)" in text
    bullets = findings.sweep_findings(sweep)
    assert any("noise 20% is lower than the ideal box by -0.200" in b for b in bullets)  # (0.6-0.9, 0.4-0.5) x 2


def test_notebook_08_calls_on_the_demo_phantoms(demo, tmp_path):
    """Notebook 08's calls on the demo fixture: a jittered run's pinned prompts replayed (the X-ray targets'
    DSC recomputed here from the file's boxes with a direct prediction), the sweep and correction figures,
    the tables and the closing findings."""
    import json
    from types import SimpleNamespace

    from medsam_lib import findings
    from medsam_lib.evaluation.annotator import plot_sweep, sweep_levels
    from medsam_lib.evaluation.chain import Context, Models, pin_and_replay
    from medsam_lib.evaluation.correction import clicks_table, plot_rounds
    from medsam_lib.evaluation.options import EvalOptions

    store, predictor, cache = demo
    models = Models(predictor, None, "", {id(predictor): cache})
    ctx = Context(store, models, EvalOptions(seed=2, split="test"), "", None, SimpleNamespace(results_dir=tmp_path))
    pinned = pin_and_replay(ctx, ctx.options.with_(test_boxes="jittered"))
    assert len(pinned) == 1 and pinned.loc[0, "replay identical"] and pinned.loc[0, "max |dDSC|"] == 0
    assert pinned.loc[0, "targets"] == 3 and pinned.loc[0, "prompted slices"] == 5  # 2 lungs, 3 heart slices
    folder = tmp_path / "evaluation" / f"pinned_{predictor.loaded.name}"
    record = json.loads((folder / "prompts.json").read_text(encoding="utf-8"))
    metrics = pd.read_csv(folder / "metrics.csv")
    moved = 0
    for entry in record["targets"]:
        if entry["dataset"] != "synthetic_xray_chest":
            continue
        (prompt,) = entry["slices"]
        row = store.index[(store.index["dataset"] == entry["dataset"]) & (store.index["target"] == entry["target"])
                          & (store.index["instance"] == entry["instance"])].iloc[0]
        gt = store.load_mask(row)
        moved += not np.array_equal(prompt["box"], box_from_mask(gt))
        predictor.set_image(store.load_image(row))
        pred = predictor.predict([prompt["box"]]).masks[0]
        want = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
        got = metrics[(metrics["dataset"] == entry["dataset"]) & (metrics["target"] == entry["target"])
                      & (metrics["instance"] == entry["instance"])]["dsc"]
        assert len(got) == 1 and got.iloc[0] == pytest.approx(want, abs=1e-12)
    assert moved  # jittered boxes: a replay from the ground truth's tight boxes could not reproduce them

    targets = middle_slices(store, "test")
    sweep = annotator_sweep(predictor, targets, sweep_levels((0.0, 0.2), (0.0, 0.3)), cache=cache, progress=False,
                            model="base")
    summary = task_means(sweep, by=("model", "level", "noise", "shift"))
    for axis in ("noise", "shift"):
        path = plot_sweep(summary, tmp_path / f"sweep_{axis}.png", "demo", axis=axis)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loop = correction_loop(predictor, targets, rounds=2, cache=cache, annotator=Annotator(0.1), progress=False,
                           model="base")
    need = clicks_to_reach(loop)
    by_round = task_means(loop, by=("model", "round"), metrics=("dsc",))
    assert plot_rounds(by_round, tmp_path / "rounds.png", "demo").is_file()
    calib = calibration.calibration_summary({"base": sweep})
    flags = calibration.flag_table({"base": sweep})
    assert flags.loc[0, "masks"] == len(sweep) == 9
    text = findings.beyond_findings(pinned, sweep, calib, flags, loop, need, 0.9)
    ideal = sweep[sweep["level"] == 0].groupby("task_label")["dsc"].mean().mean()
    assert f"gives mean DSC {ideal:.3f} over {sweep['task_label'].nunique()} task(s)" in text
    assert "reproduced its metrics exactly for 1 of 1 model(s)" in text
    assert clicks_table(need)["targets"].sum() == len(targets)


def test_calibration_and_correction_findings_from_made_up_tables():
    from medsam_lib import findings
    from medsam_lib.evaluation.correction import clicks_to_reach

    summary = pd.DataFrame([{"model": "base, ideal boxes", "targets": 4, "mean_predicted_iou": 0.9,
                             "mean_measured_iou": 0.75, "ece": 0.15, "failure_auroc": math.nan, "flag_failures": 0}])
    flags = pd.DataFrame([{"model": "base", "masks": 4, "flagged": 1, "flagged and failed": 1, "flagged but fine": 0,
                           "failures": 2, "failures not flagged": 1}])
    sweep = pd.DataFrame({"model": "base", "predicted_iou": [0.5, 1.02, 0.9, 1.07]})
    text = "\n".join(findings.calibration_findings(summary, flags, sweep))
    assert "ECE 0.150 over 4 masks" in text and "over-confident by 0.150" in text and "no AUROC (0 failure(s)" in text
    assert "2 of 4 predicted IoUs exceed 1 (up to 1.070)" in text
    assert "marks 1 of 4 masks, 1 of them failed" in text and "lets 1 of 2 failure(s) through" in text
    base = {"model": "base", "case": "c", "volume": "v", "image_key": "k", "instance": 0, "task_label": "t",
            "modality": "CT", "group": "d/c", "dataset": "d"}
    rows = []
    for target, dscs in (("a", [0.95, 0.96, 0.97]), ("b", [0.5, 0.7, 0.91]), ("c", [0.2, 0.1, 0.3])):
        rows += [{**base, "target": target, "round": r, "clicks": r, "dsc": d} for r, d in enumerate(dscs)]
    loop = pd.DataFrame(rows)
    text = "\n".join(findings.correction_findings(loop, clicks_to_reach(loop), 0.9))
    assert "by round 0: 0.550, 1: 0.587, 2: 0.727" in text  # means of (0.95, 0.5, 0.2), (0.96, 0.7, 0.1), ...
    assert "one click is higher than the box alone by +0.037" in text  # (0.01 + 0.2 - 0.1) / 3
    assert "with the box alone by 1 of 3 targets, after clicks by 1, never within 2 clicks by 1" in text
