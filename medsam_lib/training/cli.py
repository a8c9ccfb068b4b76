"""``python -m medsam_lib train --config FILE [--resume]`` (under torchrun: one call per rank)."""
from __future__ import annotations

import argparse
import os


def cmd_train(args: argparse.Namespace) -> int:
    from .config import describe_fields, load_config
    from .loop import train

    if args.help_config:
        print(describe_fields())
        return 0
    from ..fileio import MedSAMError

    if args.config and args.profile:
        raise MedSAMError("train takes --config FILE or --profile NAME, not both (a config names its own stores and out)")
    if args.profile:
        from ..profile import open_profile
        from .report import profile_config

        cfg = profile_config(open_profile(args.profile))  # the profile's stores, model, seed, device; defaults else
    elif args.config:
        cfg = load_config(args.config)
    else:
        raise MedSAMError("train needs --config FILE (a .toml or .yaml file; --help-config lists its keys) or "
                          "--profile NAME")
    result = train(cfg, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports for the run
    what = "reused the finished run in" if result.reused else "trained into"
    print(f"{what} {result.out}: {result.step} steps; best validation Dice {result.best_val_dice:.4f} at step "
          f"{result.best_step} ({result.out / 'best.pt'})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="fine-tune the mask decoder (paper) or encoder + decoder (full)",
                              description="Fine-tune a model as the config FILE says (TOML or YAML; keys: "
                                          "--help-config). Writes last.pt, best.pt, metrics.csv and config.toml "
                                          "into its `out`. Distributed: torchrun --nproc_per_node N -m medsam_lib "
                                          "train --config FILE.")
    p.add_argument("--config", help="training config (.toml, .yaml, .yml)")
    p.add_argument("--profile", help="train on a profile's curated and embedding stores into "
                   "results/NAME/training/decoder (the paper recipe's defaults: --help-config)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in `out` from last.pt (or return it when finished); starts fresh "
                        "when `out` has no last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--help-config", action="store_true", help="print every config key and exit")
    p.set_defaults(func=cmd_train)
