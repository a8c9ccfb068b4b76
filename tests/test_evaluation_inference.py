"""Slice-by-slice inference protocols, tables and failure rules (fast: a fake predictor where the
logic, not the model, is under test)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from medsam_lib.evaluation import failures, tables
from medsam_lib.evaluation.inference import SliceSource, predict_volume, prompt_box
from medsam_lib.fileio import MedSAMError


def ball(shape=(9, 64, 64), centre=(4, 32, 32), radii=(3.5, 15, 15)):
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2 <= 1


class FakePredictor:
    """Returns the object's pixels on the current slice that fall inside the box."""

    def __init__(self, volume):
        self.volume, self.z, self.calls = volume, None, []

    def set_image(self, image, source="image"):
        self.z = int(image[0, 0, 0])

    def set_embedding(self, embedding, size, source="embedding"):
        self.z = int(embedding)

    def predict(self, boxes):
        x0, y0, x1, y1 = (int(v) for v in boxes[0])
        self.calls.append(self.z)
        mask = np.zeros(self.volume.shape[1:], bool)
        mask[y0:y1 + 1, x0:x1 + 1] = self.volume[self.z, y0:y1 + 1, x0:x1 + 1]

        class P:
            masks = mask[None]
        return P()


def images_for(volume):
    return np.stack([np.full((*volume.shape[1:], 3), z, np.uint8) for z in range(volume.shape[0])])


def test_gt_protocol_prompts_every_gt_slice_only():
    obj = ball()
    gt = obj.copy()
    fake = FakePredictor(obj)
    result = predict_volume(fake, images_for(obj), gt, "gt")
    gt_slices = [z for z in range(gt.shape[0]) if gt[z].any()]
    assert result["prompted"] == gt_slices == sorted(fake.calls)
    assert np.array_equal(result["mask"], obj)


def test_propagate_runs_outward_from_the_middle_until_the_prediction_vanishes():
    obj = ball()
    gt = np.zeros_like(obj)
    gt[4] = obj[4]  # only the middle slice's GT is ever used
    full_gt = obj.copy()
    fake = FakePredictor(obj)
    result = predict_volume(fake, images_for(obj), full_gt, "propagate")
    assert fake.calls[0] == 4  # the middle ground-truth slice first
    z_obj = [z for z in range(obj.shape[0]) if obj[z].any()]
    assert np.array_equal(result["mask"], obj)
    # one slice past each end is prompted (its prediction is empty, which stops the walk) if it exists
    expected = set(z_obj) | {z for z in (z_obj[0] - 1, z_obj[-1] + 1) if 0 <= z < obj.shape[0]}
    assert set(result["prompted"]) == expected


def test_propagate_stops_where_no_image_is_available():
    obj = ball()
    sources = {z: SliceSource(image=lambda z=z: np.full((64, 64, 3), z, np.uint8)) for z in (3, 4, 5)}
    result = predict_volume(FakePredictor(obj), sources, obj, "propagate")
    assert set(result["prompted"]) == {3, 4, 5}


def test_embeddings_are_used_instead_of_the_image():
    obj = ball()
    fake = FakePredictor(obj)
    images = np.zeros((obj.shape[0], 64, 64, 3), np.uint8)  # would say slice 0 everywhere
    result = predict_volume(fake, images, obj, "gt", embeddings=list(range(obj.shape[0])))
    assert np.array_equal(result["mask"], obj)


