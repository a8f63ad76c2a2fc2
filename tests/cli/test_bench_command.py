"""`qtool bench` from the command line: tables, JSON, comparisons and one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qtool.cli import app
from qtool.graph import graph_metadata

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
    assert "CPU: " in " ".join(result.stdout.split())  # every benchmark names its CPU
    compared = json.loads(_bench(tiny_onnx, tiny_onnx, "--compare", "--seq-len", "16", "--json", *common).stdout)
    environment = compared["environment"]
    assert environment["cpu"] and environment["int8_kernels"] in ("u8s8", "u8u8") and environment["onnxruntime"]
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


def test_bench_of_a_graph_moved_from_its_tokenizer_says_what_to_do(tiny_onnx, session_data, tmp_path):
    moved = tmp_path / "moved.onnx"
    moved.write_bytes(tiny_onnx.read_bytes())
    result = _bench(moved, "--data", session_data, "--iterations", "2")
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "is missing" in line and "re-export" in line and "--tokenizer FOLDER" in line
    tokenizer = tiny_onnx.parent / graph_metadata(tiny_onnx)["tokenizer"]
    given = _bench(moved, "--data", session_data, "--iterations", "2", "--warmup", "1", "--tokenizer", tokenizer)
    assert given.exit_code == 0, given.output


def _calibrated(tiny_onnx, session_data, folder, *options: str) -> str:
    result = runner.invoke(
        app,
        ["calibrate", str(tiny_onnx), "--scope", "gemm", *options, "--data", str(session_data), "--samples", "16",
         "--no-eval", "--out", str(folder), "--json"],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["qdq_graph"]


@pytest.fixture(scope="module")
def tiny_qdq(tiny_onnx, session_data, tmp_path_factory):
    return _calibrated(tiny_onnx, session_data, tmp_path_factory.mktemp("qdq"))


@pytest.fixture(scope="module")
def tiny_qdq_w7(tiny_onnx, session_data, tmp_path_factory):
    return _calibrated(tiny_onnx, session_data, tmp_path_factory.mktemp("qdq-w7"), "--weight-bits", "7")


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


def _build(graph: str, output, *options: str) -> dict:
    result = runner.invoke(app, ["build", graph, *options, "-o", str(output), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_build_ort_chooses_exact_int8_kernels_for_the_cpu(tiny_qdq, tiny_qdq_w7, tmp_path, monkeypatch, cpu_branch):
    """--int8-kernels auto, run as on a CPU whose U8S8 kernels saturate and as on one whose do not: U8U8
    for 8-bit weights where U8S8 saturates, U8S8 otherwise and for 7-bit weights on every CPU, each with
    its reason; a U8S8 build of 8-bit weights opened where U8S8 saturates logs how to rebuild it."""
    import qtool.runners.ort as ort_runner

    saturating = cpu_branch == "saturating"
    eight, seven = _build(tiny_qdq, tmp_path / "a.onnx"), _build(tiny_qdq_w7, tmp_path / "w7.onnx")
    assert eight["int8_kernels"] == ("u8u8" if saturating else "u8s8")
    assert ("saturate pairs of products" in eight["int8_kernels_reason"]) is saturating
    assert ort_runner.cpu_summary() in eight["int8_kernels_reason"]
    assert seven["int8_kernels"] == "u8s8"
    assert ("within 7 bits" in seven["int8_kernels_reason"]) is saturating
    _build(tiny_qdq, tmp_path / "f.onnx", "--int8-kernels", "u8s8")
    warnings: list[str] = []
    monkeypatch.setattr(ort_runner.log, "warning", lambda message, *args: warnings.append(message % args))
    with ort_runner.OrtRunner(tmp_path / "f.onnx"), ort_runner.OrtRunner(tmp_path / "a.onnx"):
        pass
    with ort_runner.OrtRunner(tmp_path / "w7.onnx"):
        pass
    if saturating:
        assert len(warnings) == 1 and "f.onnx" in warnings[0] and "--int8-kernels u8u8" in warnings[0]
    else:
        assert warnings == []


def test_int8_kernel_detection_falls_back_to_the_cpu_flags(monkeypatch):
    """Where the saturation probe cannot run, the CPU's flags decide: VNNI or not x86 -> U8S8, else U8U8."""
    import qtool.runners.ort as ort_runner

    monkeypatch.setattr(ort_runner, "u8s8_saturates", lambda: None)
    monkeypatch.setattr(ort_runner.platform, "machine", lambda: "x86_64")
    cases = [({"sse4_2", "avx2"}, "u8u8"), ({"avx2", "avx_vnni"}, "u8s8"), ({"avx512_vnni"}, "u8s8"), (None, "u8u8")]
    try:
        for flags, kernels in cases:
            monkeypatch.setattr(ort_runner, "_cpu_flags", lambda flags=flags: flags)
            ort_runner.int8_kernels_for_this_cpu.cache_clear()
            assert ort_runner.int8_kernels_for_this_cpu()[0] == kernels, flags
        monkeypatch.setattr(ort_runner.platform, "machine", lambda: "aarch64")
        ort_runner.int8_kernels_for_this_cpu.cache_clear()
        assert ort_runner.int8_kernels_for_this_cpu()[0] == "u8s8"
    finally:
        ort_runner.int8_kernels_for_this_cpu.cache_clear()


def test_saturation_probe_answers_for_the_real_kernels():
    """The probe runs ONNX Runtime here and answers yes or no, and auto follows it."""
    import qtool.runners.ort as ort_runner

    saturates = ort_runner.u8s8_saturates()
    assert saturates in (True, False)
    assert ort_runner.int8_kernels_for_this_cpu()[0] == ("u8u8" if saturates else "u8s8")


def test_build_ort_refuses_unknown_kernels(tiny_qdq, tmp_path):
    for bad, message in (
        (["--int8-kernels", "s8s8"], "--int8-kernels must be"),
        (["--backend", "trt", "--int8-kernels", "u8u8"], "--int8-kernels is not an option of backend trt"),
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
