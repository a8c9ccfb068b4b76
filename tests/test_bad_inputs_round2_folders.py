"""Bad inputs, round 2 (issue 16), the classes about folders: code in a profile (1), two writers into
one output folder (2) and outputs inside inputs (8). Same contract and table style as
``test_bad_inputs.py`` (``bad_input_helpers``): exit 2, one ``error:`` line naming the option or
file and the problem, nothing written, inputs unchanged, no model loaded.

Where the rules live: ``profile_check`` (profiles are data, checked before a kernel starts),
``locks.output_folder`` (one writer per output folder, the holder named) and
``fileio.check_output_folder`` (no output folder equal to, inside, or holding an input).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bad_input_helpers import REPO, BadInput, run_cli, run_row
from medsam_lib import locks, profile, runner
from medsam_lib.data.store import CuratedDataset
from test_bad_inputs import _blob, _good_store, _manifest, _pair_folders, _train

HOLD = ("import sys; from medsam_lib.locks import acquire; acquire(sys.argv[1]); print('held', flush=True); "
        "sys.stdin.read()")


def _hold(ctx, folder: Path) -> Path:
    """Another process (``python -c ... hold_for_test``) holds ``folder``'s lock until the test ends."""
    folder.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "hold_for_test"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    ctx.children.append(child)
    assert child.stdout.readline().strip() == "held"
    return folder


# --- class 1: profiles are data -------------------------------------------------------------------

def _profile(ctx, tmp: Path, body, name: str = "evil") -> list[str]:
    """A profile file ``name`` in a profiles folder under tmp; results go to tmp/results."""
    (tmp / "profiles").mkdir(exist_ok=True)
    text = body if isinstance(body, str) else json.dumps(body)
    (tmp / "profiles" / f"{name}.json").write_text(text)
    ctx.monkeypatch.setattr(profile, "PROFILES_DIR", tmp / "profiles")
    ctx.monkeypatch.setenv("MEDSAM_RESULTS_ROOT", str(tmp / "results"))
    return ["run", "--profile", name]


def _params(**params) -> dict:
    return {"description": "d", "data_source": "synthetic", "parameters": params}


def _settings(**settings) -> dict:
    return {"description": "d", "data_source": "synthetic", **settings}


# --- class 8 and 2: small commands ----------------------------------------------------------------

def _store(tmp: Path) -> Path:
    return tmp / "store" if (tmp / "store").is_dir() else _good_store(tmp)


def _embed_out(tmp: Path, out: Path | str) -> list[str]:
    return ["embed", "--curated", str(_store(tmp)), "--out", str(out), "--no-progress"]


def _evaluate(tmp: Path, out: Path | str, *extra: str) -> list[str]:
    return ["evaluate", "--curated", str(_good_store(tmp)), "--model", "litemedsam", "--out", str(out), *extra]


def _curate(tmp: Path, out: Path) -> list[str]:
    _pair_folders(tmp, {c: _blob() for c in ("a", "b")})
    return ["data", "curate", "--manifest", str(_manifest(tmp, "m", ["a", "b"])), "--out", str(out)]


