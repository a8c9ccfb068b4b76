"""Bad input, round 2 (issue 16), classes 4, 6 and 9: silent wrong answers in evaluation and in
models, and API errors that were not MedSAMError.

CLI rows run through ``bad_input_helpers.check_bad_input`` (exit 2, one ``error:`` line naming the
file or option, nothing written, inputs unchanged). Stores and embedding stores are tiny (three
64 x 64 PNG cases) and built once per module; each row copies what it needs into its own folder.
API cases (class 9) are plain tests asserting a MedSAMError that names the argument.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from bad_input_helpers import BadInput, check_bad_input, run_cli, write_manifest
from medsam_lib.data.curate import curate
from medsam_lib.data.store import CuratedDataset, read_index
from medsam_lib.fileio import MedSAMError
from medsam_lib.models.predictor import BoxPredictor

CASES = ("a", "b", "c")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Checkpoint hashes are remembered in the cache folder: a temporary one (outside the rows' inputs)."""
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path / "cache"))


# --- tiny inputs ----------------------------------------------------------------------------------

def _curated(root: Path, seed: int) -> Path:
    """A curated store of cases a, b, c (data set "first"): the same image ids for every ``seed``,
    other pixels for each."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for c in CASES:
        image = rng.integers(0, 255, size=(64, 64), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        y, x = rng.integers(8, 24, size=2)
        mask[y:y + 28, x:x + 24] = 255
        Image.fromarray(image).save(root / "images" / f"{c}.png")
        Image.fromarray(mask).save(root / "masks" / f"{c}.png")
    write_manifest(root, "first", CASES)
    curate(root / "first.json", root / "store", progress=False)
    return root / "store"


@pytest.fixture(scope="module")
def made(tmp_path_factory, lite_model):
    """Two curated stores with the same image ids (A, B) and each one's embedding store."""
    from medsam_lib.embeddings import build_store

    root = tmp_path_factory.mktemp("round2")
    a, b = _curated(root / "A", 0), _curated(root / "B", 1)
    emb_a = build_store(a, lite_model, root / "emb_a", chunk_size=2, progress=False).path
    emb_b = build_store(b, lite_model, root / "emb_b", chunk_size=2, progress=False).path
    assert read_index(a / "index.csv")["image_id"].tolist() == read_index(b / "index.csv")["image_id"].tolist()
    return {"A": a, "B": b, "emb_A": emb_a, "emb_B": emb_b}


