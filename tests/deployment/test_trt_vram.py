"""VRAM of a TensorRT engine: cudaMemGetInfo readings around deserializing it and creating its context,
measured in a process of its own. A fake TensorRT and a fake CUDA runtime stand in for the GPU."""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import pytest

from qtool.data.batching import INPUT_NAMES
from qtool.deployment.bench import BenchConfig, run_benchmark
from qtool.deployment.memory import runner_device_memory
from qtool.deployment.trt_build import build_engine
from qtool.runners import device
from qtool.runners.trt import TrtRunner
from tests.helpers.fake_tensorrt import (
    FAKE_CONTEXT_VRAM,
    FAKE_ENGINE_VRAM,
    FAKE_VRAM,
    FAKE_VRAM_TOTAL,
    FakeCudart,
    FakeTrtRunnerFactory,
    fake_installer,
    write_tiny_graph,
)


@pytest.fixture
def plan(monkeypatch, tmp_path):
    """A fake engine built in this process (the fake TensorRT is installed only for the build)."""
    with monkeypatch.context() as patch:
        fake_installer(patch)()
        plan = tmp_path / "int8.plan"
        build_engine(write_tiny_graph(tmp_path / "int8.qdq.onnx"), plan)
    return plan


def _feeds(batch: int = 2, sequence: int = 16) -> dict[str, np.ndarray]:
    return {name: np.ones((batch, sequence), np.int64) for name in INPUT_NAMES}


def test_device_memory_used_reads_cudamemgetinfo(monkeypatch):
    monkeypatch.setattr(device, "load_cuda_runtime", lambda roots=None: FakeCudart())
    monkeypatch.setitem(FAKE_VRAM, "used", 123 << 20)
    assert device.device_memory_used() == 123 << 20

    class Failing:
        def cudaMemGetInfo(self, free, total):  # noqa: N802
            return 100  # cudaErrorNoDevice

    monkeypatch.setattr(device, "load_cuda_runtime", lambda roots=None: Failing())
    assert device.device_memory_used() is None
    monkeypatch.setattr(device, "load_cuda_runtime", lambda roots=None: None)
    assert device.device_memory_used() is None
    assert isinstance(ctypes.byref(ctypes.c_size_t(0))._obj, ctypes.c_size_t)  # what FakeCudart relies on


def test_isolated_benchmark_reports_engine_and_context_vram_from_the_child(plan):
    """`qtool bench --isolated`: the child process loads the engine; its readings come back, this one takes none."""
    FAKE_VRAM["used"] = 0
    tensorrt_here = sys.modules.get("tensorrt")
    result = run_benchmark(FakeTrtRunnerFactory(plan), _feeds(), BenchConfig(warmup=1, iterations=3), isolated=True)
    memory = result["memory"]
    assert memory["scope"] == "isolated process" and result["runner"] == "tensorrt"
    assert memory["vram_engine_bytes"] == FAKE_ENGINE_VRAM  # weights: after deserializing - before
    assert memory["vram_context_bytes"] == FAKE_CONTEXT_VRAM  # activations: after the context - after the engine
    assert memory["vram_total_bytes"] == FAKE_ENGINE_VRAM + FAKE_CONTEXT_VRAM
    assert memory["engine_file_bytes"] == plan.stat().st_size == result["model_bytes"]
    assert memory["device_memory_bytes"] == 12345 and "cudaMemGetInfo" in memory["vram_method"]
    assert FAKE_VRAM["used"] == 0 and sys.modules.get("tensorrt") is tensorrt_here  # nothing ran here


def test_in_process_runner_reports_vram_differences(plan, monkeypatch):
    fake_installer(monkeypatch)()
    monkeypatch.setattr(device, "load_cuda_runtime", lambda roots=None: FakeCudart())
    monkeypatch.setitem(FAKE_VRAM, "used", 50 << 20)
    with TrtRunner(plan) as runner:
        runner.infer(_feeds())
        FAKE_VRAM["used"] += 1 << 20  # e.g. kernels loaded lazily on the first run
        record = runner_device_memory(runner)
    assert record["vram_engine_bytes"] == FAKE_ENGINE_VRAM and record["vram_context_bytes"] == FAKE_CONTEXT_VRAM
    assert record["vram_total_bytes"] == FAKE_ENGINE_VRAM + FAKE_CONTEXT_VRAM + (1 << 20)
    assert FAKE_VRAM_TOTAL > record["vram_total_bytes"]


def test_without_memory_readings_only_the_file_size_and_scratch_are_reported(plan, monkeypatch):
    fake_installer(monkeypatch)(cudart=FakeCudart(fail={"cudaMemGetInfo": 1}))
    with TrtRunner(plan) as runner:
        record = runner_device_memory(runner)
    assert record == {"engine_file_bytes": plan.stat().st_size, "device_memory_bytes": 12345}


def test_engines_sharing_a_process_report_no_total_that_counts_the_next_one():
    from qtool.deployment.bench import _in_shared_process

    record = {"vram_engine_bytes": 5, "vram_context_bytes": 2, "vram_total_bytes": 99, "engine_file_bytes": 4}
    assert _in_shared_process(dict(record), 1) == record  # alone: the total is this engine's
    shared = _in_shared_process(dict(record), 2)
    assert "vram_total_bytes" not in shared and shared["vram_engine_bytes"] == 5 and "isolated" in shared["vram_total"]
