"""Pinned prompts (``medsam_lib.evaluation.pinned``): every evaluation writes the prompts it used, and
``evaluate --prompts FILE`` replays them with identical metrics; a file that does not match the data is
refused (exit code 2, the file and the problem named)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medsam_lib.cli import main
from medsam_lib.fileio import MedSAMError
from profile_helpers import profile_in


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """The demo phantoms curated, cut down to the chest X-ray (2 targets on one 2D image) and the MR
    heart's left ventricle on its first 3 slices (one 3D target), all in the test split."""
    from medsam_lib.data.curate import curate_profile
    from medsam_lib.data.store import read_index
    from medsam_lib.data.store_commit import write_index

    root = tmp_path_factory.mktemp("pinned")
    store = curate_profile(profile_in(root))
    index = read_index(store.path / "index.csv")
    first = index.groupby("dataset")["volume"].transform("min")
    index = index[index["volume"] == first]
    keep = index[(index["dataset"] == "synthetic_xray_chest")
                 | ((index["dataset"] == "synthetic_mr_heart") & (index["slice"] < 3)
                    & (index["target"] == "left ventricle"))].copy()
    keep["split"] = "test"
    write_index(store.path, keep)
    return store.path


@pytest.fixture(scope="module")
def xray_store(store_path, tmp_path_factory):
    """The same store with the chest X-ray only (one image: the CLI runs encode it once each)."""
    import shutil

    from medsam_lib.data.store import read_index
    from medsam_lib.data.store_commit import write_index

    path = tmp_path_factory.mktemp("xray") / "store"
    shutil.copytree(store_path, path)
    index = read_index(path / "index.csv")
    write_index(path, index[index["dataset"] == "synthetic_xray_chest"])
    return path


@pytest.fixture(scope="module")
def shared(store_path, lite_model):
    """One predictor and one embedding cache for the library-level runs (each image encoded once)."""
    from medsam_lib.evaluation.inference import EmbeddingCache
    from medsam_lib.models.predictor import BoxPredictor

    predictor = BoxPredictor(lite_model)
    return predictor, EmbeddingCache(predictor)


