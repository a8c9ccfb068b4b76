"""Evaluate a model on a curated store: one row per (case, volume, image, target) in ``metrics.csv``.

    preds = predict_store(store, "litemedsam", EvalOptions(split="test"))   # model work, once
    frame = score_predictions(preds, EvalOptions(...))                       # scoring, per choice
    frame = evaluate_store(store, model, out_dir, options)                   # both, + metrics.csv, prompts.json
    frame = evaluate_store(store, model, out_dir, options, prompts="a/prompts.json")  # replay pinned prompts

Scored on the curated 256 x 256 grid. 3D targets (volumes) are predicted slice by slice and scored
in 3D with spacing (``spacing_z``, ``curated_spacing_y``, ``curated_spacing_x``) mm; 2D targets in
2D with (``curated_spacing_y``, ``curated_spacing_x``). Where the file carried no spacing
(``spacing_known`` False: PNG/JPEG/TIFF images) the unit is one curated pixel instead (the spacing
used is in each row's ``spacing_*`` columns). Prediction and scoring
are separate so the choices that only change scoring (``nsd_spacing``, ``slices``, ``nsd_2d``) are
compared on the same predictions. Every run with an output folder also writes the exact prompts it
used (``prompts.json``, see ``pinned``); ``prompts=`` replays such a file instead of deriving boxes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import MedSAMError, atomic_path, atomic_write_text, check_output_folder
from ..locks import output_folder
from . import metrics
from .inference import TARGET_KEY, EmbeddingCache, SliceSource, predict_volume, target_rng
from .options import EvalOptions
from .pinned import PROMPTS_FILE, PinnedPrompts, read_prompts, replay_volume, target_key, write_prompts

METRICS_COLUMNS = [
    "dataset", "case", "volume", "image_key", "target", "instance", "task", "modality", "stand_in", "synthetic",
    "dimensionality", "n_slices", "n_slices_volume", "pixels", "split", "dsc", "nsd", "protocol", "box_margin",
    "box_jitter", "test_boxes", "seed", "nsd_spacing", "slices", "nsd_2d", "tolerance_mm", "spacing_z", "spacing_y", "spacing_x",
    "spacing_known", "model"]


@dataclass
class PredictedTarget:
    """One target's ground truth and prediction over its curated slices ``z0 .. z0 + len - 1``."""

    meta: dict
    gt: np.ndarray  # (Z, 256, 256) bool
    pred: np.ndarray  # (Z, 256, 256) bool
    z0: int
    boxes: dict = field(default_factory=dict)
    row: dict = field(default_factory=dict)  # one index row (for re-reading the source)
    points: dict = field(default_factory=dict)  # {slice: (points (K, 2), labels (K,))} of replayed prompts

    @property
    def is_3d(self) -> bool:
        return int(self.meta["n_slices"]) > 1


def _open_store(store):
    from ..data.store import CuratedDataset

    return store if isinstance(store, CuratedDataset) else CuratedDataset(store)


def select(index, split: str):
    return index if split == "all" else index[index["split"] == split]


def _targets(store, options: EvalOptions, modalities=None):
    """The split's targets as [(key, index rows)] and every image's slices {(dataset, volume, image_key):
    {slice: index row}}."""
    index = store.index
    rows = select(index, options.split)
    if modalities is not None:
        rows = rows[rows["modality"].isin(modalities)]
    images = {}
    for key, group in index.groupby(["dataset", "volume", "image_key"], sort=False):
        images[key] = {int(r["slice"]): r for _, r in group.drop_duplicates("slice").iterrows()}
    return list(rows.groupby(TARGET_KEY, sort=True)), images


def check_prompts(store, options: EvalOptions, prompts: PinnedPrompts, modalities=None) -> None:
    """Refuse pinned ``prompts`` that do not match the split's targets and images (``PinnedPrompts.check``)."""
    groups, images = _targets(_open_store(store), options, modalities)
    prompts.check({target_key(g.iloc[0]): set(images[(g.iloc[0]["dataset"], g.iloc[0]["volume"],
                                                      g.iloc[0]["image_key"])]) for _, g in groups},
                  split=options.split)