def _rows() -> list[BadInput]:
    r = []

    def row(name, build, *expect, **kw):
        r.append(BadInput(name, build, tuple(expect), **kw))

    # 1. code in a profile: --profile is a plain name; names and values are checked before a kernel starts
    for label, name in (("dotdot", "../escape"), ("absolute", "/ABS"), ("slash", "demo/../demo"), ("empty", ""),
                        ("dot", ".")):
        row(f"run_profile_name_{label}", lambda t, c, n=name: (_profile(c, t, _params()),
                                                               ["run", "--profile", str(t) + n if n == "/ABS" else n])[-1],
            "--profile", "not a profile name")
    row("run_profile_unknown", lambda t, c: (_profile(c, t, _params()), ["run", "--profile", "nope"])[-1],
        "--profile", "unknown profile 'nope'", "evil")
    row("profile_name_is_code", lambda t, c: _profile(c, t, _params(**{
        f"x = 1\nimport os; os.system('touch {t / 'PWNED'}')\ny": 1})), "evil.json", "not a Python identifier")
    row("profile_name_undeclared", lambda t, c: _profile(c, t, _params(bogus=1)), "evil.json", '"bogus"',
        "not declared")
    row("profile_name_dunder", lambda t, c: _profile(c, t, _params(__builtins__=1)), "__builtins__", "not declared")
    row("profile_name_keyword", lambda t, c: _profile(c, t, _params(**{"import": 1})), "import", "identifier")
    row("profile_sets_results_dir", lambda t, c: _profile(c, t, _params(results_dir="/tmp")), "results_dir",
        "setting of the profile")
    row("profile_sets_a_setting_as_parameter", lambda t, c: _profile(c, t, _params(seed=1)), "evil.json", '"seed"',
        "move it out of 'parameters'")
    row("profile_sets_profile", lambda t, c: _profile(c, t, _params(profile="x")), "evil.json", "set by the runner")
    row("profile_value_text_for_int", lambda t, c: _profile(c, t, _params(steps="0")), "evil.json", "steps", "int")
    row("profile_value_bool_for_int", lambda t, c: _profile(c, t, _params(steps=True)), "steps", "int")
    row("profile_value_float_for_int", lambda t, c: _profile(c, t, _params(steps=0.5)), "steps", "int")
    row("profile_seed_text", lambda t, c: _profile(c, t, _settings(seed="0")), "evil.json", "'seed'", "integer")
    row("profile_seed_bool", lambda t, c: _profile(c, t, _settings(seed=True)), "evil.json", "'seed'", "integer")
    row("profile_seed_too_large", lambda t, c: _profile(c, t, _settings(seed=2 ** 70)), "evil.json", "'seed'",
        "4294967295")
    row("profile_data_source_unknown", lambda t, c: _profile(c, t, _settings(data_source="cloud")), "evil.json",
        "'data_source'", "cloud")
    row("profile_model_empty", lambda t, c: _profile(c, t, _settings(model="")), "evil.json", "'model'",
        "non-empty text")
    row("profile_value_object", lambda t, c: _profile(c, t, _params(labels={"__class__": "x"})), "labels",
        "JSON object")
    row("profile_value_nested_list", lambda t, c: _profile(c, t, _params(sweep_margins=[[1], [2]])), "sweep_margins",
        "lists may hold only")
    row("profile_value_nan", lambda t, c: _profile(c, t, '{"parameters": {"val_fraction": NaN}}'), "evil.json",
        "NaN")
    row("profile_unknown_top_level_key", lambda t, c: _profile(c, t, {"parameterz": {"seed": 1}}), "evil.json",
        "'parameterz'")
    row("profile_parameters_a_list", lambda t, c: _profile(c, t, {"parameters": [1]}), "evil.json", "'parameters'")
    row("profile_is_a_list", lambda t, c: _profile(c, t, "[]"), "evil.json", "JSON object")
    row("profile_not_json", lambda t, c: _profile(c, t, "{seed: 1"), "evil.json", "invalid JSON")

    # 2. two writers, one output: a folder in use is refused at once, naming the process that holds it
    held = ("in use by another run", "pid ", "host", "hold_for_test")
    row("curate_into_a_store_in_use", lambda t, c: (_hold(c, t / "new"), _curate(t, t / "new"))[-1], "--out", *held)
    row("curate_into_an_existing_store_in_use", lambda t, c: (_good_store(t), _hold(c, t / "store"), [
        "data", "curate", "--manifest", str(t / "first.json"), "--seed", "3", "--out", str(t / "store")])[-1],
        "--out", *held)
    row("train_into_an_out_in_use", lambda t, c: (_hold(c, t / "run"), _train(t, store=True))[-1], "key 'out'", *held)
    row("evaluate_into_an_out_in_use", lambda t, c: (_hold(c, t / "ev"), _evaluate(t, t / "ev"))[-1], "--out", *held)
    row("embed_into_a_folder_in_use", lambda t, c: (_hold(c, t / "emb"), _embed_out(t, t / "emb"))[-1], "--out",
        *held)
    row("run_into_a_results_folder_in_use", lambda t, c: (_hold(c, t / "results" / "evil"),
                                                          _profile(c, t, _params()))[-1], "--profile evil", *held)

    # 8. outputs inside inputs (links resolved): equal to, inside, or holding an input store or folder
    row("embed_out_inside_the_curated_store", lambda t, c: _embed_out(t, t / "store" / "cases"), "store/cases",
        "lies inside the curated store")
    row("embed_out_holds_the_curated_store", lambda t, c: _embed_out(t, t), "--out", "contains the curated store")
    row("embed_out_links_into_the_curated_store", lambda t, c: (_good_store(t), os.symlink(t / "store" / "cases", t / "e"),
                                                                _embed_out(t, t / "e"))[-1], "lies inside the curated")
    row("train_out_is_the_curated_store", lambda t, c: _train(t, store=True, out='"store"'), "run.toml", "key 'out'",
        "is the curated store")
    row("train_out_is_the_embedding_store", lambda t, c: _train(t, store=True, out='"emb"'), "key 'out'",
        "is the embedding store")
    row("train_out_inside_the_curated_store", lambda t, c: _train(t, store=True, out='"store/cases/runs"'),
        "key 'out'", "lies inside the curated store")
    row("train_out_holds_the_stores", lambda t, c: _train(t, store=True, out='"."'), "key 'out'", "contains the")
    row("evaluate_out_is_the_curated_store", lambda t, c: _evaluate(t, t / "store"), "--out", "is the curated store")
    row("evaluate_out_inside_the_curated_store", lambda t, c: _evaluate(t, t / "store" / "ev"), "--out",
        "lies inside the curated store")
    row("evaluate_out_inside_the_source_root", lambda t, c: _evaluate(t, t / "images" / "ev", "--slices", "volume",
                                                                      "--source-root", str(t / "images")),
        "--out", "lies inside the source root")
    row("evaluate_out_holds_the_model", lambda t, c: ((t / "ck").mkdir(), (t / "ck" / "best.pt").write_bytes(b"x"),
                                                      ["evaluate", "--curated", str(_good_store(t)), "--model",
                                                       str(t / "ck" / "best.pt"), "--out", str(t / "ck")])[-1],
        "--out", "contains the model")
    return r


