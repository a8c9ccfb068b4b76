"""How close the exported encoder's embeddings and masks are to torch's, on every real case.

For each case of ../shared/data (every 2D image; the slice of most ground truth of each 3D case) and
of ../shared/cohorts (every image; the hippocampus volumes' slice of most label): the plain torch
encoder (the module's own forward, float32) is the reference; the exported encoder runs in float32
(what ``BoxPredictor`` uses: OpenVINO, and ONNX Runtime with ``--onnxruntime``) and in OpenVINO's
bfloat16. Per path: the cosine of its embedding to the reference and the Dice between the masks of
the case's ground-truth box from the two embeddings. Printed per source (min, the share of cases
meeting the bar: cosine >= 0.999 and Dice >= 0.99, issue 18) and overall; ``--csv`` writes every case.

    python benchmarks/exported_accuracy.py [--per-folder N] [--onnxruntime] [--csv PATH]

About 3 s per case on 2 cores (three encoders); ``--per-folder`` caps the images per folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

from common import load_line  # noqa: E402
from medsam_lib.evaluation import dice  # noqa: E402
from medsam_lib.geometry import box_from_mask  # noqa: E402
from medsam_lib.models import exported  # noqa: E402
from medsam_lib.models.predictor import BoxPredictor  # noqa: E402
from medsam_lib.models.zoo import load_model  # noqa: E402
from medsam_lib.shared import shared_data_dir, shared_dir  # noqa: E402
from real_cases import cases_2d, cases_3d, cases_cohorts  # noqa: E402

COSINE, DICE = 0.999, 0.99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-folder", type=int, default=None, help="images per folder (default: all)")
    parser.add_argument("--onnxruntime", action="store_true", help="also the float32 file on ONNX Runtime")
    parser.add_argument("--csv", default=None, help="write one row per case and path here")
    args = parser.parse_args(argv)
    loaded = load_model("litemedsam", device="cpu")
    reference = BoxPredictor(loaded, runtime="torch", cache_size=0)
    reference._encode = torch.inference_mode()(lambda batch: loaded.model.image_encoder(batch))
    paths = {"openvino float32": BoxPredictor(loaded, runtime="openvino", cache_size=0)}
    bf16 = BoxPredictor(loaded, runtime="openvino", cache_size=0)
    bf16._exported = exported.ExportedEncoder(loaded.model.image_encoder, "openvino", precision="bfloat16")
    paths["openvino bfloat16"] = bf16
    if args.onnxruntime:
        paths["onnxruntime float32"] = BoxPredictor(loaded, runtime="onnxruntime", cache_size=0)
    sources = {"shared/data 2D": lambda: cases_2d(shared_data_dir(), args.per_folder),
               "shared/data 3D": lambda: cases_3d(shared_data_dir()),
               "shared/cohorts": lambda: cases_cohorts(shared_dir() / "cohorts", args.per_folder)}
    print(load_line("start"))
    rows = []
    for source, cases in sources.items():
        for name, image, truth in tqdm(list(cases()), desc=source):
            if not truth.any():
                continue
            box = box_from_mask(truth)
            reference.set_image(image, source=name)
            want = reference.predict([box]).masks[0]
            a = reference._embedding.double().ravel()
            for path, predictor in paths.items():
                predictor.set_image(image, source=name)
                b = predictor._embedding.double().ravel()
                rows.append({"source": source, "case": name, "path": path,
                             "cosine": float(a @ b / (a.norm() * b.norm())),
                             "mask_dice": dice(predictor.predict([box]).masks[0], want)})
    df = pd.DataFrame(rows)
    df["meets_bar"] = (df["cosine"] >= COSINE) & (df["mask_dice"] >= DICE)
    summary = df.groupby(["path", "source"]).agg(cases=("case", "size"), min_cosine=("cosine", "min"),
                                                 median_cosine=("cosine", "median"), min_dice=("mask_dice", "min"),
                                                 share_meeting_bar=("meets_bar", "mean"))
    pd.set_option("display.width", 200)
    print(f"\nbar: cosine >= {COSINE} and mask Dice >= {DICE} against the torch float32 encoder")
    print(summary.to_string(float_format=lambda v: f"{v:.6f}"))
    for path, part in df.groupby("path"):
        print(f"{'PASS' if part['meets_bar'].all() else 'MISS'}  {path}: {int(part['meets_bar'].sum())} of {len(part)} "
              f"cases meet the bar (lowest cosine {part['cosine'].min():.6f}, lowest Dice {part['mask_dice'].min():.4f})")
    if args.csv:
        from medsam_lib.fileio import atomic_write_text

        atomic_write_text(args.csv, df.to_csv(index=False))
    print(load_line("end"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