def predict_store(store, model, options: EvalOptions = EvalOptions(), embeddings=None, device=None,
                  progress: bool = True, cache: EmbeddingCache | None = None,
                  modalities: tuple[str, ...] | None = None,
                  prompts: PinnedPrompts | None = None) -> list[PredictedTarget]:
    """Box-prompted predictions of every target of ``options.split``.

    ``model``: a zoo name, a checkpoint path, a LoadedModel or a BoxPredictor. ``embeddings``: an
    embedding store (``.get(image_id) -> (256, 64, 64)``) of the same model, or None; an
    ``EmbeddingStore`` is refused unless made by this model's encoder from this curated store
    (``EmbeddingStore.bind``). ``cache``:
    an ``EmbeddingCache`` to share between calls (one is made per call otherwise); each image is
    encoded at most once per cache. ``modalities``: only targets of these modalities. ``prompts``: pinned
    prompts (``pinned.read_prompts``) replayed instead of boxes from the ground truth (``options``' box
    options are then not used); checked against the targets before anything is predicted."""
    from tqdm.auto import tqdm

    from ..models.predictor import BoxPredictor

    store = _open_store(store)
    if prompts is not None:
        check_prompts(store, options, prompts, modalities)  # before the model loads
    predictor = model if isinstance(model, BoxPredictor) else BoxPredictor(model, device=device)
    cache = cache if cache is not None else EmbeddingCache(predictor, embeddings)
    if hasattr(cache.backing, "bind"):  # an embedding store: of this encoder and these curated images
        cache.backing.bind(predictor.loaded, store, predictor.vit_preprocess)
    groups, images = _targets(store, options, modalities)
    out = []
    for key, group in tqdm(groups, desc="targets", unit="target", disable=not progress):
        group = group.sort_values("slice")
        first = group.iloc[0]
        available = images[(first["dataset"], first["volume"], first["image_key"])]
        # the arrays span every slice with an image, so propagation can run past the ground truth
        z0 = min(min(available), int(group["slice"].min()))
        z1 = max(max(available), int(group["slice"].max()))
        gt = np.zeros((z1 - z0 + 1, 256, 256), dtype=bool)
        for _, r in group.iterrows():
            gt[int(r["slice"]) - z0] = store.load_mask(r)
        sources = {}
        for z, r in available.items():
            image = (lambda r=r: store.load_image(r))
            sources[z - z0] = SliceSource(image=image, embedding=(lambda r=r, image=image: cache.get(r["image_id"], image)))
        where = "/".join(str(k) for k in key)
        if prompts is not None:
            pinned = {z - z0: p for z, p in prompts.for_target(target_key(first)).items()}
            result = replay_volume(predictor, sources, gt, pinned, where=where)
        else:
            result = predict_volume(predictor, sources, gt, options.protocol, options.box_margin, options.box_jitter,
                                    target_rng(options.seed, key), where=where)
        pred = result["mask"]
        used = np.flatnonzero((gt | pred).any(axis=(1, 2)))
        lo, hi = int(used[0]), int(used[-1]) + 1
        gt, pred, boxes = gt[lo:hi], pred[lo:hi], {z - lo: b for z, b in result["boxes"].items()}
        points = {z - lo: p for z, p in result.get("points", {}).items()}
        z0 += lo
        meta = {k: first[k] for k in ("dataset", "case", "volume", "image_key", "target", "instance", "task",
                                      "modality", "stand_in", "synthetic", "n_slices", "split", "spacing_z",
                                      "curated_spacing_y", "curated_spacing_x", "spacing_known")}
        meta["pixels"] = int(group["pixels"].sum())
        meta["model"] = predictor.loaded.name
        out.append(PredictedTarget(meta=meta, gt=gt, pred=pred, z0=z0, boxes=boxes, row=first.to_dict(),
                                   points=points))
    return out


def _spacing(target: PredictedTarget, options: EvalOptions) -> tuple[float, ...]:
    """NSD spacing in array order. ``physical``: mm on the curated grid, except where the file
    carried no spacing (``spacing_known`` False: PNG/JPEG), where mm mean nothing and the curated
    pixel is the unit (tolerance 1 = one pixel at 256 x 256, as the released code's unit spacing)."""
    m = target.meta
    known = str(m.get("spacing_known", True)) in ("True", "true", "1")
    if options.nsd_spacing == "unit" or not known:
        return (1.0, 1.0, 1.0) if target.is_3d else (1.0, 1.0)
    plane = (float(m["curated_spacing_y"]), float(m["curated_spacing_x"]))
    return (float(m["spacing_z"]), *plane) if target.is_3d else plane


