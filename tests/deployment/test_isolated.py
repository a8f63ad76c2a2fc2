"""A function run in a fresh process: its result comes back, and the child runs the parent's qtool."""

from __future__ import annotations

import os

import pytest

from qtool.deployment.isolated import run_isolated
from qtool.errors import QtoolError
from qtool.runners.ort import SATURATION_ENV, saturation_for_children, u8s8_saturates


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


def test_the_child_imports_onnx_only_when_the_call_uses_it(tiny_onnx):
    """A benchmark child runs ONNX Runtime without onnx (0.6 s of imports), given the parent's probe."""
    handed = saturation_for_children()
    assert run_isolated(_onnx_state_after_a_benchmark, tiny_onnx, env=handed) == "deferred"
    assert run_isolated(_graph_inputs, tiny_onnx) == ["input_ids", "attention_mask", "token_type_ids"]


def _onnx_state_after_a_benchmark(path):
    import sys

    import numpy as np

    from qtool.deferred_imports import DeferredModule
    from qtool.deployment.backends import runner_factory
    from qtool.deployment.bench import BenchConfig, _isolated_benchmark  # what `run_benchmark(isolated=True)` runs

    feeds = {name: np.ones((1, 8), np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
    _isolated_benchmark(runner_factory(path, threads=1), feeds, BenchConfig(warmup=1, iterations=2))
    return "deferred" if isinstance(sys.modules.get("onnx"), DeferredModule) else "imported"


def _graph_inputs(path):
    import onnx

    return [i.name for i in onnx.load(str(path)).graph.input]


def test_a_child_takes_the_parents_probe_answer_and_probes_itself_without_it(monkeypatch):
    probed = u8s8_saturates()
    assert run_isolated(_probe_answer, env={SATURATION_ENV: "1"}) is True
    assert run_isolated(_probe_answer, env={SATURATION_ENV: "0"}) is False
    monkeypatch.delenv(SATURATION_ENV, raising=False)
    assert run_isolated(_probe_answer) is probed  # probed again in the child, on the same CPU


def _probe_answer():
    return u8s8_saturates()
