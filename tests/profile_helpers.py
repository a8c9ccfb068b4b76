"""A ``Profile`` whose results folder is a test's temporary folder."""
from __future__ import annotations

from pathlib import Path

from medsam_lib.profile import Profile


def profile_in(results_dir, data_source: str = "synthetic", seed: int = 0, model: str = "litemedsam",
               device: str = "cpu") -> Profile:
    """The settings of a profile with its results in ``results_dir`` (named after that folder)."""
    results_dir = Path(results_dir)
    return Profile(name=results_dir.name, description="test", data_source=data_source, model=model, seed=seed,
                   device=device, root=results_dir.parent)
