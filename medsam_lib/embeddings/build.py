"""Build (or finish, or update) an embedding store from a curated store: ``build_store``.

    store = build_store("results/demo/curated", "litemedsam", "results/demo/embeddings/litemedsam")

Every curated image (each ``image_id`` once, not once per target) goes through the model's input
transform (``models.transforms.for_model(loaded).prepare``) and its image encoder
(``encoder.BatchEncoder``: the predictor's own fast path), so ``store.get(id)`` is what
``BoxPredictor.set_image`` computes for that image. The work is cut into the store's chunks
(``store.py``); a chunk with a valid marker whose SHA-256 still matches is kept (every kept or copied
chunk is hashed once per run), so a rerun after a kill, a full disk or an edited file computes
only what is missing or damaged, and a finished store is reused in seconds.
An image whose pixels changed since is recomputed; one whose pixels did not is copied from the
chunk that holds it.

Concurrency: each chunk is written under its own lock file (fcntl), so two processes building the
same store share the work instead of corrupting it. Under ``torchrun`` (``WORLD_SIZE`` > 1) rank r
takes chunks r, r + N, r + 2N, ...; rank 0 writes the plan, and the result is the one-process store.
Several machines: the same command with torchrun's ``--nnodes``/``--rdzv-endpoint`` arguments and
``--out`` on a file system all of them share (the locks only guard against independent writers).
Out of GPU memory: the batch is halved (with a message) until it fits.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..data.store import CuratedDataset
from ..devices import join, resolve_device
from ..fileio import MedSAMError, atomic_path, atomic_write_text, check_output_folder
from ..locks import output_folder
from ..models.transforms import for_model
from ..models.zoo import LoadedModel, load_model
from .encoder import BatchEncoder
from .keys import expected_key
from .parallel import flock
from .store import (DEFAULT_CHUNK_SIZE, EMBEDDING_SHAPE, FORMAT_VERSION, HEADER, EmbeddingStore, check_dtype,
                    check_key, chunk_marker, chunk_problem, chunk_sha256, load_store, marker_matches, n_chunks,
                    pixels_sha256, plan_ids, read_header, read_json, store_key)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _open_curated(curated) -> CuratedDataset:
    dataset = curated if isinstance(curated, CuratedDataset) else CuratedDataset(curated)
    if not len(dataset.index):
        raise MedSAMError(f"{dataset.path / 'index.csv'}: the curated store holds no images; curate data into it "
                          "first (`python -m medsam_lib data curate`)")
    return dataset


def _plan(dataset: CuratedDataset, key: dict, chunk_size: int) -> dict:
    unique = dataset.index.drop_duplicates("image_id").reset_index(drop=True)
    images = {}
    for i, row in unique.iterrows():
        rgb = dataset.load_image(row)
        images[row["image_id"]] = {
            "image_sha256": row["image_sha256"], "pixels_sha256": pixels_sha256(rgb),
            "original_size": list(rgb.shape[:2]), "dataset": row["dataset"], "modality": row["modality"],
            "chunk": i // chunk_size, "row": i % chunk_size}
    return {"format_version": FORMAT_VERSION, **key, "embedding_shape": list(EMBEDDING_SHAPE),
            "chunk_size": chunk_size, "curated": str(dataset.path),
            "curated_store_version": dataset.info.get("store_version"), "images": images}


def _save_array(path: Path, array: np.ndarray) -> None:
    """Write one chunk's array (temp file + rename); the place a full disk shows up."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())


