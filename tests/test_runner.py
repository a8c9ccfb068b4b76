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
    again = runner.run_profile("demo", resume=True)
    assert all(nb.get("skipped") for nb in again["notebooks"])


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
