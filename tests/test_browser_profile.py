"""Changing only the profile, in a real browser (JupyterLab + Debian's Chromium via Playwright).

A reader opens notebook 00, replaces ``profile = "demo"`` in its parameters cell with
``profile = "shared-real"`` by typing, and runs all cells: the real cases are segmented and the
outputs go to the ``shared-real`` results folder, not ``demo``. Then notebook 05 is run with the
``demo`` profile on a ``demo`` results folder that an earlier run wrote with other settings: it stops
in its first code cell with the refusal (which names the commands to use instead), and nothing is
written. Results go to a temporary ``MEDSAM_RESULTS_ROOT``.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from test_browser_box_prompting import (KERNEL_READY_S, RUN_ALL_S, _api, _kernel_ready, _require_chromium, _stop,
                                        _wait_for, chromium_page, start_jupyterlab)

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"

pytestmark = [pytest.mark.browser, pytest.mark.shared, pytest.mark.slow]


def _copy_without_outputs(name: str, folder: Path) -> None:
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, str(folder / name))


def test_changing_only_the_profile_in_00_and_a_refusal_in_05(shared_data, artifacts_dir, tmp_path):
    _require_chromium()

    from medsam_lib.profile import load_profile

    root, results = tmp_path / "root", tmp_path / "results"
    root.mkdir()
    for name in ("00_quickstart.ipynb", "05_tables.ipynb"):
        _copy_without_outputs(name, root)
    # results/demo as a run with other settings left it (its record says data_source 'shared')
    (results / "demo").mkdir(parents=True)
    (results / "demo" / "profile.json").write_text(json.dumps({**load_profile("demo").identity(),
                                                               "data_source": "shared"}))
    (tmp_path / "user").mkdir()
    server, base, token, log = start_jupyterlab(
        root, tmp_path, {"MEDSAM_USER_DIR": str(tmp_path / "user"), "MEDSAM_RESULTS_ROOT": str(results)},
        artifacts_dir / "browser_profile_jupyterlab.log")
    try:
        with chromium_page(1400, 1100) as page:

            def open_and_run_all(name: str, new_profile: str | None = None) -> str:
                page.goto(f"{base}/lab/tree/{name}?token={token}", wait_until="domcontentloaded")
                kernel_id = _wait_for(lambda: _kernel_ready(base, token, name), KERNEL_READY_S,
                                      f"{name}'s kernel to be idle and connected")
                notebook = page.locator(".jp-NotebookPanel:visible .jp-Notebook").first
                notebook.wait_for(state="visible")
                if new_profile is not None:  # the reader's one edit: the profile line of the parameters cell
                    line = notebook.locator(".cm-line", has_text='profile = "demo"').first
                    line.click()
                    page.keyboard.press("Home")
                    page.keyboard.press("Shift+End")
                    page.keyboard.type(f'profile = "{new_profile}"')
                page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click()
                page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).first.click()
                _wait_for(lambda: notebook.locator(".jp-OutputArea-output").count() > 0, RUN_ALL_S,
                          f"{name}'s first output")
                _wait_for(lambda: notebook.locator(".jp-InputPrompt", has_text="[*]").count() == 0
                          and _api(base, token, f"/api/kernels/{kernel_id}")["execution_state"] == "idle",
                          RUN_ALL_S, f"Run All of {name} to finish")
                notebook.locator(".jp-OutputArea-output").first.scroll_into_view_if_needed()  # the first cell's
                page.screenshot(path=str(artifacts_dir / f"browser_profile_{Path(name).stem}.png"))
                return "\n".join(notebook.locator(".jp-OutputArea-output").all_inner_texts())

            text = open_and_run_all("00_quickstart.ipynb", "shared-real")
            assert "profile 'shared-real': real cases of ../shared/data" in text, text[:2000]
            assert "BUSI breast ultrasound" in text and "Traceback" not in text
            assert (results / "shared-real" / "profile.json").is_file()
            assert (results / "shared-real" / "tables").is_dir()
            assert sorted(p.name for p in (results / "demo").iterdir()) == ["profile.json"]

            text = open_and_run_all("05_tables.ipynb")
            assert "holds results written with data_source='shared'" in text, text[:2000]
            assert "medsam_lib/profiles/NEW.json" in text and "python -m medsam_lib run --profile NEW" in text
            assert sorted(p.name for p in (results / "demo").iterdir()) == ["profile.json"]  # nothing written
    finally:
        _stop(server)
        log.close()
        shutil.rmtree(tmp_path / "runtime", ignore_errors=True)