def score_target(target: PredictedTarget, options: EvalOptions, store=None, source_root=None) -> dict:
    gt, pred = target.gt, target.pred
    n_volume = None
    if options.slices == "volume" and target.is_3d:
        if source_root is None or store is None:
            raise MedSAMError("slices='volume' needs the source data the store was curated from (source_root)")
        from .sources import source_target_volume

        full = source_target_volume(store, target.row, source_root)
        full_pred = np.zeros_like(full)
        full_pred[target.z0:target.z0 + pred.shape[0]] = pred
        gt, pred = full, full_pred
        n_volume = int(full.any(axis=(1, 2)).sum())
    spacing = _spacing(target, options)
    if target.is_3d:
        values = metrics.score(pred, gt, spacing, options.tolerance_mm)
    else:
        values = metrics.score(pred[0], gt[0], spacing, options.tolerance_mm, options.nsd_2d)
    row = dict(target.meta)
    row.update(values)
    row.update(options.record())
    row.update(dimensionality="3D" if target.is_3d else "2D",
               n_slices=int(target.gt.any(axis=(1, 2)).sum()), n_slices_volume=n_volume,
               spacing_z=spacing[0] if target.is_3d else None, spacing_y=spacing[-2], spacing_x=spacing[-1])
    return row


def score_predictions(predictions: list[PredictedTarget], options: EvalOptions = EvalOptions(), store=None,
                      source_root=None):
    import pandas as pd

    rows = [score_target(t, options, store, source_root) for t in predictions]
    frame = pd.DataFrame(rows, columns=METRICS_COLUMNS)
    return frame.drop(columns=[c for c in ("curated_spacing_y", "curated_spacing_x") if c in frame])


def model_identity(model) -> dict:
    """The model's name and its weights' SHA-256 (a loaded model's own, computed at load)."""
    from ..models import zoo
    from ..models.predictor import BoxPredictor

    loaded = model.loaded if isinstance(model, BoxPredictor) else model
    if isinstance(loaded, zoo.LoadedModel):
        return {"model": loaded.name, "checkpoint_sha256": zoo.weights_sha256(loaded)}
    if not isinstance(loaded, (str, os.PathLike)):
        zoo.load_model(loaded)  # raises the clear error
    text = str(loaded)
    return {"model": text if text in zoo.MODELS else Path(text).name, "checkpoint_sha256": zoo.weights_sha256(text)}


