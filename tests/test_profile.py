"""One Profile from the parameters cell down (issue 17, item 1): the profile's JSON decides the data,
the results folder and the settings; a results folder records which settings wrote it and refuses
others in the notebook's first cell, before any work."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medsam_lib import profile as profile_module
from medsam_lib.fileio import MedSAMError
from medsam_lib.profile import load_profile, open_profile

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


@pytest.fixture
def profiles(tmp_path, monkeypatch):
    """The shipped profiles copied to a folder of the test's, results under tmp_path/results."""
    folder = tmp_path / "profiles"
    shutil.copytree(profile_module.PROFILES_DIR, folder)
    monkeypatch.setattr(profile_module, "PROFILES_DIR", folder)
    monkeypatch.setenv("MEDSAM_RESULTS_ROOT", str(tmp_path / "results"))
    return folder


def _edit(folder: Path, name: str, **settings) -> None:
    path = folder / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(settings)
    path.write_text(json.dumps(data))


def test_the_profile_decides_data_model_seed_and_results_folder(profiles, tmp_path):
    demo, real = load_profile("demo"), load_profile("shared-real")
    assert (demo.data_source, demo.model, demo.seed, demo.device) == ("synthetic", "litemedsam", 0, "auto")
    assert demo.results_dir == tmp_path / "results" / "demo" and demo.data_root == demo.layout.synthetic_data
    assert real.data_source == "shared" and real.results_dir == tmp_path / "results" / "shared-real"
    assert real.data_root == profile_module.shared_data_dir()
    assert "results/" in demo.describe() and str(tmp_path) not in profile_module.shown(REPO / "results" / "demo")


def test_a_results_folder_records_its_profile_and_refuses_other_settings(profiles, tmp_path):
    first = open_profile("demo")
    record = json.loads((first.results_dir / "profile.json").read_text(encoding="utf-8"))
    assert record == {"profile": "demo", "data_source": "synthetic", "model": "litemedsam", "seed": 0}
    open_profile("demo")  # the same settings: accepted again
    _edit(profiles, "demo", data_source="shared", seed=3)
    with pytest.raises(MedSAMError) as err:
        open_profile("demo")
    message = str(err.value)
    for part in ("results", "demo", "data_source='synthetic'", "seed=0", "data_source='shared'", "seed=3",
                 "profile.json", "medsam_lib/profiles/NEW.json", "python -m medsam_lib run --profile NEW"):
        assert part in message, part
    assert json.loads((first.results_dir / "profile.json").read_text(encoding="utf-8")) == record  # nothing rewritten
    _edit(profiles, "demo", data_source="synthetic", seed=0, device="cpu")
    assert open_profile("demo").device == "cpu"  # the device decides no result: not part of the record


def test_an_unreadable_record_is_refused_with_the_folder_named(profiles, tmp_path):
    folder = tmp_path / "results" / "demo"
    folder.mkdir(parents=True)
    (folder / "profile.json").write_text("{not json")
    with pytest.raises(MedSAMError, match="unreadable profile record"):
        open_profile("demo")


