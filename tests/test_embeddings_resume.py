"""The embedding store under kill -9 and under torchrun: both end equal to one uninterrupted run.

Every run here is a subprocess with one thread per process (``OMP_NUM_THREADS=1``), so the killed,
resumed, reference and 2-rank stores are computed with the same numerics and compared bit for bit.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embeddings_helpers import curate_demo, store_arrays, subset_store
from medsam_lib.embeddings import open_store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
N_IMAGES = 3


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def _embed_args(curated: Path, out: Path) -> list[str]:
    return ["-m", "medsam_lib", "embed", "--curated", str(curated), "--out", str(out), "--chunk-size", "1",
            "--batch-size", "1", "--no-progress"]


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    demo = curate_demo(tmp_path_factory.mktemp("demo"))
    return subset_store(demo, tmp_path_factory.mktemp("sub") / "curated", N_IMAGES)


@pytest.fixture(scope="module")
def reference(curated, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "emb"
    done = subprocess.run([sys.executable, *_embed_args(curated, out)], env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return store_arrays(open_store(out))


def _assert_same(store, reference):
    assert store.ids() == list(reference)
    for image_id, expected in reference.items():
        np.testing.assert_array_equal(store.get(image_id), expected, err_msg=image_id)


def test_kill_9_mid_run_then_rerun_computes_only_what_is_missing(curated, reference, tmp_path):
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, *_embed_args(curated, out)], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (out / "chunks" / "chunk_00000.json").exists():
            assert process.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "no chunk committed in 300 s"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    done = sorted(p.name for p in (out / "chunks").glob("chunk_*.json"))
    assert 1 <= len(done) < N_IMAGES, f"the kill came too late to test anything: {done}"
    with pytest.raises(Exception, match="not committed"):
        open_store(out)
    rerun = subprocess.run([sys.executable, *_embed_args(curated, out)], env=_env(), capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    counts = re.search(r"\((\d+) computed, (\d+) copied, (\d+) kept\)", rerun.stdout)
    assert counts and int(counts[1]) == N_IMAGES - len(done) and int(counts[3]) == len(done), rerun.stdout
    _assert_same(open_store(out), reference)
    assert not [p for p in (out / "chunks").iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_two_ranks_under_torchrun_equal_the_one_process_store(curated, reference, tmp_path):
    out = tmp_path / "ranks"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *_embed_args(curated, out)]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 ranks" in done.stdout and done.stdout.count("images (") == 1, done.stdout  # rank 0 reports
    store = open_store(out)
    assert [m["rank"] for m in store.markers] == [0, 1, 0]  # chunk k on rank k % 2
    _assert_same(store, reference)


def test_two_processes_writing_one_store_share_the_work(curated, reference, tmp_path):
    out = tmp_path / "shared"
    runs = [subprocess.Popen([sys.executable, *_embed_args(curated, out)], env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in results]
    computed = [int(re.search(r"\((\d+) computed", stdout)[1]) for stdout, _ in results]
    assert sum(computed) == N_IMAGES, computed  # each chunk computed once, by one of them
    _assert_same(open_store(out, verify="full"), reference)
