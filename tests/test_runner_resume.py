"""``run`` after ``kill -9``: the record written so far says what finished and where it stopped, and
rerunning the same command (resume is the default) skips the finished notebooks, reruns the rest, and
leaves no half-written file, no stale lock and no orphan kernel."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHAIN = ["00", "02"]  # 01 (the SAM teardown, 1-2 min on 2 cores) adds nothing here and is left out


def _record(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # not written yet (the record itself is replaced atomically, never half-written)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (the runner's kernels), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has released its locks and files


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc to find the kernels")
def test_kill_9_mid_chain_then_resume(tmp_path):
    results = tmp_path / "results"
    out = results / "demo"
    env = {**os.environ, "MEDSAM_RESULTS_ROOT": str(results), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "medsam_lib", "run", "--profile", "demo", "--only", *CHAIN]
    record_path = out / "run_record.json"

    with open(tmp_path / "killed.log", "w", encoding="utf-8") as log:
        runner = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            # cut: 00 finished, 02 running in a live kernel that has begun curating (curation resumes itself)
            def in_02():
                if runner.poll() is not None:
                    pytest.fail(f"the run ended before the cut: {(tmp_path / 'killed.log').read_text(encoding='utf-8')}")
                rec = _record(record_path)
                nbs = {nb["name"][:2]: nb for nb in rec.get("notebooks", [])}
                started = (out / "curated" / "cases").is_dir() and any((out / "curated" / "cases").iterdir())
                return (rec if nbs.get("00", {}).get("status") == "ok" and (rec.get("running") or "").startswith("02")
                        and nbs["02"].get("cells") and started else None)
            killed_record = _wait(in_02, 120, "the record to show 00 ok and 02 curating")
            kernels = _children(runner.pid)
            assert kernels, "the running notebook's kernel is a child of the runner"
            os.killpg(runner.pid, signal.SIGKILL)
        finally:
            if runner.poll() is None:
                os.killpg(runner.pid, signal.SIGKILL)
            runner.wait(30)
    assert runner.returncode == -signal.SIGKILL
    # the kernels run in sessions of their own (jupyter_client), so the group kill misses them: they must
    # notice their parent is gone (ipykernel's parent poller) and exit, releasing any lock they held
    killed_at = time.monotonic()
    _wait(lambda: not any(_alive(k) for k in kernels), 15, f"the orphaned kernels {kernels} to exit")
    print(f"orphaned kernels exited {time.monotonic() - killed_at:.1f} s after the kill")  # shown with -s

    # what a killed run leaves: a whole record that says where it stopped, with times so far
    assert killed_record["state"] == "running" and killed_record["running"] == "02_data_curation.ipynb"
    first, second = killed_record["notebooks"]
    assert first["status"] == "ok" and first["wall_s"] > 0 and first["cells"]
    assert second["status"] == "running" and all(c["wall_s"] >= 0 and c["label"] for c in second["cells"])
    assert not (out / "02_data_curation.ipynb").exists()  # only the temporary copy papermill was writing
    assert (out / ".medsam.lock").is_file()  # the killed holder's lock file stays; its flock died with it

    first_executed = (out / "00_quickstart.ipynb").stat().st_mtime_ns
    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8",
                             errors="replace", timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming: the last run of 'demo' stopped without finishing (during 02_data_curation.ipynb)" in resumed.stdout
    record = json.loads(record_path.read_text(encoding="utf-8"))
    assert record["state"] == "ok" and record["running"] is None and record["finished"]
    names = [nb["name"] for nb in record["notebooks"]]
    assert names == ["00_quickstart.ipynb", "02_data_curation.ipynb"]
    skipped = [bool(nb.get("skipped")) for nb in record["notebooks"]]
    assert skipped == [True, False] and all(nb["status"] == "ok" for nb in record["notebooks"])
    assert record["notebooks"][0] == {**first, "skipped": True}  # the earlier times are kept
    for nb in record["notebooks"]:
        executed = json.loads((out / nb["name"]).read_text(encoding="utf-8"))  # whole, readable notebooks
        code = [c for c in executed["cells"] if c["cell_type"] == "code"]
        assert [c["index"] for c in nb["cells"]] == [i for i, c in enumerate(executed["cells"])
                                                     if c["cell_type"] == "code"]
        # the runner's clock agrees with papermill's own cell durations (within scheduling noise)
        for mine, cell in zip(nb["cells"], code):
            assert abs(mine["wall_s"] - cell["metadata"]["papermill"]["duration"]) < 0.5 + 0.1 * mine["wall_s"]
        assert sum(c["wall_s"] for c in nb["cells"]) <= nb["wall_s"]
    assert (out / "00_quickstart.ipynb").stat().st_mtime_ns == first_executed  # 00 was not run again
    assert "skipped" in resumed.stdout and "2/2 notebooks ok" in resumed.stdout  # the time table
    leftovers = [str(p.relative_to(out)) for p in out.rglob("*")
                 if ".part" in p.name or p.name.endswith(".failed.ipynb") or ".tmp" in p.name]
    assert not leftovers
    assert record["removed_stale_files"] and all(".02_data_curation.ipynb." in f or "run_record" in f
                                                 for f in record["removed_stale_files"])
    assert not (out / ".medsam.lock").exists()  # released by the resumed run