def _copy(made, tmp: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        shutil.copytree(made[name], tmp / name, symlinks=True)  # copy2: mtimes kept, as a moved store
        out.append(tmp / name)
    return out


def _evaluate(tmp: Path, curated: Path, *extra: str) -> list[str]:
    return ["evaluate", "--curated", str(curated), "--model", "litemedsam", "--out", str(tmp / "ev"),
            "--split", "all", "--device", "cpu", *extra]


def _chunk(store: Path, k: int) -> tuple[dict, Path]:
    marker = json.loads((store / "chunks" / f"chunk_{k:05d}.json").read_text(encoding="utf-8"))
    return marker, store / "chunks" / marker["file"]


def _flip_bytes_keep_mtime(store: Path, k: int = 0) -> Path:
    marker, file = _chunk(store, k)
    stat = file.stat()
    with open(file, "r+b") as handle:
        handle.seek(marker["bytes"] - 8192)
        data = bytearray(handle.read(64))
        handle.seek(marker["bytes"] - 8192)
        handle.write(bytes(v ^ 0x55 for v in data))
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return file


def _nan_embeddings_with_valid_marker(store: Path) -> Path:
    """Chunk 0 rewritten with NaN and its marker updated to match: integrity holds, the values do not."""
    from medsam_lib.fileio import sha256_file

    marker, file = _chunk(store, 0)
    array = np.load(file)
    array[0, 3] = np.nan
    np.save(file, array)
    stat = file.stat()
    marker.update(bytes=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=sha256_file(file))
    (store / "chunks" / "chunk_00000.json").write_text(json.dumps(marker))
    return file


def _drop_index_row(store: Path) -> Path:
    lines = (store / "index.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (store / "index.csv").write_text("".join(lines[:-1]))  # the last case file stays
    return store


def _index_file(store: Path, value: str, committed: bool = False) -> Path:
    """Row 0's file set to ``value``: by hand, or through write_index (the index then is the committed one)."""
    from medsam_lib.data.store_commit import write_index

    index = read_index(store / "index.csv")
    index.loc[0, "file"] = value
    if committed:
        write_index(store, index)
    else:
        index.to_csv(store / "index.csv", index=False)
    return store


def _volume(path: Path, origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    mask = np.zeros((6, 24, 24), np.uint8)
    mask[1:5, 4:16, 6:18] = 1
    image = sitk.GetImageFromArray(mask)
    image.SetSpacing((0.8, 0.8, 2.0))
    image.SetOrigin(origin)
    image.SetDirection(tuple(float(v) for v in direction))
    sitk.WriteImage(image, str(path))
    return path


def _pair(tmp: Path, pred_geometry: dict, *extra: str) -> list[str]:
    gt = _volume(tmp / "gt.nii.gz")
    pred = _volume(tmp / "pred.nii.gz", **pred_geometry)
    return ["evaluate", "--pred", str(pred), "--gt", str(gt), *extra]


def _lite_state() -> dict:
    from medsam_lib.models.zoo import bundled_lite_checkpoint, load_state_dict

    return load_state_dict(bundled_lite_checkpoint())


def _nan_checkpoint(path: Path) -> Path:
    state = _lite_state()
    key = next(k for k in state if k.startswith("mask_decoder.") and state[k].is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    torch.save(state, path)
    return path


def _finetuned(path: Path, modules=("mask_decoder",), extra_prefix: str | None = None, nan: bool = False) -> Path:
    """A fine-tuned checkpoint in train's format (decoder weights of the base model)."""
    from medsam_lib.models.finetuned import FORMAT, FORMAT_VERSION
    from medsam_lib.models.zoo import base_reference

    state = _lite_state()
    weights = {k: v.clone() for k, v in state.items() if k.split(".")[0] in modules}
    if extra_prefix:
        weights.update({k: v.clone() * 0 for k, v in state.items() if k.startswith(extra_prefix)})
    if nan:
        key = next(k for k in weights if weights[k].is_floating_point())
        weights[key].view(-1)[0] = float("nan")
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "base": base_reference("litemedsam", "lite"),
                "recipe": "paper", "trained_modules": list(modules), "weights": weights, "step": 1,
                "val_dice": 0.5}, path)
    return path


def _png(path: Path) -> Path:
    Image.fromarray((np.arange(64 * 80).reshape(64, 80) % 251).astype(np.uint8)).save(path)
    return path


def _segment(tmp: Path, model: Path) -> list[str]:
    return ["segment", "--image", str(_png(tmp / "in.png")), "--box", "10,10,60,50", "--model", str(model),
            "--device", "cpu", "--out", str(tmp / "m.png")]


# --- the table --------------------------------------------------------------------------------------

def _rows() -> list[BadInput]:
    rows: list[BadInput] = []

    def row(name, build, *expect, **kw):
        rows.append(BadInput(name, build, tuple(expect), **kw))

    # 4a. an embedding store is bound to the curated store and the model it was made from
    row("evaluate_embeddings_of_another_curated_store_same_ids",
        lambda t, m: (_copy(m, t, "A", "emb_B"), _evaluate(t, t / "A", "--embeddings", str(t / "emb_B")))[-1],
        "--embeddings", "emb_B", "built from other curated images", "images changed")
    row("evaluate_embeddings_of_another_model",
        lambda t, m: (_copy(m, t, "A", "emb_A"), ["evaluate", "--curated", str(t / "A"), "--model",
                                                  str(_nan_checkpoint(t / "other.pth")), "--out", str(t / "ev"),
                                                  "--split", "all", "--embeddings", str(t / "emb_A")])[-1],
        "--embeddings", "model weights (SHA-256)")
    # 4b. a chunk with flipped bytes (mtime kept) is refused when read, naming it and how to repair
    row("evaluate_embedding_chunk_flipped_bytes_mtime_kept",
        lambda t, m: (_copy(m, t, "A", "emb_A"), _flip_bytes_keep_mtime(t / "emb_A"),
                      _evaluate(t, t / "A", "--embeddings", str(t / "emb_A")))[-1],
        "chunk_00000", "SHA-256", "python -m medsam_lib embed", model_allowed=True)
    row("evaluate_embedding_chunk_truncated",
        lambda t, m: (_copy(m, t, "A", "emb_A"), os.truncate(_chunk(t / "emb_A", 1)[1], 100),
                      _evaluate(t, t / "A", "--embeddings", str(t / "emb_A")))[-1],
        "chunk_00001", "truncated", "python -m medsam_lib embed")
    # 4c. the curated index is the committed one and stays inside the store
    row("evaluate_index_row_removed",
        lambda t, m: (_drop_index_row(_copy(m, t, "A")[0]), _evaluate(t, t / "A"))[-1],
        "index.csv", "not the index this store's curation committed", "2 rows now, 3 committed")
    row("evaluate_index_file_outside_store",
        lambda t, m: ((t / "outside.npz").write_bytes(b"x"), _index_file(_copy(m, t, "A")[0], "../outside.npz"),
                      _evaluate(t, t / "A"))[-1],
        "index.csv", "'../outside.npz'", "not inside the store's cases/ folder")
    row("evaluate_index_file_outside_store_committed",
        lambda t, m: ((t / "outside.npz").write_bytes(b"x"), _index_file(_copy(m, t, "A")[0], "cases/../../outside.npz",
                                                                         committed=True), _evaluate(t, t / "A"))[-1],
        "index.csv", "'cases/../../outside.npz'", "not inside the store's cases/ folder")
    row("evaluate_index_file_absolute",
        lambda t, m: (_index_file(_copy(m, t, "A")[0], "/etc/passwd"), _evaluate(t, t / "A"))[-1],
        "index.csv", "'/etc/passwd'", "not inside")
    row("embed_index_row_removed",  # the rule is the store's reader's: every command gets it
        lambda t, m: (_drop_index_row(_copy(m, t, "A")[0]),
                      ["embed", "--curated", str(t / "A"), "--out", str(t / "emb"), "--no-progress"])[-1],
        "index.csv", "not the index")
    # 4d. --pred/--gt: the whole grid, not only shape and spacing
    row("evaluate_pair_origin_500mm_apart", lambda t, m: _pair(t, {"origin": (500.0, 0.0, 0.0)}),
        "pred.nii.gz", "gt.nii.gz", "origin")
    row("evaluate_pair_direction_flipped", lambda t, m: _pair(t, {"direction": (-1, 0, 0, 0, 1, 0, 0, 0, 1)}),
        "pred.nii.gz", "gt.nii.gz", "direction")
    row("evaluate_pair_direction_flipped_with_spacing_given",
        lambda t, m: _pair(t, {"direction": (1, 0, 0, 0, 1, 0, 0, 0, -1)}, "--spacing", "1,1,1"),
        "pred.nii.gz", "direction")
    # 6. non-finite weights, embeddings; weights outside the declared modules
    row("segment_nan_decoder_weight", lambda t, m: _segment(t, _nan_checkpoint(t / "nan.pth")),
        "nan.pth", "mask_decoder.", "NaN or infinite", model_allowed=True)
    row("segment_finetuned_carries_image_encoder",
        lambda t, m: _segment(t, _finetuned(t / "best.pt", extra_prefix="image_encoder.patch_embed")),
        "best.pt", "trained_modules ['mask_decoder']", "image_encoder", model_allowed=True)
    row("segment_finetuned_nan_weight", lambda t, m: _segment(t, _finetuned(t / "best.pt", nan=True)),
        "best.pt", "NaN or infinite", model_allowed=True)
    row("evaluate_nan_embedding_with_valid_marker",
        lambda t, m: (_copy(m, t, "A", "emb_A"), _nan_embeddings_with_valid_marker(t / "emb_A"),
                      _evaluate(t, t / "A", "--embeddings", str(t / "emb_A")))[-1],
        "first/", "'embedding'", "NaN or infinite", model_allowed=True)
    return rows


ROWS = _rows()


def test_rows_are_unique():
    assert len({r.name for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input(row, tmp_path, capfd, made):
    work = tmp_path / "w"
    work.mkdir()
    check_bad_input(row, work, capfd, made)


# --- what rows cannot say -----------------------------------------------------------------------------

def test_python_api_binds_the_embedding_store_too(made, lite_model):
    from medsam_lib.embeddings import open_store
    from medsam_lib.evaluation.options import EvalOptions
    from medsam_lib.evaluation.run import predict_store

    store_b = open_store(made["emb_B"])  # opened without model or curated store
    with pytest.raises(MedSAMError, match=r"emb_b.*built from other curated images"):
        predict_store(made["A"], BoxPredictor(lite_model), EvalOptions(split="all"), embeddings=store_b,
                      progress=False)


def test_a_decoder_only_finetuned_model_uses_its_base_embeddings(made, tmp_path, capfd):
    """Binding compares the image encoder: decoder-only fine-tuning keeps the base's embeddings."""
    best = _finetuned(tmp_path / "best.pt")
    code, out, err = run_cli(["evaluate", "--curated", str(made["A"]), "--model", str(best), "--out",
                              str(tmp_path / "ev"), "--split", "all", "--device", "cpu", "--embeddings",
                              str(made["emb_A"])], capfd)
    assert code == 0, err
    assert "3 targets" in out


def test_a_chunk_read_once_is_not_hashed_again(made, monkeypatch):
    from medsam_lib.embeddings import open_store
    from medsam_lib.embeddings import store as store_module

    calls = []
    real = store_module.sha256_file
    monkeypatch.setattr(store_module, "sha256_file", lambda p: (calls.append(p), real(p))[1])
    monkeypatch.setattr(store_module, "_HASHED", {})
    store = open_store(made["emb_A"])
    for _ in range(3):
        for image_id in store.ids():
            store.get(image_id)
    open_store(made["emb_A"]).get_batch(store.ids())
    assert len(calls) == 2  # two chunks, each hashed once in this process


def test_the_committed_index_and_a_deliberate_subset(made, tmp_path):
    from medsam_lib.data.store_commit import write_index

    store = _copy(made, tmp_path, "A")[0]
    info = json.loads((store / "curation.json").read_text(encoding="utf-8"))
    assert info["index"]["rows"] == 3 and len(info["index"]["sha256"]) == 64
    index = read_index(store / "index.csv")
    write_index(store, index.iloc[:2])  # the documented way to cut a store down
    assert len(CuratedDataset(store).index) == 2
    legacy = _copy(made, tmp_path / "old", "A")[0]  # a store curated before the record existed
    info.pop("index")
    (legacy / "curation.json").write_text(json.dumps(info))
    _drop_index_row(legacy)
    assert len(CuratedDataset(legacy).index) == 2


def test_a_pair_within_the_stated_tolerance_is_scored(tmp_path, capfd):
    argv = _pair(tmp_path, {"origin": (0.004, -0.003, 0.0)})  # < 0.01 mm: the same grid
    code, out, err = run_cli(argv, capfd)
    assert code == 0, err
    assert json.loads(out)["dsc"] == pytest.approx(1.0)


# --- class 9: the API boundary of BoxPredictor --------------------------------------------------------

@pytest.fixture(scope="module")
def predictor(lite_model):
    return BoxPredictor(lite_model)


def _embedding(shape=(256, 64, 64), fill=0.0):
    return np.full(shape, fill, np.float32)


@pytest.mark.parametrize("boxes", [[[1, 2, 30, 40], [1, 2, 3]], [[1, 2, 30, 40], "abcd"], [None]],
                         ids=["ragged", "text", "none"])
def test_bad_boxes_name_the_argument(predictor, boxes):
    predictor.set_embedding(_embedding(), (64, 64))
    with pytest.raises(MedSAMError, match="boxes"):
        predictor.predict(boxes)


def test_ragged_boxes_in_predict_batch(predictor):
    image = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    with pytest.raises(MedSAMError, match="boxes"):
        predictor.predict_batch([image, image], [[1, 2, 30, 40], [1, 2, 3]])


@pytest.mark.parametrize("shape", [(256, 32, 32), (128, 64, 64), (2, 256, 64, 64), (256, 64)])
def test_embedding_of_the_wrong_shape_names_the_argument(predictor, shape):
    with pytest.raises(MedSAMError, match=r"'embedding' has shape .*expected \(256, 64, 64\)"):
        predictor.set_embedding(_embedding(shape), (64, 64))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_embedding_names_the_argument(predictor, value):
    emb = _embedding()
    emb[0, 0, 0] = value
    with pytest.raises(MedSAMError, match="'embedding' holds 1 NaN or infinite"):
        predictor.set_embedding(emb, (64, 64))


def test_non_numeric_embedding_names_the_argument(predictor):
    with pytest.raises(MedSAMError, match="'embedding'"):
        predictor.set_embedding(np.full((256, 64, 64), "x", dtype=object), (64, 64))


@pytest.mark.parametrize("size", [(0, 0), (64, 0), (-5, 64), (64,), (64, 64, 3), ("a", 64), (64.5, 64), None,
                                  (True, 64)])
def test_bad_original_size_names_the_argument(predictor, size):
    with pytest.raises(MedSAMError, match="'original_size'"):
        predictor.set_embedding(_embedding(), size)


def test_nan_outputs_are_refused_not_scored(lite_model):
    """Weights changed after loading (the load check cannot see it): the output check still refuses."""
    import copy

    from medsam_lib.models.zoo import LoadedModel

    model = copy.deepcopy(lite_model.model)
    with torch.no_grad():
        next(model.mask_decoder.parameters()).fill_(float("nan"))
    broken = BoxPredictor(LoadedModel(model=model, name="broken", arch="lite", checkpoint=lite_model.checkpoint))
    broken.set_embedding(_embedding(fill=0.1), (64, 64), source="slice 3")
    with pytest.raises(MedSAMError, match="slice 3: the model produced NaN or infinite outputs"):
        broken.predict([[10, 10, 40, 40]])


def test_good_arguments_still_work(predictor):
    predictor.set_embedding(_embedding(fill=0.1)[None], (np.int64(48), 64.0))
    result = predictor.predict(np.array([[10, 10, 40, 40]]))
    assert result.masks.shape == (1, 48, 64) and np.isfinite(result.scores).all()
