"""The OpenVINO graph's pass on hand-built graphs: which Q/DQ pairs move up a Reshape/Transpose chain
and which stay, with the values checked against ONNX Runtime (optimizations off)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.exporter.openvino_graph import openvino_graph, quantize_at_producers
from qtool.graph import GraphIndex
from qtool.runners.ort import OrtRunner

PER_TENSOR = np.array(0.05, np.float32)
PER_CHANNEL = np.array([0.05, 0.1, 0.2, 0.4], np.float32)


def _graph(
    scale: np.ndarray = PER_TENSOR,
    dequantize_scale: np.ndarray | None = None,
    scale_as_constant_node: bool = False,
    float_input: bool = False,
    extra_outputs: tuple[str, ...] = (),
    subgraph: bool = False,
) -> onnx.ModelProto:
    """x -> Q/DQ -> MatMul(dequantized weight) -> Add(bias) -> Reshape(2, 3, 4) -> Transpose -> Q/DQ ->
    MatMul(w) -> y: an INT8 projection, then heads split. Options: the pair's DequantizeLinear with
    another scale, the first MatMul's input in float, more outputs ("relu": a Relu of the Reshape's
    values; "shaped": the Reshape's output itself; "shape": a Shape of it; "second": a Relu of the
    pair's dequantized values), an If node elsewhere."""
    dequantize_scale = scale if dequantize_scale is None else dequantize_scale
    initializers = [
        numpy_helper.from_array(np.array(0.02, np.float32), "input_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "input_zero"),
        numpy_helper.from_array(np.arange(-72, 72, dtype=np.int8).reshape(12, 12), "projection_codes"),
        numpy_helper.from_array(np.array(0.01, np.float32), "projection_scale"),
        numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32), "bias"),
        numpy_helper.from_array(np.array([2, 3, 4], dtype=np.int64), "shape"),
        numpy_helper.from_array(np.zeros(scale.shape, np.int8), "zero"),
        numpy_helper.from_array(np.zeros(dequantize_scale.shape, np.int8), "dequantize_zero"),
        numpy_helper.from_array(dequantize_scale, "dequantize_scale"),
        numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) / 7, "w"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "input_scale", "input_zero"], ["x_codes"]),
        helper.make_node("DequantizeLinear", ["x_codes", "input_scale", "input_zero"], ["x_dequantized"]),
        helper.make_node("DequantizeLinear", ["projection_codes", "projection_scale"], ["projection"]),
        helper.make_node("MatMul", ["x" if float_input else "x_dequantized", "projection"], ["product"]),
        helper.make_node("Add", ["product", "bias"], ["sum"], name="add"),
        helper.make_node("Reshape", ["sum", "shape"], ["shaped"], name="reshape"),
        helper.make_node("Transpose", ["shaped"], ["moved"], name="transpose", perm=[0, 2, 1]),
    ]
    if scale_as_constant_node:
        nodes.append(helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(scale, "scale")))
    else:
        initializers.append(numpy_helper.from_array(scale, "scale"))
    same = dequantize_scale is scale
    axis = {"axis": 1} if scale.size > 1 else {}
    dequantize_inputs = ["codes", "scale", "zero"] if same else ["codes", "dequantize_scale", "dequantize_zero"]
    nodes += [
        helper.make_node("QuantizeLinear", ["moved", "scale", "zero"], ["codes"], name="point/QuantizeLinear", **axis),
        helper.make_node("DequantizeLinear", dequantize_inputs, ["dequantized"], name="point/DequantizeLinear",
                         **({"axis": 1} if dequantize_scale.size > 1 else {})),
        helper.make_node("MatMul", ["dequantized", "w"], ["y"], name="matmul"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 4])]
    extras = {
        "relu": (helper.make_node("Relu", ["shaped"], ["side"]), "side", TensorProto.FLOAT),
        "shaped": (None, "shaped", TensorProto.FLOAT),
        "shape": (helper.make_node("Shape", ["shaped"], ["dims"]), "dims", TensorProto.INT64),
        "second": (helper.make_node("Relu", ["dequantized"], ["second"]), "second", TensorProto.FLOAT),
    }
    for name in extra_outputs:
        node, output, kind = extras[name]
        nodes += [node] if node else []
        outputs.append(helper.make_tensor_value_info(output, kind, None))
    if subgraph:
        branch = helper.make_graph(
            [helper.make_node("Constant", [], ["branch_value"], value=numpy_helper.from_array(np.ones(1, np.float32)))],
            "branch", [], [helper.make_tensor_value_info("branch_value", TensorProto.FLOAT, [1])],
        )
        initializers.append(numpy_helper.from_array(np.array(True), "condition"))
        nodes.append(helper.make_node("If", ["condition"], ["chosen"], then_branch=branch, else_branch=branch))
        outputs.append(helper.make_tensor_value_info("chosen", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 12])], outputs, initializers)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    with OrtRunner(model.SerializeToString(), optimization_level="disable") as runner:
        return list(runner.infer({"x": x}).values())


