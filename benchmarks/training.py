"""Training-step throughput: the paper's step fed from the on-disk embedding store vs the frozen
encoder run on the fly, at batch 8, 32 and 128, in one run.

    python benchmarks/training.py --device cpu [--batches 8,32,128] [--steps 2] [--arch lite]
    python benchmarks/training.py --device cuda --arch vit_b --steps 20

Both steps are the loop's own (``training.run.StepModel``, ``training.loss``, Adam on the mask
decoder), with the batch assembled exactly as ``train`` does (sampler, 0-20 px box jitter, masks
unpacked, inputs read): "store" reads the embeddings from the memory-mapped store on disk; "on the
fly" reads the curated images, prepares them and runs the frozen image encoder (no grad; the
predictor's fast CPU path for LiteMedSAM, bf16 autocast on CUDA) every step. Data loading is
timed synchronously (the loop overlaps it with the step in a thread, so its real share is lower).
Prints samples/s, the ratio store / on-the-fly, peak memory (CUDA: max allocated per setting; CPU:
the process's peak RSS so far) and the data-loading share of the store-fed step at batch 32
(target < 10% on CPU). ``--arch vit_b`` uses a randomly initialised SAM ViT-B (no weights needed;
its speed is the trained model's). The synthetic demo set is curated and embedded into a temporary
folder (``--datasets`` picks the phantom data sets; default: the two 2D ones on CPU, all on CUDA).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsam_lib.data.curate import curate  # noqa: E402
from medsam_lib.data.phantoms import write_synthetic_set  # noqa: E402
from medsam_lib.data.store import CuratedDataset  # noqa: E402
from medsam_lib.models.transforms import for_model  # noqa: E402
from medsam_lib.models.zoo import LoadedModel, build_model, load_model  # noqa: E402
from medsam_lib.training.data import StreamSampler, embedding_source, image_source, load_pairs, sampler_batch  # noqa: E402
from medsam_lib.training.loss import dice_bce_loss  # noqa: E402
from medsam_lib.training.run import StepModel, autocast  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _loaded(arch: str, device) -> LoadedModel:
    if arch == "lite":
        return load_model("litemedsam", device=device)
    torch.manual_seed(0)
    model = build_model("vit_b").to(device).eval()
    return LoadedModel(model=model, name="sam_vit_b (random init)", arch="vit_b", checkpoint=None)


def bench(kind: str, loaded, pairs, source, batch: int, steps: int, device, bf16: bool, encoder=None) -> dict:
    model = loaded.model
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.mask_decoder.parameters():
        p.requires_grad_(True)
    for p in model.mask_decoder.iou_prediction_head.parameters():
        p.requires_grad_(False)
    net = StepModel(model, from_images=False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    sampler = StreamSampler(len(pairs), seed=0)
    sx, sy = for_model(loaded).geometry((256, 256)).box_scale
    scale = torch.tensor([sx, sy, sx, sy])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    load_s, step_s = [], []
    for i in range(steps + 1):  # the first is a warm-up
        _sync(device)
        t0 = time.perf_counter()
        b = sampler_batch(pairs, sampler, sampler.take(batch), source)
        inputs, targets = b.inputs.to(device, non_blocking=True), b.targets.to(device, non_blocking=True)
        _sync(device)
        t1 = time.perf_counter()
        with autocast(device, "bf16" if bf16 else "fp32"):
            if encoder is not None:
                with torch.no_grad():
                    inputs = encoder(inputs)
            logits = net(inputs.float() if encoder is not None else inputs, (b.boxes * scale).to(device))
        loss = dice_bce_loss(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        t2 = time.perf_counter()
        if i:
            load_s.append(t1 - t0)
            step_s.append(t2 - t1)
    load, step = float(np.median(load_s)), float(np.median(step_s))
    return {"kind": kind, "batch": batch, "samples_s": batch / (load + step), "load_s": load, "step_s": step,
            "load_share": load / (load + step), "peak_mib": _peak_mib(device)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--arch", choices=["lite", "vit_b"], default="lite")
    parser.add_argument("--batches", default="8,32,128")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per setting (default: cpu 2, cuda 20)")
    parser.add_argument("--datasets", default=None, help="phantom data sets, comma-separated")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-on-the-fly", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device if args.device == "cpu" else "cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (2 if device.type == "cpu" else 20)
    batches = [int(b) for b in args.batches.split(",")]
    bf16 = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    datasets = args.datasets.split(",") if args.datasets else (
        ["synthetic_us_breast", "synthetic_xray_chest"] if device.type == "cpu" else None)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"arch {args.arch}, steps {steps}, load average {os.getloadavg()[0]:.2f}")
    from medsam_lib.embeddings import build_store

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = write_synthetic_set(tmp / "synthetic")
        curate("synthetic", tmp / "curated", root=root, datasets=datasets, progress=False)
        curated = CuratedDataset(tmp / "curated")
        loaded = _loaded(args.arch, device)
        t = time.perf_counter()
        store = build_store(curated, loaded, tmp / "embeddings", device=device, progress=False)
        print(f"{len(store)} images embedded in {time.perf_counter() - t:.1f} s ({store.size_bytes / 2**20:.0f} MiB on disk)")
        pairs = load_pairs(curated, curated.index[curated.index["split"] == "train"])
        transform = for_model(loaded)
        if device.type == "cpu" and args.arch == "lite":
            from medsam_lib.embeddings.encoder import BatchEncoder

            fast = BatchEncoder(loaded, device)

            def encoder(x):
                return fast(x)
        else:
            encoder = loaded.model.image_encoder
        results = []
        print(f"{'batch':>5} {'step fed from':>13} {'samples/s':>10} {'load ms':>8} {'step ms':>9} {'load %':>7} "
              f"{'peak MiB':>9}", flush=True)
        for batch in batches:
            kinds = [("store", embedding_source(store), None)]
            if not args.skip_on_the_fly:
                kinds.append(("on the fly", image_source(curated, curated.index, transform), encoder))
            for kind, source, enc in kinds:
                r = bench(kind, loaded, pairs, source, batch, steps, device, bf16, enc)
                results.append(r)
                print(f"{r['batch']:>5} {r['kind']:>13} {r['samples_s']:>10.1f} {1000 * r['load_s']:>8.1f} "
                      f"{1000 * r['step_s']:>9.1f} {100 * r['load_share']:>6.1f}% {r['peak_mib']:>9.0f}", flush=True)
    for batch in batches:
        pair = {r["kind"]: r for r in results if r["batch"] == batch}
        if "on the fly" in pair:
            print(f"batch {batch}: store-fed / on-the-fly samples/s = {pair['store']['samples_s'] / pair['on the fly']['samples_s']:.2f}x")
    at32 = [r for r in results if r["kind"] == "store" and r["batch"] == 32]
    if at32 and device.type == "cpu":
        share = at32[0]["load_share"]
        print(f"data loading share of the store-fed step at batch 32: {100 * share:.1f}% "
              f"({'PASS' if share < 0.10 else 'MISS'}: target < 10% on CPU)")
    at128 = [r for r in results if r["kind"] == "store" and r["batch"] == 128]
    if at128 and device.type == "cuda":
        rate = at128[0]["samples_s"]
        print(f"store-fed at batch 128: {rate:.0f} samples/s ({'PASS' if rate >= 2000 else 'MISS'}: target >= 2000 on an H100)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
