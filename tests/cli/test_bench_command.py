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
        runs[0]["results"][0]["latency"]
    )
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


@pytest.fixture(scope="module")
def tiny_qdq(tiny_onnx, session_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("qdq")
    result = runner.invoke(
        app,
        [
            "calibrate",
            str(tiny_onnx),
            "--scope",
            "gemm",
            "--data",
            str(session_data),
            "--samples",
            "16",
            "--no-eval",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["qdq_graph"]


def test_build_ort_fuses_integer_kernels(tiny_qdq, tmp_path):
    result = runner.invoke(app, ["build", tiny_qdq, "--backend", "ort", "-o", str(tmp_path / "m.ort.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sum(report["integer_ops"].values()) > 0
    assert report["float_matmuls_two_dequantized_inputs"] == 0
    assert report["scope"] == "gemm"
    table = runner.invoke(
        app, ["build", tiny_qdq, "--backend", "ort", "-o", str(tmp_path / "t.onnx")], env={"COLUMNS": "300"}
    )
    assert table.exit_code == 0, table.output
    assert "qtool calibrate --scope gemm-inputs" in table.stdout  # the note on residual-path quantization


def test_build_ort_chooses_exact_int8_kernels_for_the_cpu(tiny_qdq, tmp_path, monkeypatch):
    """--int8-kernels auto takes U8S8 on this machine's answer and U8U8 on an x86 CPU without VNNI;
    a U8S8 form opened on such a CPU logs how to rebuild it."""
    import qtool.runners.ort as ort_runner

    auto = json.loads(runner.invoke(app, ["build", tiny_qdq, "-o", str(tmp_path / "auto.onnx"), "--json"]).stdout)
    assert (auto["int8_kernels"], auto["int8_kernels_reason"]) == ort_runner.int8_kernels_for_this_cpu()
    monkeypatch.setattr(ort_runner.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(ort_runner, "_cpu_flags", lambda: {"sse4_2", "avx2"})
    ort_runner.int8_kernels_for_this_cpu.cache_clear()
    try:
        no_vnni = json.loads(runner.invoke(app, ["build", tiny_qdq, "-o", str(tmp_path / "a.onnx"), "--json"]).stdout)
        assert no_vnni["int8_kernels"] == "u8u8" and "without VNNI" in no_vnni["int8_kernels_reason"]
        forced = runner.invoke(app, ["build", tiny_qdq, "--int8-kernels", "u8s8", "-o", str(tmp_path / "f.onnx")])
        assert forced.exit_code == 0, forced.output
        warnings: list[str] = []
        monkeypatch.setattr(ort_runner.log, "warning", lambda message, *args: warnings.append(message % args))
        with ort_runner.OrtRunner(tmp_path / "f.onnx"), ort_runner.OrtRunner(tmp_path / "a.onnx"):
            pass
        assert len(warnings) == 1 and "f.onnx" in warnings[0] and "--int8-kernels u8u8" in warnings[0]
        monkeypatch.setattr(ort_runner, "_cpu_flags", lambda: {"avx2", "avx_vnni"})
        ort_runner.int8_kernels_for_this_cpu.cache_clear()
        assert ort_runner.int8_kernels_for_this_cpu()[0] == "u8s8"
        monkeypatch.setattr(ort_runner, "_cpu_flags", lambda: None)
        ort_runner.int8_kernels_for_this_cpu.cache_clear()
        assert ort_runner.int8_kernels_for_this_cpu()[0] == "u8u8"
        monkeypatch.setattr(ort_runner.platform, "machine", lambda: "aarch64")
        ort_runner.int8_kernels_for_this_cpu.cache_clear()
        assert ort_runner.int8_kernels_for_this_cpu()[0] == "u8s8"
    finally:
        ort_runner.int8_kernels_for_this_cpu.cache_clear()
    for bad, message in (
        (["--int8-kernels", "s8s8"], "--int8-kernels must be"),
        (["--backend", "trt", "--int8-kernels", "u8u8"], "--int8-kernels is for --backend ort"),
    ):
        result = runner.invoke(app, ["build", tiny_qdq, *bad, "-o", str(tmp_path / "bad.onnx")])
        assert result.exit_code == 2 and message in result.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "bad.onnx").exists()


def test_build_trt_without_tensorrt_says_how_to_install(tiny_qdq, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorrt(name, *args, **kwargs):
        if name == "tensorrt" or name.startswith("tensorrt."):
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    result = runner.invoke(app, ["build", tiny_qdq, "--backend", "trt", "-o", str(tmp_path / "e.plan")])
    assert result.exit_code == 2
    assert "pip install 'qtool[trt]'" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "e.plan").exists()
    for bad, message in (
        (["--backend", "tpu"], "unknown backend"),
        (["--backend", "trt", "--batch", "0,1,2"], "--batch"),
    ):
        result = runner.invoke(app, ["build", tiny_qdq, *bad])
        assert result.exit_code == 2 and message in result.stderr.strip().splitlines()[-1]