def test_box_margin_and_seeded_jitter():
    mask = np.zeros((64, 64), bool)
    mask[20:30, 10:40] = True
    assert list(prompt_box(mask)) == [10, 20, 39, 29]
    assert list(prompt_box(mask, margin=5)) == [5, 15, 44, 34]
    assert list(prompt_box(mask, margin=50)) == [0, 0, 63, 63]
    a = prompt_box(mask, 0, 10, np.random.default_rng(1))
    b = prompt_box(mask, 0, 10, np.random.default_rng(1))
    c = prompt_box(mask, 0, 10, np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(MedSAMError, match="seed"):
        prompt_box(mask, 0, 10, None)
    with pytest.raises(MedSAMError, match="protocol"):
        predict_volume(FakePredictor(ball()), images_for(ball()), ball(), "middle")


def test_real_model_embedding_path_equals_image_path(lite_model):
    """BoxPredictor.set_embedding(stored embedding) gives the same masks as set_image."""
    from medsam_lib.evaluation.inference import EmbeddingCache
    from medsam_lib.models.predictor import BoxPredictor

    obj = ball((1, 256, 256), (0, 128, 128), (0.9, 50, 40))  # one slice: two encodes in all
    rng = np.random.default_rng(0)
    images = np.clip(60 + 120 * obj + rng.normal(0, 15, obj.shape), 0, 255).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    predictor = BoxPredictor(lite_model)
    direct = predict_volume(predictor, images, obj, "gt")["mask"]
    cache = EmbeddingCache(predictor)
    embeddings = [cache.get(str(z), lambda z=z: images[z]) for z in range(len(images))]
    cached = predict_volume(predictor, images, obj, "gt", embeddings=embeddings)["mask"]
    assert cache.encoded == len(images) == 1
    assert cache.get("0", lambda: images[0]) is embeddings[0] and cache.encoded == 1  # cached
    assert np.array_equal(direct, cached) and direct.any()
    predictor.set_image(images[0])
    before = predictor.predict([[70, 80, 190, 180]])
    other = predictor.embed(images[0][::-1].copy())  # BoxPredictor.embed: the current image is left as it is
    assert other.shape == embeddings[0].shape == (256, 64, 64) and not torch.equal(other, embeddings[0])
    after = predictor.predict([[70, 80, 190, 180]])
    assert np.array_equal(before.masks, after.masks) and np.array_equal(before.scores, after.scores)


def test_bootstrap_and_wilcoxon():
    values = np.arange(10.0)
    assert tables.bootstrap_ci(values, 0) == tables.bootstrap_ci(values, 0)
    lo, hi = tables.bootstrap_ci(values, 0)
    assert lo < values.mean() < hi
    assert all(math.isnan(v) for v in tables.bootstrap_ci([1.0], 0))
    assert math.isnan(tables.wilcoxon_p([1, 2, 3, 4], [2, 3, 4, 5]))
    assert tables.wilcoxon_p([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == 1.0
    from scipy.stats import wilcoxon

    a, b = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.4]), np.array([0.6, 0.8, 0.75, 0.95, 0.91, 0.7])
    assert tables.wilcoxon_p(a, b) == pytest.approx(wilcoxon(a, b).pvalue)


def _index(rows):
    base = {"dataset": "d", "volume": "v", "image_key": "k", "modality": "CT", "stand_in": False,
            "synthetic": False, "n_slices": 10, "instance": 0}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_task_rows_lists_tasks_without_test_cases_and_reads_published(monkeypatch, tmp_path):
    index = _index([{"case": "a", "task": "Liver (CT)", "target": "liver", "split": "train"},
                    {"case": "b", "task": "Pancreas (CT)", "target": "pancreas", "split": "test"},
                    {"case": "c", "task": "Pancreas (CT)", "target": "pancreas", "split": "test"}])
    metrics = _index([{"case": "b", "task": "Pancreas (CT)", "target": "pancreas", "dsc": 0.8, "nsd": 0.7,
                       "dimensionality": "3D"},
                      {"case": "c", "task": "Pancreas (CT)", "target": "pancreas", "dsc": 0.6, "nsd": 0.5,
                       "dimensionality": "3D"}])
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "table1_3d.csv").write_text("target,modality,dsc_medsam,dsc_sam,dsc_improve,nsd_medsam,nsd_sam,"
                                         "nsd_improve\nPancreas,CT,76.76,43.53,33.23,81.09,32.38,48.71\n")
    monkeypatch.setenv("MEDSAM_SHARED_DIR", str(tmp_path))
    long = tables.task_rows(index, metrics, None, "test", 0)
    liver = long[long["task"] == "Liver (CT)"].iloc[0]
    pancreas = long[long["task"] == "Pancreas (CT)"].iloc[0]
    assert liver["n_cases"] == 0 and math.isnan(liver["dsc_base"])
    assert pancreas["n_cases"] == 2 and pancreas["dsc_base"] == pytest.approx(70.0)
    assert pancreas["paper_dsc_medsam"] == pytest.approx(76.76)
    assert pancreas["dsc_vs_medsam"] == pytest.approx(70.0 - 76.76)
    table = tables.formatted(long, 1, False, True)
    assert table.loc[table["Task"] == "Liver (CT)", "DSC base"].iloc[0] == "no test cases"
    assert table.loc[table["Task"] == "Pancreas (CT)", "DSC fine-tuned"].iloc[0] == "not available"
    monkeypatch.setenv("MEDSAM_SHARED_DIR", str(tmp_path / "absent"))
    long = tables.task_rows(index, metrics, None, "test", 0)
    assert not long["published_available"].any()
    table = tables.formatted(long, 1, False, False)
    assert set(table["DSC MedSAM (paper)"]) == {"unavailable"}


def test_failure_rules():
    image = np.full((256, 256, 3), 100, np.uint8)
    tiny = np.zeros((256, 256), bool)
    tiny[100:110, 100:110] = True
    rules = failures.failure_rules(image, tiny, prompt_box(tiny))
    assert any(r.startswith("tiny object") for r in rules)
    assert any(r.startswith("low contrast") for r in rules)
    assert any(r.startswith("missing boundaries") for r in rules)
    big = np.zeros((256, 256), bool)
    big[50:150, 50:150] = True
    bright = image.copy()
    bright[big] = 220
    assert failures.failure_rules(bright, big, prompt_box(big)) == []
    loose = failures.failure_rules(bright, big, prompt_box(big, margin=60))
    assert any(r.startswith("loose box") for r in loose)
