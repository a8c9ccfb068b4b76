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
    if not args.config:
        from ..fileio import MedSAMError

        raise MedSAMError("train needs --config FILE (a .toml or .yaml file; --help-config lists its keys)")
    cfg = load_config(args.config)
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
    p.add_argument("--resume", action="store_true",
                   help="continue the run in `out` from last.pt (or return it when finished); starts fresh "
                        "when `out` has no last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--help-config", action="store_true", help="print every config key and exit")
    p.set_defaults(func=cmd_train)
