"""A function run in a fresh process: its result comes back, and the child runs the parent's qtool."""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import pytest

from qtool.deferred_imports import DeferredModule
from qtool.deployment.bench import BenchConfig, run_benchmark
from qtool.deployment.isolated import run_isolated
from qtool.errors import QtoolError
from qtool.runners.ort import OrtRunner, adopt_saturation, u8s8_saturates


def test_the_result_comes_from_another_process():
    assert run_isolated(os.getpid) != os.getpid()


def test_a_qtool_in_the_working_folder_is_not_the_one_the_child_imports(tmp_path, monkeypatch):
    other = tmp_path / "qtool"
    other.mkdir()
    (other / "__init__.py").write_text('raise ImportError("another qtool than the running one")\n')
    monkeypatch.chdir(tmp_path)
    assert run_isolated(os.getcwd) == str(tmp_path)


def test_a_user_error_in_the_child_is_raised_again_as_it_was():
    with pytest.raises(QtoolError, match="does not exist"):
        run_isolated(_missing_model)


def _missing_model():
    raise QtoolError("x.ov.xml does not exist; build it with `qtool build GRAPH --backend openvino`")


def test_an_isolated_benchmark_runs_onnx_runtime_without_importing_onnx(tiny_onnx):
    """The child takes the parent's probe of the CPU and reads no graph with onnx: 0.6 s less per process."""
    feeds = {name: np.ones((1, 8), np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
    factory = functools.partial(_OrtRunnerTellingOnnx, tiny_onnx, threads=1)
    result = run_benchmark(factory, feeds, BenchConfig(warmup=1, iterations=2), isolated=True)
    assert result["memory"]["onnx"] == "deferred" and result["memory"]["scope"] == "isolated process"
    assert result["model_bytes"] == tiny_onnx.stat().st_size  # read by the parent
    assert run_isolated(_graph_inputs, tiny_onnx) == ["input_ids", "attention_mask", "token_type_ids"]


class _OrtRunnerTellingOnnx(OrtRunner):
    def device_memory(self) -> dict:  # reported in the benchmark's memory record
        return {"onnx": "deferred" if isinstance(sys.modules.get("onnx"), DeferredModule) else "imported"}


def _graph_inputs(path):
    import onnx  # a call that uses onnx gets the real module

    return [i.name for i in onnx.load(str(path)).graph.input]


def test_a_child_takes_the_parents_probe_answer_and_probes_itself_without_it():
    probed = u8s8_saturates()
    assert run_isolated(_probe_answer, True) is True
    assert run_isolated(_probe_answer, False) is False
    assert run_isolated(_probe_answer, None) is probed  # probed again in the child, on the same CPU


def _probe_answer(handed):
    adopt_saturation(handed)
    return u8s8_saturates()
