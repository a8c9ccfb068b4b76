"""Curation speed and peak memory on the 3D cases of ../shared/data, against a stock pipeline.

Stock = the released MedSAM preprocessing pattern (pre_CT_MR.py): read the volume, normalise the
whole volume into a float copy, resize every labelled slice into lists held in memory, and write
one ``np.savez_compressed`` at the end. Ours = ``medsam_lib.data.case_writer.curate_case``: window the
volume once, then normalise, resize and write slice by slice into the case file. Both use the
same readers, window and resizing, run on the same cases in the same process, and each case is
timed as the best of ``--repeat`` runs. Peak memory is traced with ``tracemalloc`` (numpy reports
its buffers to it) in one more run per case.

    python benchmarks/curation.py [--repeat 3]

Prints slices per second and peak MiB for both, and their ratios (ours / stock).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medsam_lib.data.case_writer import curate_case  # noqa: E402
from medsam_lib.data.manifests import load_manifest, resolve_cases  # noqa: E402
from medsam_lib.data.preprocess import normalize_intensity, resize_image, resize_mask  # noqa: E402
from medsam_lib.data.readers import read_image, read_mask  # noqa: E402
from medsam_lib.shared import shared_data_dir  # noqa: E402


def stock_case(dataset, case, root: Path, out: Path) -> int:
    """The released code's pattern: whole-volume float copy, all slices in memory, one savez."""
    labels = read_mask(root / case.masks[dataset.masks[0].key], dataset.masks[0].encoding).array
    z_index = np.unique(np.nonzero(labels)[0])
    arrays = {}
    for spec in dataset.images:
        volume = read_image(root / case.images[spec.key]).array
        normalised = normalize_intensity(volume, spec.modality, "paper")
        arrays[f"imgs_{spec.key}"] = np.stack([resize_image(normalised[z]) for z in z_index])
    arrays["gts"] = np.stack([resize_mask(labels[z]) for z in z_index])
    np.savez_compressed(out, **arrays)
    return len(z_index) * len(dataset.images)


def ours_case(dataset, case, root: Path, out: Path) -> int:
    return curate_case(dataset, case, root, out, "paper")["slices"]


def measure(fn, dataset, case, root: Path, repeat: int) -> tuple[float, float, int]:
    """(best seconds over ``repeat`` untraced runs, peak MiB of one traced run, slices written).

    Time and memory come from separate runs: tracemalloc slows Python-level code far more than
    numpy calls, which would bias the timing against whichever pipeline does more in Python.
    """
    best, slices = float("inf"), 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            start = time.perf_counter()
            slices = fn(dataset, case, root, Path(tmp) / f"case{i}.npz")
            best = min(best, time.perf_counter() - start)
        tracemalloc.start()
        fn(dataset, case, root, Path(tmp) / "traced.npz")
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return best, peak, slices


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = shared_data_dir()
    if not root.is_dir():
        print(f"error: real cases not found at {root}", file=sys.stderr)
        return 2
    manifest = load_manifest("shared_data")
    totals = {"ours": [0.0, 0], "stock": [0.0, 0]}
    peaks = {"ours": [], "stock": []}
    print(f"{'case':48s} {'slices':>6s} {'ours s':>8s} {'stock s':>8s} {'ours MiB':>9s} {'stock MiB':>9s}")
    for dataset in manifest.datasets:
        if dataset.dimensionality != "3D":
            continue
        for case in resolve_cases(dataset, root):
            t_ours, m_ours, n_ours = measure(ours_case, dataset, case, root, args.repeat)
            t_stock, m_stock, n_stock = measure(stock_case, dataset, case, root, args.repeat)
            totals["ours"][0] += t_ours
            totals["ours"][1] += n_ours
            totals["stock"][0] += t_stock
            totals["stock"][1] += n_stock
            peaks["ours"].append(m_ours)
            peaks["stock"].append(m_stock)
            print(f"{dataset.name + '/' + case.volume:48s} {n_ours:6d} {t_ours:8.3f} {t_stock:8.3f} "
                  f"{m_ours:9.1f} {m_stock:9.1f}")
    rate = {k: v[1] / v[0] for k, v in totals.items()}
    print(f"\nslices per second: ours {rate['ours']:.1f}, stock {rate['stock']:.1f}, "
          f"ratio ours/stock {rate['ours'] / rate['stock']:.2f}")
    print(f"(ours writes {totals['ours'][1]} slice images with a mask per target; stock {totals['stock'][1]} "
          "slices with one label map each)")
    worst = int(np.argmax(peaks["stock"]))
    print(f"peak traced memory, largest case: ours {peaks['ours'][worst]:.1f} MiB, stock {peaks['stock'][worst]:.1f} MiB, "
          f"ratio ours/stock {peaks['ours'][worst] / peaks['stock'][worst]:.2f}")
    print(f"peak traced memory, mean over cases: ours {np.mean(peaks['ours']):.1f} MiB, "
          f"stock {np.mean(peaks['stock']):.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
