"""The embedding store's format and its reader (``open_store``); the writer is ``build.py``.

A store is a folder:

    store.json                    the key and the plan: model, weights SHA-256, transform key,
                                  curated preset, dtype, chunk size, and every image in order
                                  (image_id -> curated image_sha256, pixel hash, chunk, row)
    chunks/chunk_00000-<d>.npy    (n <= chunk_size, 256, 64, 64) embeddings of consecutive images
    chunks/chunk_00000.json       the chunk's completion marker: its images and their pixel
                                  hashes, its .npy file name, byte size, SHA-256 and mtime
    store.lock, chunks/*.lock     advisory locks (fcntl) for concurrent writers

Why this format. Fixed-size chunks of plain ``.npy`` files are memory-mapped on open
(``np.load(mmap_mode="r")``): ``get(id)`` reads one 2 or 4 MiB slab from the page cache with no
decompression, so shuffled batches for training cost a copy, not a decode (``benchmarks/
embeddings.py`` measures it against one ``.npy`` per image, the released code's layout). A chunk
is the unit of work and of atomicity: its array is written to a temporary file and renamed, then
its marker is written the same way, so a kill at any moment leaves whole chunks or none, and a
rerun computes only chunks without a valid marker. Chunk files carry a digest of their contents'
identities in their name, so a chunk recomputed for a changed curated store never overwrites a
file another marker still points to. Embeddings are not compressible enough to pay for codecs,
and zarr would add a dependency for what ``np.load`` already does.

Damage. On open every chunk's size is checked, and its SHA-256 too whenever its mtime differs from
the marker's (``verify="full"`` hashes all of them). Reading verifies as well: the first time a
process reads a chunk its SHA-256 is compared with the marker's (``chunk_sha256``: hashed once per
file state, about 25 ms per 32 MiB chunk), so bytes flipped with the mtime kept are refused before
they are used. This module only reads: a damaged chunk is a MedSAMError naming its file and the
``embed`` command (and the ``build_store`` call) that recomputes it; only ``build.build_store``
(which verifies every chunk it keeps the same way) writes a store.

Binding. A store belongs to one model's image encoder (weights SHA-256 and input transform) and
one curated store (its preset, image ids, source hashes and pixels). ``check_key`` is the one
comparison of a store's key with an expected one; ``EmbeddingStore.bind`` (``check_binding``: the
key, then the images) is what every reader goes through, once per store object:
``open_store(model=, curated=)``, training, and ``evaluate`` (CLI and
``evaluation.run.predict_store``). The builder checks an existing store's key with ``check_key``
too (with the dtype; changed images it recomputes itself).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..fileio import MedSAMError, sha256_file

FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
EMBEDDING_SHAPE = (256, 64, 64)
DEFAULT_CHUNK_SIZE = 16  # images per chunk: 32 MiB in float16
KEY_FIELDS = ("weights_sha256", "transform", "preset", "dtype", "embedding_shape")
HEADER = "store.json"


def check_dtype(dtype: str) -> str:
    text = str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype
    if text not in DTYPES:
        raise MedSAMError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return text


def chunk_marker(path: Path, k: int) -> Path:
    return path / "chunks" / f"chunk_{k:05d}.json"


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedSAMError(f"{path}: unreadable JSON ({exc}); delete it and rerun `python -m medsam_lib embed` "
                          "(only what it describes is recomputed)") from exc


def read_header(path: Path) -> dict | None:
    header = read_json(Path(path) / HEADER)
    if header is not None and header.get("format_version") != FORMAT_VERSION:
        raise MedSAMError(f"{Path(path) / HEADER}: embedding store format {header.get('format_version')!r}, "
                          f"this code reads format {FORMAT_VERSION}; build the store again in a new folder")
    return header


def check_key(path: Path, header: dict, expected: dict, remedy: str) -> None:
    """The one comparison of a store's key with an expected one (``expected``: key fields; one that is
    absent or None is not compared): MedSAMError saying what differs, in words, then ``remedy``."""
    names = {"weights_sha256": "model weights (SHA-256)", "transform": "model input transform",
             "preset": "curated preset", "dtype": "dtype", "embedding_shape": "embedding shape"}
    differences = []
    for field in KEY_FIELDS:
        if field in expected and expected[field] is not None and header.get(field) != expected[field]:
            have, want = header.get(field), expected[field]
            if field == "weights_sha256":
                have = f"{header.get('model')} {str(have)[:12]}..."
                want = f"{expected.get('model', '?')} {str(want)[:12]}..."
            differences.append(f"{names[field]}: store has {have}, asked for {want}")
    if differences:
        raise MedSAMError(f"{path / HEADER}: embedding store does not match: " + "; ".join(differences)
                          + f". {remedy}")


def pixels_sha256(rgb: np.ndarray) -> str:
    """The identity of an image's pixels as a store records them (dtype, shape and bytes)."""
    digest = hashlib.sha256(f"{rgb.dtype}{rgb.shape}".encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


_HASHED: dict[tuple, str] = {}  # file state -> SHA-256: each chunk is hashed once per state per process


def chunk_sha256(file: Path) -> str:
    """SHA-256 of a chunk file, remembered for its state (inode, size, mtime and ctime: writing the
    bytes changes the ctime even when the mtime is set back, so an edit is always hashed again)."""
    stat = file.stat()
    key = (str(file), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    digest = _HASHED.get(key)
    if digest is None:
        digest = _HASHED[key] = sha256_file(file)
    return digest


def chunk_problem(path: Path, marker: dict, full: bool = False) -> str | None:
    """Why a committed chunk cannot be trusted (None: it is fine). Size always; SHA-256 when its
    mtime changed since it was committed, or when ``full`` (once per file state: ``chunk_sha256``)."""
    file = path / "chunks" / marker["file"]
    if not file.is_file():
        return f"{file}: chunk file missing"
    stat = file.stat()
    if stat.st_size != marker["bytes"]:
        return f"{file}: {stat.st_size} bytes, expected {marker['bytes']} (truncated or edited)"
    if full or stat.st_mtime_ns != marker["mtime_ns"]:
        if chunk_sha256(file) != marker["sha256"]:
            return f"{file}: contents differ from the SHA-256 recorded in its marker (edited or corrupted)"
    return None


def repair_hint(path: Path, header: dict, curated=None) -> str:
    """How to recompute a damaged chunk, as a command and as a call: with the curated store the caller
    uses (path or CuratedDataset) when there is one; the path recorded at build time (stale if the store
    moved) only otherwise."""
    curated = str(getattr(curated, "path", curated) or header.get("curated", "DIR"))
    model = header.get("model", "NAME")
    return (f"rerun `python -m medsam_lib embed --curated {curated} --model {model} --out {path}` (in Python: "
            f"`medsam_lib.embeddings.build_store({curated!r}, {model!r}, {str(path)!r})`) to recompute it "
            "(finished chunks are kept)")


def marker_matches(marker: dict | None, header: dict, k: int) -> bool:
    """The marker commits chunk ``k`` of this plan: same key, same images, same pixel hashes."""
    if marker is None or marker.get("key") != store_key(header):
        return False
    ids = plan_ids(header)[k * header["chunk_size"]:(k + 1) * header["chunk_size"]]
    images = header["images"]
    return marker.get("ids") == ids and marker.get("pixels_sha256") == [images[i]["pixels_sha256"] for i in ids]


def store_key(header: dict) -> str:
    return json.dumps({f: header[f] for f in KEY_FIELDS}, sort_keys=True)


def plan_ids(header: dict) -> list[str]:
    return list(header["images"])


def n_chunks(header: dict) -> int:
    return -(-len(header["images"]) // header["chunk_size"])


class EmbeddingStore:
    """Read API: ``len(store)``, ``store.ids()``, ``store.get(id)`` -> (256, 64, 64) array in the
    store's dtype, ``store.get_batch(ids)`` -> (B, 256, 64, 64), ``store.meta`` (the header:
    model, weights_sha256, transform, preset, dtype, image_size, and per image its curated
    ``image_sha256``, ``pixels_sha256`` and ``original_size``). Chunks are memory-mapped lazily."""

    def __init__(self, path: str | os.PathLike, header: dict, markers: list[dict]):
        self.path = Path(path)
        self.meta = header
        self.markers = markers  # one completion marker per chunk (ids, file, bytes, sha256, rank, encoder)
        self._files = [self.path / "chunks" / m["file"] for m in markers]
        self._maps: dict[int, np.ndarray] = {}
        self._where = {image_id: (info["chunk"], info["row"]) for image_id, info in header["images"].items()}
        self._bound: set = set()  # (key, curated store) pairs already compared (bind)
        self.curated = None  # the curated store this store is used with (bind), for repair hints
        self.stats: dict = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._where

    def __repr__(self) -> str:
        return f"EmbeddingStore({self.path}, {len(self)} images, {self.meta['model']}, {self.meta['dtype']})"

    def ids(self) -> list[str]:
        return list(self._where)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self._files)

    def original_size(self, image_id: str) -> tuple[int, int]:
        """(H, W) of the curated image (for ``BoxPredictor.set_embedding``)."""
        return tuple(self.meta["images"][self._check(image_id)]["original_size"])

    def _check(self, image_id: str) -> str:
        if image_id not in self._where:
            raise MedSAMError(f"{self.path}: no embedding for image_id {image_id!r} "
                              f"(the store holds {len(self)} images of {self.meta.get('curated', '?')})")
        return image_id

    def _chunk(self, k: int) -> np.ndarray:
        arr = self._maps.get(k)
        if arr is None:
            problem = chunk_problem(self.path, self.markers[k], full=True)  # once per chunk per process
            if problem:
                raise MedSAMError(f"{problem}; this embedding store is damaged and is not read: "
                                  + repair_hint(self.path, self.meta, self.curated))
            arr = self._maps[k] = np.load(self._files[k], mmap_mode="r", allow_pickle=False)
        return arr

    def bind(self, model=None, curated=None, vit_preprocess: str = "paper") -> "EmbeddingStore":
        """Refuse (MedSAMError saying what differs) unless this store was made by ``model``'s image
        encoder (name, checkpoint path or LoadedModel; a fine-tuned checkpoint that kept its base's
        encoder counts as its base) and from ``curated``'s images (path or CuratedDataset: preset,
        ids, source hashes and pixels). The one comparison of a store with what it is used with;
        each (model, curated store) is compared once per store object."""
        check_binding(self.path, self.meta, model, curated, vit_preprocess, self._bound)
        if curated is not None:
            self.curated = curated
        return self

    def get(self, image_id: str) -> np.ndarray:
        k, row = self._where[self._check(image_id)]
        return np.array(self._chunk(k)[row])

    def get_batch(self, ids) -> np.ndarray:
        out = np.empty((len(ids), *EMBEDDING_SHAPE), dtype=self.dtype)
        for i, image_id in enumerate(ids):
            k, row = self._where[self._check(image_id)]
            out[i] = self._chunk(k)[row]
        return out

    def close(self) -> None:
        self._maps.clear()


def load_store(path: str | os.PathLike, verify: str = "quick") -> tuple[dict, list[dict], list[str]]:
    """(header, markers of valid chunks (None where not), problems) of a store folder; raises when
    the folder is not a store."""
    path = Path(path)
    header = read_header(path)
    if header is None:
        raise MedSAMError(f"{path}: not an embedding store (no {HEADER}); build it with `python -m medsam_lib "
                          "embed --curated DIR --model NAME --out DIR`")
    markers, problems = [], []
    for k in range(n_chunks(header)):
        marker = read_json(chunk_marker(path, k))
        if not marker_matches(marker, header, k):
            markers.append(None)
            problems.append(f"{chunk_marker(path, k)}: chunk {k} not committed (the build did not finish)")
            continue
        problem = None if verify == "none" else chunk_problem(path, marker, full=verify == "full")
        markers.append(None if problem else marker)
        if problem:
            problems.append(problem)
    return header, markers, problems


def check_binding(path: Path, header: dict, model=None, curated=None, vit_preprocess: str = "paper",
                  done: set | None = None) -> None:
    """A store's key (``check_key``) and images compared with a model and a curated store (see ``bind``)."""
    from .keys import expected_key

    expected: dict = {}
    if model is not None:
        expected.update(expected_key(model, vit_preprocess))
    dataset = None
    if curated is not None:
        from ..data.store import CuratedDataset

        dataset = curated if isinstance(curated, CuratedDataset) else CuratedDataset(curated)
        expected["preset"] = dataset.preset
    memo = (json.dumps(expected, sort_keys=True, default=str),
            None if dataset is None else (str(dataset.path.resolve()), dataset.index_sha256))
    if done is not None and memo in done:
        return
    check_key(path, header, expected, "Build a store for this model and curated store in another folder")
    if dataset is not None:
        _check_curated(path, header, dataset)
    if done is not None:
        done.add(memo)


def open_store(path: str | os.PathLike, model=None, curated=None, vit_preprocess: str = "paper",
               verify: str = "quick") -> EmbeddingStore:
    """Open a finished store, read-only. With ``model`` (name, checkpoint path or LoadedModel) and/or
    ``curated`` (path or CuratedDataset): refuse (MedSAMError saying what differs) a store of other
    weights, transform or preset, or of other curated images (``EmbeddingStore.bind``). A missing,
    truncated or edited chunk is a MedSAMError naming the file and the ``embed`` command / ``build_store``
    call that recomputes it (on ``curated``, else on the curated store recorded at build time); to
    repair instead of refusing, call ``build_store``, which reuses a finished store."""
    path = Path(path)
    header = read_header(path)
    if header is None:
        raise MedSAMError(f"{path}: not an embedding store (no {HEADER}); build it with `python -m medsam_lib "
                          "embed --curated DIR --model NAME --out DIR`")
    bound: set = set()
    check_binding(path, header, model, curated, vit_preprocess, bound)
    header, markers, problems = load_store(path, verify)
    if problems:
        raise MedSAMError(f"{problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                          + "; " + repair_hint(path, header, curated))
    store = EmbeddingStore(path, header, markers)
    store._bound, store.curated = bound, curated
    return store


def _check_curated(path: Path, header: dict, dataset) -> None:
    """The store holds exactly the curated store's images, with the same pixels (hashed here)."""
    unique = dataset.index.drop_duplicates("image_id")
    ours = header["images"]
    missing = [i for i in unique["image_id"] if i not in ours]
    extra = [i for i in ours if i not in set(unique["image_id"])]
    changed = [row["image_id"] for _, row in unique.iterrows() if row["image_id"] in ours and (
        ours[row["image_id"]]["image_sha256"] != row["image_sha256"]
        or ours[row["image_id"]]["pixels_sha256"] != pixels_sha256(dataset.load_image(row)))]
    parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
             (("images not in the store", missing), ("images changed", changed),
              ("images no longer curated", extra)) if v]
    if parts:
        raise MedSAMError(f"{path / HEADER}: built from other curated images than {dataset.path}: "
                          + "; ".join(parts) + ". Rerun `python -m medsam_lib embed` to update it")
