"""``python -m medsam_lib evaluate``: DSC/NSD of one pair, or of a model on a curated store.

    evaluate --pred P --gt G [--spacing sx,sy[,sz]] [--tolerance-mm 1] [--nsd-2d true|unit_axis]
        prints one JSON object {"dsc", "nsd", ...}. Spacing comes from the files where they carry it
        (NIfTI, NRRD, DICOM, ...; 2D images count 1 mm per pixel unless their format says otherwise);
        ``--spacing`` is in x, y[, z] order, as file headers and SimpleITK give it, and overrides.
    evaluate --curated DIR --model NAME --out DIR [--split test|train|all] [--embeddings DIR]
             [--protocol gt|propagate] [--test-boxes tight|jittered | --box-margin PX --box-jitter PX]
             [--seed S]
             [--nsd-spacing physical|unit] [--slices curated|volume --source-root DIR]
             [--nsd-2d true|unit_axis] [--tolerance-mm 1] [--overwrite] [--prompts FILE]
        writes DIR/metrics.csv (one row per case and target), DIR/evaluation.json and DIR/prompts.json
        (the exact prompts used, ``medsam_lib.evaluation.pinned``). ``--prompts FILE`` replays such a
        file (its boxes and points, and its box options) instead of deriving boxes from the ground truth.
    tables --profile NAME --readme README.md [--tables DIR]
        renders the profile's Tables 1-2 (results/NAME/tables/tables_1_2*.csv, both test-box protocols)
        into README.md between <!-- results:NAME:begin --> and <!-- results:NAME:end -->
        (``medsam_lib.evaluation.readme``).
Defaults are the paper's reading; the released code's are the named alternatives (see
``medsam_lib.evaluation.options``).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..fileio import MedSAMError, quote
from ..paper import NSD_TOLERANCE_MM
from .options import TEST_BOXES


def _parse_spacing(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--spacing needs numbers sx,sy[,sz], got {quote(text)}") from None
    if len(values) not in (2, 3):
        raise argparse.ArgumentTypeError(f"--spacing needs 2 or 3 numbers (x,y[,z]), got {quote(text)}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"--spacing values must be finite and > 0 mm, got {quote(text)}")
    from .metrics import SPACING_RANGE_MM

    low, high = SPACING_RANGE_MM
    if not all(low <= v <= high for v in values):
        raise argparse.ArgumentTypeError(f"--spacing values must be {low:g} .. {high:g} mm, got {quote(text)}")
    return values


def _read_binary(path: str):
    from ..data.readers import read_mask
    from .metrics import as_binary

    p = Path(path)
    if not p.exists():
        raise MedSAMError(f"{p}: no such file or folder")
    mask = read_mask(p)
    array = mask.array
    if array.ndim == 4 or (array.ndim == 3 and not mask.is_volume):
        raise MedSAMError(f"{p}: {array.ndim}D array of shape {array.shape}; give a 2D mask or a 3D volume")
    return as_binary(array, str(p)), mask


def cmd_pair(args: argparse.Namespace) -> int:
    from ..data.grid import grid_problem
    from .metrics import check_spacing, score, spacing_from_xyz

    pred, pred_img = _read_binary(args.pred)
    gt, gt_img = _read_binary(args.gt)
    if pred.shape != gt.shape:
        raise MedSAMError(f"{args.pred}: shape {pred.shape} differs from {args.gt}'s {gt.shape} (array order)")
    problem = grid_problem(pred_img, gt_img, f"{args.gt}'s", spacing=args.spacing is None)
    if problem:  # the one grid rule (data/grid.py): shape, spacing, origin, direction
        hint = ", or pass --spacing to score on one grid" if problem.startswith("spacing") else ""
        raise MedSAMError(f"{args.pred}: not on the grid of {args.gt}: {problem}; resample one onto the other{hint}")
    if args.spacing is not None:
        if len(args.spacing) != gt.ndim:
            raise MedSAMError(f"--spacing has {len(args.spacing)} values for {args.gt}, a {gt.ndim}D mask")
        spacing, source = spacing_from_xyz(args.spacing), "--spacing (x, y[, z], reversed to array order)"
    else:
        sp_gt = tuple(gt_img.spacing)
        if len(sp_gt) != gt.ndim:
            sp_gt = sp_gt[-gt.ndim:]
        spacing, source = sp_gt, "files"
    spacing = check_spacing(spacing, gt.ndim, f"{args.gt} spacing")
    values = score(pred, gt, spacing, args.tolerance_mm, args.nsd_2d)
    print(json.dumps({"dsc": values["dsc"], "nsd": values["nsd"], "tolerance_mm": args.tolerance_mm,
                      "spacing_array_order": list(spacing), "spacing_from": source, "shape": list(gt.shape),
                      "nsd_2d": args.nsd_2d if gt.ndim == 2 else None}))
    return 0


def _open_embeddings(path: str | None, model: str, curated: str):
    """The --embeddings store, bound to --model and --curated (refused when made from others)."""
    if path is None:
        return None
    try:
        from ..embeddings import open_store
    except ImportError as exc:
        raise MedSAMError(f"{path}: this installation has no embedding store support ({exc})") from exc
    try:
        return open_store(path, model=model, curated=curated)
    except MedSAMError as exc:
        raise MedSAMError(f"--embeddings {path}: {exc}") from None


def cmd_curated(args: argparse.Namespace) -> int:
    from .options import EvalOptions
    from .run import evaluate_store

    if not args.out:
        raise MedSAMError("evaluate --curated needs --out DIR (where metrics.csv goes)")
    if args.slices == "volume" and not args.source_root:
        raise MedSAMError("--slices volume needs --source-root DIR (the data the store was curated from)")
    prompts = None
    if args.prompts:
        given = [flag for flag, value in (("--protocol", args.protocol), ("--box-margin", args.box_margin),
                                          ("--box-jitter", args.box_jitter), ("--test-boxes", args.test_boxes))
                 if value is not None]
        if given:
            raise MedSAMError(f"--prompts {args.prompts} replays the file's boxes; {', '.join(given)} would make "
                              "others: drop them")
        from .pinned import read_prompts

        prompts = read_prompts(args.prompts)  # a bad file fails here, before any model is loaded
    options = EvalOptions(protocol=args.protocol or "gt",
                          box_margin=0.0 if args.box_margin is None else args.box_margin,
                          box_jitter=0 if args.box_jitter is None else args.box_jitter,
                          test_boxes=args.test_boxes or "", seed=args.seed, nsd_spacing=args.nsd_spacing, slices=args.slices, nsd_2d=args.nsd_2d,
                          tolerance_mm=args.tolerance_mm, split=args.split)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MedSAMError(f"{out}: exists and is not a folder; --out names a folder")
    from ..data.store import CuratedDataset

    curated = CuratedDataset(args.curated)
    frame = evaluate_store(curated, args.model, out, options, _open_embeddings(args.embeddings, args.model, curated),
                           device=args.device, source_root=args.source_root, overwrite=args.overwrite, prompts=prompts)
    summary = frame.groupby("dimensionality")[["dsc", "nsd"]].mean()
    for dim, r in summary.iterrows():
        print(f"{dim}: mean DSC {r['dsc']:.4f}  NSD {r['nsd']:.4f}")
    print(f"{len(frame)} targets -> {out / 'metrics.csv'}")
    return 0


def _from_profile(profile) -> dict:
    layout = profile.layout
    return {"curated": str(layout.curated()), "model": profile.model, "seed": profile.seed,
            "embeddings": str(layout.embeddings(profile.model)), "out": str(layout.evaluation(profile.model)),
            "device": profile.device}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..profile import fill_options

    if getattr(args, "prompts", None) and (args.profile or not args.curated):
        raise MedSAMError(f"--prompts {args.prompts} replays prompts on a curated store: give --curated DIR --model "
                          "NAME --out DIR (not --profile, whose results folder holds the profile's own evaluation)")
    if fill_options(args, "evaluate", _from_profile, {"seed": 0, "device": "auto"}) is not None and not Path(args.embeddings).is_dir():
        args.embeddings = None  # no embedding store yet (notebook 03 / `embed --profile`): encode here
    if args.tolerance_mm is None or not (math.isfinite(args.tolerance_mm) and args.tolerance_mm > 0):
        raise MedSAMError(f"--tolerance-mm {args.tolerance_mm} must be a number > 0")
    from .metrics import TOLERANCE_MAX_MM

    if args.tolerance_mm > TOLERANCE_MAX_MM:
        raise MedSAMError(f"--tolerance-mm {args.tolerance_mm:g} is beyond {TOLERANCE_MAX_MM:g} mm; give the NSD "
                          "tolerance in mm (the paper uses 1)")
    if (args.pred or args.gt) and args.curated:
        raise MedSAMError("give either --pred/--gt (one pair) or --curated (a store), not both")
    if args.curated:
        if not args.model:
            raise MedSAMError("evaluate --curated needs --model NAME (e.g. litemedsam, or a checkpoint path)")
        return cmd_curated(args)
    if not (args.pred and args.gt):
        raise MedSAMError("evaluate needs --pred PATH --gt PATH, or --curated DIR --model NAME --out DIR")
    return cmd_pair(args)


def cmd_tables(args: argparse.Namespace) -> int:
    from ..profile import load_profile
    from .readme import update_readme

    profile = load_profile(args.profile)  # only read: nothing is written into its results folder
    tables_dir = Path(args.tables) if args.tables else profile.layout.tables
    path = update_readme(args.readme, tables_dir, profile.name)
    print(f"{path}: results:{profile.name} section rendered from {tables_dir}")
    return 0


def register(subparsers) -> None:
    t = subparsers.add_parser("tables", help="render a profile's Tables 1-2 into a README's results section")
    t.add_argument("--profile", required=True, help="profile whose tables (results/NAME/tables) are rendered")
    t.add_argument("--readme", required=True, help="the Markdown file with <!-- results:NAME:begin/end --> markers")
    t.add_argument("--tables", default=None, help="folder of tables_1_2*.csv (default: the profile's tables folder)")
    t.set_defaults(func=cmd_tables)

    p = subparsers.add_parser("evaluate", help="DSC and NSD of a mask pair, or of a model on a curated store")
    p.add_argument("--pred", help="predicted mask (2D image or 3D volume, 0/1)")
    p.add_argument("--gt", help="ground-truth mask, same shape")
    p.add_argument("--spacing", type=_parse_spacing, default=None,
                   help="sx,sy[,sz] in mm, x first as in file headers (default: from the files)")
    p.add_argument("--tolerance-mm", type=float, default=NSD_TOLERANCE_MM, help="NSD tolerance (paper 3.3: 1 mm)")
    p.add_argument("--nsd-2d", choices=["true", "unit_axis"], default="true",
                   help="2D NSD: true contour NSD (default) or the released LiteMedSAM unit-axis slab")
    p.add_argument("--profile", help="a profile (medsam_lib/profiles/NAME.json): sets --curated, --model, "
                   "--embeddings, --seed, --device and --out under results/NAME")
    p.add_argument("--curated", help="a curated store (python -m medsam_lib data curate)")
    p.add_argument("--model", help="model name or checkpoint path")
    p.add_argument("--embeddings", default=None, help="an embedding store of the same model (skips the encoder)")
    p.add_argument("--split", choices=["test", "train", "all"], default="test")
    p.add_argument("--protocol", choices=["gt", "propagate"], default=None,
                   help="gt (default): a GT box on every slice (paper); propagate: GT box on the middle slice only")
    p.add_argument("--box-margin", type=float, default=None,
                   help="px added to each side of the box (256 scale; default 0)")
    p.add_argument("--box-jitter", type=int, default=None, help="random 0..PX added to each side (seeded; default 0)")
    p.add_argument("--test-boxes", choices=list(TEST_BOXES), default=None,
                   help="named test boxes: tight (paper) or jittered (v1 tutorial: each side out by 0-19 px, seeded)")
    p.add_argument("--seed", type=int, default=None, help="seed of the box jitter (default 0)")
    p.add_argument("--nsd-spacing", choices=["physical", "unit"], default="physical",
                   help="physical: mm on the curated grid (paper); unit: 1 voxel per axis (released code)")
    p.add_argument("--slices", choices=["curated", "volume"], default="curated",
                   help="GT slices counted: those curation kept (default) or every slice of the source volume")
    p.add_argument("--source-root", default=None, help="data root the store was curated from (--slices volume)")
    p.add_argument("--device", help="auto (default: cuda when available), cpu, cuda, cuda:N or mps")
    p.add_argument("--out", help="folder for metrics.csv and evaluation.json")
    p.add_argument("--overwrite", action="store_true", help="replace results of another model in --out")
    p.add_argument("--prompts", default=None,
                   help="a prompts.json an evaluation wrote: replay its exact boxes (and points) instead of boxes "
                        "from the ground truth; the rows' box options (protocol, test boxes, seed) are the file's")
    p.set_defaults(func=cmd_evaluate)
