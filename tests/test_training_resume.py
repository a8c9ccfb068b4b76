"""Exact resume after kill -9, and DDP with 2 CPU ranks against one process, both through the CLI.

Same small SYNTHETIC X-ray store as test_training.py (5 images, real LiteMedSAM embeddings).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from medsam_lib.data.curate import curate
from medsam_lib.data.phantoms import write_synthetic_set

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from medsam_lib.embeddings import build_store

    base = tmp_path_factory.mktemp("training_resume")
    root = write_synthetic_set(base / "synthetic", seed=0)
    curated = base / "curated"
    curate("synthetic", curated, root=root, datasets=["synthetic_xray_chest"], progress=False)
    build_store(curated, "litemedsam", base / "embeddings", progress=False)
    return curated, base / "embeddings"


def _config(path: Path, stores, out: Path, **extra) -> Path:
    values = {"curated": str(stores[0]), "embeddings": str(stores[1]), "out": str(out), "device": "cpu",
              "batch_size": 1, "steps": 20, "checkpoint_every": 5, "val_every": 10}
    values.update(extra)
    path.write_text("".join(f"{k} = {v!r}\n" if not isinstance(v, str) else f'{k} = "{v}"\n'
                            for k, v in values.items()))
    return path


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")  # the same thread count in every process: the same sums
    return env


def _train(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsam_lib", "train", "--config", str(config), "--quiet", *extra],
                          env=_env(), capture_output=True, text=True, timeout=600)


def _last_step(metrics: Path) -> int:
    try:
        return int(pd.read_csv(metrics)["step"].max())
    except (FileNotFoundError, pd.errors.EmptyDataError, ValueError):
        return -1


def _state(out: Path) -> dict:
    record = torch.load(out / "last.pt", weights_only=True)
    return {"weights": record["weights"], "optimizer": record["training"]["optimizer"]["state"],
            "sampler": record["training"]["sampler"], "step": record["training"]["step"]}


def test_kill_9_then_resume_gives_bitwise_the_uninterrupted_weights(stores, tmp_path):
    straight = _train(_config(tmp_path / "a.toml", stores, tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr

    config = _config(tmp_path / "b.toml", stores, tmp_path / "b")
    proc = subprocess.Popen([sys.executable, "-m", "medsam_lib", "train", "--config", str(config), "--quiet"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while _last_step(tmp_path / "b" / "metrics.csv") < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, f"finished or failed before the kill: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _last_step(tmp_path / "b" / "metrics.csv")
    assert 10 <= killed_at < 20 and _state(tmp_path / "b")["step"] == killed_at

    resumed = _train(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert a["step"] == b["step"] == 20 and a["sampler"] == b["sampler"]
    assert a["weights"].keys() == b["weights"].keys()
    for key in a["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), key  # bitwise
    for index, moments in a["optimizer"].items():
        for name, value in moments.items():
            assert torch.equal(value, b["optimizer"][index][name]), (index, name)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "metrics.csv"), pd.read_csv(tmp_path / "b" / "metrics.csv"))
    best_a = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    best_b = torch.load(tmp_path / "b" / "best.pt", weights_only=True)
    assert best_a["step"] == best_b["step"] and all(torch.equal(best_a["weights"][k], best_b["weights"][k])
                                                    for k in best_a["weights"])


LOSS_RTOL = 1e-5  # DDP vs one process: the same sums in another order (float32)


def test_ddp_two_cpu_ranks_match_one_process_for_the_same_global_batch(stores, tmp_path):
    one = _train(_config(tmp_path / "one.toml", stores, tmp_path / "one", batch_size=2, steps=4,
                         checkpoint_every=4, val_every=4))
    assert one.returncode == 0, one.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "medsam_lib", "train", "--quiet", "--config",
                          str(_config(tmp_path / "ddp.toml", stores, tmp_path / "ddp", batch_size=2, steps=4,
                                      checkpoint_every=4, val_every=4))],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = pd.read_csv(tmp_path / "one" / "metrics.csv"), pd.read_csv(tmp_path / "ddp" / "metrics.csv")
    assert list(a["step"]) == list(b["step"]) == [0, 1, 2, 3, 4]
    losses_a, losses_b = a["train_loss"].iloc[1:].to_numpy(), b["train_loss"].iloc[1:].to_numpy()
    assert abs(losses_a - losses_b).max() <= LOSS_RTOL * abs(losses_a).max(), (losses_a, losses_b)
    assert len(set(losses_a.round(6))) > 1  # a curve, not a constant
    wa = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    wb = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert wb["training"]["world"] == 2
    for key, value in wa["weights"].items():
        torch.testing.assert_close(wb["weights"][key], value, rtol=1e-4, atol=1e-6)
