"""Issue 20: fine-tuning understood: the index's validation split, per-data-set validation Dice, tight or
jittered validation boxes, unfit targets, one decoder per data set, and the experiments module.

A small SYNTHETIC store of two 2D data sets (ultrasound breast: 1 target per case; X-ray chest: 2),
one train case of each moved to a `validation` split, with real LiteMedSAM embeddings.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medsam_lib.data.curate import curate
from medsam_lib.data.phantoms import write_synthetic_set
from medsam_lib.data.store import CuratedDataset
from medsam_lib.fileio import MedSAMError
from medsam_lib.training import data as tdata
from medsam_lib.training.config import IDENTITY, config_from_dict
from medsam_lib.training.loop import train

DATASETS = ["synthetic_us_breast", "synthetic_xray_chest"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from medsam_lib.data.store_commit import write_index
    from medsam_lib.embeddings import build_store

    base = tmp_path_factory.mktemp("issue20")
    root = write_synthetic_set(base / "synthetic", seed=0)
    curated = base / "curated"
    curate("synthetic", curated, root=root, datasets=DATASETS, progress=False)
    index = CuratedDataset(curated).index.copy()
    for dataset in DATASETS:  # the first train case of each data set becomes its validation split
        case = sorted(index.loc[(index["dataset"] == dataset) & (index["split"] == "train"), "case"].unique())[0]
        index.loc[(index["dataset"] == dataset) & (index["case"] == case), "split"] = "validation"
    write_index(curated, index)
    build_store(curated, "litemedsam", base / "embeddings", progress=False)
    return curated, base / "embeddings"


def _cfg(stores, out, **extra):
    values = {"curated": str(stores[0]), "embeddings": str(stores[1]), "out": str(out), "steps": 2, "batch_size": 2,
              "checkpoint_every": 1, "device": "cpu"}
    values.update(extra)
    return config_from_dict(values, source="c.toml")


@pytest.fixture(scope="module")
def finished(stores, tmp_path_factory):
    cfg = _cfg(stores, tmp_path_factory.mktemp("run") / "out")
    return cfg, train(cfg, progress=False)


def _independent_dice(stores, rows, boxes, weights=None) -> np.ndarray:
    """Per target: the LiteMedSAM decoder run by hand on the stored embedding, (logits > 0) vs the mask, in numpy."""
    from medsam_lib.embeddings import open_store
    from medsam_lib.models.zoo import load_model

    model = load_model("litemedsam", device="cpu").model.eval()
    if weights is not None:
        model.load_state_dict(weights, strict=False)
    curated, store = CuratedDataset(stores[0]), open_store(stores[1])
    out = []
    with torch.no_grad():
        for (_, row), box in zip(rows.iterrows(), boxes):
            emb = torch.from_numpy(np.asarray(store.get_batch([row["image_id"]]), dtype=np.float32))
            prompt = torch.from_numpy(np.asarray(box, dtype=np.float32).reshape(1, 1, 4))
            sparse, dense = model.prompt_encoder(points=None, boxes=prompt, masks=None)
            low, _ = model.mask_decoder(image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(),
                                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                        multimask_output=False)
            pred, mask = low[0, 0].numpy() > 0, curated.load_mask(row)
            out.append(2 * (pred & mask).sum() / (pred.sum() + mask.sum()))
    return np.array(out)


# --- config -----------------------------------------------------------------------------------------

def test_new_fields_defaults_choices_and_identity(stores, tmp_path):
    cfg = _cfg(stores, tmp_path / "o")
    assert (cfg.validation, cfg.val_average, cfg.val_boxes, cfg.exclude_unfit, cfg.datasets) == (
        "auto", "dataset", "tight", False, "")
    assert {"validation", "val_average", "val_boxes", "exclude_unfit", "datasets"} <= set(IDENTITY)
    for key, value, message in [("validation", "test", "key 'validation' must be one of auto, index, carve"),
                                ("val_average", "image", "key 'val_average' must be one of dataset, target"),
                                ("val_boxes", "loose", "key 'val_boxes' must be one of tight, jittered"),
                                ("box_jitter", "big", "key 'box_jitter' must be one of paper, official_code, none"),
                                ("exclude_unfit", "yes", "key 'exclude_unfit' must be bool"),
                                ("datasets", " , ,", "key 'datasets' must name data sets")]:
        with pytest.raises(MedSAMError, match=f"c.toml: {message}"):
            _cfg(stores, tmp_path / "o", **{key: value})
    assert _cfg(stores, tmp_path / "o", datasets=" b, a ,b").dataset_names == ["b", "a"]


def test_unknown_dataset_is_refused_naming_the_stores_data_sets(stores, tmp_path):
    with pytest.raises(MedSAMError, match="c.toml: key 'datasets': no data set 'synthetic_mr_heart' in the curated "
                                          "store; its data sets: synthetic_us_breast, synthetic_xray_chest"):
        train(_cfg(stores, tmp_path / "o", datasets="synthetic_us_breast,synthetic_mr_heart"), progress=False)
    assert not (tmp_path / "o").exists()


# --- rows: validation source, data sets, stratified sample ------------------------------------------

def test_index_validation_uses_every_train_row_and_never_test(stores):
    index = CuratedDataset(stores[0]).index
    for mode in ("auto", "index"):
        train_rows, val_rows, used = tdata.split_rows(index, mode, 0.2, seed=0)
        assert used == "index"
        assert len(train_rows) == (index["split"] == "train").sum() and set(train_rows["split"]) == {"train"}
        assert len(val_rows) == (index["split"] == "validation").sum() and set(val_rows["split"]) == {"validation"}
        assert list(val_rows["row"]) == list(np.flatnonzero(index["split"] == "validation"))  # curated row numbers
    train_rows, val_rows, used = tdata.split_rows(index, "carve", 0.3, seed=0)
    assert used == "carve" and set(val_rows["split"]) == {"train"}
    assert not set(val_rows["case"]) & set(train_rows["case"])
    assert len(train_rows) + len(val_rows) == (index["split"] == "train").sum()
    no_val = index.assign(split=index["split"].replace("validation", "train"))
    assert tdata.split_rows(no_val, "auto", 0.3, seed=0)[2] == "carve"
    with pytest.raises(MedSAMError, match="key 'validation': validation = 'index', but the curated store has no "
                                          "validation split rows"):
        tdata.split_rows(no_val, "index", 0.3, seed=0)


def test_validation_sample_is_stratified_per_data_set_and_seeded():
    rows = pd.DataFrame({"dataset": ["big"] * 100 + ["small"] * 3 + ["mid"] * 10, "target": range(113)})
    got = tdata.stratified_sample(rows, 10, seed=1)
    assert got["dataset"].value_counts().to_dict() == {"big": 4, "mid": 4, "small": 3}  # ceil(10 / 3) = 4 each
    assert list(got["target"]) == sorted(got["target"])  # order kept
    assert tdata.stratified_sample(rows, 10, seed=1).equals(got)
    assert len({tuple(tdata.stratified_sample(rows, 10, seed=s)["target"]) for s in range(5)}) > 1
    assert tdata.stratified_sample(rows, 0, seed=1) is rows and tdata.stratified_sample(rows, 500, seed=1) is rows


def test_jittered_validation_boxes_are_fixed_per_index_row(stores):
    curated = CuratedDataset(stores[0])
    _, val_rows, _ = tdata.split_rows(curated.index, "index", 0.2, seed=7)
    pairs = tdata.load_pairs(curated, val_rows)
    tight = tdata.validation_boxes(pairs, "tight", seed=7)
    assert np.array_equal(tight, pairs.boxes)
    jittered = tdata.validation_boxes(pairs, "jittered", seed=7)
    for box, row, got in zip(pairs.boxes, val_rows["row"], jittered):
        shift = np.random.default_rng([7, int(row), 3]).integers(0, 20, size=4)  # 0-19 px per side
        want = [max(0, box[0] - shift[0]), max(0, box[1] - shift[1]), min(255, box[2] + shift[2]),
                min(255, box[3] + shift[3])]
        assert got.tolist() == want
    assert not np.array_equal(jittered, tight)
    sub = pairs.subset(np.arange(len(pairs)) % 2 == 1)  # a sample keeps each target's box
    assert np.array_equal(tdata.validation_boxes(sub, "jittered", seed=7), jittered[1::2])
    assert not np.array_equal(tdata.validation_boxes(pairs, "jittered", seed=8), jittered)


def test_validation_summary_averages_data_sets_or_targets():
    from medsam_lib.training.run import summarize

    rows = pd.DataFrame({"dataset": ["a"] * 9 + ["b"]})
    scores = np.array([0.9] * 9 + [0.1])
    value, per = summarize(rows, scores, "dataset")
    assert per == {"a": (9, pytest.approx(0.9)), "b": (1, pytest.approx(0.1))}
    assert value == pytest.approx(0.5)
    assert summarize(rows, scores, "target")[0] == pytest.approx(0.82)


# --- unfit targets ------------------------------------------------------------------------------------

def _pairs(specs):
    """Hand-made pairs: (box x0 y0 x1 y1, pixels set inside the box)."""
    masks, boxes = [], []
    for (x0, y0, x1, y1), pixels in specs:
        inside = np.zeros((y1 - y0 + 1) * (x1 - x0 + 1), dtype=bool)
        inside[:pixels] = True
        mask = np.zeros((256, 256), dtype=bool)
        mask[y0:y1 + 1, x0:x1 + 1] = inside.reshape(y1 - y0 + 1, x1 - x0 + 1)
        masks.append(np.packbits(mask.reshape(-1)))
        boxes.append([x0, y0, x1, y1])
    rows = pd.DataFrame({"dataset": ["d"] * len(specs), "row": range(len(specs))})
    return tdata.Pairs(rows, np.array(boxes, dtype=np.int64), np.stack(masks))


def test_unfit_reasons_thresholds():
    assert (tdata.UNFIT_BOX_AREA, tdata.UNFIT_MIN_FILL) == (0.95, 0.20)
    pairs = _pairs([((0, 0, 255, 255), 65536),        # the whole image
                    ((0, 0, 249, 249), 62500),        # 250 x 250 = 95.4% of the image
                    ((0, 0, 248, 249), 62250),        # 249 x 250 = 94.99%: fit
                    ((10, 10, 109, 109), 1999),       # 19.99% of its box
                    ((10, 10, 109, 109), 2000),       # 20%: fit
                    ((0, 0, 255, 255), 100)])         # both
    assert list(pairs.pixels()) == [65536, 62500, 62250, 1999, 2000, 100]
    whole, sparse = tdata.REASON_WHOLE_IMAGE, tdata.REASON_SPARSE
    assert list(tdata.unfit_reasons(pairs)) == [whole, whole, "", sparse, "", f"{whole}; {sparse}"]
    table = tdata.unfit_table(pairs, excluded=True).iloc[0]
    assert (table["targets"], table["unfit"], table["box_covers_image"], table["target_fills_little"],
            table["left_out"]) == (6, 4, 3, 2, 4)
    assert tdata.unfit_table(pairs, excluded=False).iloc[0]["left_out"] == 0


def test_exclude_unfit_leaves_out_exactly_the_unfit_targets(stores, tmp_path, monkeypatch):
    from medsam_lib.training.run import prepare

    curated = CuratedDataset(stores[0])
    train_rows = curated.index[curated.index["split"] == "train"]
    fill = []
    for _, row in train_rows.iterrows():  # independent: each target's share of its inclusive box
        area = (row["x1"] - row["x0"] + 1) * (row["y1"] - row["y0"] + 1)
        fill.append(curated.load_mask(row).sum() / area)
    fill = np.array(fill)
    middle = np.unique(fill)[len(np.unique(fill)) // 2 - 1:][:2]
    threshold = float(middle.mean())  # the synthetic targets are all fit at 20%: about half unfit at this one
    monkeypatch.setattr(tdata, "UNFIT_MIN_FILL", threshold)
    run = prepare(_cfg(stores, tmp_path / "o", exclude_unfit=True), "cpu")
    keep = fill >= threshold
    assert 0 < keep.sum() < len(keep)
    assert list(run.train.rows["image_id"] + run.train.rows["target"]) == list(
        (train_rows["image_id"] + train_rows["target"])[keep])
    want = pd.Series(~keep, index=train_rows["dataset"].to_numpy()).groupby(level=0).sum()
    got = run.unfit.set_index("dataset")
    assert got["left_out"].to_dict() == got["unfit"].to_dict() == want.to_dict()
    assert got["targets"].sum() == len(train_rows)
    assert len(run.val) == (curated.index["split"] == "validation").sum()  # validation keeps every target
    plain = prepare(_cfg(stores, tmp_path / "o"), "cpu")
    assert len(plain.train) == len(train_rows) and (plain.unfit["left_out"] == 0).all()


# --- a run: per-data-set validation, best.pt's record, resume ----------------------------------------

def test_run_records_validation_per_data_set(finished, stores):
    cfg, result = finished
    out = Path(cfg.out)
    per = pd.read_csv(out / "val_per_dataset.csv")
    assert list(per.columns) == ["step", "dataset", "n_targets", "dice"]
    assert sorted(per["step"].unique()) == [0, 1, 2] and set(per["dataset"]) == set(DATASETS)
    curated = CuratedDataset(stores[0])
    val_rows = curated.index[curated.index["split"] == "validation"]
    base = _independent_dice(stores, val_rows, val_rows[["x0", "y0", "x1", "y1"]].to_numpy())
    step0 = per[per["step"] == 0].set_index("dataset")
    for dataset in DATASETS:  # the base model at step 0, per data set, tight boxes
        mine = (val_rows["dataset"] == dataset).to_numpy()
        assert step0.loc[dataset, "n_targets"] == mine.sum()
        assert step0.loc[dataset, "dice"] == pytest.approx(base[mine].mean(), abs=1e-6)
    metrics = pd.read_csv(out / "metrics.csv").set_index("step")
    for step, part in per.groupby("step"):  # the run's number: the mean of the data sets' means
        assert metrics.loc[step, "val_dice"] == pytest.approx(part["dice"].mean(), abs=1e-12)
    assert metrics.loc[0, "val_dice"] != pytest.approx(base.mean(), abs=1e-4)  # not the mean over targets
    record = torch.load(out / "best.pt", weights_only=True)
    assert (record["val_average"], record["val_boxes"]) == ("dataset", "tight")
    best = per[per["step"] == result.best_step].set_index("dataset")["dice"].to_dict()
    assert record["val_per_dataset"] == pytest.approx(best) and record["step"] == result.best_step
    assert list(result.val_per_dataset["step"]) == list(per["step"])
    np.testing.assert_allclose(result.val_per_dataset["dice"], per["dice"], rtol=1e-12)
    unfit = pd.read_csv(out / "unfit_targets.csv")
    assert set(unfit["dataset"]) == set(DATASETS) and (unfit["left_out"] == 0).all()
    from medsam_lib.models.zoo import load_model

    load_model(out / "best.pt", device="cpu")  # the extra keys load


def test_resume_keeps_per_data_set_validation_and_refuses_a_changed_field(finished, stores, tmp_path):
    cfg, result = finished
    half = cfg.replace(out=str(tmp_path / "half"), steps=1)
    train(half, progress=False)
    resumed = train(half.replace(steps=2), resume=True, progress=False)
    a = pd.read_csv(Path(cfg.out) / "val_per_dataset.csv")
    b = pd.read_csv(tmp_path / "half" / "val_per_dataset.csv")
    assert list(a[["step", "dataset"]].itertuples(index=False)) == list(b[["step", "dataset"]].itertuples(index=False))
    np.testing.assert_allclose(a["dice"], b["dice"], atol=1e-6)
    assert resumed.best_step == result.best_step
    assert torch.load(tmp_path / "half" / "best.pt", weights_only=True)["val_per_dataset"] == pytest.approx(
        torch.load(Path(cfg.out) / "best.pt", weights_only=True)["val_per_dataset"])
    for change in ({"validation": "carve"}, {"val_average": "target"}, {"val_boxes": "jittered"},
                   {"exclude_unfit": True}, {"datasets": DATASETS[0]}):
        key = next(iter(change))
        with pytest.raises(MedSAMError, match=rf"last.pt: --resume from a run with {key} = "):
            train(cfg.replace(**change), resume=True, progress=False)
    # a last.pt saved before these fields existed resumes under the old behaviour, and refuses the new default
    old = tmp_path / "old"
    legacy = cfg.replace(out=str(old), steps=1, validation="carve", val_average="target")
    train(legacy, progress=False)
    record = torch.load(old / "last.pt", weights_only=True)
    for key in ("validation", "val_average", "val_boxes", "exclude_unfit", "datasets"):
        del record["training"]["identity"][key]
    torch.save(record, old / "last.pt")
    with pytest.raises(MedSAMError, match="--resume from a run with validation = 'carve'"):
        train(cfg.replace(out=str(old), steps=1), resume=True, progress=False)
    assert train(legacy, resume=True, progress=False).reused


def test_jittered_validation_and_target_average_in_a_run(stores, tmp_path):
    cfg = _cfg(stores, tmp_path / "o", steps=1, val_boxes="jittered", val_average="target", validation="index")
    train(cfg, progress=False)
    curated = CuratedDataset(stores[0])
    val_rows = curated.index.rename_axis("row").reset_index()
    val_rows = val_rows[val_rows["split"] == "validation"]
    boxes = [tdata.jitter_box(b, (256, 256), np.random.default_rng([0, r, 3]), 19)
             for b, r in zip(val_rows[["x0", "y0", "x1", "y1"]].to_numpy(), val_rows["row"])]
    base = _independent_dice(stores, val_rows, boxes)
    metrics = pd.read_csv(tmp_path / "o" / "metrics.csv").set_index("step")
    assert metrics.loc[0, "val_dice"] == pytest.approx(base.mean(), abs=1e-6)  # mean over targets, jittered boxes
    record = torch.load(tmp_path / "o" / "best.pt", weights_only=True)
    assert (record["val_average"], record["val_boxes"]) == ("target", "jittered")


# --- experiments ---------------------------------------------------------------------------------------

def test_variants_per_task_and_scores(stores, tmp_path, monkeypatch):
    from medsam_lib.training import experiments

    base_cfg = _cfg(stores, tmp_path / "batch", steps=1)
    results = experiments.run_variants(base_cfg, {"paper": {}, "no_jitter_train": {"box_jitter": "none"}},
                                       progress=False)
    assert {n: r.out for n, r in results.items()} == {n: tmp_path / "batch" / n for n in results}
    assert not any(r.reused for r in results.values())
    again = experiments.run_variants(base_cfg, {"paper": {}, "no_jitter_train": {"box_jitter": "none"}},
                                     progress=False)
    assert all(r.reused for r in again.values())  # a rerun (or a killed batch) resumes, nothing retrained
    assert 'box_jitter = "none"' in (tmp_path / "batch" / "no_jitter_train" / "config.toml").read_text("utf-8")
    for bad, message in [({"../x": {}}, "variant name '../x'"), ({"a": {"out": "x"}}, "other than 'out'"),
                         ({"a": {"lr": -5.0}}, r"\(variant a\): key 'lr' must be >= -1")]:
        with pytest.raises(MedSAMError, match=message):
            experiments.run_variants(base_cfg, bad, progress=False)

    tasks = experiments.per_task(_cfg(stores, tmp_path / "tasks", steps=1), progress=False)
    assert set(tasks) == set(DATASETS)
    for name, result in tasks.items():
        assert set(result.val_per_dataset["dataset"]) == {name} and list(result.unfit["dataset"]) == [name]

    checkpoint = tmp_path / "batch" / "paper" / "last.pt"
    scores = experiments.score_decoders(base_cfg, {"paper": checkpoint}, progress=False)
    assert list(scores.columns) == list(experiments.SCORE_COLUMNS)
    curated = CuratedDataset(stores[0])
    test_rows = curated.index.rename_axis("row").reset_index()
    test_rows = test_rows[test_rows["split"] == "test"]
    assert len(scores) == 2 * 2 * len(test_rows) and set(scores["variant"]) == {"base", "paper"}
    tight = test_rows[["x0", "y0", "x1", "y1"]].to_numpy()
    jittered = [tdata.jitter_box(b, (256, 256), np.random.default_rng([0, r, 3]), 19)
                for b, r in zip(tight, test_rows["row"])]
    weights = torch.load(checkpoint, weights_only=True)["weights"]
    for variant, boxes, w in [("base", "tight", None), ("base", "jittered", None), ("paper", "tight", weights),
                              ("paper", "jittered", weights)]:
        got = scores[(scores["variant"] == variant) & (scores["boxes"] == boxes)]
        assert list(got["case"]) == list(test_rows["case"]) and list(got["target"]) == list(test_rows["target"])
        want = _independent_dice(stores, test_rows, tight if boxes == "tight" else jittered, w)
        np.testing.assert_allclose(got["dice"].to_numpy(), want, atol=1e-6)
    with pytest.raises(MedSAMError, match="variant name 'base' is the base model's"):
        experiments.score_decoders(base_cfg, {"base": checkpoint}, progress=False)

    png = experiments.plot_task_curves(results["paper"].val_per_dataset, tmp_path / "curves.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(MedSAMError, match="no validation Dice to plot"):
        experiments.plot_task_curves(results["paper"].val_per_dataset.iloc[:0], tmp_path / "none.png", "empty")
    assert not math.isnan(results["paper"].best_val_dice)