class _Builder:
    def __init__(self, path: Path, header: dict, dataset: CuratedDataset, model, device: torch.device,
                 vit_preprocess: str, compile: bool, batch_size: int, progress_bar):
        self.path, self.header, self.dataset = path, header, dataset
        self._model, self._device, self._vit_preprocess, self._compile = model, device, vit_preprocess, compile
        self._encoder: BatchEncoder | None = None
        self.rank = 0
        self.batch_size = batch_size
        self.bar = progress_bar
        self.key = store_key(header)
        self.computed = self.copied = self.kept = 0
        self.reuse = self._reusable()
        self.rows = {r["image_id"]: r for _, r in dataset.index.drop_duplicates("image_id").iterrows()}

    @property
    def encoder(self) -> BatchEncoder:
        """The model and its encoder path, loaded on first use (a finished store needs neither)."""
        if self._encoder is None:
            model = self._model
            self.loaded = model if isinstance(model, LoadedModel) else load_model(model, device=self._device)
            self.transform = for_model(self.loaded, self._vit_preprocess)
            self._encoder = BatchEncoder(self.loaded, self._device, compile=self._compile)
        return self._encoder

    @property
    def encoder_path(self) -> str | None:
        return self._encoder.path if self._encoder is not None else None

    def _reusable(self) -> dict:
        """(image_id, pixels hash) -> (chunk file, row) from every committed, intact chunk there is."""
        found = {}
        for marker_path in sorted((self.path / "chunks").glob("chunk_*.json")):
            try:
                marker = json.loads(marker_path.read_text(encoding="utf-8"))
                if marker.get("key") != self.key or chunk_problem(self.path, marker, full=True) is not None:
                    continue
            except (ValueError, KeyError, OSError):
                continue
            for row, (image_id, digest) in enumerate(zip(marker["ids"], marker["pixels_sha256"])):
                found[(image_id, digest)] = (self.path / "chunks" / marker["file"], row)
        return found

    def chunk_ids(self, k: int) -> list[str]:
        size = self.header["chunk_size"]
        return plan_ids(self.header)[k * size:(k + 1) * size]

    def committed(self, k: int, say: bool = False) -> bool:
        marker = read_json(chunk_marker(self.path, k))
        if not marker_matches(marker, self.header, k):
            return False
        problem = chunk_problem(self.path, marker, full=True)  # hashed once per run (chunk_sha256)
        if problem and say:
            log(f"{problem}: recomputing chunk {k}")
        return problem is None

    def run_chunk(self, k: int) -> None:
        ids = self.chunk_ids(k)
        for stale in (self.path / "chunks").glob(f".chunk_{k:05d}*"):
            stale.unlink(missing_ok=True)  # temp files of a killed writer (we hold the chunk's lock)
        images = self.header["images"]
        array = np.empty((len(ids), *EMBEDDING_SHAPE), dtype=self.header["dtype"])
        todo = []
        for row, image_id in enumerate(ids):
            source = self.reuse.get((image_id, images[image_id]["pixels_sha256"]))
            if source is not None:
                array[row] = np.load(source[0], mmap_mode="r")[source[1]]
                self.copied += 1
            else:
                todo.append(row)
        self._encode_rows(ids, todo, array)
        self._write(k, ids, array)

    def _encode_rows(self, ids: list[str], todo: list[int], array: np.ndarray) -> None:
        encoder = self.encoder
        tensors = [self.transform.prepare(self.dataset.load_image(self.rows[ids[r]])).tensor for r in todo]
        done = 0
        while done < len(todo):
            batch = torch.stack(tensors[done:done + self.batch_size])
            try:
                emb = encoder(batch)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not _is_oom(exc):
                    raise
                if self.batch_size == 1:
                    raise MedSAMError(f"out of memory on {encoder.device} encoding one image at a time "
                                      f"with {self.loaded.name}; free the device or use --device cpu") from exc
                self.batch_size //= 2
                log(f"out of memory on {encoder.device} at batch {len(batch)}: batch size halved to "
                    f"{self.batch_size}, going on")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            array[todo[done:done + len(batch)]] = emb.numpy().astype(array.dtype)
            done += len(batch)
            self.computed += len(batch)
            if self.bar is not None:
                self.bar.update(len(batch))

    def _write(self, k: int, ids: list[str], array: np.ndarray) -> None:
        images = self.header["images"]
        digests = [images[i]["pixels_sha256"] for i in ids]
        name = hashlib.sha256(json.dumps([self.key, ids, digests]).encode()).hexdigest()[:12]
        file = self.path / "chunks" / f"chunk_{k:05d}-{name}.npy"
        try:
            _save_array(file, array)
            stat = file.stat()
            marker = {"chunk": k, "key": self.key, "ids": ids, "pixels_sha256": digests, "file": file.name,
                      "shape": list(array.shape), "dtype": str(array.dtype), "bytes": stat.st_size,
                      "mtime_ns": stat.st_mtime_ns, "sha256": chunk_sha256(file), "encoder": self.encoder_path,
                      "rank": self.rank}
            atomic_write_text(chunk_marker(self.path, k), json.dumps(marker))
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise MedSAMError(f"{file}: {'disk full' if full else 'could not write'} while writing the embedding "
                              f"store ({exc.strerror or exc}); {'free space and ' if full else ''}rerun the same "
                              "command: committed chunks are kept, this one is redone") from exc


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def build_store(curated, model, out, dtype: str = "float16", batch_size: int = 8, device="auto",
                progress: bool = True, vit_preprocess: str = "paper", chunk_size: int | None = None,
                compile: bool = False) -> EmbeddingStore:
    """Embed every image of a curated store into the store at ``out``; returns the opened store.

    ``curated``: a curated store's path or ``CuratedDataset``; ``model``: zoo name, checkpoint path
    or ``LoadedModel``. A finished store for the same key is reused (only missing or damaged chunks
    are computed); a store of other weights, transform, preset or dtype is refused (MedSAMError).
    ``store.stats`` tells what was computed, copied and kept, and the images/s of this run.
    """
    dtype = check_dtype(dtype)
    if int(batch_size) < 1:
        raise MedSAMError(f"batch size must be at least 1, got {batch_size}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise MedSAMError(f"chunk size must be at least 1, got {chunk_size}")
    dataset = _open_curated(curated)
    out = Path(out)
    if (out / "curation.json").exists():
        raise MedSAMError(f"{out}: this is a curated store, not an embedding store's folder; choose another --out")
    model_file = None if isinstance(model, LoadedModel) else Path(str(model))
    check_output_folder(out, [("curated store", dataset.path),
                              ("model", model_file if model_file is not None and model_file.is_file() else None)])
    key = {**expected_key(model, vit_preprocess), "preset": dataset.preset, "dtype": dtype}
    dev = resolve_device(device)
    # embed processes (and torchrun's ranks) share a store chunk by chunk; other commands are kept out
    with output_folder(out, "--out", shared=True):
        return _build(out, dataset, model, key, dev, batch_size, progress, vit_preprocess, chunk_size, compile)


def _build(out: Path, dataset: CuratedDataset, model, key: dict, dev: torch.device, batch_size: int, progress: bool,
           vit_preprocess: str, chunk_size: int | None, compile: bool) -> EmbeddingStore:
    dist = join(dev)
    if dev.type == "cuda" and dist.world > 1:
        dev = torch.device(f"cuda:{dist.local_rank}")
    started = time.perf_counter()

    problem = header = None
    if dist.rank == 0:  # the plan: checked against what is there, written once
        try:
            header = _write_plan(out, dataset, key, chunk_size)
        except MedSAMError as exc:
            problem = str(exc)
    header, problem = dist.broadcast((header, problem))
    if problem:
        raise MedSAMError(problem)

    mine = [k for k in range(n_chunks(header)) if k % dist.world == dist.rank]
    from tqdm.auto import tqdm

    total = sum(len(header["images"]) - k * header["chunk_size"] if k == n_chunks(header) - 1
                else header["chunk_size"] for k in mine)
    bar = tqdm(total=total, desc=f"embedding ({header['model']})", unit="img", disable=not progress or dist.rank != 0)
    builder = _Builder(out, header, dataset, model, dev, vit_preprocess, compile, int(batch_size), bar)
    builder.rank = dist.rank
    compute_started = time.perf_counter()
    with flock(out / "store.lock", fcntl.LOCK_SH):
        deferred = []
        for k in mine:
            if builder.committed(k, say=True):
                builder.kept += len(builder.chunk_ids(k))
                bar.update(len(builder.chunk_ids(k)))
                continue
            with flock(out / "chunks" / f"chunk_{k:05d}.lock", fcntl.LOCK_EX, blocking=False) as got:
                if not got:
                    deferred.append(k)  # another process is writing it: come back at the end
                    continue
                if not builder.committed(k):
                    builder.run_chunk(k)
                else:
                    builder.kept += len(builder.chunk_ids(k))
                    bar.update(len(builder.chunk_ids(k)))
        for k in deferred:
            with flock(out / "chunks" / f"chunk_{k:05d}.lock", fcntl.LOCK_EX):
                if not builder.committed(k):
                    builder.run_chunk(k)
    seconds = time.perf_counter() - compute_started
    bar.close()
    dist.barrier()
    if dist.rank == 0:
        _collect_garbage(out, header)
    dist.barrier()
    dist.close()
    header, markers, problems = load_store(out)
    if problems:
        raise MedSAMError(f"{problems[0]}; the store is still incomplete after building: rerun the same command")
    store = EmbeddingStore(out, header, markers)
    store.stats = {"images": len(store), "computed": builder.computed, "copied": builder.copied,
                   "kept": builder.kept, "seconds": time.perf_counter() - started, "encode_seconds": seconds,
                   "images_per_s": builder.computed / seconds if builder.computed and seconds > 0 else None,
                   "encoder": builder.encoder_path, "batch_size": builder.batch_size, "size_bytes": store.size_bytes,
                   "rank": dist.rank, "world_size": dist.world}
    return store


def _check_key(out: Path, key: dict, chunk_size: int | None) -> int | None:
    """The chunk size of a store already at ``out`` (``chunk_size`` when there is none); MedSAMError
    when that store was built with another key or chunk size."""
    existing = read_header(out) if out.is_dir() else None
    if existing is None:
        return chunk_size
    check_key(out, existing, key, "Use another --out for this model or curated store (or delete this one)")
    if chunk_size is not None and int(chunk_size) != existing["chunk_size"]:
        raise MedSAMError(f"{out / HEADER}: the store has chunks of {existing['chunk_size']} images, asked for "
                          f"{chunk_size}; leave the chunk size out or use another --out")
    return existing["chunk_size"]


def _write_plan(out: Path, dataset: CuratedDataset, key: dict, chunk_size: int | None) -> dict:
    """Check the key of a store already at ``out`` and write the current plan (rank 0 only)."""
    header = _plan(dataset, key, int(_check_key(out, key, chunk_size) or DEFAULT_CHUNK_SIZE))
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    with flock(out / "store.lock", fcntl.LOCK_EX):
        # again under the lock: another build of other weights may have written its plan meanwhile
        _check_key(out, key, header["chunk_size"])
        if read_header(out) != header:
            atomic_write_text(out / HEADER, json.dumps(header, indent=1))
    return header


def _collect_garbage(out: Path, header: dict) -> None:
    """Remove chunk files no marker of the finished plan points to (old plans), unless another
    build holds the store."""
    with flock(out / "store.lock", fcntl.LOCK_EX, blocking=False) as got:
        if not got:
            return
        n = n_chunks(header)
        keep = set()
        for k in range(n):
            marker = read_json(chunk_marker(out, k))
            if marker is None or not marker_matches(marker, header, k):
                return  # not finished: nothing is garbage yet
            keep.add(marker["file"])
        for file in (out / "chunks").glob("chunk_*.npy"):
            if file.name not in keep:
                file.unlink(missing_ok=True)
        for marker_path in (out / "chunks").glob("chunk_*.json"):
            if int(marker_path.stem.split("_")[1]) >= n:
                marker_path.unlink(missing_ok=True)
                marker_path.with_suffix(".lock").unlink(missing_ok=True)
