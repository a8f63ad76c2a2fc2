"""`qtool bench` from the command line: tables, JSON, comparisons and one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qtool.cli import app

runner = CliRunner()


def _bench(*args):
    return runner.invoke(app, ["bench", *map(str, args)])


def test_bench_json_and_compare(tiny_onnx, session_data):
    common = ["--data", session_data, "--iterations", "3", "--warmup", "1"]
    result = _bench(tiny_onnx, "--batch", "1,2", "--seq-len", "16", "--json", *common)
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert [(r["batch"], r["sequence_length"]) for r in runs[0]["results"]] == [(1, 16), (2, 16)]
    assert {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "throughput_per_s"} <= set(
        runs[0]["results"][0]["latency"])
    result = _bench(tiny_onnx, tiny_onnx, "--compare", "--seq-len", "16", "--eval", "--limit", "16", *common)
    assert result.exit_code == 0, result.output
    assert "latency" in result.stdout and "accuracy" in result.stdout
    compared = json.loads(_bench(tiny_onnx, tiny_onnx, "--compare", "--seq-len", "16", "--json", *common).stdout)
    candidates = compared["results"][0]["candidates"]
    assert [c["name"] for c in candidates] == ["fp32.onnx", "fp32.onnx#2"]
    assert candidates[0]["speedup"] == 1.0 and candidates[1]["speedup"] > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch", "0"], "--batch must be at least 1"),
        (["--seq-len", "4000"], "exceeds the model's"),
        (["--provider", "NoSuchExecutionProvider"], "not available here"),
        (["--iterations", "0"], "--iterations"),
    ],
)
def test_bench_bad_options(tiny_onnx, session_data, extra, message):
    result = _bench(tiny_onnx, "--data", session_data, "--iterations", "2", *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr.strip().splitlines()[-1]


def test_bench_refuses_a_plan_that_is_not_an_engine(tmp_path, session_data):
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"\x00garbage" * 64)
    result = _bench(plan, "--data", session_data)
    assert result.exit_code == 2
    assert "not a TensorRT engine" in result.stderr.strip().splitlines()[-1]
