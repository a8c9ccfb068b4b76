"""The embedding store: equal to the plain encoder, keyed, reused, refusing mismatches, repaired."""
from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch

from embeddings_helpers import copy_store, cosine, curate_demo, store_arrays, subset_store
from medsam_lib.embeddings import build_store, open_store
from medsam_lib.fileio import MedSAMError
from medsam_lib.models.transforms import for_model

N_IMAGES = 4


@pytest.fixture(scope="module")
def demo_curated(tmp_path_factory):
    return curate_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def curated(demo_curated, tmp_path_factory):
    return subset_store(demo_curated, tmp_path_factory.mktemp("sub") / "curated", N_IMAGES)


@pytest.fixture(scope="module")
def store16(curated, lite_model, tmp_path_factory):
    return build_store(curated, lite_model, tmp_path_factory.mktemp("s16") / "emb", dtype="float16",
                       batch_size=2, chunk_size=2, progress=False)


@pytest.fixture(scope="module")
def store32(curated, lite_model, tmp_path_factory):
    return build_store(curated, lite_model, tmp_path_factory.mktemp("s32") / "emb", dtype="float32",
                       batch_size=4, chunk_size=3, progress=False)


def _plain_embedding(lite_model, curated_ds, image_id):
    row = curated_ds.index[curated_ds.index["image_id"] == image_id].iloc[0]
    prepared = for_model(lite_model).prepare(curated_ds.load_image(row))
    with torch.inference_mode():
        return lite_model.model.image_encoder(prepared.tensor[None])[0].numpy()


def test_store_equals_the_plain_image_encoder(store16, store32, curated, lite_model):
    from medsam_lib.data.store import CuratedDataset

    ds = CuratedDataset(curated)
    ids = ds.index["image_id"].drop_duplicates().tolist()
    assert store16.ids() == ids and store32.ids() == ids and len(store16) == N_IMAGES
    for image_id in ids:
        plain = _plain_embedding(lite_model, ds, image_id)
        got16, got32 = store16.get(image_id), store32.get(image_id)
        assert got16.shape == (256, 64, 64) and got16.dtype == np.float16 and got32.dtype == np.float32
        assert cosine(got16, plain) >= 0.999, image_id
        np.testing.assert_allclose(got32, plain, rtol=0, atol=1e-4 * np.abs(plain).max())
    batch = store16.get_batch(ids[::-1])
    assert batch.shape == (N_IMAGES, 256, 64, 64)
    np.testing.assert_array_equal(batch[0], store16.get(ids[-1]))


def test_meta_names_the_key(store16, lite_model):
    from medsam_lib.models.zoo import LITE_SHA256

    meta = store16.meta
    assert meta["model"] == "litemedsam" and meta["weights_sha256"] == LITE_SHA256
    assert meta["transform"] == "lite256" and meta["preset"] == "paper" and meta["dtype"] == "float16"
    assert meta["image_size"] == 256
    first = meta["images"][store16.ids()[0]]
    assert len(first["image_sha256"]) == 64 and len(first["pixels_sha256"]) == 64
    assert store16.original_size(store16.ids()[0]) == (256, 256)


def test_predictor_from_stored_embedding_gives_the_set_image_masks(store32, curated, lite_model):
    from medsam_lib.data.store import CuratedDataset
    from medsam_lib.models.predictor import BoxPredictor

    ds = CuratedDataset(curated)
    row = ds.index.iloc[0]
    box = [[row["x0"], row["y0"], row["x1"], row["y1"]]]
    predictor = BoxPredictor(lite_model)
    predictor.set_image(ds.load_image(row))
    direct = predictor.predict(box)
    predictor.set_embedding(store32.get(row["image_id"]), store32.original_size(row["image_id"]))
    stored = predictor.predict(box)
    assert (direct.masks == stored.masks).mean() > 0.999