def check_out_dir(out_dir: Path, identity: dict, overwrite: bool) -> None:
    """Refuse to mix models in one metrics folder (unless ``overwrite``)."""
    record = out_dir / "evaluation.json"
    if not record.is_file() or overwrite:
        if not record.is_file() and (out_dir / "metrics.csv").is_file() and not overwrite:
            raise MedSAMError(f"{out_dir / 'metrics.csv'}: metrics of an unknown model already there (no "
                              "evaluation.json); choose another --out or pass --overwrite")
        return
    try:
        previous = json.loads(record.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MedSAMError(f"{record}: unreadable ({exc}); choose another --out or pass --overwrite") from exc
    if previous.get("checkpoint_sha256") != identity["checkpoint_sha256"]:
        raise MedSAMError(f"{record}: this folder holds results of model {previous.get('model')!r} "
                          f"(sha256 {str(previous.get('checkpoint_sha256'))[:12]}), not {identity['model']!r}; "
                          "choose another --out or pass --overwrite")


def evaluate_store(store, model, out_dir=None, options: EvalOptions = EvalOptions(), embeddings=None, device=None,
                   source_root=None, overwrite: bool = False, progress: bool = True, cache=None, prompts=None):
    """Predict and score every target of the split; write ``metrics.csv``, ``evaluation.json``
    (options, model, store) and ``prompts.json`` (the prompts used, ``pinned``) atomically into
    ``out_dir`` when given. ``prompts``: a pinned prompts file (path or ``PinnedPrompts``) to replay;
    the rows' box options are then the file's. Returns the DataFrame."""
    from ..models.predictor import BoxPredictor

    store = _open_store(store)
    if prompts is not None and not isinstance(prompts, PinnedPrompts):
        prompts = read_prompts(prompts)
    if prompts is not None:
        options = prompts.replay_options(options)
    if not len(select(store.index, options.split)):
        raise MedSAMError(f"{store.path}: no targets in split {options.split!r} (splits present: "
                          f"{sorted(store.index['split'].unique())}); choose --split train or all")
    if prompts is not None:
        check_prompts(store, options, prompts)  # a file that does not match fails before any model work
    if out_dir is None:
        return score_predictions(predict_store(store, model, options, embeddings, device, progress, cache,
                                               prompts=prompts), options, store, source_root)
    from ..models.zoo import MODELS

    out_dir = Path(out_dir)
    model_path = None if not isinstance(model, (str, os.PathLike)) or str(model) in MODELS else model
    check_output_folder(out_dir, [("curated store", store.path), ("embedding store", getattr(embeddings, "path", None)),
                                  ("source root", source_root), ("model", model_path)])
    identity = model_identity(model)
    check_out_dir(out_dir, identity, overwrite)
    with output_folder(out_dir, "--out"):  # one writer per metrics folder; a failed run leaves no new folder
        check_out_dir(out_dir, identity, overwrite)  # again, now that no other run can write it
        predictor = model if isinstance(model, BoxPredictor) else BoxPredictor(model, device=device)
        predictions = predict_store(store, predictor, options, embeddings, device, progress, cache, prompts=prompts)
        frame = score_predictions(predictions, options, store, source_root)
        write_metrics(frame, out_dir, predictor, options, store, identity=identity, overwrite=True,
                      predictions=predictions, replayed=prompts)
    return frame


def write_metrics(frame, out_dir, model, options: EvalOptions, store, identity: dict | None = None,
                  overwrite: bool = False, predictions: list[PredictedTarget] | None = None,
                  replayed: PinnedPrompts | None = None) -> Path:
    """``metrics.csv`` and ``evaluation.json`` (model, its checksum, options, store), atomically; with
    the ``predictions`` the frame scores, also their prompts (``prompts.json``, ``pinned``: ``model``
    must then be the ``BoxPredictor`` that made them). ``replayed``: the prompts file they replayed."""
    out_dir = Path(out_dir)
    identity = identity or model_identity(model)
    check_out_dir(out_dir, identity, overwrite)
    if predictions is not None and not hasattr(model, "transform"):
        raise MedSAMError("write_metrics: writing the prompts (predictions=...) needs the BoxPredictor that made "
                          f"them as the model, got {type(model).__name__}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "metrics.csv") as tmp:
        frame.to_csv(tmp, index=False)
    record = {**identity, "options": options.record(), "store": str(store.path), "preset": store.preset,
              "targets": len(frame)}
    if predictions is not None:
        write_prompts(out_dir / PROMPTS_FILE, predictions, model.transform, options, store, identity, replayed)
        record["prompts"] = PROMPTS_FILE
    if replayed is not None:
        record["replayed_prompts"] = {"file": str(replayed.path), "sha256": replayed.sha256,
                                      "made_by": replayed.made_by}
    atomic_write_text(out_dir / "evaluation.json", json.dumps(record, indent=2))
    return out_dir / "metrics.csv"


def save_predictions(predictions: list[PredictedTarget], path, record: dict) -> Path:
    """All targets' masks (packed bits), boxes and metadata in one .npz, written atomically;
    ``record`` (model, options) is stored beside them so a reader can check what it loads."""
    arrays = {"record": np.frombuffer(json.dumps(record, default=str).encode(), dtype=np.uint8)}
    meta = []
    for i, t in enumerate(predictions):
        arrays[f"gt_{i}"], arrays[f"pred_{i}"] = np.packbits(t.gt), np.packbits(t.pred)
        meta.append({"meta": {k: (v.item() if hasattr(v, "item") else v) for k, v in t.meta.items()},
                     "shape": list(t.gt.shape), "z0": t.z0, "boxes": {str(z): list(map(float, b)) for z, b in t.boxes.items()},
                     "points": {str(z): [np.asarray(p, float).tolist(), np.asarray(l, int).tolist()]
                                for z, (p, l) in t.points.items()},
                     "row": {k: (v.item() if hasattr(v, "item") else v) for k, v in t.row.items()}})
    arrays["targets"] = np.frombuffer(json.dumps(meta, default=str).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    return Path(path)


def load_predictions(path, record: dict | None = None) -> list[PredictedTarget] | None:
    """What ``save_predictions`` wrote, or None when absent or made with another ``record``."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path) as npz:
        stored = json.loads(npz["record"].tobytes().decode())
        if record is not None and stored != json.loads(json.dumps(record, default=str)):
            return None
        out = []
        for i, t in enumerate(json.loads(npz["targets"].tobytes().decode())):
            n = int(np.prod(t["shape"]))
            gt = np.unpackbits(npz[f"gt_{i}"])[:n].reshape(t["shape"]).astype(bool)
            pred = np.unpackbits(npz[f"pred_{i}"])[:n].reshape(t["shape"]).astype(bool)
            boxes = {int(z): np.array(b) for z, b in t["boxes"].items()}
            points = {int(z): (np.array(p, dtype=np.float64).reshape(-1, 2), np.array(lab, dtype=np.int64))
                      for z, (p, lab) in t.get("points", {}).items()}
            out.append(PredictedTarget(meta=t["meta"], gt=gt, pred=pred, z0=int(t["z0"]), boxes=boxes, row=t["row"],
                                       points=points))
    return out