def test_a_shared_profile_without_its_data_is_refused_before_any_work(profiles, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM_SHARED_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(MedSAMError, match="needs the real cases at .*MEDSAM_SHARED_DIR"):
        open_profile("shared-real")
    assert not (tmp_path / "results" / "shared-real").exists()  # no folder claimed


def test_run_refuses_a_folder_of_other_settings_before_any_kernel(profiles, tmp_path, capfd):
    from medsam_lib.cli import main

    open_profile("demo")
    _edit(profiles, "demo", model="medsam_vit_b")
    assert main(["run", "--profile", "demo"]) == 2
    err = capfd.readouterr().err
    assert "model='litemedsam'" in err and "model='medsam_vit_b'" in err
    assert not (tmp_path / "results" / "demo" / "run_record.json").exists()


def _papermill(notebook: str, out: Path, **params):
    import papermill as pm

    return pm.execute_notebook(str(NOTEBOOKS / notebook), str(out), parameters=params, cwd=str(NOTEBOOKS),
                               kernel_name="python3", progress_bar=False)


def _text(nb) -> str:
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    return "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)


@pytest.mark.slow
def test_changing_only_the_profile_in_notebook_00_changes_data_and_folder(profiles, tmp_path, shared_data):
    nb = _papermill("00_quickstart.ipynb", tmp_path / "00.ipynb", profile="shared-real")
    text = _text(nb)
    assert "profile 'shared-real': real cases of ../shared/data" in text
    assert "BUSI breast ultrasound" in text and "SYNTHETIC" not in text
    assert (tmp_path / "results" / "shared-real" / "tables").is_dir()
    assert not (tmp_path / "results" / "demo").exists()


@pytest.mark.slow
def test_notebook_05_refuses_a_folder_of_other_settings_in_its_first_cell(profiles, tmp_path):
    import papermill as pm

    # results/demo as the real cases would have left it (the kernel reads the shipped demo profile)
    folder = tmp_path / "results" / "demo"
    folder.mkdir(parents=True)
    (folder / "profile.json").write_text(json.dumps({**load_profile("demo").identity(), "data_source": "shared"}))
    with pytest.raises(pm.PapermillExecutionError) as err:
        _papermill("05_tables.ipynb", tmp_path / "05.ipynb", profile="demo")
    assert "open_profile" in str(err.value)  # raised in the first code cell
    assert "holds results written with data_source='shared'" in str(err.value)
    folder = tmp_path / "results" / "demo"
    assert sorted(p.name for p in folder.iterdir()) == ["profile.json"]  # nothing curated, nothing scored


def test_cli_commands_take_the_profile(profiles, tmp_path, capfd):
    from medsam_lib.cli import main

    assert main(["data", "curate", "--profile", "demo"]) == 0
    assert (tmp_path / "results" / "demo" / "curated" / "index.csv").is_file()
    assert "profile demo:" in capfd.readouterr().out
    # what the profile decides cannot be contradicted by a flag, and the message says which
    assert main(["embed", "--profile", "demo", "--model", "medsam_vit_b"]) == 2
    assert "--model 'medsam_vit_b' contradicts --profile demo, whose --model is 'litemedsam'" in capfd.readouterr().err
    assert main(["data", "curate", "--profile", "demo", "--out", str(tmp_path / "x")]) == 2
    assert "decides --out itself" in capfd.readouterr().err
    assert main(["train", "--profile", "demo", "--config", "x.toml"]) == 2
    assert "not both" in capfd.readouterr().err
    _edit(profiles, "demo", seed=5)  # and every command checks the folder's record first
    assert main(["evaluate", "--profile", "demo"]) == 2
    assert "seed=0" in capfd.readouterr().err


def test_segment_takes_model_and_device_from_the_profile(profiles, tmp_path, capfd):
    import numpy as np
    from PIL import Image

    from medsam_lib.cli import main

    image = np.zeros((64, 64), np.uint8)
    image[20:40, 20:40] = 200
    Image.fromarray(image).save(tmp_path / "img.png")
    _edit(profiles, "demo", device="cpu")
    assert main(["segment", "--profile", "demo", "--image", str(tmp_path / "img.png"), "--box", "18,18,41,41",
                 "--out", str(tmp_path / "mask.png")]) == 0
    assert "score=" in capfd.readouterr().out
    assert not (tmp_path / "results" / "demo").exists()  # segment writes no results folder: nothing claimed
    assert main(["segment", "--profile", "demo", "--device", "auto", "--image", str(tmp_path / "img.png"), "--box",
                 "18,18,41,41", "--out", str(tmp_path / "mask2.png")]) == 2
    assert "--device 'auto' contradicts --profile demo" in capfd.readouterr().err


def test_each_data_source_has_its_manifest_and_folder(profiles, tmp_path):
    from medsam_lib.data.manifests import load_manifest
    from medsam_lib.shared import shared_dir

    _edit(profiles, "demo", data_source="cohorts")
    cohorts = load_profile("demo")
    assert cohorts.manifest == "cohorts" and cohorts.data_root == shared_dir() / "cohorts"
    assert "real cohorts of ../shared/cohorts" in cohorts.describe()
    for source in ("synthetic", "shared", "cohorts"):
        _edit(profiles, "demo", data_source=source)
        assert load_manifest(load_profile("demo").manifest).datasets  # every data source's manifest loads
