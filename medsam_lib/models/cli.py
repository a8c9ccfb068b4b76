"""``python -m medsam_lib export``: LiteMedSAM's encoder and decoder as ONNX files, for deployment.

    python -m medsam_lib export --out exported/            # the bundled LiteMedSAM
    python -m medsam_lib export --model run/best.pt --out exported_finetuned/

Writes ``encoder.onnx`` ((1, 3, 256, 256) float32 image, min-max to [0, 1] and zero-padded as
``models.transforms`` prepares it -> (1, 256, 64, 64) embedding), ``decoder.onnx`` (embedding, point
coords (N, P, 2), labels (N, P) in SAM's ONNX convention -> low-res logits (N, 1, 256, 256), IoU (N, 1))
and ``export.json`` (the model, its weights' SHA-256, each file's SHA-256, the inputs and outputs).
The files are the ones ``BoxPredictor`` runs (``models.exported``'s cache), copied atomically.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..fileio import MedSAMError, atomic_path, atomic_write_text, check_output_path, sha256_file

INTERFACE = {
    "encoder.onnx": {"inputs": {"image": "(1, 3, 256, 256) float32: longest side 256 (INTER_AREA), min-max to "
                                         "[0, 1], zero-padded bottom/right"},
                     "outputs": {"embedding": "(1, 256, 64, 64) float32"}},
    "decoder.onnx": {"inputs": {"embedding": "(1, 256, 64, 64) float32",
                                "coords": "(N, P, 2) float32, x and y in the 256 x 256 model input",
                                "labels": "(N, P) int64: 1 foreground, 0 background, 2/3 box top-left/bottom-right, "
                                          "-1 padding (points without a box end with one padding point)"},
                     "outputs": {"low_res_logits": "(N, 1, 256, 256) float32; mask = logits > 0 after resizing",
                                 "iou": "(N, 1) float32 predicted IoU"}},
}


def cmd_export(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from . import exported
    from .zoo import MODELS, load_model

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MedSAMError(f"--out {out} is a file; give a folder")
    if not out.parent.is_dir():
        raise MedSAMError(f"--out {out}: its parent folder {out.parent} does not exist")
    out.mkdir(exist_ok=True)
    inputs = [] if args.model in MODELS else [args.model]
    targets = [check_output_path(out / name, inputs=inputs) for name in ("encoder.onnx", "decoder.onnx", "export.json")]
    loaded = load_model(args.model, device=resolve_device("cpu"))
    if loaded.arch != "lite":
        raise MedSAMError(f"{args.model} is a {loaded.arch!r} model; the export serves LiteMedSAM (arch 'lite')")
    files = {"encoder.onnx": exported.ExportedEncoder(loaded.model.image_encoder, "onnxruntime" if exported.installed(
                 "onnxruntime") else "openvino").onnx_file,
             "decoder.onnx": exported.export_onnx(*exported.decoder_export_args(loaded.model))}
    record = {"model": loaded.name, "weights_sha256": loaded.sha256, "export_version": exported.EXPORT_VERSION,
              "opset": exported.OPSET, "files": {}}
    for (name, source), target in zip(files.items(), targets):
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        record["files"][name] = {"sha256": sha256_file(target), **INTERFACE[name]}
    atomic_write_text(targets[2], json.dumps(record, indent=1))
    print(f"wrote {targets[0]}, {targets[1]} and {targets[2]} (weights SHA-256 {str(loaded.sha256)[:16]}...)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="write LiteMedSAM's encoder and decoder as ONNX files (SAM's prompt convention)")
    p.add_argument("--model", default="litemedsam", help="litemedsam (default) or a fine-tuned LiteMedSAM checkpoint")
    p.add_argument("--out", required=True, help="folder for encoder.onnx, decoder.onnx and export.json")
    p.set_defaults(func=cmd_export)
