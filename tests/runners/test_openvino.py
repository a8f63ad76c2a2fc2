"""The OpenVINO backend on tiny models: build, run, labels, benchmarks, and the missing-package error."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qtool.cli import app
from qtool.data import make_batches, tokenize_part
from qtool.deployment.backends import backend_named
from qtool.deployment.evaluate import logit_to_label
from qtool.deployment.model_files import artifact_key
from qtool.errors import QtoolError
from qtool.quantization.calibration import CalibrateConfig, calibrate
from qtool.quantization.graphs import write_calibrated_graph
from qtool.runners.ort import OrtRunner
from tests.helpers.cpu import HERE, X86_HERE, X86_WITH_VNNI_HERE

pytest.importorskip("openvino")
runner = CliRunner()


@pytest.fixture(scope="module")
def graphs(scaled_model, relabelled, tmp_path_factory):
    folder = tmp_path_factory.mktemp("openvino")
    split, tokenizer = relabelled
    calibration = calibrate(scaled_model["stats"], CalibrateConfig(method="max", scope="gemm-inputs"))
    qdq = write_calibrated_graph(scaled_model["graph"], calibration, folder / "max-gemm-inputs.qdq.onnx", "gathered")
    batches = make_batches(tokenize_part(tokenizer, split.parts["eval"][:48], 128), 16)
    return {"fp32": scaled_model["graph"], "qdq": qdq, "batches": batches}


def _logits(make, batches) -> np.ndarray:
    with make() as model:
        return np.concatenate([model.infer(batch.feeds)["logits"] for batch in batches])


def _kernels(ir, feeds):
    """What the OpenVINO runner says ran the GEMMs of model `ir` after one inference, parsed."""
    from qtool.runners.openvino import OpenVinoRunner

    with OpenVinoRunner(ir, threads=1) as model:
        model.infer(feeds)
        said = model.kernels()
    parsed = re.fullmatch(r"openvino: (\d+)/(\d+) GEMMs int8(?: \((.+)\))?", said or "")
    assert parsed, said
    return parsed


def test_openvino_runs_the_fp32_graph_as_onnx_runtime_does(graphs, tmp_path):
    from qtool.runners.openvino import OpenVinoRunner

    build = backend_named("openvino").build
    fp32_ir = build(graphs["fp32"], tmp_path / "fp32.ov.xml")["model"]
    qdq_ir = build(graphs["qdq"])["model"]
    assert qdq_ir.endswith("max-gemm-inputs.qdq.ov.xml") and (tmp_path / "fp32.ov.bin").is_file()
    assert build(graphs["qdq"])["model"] == qdq_ir  # cached: the same graph and OpenVINO
    # the attention's Q/DQ pairs moved up to its projections (exactly: tests/exporter/test_families.py)
    assert build(graphs["qdq"])["graph_passes"]["quantize_at_producers"] > 0
    (tmp_path / "fp32.ov.bin").unlink()
    assert build(graphs["fp32"], tmp_path / "fp32.ov.xml")["model"] == fp32_ir and (tmp_path / "fp32.ov.bin").is_file()
    assert backend_named("openvino").source_graph(Path(qdq_ir)) == graphs["qdq"]
    batches = graphs["batches"]
    reference = _logits(lambda: OrtRunner(graphs["fp32"], optimization_level="disable"), batches)
    ours = _logits(lambda: OpenVinoRunner(fp32_ir, threads=1), batches)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    float_kernels, int8_kernels = (_kernels(ir, batches[0].feeds) for ir in (fp32_ir, qdq_ir))
    assert float_kernels.group(1) == "0" and int(float_kernels.group(2)) > 0 and int(int8_kernels.group(2)) > 0
    # How OpenVINO fuses the GEMMs depends on the CPU: under QEMU's Haswell emulation the QDQ graph had 18
    # GEMM layers and the FP32 graph 16, on the VNNI CPU as many as each other.
    if X86_WITH_VNNI_HERE:  # OpenVINO runs the quantized GEMMs in int8 (elsewhere it may choose float)
        assert int(int8_kernels.group(1)) > 0 and "i8" in int8_kernels.group(0), int8_kernels.group(0)
    assert logit_to_label(qdq_ir, ("entailment", "not_entailment")).tolist() == logit_to_label(
        graphs["qdq"], ("entailment", "not_entailment")
    ).tolist()


def test_a_graph_too_large_for_one_message_converts_through_a_file(graphs, tmp_path, monkeypatch):
    """Above protobuf's 2 GB the build writes the graph with its weights beside it to a temporary
    folder and saves the OpenVINO model before that folder goes (here forced with a limit of 0)."""
    from qtool.deployment import backends
    from qtool.runners.openvino import OpenVinoRunner

    monkeypatch.setattr(backends, "PROTOBUF_LIMIT", 0)
    through_a_file = backends.build_openvino(graphs["qdq"], tmp_path / "through-a-file.ov.xml")["model"]
    monkeypatch.undo()
    in_memory = backends.build_openvino(graphs["qdq"], tmp_path / "in-memory.ov.xml")["model"]
    assert (tmp_path / "through-a-file.ov.bin").is_file() and not list(tmp_path.glob("*.data"))
    batches = graphs["batches"]
    np.testing.assert_array_equal(
        _logits(lambda: OpenVinoRunner(through_a_file, threads=1), batches),
        _logits(lambda: OpenVinoRunner(in_memory, threads=1), batches),
    )


def test_a_gemm_input_the_graph_keeps_in_float_stays_float_on_openvino(scaled_model, graphs, tmp_path):
    """With every activation kept in float and only the weights in 8 bits, OpenVINO computes what the
    graph says, as for FP32; by default its CPU plugin would quantize those GEMM inputs at run time
    (here about 1 % of the logits' scale on a VNNI CPU)."""
    from qtool.runners.openvino import OpenVinoRunner, compile_properties

    calibration = calibrate(scaled_model["stats"], CalibrateConfig(method="max", scope="gemm-inputs", keep_fp=("*",)))
    weights_only = write_calibrated_graph(scaled_model["graph"], calibration, tmp_path / "weights.qdq.onnx", "gathered")
    ir = backend_named("openvino").build(weights_only)["model"]
    assert artifact_key(Path(ir))["run_settings"] == compile_properties()  # cached results follow the settings
    batches = graphs["batches"]
    reference = _logits(lambda: OrtRunner(weights_only, optimization_level="disable"), batches)
    ours = _logits(lambda: OpenVinoRunner(ir, threads=1), batches)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


@pytest.mark.skipif(
    not X86_WITH_VNNI_HERE,
    reason=f"OpenVINO's INT8 kernels are near the QDQ graph only where measured, x86 with VNNI; not this CPU "
    f"({HERE[1]}): under QEMU's Haswell emulation its logits of a QDQ graph were about 10 times further from the "
    "graph's than FP32's are",
)
def test_openvino_runs_a_qdq_graph_in_int8_close_to_the_graph(graphs):
    from qtool.runners.openvino import OpenVinoRunner

    qdq_ir = backend_named("openvino").build(graphs["qdq"])["model"]
    batches = graphs["batches"]
    reference = _logits(lambda: OrtRunner(graphs["fp32"], optimization_level="disable"), batches)
    qdq = _logits(lambda: OrtRunner(graphs["qdq"], optimization_level="disable"), batches)
    int8 = _logits(lambda: OpenVinoRunner(qdq_ir, threads=1), batches)
    quantization_error = np.abs(qdq - reference).max()
    assert quantization_error > 1e-3  # the QDQ graph really differs from FP32
    # OpenVINO's integer GEMMs round differently from the QDQ graph's float ones, but stay far closer
    # to it than FP32 is; its prediction changes are what `qtool bench --eval` reports.
    assert np.median(np.abs(int8 - qdq)) < 0.25 * np.median(np.abs(qdq - reference))
    assert (int8.argmax(-1) == qdq.argmax(-1)).mean() >= 0.9


def _quantized_identity(path: Path, scale: float, width: int) -> Path:
    """x -> Q/DQ (int8, one scale) -> MatMul by the identity (int8 codes, scale 1) -> y: y shows the codes."""
    from onnx import TensorProto, helper, numpy_helper, save

    initializers = [
        numpy_helper.from_array(np.array(scale, np.float32), "scale"),
        numpy_helper.from_array(np.array(0, np.int8), "zero"),
        numpy_helper.from_array(np.eye(width, dtype=np.int8), "identity_codes"),
        numpy_helper.from_array(np.array(1.0, np.float32), "unit"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["codes"], name="x/QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["codes", "scale", "zero"], ["dequantized"]),
        helper.make_node("DequantizeLinear", ["identity_codes", "unit"], ["identity"]),
        helper.make_node("MatMul", ["dequantized", "identity"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "identity", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])], initializers)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_openvino_quantizes_codes_near_a_rounding_boundary_as_the_graph_does(tmp_path):
    """Small codes a few millionths of a step from a half step: ONNX's round(x / s) puts them on the right
    side, OpenVINO's FakeQuantize as converted (x / s + 128 in float32) often does not; the graph qtool
    builds for OpenVINO rounds the codes first and matches ONNX Runtime exactly."""
    import openvino as ov

    from qtool.runners.openvino import compile_properties

    scale, width = 0.0173, 64
    graph = _quantized_identity(tmp_path / "identity.onnx", scale, width)
    rng = np.random.default_rng(0)
    steps = rng.integers(-6, 6, size=(256, width)) + 0.5 + rng.choice([-1, 1], size=(256, width)) * rng.uniform(
        1e-6, 6e-6, size=(256, width))
    x = (steps * np.float32(scale)).astype(np.float32)
    with OrtRunner(graph, optimization_level="disable") as model:
        reference = model.infer({"x": x})["y"]
    core = ov.Core()

    def run(model) -> np.ndarray:
        compiled = core.compile_model(model, "CPU", compile_properties(1))
        return compiled({"x": x})[compiled.outputs[0]]

    built = backend_named("openvino").build(graph, tmp_path / "identity.ov.xml")
    assert built["graph_passes"]["quantize_whole_codes"] == 1
    np.testing.assert_array_equal(run(core.read_model(built["model"])), reference)
    steps_off = np.abs(run(ov.convert_model(str(graph))) - reference) > scale / 2
    if X86_HERE:  # float arithmetic, not integer kernels: measured with VNNI and under Haswell emulation
        assert steps_off.mean() > 0.05, steps_off.mean()  # what the pass is for


def test_openvino_through_the_cli_build_and_an_interleaved_benchmark(graphs, session_data):
    built = runner.invoke(app, ["build", str(graphs["qdq"]), "--backend", "openvino", "--json"])
    assert built.exit_code == 0, built.output
    model = json.loads(built.stdout)["model"]
    table = runner.invoke(app, ["build", str(graphs["qdq"]), "--backend", "openvino"])
    assert table.exit_code == 0 and f"artifact  {model}" in table.stdout, table.output
    scored = runner.invoke(app, ["eval", model, "--data", str(session_data), "--limit", "24", "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["model"] == model and json.loads(scored.stdout)["examples"] == 24
    assert json.loads(scored.stdout)["kernels"].startswith("openvino: ")  # what ran the GEMMs on this CPU
    compared = runner.invoke(app, ["bench", str(graphs["fp32"]), model, "--compare", "--seq-len", "16", "--iterations",
                                   "3", "--warmup", "1", "--data", str(session_data), "--json"])
    assert compared.exit_code == 0, compared.output
    rows = json.loads(compared.stdout)["results"][0]["candidates"]
    assert [row["runner"] for row in rows] == ["onnxruntime", "openvino"] and rows[1]["model_bytes"] > 0


def test_without_openvino_build_and_run_are_one_line(graphs, tmp_path, monkeypatch):
    from qtool.runners.openvino import OpenVinoRunner

    monkeypatch.setitem(sys.modules, "openvino", None)
    for action in (lambda: backend_named("openvino").build(graphs["qdq"], tmp_path / "x.ov.xml"),
                   lambda: OpenVinoRunner(tmp_path / "x.ov.xml").__enter__()):
        with pytest.raises(QtoolError) as raised:
            action()
        assert raised.value.cli_message == "OpenVINO is not installed; pip install 'qtool[peers]' (or pip install openvino)"


class _Info:
    def __init__(self, value: str) -> None:
        self.value = value

    def astype(self, _kind):
        return self.value


class _Layer:
    def __init__(self, layer_type: str, primitive: str, merged: str = "") -> None:
        self.info = {"layerType": _Info(layer_type), "primitiveType": _Info(primitive), "originalLayersNames": _Info(merged)}

    def get_rt_info(self):
        return self.info


def test_the_kernels_line_knows_a_fused_attention_block_by_the_types_it_was_made_of():
    """OpenVINO may rename a fused block's MatMuls; the types of the model as read decide, whatever the names."""
    from qtool.runners.openvino import _gemm_primitive

    types = {"m": "MatMul", "sm": "Softmax", "sdpa": "ScaledDotProductAttention", "t": "Transpose", "d": "Divide"}
    assert _gemm_primitive(_Layer("FullyConnected", "brgemm_avx512_I8"), types) == "brgemm_avx512_i8"
    for merged in ("t,m,d", "t,sm,d", "t,sdpa"):
        assert _gemm_primitive(_Layer("Subgraph", "jit_avx512_i8", merged), types) == "jit_avx512_i8", merged
    assert _gemm_primitive(_Layer("Subgraph", "jit_avx512_f32", "t,d"), types) is None  # element-wise only
    assert _gemm_primitive(_Layer("MVN", "jit_avx512_f32", "m"), types) is None
