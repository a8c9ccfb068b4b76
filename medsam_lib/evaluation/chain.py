"""What notebooks 05, 06 and 08 call: the profile's store, the base and fine-tuned models, predictions
made once and scored under each choice, the tables' captions, and a run's pinned prompts replayed.

The fine-tuned model is notebook 04's ``ResultsLayout(results_dir).training("decoder") / "best.pt"``
unless ``finetuned_model`` names another checkpoint. When it is absent the fine-tuned columns say
"not available" (with the reason) instead of failing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..layout import ResultsLayout, shown
from .inference import EmbeddingCache, same_encoder
from .metrics import dice
from .options import OFFICIAL_CODE, TEST_BOX_WORDS, TEST_BOXES, EvalOptions
from .run import PredictedTarget, predict_store, score_predictions, write_metrics
from .tables import MIN_CASES_TEST


@dataclass
class Models:
    base: object  # BoxPredictor
    finetuned: object | None
    finetuned_note: str
    caches: dict = field(default_factory=dict)  # id(predictor) -> EmbeddingCache

    def cache_for(self, predictor) -> EmbeddingCache:
        return self.caches[id(predictor)]

    @property
    def pairs(self):
        out = [("base", self.base)]
        if self.finetuned is not None:
            out.append(("finetuned", self.finetuned))
        return out


def default_finetuned(results_dir) -> Path:
    return ResultsLayout(results_dir).training("decoder") / "best.pt"


def open_embedding_store(results_dir, model, curated=None):
    """The profile's embedding store of ``model`` (notebooks 03/04 build it) when present and
    made from these weights and this curated store, else None (then images are encoded here).
    With ``curated`` it goes through ``build_store``: a finished store is reused as it is, damaged
    or missing chunks and changed images are recomputed (with a message); without, it is only read.
    Stored embeddings are float16: masks can differ from encoding on the fly in a few pixels."""
    name = getattr(model, "name", model)  # a LoadedModel or a zoo name / checkpoint path
    path = ResultsLayout(results_dir).embeddings(str(name))
    if not path.is_dir():
        return None
    try:
        from ..embeddings import build_store, open_store
        from ..embeddings.store import read_header
    except ImportError:
        return None
    try:
        if curated is None:
            return open_store(path, model=model)
        header = read_header(path)
        if header is None:
            return open_store(path)  # not a store: the error says so
        device = next(model.model.parameters()).device if hasattr(model, "model") else "auto"  # a LoadedModel stays put
        return build_store(curated, model, path, dtype=header["dtype"], device=device, progress=False)
    except Exception as exc:  # noqa: BLE001 - a store of other weights or images falls back to encoding, loudly
        print(f"embedding store {path} not used: {exc}")
        return None


def load_models(model: str, finetuned_model, results_dir, device=None, curated=None) -> Models:
    from ..models.predictor import BoxPredictor

    base = BoxPredictor(model, device=device)
    backing = open_embedding_store(results_dir, base.loaded, curated)
    caches = {id(base): EmbeddingCache(base, backing)}
    path = Path(finetuned_model) if finetuned_model else default_finetuned(results_dir)
    finetuned, note = None, ""
    if not path.is_file():
        note = (f"fine-tuned checkpoint {shown(path)} not found (notebook 04 writes it); "
                "the fine-tuned columns say 'not available'")
    else:
        finetuned = BoxPredictor(str(path), device=device)
        finetuned.loaded.name = f"{model} + fine-tuned decoder ({path.name})"
        if same_encoder(base.loaded, finetuned.loaded):
            caches[id(finetuned)] = caches[id(base)]  # decoder-only fine-tuning: one embedding per image
            note = f"fine-tuned: {shown(path)} (image encoder identical to the base model's; embeddings shared)"
        else:
            caches[id(finetuned)] = EmbeddingCache(finetuned)
            note = f"fine-tuned: {shown(path)} (its own image encoder)"
    return Models(base, finetuned, note, caches)


def choose_split(store, split: str) -> tuple[str, str]:
    """(split to score, note): a store with no test case at all (the demo phantoms: one case per
    data set, all in train) is scored on ``all`` with a note saying so."""
    if split != "all" and not (store.index["split"] == split).any():
        return "all", (f"this store has no '{split}' case (every case is in "
                       f"{sorted(store.index['split'].unique())}); scored on all cases: NOT a held-out evaluation")
    return split, ""


def predict_both(store, models: Models, options: EvalOptions, progress: bool = True) -> dict:
    return {name: predict_store(store, p, options, progress=progress, cache=models.cache_for(p))
            for name, p in models.pairs}


def score_and_write(store, models: Models, predictions: dict, options: EvalOptions, results_dir,
                    source_root=None) -> dict:
    """Score each model's predictions; write each ``metrics.csv`` (and the prompts used, ``prompts.json``)
    under ``layout.evaluation(<model>[_finetuned]<options.tag>)`` (one folder per test-box protocol)."""
    layout = ResultsLayout(results_dir)
    frames = {}
    for name, predictor in models.pairs:
        frame = score_predictions(predictions[name], options, store, source_root)
        slug = models.base.loaded.name if name == "base" else f"{models.base.loaded.name}_finetuned"
        write_metrics(frame, layout.evaluation(slug + options.tag), predictor, options, store, overwrite=True,
                      predictions=predictions[name])
        frames[name] = frame
    return frames


def slab_frames(predictions: dict, options: EvalOptions, store=None) -> dict:
    """Each model's 2D targets scored again with ``nsd_2d="unit_axis"`` (the one-slice slab of the
    released LiteMedSAM evaluation, the way the paper's 2D NSD was most likely computed): the same
    predictions, only the NSD definition changes. {model name: metrics frame}."""
    slab = options.with_(nsd_2d="unit_axis")
    return {name: score_predictions([t for t in preds if not t.is_3d], slab, store)
            for name, preds in predictions.items()}


DATA_WORDS = {"shared_data": "real cases of ../shared/data", "cohorts": "real cohorts of ../shared/cohorts"}


def _data_words(store, synthetic: bool) -> str:
    if synthetic:
        return "SYNTHETIC phantoms"
    manifests = sorted(store.info.get("manifests", {}))
    return "; ".join(DATA_WORDS.get(m, f"real cases (manifest {m})") for m in manifests) or "real cases"


def caption(table: int, profile: str, store, models: Models, options: EvalOptions, split_note: str,
            slab_nsd: bool = True) -> str:
    """Table 1's or 2's caption. ``slab_nsd``: Table 2 shows the slab NSD columns (``task_rows(slab=...)``)."""
    index = store.index
    synthetic = index["synthetic"].astype(str).eq("True").any()
    base = models.base.loaded.name
    ft = models.finetuned.loaded.name if models.finetuned is not None else "not available"
    kind = "3D" if table == 1 else "2D"
    paper_here = _paper_tasks_in(index, table)
    spacing = (f"NSD at {options.tolerance_mm:g} mm on the curated 256 x 256 grid's physical spacing "
               "(1 curated pixel where the file carried no spacing: 2D PNG/JPEG)"
               if options.nsd_spacing == "physical" else f"NSD at {options.tolerance_mm:g} voxel (spacing 1,1,1)")
    what = (f"{kind} tasks of the paper" if paper_here else
            f"no {kind} task of the paper in this profile's data: only its other {kind} targets, marked *")
    parts = [f"Table {table} ({what}), profile '{profile}', test boxes '{options.test_boxes}': DSC and NSD (%), "
             f"mean over {options.split} cases (images or volumes) [95% CI, bootstrap resampling whole groups: "
             "the split unit, e.g. a patient, an acquisition's frames, a child's two eyes], paired Wilcoxon p base vs "
             f"fine-tuned over group means (>= {MIN_CASES_TEST} groups).",
             f"Models: base {base}; fine-tuned {ft}.",
             f"Data: {_data_words(store, synthetic)} curated with preset "
             f"'{store.preset}'; † = stand-in data (not the paper's data set for that task); * = a target that is "
             "no paper task (listed only where it has test cases).",
             f"Boxes: protocol '{options.protocol}', test boxes '{options.test_boxes}' "
             f"({TEST_BOX_WORDS.get(options.test_boxes, 'a custom margin / jitter')}): margin {options.box_margin:g} px, "
             f"jitter 0-{options.box_jitter} px per side (both ends included; seed {options.seed}, per target) at "
             f"256 x 256. {spacing}; GT slices counted: {options.slices}; 2D NSD: {options.nsd_2d}.",
             "Paper columns: published SAM / MedSAM values (ViT-B, the paper's test sets), not recomputed here; "
             "ours-MedSAM = fine-tuned (base where no fine-tuned model) minus published MedSAM"
             + ("; for NSD the slab reading (NSD slab ours-MedSAM)." if table == 2 and slab_nsd else "."),
             "Cases (groups): test images or volumes, and the groups they come from."]
    if table == 2 and slab_nsd:
        parts.append("2D NSD, two readings: 'NSD' is the true 2D contour NSD; 'NSD slab' scores each 2D mask as a "
                     "one-slice 3D slab (nsd_2d='unit_axis', the released LiteMedSAM evaluation), whose faces count as "
                     "surface; the paper's published 2D NSD was most likely computed that way, so compare the paper's "
                     "NSD with 'NSD slab', not with 'NSD'.")
    if split_note:
        parts.append(f"Note: {split_note}.")
    return " ".join(parts)


def _paper_tasks_in(index, table: int) -> bool:
    """Whether the store holds a paper task of ``table`` (1: 3D, 2: 2D)."""
    from .tables import paper_table_of

    tasks = {t for t in index["task"].astype(str) if t}
    return any(paper_table_of(t) == table for t in tasks)


def _averages(frame, table_of) -> dict:
    from .tables import per_case

    out = {}
    if not len(frame):
        return out
    cases = per_case(frame).reset_index()
    task_means = cases.groupby("task_label")[["dsc", "nsd"]].mean() * 100
    dims = frame.assign(task_label=[t if t else f"{tg} ({m})" for t, tg, m in
                                    zip(frame["task"], frame["target"], frame["modality"])])
    dims = dims.groupby("task_label")["dimensionality"].first()
    for table in (1, 2):
        labels = [t for t in task_means.index if table_of(t, dims[t]) == table]
        for metric in ("dsc", "nsd"):
            out[f"T{table} {metric.upper()}"] = float(task_means.loc[labels, metric].mean()) if labels else math.nan
    return out


def choice_effects(store, models: Models, predictions: dict, options: EvalOptions, source_root=None,
                   official_store=None, official_predictions: dict | None = None, progress: bool = False):
    """How each paper-vs-code choice moves the table averages (mean over task labels of each
    table, %), one choice changed at a time from ``options``. ``official_store``: the same data
    curated with preset ``official_code`` (CT window [-160, 240], MR percentiles of voxels > 0,
    small objects removed at native size), its CT targets predicted with the same models and boxes
    (``official_predictions`` when already made, e.g. by ``predictions(ctx, store=official_store,
    modalities=("CT",))``); the row replaces the CT targets' values and keeps every other target's."""
    import pandas as pd

    from .tables import PAPER_TASKS, paper_table_of

    def table_of(label, dim):
        return paper_table_of(label if label in PAPER_TASKS else "", dim)

    variants = [("paper defaults", "-", options)]
    for name, value in OFFICIAL_CODE.items():
        if name == "slices" and source_root is None:
            continue
        variants.append((name, value, options.with_(**{name: value})))
    rows = []
    for choice, value, opts in variants:
        for name, _ in models.pairs:
            frame = score_predictions(predictions[name], opts, store, source_root)
            rows.append({"choice": choice, "setting": value, "model": name, **_averages(frame, table_of)})
    if official_store is not None:
        for name, predictor in models.pairs:
            preds = official_predictions[name] if official_predictions is not None else predict_store(
                official_store, predictor, options, progress=progress, cache=EmbeddingCache(predictor),
                modalities=("CT",))
            default = score_predictions(predictions[name], options, store)
            frame = pd.concat([default[default["modality"] != "CT"], score_predictions(preds, options, official_store)],
                              ignore_index=True)
            rows.append({"choice": "CT window", "setting": "[-160, 240] (official_code preset)", "model": name,
                         **_averages(frame, table_of)})
    frame = pd.DataFrame(rows)
    value_cols = [c for c in frame.columns if c.startswith("T")]
    reference = frame[frame["choice"] == "paper defaults"].set_index("model")[value_cols]
    for col in value_cols:
        frame[f"{col} change"] = [r[col] - reference.loc[r["model"], col] for _, r in frame.iterrows()]
    return frame


def predictions_frame(predictions: list[PredictedTarget]):
    """One row per target with its arrays' positions (for the failure figures)."""
    import pandas as pd

    return pd.DataFrame([{**t.meta, "position": i} for i, t in enumerate(predictions)])


