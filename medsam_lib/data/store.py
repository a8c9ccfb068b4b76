"""The curated store's format and its reader: what training, embedding and evaluation import.

A curated store (written by ``medsam_lib.data.curate``) is a folder:

    curation.json                 preset, image size, seed, manifests and their cases
    cases/<data set>/<case>.npz   one file per case (a zip of .npy members, see below)
    index.csv                     one row per (image key, slice, target): the columns below

Index columns: dataset, case, volume, image_key, modality, task (paper task or ""), stand_in,
synthetic, slice, n_slices, target, labels ("1;2"), instance (0 = whole target), split, x0, y0,
x1, y1 (box at 256 x 256 in the project's box convention, ``medsam_lib.geometry``), pixels (at
256 x 256), height, width (native), spacing_z, spacing_y, spacing_x (native mm; 1.0 where unknown),
spacing_known, curated_spacing_y, curated_spacing_x (mm per pixel at 256 x 256), image_sha256,
mask_sha256, file, image_member, mask_member, image_id.

Case file members: ``image_<key>_<slice>`` (256, 256) or (256, 256, 3) uint8;
``labels_<mask key>_<slice>`` the slice's label map resized to 256 x 256 (nearest), stored once and
shared by every target on it (a target's mask = the pixels holding one of its ``labels``);
``instances_<target>_<slice>`` the connected-object numbers of an instance target (mask = pixels
equal to the row's ``instance``); ``sample_raw_<key>`` / ``sample_norm_<key>`` intensity samples;
``rows`` and ``meta`` (JSON). ``CuratedDataset`` hides all of this behind ``load(row)``.

What the reader trusts (``check_index``, on open). ``curation.json`` records the SHA-256 and row
count of the ``index.csv`` the curation committed (``"index"``); an index that differs (a row
removed or edited by hand) is refused, so nothing is evaluated or trained on part of a store without
a word. A deliberate subset is written with ``store_commit.write_index``, which records the new
index. Stores curated before the record existed are read without this check. Every row's ``file``
must be a relative path under ``cases/`` (no ``..``, not absolute): nothing is read from outside.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections import OrderedDict
from pathlib import Path, PurePosixPath

import numpy as np

from ..fileio import MedSAMError
from .preprocess import check_preset

INDEX_COLUMNS = (
    "dataset", "case", "volume", "image_key", "modality", "task", "stand_in", "synthetic", "slice", "n_slices",
    "target", "labels", "instance", "split", "x0", "y0", "x1", "y1", "pixels", "height", "width",
    "spacing_z", "spacing_y", "spacing_x", "spacing_known", "curated_spacing_y", "curated_spacing_x",
    "image_sha256", "mask_sha256", "file", "image_member", "mask_member", "image_id")
PENDING = ".pending"  # replacement case files of a run in progress (moved in when it succeeds)
NEXT_INFO = ".curation.next.json"  # the new description while a run finishes; present = store incomplete
_STRING_COLUMNS = {c: str for c in ("dataset", "case", "volume", "image_key", "modality", "task", "target",
                                    "labels", "split", "image_sha256", "mask_sha256", "file", "image_member",
                                    "mask_member", "image_id")}


def _load_store_info(out: Path) -> dict | None:
    path = out / "curation.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise MedSAMError(f"{path}: corrupt store description ({exc}); move the folder aside and curate again") from exc
    if not isinstance(info, dict) or not isinstance(info.get("manifests"), dict) or "preset" not in info:
        raise MedSAMError(f"{path}: not a curated store description; move the folder aside and curate again")
    return info


def read_json_member(npz, name: str):
    """A JSON member of a case file (``rows``, ``meta``), stored as UTF-8 bytes."""
    return json.loads(bytes(npz[name]).decode())


def read_index(path: str | os.PathLike):
    """``index.csv`` as a DataFrame with string ids kept as strings and empty tasks as ""."""
    import pandas as pd

    frame = pd.read_csv(path, dtype=_STRING_COLUMNS, keep_default_na=False, na_values={"spacing_z": [""]})
    return frame


def index_record(data: bytes, rows: int) -> dict:
    """What ``curation.json`` records of a committed ``index.csv`` (its bytes and row count)."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "rows": int(rows)}


def check_index(path: Path, info: dict, index, sha256: str) -> None:
    """The store's index is the one its curation committed, and reads only the store's own case files."""
    cases = Path(os.path.realpath(path / "cases"))  # the folder itself may be a link (a store sharing cases)
    files = index["file"].drop_duplicates() if "file" in index else ()
    for row, file in (zip(files.index, files) if len(files) else ()):
        parts = PurePosixPath(str(file)).parts
        if not parts or parts[0] != "cases" or ".." in parts or "\\" in str(file) or os.path.isabs(str(file)):
            raise MedSAMError(f"{path / 'index.csv'}: a row's file {str(file)!r} is not inside the store's cases/ "
                              "folder; refusing to read outside the store (curate again to rebuild the index)")
        real = Path(os.path.realpath(path / str(file)))  # a link inside cases/ may point anywhere
        if cases not in real.parents:
            raise MedSAMError(f"{path / 'index.csv'} row {index.index.get_loc(row) + 1}: file {str(file)!r} resolves "
                              f"outside the store (to {real}) through a symbolic link; refusing to read it (remove the "
                              "link and curate again)")
    recorded = info.get("index")
    if isinstance(recorded, dict) and recorded.get("sha256") not in (None, sha256):
        raise MedSAMError(f"{path / 'index.csv'}: not the index this store's curation committed ({len(index)} rows "
                          f"now, {recorded.get('rows')} committed; SHA-256 differs): it was edited. Run `python -m "
                          "medsam_lib data curate` again with the store's manifests to rebuild it (finished cases are "
                          "kept), or write a subset with medsam_lib.data.store_commit.write_index")


