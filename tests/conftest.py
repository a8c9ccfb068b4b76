"""Shared fixtures. Tests that need ../shared/data skip when it is absent, and fail instead when
MEDSAM_REQUIRE_SHARED=1 (as .ci/run sets)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from medsam_lib.shared import shared_data_dir


def _require_shared() -> bool:
    return os.environ.get("MEDSAM_REQUIRE_SHARED") == "1"


@pytest.fixture(autouse=True)
def _user_dir(tmp_path_factory, monkeypatch):
    """Interactive outputs (the widget's autosaves) go to a temporary user folder, never ~."""
    monkeypatch.setenv("MEDSAM_USER_DIR", str(tmp_path_factory.getbasetemp() / "user"))


def _shared_folder(path: Path, what: str) -> Path:
    """``path`` if it is a folder; else skip, or fail under MEDSAM_REQUIRE_SHARED=1."""
    if not path.is_dir():
        message = f"{what} not found at {path} (set MEDSAM_SHARED_DIR or place ../shared beside the repo)"
        if _require_shared():
            pytest.fail(message + "; MEDSAM_REQUIRE_SHARED=1 makes this a failure")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _shared_folder(shared_data_dir(), "real cases")


@pytest.fixture(scope="session")
def shared_cohorts() -> Path:
    """``<shared>/cohorts``, the real cohorts of issue 20 (skipped or failed as ``shared_data``)."""
    from medsam_lib.shared import shared_dir

    return _shared_folder(shared_dir() / "cohorts", "real cohorts")


@pytest.fixture(scope="session")
def lite_model():
    """LiteMedSAM loaded once per test session (CPU)."""
    from medsam_lib.models.zoo import load_model

    return load_model("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests save screenshots and other artefacts (ignored by git)."""
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def demo_results() -> Path:
    """``results/demo`` as notebooks 02 and 03 leave it: the phantoms' paper-preset curated store and its
    LiteMedSAM embedding store, made by the calls those notebooks make. pytest runs tests/ before
    notebooks/, so nbval's 02 and 03 then reuse both (every step reuses a finished result keyed by
    its inputs) instead of computing them twice; after ``make reproduce`` this reuses them too.
    Tests read them; anything that writes works on a copy or in its own folder."""
    from medsam_lib.data.curate import curate_profile
    from medsam_lib.embeddings import build_store
    from medsam_lib.profile import open_profile

    prof = open_profile("demo")
    curated = curate_profile(prof, preset="paper")
    build_store(curated, prof.model, prof.layout.embeddings(prof.model, "paper"), dtype="float16",
                batch_size=8, device=prof.device, progress=False)
    return prof.results_dir