def worst_slice(target: PredictedTarget) -> int:
    """The slice (array index) with the lowest per-slice DSC among those with ground truth."""
    best, worst = None, 2.0
    for z in range(target.gt.shape[0]):
        g, p = target.gt[z], target.pred[z]
        if not g.any():
            continue
        d = dice(p, g)
        if d < worst:
            best, worst = z, d
    return best if best is not None else 0


@dataclass
class Context:
    """Everything notebooks 05 and 06 share for one profile."""

    store: object
    models: Models
    options: EvalOptions
    split_note: str
    source_root: Path | None
    profile: object  # medsam_lib.profile.Profile

    @property
    def results_dir(self) -> Path:
        return self.profile.results_dir


def prepare(profile, finetuned_model=None, split: str = "test", protocol: str = "gt", box_margin: float = 0,
            box_jitter: int = 0) -> Context:
    """Open (curating if needed: idempotent) the profile's paper-preset store and load both models.
    ``profile`` is a ``medsam_lib.profile.Profile``: data, results folder, model, seed and device."""
    from ..data.curate import curate_profile

    store = curate_profile(profile)
    models = load_models(profile.model, finetuned_model or None, profile.results_dir, profile.device, store)
    used_split, note = choose_split(store, split)
    options = EvalOptions(protocol=protocol, box_margin=box_margin, box_jitter=box_jitter, seed=profile.seed,
                          split=used_split)
    root = profile.data_root
    return Context(store, models, options, note, root if root.is_dir() else None, profile)


