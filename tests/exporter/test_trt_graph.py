"""The TensorRT graph of a graph: FP16 parity in ONNX Runtime, and each placement pass on the graph's structure.

No GPU is needed: ONNX Runtime's CPU kernels run the FP16 graphs (ONNX Runtime inserts casts to float32
around the few ops it has no FP16 kernel for, so this checks the graph's FP16 rounding of weights,
scales and activations between ops, not TensorRT's kernels).

Graphs run with ONNX Runtime's optimizations off, so both sides compute the QDQ semantics in float
and a difference is the FP16 conversion's alone, on every CPU. With them on, ONNX Runtime fuses parts
of the int8 QDQ graph into integer kernels (never the FP16 graph's), which on x86 without VNNI add
pairs of products in 16 bits and saturate: measured on the tiny model, that moves the QDQ graph's
logits by 0.11 under an AVX2 CPU model against 0.02 with VNNI, while the FP16 part stays 0.036.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from qtool.data import make_batches, tokenize_part
from qtool.errors import QtoolError
from qtool.exporter.trt_graph import (
    FP16_OPSET,
    FP32_OPS,
    TrtGraphConfig,
    float_embedding_tables,
    float_head_gemms,
    fp16_problems,
    scale_query_first,
    tensorrt_graph,
    to_fp16,
    write_trt_graph,
)
from qtool.graph import GraphIndex, graph_metadata
from qtool.models.resolve import load_tokenizer
from qtool.quantization.calibration import CalibrateConfig, calibrate
from qtool.quantization.graphs import write_calibrated_graph

# Stated tolerance of the FP16 conversion: the largest logit change at most this share of the largest |logit|.
FP16_RELATIVE_TOLERANCE = 0.01
ONLY_CONVERSION = TrtGraphConfig(fp16=True, quantize_head=True, float_embeddings=False, scale_query=False)


@pytest.fixture(scope="module")
def graphs(scaled_model, tmp_path_factory) -> dict:
    """The scaled tiny classifier's FP32 export, its QDQ graphs (scopes gemm and all) and eval batches."""
    root = tmp_path_factory.mktemp("trt-graph")
    fp32 = scaled_model["graph"]
    qdq = {
        scope: write_calibrated_graph(fp32, calibrate(scaled_model["stats"], CalibrateConfig(scope=scope)), root / f"{scope}.qdq.onnx")
        for scope in ("gemm", "all")
    }
    tokenizer = load_tokenizer(fp32.parent / "tokenizer")
    part = tokenize_part(tokenizer, scaled_model["split"].parts["eval"][:32], 128)
    return {"fp32": fp32, **qdq, "root": root, "batches": make_batches(part, 8), "stats": scaled_model["stats"]}


def _session(model: onnx.ModelProto, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _logits(model: onnx.ModelProto, batches, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL) -> np.ndarray:
    session = _session(model, level)
    return np.concatenate([session.run(["logits"], batch.feeds)[0] for batch in batches])


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values}


# -- FP16 ------------------------------------------------------------------------------------------


def test_fp16_export_keeps_logits_within_one_percent_in_onnxruntime(graphs):
    """The FP16 baseline: the FP32 export in FP16 stays within 1 % of the largest |logit| (measured: 0.1 %)."""
    source = onnx.load(str(graphs["fp32"]))
    converted, report = tensorrt_graph(source, ONLY_CONVERSION)
    assert report["float"] == "fp16" and report["fp16_converter"].endswith("convert_float_to_float16")
    expected, actual = _logits(source, graphs["batches"]), _logits(converted, graphs["batches"])
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0.5  # logits large enough for the tolerance to mean something
    assert np.abs(actual - expected).max() <= FP16_RELATIVE_TOLERANCE * scale


