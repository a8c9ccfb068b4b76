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