class CuratedDataset:
    """Read API of a curated store.

    ``ds = CuratedDataset(path)``; ``ds.index`` is the pandas index (one row per image key, slice
    and target); ``ds.load(row)`` gives ``(image, mask)``: image (256, 256, 3) uint8, mask
    (256, 256) bool. ``row`` is an index row (Series or dict) or its position in ``ds.index``.
    """

    def __init__(self, path: str | os.PathLike, cache_files: int = 8):
        self.path = Path(path)
        index_path = self.path / "index.csv"
        if not self.path.is_dir():
            what = "a file, not a store's folder" if self.path.exists() else "no such folder"
            raise MedSAMError(f"{self.path}: no curated store here ({what}); "
                              "run `python -m medsam_lib data curate --manifest M --out FOLDER` first")
        started = (self.path / "cases").is_dir() or (self.path / NEXT_INFO).exists() or (self.path / PENDING).exists()
        info_file = (self.path / "curation.json").is_file()
        if (self.path / NEXT_INFO).exists() or (started and not (info_file and index_path.is_file())):
            raise MedSAMError(f"{self.path}: curated store incomplete (a curation run stopped before it finished): "
                              "run data curate again to finish (the same command; finished cases are kept)")
        self.info = _load_store_info(self.path)
        if self.info is None or not index_path.is_file():
            raise MedSAMError(f"{self.path}: not a curated store (needs curation.json and index.csv); "
                              "run `python -m medsam_lib data curate` first")
        raw = index_path.read_bytes()
        self.index_sha256 = hashlib.sha256(raw).hexdigest()
        self.index = read_index(io.BytesIO(raw))
        check_index(self.path, self.info, self.index, self.index_sha256)
        self._open: OrderedDict[str, object] = OrderedDict()
        self._cache_files = cache_files

    def __len__(self) -> int:
        return len(self.index)

    @property
    def preset(self) -> str:
        return self.info["preset"]

    def split(self, name: str):
        return self.index[self.index["split"] == name]

    def _row(self, row):
        if isinstance(row, (int, np.integer)):
            return self.index.iloc[int(row)]
        return row

    def _npz(self, file: str):
        if file in self._open:
            self._open.move_to_end(file)
            return self._open[file]
        path = self.path / file
        if not path.is_file():
            raise MedSAMError(f"{path}: case file missing from the curated store; curate again")
        try:
            npz = np.load(path)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise MedSAMError(f"{path}: corrupt case file in the curated store ({exc}); delete it and run "
                              "data curate again") from exc
        self._open[file] = npz
        if len(self._open) > self._cache_files:
            _, old = self._open.popitem(last=False)
            old.close()
        return npz

    def load_image(self, row) -> np.ndarray:
        """(256, 256, 3) uint8."""
        row = self._row(row)
        image = self._npz(row["file"])[row["image_member"]]
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image

    def load_mask(self, row) -> np.ndarray:
        """(256, 256) bool: the row's label values (or its instance number) in the stored map."""
        row = self._row(row)
        stored = self._npz(row["file"])[row["mask_member"]]
        if int(row["instance"]) > 0:
            return stored == int(row["instance"])
        return np.isin(stored, [int(v) for v in str(row["labels"]).split(";")])

    def load_label_map(self, row) -> np.ndarray:
        """(256, 256) integer map the row's mask is taken from: every label (or instance) stored with it."""
        row = self._row(row)
        return np.asarray(self._npz(row["file"])[row["mask_member"]])

    def load(self, row) -> tuple[np.ndarray, np.ndarray]:
        row = self._row(row)
        return self.load_image(row), self.load_mask(row)

    def samples(self, file: str, image_key: str) -> tuple[np.ndarray, np.ndarray]:
        """(raw, normalised) intensity samples of one image of a case (for histograms)."""
        npz = self._npz(file)
        return npz[f"sample_raw_{image_key}"], npz[f"sample_norm_{image_key}"]

    def close(self) -> None:
        for npz in self._open.values():
            npz.close()
        self._open.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def curated_dir(results_dir: str | os.PathLike, preset: str = "paper") -> Path:
    """Where a profile's curated store lives: ``{results_dir}/curated`` (paper preset) or
    ``{results_dir}/curated_<preset>``."""
    check_preset(preset)
    return Path(results_dir) / ("curated" if preset == "paper" else f"curated_{preset}")
