"""The bad-input contract as one reusable check, for the table-driven suite (tests/test_bad_inputs.py).

A row is a ``BadInput``: ``build(tmp, ctx)`` makes the inputs under ``tmp`` and returns the CLI
arguments (without ``python -m medsam_lib``); ``expect`` are substrings the error line must hold
(name the file or option, and the problem). ``check_bad_input(row, tmp, capfd, ctx)`` then asserts
the contract of every user error:
- exit code 2 and exactly one ``error:`` line on stderr (only progress bars before it), no
  traceback, no ITK ``WARNING`` lines;
- nothing written and nothing changed: every file under ``tmp`` (inputs, an existing store, ...)
  has the same bytes after as before, and no file or folder appeared (no output, no temp file);
- by default the model is never loaded (a check that must fail before model loading does).

Rows run in-process through ``medsam_lib.cli.main`` (fast); ``subprocess=True`` runs
``python -m medsam_lib`` with a timeout instead (end-to-end checks). In-process, every named pipe
under ``tmp`` is watched: if the command opens one for reading (where it would block forever), a
watcher thread unblocks it and the row fails ("opened the named pipe").
Commands added later (embed, train, evaluate) have their cheap rows in the same table (group 7);
their own test files call ``check_bad_input`` for rows that need a real model or store.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BadInput:
    name: str
    build: Callable[[Path, Any], list[str]]
    expect: tuple[str, ...]
    subprocess: bool = False  # run `python -m medsam_lib` (with `timeout`) instead of cli.main in-process
    timeout: float = 90.0
    model_allowed: bool = False  # the failure can only be found by reading the checkpoint
    ignore: tuple[str, ...] = ()  # relative path prefixes under tmp allowed to change (e.g. resumable work)

    def __str__(self) -> str:
        return self.name


class ModelLoaded(BaseException):
    """Raised if a row that must fail before model loading loads a model (BaseException: the CLI's
    catch-all cannot turn it into an exit code)."""


def snapshot(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """Relative path -> content hash (files), kind (folders, pipes, sockets) or link target."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if any(rel == i or rel.startswith(i.rstrip("/") + "/") for i in ignore):
                continue
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                state[rel] = f"link -> {os.readlink(path)}"
            elif stat.S_ISREG(mode):
                state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISDIR(mode):
                state[rel] = "folder"
            else:
                state[rel] = f"special {stat.S_IFMT(mode)}"
    return state