def run(capsys, *argv):
    code = main(["evaluate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_run_then_replay_gives_identical_metrics(xray_store, tmp_path, capsys):
    from medsam_lib.data.store import CuratedDataset

    first, second = tmp_path / "first", tmp_path / "second"
    store_path = xray_store
    code, _, err = run(capsys, "--curated", str(store_path), "--model", "litemedsam", "--out", str(first),
                       "--device", "cpu", "--test-boxes", "jittered", "--seed", "3")
    assert code == 0, err
    record = json.loads((first / "prompts.json").read_text(encoding="utf-8"))
    assert record["version"] == 1 and record["made_by"]["model"] == "litemedsam"
    assert record["made_by"]["test_boxes"] == "jittered" and record["made_by"]["seed"] == 3
    assert record["model_input"] == "lite256" and record["replayed_from"] is None
    assert json.loads((first / "evaluation.json").read_text(encoding="utf-8"))["prompts"] == "prompts.json"
    # the file holds every prompted slice with the box the run used: the index's tight box, jittered
    index = CuratedDataset(store_path).index
    assert len(record["targets"]) == index.groupby(["dataset", "target", "instance"]).ngroups == 2
    moved = False
    for entry in record["targets"]:
        rows = index[(index["dataset"] == entry["dataset"]) & (index["target"] == entry["target"])]
        assert sorted(s["slice"] for s in entry["slices"]) == sorted(rows["slice"])  # gt: every GT slice
        for s in entry["slices"]:
            row = rows[rows["slice"] == s["slice"]].iloc[0]
            tight = np.array([row.x0, row.y0, row.x1, row.y1], float)
            x0, y0, x1, y1 = s["box"]
            assert x0 <= tight[0] and y0 <= tight[1] and x1 >= tight[2] and y1 >= tight[3]
            assert max(tight[0] - x0, tight[1] - y0, x1 - tight[2], y1 - tight[3]) <= 19
            moved |= bool((np.array(s["box"]) != tight).any())
            assert s["box_model"] == pytest.approx(s["box"])  # LiteMedSAM: 256 x 256 in, scale 1
    assert moved  # the jitter moved some side: a replay from the ground truth's tight boxes would differ
    # replay: the file's boxes, not the ground truth's
    code, _, err = run(capsys, "--curated", str(store_path), "--model", "litemedsam", "--out", str(second),
                       "--device", "cpu", "--prompts", str(first / "prompts.json"))
    assert code == 0, err
    a, b = pd.read_csv(first / "metrics.csv"), pd.read_csv(second / "metrics.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # every row, every column, the box options included
    assert (first / "metrics.csv").read_bytes() == (second / "metrics.csv").read_bytes()
    replay = json.loads((second / "prompts.json").read_text(encoding="utf-8"))
    assert replay["targets"] == record["targets"] and replay["made_by"] == record["made_by"]
    assert replay["replayed_from"]["file"] == str(first / "prompts.json")
    evaluation = json.loads((second / "evaluation.json").read_text(encoding="utf-8"))
    assert evaluation["replayed_prompts"]["made_by"]["seed"] == 3


def test_propagate_replay_prompts_the_same_slices(store_path, tmp_path, shared):
    """``propagate``: the file lists the middle slice and each slice its neighbour's prediction prompted
    (also the one past the end, whose prediction vanished); replayed, the masks are the same."""
    from medsam_lib.evaluation.options import EvalOptions
    from medsam_lib.evaluation.pinned import read_prompts
    from medsam_lib.evaluation.run import evaluate_store, predict_store

    predictor, cache = shared
    options = EvalOptions(protocol="propagate", box_margin=2)
    frame = evaluate_store(store_path, predictor, tmp_path / "a", options, cache=cache, progress=False)
    pinned = read_prompts(tmp_path / "a" / "prompts.json")
    heart = next(k for k in pinned.targets if k[0] == "synthetic_mr_heart")
    assert len(pinned.targets[heart]) >= 2  # the middle slice and at least one propagated box
    replayed = evaluate_store(store_path, predictor, tmp_path / "b", EvalOptions(), cache=cache, progress=False,
                              prompts=pinned)
    pd.testing.assert_frame_equal(frame, replayed, check_exact=True)
    assert set(replayed["protocol"]) == {"propagate"} and set(replayed["box_margin"]) == {2.0}
    from medsam_lib.data.store import CuratedDataset

    store = CuratedDataset(store_path)
    original = predict_store(store, predictor, options, cache=cache, progress=False)
    again = predict_store(store, predictor, options, cache=cache, progress=False, prompts=pinned)
    for x, y in zip(original, again):
        assert np.array_equal(x.pred, y.pred) and x.z0 == y.z0
        assert {k: list(v) for k, v in x.boxes.items()} == {k: list(v) for k, v in y.boxes.items()}


def test_replayed_points_are_used_and_recorded(store_path, tmp_path, shared):
    """A slice with points (a background click at the centre of the left lung's box mask) replays box +
    points: its mask and DSC change, and the replay's own prompts.json keeps the points."""
    from medsam_lib.evaluation.options import EvalOptions
    from medsam_lib.evaluation.run import evaluate_store

    predictor, cache = shared
    base = evaluate_store(store_path, predictor, tmp_path / "a", EvalOptions(), cache=cache, progress=False)
    record = json.loads((tmp_path / "a" / "prompts.json").read_text(encoding="utf-8"))
    lung = next(e for e in record["targets"] if e["dataset"] == "synthetic_xray_chest")
    x0, y0, x1, y1 = lung["slices"][0]["box"]
    lung["slices"][0].update(points=[[(x0 + x1) / 2, (y0 + y1) / 2]], point_labels=[0])
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(record), encoding="utf-8")
    clicked = evaluate_store(store_path, predictor, tmp_path / "b", EvalOptions(), cache=cache, progress=False,
                             prompts=edited)
    key = (base["dataset"] == lung["dataset"]) & (base["target"] == lung["target"])
    assert clicked.loc[key, "dsc"].iloc[0] < base.loc[key, "dsc"].iloc[0] - 0.05  # "not here" on the lung itself
    pd.testing.assert_frame_equal(base[~key], clicked[~key], check_exact=True)  # the other targets untouched
    again = json.loads((tmp_path / "b" / "prompts.json").read_text(encoding="utf-8"))
    entry = next(e for e in again["targets"] if e["target"] == lung["target"] and e["dataset"] == lung["dataset"])
    assert entry["slices"][0]["points"] == lung["slices"][0]["points"]
    assert entry["slices"][0]["point_labels"] == [0] and entry["slices"][0]["points_model"]
    thrice = evaluate_store(store_path, predictor, tmp_path / "c", EvalOptions(), cache=cache, progress=False,
                            prompts=tmp_path / "b" / "prompts.json")
    pd.testing.assert_frame_equal(clicked, thrice, check_exact=True)


def _good_record(store_path):
    """A valid prompts record of the store's targets (tight boxes from the index), made without a model."""
    from medsam_lib.data.store import CuratedDataset

    index = CuratedDataset(store_path).index
    targets = []
    for key, group in index.groupby(["dataset", "case", "volume", "image_key", "target", "instance"]):
        slices = [{"slice": int(r.slice), "box": [float(r.x0), float(r.y0), float(r.x1), float(r.y1)]}
                  for r in group.itertuples()]
        targets.append({**dict(zip(["dataset", "case", "volume", "image_key", "target", "instance"], key)),
                        "instance": int(key[5]), "slices": slices})
    return {"schema": "medsam_lib pinned prompts", "version": 1,
            "made_by": {"protocol": "gt", "test_boxes": "tight", "box_margin": 0.0, "box_jitter": 0, "seed": 0,
                        "split": "test"},
            "targets": targets}


@pytest.mark.parametrize("problem, message", [
    ("json", "not a JSON prompts file"),
    ("schema", "not a pinned prompts file"),
    ("version", "version 7; this medsam_lib reads version 1"),
    ("made_by", "'made_by' must record"),
    ("unknown_target", "not in the data evaluated, e.g. synthetic_xray_chest/"),
    ("missing_target", "no prompts for 1 target"),
    ("unknown_slice", "slice 40: the curated store holds no image"),
    ("outside", "lies outside the 256 x 256 image"),
    ("inverted", "inverted or has zero area"),
    ("nan", "finite numbers"),
    ("label", "'point_labels' must be 1"),
    ("twice", "listed twice"),
    ("split", "pass --split train"),
    ("protocol", "'made_by' box options are not valid: protocol 'middle'"),
])
def test_bad_prompts_files_exit_2_naming_the_file(store_path, tmp_path, capsys, problem, message):
    record = _good_record(store_path)
    lung = next(t for t in record["targets"] if t["dataset"] == "synthetic_xray_chest")
    if problem == "schema":
        record["schema"] = "something else"
    elif problem == "version":
        record["version"] = 7
    elif problem == "made_by":
        del record["made_by"]["seed"]
    elif problem == "unknown_target":
        record["targets"].append({**lung, "target": "spleen"})
    elif problem == "missing_target":
        record["targets"].remove(lung)
    elif problem == "unknown_slice":
        lung["slices"][0]["slice"] = 40
    elif problem == "outside":
        lung["slices"][0]["box"][2] = 256.0
    elif problem == "inverted":
        lung["slices"][0]["box"] = [50.0, 50.0, 40.0, 60.0]
    elif problem == "nan":
        lung["slices"][0]["box"][0] = float("nan")
    elif problem == "label":
        lung["slices"][0].update(points=[[100.0, 100.0]], point_labels=[2])
    elif problem == "twice":
        record["targets"].append(dict(lung))
    elif problem == "protocol":
        record["made_by"]["protocol"] = "middle"
    elif problem == "split":
        record["made_by"]["split"] = "train"
        record["targets"].remove(lung)
    path = tmp_path / "prompts.json"
    text = "{not json" if problem == "json" else json.dumps(record)
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    code, _, err = run(capsys, "--curated", str(store_path), "--model", "litemedsam", "--out", str(out),
                       "--device", "cpu", "--prompts", str(path))
    assert code == 2, err
    assert err.startswith("error:") and str(path) in err and message in err, err
    assert not (out / "metrics.csv").exists()


def test_a_good_hand_made_file_replays_and_other_flags_are_refused(store_path, tmp_path, capsys):
    from medsam_lib.evaluation.pinned import read_prompts

    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(_good_record(store_path)), encoding="utf-8")
    pinned = read_prompts(path)
    assert len(pinned.targets) == 3
    code, _, err = run(capsys, "--curated", str(store_path), "--model", "litemedsam", "--out", str(tmp_path / "o"),
                       "--prompts", str(path), "--test-boxes", "jittered")
    assert code == 2 and "--test-boxes" in err and "drop them" in err
    code, _, err = run(capsys, "--profile", "demo", "--prompts", str(path))
    assert code == 2 and "--prompts" in err
    with pytest.raises(MedSAMError, match="no such prompts file"):
        read_prompts(tmp_path / "absent.json")


def test_the_notebooks_chain_writes_prompts_that_replay(store_path, tmp_path, shared):
    """``chain.score_and_write`` (notebook 05) pins each model's prompts beside its metrics.csv."""
    from medsam_lib.data.store import CuratedDataset
    from medsam_lib.evaluation.chain import Models, score_and_write
    from medsam_lib.evaluation.options import EvalOptions
    from medsam_lib.evaluation.run import evaluate_store, predict_store
    from medsam_lib.layout import ResultsLayout

    predictor, cache = shared
    store = CuratedDataset(store_path)
    options = EvalOptions(test_boxes="jittered", seed=5)
    models = Models(predictor, None, "", {id(predictor): cache})
    frames = score_and_write(store, models, {"base": predict_store(store, predictor, options, cache=cache,
                                                                   progress=False)}, options, tmp_path)
    folder = ResultsLayout(tmp_path).evaluation(predictor.loaded.name + options.tag)
    replayed = evaluate_store(store, predictor, None, EvalOptions(), cache=cache, progress=False,
                              prompts=folder / "prompts.json")
    pd.testing.assert_frame_equal(frames["base"], replayed, check_exact=True)
