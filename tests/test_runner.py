"""The notebook runner: profiles, parameters, run record, resume, failure handling."""
from __future__ import annotations

import json

import nbformat
import pytest

from medsam_lib import runner
from medsam_lib.fileio import MedSAMError
from medsam_lib.profile import available_profiles, load_profile


def test_profiles_exist_and_the_notebooks_get_only_the_name():
    assert {"demo", "shared-real"} <= set(available_profiles())
    demo = load_profile("demo")
    assert demo.data_source == "synthetic" and demo.model == "litemedsam" and demo.results_dir.name == "demo"
    assert runner.profile_parameters(demo) == {"profile": "demo"}  # each notebook opens the profile itself
    assert load_profile("shared-real").data_source == "shared"


def test_unknown_profile():
    with pytest.raises(MedSAMError, match="unknown profile 'nope'"):
        load_profile("nope")


def test_unknown_notebook_prefix():
    with pytest.raises(MedSAMError, match="no notebook matches"):
        runner.notebook_paths(["99"])


def _tiny_chain(tmp_path, monkeypatch, fail: bool = False):
    nb_dir, res_dir = tmp_path / "notebooks", tmp_path / "results"
    nb_dir.mkdir()
    first = ("from medsam_lib.profile import open_profile\nprof = open_profile(profile)\n"
             "print(prof.name, prof.data_source, prof.seed * 2)")
    for name, body in [("00_first", first),
                       ("01_second", "raise RuntimeError('boom')" if fail else "print('second', profile)")]:
        nb = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell('profile = "x"')
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, nbformat.v4.new_code_cell(body)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, nb_dir / f"{name}.ipynb")
    monkeypatch.setattr(runner, "NOTEBOOKS_DIR", nb_dir)
    monkeypatch.setenv("MEDSAM_RESULTS_ROOT", str(res_dir))  # the kernels inherit it
    return res_dir / "demo"


@pytest.mark.slow
def test_run_record_and_resume(tmp_path, monkeypatch, capfd):
    out = _tiny_chain(tmp_path, monkeypatch)
    record = runner.run_profile("demo")
    printed = capfd.readouterr()
    # one progress bar and the result line; the kernels' own log (TCP warning) stays out of the terminal
    assert "without encryption" not in printed.err + printed.out and "[IPKernelApp]" not in printed.err
    assert "notebooks (demo)" in printed.err and "2/2 notebooks ok" in printed.out
    assert [nb["status"] for nb in record["notebooks"]] == ["ok", "ok"]
    saved = json.loads((out / "run_record.json").read_text(encoding="utf-8"))
    assert saved["packages"]["torch"] and saved["seeds"] == {"seed": 0}
    assert saved["parameters"] == {"profile": "demo"}
    assert saved["settings"] == {"profile": "demo", "data_source": "synthetic", "model": "litemedsam", "seed": 0,
                                 "device": "auto"}
    assert json.loads((out / "profile.json").read_text(encoding="utf-8"))["data_source"] == "synthetic"
    assert all(nb["wall_s"] > 0 and len(nb["sha256"]) == 64 for nb in saved["notebooks"])
    assert set(saved["inputs"]["notebooks"]) == {"00_first.ipynb", "01_second.ipynb"}
    assert len(saved["inputs"]["model"]["litemedsam"]) == 64
    executed = nbformat.read(out / "00_first.ipynb", as_version=4)
    assert "demo synthetic 0" in executed.cells[-1].outputs[0]["text"]  # the profile's parameters were injected
    # time per step: every code cell, labelled, timed by the runner as papermill times it
    assert saved["state"] == "ok" and saved["running"] is None and saved["finished"]
    first = saved["notebooks"][0]
    assert [c["label"] for c in first["cells"]] == ["(parameters)", "(injected parameters)",
                                                    "prof = open_profile(profile)"]
    assert [c["index"] for c in first["cells"]] == [0, 1, 2]
    for mine, cell in zip(first["cells"], executed.cells):
        assert abs(mine["wall_s"] - cell.metadata.papermill.duration) < 0.5
    assert "00_first.ipynb" in printed.out and "slowest cell" in printed.out  # the time table

    stale = out / ".01_second.ipynb.abc123.part.ipynb"  # as a run killed while writing it leaves
    stale.write_text("{", encoding="utf-8")
    again = runner.run_profile("demo", resume=True)
    assert all(nb.get("skipped") for nb in again["notebooks"]) and not stale.exists()
    assert again["removed_stale_files"] == [stale.name] and again["notebooks"][0]["cells"] == first["cells"]

    # --only: the other notebooks' entries are kept, unless a notebook before them ran again
    second = runner.NOTEBOOKS_DIR / "01_second.ipynb"
    nb = nbformat.read(second, as_version=4)
    nb.cells[-1].source = "print('second, edited', profile)"
    nbformat.write(nb, second)
    only = runner.run_profile("demo", only=["01"], resume=True)
    assert [(n["name"], n.get("skipped")) for n in only["notebooks"]] == [("00_first.ipynb", True),
                                                                            ("01_second.ipynb", None)]
    first_nb = runner.NOTEBOOKS_DIR / "00_first.ipynb"
    first_nb.write_text(first_nb.read_text(encoding="utf-8").replace("seed * 2", "seed * 3"), encoding="utf-8")
    only = runner.run_profile("demo", only=["00"], resume=True)
    assert [n["name"] for n in only["notebooks"]] == ["00_first.ipynb"]  # 01's entry is stale now: dropped
    chain = runner.run_profile("demo", resume=True)
    assert [n.get("skipped") for n in chain["notebooks"]] == [True, None]

    monkeypatch.setattr(runner, "_library_sha256", lambda: "other code")  # the library changed: run again
    rerun = runner.run_profile("demo", resume=True)
    assert not any(nb.get("skipped") for nb in rerun["notebooks"])
    fresh = runner.run_profile("demo", resume=False)
    assert not any(nb.get("skipped") for nb in fresh["notebooks"])


