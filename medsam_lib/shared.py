"""Where the project's real test cases live: ``../shared/data`` beside the repository.

``MEDSAM_SHARED_DIR`` overrides the location. The folder is never copied into the repository.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    env = os.environ.get("MEDSAM_SHARED_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def shared_data_dir() -> Path:
    return shared_dir() / "data"