ROWS = _rows()


@pytest.fixture
def ctx(monkeypatch):
    context = SimpleNamespace(monkeypatch=monkeypatch, children=[])
    yield context
    for child in context.children:
        child.kill()
        child.wait()
        child.stdout.close()
        child.stdin.close()


def test_rows_are_unique():
    names = [r.name for r in ROWS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input(row, tmp_path, capfd, ctx):
    message = run_row(row, tmp_path, capfd, ctx)
    if ctx.children:
        assert f"pid {ctx.children[0].pid} " in message  # the holder, by its process id


# --- what the rows cannot say on their own --------------------------------------------------------

def test_the_shipped_profiles_pass_and_every_declared_name_is_known():
    from medsam_lib.profile_check import declared_parameters

    declared = declared_parameters(runner.notebook_paths())
    assert {"profile", "steps", "sweep_margins"} <= set(declared)
    assert not {"seed", "model", "data_source", "results_dir"} & set(declared)  # settings of the profile only
    assert declared["steps"] == {int} and declared["sweep_margins"] == {list}
    for name in profile.available_profiles():
        assert runner.profile_parameters(profile.load_profile(name))["profile"] == name


def test_a_killed_holder_does_not_block_and_the_lock_file_goes(tmp_path, capfd):
    """kill -9 releases the lock (flock); the stale file is reused and removed by the next run."""
    _pair_folders(tmp_path, {c: _blob() for c in ("a", "b")})
    manifest = _manifest(tmp_path, "m", ["a", "b"])
    ctx = SimpleNamespace(children=[])
    _hold(ctx, tmp_path / "store")
    holder = ctx.children[0]
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    holder.stdin.close()
    holder.stdout.close()
    assert (tmp_path / "store" / locks.LOCK_NAME).is_file()  # a stale lock file, left by the killed process
    code, out, err = run_cli(["data", "curate", "--manifest", str(manifest), "--out", str(tmp_path / "store")], capfd)
    assert code == 0, err
    assert len(CuratedDataset(tmp_path / "store").index) > 0
    assert not (tmp_path / "store" / locks.LOCK_NAME).exists()


def test_nested_locks_in_one_process_are_counted_and_a_refusal_leaves_no_new_folder(tmp_path):
    with locks.output_folder(tmp_path / "a") as folder:
        with locks.output_folder(folder):  # the same process again: counted, not refused
            pass
        assert (folder / locks.LOCK_NAME).is_file()  # still held by the outer call
    assert (tmp_path / "a").is_dir() and not (tmp_path / "a" / locks.LOCK_NAME).exists()
    with pytest.raises(RuntimeError):
        with locks.output_folder(tmp_path / "b"):
            raise RuntimeError("the run failed")
    assert not (tmp_path / "b").exists()  # a failed run leaves no new folder


def test_two_curate_runs_into_one_new_store_the_second_is_refused_and_the_first_completes(tmp_path):
    """Two processes: the first holds the new store's lock (stopped there with SIGSTOP, so the
    overlap is certain), the second is refused naming it; the first then finishes an intact store."""
    cases = [f"c{i:02d}" for i in range(40)]
    _pair_folders(tmp_path, {c: _blob() for c in cases})
    manifest = _manifest(tmp_path, "m", cases)
    out, env = tmp_path / "store", {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "medsam_lib", "data", "curate", "--manifest", str(manifest), "--out", str(out)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env=env)
    try:
        lock, deadline = out / locks.LOCK_NAME, time.monotonic() + 120
        while not (lock.is_file() and f"pid {first.pid} " in lock.read_text(encoding="utf-8")):
            assert first.poll() is None, "the first run ended before it was seen holding the lock"
            assert time.monotonic() < deadline
            time.sleep(0.001)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            second = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120, env=env)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait()
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode == 2 and len(errors) == 1, second.stderr
    assert "in use by another run" in errors[0] and f"pid {first.pid} " in errors[0] and "curate" in errors[0]
    assert first.returncode == 0, stderr
    assert "40 case(s) curated" in stdout
    assert sorted(CuratedDataset(out).index["case"].unique()) == cases
    assert not lock.exists()
