"""Curation (paper 3.1-3.2): a manifest's cases -> 256 x 256 slices and binary targets on disk.

``curate(manifest, out, preset="paper")`` writes a *curated store*:

    out/curation.json                 preset, image size, seed, manifests and their cases
    out/cases/<data set>/<case>.npz   one file per case (a zip of .npy members, see below)
    out/index.csv                     one row per (image key, slice, target): the table below

Each case file is written in one atomic step (temporary file, then rename), so an interrupted run
leaves either the whole case or nothing; a rerun skips every case whose file already holds the
same inputs (same files by size and time, same data-set definition, same preset) and resumes.

Per case, 3D volumes are read once (image volumes one at a time), windowed once (the preset's
window over the whole volume) and then streamed slice by slice along the first array axis (the
out-of-plane axis, paper 3.2): only slices that keep a target are normalised, resized and
written. 2D images are treated as volumes of one slice.

Targets: each manifest target gives one binary mask per slice (several label values merged);
``instance`` targets give one per connected object (26-connected in 3D, 8-connected in 2D). A
target covering fewer than 100 pixels at 256 x 256 is dropped (paper 3.2; ``official_code``
instead removes small objects at native size, see ``preprocess.remove_small_objects``).

Split (paper 3.2): per data set, a seeded 80/20 train/test split by case (``splits.split_cases``),
or the train/validation/test fractions the manifest's ``split`` gives (``splits.split_groups``).

The store's format (index columns, case-file members) and its reader, ``CuratedDataset``, live in
``medsam_lib.data.store``: training and evaluation import the reader only.

The run is this module; one case is written by ``case_writer.curate_case``; the steps that make
finished case files the store (staging, commit order, ``build_index``) are in ``store_commit``.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import MedSAMError
from ..locks import output_folder
from .case_writer import IMAGE_SIZE, STORE_VERSION, case_done, case_key, curate_case, fingerprint
from .manifests import Manifest, load_manifest, resolve_cases, resolve_root, safe_name
from .preprocess import check_preset
from .splits import check_seed
from .store import PENDING, CuratedDataset, _load_store_info, curated_dir
from .store_commit import check_out, finish, remove_stale_temporaries, tidy_after_failure


@dataclass
class CurationReport:
    """What one ``curate`` call did."""

    out: Path
    preset: str
    curated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    slices: int = 0
    dropped_small: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        text = (f"{len(self.curated)} case(s) curated, {len(self.skipped)} already done, {len(self.failed)} failed; "
                f"{self.rows} index rows in {self.out}")
        for case, error in self.failed.items():
            text += f"\n  failed {case}: {error}"
        return text


def curate(manifest: Manifest | str | os.PathLike, out: str | os.PathLike, preset: str = "paper",
           root: str | os.PathLike | None = None, seed: int = 0, datasets: list[str] | None = None,
           keep_going: bool = False, progress: bool = True) -> CurationReport:
    """Curate every case of ``manifest`` (or of the named ``datasets``) into the store at ``out``.

    Resumable and idempotent (finished cases are skipped). On a bad case: MedSAMError naming it, or
    with ``keep_going`` it is reported and the rest continue.

    What a failure leaves: the store's description (``curation.json``), splits and ``index.csv``
    are written only once every case has succeeded (or been reported, with ``keep_going``). In an
    existing store the run's case files are written under ``.pending/`` and moved in only then, so
    after a failure the store is exactly as it was. Finished case files stay (``.pending/`` or, in a
    new store, ``cases/``), so a rerun resumes; a new store's folder is removed if no case finished. A folder without
    ``curation.json`` (a failed or killed first run) is reported by ``CuratedDataset`` as
    incomplete, with the command that finishes it.
    """
    start = time.perf_counter()
    check_preset(preset)
    seed = check_seed(seed)  # every option is checked before anything is staged or written
    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    out = Path(out)
    data_root = resolve_root(manifest, root)
    chosen = [manifest.dataset(n) for n in datasets] if datasets else list(manifest.datasets)
    resolved = {ds.name: resolve_cases(ds, data_root) for ds in chosen}  # fails early on missing files
    check_out(out, manifest, data_root, resolved)

    with output_folder(out, "--out"):  # one writer per store; a new store's folder goes if nothing finished
        report = _curate_locked(manifest, out, preset, seed, chosen, resolved, data_root, keep_going, progress)
    report.seconds = time.perf_counter() - start
    return report


def _curate_locked(manifest: Manifest, out: Path, preset: str, seed: int, chosen: list, resolved: dict,
                   data_root: Path, keep_going: bool, progress: bool) -> CurationReport:
    """The run, holding the store's lock: the store is read, and changed, by this process only."""
    from tqdm.auto import tqdm

    old = _load_store_info(out) if out.is_dir() else None
    info = copy.deepcopy(old) if old else {"store_version": STORE_VERSION, "preset": preset, "image_size": IMAGE_SIZE,
                                           "manifests": {}}
    if info.get("image_size") != IMAGE_SIZE:
        raise MedSAMError(f"{out}: store of {info.get('image_size')}-pixel images, not {IMAGE_SIZE}; "
                          "curate into a new folder")
    info["store_version"] = STORE_VERSION  # cases of an older version do not match their key: redone
    if info["preset"] != preset:
        raise MedSAMError(f"{out}: this store was curated with preset {info['preset']!r}, not {preset!r}; "
                          "curate into another folder (one store per preset)")
    info["seed"] = int(seed)
    entry = info["manifests"].setdefault(manifest.name, {"datasets": {}})
    entry.update({"sha256": manifest.sha256, "synthetic": manifest.synthetic})
    entry.pop("split", None)  # the manifest's own split fractions, when it has them (splits.split_groups)
    if manifest.split:
        entry["split"] = manifest.split
    for ds in chosen:
        entry["datasets"][ds.name] = {
            "cases": {c.volume: {"case": c.case, "file": f"cases/{ds.name}/{safe_name(c.volume)}.npz"}
                      for c in resolved[ds.name]}}
    folders_before = {p for p in out.rglob("*") if p.is_dir()}
    remove_stale_temporaries(out)

    report = CurationReport(out=out, preset=preset)
    jobs = [(ds, c) for ds in chosen for c in resolved[ds.name]]
    staged: list[str] = []  # this run's case files under .pending/, moved in by store_commit.finish
    try:
        for ds, case in tqdm(jobs, desc=f"curating {manifest.name} ({preset})", unit="case", disable=not progress):
            label = f"{ds.name}/{case.volume}"
            rel = f"cases/{ds.name}/{safe_name(case.volume)}.npz"
            files = [data_root / p for p in list(case.images.values()) + list(case.masks.values())]
            key = case_key(ds, case, preset, {str(p.relative_to(data_root)): fingerprint(p) for p in files})
            if case_done(out / rel, key) or case_done(out / PENDING / rel, key):
                report.skipped.append(label)
                if (out / PENDING / rel).is_file() and not case_done(out / rel, key):
                    staged.append(rel)  # finished by an earlier, failed or killed, run
                continue
            out_file = out / PENDING / rel if old else out / rel  # an existing store changes only at the end
            out_file.parent.mkdir(parents=True, exist_ok=True)
            try:
                stats = curate_case(ds, case, data_root, out_file, preset, manifest.synthetic, key)
            except Exception as exc:  # noqa: BLE001 - every failure names its case; KeyboardInterrupt passes
                error = exc if isinstance(exc, MedSAMError) else MedSAMError(
                    f"{label}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
                if not str(error).startswith(label):
                    error = MedSAMError(f"{label}: {error}")
                if not keep_going:
                    raise error from exc
                report.failed[label] = str(error)
                continue
            if old:
                staged.append(rel)
            report.curated.append(label)
            report.dropped_small += stats["dropped_small"]
    except Exception:
        tidy_after_failure(out, folders_before)  # a new store's folder: output_folder
        raise
    index = finish(out, info, staged)
    report.rows = len(index)
    report.slices = int(index[["image_id"]].drop_duplicates().shape[0]) if len(index) else 0
    return report


# --- the notebooks' entry point -------------------------------------------------------------------

def curate_profile(profile, preset: str = "paper", progress: bool = False) -> CuratedDataset:
    """Curate a profile's data (a ``medsam_lib.profile.Profile``) into its results folder and open the store.

    ``data_source="synthetic"``: the phantom set written (idempotently) to the results layout's
    ``synthetic_data`` folder with manifest ``synthetic``; ``"shared"``: the real cases of
    ``../shared/data`` with manifest ``shared_data``; ``"cohorts"``: ``../shared/cohorts`` with manifest
    ``cohorts``. Reruns reuse finished cases.
    """
    if profile.synthetic:
        from .phantoms import write_synthetic_set

        write_synthetic_set(profile.layout.synthetic_data, profile.seed)
    out = curated_dir(profile.results_dir, preset)
    curate(profile.manifest, out, preset=preset, root=profile.data_root, seed=profile.seed, progress=progress)
    return CuratedDataset(out)
