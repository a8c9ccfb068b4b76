"""One entry point: ``python -m medsam_lib {segment,weights,data,run} ...``.

Every error a user can cause ends with exit code 2 and one line ``error: <what and where>``.
Set MEDSAM_DEBUG=1 to see the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .fileio import MedSAMError, one_line

# Subcommands contributed by the task modules: each module has register(subparsers).
COMMAND_MODULES = ("medsam_lib.models.cli", "medsam_lib.data.cli", "medsam_lib.embeddings.cli", "medsam_lib.training.cli",
                   "medsam_lib.evaluation.cli")


def _parse_box(text: str) -> list[float]:
    parts = text.replace(" ", "").split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--box needs four numbers x0,y0,x1,y1, got {text!r}")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box needs four numbers x0,y0,x1,y1, got {text!r}") from None


def cmd_segment(args: argparse.Namespace) -> int:
    """Every check that can fail runs before the model is loaded: device, modality, output path
    (lossless format, nothing in the way, not an input), the image, the box and the intensities."""
    from .data.preprocess import check_modality, slice_pixels
    from .data.readers import check_mask_output, read_image, write_mask
    from .devices import resolve_device
    from .fileio import check_output_path
    from .models.zoo import MODELS
    from .profile import fill_options

    from .models.exported import check_runtime

    check_runtime(args.runtime, "--runtime")
    fill_options(args, "segment", lambda p: {"model": p.model, "device": p.device},
                 {"model": "litemedsam", "device": "auto"}, writes_results=False)
    device = resolve_device(args.device)
    if args.modality is not None:
        check_modality(args.modality)
    out = check_output_path(check_mask_output(args.out),
                            inputs=[args.image] + ([] if args.model in MODELS else [args.model]))
    image = read_image(args.image)
    if image.is_volume:  # the slice's pixels by the one rule for volumes (the window of the whole volume)
        index = image.n_slices // 2 if args.slice is None else args.slice
        modality = args.modality or image.modality
        plane = slice_pixels(image.array, index, modality, source=str(args.image))
        source = f"{args.image} slice {index}"
    else:
        if args.slice is not None:
            raise MedSAMError(f"{args.image} is a 2D image; --slice applies to volumes only")
        index, plane, modality, source = None, image.array, args.modality, str(args.image)
    from .models.predictor import BoxPredictor, to_uint8_rgb, validate_boxes

    rgb = to_uint8_rgb(plane, modality, source)  # constant or non-numeric images fail here, not after loading
    validate_boxes([args.box], rgb.shape[:2], source)
    predictor = BoxPredictor(args.model, device=device, runtime=args.runtime)
    predictor.set_image(rgb, source=source)
    result = predictor.predict([args.box])
    write_mask(result.masks[0], out, reference=image if image.is_volume else None, slice_index=index)
    from .models.quality import quality_label

    where = f" slice={index}" if index is not None else ""
    score = result.scores[0]  # the decoder's predicted IoU; quality=likely-wrong where it is under the flag's threshold
    print(f"score={score:.4f} quality={quality_label(score)} pixels={int(result.masks[0].sum())}{where} mask={out}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from .models import zoo

    if args.action == "list":
        for spec in zoo.MODELS.values():
            try:
                where = str(zoo.weights_path(spec.name))
            except MedSAMError:
                where = f"absent ({spec.how_to_get})"
            print(f"{spec.name:14s} {spec.description}\n{'':14s} {where}")
    elif args.action == "path":
        print(zoo.weights_path(args.name) if args.name else zoo.cache_dir())
    else:
        if not args.name:
            raise MedSAMError("weights fetch needs a model name, e.g. `weights fetch sam_vit_b`")
        path = zoo.fetch_weights(args.name, force=args.force)
        print(f"{args.name}: {path} (verified)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_profile

    record = run_profile(args.profile, only=args.only, resume=args.resume)
    failed = [nb for nb in record["notebooks"] if nb["status"] != "ok"]
    return 1 if failed else 0


def cmd_notebooks(args: argparse.Namespace) -> int:
    from .runner import notebook_paths, refresh_notebooks

    if args.action == "list":
        for path in notebook_paths(args.names or None):
            print(path.name)
    else:
        refresh_notebooks(args.names or None)
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``error: ...``) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {one_line(f'{self.prog}: {message}')} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m medsam_lib",
                                     description="MedSAM companion: segment, manage weights and data, rerun the notebooks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    seg = sub.add_parser("segment", help="segment one box in a 2D image or one slice of a volume")
    seg.add_argument("--image", required=True, help="PNG/JPEG/TIFF/GIF, NIfTI, NRRD, or a DICOM folder")
    seg.add_argument("--box", required=True, type=_parse_box, help="x0,y0,x1,y1 in original pixels")
    seg.add_argument("--profile", help="take --model and --device from a profile (medsam_lib/profiles/NAME.json)")
    seg.add_argument("--model", help="model name or checkpoint path (default litemedsam)")
    seg.add_argument("--slice", type=int, default=None, help="slice index along the volume's first array axis "
                                                             "(default: the middle slice)")
    seg.add_argument("--modality", default=None, help="CT, MR, ... (chooses the intensity preset for non-8-bit "
                                                      "input; DICOM's Modality tag when omitted)")
    seg.add_argument("--device", help="auto (default: cuda when available), cpu, cuda, cuda:N or mps")
    seg.add_argument("--runtime", default="auto", help="the encoder's runtime: auto (default: OpenVINO for LiteMedSAM "
                                                       "on the CPU), torch, openvino or onnxruntime")
    seg.add_argument("--out", required=True, help="mask path (lossless): .png/.tif for 2D, .nii.gz/.nrrd/.mha keep "
                                                  "volume geometry; never one of the inputs")
    seg.set_defaults(func=cmd_segment)

    w = sub.add_parser("weights", help="list, locate or fetch model weights")
    w.add_argument("action", choices=["list", "fetch", "path"])
    w.add_argument("name", nargs="?")
    w.add_argument("--force", action="store_true", help="download again even if a verified file exists")
    w.set_defaults(func=cmd_weights)

    run = sub.add_parser("run", help="execute the numbered notebooks of a profile with papermill")
    run.add_argument("--profile", default="demo")
    run.add_argument("--only", nargs="*", default=None, help="notebook name prefixes to run (default: all)")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", dest="resume", action="store_true", default=True,
                       help="the default: skip notebooks that already ran successfully with the same inputs "
                            "(after a crash or kill -9, the rest run again)")
    again.add_argument("--fresh", dest="resume", action="store_false", help="run every notebook again")
    run.set_defaults(func=cmd_run)

    nbs = sub.add_parser("notebooks", help="execute notebooks in place so their committed outputs are current")
    nbs.add_argument("action", choices=["refresh", "list"])
    nbs.add_argument("names", nargs="*", help="notebook name prefixes (default: all)")
    nbs.set_defaults(func=cmd_notebooks)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not exc.name or not (name == exc.name or name.startswith(exc.name + ".")):
                raise  # a module that exists but fails to import is a bug, not a missing command
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if os.environ.get("MEDSAM_DEBUG"):
        return args.func(args)
    try:
        return args.func(args)
    except MedSAMError as exc:  # the one place an error line is printed: always one line, bounded
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, not a traceback
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: {type(exc).__name__}: {one_line(first, 500)} (set MEDSAM_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1