def test_cell_labels_and_time_table():
    assert runner.cell_label("# load\n\n  x  =   load(path)  \ny = 2") == "x = load(path)"
    assert runner.cell_label("import numpy as np\nfrom x import (a,\n    b)\n\nstore = build(a,  # why\n  b)\n") \
        == "store = build(a, # why"  # the first statement that is not an import, first line
    assert runner.cell_label("import numpy as np\nx = 1  # one") == "x = 1"  # its comment left out
    assert runner.cell_label("from a import b") == "from a import b"  # imports only: the first line
    assert runner.cell_label("%matplotlib inline\nx = 1") == "%matplotlib inline"
    assert runner.cell_label("# only a comment") == "(comments only)"
    assert runner.cell_label("a" * 80) == "a" * 57 + "..." and len(runner.cell_label("a" * 80)) == 60
    assert runner.cell_label('profile = "x"', tags=["parameters"]) == "(parameters)"
    notebooks = [
        {"name": "00_a.ipynb", "status": "ok", "skipped": True, "wall_s": 12.0,
         "cells": [{"label": "fast()", "wall_s": 1.0}, {"label": "slow()", "wall_s": 10.5}]},
        {"name": "01_b.ipynb", "status": "failed", "wall_s": 3.25, "cells": []}]
    lines = runner.time_table(notebooks).splitlines()
    assert lines[0].split() == ["notebook", "status", "wall", "slowest", "cell"]
    assert lines[1].split() == ["00_a.ipynb", "skipped", "12.0", "s", "(earlier)", "10.5", "s", "slow()"]
    assert lines[2].split() == ["01_b.ipynb", "failed", "3.2", "s"]


def test_data_fingerprint_follows_the_input_files(tmp_path):
    from types import SimpleNamespace

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "case.nii.gz").write_bytes(b"1234")
    real = SimpleNamespace(synthetic=False, data_root=tmp_path)
    before = runner._data_fingerprint(real)
    assert len(before) == 64 and runner._data_fingerprint(real) == before
    (tmp_path / "a" / "case.nii.gz").write_bytes(b"12345")  # a changed case: the notebooks run again
    assert runner._data_fingerprint(real) != before
    assert runner._data_fingerprint(SimpleNamespace(synthetic=True, data_root=tmp_path)) is None


def test_cli_resumes_by_default():
    from medsam_lib.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["run"]).resume is True
    assert parser.parse_args(["run", "--resume"]).resume is True
    assert parser.parse_args(["run", "--fresh", "--only", "00", "01"]).resume is False
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["run", "--fresh", "--resume"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_failed_notebook_stops_chain_and_is_kept(tmp_path, monkeypatch):
    out = _tiny_chain(tmp_path, monkeypatch, fail=True)
    record = runner.run_profile("demo")
    assert [nb["status"] for nb in record["notebooks"]] == ["ok", "failed"]
    assert "boom" in record["notebooks"][1]["error"]
    assert not (out / "01_second.ipynb").exists()  # no half-written executed notebook
    kept = nbformat.read(out / "01_second.failed.ipynb", as_version=4)  # kept for debugging
    assert "boom" in json.dumps(kept.cells[-1].outputs)
    assert not [p for p in out.iterdir() if ".part" in p.name]
    assert record["state"] == "failed" and record["notebooks"][1]["cells"][-1]["label"] == "raise RuntimeError('boom')"