@pytest.mark.parametrize(
    "options",
    [{}, {"scale_as_constant_node": True}, {"extra_outputs": ("shape",)}, {"extra_outputs": ("second",)}],
    ids=["initializer-scale", "constant-node-scale", "shape-reader", "two-readers-of-the-pair"],
)
def test_a_per_tensor_pair_moves_to_the_add_and_the_values_stay(options):
    model = _graph(**options)
    before = model.SerializeToString()
    moved = _copy(model)
    assert quantize_at_producers(moved) == ["point/QuantizeLinear"]
    onnx.checker.check_model(moved, full_check=True)  # value_info still agrees with the moved tensors
    index = GraphIndex(moved.graph)
    quantize = next(node for node in index.nodes if node.name == "point/QuantizeLinear")
    assert index.producer[quantize.input[0]].name == "add"
    assert index.producer[next(n for n in index.nodes if n.name == "reshape").input[0]].op_type == "DequantizeLinear"
    assert index.producer[next(n for n in index.nodes if n.name == "matmul").input[0]].name == "transpose"
    converted, passes = openvino_graph(model)
    assert passes["quantize_at_producers"] == ["point/QuantizeLinear"]
    x = np.random.default_rng(0).normal(scale=3, size=(2, 12)).astype(np.float32)
    for graph in (moved, converted):
        for ours, theirs in zip(_run(graph, x), _run(model, x), strict=True):
            np.testing.assert_array_equal(ours, theirs)
    assert model.SerializeToString() == before  # the input is a copy, left as it was


@pytest.mark.parametrize(
    "options",
    [
        {"scale": PER_CHANNEL},  # per channel: its axis would move with it
        {"dequantize_scale": PER_CHANNEL},  # a per-tensor Q read by a per-channel DQ
        {"float_input": True},  # a float GEMM: OpenVINO would add a reorder
        {"extra_outputs": ("relu",)},  # a Relu reads the Reshape's float values
        {"extra_outputs": ("shaped",)},  # the Reshape's float values are a graph output
        {"subgraph": True},  # the sort cannot see what an If's branches read
    ],
    ids=["per-channel", "per-channel-dequantize", "after-a-float-gemm", "second-reader", "graph-output", "subgraph"],
)
def test_a_pair_stays(options):
    model = _graph(**options)
    moved = _copy(model)
    assert quantize_at_producers(moved) == [] and moved.SerializeToString() == model.SerializeToString()


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


