"""``medsam_lib.devices``: the one --device resolver (every command takes the same names) and the one
torchrun wrapper (in one process every collective is the identity; torchrun runs are in the resume tests)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from medsam_lib.devices import Distributed, join, resolve_device
from medsam_lib.fileio import MedSAMError


def _no_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _two_gpus(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_and_none_choose_cuda_only_when_present(monkeypatch):
    _no_gpu(monkeypatch)
    assert resolve_device(None) == resolve_device("auto") == resolve_device(" AUTO ") == torch.device("cpu")
    _two_gpus(monkeypatch)
    assert resolve_device(None) == resolve_device("auto") == torch.device("cuda")


def test_named_devices(monkeypatch):
    _no_gpu(monkeypatch)
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    _two_gpus(monkeypatch)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)


@pytest.mark.parametrize("device, gpus, expected", [
    ("bogus", 0, "--device 'bogus': not a device name; use auto, cpu, cuda, cuda:N or mps"),
    ("cuda", 0, "--device 'cuda': no CUDA GPU is available here"),
    ("cuda:0", 0, "no CUDA GPU is available here .*use --device cpu or auto"),
    ("cuda:2", 2, r"--device 'cuda:2': there are 2 CUDA GPU\(s\) here \(cuda:0..cuda:1\)"),
    ("mps", 0, "--device 'mps': not available here; use --device cpu or auto"),
    ("meta", 2, "--device 'meta': not available here; use --device cpu, cuda or auto"),
])
def test_unknown_or_unavailable_devices_are_refused(monkeypatch, device, gpus, expected):
    _two_gpus(monkeypatch) if gpus else _no_gpu(monkeypatch)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(MedSAMError, match=expected):
        resolve_device(device)


def test_the_option_is_named_as_the_caller_names_it(monkeypatch):
    _no_gpu(monkeypatch)
    with pytest.raises(MedSAMError, match="run.toml: key 'device' 'cuda': no CUDA GPU .*use device = cpu or auto"):
        resolve_device("cuda", "run.toml: key 'device'")


def test_one_process_is_world_one_and_collectives_are_the_identity(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    dist = join("cpu")
    assert (dist.rank, dist.world, dist.local_rank, dist.device) == (0, 1, 0, torch.device("cpu"))
    assert dist.is_main and not dist.distributed and not dist.owned
    value = torch.tensor(3.0)
    assert dist.mean(value) is value and dist.any(True) and not dist.any(False)
    assert dist.broadcast({"a": 1}) == {"a": 1} and dist.part([1, 2, 3]) == [1, 2, 3]
    module = torch.nn.Linear(2, 2)
    assert dist.wrap(module) is module
    dist.barrier()
    dist.close()
    with pytest.raises(MedSAMError, match="bogus"):
        join("bogus")


def test_a_ranks_share_of_a_batch():
    ranks = [Distributed(rank, 3, rank, torch.device("cpu")) for rank in range(3)]
    assert [r.part(list(range(6))) for r in ranks] == [[0, 1], [2, 3], [4, 5]]
    assert ranks[1].is_main is False and ranks[0].distributed
    with pytest.raises(MedSAMError, match="run.toml: batch_size 4 does not divide by the 3 ranks"):
        ranks[0].part(list(range(4)), "run.toml")


def test_segment_device_auto_through_the_cli(tmp_path):
    image = np.full((64, 80), 40, dtype=np.uint8)
    image[20:44, 25:55] = 220
    Image.fromarray(image).save(tmp_path / "in.png")
    base = [sys.executable, "-m", "medsam_lib", "segment", "--image", str(tmp_path / "in.png"),
            "--box", "20,15,60,48"]
    done = subprocess.run([*base, "--out", str(tmp_path / "auto.png"), "--device", "auto"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("score=") and "mask=" in done.stdout
    mask = np.array(Image.open(tmp_path / "auto.png")) > 0
    assert mask.shape == image.shape and mask[25:40, 30:50].mean() > 0.9 and not mask[:10].any()
    bad = subprocess.run([*base, "--out", str(tmp_path / "bad.png"), "--device", "autoo"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("error:") == 1 and "--device 'autoo'" in bad.stderr
    assert not (tmp_path / "bad.png").exists()