def predictions(ctx: Context, progress: bool = True, store=None, tag: str = "",
                modalities: tuple[str, ...] | None = None, options: EvalOptions | None = None) -> dict:
    """Each model's predictions on the split (of ``store``, default the paper-preset store) under
    ``options`` (default ``ctx.options``), reused from
    ``layout.evaluation(<model>[_finetuned]<options.tag><tag>)/predictions.npz`` when the same model
    (checksum), store index and options made them. Images are encoded once per session and model
    (``ctx.models``' embedding caches), whatever the options."""
    from .run import load_predictions, model_identity, save_predictions

    store = store if store is not None else ctx.store
    options = options if options is not None else ctx.options
    layout = ResultsLayout(ctx.results_dir)
    out = {}
    for name, predictor in ctx.models.pairs:
        record = {**model_identity(predictor), "options": options.record(), "index_sha256": _index_hash(store),
                  "modalities": list(modalities) if modalities else None}
        where = layout.evaluation(_slug(ctx, name) + options.tag + tag) / "predictions.npz"
        found = load_predictions(where, record)
        if found is None:
            cache = ctx.models.cache_for(predictor) if store is ctx.store else EmbeddingCache(predictor)
            found = predict_store(store, predictor, options, progress=progress, cache=cache, modalities=modalities)
            where.parent.mkdir(parents=True, exist_ok=True)
            save_predictions(found, where, record)
        out[name] = found
    return out


