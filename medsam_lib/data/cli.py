"""``python -m medsam_lib data {list,show,validate,fetch,curate,init}``."""
from __future__ import annotations

import argparse

from ..fileio import MedSAMError


def cmd_list(args: argparse.Namespace) -> int:
    from .manifests import list_manifests, load_manifest

    for path in list_manifests():
        m = load_manifest(path)
        tasks = sorted({task for ds in m.datasets for t in ds.targets for task in t.paper_tasks.values()})
        print(f"{m.name:24s} {m.obtain['method']:9s} {len(m.datasets)} data set(s); paper tasks: "
              f"{', '.join(tasks) if tasks else '-'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .manifests import load_manifest, resolve_root

    m = load_manifest(args.name)
    print(f"{m.name}: {m.description}")
    obtain = m.obtain
    print(f"obtain: {obtain['method']} from {obtain['source_url']}")
    for f in m.files:
        sums = ", ".join(f"{k} {v}" for k, v in f.checksums.items()) or "no published checksum"
        print(f"  {f.file_name}: {f.url} ({f.size if f.size else 'size not published'} bytes; {sums})")
    if "checksums_verified" in obtain:
        print(f"  checksums verified by the manifest's author: {obtain['checksums_verified']}")
    for step in obtain.get("manual_steps", []):
        print(f"  step: {step}")
    for line in obtain.get("layout", []):
        print(f"  layout: {line}")
    try:
        print(f"data root: {resolve_root(m)}")
    except MedSAMError as exc:
        print(f"data root: {exc}")
    for ds in m.datasets:
        print(f"- {ds.name} ({ds.dimensionality}, {ds.modality}): {ds.title}\n  licence: {ds.raw['license']['name']}")
        for t in ds.targets:
            tasks = ", ".join(f"{k} -> {v}" for k, v in t.paper_tasks.items())
            print(f"    {t.name}: labels {list(t.labels)}{' (instances)' if t.instance else ''}"
                  f"{'; ' + tasks if tasks else ''}{' [stand-in]' if t.stand_in else ''}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .manifests import load_manifest

    for name in args.manifests:
        m = load_manifest(name)
        print(f"{m.path}: valid ({len(m.datasets)} data set(s))")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from .fetch import fetch

    root = fetch(args.name, root=args.root, force=args.force)
    print(f"{args.name}: files in {root}")
    return 0


def cmd_curate(args: argparse.Namespace) -> int:
    from ..fileio import MedSAMError
    from .curate import curate

    if args.profile is not None:
        given = [flag for flag, value in (("--manifest", args.manifest), ("--out", args.out), ("--root", args.root),
                                          ("--seed", args.seed), ("--dataset", args.dataset)) if value is not None]
        if given:
            raise MedSAMError(f"data curate --profile {args.profile} decides {', '.join(given)} itself; drop them, "
                              "or curate a manifest with --manifest and --out instead")
        from ..profile import open_profile
        from .curate import curate_profile

        store = curate_profile(open_profile(args.profile), preset=args.preset, progress=True)
        print(f"profile {args.profile}: {len(store.index)} targets curated in {store.path}")
        return 0
    if not (args.manifest and args.out):
        raise MedSAMError("data curate needs --manifest NAME and --out DIR, or --profile NAME")
    seed = 0 if args.seed is None else args.seed
    report = curate(args.manifest, args.out, preset=args.preset, root=args.root, seed=seed, datasets=args.dataset, keep_going=args.keep_going)
    print(report.summary())
    return 1 if report.failed else 0


def cmd_init(args: argparse.Namespace) -> int:
    from .byod import init_manifest

    path, problems = init_manifest(args.images, args.masks, args.modality, args.out, name=args.name,
                                   labels=args.labels, mask_suffix=args.mask_suffix,
                                   skip_unpaired=args.skip_unpaired)
    for problem in problems:
        print(f"skipped: {problem}")
    print(f"wrote {path}; next: python -m medsam_lib data curate --manifest {path} --out DIR")
    return 0


def register(subparsers) -> None:
    from .preprocess import PRESETS

    data = subparsers.add_parser("data", help="data-set manifests: list, show, fetch, curate, bring your own")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("list", help="the manifests in data_manifests/ and the paper tasks they cover")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="how to obtain a data set, its licence, targets and task mapping")
    p.add_argument("name", help="manifest name (data_manifests/NAME.json) or path")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("validate", help="check manifest files against the schema and the cross-field rules")
    p.add_argument("manifests", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("fetch", help="download and safely unpack a direct-download data set")
    p.add_argument("name", help="manifest name or path")
    p.add_argument("--root", default=None, help="data root (default: $MEDSAM_DATA_DIR/NAME or the cache folder)")
    p.add_argument("--force", action="store_true", help="download again even if a finished download is recorded")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("curate", help="curate a manifest's cases into 256x256 slices + index.csv (paper 3.1-3.2)")
    p.add_argument("--profile", help="curate a profile's data into results/NAME/curated (as notebook 02 does)")
    p.add_argument("--manifest", help="manifest name or path")
    p.add_argument("--preset", default="paper", choices=PRESETS,
                   help="paper (default: the paper's 3.1 rules) or official_code (the released code's)")
    p.add_argument("--out", help="curated store folder (created; reruns resume)")
    p.add_argument("--root", default=None, help="data root the manifest's paths are relative to")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the split by case (paper 80/20 train/test, or the manifest's 'split'; default 0)")
    p.add_argument("--dataset", action="append", default=None, help="only this data set (repeatable)")
    p.add_argument("--keep-going", action="store_true", help="report a failing case and continue with the rest")
    p.set_defaults(func=cmd_curate)

    p = sub.add_parser("init", help="write a manifest for your own folder of image/mask pairs")
    p.add_argument("--images", required=True, help="folder of images (2D files or NIfTI/NRRD volumes)")
    p.add_argument("--masks", required=True, help="folder of masks / label maps with matching names")
    p.add_argument("--modality", required=True, help="CT, MR, PET, Ultrasound, X-Ray, Endoscope, ...")
    p.add_argument("--out", required=True, help="manifest file to write (.json)")
    p.add_argument("--name", default=None, help="data-set name (default: from the file name)")
    p.add_argument("--labels", default=None, help="label names, e.g. 1=liver,2=tumour")
    p.add_argument("--mask-suffix", default="", help="mask names end with this before the extension, e.g. _mask")
    p.add_argument("--skip-unpaired", action="store_true", help="write the good pairs and list the others")
    p.set_defaults(func=cmd_init)
