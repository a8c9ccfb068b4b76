"""Where a run's outputs go: one layout for every notebook and command under ``results/<profile>/``.

    layout = ResultsLayout(results_dir)      # e.g. results/demo
    layout.synthetic_data                    # the generated phantom set
    layout.curated("paper")                  # curated store of a preset
    layout.embeddings("litemedsam")          # embedding store of a model on the paper-preset store
    layout.training("decoder")               # a fine-tuning run (last.pt, best.pt, metrics.csv)
    layout.evaluation("litemedsam")          # per-target metrics of one model
    layout.tables, layout.figures            # every notebook's tables (CSV) and figures (PNG)
    layout.exports                           # masks a notebook's reproducible run exports (07)

Interactive work (the widget's autosaves and exports) never goes here: see ``user_dir``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .shared import REPO_ROOT


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "unnamed"


@dataclass(frozen=True)
class ResultsLayout:
    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @property
    def synthetic_data(self) -> Path:
        return self.root / "data" / "synthetic"

    def curated(self, preset: str = "paper") -> Path:
        return self.root / ("curated" if preset == "paper" else f"curated_{preset}")

    def embeddings(self, model: str, preset: str = "paper") -> Path:
        suffix = "" if preset == "paper" else f"_{preset}"
        return self.root / "embeddings" / f"{_slug(Path(str(model)).stem if os.sep in str(model) else model)}{suffix}"

    def training(self, run: str = "decoder") -> Path:
        return self.root / "training" / _slug(run)

    def evaluation(self, name: str) -> Path:
        return self.root / "evaluation" / _slug(name)

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def exports(self) -> Path:
        return self.root / "exports"


def user_dir() -> Path:
    """A folder of the user's for interactive outputs: ``$MEDSAM_USER_DIR``, else ``~/medsam_annotations``."""
    env = os.environ.get("MEDSAM_USER_DIR")
    return Path(env) if env else Path.home() / "medsam_annotations"


def shown(path: str | os.PathLike) -> str:
    """``path`` as a reader sees it: relative to the repository when inside it (outputs committed with
    the notebooks hold no machine's absolute paths)."""
    path = Path(path)
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)