@dataclass
class BoxRun:
    """One test-box protocol's results: its options, predictions, metrics frames (``score_and_write``),
    the 2D targets rescored as slabs (``slab_frames``) and the long table (``tables.task_rows``)."""

    options: EvalOptions
    predictions: dict
    frames: dict
    slab: dict
    long: object  # pandas DataFrame
    captions: dict


def run_test_boxes(ctx: Context, names=tuple(TEST_BOXES), progress: bool = True) -> dict:
    """Predict, score and tabulate under each named test-box protocol (``options.TEST_BOXES``), the
    other options as ``ctx.options``; each image is encoded once for all of them (shared embedding
    cache), predictions are reused from disk per protocol. {name: BoxRun}; nothing written but
    each model's metrics.csv / predictions.npz (``tables.write_tables`` writes the tables)."""
    from .tables import task_rows

    out = {}
    for name in names:
        options = ctx.options.with_(test_boxes=name)
        preds = predictions(ctx, progress=progress, options=options)
        frames = score_and_write(ctx.store, ctx.models, preds, options, ctx.results_dir, ctx.source_root)
        slab = slab_frames(preds, options, ctx.store)
        long = task_rows(ctx.store.index, frames["base"], frames.get("finetuned"), options.split, ctx.profile.seed,
                         slab=slab, test_boxes=name)
        captions = {t: caption(t, ctx.profile.name, ctx.store, ctx.models, options, ctx.split_note) for t in (1, 2)}
        out[name] = BoxRun(options, preds, frames, slab, long, captions)
    return out


