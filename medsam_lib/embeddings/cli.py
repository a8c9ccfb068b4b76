"""``python -m medsam_lib embed --curated DIR --model NAME --out DIR [--dtype] [--batch-size] [--device]``,
or ``python -m medsam_lib embed --profile NAME``: the profile's curated store, model, device and
embedding store folder (``results/<profile>/embeddings/<model>``), as notebook 03 builds it.

Also under torchrun: ``torchrun --nproc-per-node N -m medsam_lib embed ...`` (each rank takes a
disjoint set of chunks; rank 0 prints the summary).
"""
from __future__ import annotations

import argparse


def cmd_check(args: argparse.Namespace) -> int:
    from ..fileio import MedSAMError
    from .store import load_store

    header, markers, problems = load_store(args.out, verify="full")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MedSAMError(f"{problems[0]}{more}; rerun `python -m medsam_lib embed` with the store's --curated and "
                          "--model to recompute the damaged or missing chunks")
    print(f"{args.out}: {len(header['images'])} embeddings in {len(markers)} chunks, every chunk's SHA-256 verified")
    return 0


def _from_profile(profile) -> dict:
    return {"curated": str(profile.layout.curated()), "model": profile.model, "device": profile.device,
            "out": str(profile.layout.embeddings(profile.model))}


def cmd_embed(args: argparse.Namespace) -> int:
    from ..fileio import MedSAMError
    from ..profile import fill_options
    from .build import build_store

    fill_options(args, "embed", _from_profile, {"model": "litemedsam", "device": "auto"})
    if not args.out:
        raise MedSAMError("embed needs --out DIR (the embedding store folder), or --profile NAME")
    if args.check:
        return cmd_check(args)
    if not args.curated:
        raise MedSAMError("embed needs --curated DIR (the curated store to embed), or --check to verify --out")
    from .store import check_dtype

    try:  # the library's checks, here with the option they came from
        check_dtype(args.dtype)
    except MedSAMError as exc:
        raise MedSAMError(f"--dtype: {exc}") from None
    for option, value, what in (("--batch-size", args.batch_size, "batch size"),
                                ("--chunk-size", args.chunk_size, "chunk size")):
        if value is not None and value < 1:
            raise MedSAMError(f"{option}: {what} must be at least 1, got {value}")

    store = build_store(args.curated, args.model, args.out, dtype=args.dtype, batch_size=args.batch_size,
                        device=args.device, progress=not args.no_progress, vit_preprocess=args.vit_preprocess,
                        chunk_size=args.chunk_size, compile=args.compile)
    s = store.stats
    if s["rank"] == 0:
        speed = f"{s['images_per_s']:.2f} images/s" if s["images_per_s"] else "nothing to compute"
        print(f"{len(store)} images ({s['computed']} computed, {s['copied']} copied, {s['kept']} kept) with "
              f"{store.meta['model']} [{s['encoder'] or 'nothing encoded'}, batch {s['batch_size']}"
              f"{', ' + str(s['world_size']) + ' ranks' if s['world_size'] > 1 else ''}]: {speed}; "
              f"store {s['size_bytes'] / 2**20:.1f} MiB ({store.meta['dtype']}) at {store.path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("embed", help="precompute the image embeddings of a curated store (resumable)")
    p.add_argument("--profile", help="a profile (medsam_lib/profiles/NAME.json): sets --curated, --model, --device, --out")
    p.add_argument("--curated", help="curated store folder (from `data curate`)")
    p.add_argument("--model", help="model name or checkpoint path (default litemedsam)")
    p.add_argument("--out", help="embedding store folder (created; an existing one is resumed)")
    p.add_argument("--dtype", default="float16", help="float16 (default) or float32")
    p.add_argument("--batch-size", type=int, default=8, help="images per encoder call (default 8; halved on OOM)")
    p.add_argument("--device", help="auto (default: cuda when available), cpu, cuda, cuda:N or mps")
    p.add_argument("--vit-preprocess", default="paper", choices=["paper", "official_code"],
                   help="ViT-B input transform (models/transforms.py); LiteMedSAM has one")
    p.add_argument("--chunk-size", type=int, default=None, help="images per chunk file (new stores; default 16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the CUDA ViT-B encoder")
    p.add_argument("--check", action="store_true",
                   help="only verify --out: every chunk's size and SHA-256 (exit 2 naming a damaged file)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)
