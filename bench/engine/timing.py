"""Honest timing and memory: synchronize before reading clocks, measure peaks, not snapshots."""

from __future__ import annotations

import os
import platform
import resource
import sys
import threading
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def hardware_name(device: torch.device) -> str:
    """The processor a device is: the GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    return model or platform.processor() or "CPU"


def device_name(device: torch.device) -> str:
    """The hardware, and on the CPU the intra-op threads torch uses now."""
    name = hardware_name(device)
    return name if device.type != "cpu" else f"{name} ({threads_text(torch.get_num_threads())})"


def threads_text(n: int) -> str:
    """ "1 thread", "2 threads"."""
    return f"{n} thread{'s' if n != 1 else ''}"


def current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo: memory new allocations and processes can take without
    swapping (None where the kernel does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakMemory:
    """Peak memory while the block runs: the CUDA allocator's peak on a GPU, else the peak resident
    set size of this process, sampled every ``interval`` seconds (ru_maxrss is a lifetime peak and
    would carry the previous model's peak into the next run of the same process)."""

    def __init__(self, device: torch.device, interval: float = 0.05) -> None:
        self.device, self.interval = device, interval
        self.peak_bytes = 0
        self.kind = "cuda_allocator" if device.type == "cuda" else "rss"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif current_rss_bytes() is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes() or 0)
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes() or 0)
        else:  # no /proc (macOS): the lifetime peak is all there is; ru_maxrss is bytes there
            scale = 1 if sys.platform == "darwin" else 1024
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    def peak_mb_now(self) -> float:
        """The peak so far, while the block is still running."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return max(self.peak_bytes, current_rss_bytes() or 0) / 2**20


class Stopwatch:
    """Wall time that counts only while running, synchronized with the device at each read."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = time.perf_counter()

    def lap(self) -> float:
        synchronize(self.device)
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed
