"""Memory a runner takes: the process's resident set size (peak and added) and device memory.

Host memory is the process's RSS: the peak over a `with PeakRss()` block (on Linux the kernel's
high-water mark, reset on entry; elsewhere sampled by a background thread every few milliseconds),
and the RSS at any moment. Device memory is what the runner reports: for a TensorRT engine, the
memory used after deserializing it and after creating its context (cudaMemGetInfo differences,
meaningful in a process of its own: `isolated=True`), its context scratch size and its file size;
and, when `pynvml` and a GPU are present, NVML's count of used device memory (all processes).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from pathlib import Path

from qtool.runners.base import Runner

log = logging.getLogger(__name__)

RSS_SAMPLE_INTERVAL_S = 0.005
KERNEL_PEAK = "kernel high-water mark"
SAMPLED_PEAK = f"sampled every {RSS_SAMPLE_INTERVAL_S * 1e3:g} ms"


def _reset_kernel_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark of this process to its current RSS (Linux 4.0+)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _kernel_peak_rss_bytes() is not None


def _kernel_peak_rss_bytes() -> int | None:
    """VmHWM of /proc/self/status: the highest RSS since the last reset, or None off Linux."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return None


class PeakRss:
    """The peak RSS of this process over a `with` block, and its RSS at any moment (`now()`).

    On Linux the kernel's high-water mark is reset on entry and read on exit: exact, and no extra
    thread competes with the runner. Elsewhere a background thread samples RSS every few
    milliseconds (`method` says which), which can miss spikes shorter than the interval.
    """

    def __init__(self, interval_s: float = RSS_SAMPLE_INTERVAL_S) -> None:
        import psutil

        self.interval_s = interval_s
        self.peak_bytes = 0
        self.method = SAMPLED_PEAK
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def now(self) -> int:
        rss = int(self._process.memory_info().rss)
        self.peak_bytes = max(self.peak_bytes, rss)
        return rss

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.now()

    def __enter__(self) -> PeakRss:
        if _reset_kernel_peak_rss():
            self.method = KERNEL_PEAK
        else:
            self._thread = threading.Thread(target=self._sample_until_stopped, name="rss-sampler", daemon=True)
            self._thread.start()
        self.now()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.now()
        if self.method == KERNEL_PEAK:
            # max() as well: the kernel batches per-thread RSS counters, so a sample can exceed VmHWM slightly.
            self.peak_bytes = max(self.peak_bytes, _kernel_peak_rss_bytes() or 0)


def nvml_memory() -> dict[str, int] | None:
    """Used device memory from NVML (all visible GPUs, and this process's share when NVML can see it)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver, no GPU
        log.debug("NVML unavailable: %s", exc)
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return None
        device_used = 0
        process_used = None
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            device_used += int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
            with contextlib.suppress(Exception):
                for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if process.pid == os.getpid() and process.usedGpuMemory:
                        process_used = (process_used or 0) + int(process.usedGpuMemory)
        result = {"nvml_device_used_bytes": device_used}
        if process_used is not None:  # absent in containers whose PIDs NVML cannot map
            result["nvml_process_used_bytes"] = process_used
        return result
    except Exception as exc:
        log.debug("NVML query failed: %s", exc)
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def import_backend(runner: Runner) -> None:
    """Import the runner's library before the RSS baseline, so its import is not counted as the model's."""
    module = runner.library
    if module is not None:
        with contextlib.suppress(Exception):  # the runner reports a missing library itself on entry
            importlib.import_module(module)


def runner_device_memory(runner: Runner) -> dict[str, int | str]:
    """The device memory a runner reports for itself: a TensorRT runner's `device_memory()` (weights,
    activations and all it holds, from cudaMemGetInfo, and the engine file's size), else its
    `device_memory_bytes` (a TensorRT engine's context scratch size)."""
    report = getattr(runner, "device_memory", None)
    if callable(report):
        return dict(report())
    reported = getattr(runner, "device_memory_bytes", None)
    return {"device_memory_bytes": int(reported)} if reported is not None else {}


def nvml_change(before: dict | None, now: dict | None) -> dict[str, int]:
    """NVML readings taken with the runner(s) loaded, and the device memory added since `before`."""
    if now is None:
        return {}
    record = dict(now)
    if before is not None:
        record["nvml_device_added_bytes"] = now["nvml_device_used_bytes"] - before["nvml_device_used_bytes"]
    return record