def _codes(model: onnx.ModelProto, batches) -> dict[str, np.ndarray]:
    """Every QuantizeLinear's int8 codes over the batches, in graph order."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    names = [n.output[0] for n in probe.graph.node if n.op_type == "QuantizeLinear"]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, TensorProto.INT8, None) for n in names)
    session = _session(probe)
    runs = [session.run(names, batch.feeds) for batch in batches]
    return {name: np.concatenate([run[i].ravel() for run in runs]).astype(np.int32) for i, name in enumerate(names)}


@pytest.mark.parametrize("name", ["gemm", "all"])
def test_fp16_qdq_graph_quantizes_alike_and_stays_near_fp32(graphs, name):
    """A QDQ graph in FP16: the first quantization point gives the FP32 graph's int8 codes (at least 98 %
    equal, the rest one step away: an FP16 value on a rounding boundary), and the logits stray from the
    FP32 export at most 1.5 times as far as the FP32 QDQ graph does, plus 1 % of the largest |logit|.
    (Later points inherit the boundary steps; this deliberately outlier-heavy model amplifies them.)"""
    source = onnx.load(str(graphs[name]))
    converted, _ = tensorrt_graph(source, ONLY_CONVERSION)
    expected, actual = _codes(source, graphs["batches"]), _codes(converted, graphs["batches"])
    assert list(actual) == list(expected)
    first = next(iter(expected))
    assert np.mean(actual[first] == expected[first]) >= 0.98 and np.abs(actual[first] - expected[first]).max() <= 1
    reference = _logits(onnx.load(str(graphs["fp32"])), graphs["batches"])
    quantization_error = np.abs(_logits(source, graphs["batches"]) - reference).max()
    fp16_error = np.abs(_logits(converted, graphs["batches"]) - reference).max()
    assert fp16_error <= 1.5 * quantization_error + FP16_RELATIVE_TOLERANCE * np.abs(reference).max()


@pytest.mark.parametrize("name", ["fp32", "all"])
def test_fp16_graph_types_inputs_outputs_and_qdq_scales(graphs, name):
    """int64 ids in, float32 logits out, every float initializer FP16 but LayerNorm's (which stays FP32
    between casts), every DequantizeLinear outputs FP16."""
    source = onnx.load(str(graphs[name]))
    converted = to_fp16(source)
    assert [(v.name, v.type.tensor_type.elem_type) for v in converted.graph.input] == [
        (v.name, TensorProto.INT64) for v in source.graph.input
    ]
    assert [(v.name, v.type.tensor_type.elem_type) for v in converted.graph.output] == [("logits", TensorProto.FLOAT)]
    types = _value_types(converted)
    readers = {name: {n.op_type for n in converted.graph.node if name in n.input} for name in types}
    floats = [i.name for i in converted.graph.initializer if i.data_type == TensorProto.FLOAT]
    assert all(readers.get(name, set()) <= set(FP32_OPS) for name in floats), floats  # only LayerNorm's gamma/beta
    norms = [n for n in converted.graph.node if n.op_type in FP32_OPS]
    assert norms and all(types[n.input[0]] == types[n.output[0]] == TensorProto.FLOAT for n in norms)
    dequantize = [n for n in converted.graph.node if n.op_type == "DequantizeLinear"]
    assert (len(dequantize) > 0) == (name != "fp32")
    assert all(types[n.output[0]] == TensorProto.FLOAT16 for n in dequantize)
    assert fp16_problems(converted, {"logits": TensorProto.FLOAT}) == []
    opset = next(o.version for o in converted.opset_import if o.domain == "")
    assert opset >= FP16_OPSET if dequantize else opset == 17  # FP16 scales need opset 19
    # the one float32 tensor left is the logits, cast from FP16 at the very end
    (final,) = [n for n in converted.graph.node if "logits" in n.output]
    assert final.op_type == "Cast" and final.attribute[0].i == TensorProto.FLOAT


def test_fp16_problems_names_float32_scales_and_changed_outputs(graphs):
    source = onnx.load(str(graphs["gemm"]))
    assert fp16_problems(source, {}) and "float32 scale" in fp16_problems(source, {})[0]
    converted = to_fp16(source)
    assert fp16_problems(converted, {"logits": TensorProto.FLOAT16}) == ["logits as FLOAT"]


def test_unconvertible_opset_is_a_one_line_error(graphs, monkeypatch):
    def fail(model, version):
        raise RuntimeError("no adapter")

    monkeypatch.setattr(onnx.version_converter, "convert_version", fail)
    with pytest.raises(QtoolError, match=r"opset 17 to 19 .*qtool export --opset 19"):
        to_fp16(onnx.load(str(graphs["gemm"])))


# -- placement passes ------------------------------------------------------------------------------


def test_embedding_tables_are_float_and_read_the_dequantized_values(graphs):
    model = onnx.load(str(graphs["all"]))
    before = GraphIndex(model.graph)
    dequantized_tables = {n.output[0] for n in before.nodes if n.op_type == "DequantizeLinear" and n.input[0] in before.initializers}
    tables = [n for n in before.nodes if n.op_type == "Gather" and n.input[0] in dequantized_tables]
    assert len(tables) == 3  # word, token type and position tables, int8 in scope `all`
    changed = float_embedding_tables(model)
    assert sorted(changed) == sorted(n.name for n in tables)
    after = GraphIndex(model.graph)
    for node in after.nodes:
        if node.name in changed:
            assert node.input[0] in after.initializers
            assert after.initializers[node.input[0]].data_type == TensorProto.FLOAT
    np.testing.assert_array_equal(_logits(model, graphs["batches"][:1]), _logits(onnx.load(str(graphs["all"])), graphs["batches"][:1]))


def _head_gemms(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "Gemm"]


def test_head_gemvs_lose_their_qdq_unless_asked(graphs):
    model = onnx.load(str(graphs["all"]))
    index = GraphIndex(model.graph)
    heads = _head_gemms(model)
    assert len(heads) == 2  # pooler dense and classifier
    assert all(index.producer[n.input[i]].op_type == "DequantizeLinear" for n in heads for i in (0, 1))
    encoder = [n for n in index.nodes if n.op_type == "MatMul" and index.producer[n.input[0]].op_type == "DequantizeLinear"]
    changed = float_head_gemms(model)
    assert sorted(changed) == sorted(n.name for n in heads)
    after = GraphIndex(model.graph)
    for node in _head_gemms(model):
        assert node.input[1] in after.initializers
        producer = after.producer.get(node.input[0])
        assert producer is None or producer.op_type not in ("DequantizeLinear", "QuantizeLinear")
    # the encoder's rank-3 MatMuls keep theirs
    assert all(after.producer[n.input[0]].op_type == "DequantizeLinear" for n in encoder)

    kept, report = tensorrt_graph(onnx.load(str(graphs["all"])), TrtGraphConfig(fp16=False, quantize_head=True))
    assert report["head_gemms_float"] == []
    kept_index = GraphIndex(kept.graph)
    assert all(kept_index.producer[n.input[0]].op_type == "DequantizeLinear" for n in _head_gemms(kept))


def test_attention_scale_moves_onto_the_quantized_query(graphs):
    """Mul(c) after the score MatMul becomes Mul(c) before the query's QuantizeLinear, its scale times c:
    the MatMul still reads DequantizeLinear on both sides and feeds the mask Add directly."""
    source = onnx.load(str(graphs["gemm"]))
    model = onnx.load(str(graphs["gemm"]))
    moved = scale_query_first(model)
    assert len(moved) == 2  # one per layer
    index = GraphIndex(model.graph)
    for name in moved:
        (matmul,) = [n for n in index.nodes if n.name == name]
        (reader, _), = index.consumers[matmul.output[0]]
        assert reader.op_type == "Add"  # the mask, then Softmax: no scale in between
        dequantize = index.producer[matmul.input[0]]
        quantize = index.producer[dequantize.input[0]]
        assert dequantize.op_type == "DequantizeLinear" and quantize.op_type == "QuantizeLinear"
        assert index.producer[matmul.input[1]].op_type == "DequantizeLinear"
        multiply = index.producer[quantize.input[0]]
        factor = float(index.constant_value(multiply.input[1]))
        assert multiply.op_type == "Mul" and factor == pytest.approx(1 / np.sqrt(8))  # hidden 32 / 4 heads
        assert quantize.input[1] == dequantize.input[1]
    before, after = _logits(source, graphs["batches"]), _logits(model, graphs["batches"])
    np.testing.assert_allclose(after, before, atol=1e-3 * np.abs(before).max())


def test_attention_scale_moves_before_the_matmul_in_a_float_graph(graphs):
    model = onnx.load(str(graphs["fp32"]))
    moved = scale_query_first(model)
    assert len(moved) == 2
    index = GraphIndex(model.graph)
    for name in moved:
        (matmul,) = [n for n in index.nodes if n.name == name]
        assert index.producer[matmul.input[0]].op_type == "Mul"
        assert [n.op_type for n, _ in index.consumers[matmul.output[0]]] == ["Add"]
    before = _logits(onnx.load(str(graphs["fp32"])), graphs["batches"])
    np.testing.assert_allclose(_logits(model, graphs["batches"]), before, rtol=1e-5, atol=1e-5)
    assert scale_query_first(model) == []  # nothing left to move


def test_folded_peg_takes_every_pass_with_per_tensor_activation_scales(graphs):
    """PEG with folded weights, the PEG graph TensorRT can take: one scale per activation Q/DQ, and the
    TensorRT graph (every pass, FP16) as close to its QDQ graph as the plain INT8 graph's ONNX Runtime CPU graph is to its own."""
    calibration = calibrate(graphs["stats"], CalibrateConfig(method="peg", groups=3, weights="folded"))
    source_path = write_calibrated_graph(graphs["fp32"], calibration, graphs["root"] / "peg-folded.qdq.onnx")
    source = onnx.load(str(source_path))
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in source.graph.initializer}
    assert all(initializers[n.input[1]].ndim == 0 for n in source.graph.node if n.op_type == "QuantizeLinear")
    assert "Sum" not in {n.op_type for n in source.graph.node}
    trt_graph, report = tensorrt_graph(source)
    assert report["float"] == "fp16" and fp16_problems(trt_graph, {"logits": TensorProto.FLOAT}) == []
    expected, actual = _logits(source, graphs["batches"]), _logits(trt_graph, graphs["batches"])
    assert np.abs(actual - expected).max() <= 5 * FP16_RELATIVE_TOLERANCE * np.abs(expected).max()
    optimized = _logits(trt_graph, graphs["batches"], ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    np.testing.assert_array_equal(optimized, actual)  # no integer kernel of this CPU in the FP16 graph


def test_write_trt_graph_keeps_metadata_and_reports_every_pass(graphs):
    target = graphs["root"] / "engines" / "all.trt.onnx"
    target.parent.mkdir(exist_ok=True)
    report = write_trt_graph(graphs["all"], target)
    assert len(report["embedding_tables_float"]) == 3 and len(report["head_gemms_float"]) == 2
    assert len(report["attention_scale_moved"]) == 2 and report["float"] == "fp16" and report["opset"] == FP16_OPSET
    metadata = graph_metadata(target)
    assert metadata["runtime"] == "tensorrt" and metadata["float_precision"] == "fp16"
    assert metadata["recipe"] == graph_metadata(graphs["all"])["recipe"]
    assert (target.parent / metadata["tokenizer"]).is_dir()
    expected, actual = _logits(onnx.load(str(graphs["all"])), graphs["batches"]), _logits(onnx.load(str(target)), graphs["batches"])
    # float head and FP16: further from the QDQ graph than the conversion alone (the head's own quantization
    # error comes off too; 5.1 tolerances at most on the 2026-12-07 split's statistics), still close
    assert np.abs(actual - expected).max() <= 6 * FP16_RELATIVE_TOLERANCE * np.abs(expected).max()
