"""qtool's scales outside qtool: the TensorRT calibration cache and ONNX Runtime's TensorQuantOverrides."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from qtool.analysis import CollectConfig, collect
from qtool.cli import app
from qtool.data import DataConfig, load_qnli, make_batches, tokenize_part
from qtool.errors import QtoolError, api_spelling
from qtool.exporter.points import load_quant_points
from qtool.fileio import read_json
from qtool.models.resolve import load_tokenizer
from qtool.quantization.calibration import CalibrateConfig, calibrate, calibration_paths, write_calibration
from qtool.quantization.scale_formats import (
    export_scales,
    load_ort_overrides,
    ort_overrides,
    read_trt_cache,
    tensor_scales,
    trt_cache_header,
    trt_cache_text,
    trt_version_code,
    write_ort_overrides,
    write_trt_cache,
)

runner = CliRunner()
CACHE_LINE = re.compile(r"^(?P<name>\S.*): (?P<hex>[0-9a-f]{8})$")


@pytest.fixture(scope="module")
def tiny(tiny_onnx, session_data):
    split = load_qnli(DataConfig(source=str(session_data)))
    tokenizer = load_tokenizer(tiny_onnx.parent / "tokenizer")
    stats = collect(tiny_onnx, split, tokenizer, CollectConfig(samples=16, batch_size=8))
    model, points = load_quant_points(tiny_onnx)
    documents = {
        "max": calibrate(stats, CalibrateConfig()),
        "mixed": calibrate(stats, CalibrateConfig(mixed_precision="paper")),
        "peg": calibrate(stats, CalibrateConfig(method="peg", groups=3)),
        "peg-k1": calibrate(stats, CalibrateConfig(method="peg", groups=1)),
        "gemm-inputs": calibrate(stats, CalibrateConfig(scope="gemm-inputs")),
    }
    batches = make_batches(tokenize_part(tokenizer, split.parts["calibration"][:16], 128), 8)[:2]
    return {"graph": tiny_onnx, "model": model, "points": points, "documents": documents, "batches": batches}


def _calibration_file(tiny, name, folder):
    document = tiny["documents"][name]
    return write_calibration(document, calibration_paths(folder, document.recipe)[0])


# -- TensorRT cache ------------------------------------------------------------------------------
def test_trt_version_codes_follow_nv_tensorrt_version():
    assert trt_version_code("10.14.1") == 101401  # TensorRT 10: major*10000 + minor*100 + patch
    assert trt_version_code("10.0.1.6") == 100001  # the build number is not part of it
    assert trt_version_code("8.6.1") == 8601  # TensorRT 8: major*1000 + minor*100 + patch
    assert trt_cache_header("10.14.1") == "TRT-101401-EntropyCalibration2"
    for bad in ("ten", "10", "10.100.1"):
        with pytest.raises(QtoolError, match=api_spelling("--trt-version")):
            trt_version_code(bad)


def test_trt_cache_is_tensorrt_text_format_and_reads_back_exactly(tiny, tmp_path):
    document = tiny["documents"]["max"]
    path = write_trt_cache(document, tmp_path / "max.calib.cache", trt_cache_header("10.14.1"), tiny["model"])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "TRT-101401-EntropyCalibration2"
    written = {}
    for line in lines[1:]:
        match = CACHE_LINE.match(line)
        assert match, line
        written[match["name"]] = match["hex"]
    back = read_trt_cache(path)
    assert back == tensor_scales(document, tiny["model"])
    assert set(back) == set(written)
    by_point = {p.name: p for p in tiny["points"]}
    for name, entry in document.tensors.items():
        expected = np.float32(entry.scale)
        assert written[entry.tensor] == struct.pack(">f", expected).hex()  # big-endian IEEE-754 bits
        assert np.float32(back[entry.tensor]) == expected  # exactly, as float32
        if by_point[name].matmul_input:  # the attention MatMul input carries the same values and scale
            assert np.float32(back[by_point[name].matmul_input]) == expected
    assert sum(1 for p in tiny["points"] if p.matmul_input) >= 6
    assert len(back) > len(document.tensors)  # the reshapes and MatMul inputs are named too


def test_without_the_graph_each_point_names_its_own_tensor(tiny):
    document = tiny["documents"]["max"]
    scales = tensor_scales(document)
    assert scales == {e.tensor: float(np.float32(e.scale)) for e in document.tensors.values()}
    assert trt_cache_text(document, "TRT-101401-EntropyCalibration2").count("\n") == len(document.tensors) + 1


def test_points_kept_in_float_are_absent(tiny):
    document = tiny["documents"]["mixed"]
    assert document.kept_in_float
    tensors = tensor_scales(document, tiny["model"])
    point_tensors = {p.name: p.tensor for p in tiny["points"]}
    for name in document.kept_in_float:
        assert point_tensors[name] not in tensors
    assert set(ort_overrides(document, tiny["model"])) == set(tensors)


def test_export_of_a_gemm_edges_only_calibration_says_the_placement_is_lost(tiny, tmp_path):
    summaries = {
        name: export_scales(tiny["documents"][name], "ort-overrides", tmp_path / f"{name}.json")
        for name in ("gemm-inputs", "max")
    }
    assert "placement_note" not in summaries["max"]
    assert "deploy that graph" in summaries["gemm-inputs"]["placement_note"]


def test_grouped_peg_calibration_is_refused_and_k1_is_exported(tiny, tmp_path):
    peg = tiny["documents"]["peg"]
    with pytest.raises(QtoolError, match="per-embedding-group.*QDQ graph"):
        write_trt_cache(peg, tmp_path / "peg.calib.cache", "TRT-101401-EntropyCalibration2")
    with pytest.raises(QtoolError, match="per-embedding-group"):
        write_ort_overrides(peg, tmp_path / "peg.json")
    assert not list(tmp_path.iterdir())
    # One group is per-tensor max: exportable, and the same scales as max.
    assert tensor_scales(tiny["documents"]["peg-k1"]) == tensor_scales(tiny["documents"]["max"])


def test_corrupt_cache_line_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.cache"
    bad.write_text("TRT-101401-EntropyCalibration2\ninput: 3caa54fc\nno hex here\n")
    with pytest.raises(QtoolError, match=r"bad.cache:3"):
        read_trt_cache(bad)
    (tmp_path / "nohdr.cache").write_text("input: 3caa54fc\n")
    with pytest.raises(QtoolError, match="TRT-"):
        read_trt_cache(tmp_path / "nohdr.cache")


# -- ONNX Runtime overrides -----------------------------------------------------------------------
def _q_scales(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    model = onnx.load(str(path))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {
        node.input[0]: (initializers[node.input[1]], initializers[node.input[2]])
        for node in model.graph.node
        if node.op_type == "QuantizeLinear"
    }


@pytest.mark.parametrize("gather", ["quantized", "not-quantized"])
def test_ort_overrides_reproduce_qtool_scales_in_quantize_static(tiny, tmp_path, gather):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from qtool.quantization.ort_quantizers import calibration_reader

    document = tiny["documents"]["max"]
    path = write_ort_overrides(document, tmp_path / "max.ort-overrides.json", tiny["model"])
    overrides = load_ort_overrides(path)
    first = next(iter(overrides.values()))[0]
    assert first["scale"].dtype == np.float32 and first["scale"].shape == ()
    assert first["zero_point"].dtype == np.int8 and first["zero_point"] == 0
    assert first["quant_type"] == QuantType.QInt8

    # ONNX Runtime's default op list; without Gather, it quantizes the pooler's [CLS] slice as an
    # input of the pooler Gemm (with the override) instead of with the Gather's input scale.
    ops = None if gather == "quantized" else sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - {"Gather"})
    output = tmp_path / "ort.qdq.onnx"
    quantize_static(
        str(tiny["graph"]),
        str(output),
        calibration_reader([batch.feeds for batch in tiny["batches"]]),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=ops,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"TensorQuantOverrides": overrides, "ActivationSymmetric": True},
    )
    quantized = _q_scales(output)
    producer = {out: node for node in tiny["model"].graph.node for out in node.output}
    expected = read_json(path)
    checked, gather_outputs = 0, []
    for tensor, (scale, zero_point) in quantized.items():
        if tensor not in expected:
            continue
        assert zero_point.dtype == np.int8 and zero_point == 0
        wanted = np.float32(expected[tensor][0]["scale"])
        if producer.get(tensor) is not None and producer[tensor].op_type == "Gather" and scale != wanted:
            # ONNX Runtime gives a Gather's output the quantization of the Gather's input.
            assert scale == quantized[producer[tensor].input[0]][0]
            gather_outputs.append(tensor)
            continue
        assert scale.dtype == np.float32 and scale == wanted, tensor
        checked += 1
    assert checked >= 0.9 * len(expected) and checked > 20  # nearly every override was used and checked
    pooler_input = next(p.tensor for p in tiny["points"] if p.name == "pooler.input")
    if gather == "quantized":
        assert set(gather_outputs) <= {pooler_input}
    else:
        assert not gather_outputs and quantized[pooler_input][0] == np.float32(expected[pooler_input][0]["scale"])


def test_load_ort_overrides_refuses_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": [{"scale": "big", "zero_point": 0}]}')
    with pytest.raises(QtoolError, match="numeric scale"):
        load_ort_overrides(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(QtoolError, match="not an ONNX Runtime overrides file"):
        load_ort_overrides(bad)


# -- CLI ------------------------------------------------------------------------------------------
def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_export_scales_cli_writes_both_formats(tiny, tmp_path):
    calibration = _calibration_file(tiny, "max", tmp_path)
    recipe = tiny["documents"]["max"].recipe
    result = runner.invoke(
        app, ["export-scales", str(calibration), "--format", "trt-cache", "--model", str(tiny["graph"])]
    )
    assert result.exit_code == 0, result.output
    cache = tmp_path / f"{recipe}.calib.cache"
    assert str(cache) in result.stdout and "tensor scales" in result.stdout
    assert read_trt_cache(cache) == tensor_scales(tiny["documents"]["max"], tiny["model"])

    target = tmp_path / "out" / "overrides.json"
    result = runner.invoke(app, ["export-scales", str(calibration), "-f", "ort-overrides", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert "note: without --model" in result.stdout
    assert read_json(target) == ort_overrides(tiny["documents"]["max"])

    result = runner.invoke(
        app, ["export-scales", str(calibration), "-f", "trt-cache", "--trt-version", "10.8.0", "-o", str(cache)]
    )
    assert result.exit_code == 0, result.output
    assert cache.read_text().startswith("TRT-100800-EntropyCalibration2\n")


def test_export_scales_cli_errors_write_nothing(tiny, tmp_path):
    calibration = _calibration_file(tiny, "max", tmp_path)
    before = set(tmp_path.iterdir())
    out = tmp_path / "x.out"

    _one_line_error(
        runner.invoke(app, ["export-scales", str(calibration), "-f", "tensorrt", "-o", str(out)]), "--format"
    )
    _one_line_error(
        runner.invoke(app, ["export-scales", str(tmp_path / "missing.json"), "-f", "trt-cache", "-o", str(out)]),
        "does not exist",
    )
    corrupt = tmp_path / "corrupt.calib.json"
    corrupt.write_text("{not json")
    _one_line_error(runner.invoke(app, ["export-scales", str(corrupt), "-f", "trt-cache", "-o", str(out)]), "JSON")
    other = tmp_path / "other.calib.json"
    other.write_text('{"format": "something-else"}')
    _one_line_error(
        runner.invoke(app, ["export-scales", str(other), "-f", "ort-overrides", "-o", str(out)]),
        "not a qtool calibration file",
    )
    _one_line_error(
        runner.invoke(
            app, ["export-scales", str(calibration), "-f", "trt-cache", "--trt-version", "x", "-o", str(out)]
        ),
        "--trt-version",
    )
    foreign = tmp_path / "foreign.calib.json"
    document = read_json(calibration)
    document["model"] = {"source_model": "another", "model_sha256": "0" * 64}
    foreign.write_text(json.dumps(document))
    _one_line_error(
        runner.invoke(
            app, ["export-scales", str(foreign), "-f", "trt-cache", "-m", str(tiny["graph"]), "-o", str(out)]
        ),
        "calibrated for another",
    )
    peg = _calibration_file(tiny, "peg", tmp_path)
    _one_line_error(
        runner.invoke(app, ["export-scales", str(peg), "-f", "trt-cache", "-o", str(out)]), "per-embedding-group"
    )
    assert not out.exists()
    assert set(tmp_path.iterdir()) == before | {corrupt, other, foreign, peg}
