"""Finishing a curation run: the steps that turn finished case files into the store.

A run checks its output folder first (``check_out``: no file in the way, no store written over an
input) and clears stale temporaries. In an existing store it writes its case files under
``.pending/``; ``finish`` then stages the new description (``.curation.next.json``, whose presence
marks the store incomplete), moves the pending files in, rebuilds ``index.csv`` (``build_index``)
and records it in the description (``write_index``), and only last renames the description to
``curation.json``, so a kill at any point leaves the store
readable or clearly incomplete. ``tidy_after_failure`` removes the empty folders a failed run made.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..fileio import MedSAMError, atomic_path, atomic_write_text, check_output_folder
from .manifests import Manifest
from .splits import split_cases, split_groups
from .store import INDEX_COLUMNS, NEXT_INFO, PENDING, _load_store_info, index_record, read_json_member


def remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files a killed run left (its finished case files stay)."""
    for folder in (out / "cases", out / PENDING):
        for tmp in folder.rglob(".*.part*"):
            tmp.unlink(missing_ok=True)


def check_out(out: Path, manifest: Manifest, data_root: Path, resolved: dict) -> None:
    """Refuse an output folder that is not one: a file in the way, a folder holding other things, or
    one whose store files would land on an input."""
    if out.exists() and not out.is_dir():
        raise MedSAMError(f"--out {out}: a file is in the way; give a folder (new, empty, or a curated store)")
    if out.is_dir() and not (out / "curation.json").exists():
        other = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name != "cases")
        if other:
            raise MedSAMError(f"--out {out}: the folder holds other files ({', '.join(other[:5])}) and is not a curated "
                              "store; give a new or empty folder")
    cases = [data_root / p for ds in resolved.values() for c in ds for p in list(c.images.values()) + list(c.masks.values())]
    inputs = [(item, item.resolve()) for item in cases]  # each resolved once: data sets have thousands of files
    root, target = data_root.resolve(), out.resolve()
    # the one output-folder rule (as embed, train and evaluate use): the store neither is, lies inside, nor holds
    # the data root or a folder below it that case files are read from. Elsewhere inside the data root is allowed
    # (a manifest beside its cases with root "." and the store beside them is a common layout)
    parents = {real.parent for _, real in inputs} - {root}
    check_output_folder(out, [("folder of input files", f) for f in sorted(parents)]
                        + ([] if root in target.parents else [("data root", data_root)]))
    if manifest.path is not None:
        inputs.append((Path(manifest.path), Path(manifest.path).resolve()))
    written = {target / n for n in ("curation.json", "index.csv", NEXT_INFO)}
    folders = (target / "cases", target / PENDING)
    for item, real in inputs:
        if (real == target or real in written or any(f == real or f in real.parents for f in folders)
                or (real.is_dir() and real in target.parents)):
            raise MedSAMError(f"--out {out}: the store would be written over or into the input {item}; "
                              "choose another folder")


def tidy_after_failure(out: Path, folders_before: set) -> None:
    """Remove the empty folders a failed run made (the store folder itself: ``locks.output_folder``)."""
    made = [p for p in out.rglob("*") if p.is_dir() and p not in folders_before]
    for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def finish(out: Path, info: dict, staged: list[str]):
    """Make the finished run the store, in an order that a kill at any point leaves readable or
    clearly incomplete: the new description is staged (its presence marks the store incomplete),
    pending case files move in, the index is rebuilt from the new description, and only then the
    description becomes ``curation.json``."""
    atomic_write_text(out / NEXT_INFO, json.dumps(info, indent=2))
    pending = out / PENDING
    for rel in staged:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(pending / rel, out / rel)
    if pending.is_dir() and not any(p.is_file() for p in pending.rglob("*")):
        shutil.rmtree(pending, ignore_errors=True)
    (out / "cases").mkdir(exist_ok=True)
    index = build_index(out, info)  # records the index in info
    atomic_write_text(out / NEXT_INFO, json.dumps(info, indent=2))
    os.replace(out / NEXT_INFO, out / "curation.json")
    return index


def build_index(out: str | os.PathLike, info: dict | None = None):
    """Rebuild ``index.csv`` from the case files the store's manifests list (splits from the seed, and
    the manifest's split fractions where it gives them).

    ``info``: the store description to index (default: ``curation.json``)."""
    import pandas as pd

    out = Path(out)
    info = info if info is not None else _load_store_info(out)
    if info is None:
        raise MedSAMError(f"{out}: not a curated store (no curation.json); run `data curate` first")
    rows = []
    for entry in info["manifests"].values():
        for ds_name, ds in entry["datasets"].items():
            groups, seed = [c["case"] for c in ds["cases"].values()], info.get("seed", 0)
            splits = (split_groups(groups, seed, ds_name, entry["split"]) if entry.get("split")
                      else split_cases(groups, seed, ds_name))
            for volume, c in ds["cases"].items():
                path = out / c["file"]
                if not path.is_file():
                    continue
                with np.load(path) as npz:
                    case_rows = read_json_member(npz, "rows")
                for row in case_rows:
                    row["split"] = splits[c["case"]]
                    row["file"] = c["file"]
                rows.extend(case_rows)
    frame = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    return write_index(out, frame, info)


def write_index(out: str | os.PathLike, frame, info: dict | None = None):
    """Write ``frame`` as the store's ``index.csv`` (atomically) and record it as the committed index
    (``store.check_index``): in ``info`` when given (the caller writes the description), else in
    ``curation.json``. The way to cut a store down to a subset of its rows."""
    out = Path(out)
    data = frame.to_csv(index=False).encode()
    with atomic_path(out / "index.csv") as tmp:
        Path(tmp).write_bytes(data)
    if info is not None:
        info["index"] = index_record(data, len(frame))
    else:
        described = _load_store_info(out)
        if described is None:
            raise MedSAMError(f"{out}: not a curated store (no curation.json); run `data curate` first")
        described["index"] = index_record(data, len(frame))
        atomic_write_text(out / "curation.json", json.dumps(described, indent=2))
    return frame