@pytest.mark.parametrize("scale", [PER_TENSOR, np.array(1.0, np.float32), PER_CHANNEL], ids=["s", "one", "per-channel"])
def test_each_per_tensor_quantizer_reads_whole_codes_and_the_values_stay(scale):
    """Round(x / s) quantized with scale 1 (Round alone where s is 1): the same codes, bit for bit, also
    for values on a half step; a per-channel quantizer stays as it is."""
    model = _graph(scale=scale)
    converted, passes = openvino_graph(model)
    per_tensor = ["x_codes"] + (["point/QuantizeLinear"] if scale.size == 1 else [])
    assert passes["quantize_whole_codes"] == per_tensor
    onnx.checker.check_model(converted, full_check=True)
    index = GraphIndex(converted.graph)
    for quantize in (node for node in index.nodes if node.op_type == "QuantizeLinear"):
        named = quantize.name or quantize.output[0]
        if named not in per_tensor:
            assert index.producer[quantize.input[0]].op_type != "Round"
            continue
        rounding = index.producer[quantize.input[0]]
        assert rounding.op_type == "Round" and index.constant_value(quantize.input[1]) == 1
        original = next(n for n in model.graph.node if (n.name or n.output[0]) == named)
        division = index.producer.get(rounding.input[0])
        if index.constant_value(original.input[1]).reshape(()) == 1:
            assert division is None or division.op_type != "Div"
        else:
            assert division.op_type == "Div" and division.input[1] == original.input[1]
    halves = (np.arange(24, dtype=np.float32).reshape(2, 12) - 12 + 0.5) * np.float32(0.02)
    noise = np.random.default_rng(1).normal(scale=3, size=(2, 12)).astype(np.float32)
    for x in (halves, noise):
        for ours, theirs in zip(_run(converted, x), _run(model, x), strict=True):
            np.testing.assert_array_equal(ours, theirs)


def _one_quantizer(zero_point: np.ndarray | None, scale: np.ndarray, constant_scale: bool = False) -> onnx.ModelProto:
    """x -> Q(scale, zero point) -> DQ -> y, the scale an initializer or a Constant node's output."""
    kind = TensorProto.FLOAT16 if scale.dtype == np.float16 else TensorProto.FLOAT
    initializers = [] if zero_point is None else [numpy_helper.from_array(zero_point, "zero")]
    nodes = []
    if constant_scale:
        nodes.append(helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(scale, "scale")))
    else:
        initializers.append(numpy_helper.from_array(scale, "scale"))
    point = ["scale"] + ([] if zero_point is None else ["zero"])
    nodes += [helper.make_node("QuantizeLinear", ["x", *point], ["codes"], name="q"),
              helper.make_node("DequantizeLinear", ["codes", *point], ["y"])]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("x", kind, [3, 40])],
                              [helper.make_tensor_value_info("y", kind, [3, 40])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


@pytest.mark.parametrize(
    "zero_point, scale, constant_scale",
    [
        (np.array(-3, np.int8), np.array(0.037, np.float32), False),
        (np.array(100, np.uint8), np.array([0.037], np.float32), False),
        (None, np.array(0.037, np.float32), True),
    ],
    ids=["int8-zero-point", "uint8-zero-point-scale-of-shape-1", "constant-node-scale-no-zero-point"],
)
def test_whole_codes_keep_zero_points_saturation_and_halves(zero_point, scale, constant_scale):
    model = _one_quantizer(zero_point, scale, constant_scale)
    converted, passes = openvino_graph(model)
    assert passes["quantize_whole_codes"] == ["q"]
    onnx.checker.check_model(converted, full_check=True)
    halves = (np.arange(120, dtype=np.float32).reshape(3, 40) - 60 + 0.5) * scale.reshape(())
    extremes = np.array([[-1e4, 1e4, -np.inf, np.inf] * 10] * 3, np.float32)
    noise = np.random.default_rng(2).normal(scale=3, size=(3, 40)).astype(np.float32)
    for x in (halves, extremes, noise):
        for ours, theirs in zip(_run(converted, x), _run(model, x), strict=True):
            np.testing.assert_array_equal(ours, theirs)


def test_whole_codes_leave_float16_and_float8_quantizers_as_they_are():
    """Div in float16 would round x / s before QuantizeLinear's float32 division; a float8 quantizer does
    not round to whole numbers."""
    half = _one_quantizer(np.array(0, np.int8), np.array(0.037, np.float16))
    float8 = _one_quantizer(None, np.array(0.037, np.float32))
    # a zero point of a float type marks a float8 quantizer (NumPy has no float8: float32 stands in)
    float8.graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), "zero_float"))
    float8.graph.node[0].input.append("zero_float")
    for model in (half, float8):
        converted, passes = openvino_graph(model)
        assert passes["quantize_whole_codes"] == [] and converted.SerializeToString() == model.SerializeToString()
