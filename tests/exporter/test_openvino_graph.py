"""The OpenVINO graph's pass on hand-built graphs: which Q/DQ pairs move up a Reshape/Transpose chain
and which stay, with the values checked against ONNX Runtime (optimizations off)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.exporter.openvino_graph import openvino_graph
from qtool.graph import GraphIndex
from qtool.runners.ort import OrtRunner


def _graph(
    scale: np.ndarray, extra_reader: bool = False, scale_as_constant_node: bool = False, float_input: bool = False
) -> onnx.ModelProto:
    """x -> Q/DQ -> MatMul(dequantized weight) -> Add(bias) -> Reshape(2, 3, 4) -> Transpose -> Q/DQ ->
    MatMul(w) -> y: an INT8 projection, then heads split; optionally a second reader (Relu) of the
    Reshape's values, or the first MatMul's input in float."""
    axis = [helper.make_attribute("axis", 1)] if scale.size > 1 else []
    initializers = [
        numpy_helper.from_array(np.array(0.02, np.float32), "input_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "input_zero"),
        numpy_helper.from_array(np.arange(-72, 72, dtype=np.int8).reshape(12, 12), "projection_codes"),
        numpy_helper.from_array(np.array(0.01, np.float32), "projection_scale"),
        numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32), "bias"),
        numpy_helper.from_array(np.array([2, 3, 4], dtype=np.int64), "shape"),
        numpy_helper.from_array(np.zeros(scale.shape, np.int8), "zero"),
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
    quantize = helper.make_node("QuantizeLinear", ["moved", "scale", "zero"], ["codes"], name="point/QuantizeLinear")
    dequantize = helper.make_node("DequantizeLinear", ["codes", "scale", "zero"], ["dequantized"], name="point/DequantizeLinear")
    quantize.attribute.extend(axis)
    dequantize.attribute.extend(axis)
    nodes += [quantize, dequantize, helper.make_node("MatMul", ["dequantized", "w"], ["y"], name="matmul")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 4])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["shaped"], ["side"], name="side"))
        outputs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, [2, 3, 4]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 12])], outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    with OrtRunner(model.SerializeToString(), optimization_level="disable") as runner:
        return list(runner.infer({"x": x}).values())


@pytest.mark.parametrize("constant_node", [False, True])
def test_a_per_tensor_pair_moves_to_the_add_and_the_values_stay(constant_node):
    model = _graph(np.array(0.05, np.float32), scale_as_constant_node=constant_node)
    moved, passes = openvino_graph(model)
    assert passes == {"quantize_at_producers": ["point/QuantizeLinear"]}
    onnx.checker.check_model(moved)
    index = GraphIndex(moved.graph)
    quantize = next(node for node in index.nodes if node.name == "point/QuantizeLinear")
    assert index.producer[quantize.input[0]].name == "add"
    assert index.producer[next(n for n in index.nodes if n.name == "reshape").input[0]].op_type == "DequantizeLinear"
    assert index.producer[next(n for n in index.nodes if n.name == "matmul").input[0]].name == "transpose"
    x = np.random.default_rng(0).normal(scale=3, size=(2, 12)).astype(np.float32)
    np.testing.assert_array_equal(_run(moved, x)[0], _run(model, x)[0])
    assert len(model.graph.node) == len(moved.graph.node)  # the input is a copy, left as it was


@pytest.mark.parametrize(
    "model",
    [
        _graph(np.array([0.05, 0.1, 0.2, 0.4], np.float32)),  # per channel: its axis would move with it
        _graph(np.array(0.05, np.float32), float_input=True),  # a float GEMM: OpenVINO would add a reorder
        _graph(np.array(0.05, np.float32), extra_reader=True),  # a Relu reads the Reshape's float values
    ],
    ids=["per-channel", "after-a-float-gemm", "second-reader"],
)
def test_a_pair_stays(model):
    moved, passes = openvino_graph(model)
    assert passes == {"quantize_at_producers": []} and moved.graph.node == model.graph.node
