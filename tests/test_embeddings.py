"""The embedding store: equal to the plain encoder, keyed, reused, refusing mismatches, repaired."""
from __future__ import annotations

import errno
import json
import os
import re

import numpy as np
import pytest
import torch

from embeddings_helpers import copy_store, cosine, curate_demo, store_arrays, subset_store
from medsam_lib.embeddings import build_store, open_store
from medsam_lib.fileio import MedSAMError
from medsam_lib.models.transforms import for_model

N_IMAGES = 3  # chunks of 2: one full chunk and one partial


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Checkpoint hashes are remembered in the cache folder: a temporary one here."""
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path / "cache"))


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


def test_rerun_reuses_a_finished_store_without_loading_the_model(store16, curated, monkeypatch):
    import medsam_lib.embeddings.build as build

    monkeypatch.setattr(build, "load_model", lambda *a, **k: pytest.fail("a finished store needs no model"))
    again = build_store(curated, "litemedsam", store16.path, progress=False)
    assert again.stats["computed"] == 0 and again.stats["kept"] == N_IMAGES
    for image_id in store16.ids():
        np.testing.assert_array_equal(again.get(image_id), store16.get(image_id))


def test_a_changed_curated_image_is_recomputed_the_rest_copied(store16, curated, lite_model, tmp_path):
    from medsam_lib.data.store import read_index
    from medsam_lib.data.store_commit import write_index

    changed = copy_store(curated, tmp_path / "curated")
    index = read_index(changed / "index.csv")
    ids = index["image_id"].drop_duplicates().tolist()
    donor = index[index["image_id"] == ids[1]].iloc[0]
    rows = index["image_id"] == ids[0]  # image 0 now shows image 1's pixels (same source hash)
    index.loc[rows, ["file", "image_member"]] = donor["file"], donor["image_member"]
    write_index(changed, index)
    out = copy_store(store16.path, tmp_path / "emb")
    with pytest.raises(MedSAMError, match=r"images changed \(e\.g\. " + ids[0]):
        open_store(out, curated=changed)
    store = build_store(changed, lite_model, out, progress=False)
    assert store.stats["computed"] == 1 and store.stats["kept"] + store.stats["copied"] == N_IMAGES - 1
    assert cosine(store.get(ids[0]), store16.get(ids[1])) > 0.9999  # batched with another image before
    for image_id in ids[1:]:
        np.testing.assert_array_equal(store.get(image_id), store16.get(image_id))
    assert len(list((out / "chunks").glob("chunk_*.npy"))) == len({m["chunk"] for m in store.meta["images"].values()})


def _random_lite_checkpoint(path):
    from medsam_lib.models.zoo import build_model

    torch.manual_seed(1)
    torch.save(build_model("lite").state_dict(), path)
    return path


def test_store_of_other_weights_preset_or_dtype_is_refused(store16, curated, demo_curated, tmp_path):
    other = _random_lite_checkpoint(tmp_path / "other_lite.pth")
    with pytest.raises(MedSAMError, match=r"store.json.*model weights \(SHA-256\): store has litemedsam"):
        build_store(curated, other, store16.path, progress=False)
    with pytest.raises(MedSAMError, match="model weights"):
        open_store(store16.path, model=other)
    other_preset = subset_store(demo_curated, tmp_path / "official", N_IMAGES, preset="official_code")
    with pytest.raises(MedSAMError, match="curated preset: store has paper, asked for official_code"):
        build_store(other_preset, "litemedsam", store16.path, progress=False)
    with pytest.raises(MedSAMError, match="curated preset"):
        open_store(store16.path, curated=other_preset)
    with pytest.raises(MedSAMError, match="dtype: store has float16, asked for float32"):
        build_store(curated, "litemedsam", store16.path, dtype="float32", progress=False)
    with pytest.raises(MedSAMError, match="dtype must be one of float16, float32"):
        build_store(curated, "litemedsam", tmp_path / "new", dtype="float64", progress=False)
    assert open_store(store16.path, model="litemedsam", curated=curated).ids() == store16.ids()


def test_bad_inputs_exit_2_naming_the_file(store16, curated, tmp_path, capsys):
    from medsam_lib.cli import main

    def run(*args):
        code = main(["embed", *args, "--no-progress"])
        return code, capsys.readouterr().err

    code, err = run("--curated", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e"))
    assert code == 2 and "nowhere" in err and "curated store" in err
    empty = copy_store(curated, tmp_path / "empty")
    from medsam_lib.data.store import read_index
    from medsam_lib.data.store_commit import write_index

    write_index(empty, read_index(curated / "index.csv").iloc[:0])
    code, err = run("--curated", str(empty), "--out", str(tmp_path / "e"))
    assert code == 2 and "empty/index.csv: the curated store holds no images" in err
    code, err = run("--curated", str(curated), "--out", str(tmp_path / "e"), "--dtype", "int8")
    assert code == 2 and "dtype must be one of float16, float32, got 'int8'" in err
    other = _random_lite_checkpoint(tmp_path / "other_lite.pth")
    code, err = run("--curated", str(curated), "--out", str(store16.path), "--model", str(other))
    assert code == 2 and f"{store16.path}/store.json" in err and "model weights" in err
    code, err = run("--curated", str(curated), "--out", str(curated))
    assert code == 2 and "is a curated store" in err
    code, err = run("--curated", str(curated), "--out", str(tmp_path / "e"), "--batch-size", "0")
    assert code == 2 and "batch size must be at least 1" in err
    if not torch.cuda.is_available():
        code, err = run("--curated", str(curated), "--out", str(tmp_path / "e"), "--device", "cuda")
        assert code == 2 and "no CUDA GPU is available" in err
    assert not (tmp_path / "e").exists()  # refused before anything was written


def _damage(store, how: str):
    marker = json.loads((store.path / "chunks" / "chunk_00001.json").read_text(encoding="utf-8"))
    file = store.path / "chunks" / marker["file"]
    stat = file.stat()
    if how == "truncate":
        with open(file, "r+b") as handle:
            handle.truncate(marker["bytes"] // 2)
    else:  # edit in place: same size, other bytes
        with open(file, "r+b") as handle:
            handle.seek(marker["bytes"] - 4096)
            handle.write(b"\x7f" * 64)
    if how == "edit_keep_mtime":
        os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return file


@pytest.mark.parametrize("how", ["truncate", "edit", "edit_keep_mtime"])
def test_damaged_chunk_is_refused_by_readers_and_repaired_by_embed(store16, tmp_path, how, curated, lite_model,
                                                                   capsys):
    from bad_input_helpers import snapshot

    from medsam_lib.cli import main

    damaged = copy_store(store16.path, tmp_path / "emb")
    file = _damage(open_store(damaged), how)
    before = snapshot(damaged)
    if how == "edit_keep_mtime":  # open's quick check cannot see it; the first read of the chunk does
        store = open_store(damaged, model=lite_model, curated=curated)
        store.get(store.ids()[0])  # chunk 0 is intact
        with pytest.raises(MedSAMError, match=re.escape(str(file)) + ".*SHA-256.*rerun `python -m medsam_lib embed"):
            store.get(store.ids()[2])
    else:
        for kwargs in ({}, {"model": lite_model, "curated": curated}):  # the reader never repairs
            with pytest.raises(MedSAMError, match=re.escape(str(file)) + ".*rerun `python -m medsam_lib embed"):
                open_store(damaged, **kwargs)
    assert snapshot(damaged) == before  # nothing written by the reader
    assert main(["embed", "--check", "--out", str(damaged)]) == 2
    assert str(file) in capsys.readouterr().err
    repaired = build_store(curated, lite_model, damaged, progress=False)  # embed repairs, with a message
    assert str(file) in capsys.readouterr().err
    assert repaired.stats["computed"] == N_IMAGES - 2 and repaired.stats["kept"] == 2
    for image_id in store16.ids():
        np.testing.assert_array_equal(repaired.get(image_id), store16.get(image_id))
    assert main(["embed", "--check", "--out", str(damaged)]) == 0


def test_notebooks_05_06_repair_the_profiles_store_through_build_store(store16, curated, lite_model, tmp_path,
                                                                        capsys):
    """``evaluation.chain`` (notebooks 05/06) opens the profile's store through ``build_store``: a
    damaged chunk is recomputed there, with a message (the reader alone would refuse it)."""
    from medsam_lib.data.store import CuratedDataset
    from medsam_lib.evaluation.chain import open_embedding_store
    from medsam_lib.layout import ResultsLayout

    path = ResultsLayout(tmp_path / "results").embeddings(lite_model.name)
    path.parent.mkdir(parents=True)
    file = _damage(open_store(copy_store(store16.path, path)), "truncate")
    store = open_embedding_store(tmp_path / "results", lite_model, CuratedDataset(curated))
    assert str(file) in capsys.readouterr().err and store.stats["computed"] == N_IMAGES - 2
    for image_id in store16.ids():
        np.testing.assert_array_equal(store.get(image_id), store16.get(image_id))


def test_out_of_memory_halves_the_batch_and_goes_on(store16, curated, lite_model, tmp_path, monkeypatch, capsys):
    from medsam_lib.embeddings import encoder as encoder_module

    real = encoder_module.BatchEncoder.__call__

    def tight(self, batch):
        if len(batch) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB (injected)")
        return real(self, batch)

    monkeypatch.setattr(encoder_module.BatchEncoder, "__call__", tight)
    two = subset_store(curated, tmp_path / "two", 2)
    store = build_store(two, lite_model, tmp_path / "emb", batch_size=4, chunk_size=2, progress=False)
    assert "out of memory" in capsys.readouterr().err and store.stats["batch_size"] == 1
    assert store.stats["computed"] == 2 and store.ids() == store16.ids()[:2]
    for image_id in store.ids():
        assert cosine(store.get(image_id), store16.get(image_id)) > 0.9999


def test_disk_full_leaves_a_consistent_store_that_a_rerun_completes(store16, curated, lite_model, tmp_path,
                                                                  monkeypatch):
    import medsam_lib.embeddings.build as build
    from medsam_lib.embeddings.store import load_store

    real, calls = build._save_array, []

    def full_disk(path, array):
        calls.append(path)
        if len(calls) == 2:
            with open(path.parent / f".{path.name}.x.part.npy", "wb") as handle:  # a half-written temp file
                handle.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, array)

    monkeypatch.setattr(build, "_save_array", full_disk)
    out = tmp_path / "emb"
    with pytest.raises(MedSAMError, match="disk full while writing the embedding store"):
        build_store(curated, lite_model, out, batch_size=2, chunk_size=2, progress=False)
    header, markers, problems = load_store(out)
    assert markers[0] is not None and markers[1] is None and len(problems) == 1
    with pytest.raises(MedSAMError, match="not committed"):
        open_store(out)
    monkeypatch.setattr(build, "_save_array", real)
    store = build_store(curated, lite_model, out, batch_size=2, progress=False)
    assert store.stats["computed"] == N_IMAGES - 2 and store.stats["kept"] == 2
    assert not list((out / "chunks").glob(".*part*"))
    for image_id in store16.ids():
        np.testing.assert_array_equal(store.get(image_id), store16.get(image_id))


def test_weights_sha256_is_computed_once_per_checkpoint(tmp_path, monkeypatch):
    import medsam_lib.embeddings.keys as keys
    import medsam_lib.models.checkpoint_hash as checkpoint_hash
    from medsam_lib.fileio import sha256_file
    from medsam_lib.models.zoo import load_model

    path = _random_lite_checkpoint(tmp_path / "user.pth")
    calls = []
    monkeypatch.setattr(checkpoint_hash, "sha256_file", lambda p: calls.append(p) or sha256_file(p))
    assert keys.weights_sha256(path) == sha256_file(path) and len(calls) == 1
    assert keys.weights_sha256(str(path)) == sha256_file(path) and len(calls) == 1  # this process remembers
    loaded = load_model(path, device="cpu")  # the loaded model carries the same hash, not computed again
    assert keys.weights_sha256(loaded) == loaded.sha256 == sha256_file(path) and len(calls) == 1
    checkpoint_hash._MEMO.clear()
    assert keys.weights_sha256(path) == sha256_file(path) and len(calls) == 1  # the cache file remembers
    path.write_bytes(path.read_bytes() + b"\0")  # another file now: hashed again
    assert keys.weights_sha256(path) == sha256_file(path) and len(calls) == 2


@pytest.mark.slow
def test_vit_b_store_equals_segment_anythings_own_predictor(demo_curated, tmp_path):
    """ViT-B at 1024 (random weights; 3 of its 12 blocks, windowed and global, to keep CI fast): the
    stored embedding is what segment_anything's SamPredictor computes on the same curated image with
    its own resize and normalisation (the ``vit1024-paper`` transform)."""
    from segment_anything import SamPredictor

    from medsam_lib.data.store import CuratedDataset
    from medsam_lib.models.zoo import LoadedModel, build_model

    torch.manual_seed(0)
    sam = build_model("vit_b").eval()
    sam.image_encoder.blocks = sam.image_encoder.blocks[:3]  # blocks 0-1 windowed, block 2 global
    path = tmp_path / "vit_b_short.pth"
    torch.save(sam.state_dict(), path)  # the file its weights SHA-256 is taken from
    loaded = LoadedModel(sam, "vit_b_short.pth", "vit_b", str(path))
    one = subset_store(demo_curated, tmp_path / "one", 1)
    store = build_store(one, loaded, tmp_path / "emb", dtype="float32", progress=False)
    assert store.meta["transform"] == "vit1024-paper" and store.meta["image_size"] == 1024
    assert store.stats["encoder"] == "module-cpu-float32"
    ds = CuratedDataset(one)
    predictor = SamPredictor(sam)
    predictor.set_image(ds.load_image(0))
    expected = predictor.get_image_embedding()[0].numpy()
    got = store.get(ds.index["image_id"][0])
    assert got.shape == (256, 64, 64)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    assert open_store(store.path, model=loaded).meta["weights_sha256"] == store.meta["weights_sha256"]
    with pytest.raises(MedSAMError, match="model input transform: store has vit1024-paper, asked for vit1024-official"):
        open_store(store.path, model=loaded, vit_preprocess="official_code")


def test_notebook_summary_helpers(store16, tmp_path):
    from medsam_lib.embeddings import summary

    rng = np.random.default_rng(0)
    line = np.outer(rng.standard_normal(50), rng.standard_normal(8)) + 1e-3 * rng.standard_normal((50, 8))
    coords, share = summary.pca_2d(line)
    assert coords.shape == (50, 2) and share[0] > 0.999  # one direction holds all the variance
    pooled = summary.pooled(store16)
    np.testing.assert_allclose(pooled[0], store16.get(store16.ids()[0]).astype(np.float32).mean(axis=(1, 2)),
                               rtol=1e-5)
    table = summary.store_table(store16)
    assert table["images"].sum() == N_IMAGES
    figure = summary.plot_pca(store16, tmp_path / "figures" / "pca.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