def run_cli(argv: list[str], capfd=None, use_subprocess: bool = False, timeout: float = 90.0,
            forbid_model: bool = False, cwd: Path | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``python -m medsam_lib *argv``."""
    if use_subprocess:
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env.pop("MEDSAM_DEBUG", None)
        done = subprocess.run([sys.executable, "-m", "medsam_lib", *argv], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=cwd)
        return done.returncode, done.stdout, done.stderr
    from medsam_lib import cli
    from medsam_lib.models import predictor, zoo

    def refuse(*args, **kwargs):
        raise ModelLoaded(f"the model was loaded ({args}) although the input check must fail first")

    saved = zoo.load_model, predictor.load_model
    if forbid_model:
        zoo.load_model = predictor.load_model = refuse
    old_debug = os.environ.pop("MEDSAM_DEBUG", None)
    try:
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    finally:
        zoo.load_model, predictor.load_model = saved
        if old_debug is not None:
            os.environ["MEDSAM_DEBUG"] = old_debug
    captured = capfd.readouterr()
    return code, captured.out, captured.err


class FifoWatch:
    """Unblocks (and records) any reader that opens one of ``fifos`` while the watch runs."""

    def __init__(self, fifos: list[Path]):
        self.fifos, self.opened, self._stop = fifos, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            for fifo in self.fifos:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while someone reads it
                except OSError:
                    continue
                self.opened.append(fifo.name)
                os.close(fd)  # the reader sees end-of-file instead of waiting forever

    def __enter__(self):
        if self.fifos:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.fifos:
            self._thread.join()


def check_bad_input(row: BadInput, tmp: Path, capfd, ctx: Any = None) -> str:
    """Build the row's inputs, run it, assert the bad-input contract; returns the error line."""
    argv = row.build(tmp, ctx)
    capfd.readouterr()  # whatever building printed
    before = snapshot(tmp, row.ignore)
    fifos = [tmp / rel for rel, kind in before.items() if kind == f"special {stat.S_IFIFO}"]
    with FifoWatch([] if row.subprocess else fifos) as watch:
        code, out, err = run_cli(argv, capfd, row.subprocess, row.timeout, forbid_model=not row.model_allowed)
    shown = f"{row.name}: argv={argv}\nstdout={out!r}\nstderr={err!r}"
    assert not watch.opened, f"opened the named pipe(s) {watch.opened} (would block forever). {shown}"
    assert code == 2, shown
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, shown
    before_error = err[: err.index("error:")] if errors else err
    assert all(not part.strip() or "|" in part for part in re.split(r"[\r\n]", before_error)), shown  # only progress bars
    assert "Traceback" not in err + out and "WARNING" not in err, shown
    assert "MEDSAM_DEBUG" not in err, f"reached the CLI's catch-all: {shown}"
    message = err[err.index("error:"):]
    for part in row.expect:
        assert part in message, f"{part!r} missing from the error. {shown}"
    after = snapshot(tmp, row.ignore)
    appeared = sorted(set(after) - set(before))
    vanished = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (appeared or vanished or changed), (f"{row.name} changed files: appeared {appeared}, "
                                                   f"vanished {vanished}, changed {changed}. {shown}")
    return message


def write_manifest(tmp: Path, name: str, cases: list[str], file: str | None = None, dataset: str | None = None) -> Path:
    """A 2D manifest over images/<case>.png and masks/<case>.png beside it (the caller writes those)."""
    data = {
        "schema_version": 1, "name": name, "description": "bad-input test data",
        "data_root": {"kind": "relative_to_manifest", "path": "."},
        "obtain": {"method": "local", "source_url": "generated in the test"},
        "datasets": [{"name": dataset or name, "title": "t", "modality": "Ultrasound", "dimensionality": "2D",
                      "citation": "c", "license": {"name": "n", "terms": "t"},
                      "images": [{"key": "image", "modality": "Ultrasound"}],
                      "masks": [{"key": "label", "encoding": "binary", "threshold": 0}],
                      "targets": [{"name": "lesion", "labels": [1]}],
                      "cases": [{"id": c, "images": {"image": f"images/{c}.png"}, "masks": {"label": f"masks/{c}.png"}}
                                for c in cases]}]}
    path = tmp / (file or f"{name}.json")
    path.write_text(json.dumps(data))
    return path


def run_row(row: "BadInput", tmp_path: Path, capfd, ctx) -> str:
    """One table row in a fresh work folder (``tmp_path/w``): ``check_bad_input``'s error line."""
    work = tmp_path / "w"
    work.mkdir()
    message = check_bad_input(row, work, capfd, ctx)
    assert not (work / "PWNED").exists()  # no pickled or profile code ran
    return message


def write_dicom_series(folder: Path, positions, sizes: dict | None = None, orientations: dict | None = None) -> Path:
    """A CT series, one 16 x 16 slice (``sizes[i]`` overrides) at each of ``positions`` (x, y, z in mm),
    orientation 1\\0\\0\\0\\1\\0 (``orientations[i]`` overrides), one series UID, files s0.dcm, s1.dcm, ..."""
    import time

    import numpy as np
    import SimpleITK as sitk

    folder.mkdir()
    uid = f"1.2.826.0.1.3680043.2.1125.{os.getpid()}.{time.time_ns() % 10**9}"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i, position in enumerate(positions):
        size = (sizes or {}).get(i, 16)
        plane = sitk.GetImageFromArray(np.random.default_rng(i).integers(0, 1000, (size, size)).astype(np.int16))
        for key, value in (("0008|0060", "CT"), ("0020|000e", uid),
                           ("0020|0032", "\\".join(f"{x:.1f}" for x in position)), ("0020|0013", str(i + 1)),
                           ("0020|0037", (orientations or {}).get(i, "1\\0\\0\\0\\1\\0")),
                           ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"), ("0008|0018", f"{uid}.{i}")):
            plane.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"s{i}.dcm"))
        writer.Execute(plane)
    return folder