def _slug(ctx: Context, name: str) -> str:
    base = ctx.models.base.loaded.name
    return base if name == "base" else f"{base}_finetuned"


def _index_hash(store) -> str:
    from ..fileio import sha256_file

    return sha256_file(Path(store.path) / "index.csv")


def pin_and_replay(ctx: Context, options: EvalOptions, progress: bool = False):
    """Pinned prompts shown, not claimed (notebook 08): each model's predictions under ``options`` (reused as
    ``predictions`` reuses them) scored and written with the prompts they used to
    ``layout.evaluation("pinned_<model slug>")`` (``metrics.csv``, ``prompts.json``); then that prompts file
    replayed (``evaluate_store(prompts=...)``: its boxes, not boxes from the ground truth) and scored again.
    One row per model: targets, prompted slices, the file, whether the replay's metrics equal the run's (every
    column, exactly), the largest |DSC| and |NSD| difference per target, and whether the file's boxes are the
    base model's file's (both models saw the same boxes)."""
    import json

    import pandas as pd

    from .inference import TARGET_KEY
    from .pinned import PROMPTS_FILE
    from .run import evaluate_store

    layout = ResultsLayout(ctx.results_dir)
    made = predictions(ctx, progress=progress, options=options)
    rows, boxes = [], {}
    for name, predictor in ctx.models.pairs:
        frame = score_predictions(made[name], options, ctx.store)
        folder = layout.evaluation("pinned_" + _slug(ctx, name))
        write_metrics(frame, folder, predictor, options, ctx.store, overwrite=True, predictions=made[name])
        path = folder / PROMPTS_FILE
        boxes[name] = json.loads(path.read_text(encoding="utf-8"))["targets"]
        replayed = evaluate_store(ctx.store, predictor, None, options, progress=progress,
                                  cache=ctx.models.cache_for(predictor), prompts=path)
        try:
            pd.testing.assert_frame_equal(frame, replayed, check_exact=True)
            identical = True
        except AssertionError:
            identical = False
        both = frame.merge(replayed, on=TARGET_KEY, suffixes=("", "_replay"), how="outer")
        rows.append({"model": name, "targets": len(frame),
                     "prompted slices": sum(len(t["slices"]) for t in boxes[name]),
                     "prompts file": shown(path),
                     "replay identical": identical, "rows replayed": len(replayed),
                     "max |dDSC|": float((both["dsc"] - both["dsc_replay"]).abs().max()),
                     "max |dNSD|": float((both["nsd"] - both["nsd_replay"]).abs().max()),
                     "same boxes as base": boxes[name] == boxes["base"]})
    return pd.DataFrame(rows)
