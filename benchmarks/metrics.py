"""NSD speed against DeepMind's ``surface-distance``, and 3D inference time per slice.

    python benchmarks/metrics.py [--repeat 3] [--shape 200,256,256] [--spacing 2.5,0.8,0.8] [--slices 16]

1. NSD at 1 mm on a large anisotropic 3D pair (default 200 x 256 x 256 voxels in (z, y, x), spacing
   (2.5, 0.8, 0.8) mm: two smooth random blobs, one slightly deformed). Ours
   (``medsam_lib.evaluation.nsd``) against ``surface_distance.compute_surface_distances`` +
   ``compute_surface_dice_at_tolerance`` in the same run, best of ``--repeat``; prints both times, the
   ratio (ours / stock; target <= 0.2, i.e. >= 5x faster) and checks the two values agree to 1e-9.
2. Slice-by-slice 3D inference (``medsam_lib.evaluation.inference.predict_volume``, protocol ``gt``)
   of LiteMedSAM on the CPU: seconds per slice with the image encoder, and with precomputed
   embeddings (decoder only), on a synthetic ``--slices``-slice volume.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medsam_lib.evaluation import nsd  # noqa: E402


def blob_pair(shape, seed: int = 0):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(s // 4 for s in shape)), 2.0)
    field = ndimage.zoom(field, 4, order=1)[tuple(slice(0, s) for s in shape)]
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    ball = 1.0 - (zz ** 2 + yy ** 2 + xx ** 2)
    gt = ball + 2.0 * field > 0.45
    noise = ndimage.gaussian_filter(rng.standard_normal(gt.shape), 3.0)
    pred = ball + 2.0 * field + 0.8 * noise / noise.std() * 0.05 > 0.47
    return pred, gt


def best_of(fn, repeat: int):
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times)), value


def bench_nsd(shape, spacing, repeat: int) -> None:
    import surface_distance as sd

    pred, gt = blob_pair(shape)
    print(f"NSD at 1 mm: shape (z, y, x) {shape}, spacing {spacing} mm, "
          f"foreground {gt.mean():.1%} / {pred.mean():.1%} of the volume")

    def stock():
        distances = sd.compute_surface_distances(gt, pred, spacing)
        return sd.compute_surface_dice_at_tolerance(distances, 1.0)

    ours_best, ours_med, ours_value = best_of(lambda: nsd(pred, gt, spacing, 1.0), repeat)
    stock_best, stock_med, stock_value = best_of(stock, repeat)
    ratio = ours_best / stock_best
    print(f"  ours  {ours_best:7.3f} s (median {ours_med:.3f})  NSD {ours_value:.9f}")
    print(f"  stock {stock_best:7.3f} s (median {stock_med:.3f})  NSD {stock_value:.9f}")
    print(f"  ratio ours/stock {ratio:.3f} ({1 / ratio:.1f}x faster)  target <= 0.2: "
          f"{'PASS' if ratio <= 0.2 else 'MISS'}")
    print(f"  values equal to 1e-9: {'PASS' if abs(ours_value - stock_value) <= 1e-9 else 'FAIL'}")


def bench_inference(n_slices: int, repeat: int) -> None:
    import torch

    from medsam_lib.evaluation.inference import predict_volume
    from medsam_lib.models.predictor import BoxPredictor

    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, n_slices), np.linspace(-1, 1, 256), np.linspace(-1, 1, 256),
                             indexing="ij")
    gt = (zz ** 2 / 1.2 + yy ** 2 + xx ** 2) < 0.25
    images = np.clip(60 + 120 * gt + rng.normal(0, 20, gt.shape), 0, 255).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    predictor = BoxPredictor("litemedsam", device="cpu")
    with torch.inference_mode():
        embeddings = [predictor.model.image_encoder(predictor._prepare(im).tensor[None]).squeeze(0) for im in images]
    print(f"3D inference, LiteMedSAM on CPU ({torch.get_num_threads()} threads), {n_slices} slices of 256 x 256:")
    def encoded():
        predictor._cache.clear()  # the predictor keeps recent embeddings: time the encoder every run
        return predict_volume(predictor, images, gt, protocol="gt")

    full, _, _ = best_of(encoded, repeat)
    cached, _, _ = best_of(lambda: predict_volume(predictor, images, gt, protocol="gt", embeddings=embeddings),
                           repeat)
    print(f"  with the image encoder      {1000 * full / n_slices:7.1f} ms per slice")
    print(f"  with stored embeddings      {1000 * cached / n_slices:7.1f} ms per slice")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shape", default="200,256,256", help="z,y,x voxels")
    parser.add_argument("--spacing", default="2.5,0.8,0.8", help="z,y,x mm (array order)")
    parser.add_argument("--slices", type=int, default=16, help="slices of the inference volume")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--skip-nsd", action="store_true")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if not args.skip_nsd:
        bench_nsd(tuple(int(s) for s in args.shape.split(",")), tuple(float(s) for s in args.spacing.split(",")),
                  args.repeat)
    if not args.skip_inference:
        bench_inference(args.slices, args.repeat)


if __name__ == "__main__":
    main()
