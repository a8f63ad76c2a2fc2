"""The projection steps of the ONNX Runtime CPU graph (`qtool.exporter.ort_cpu`): biased projections as
com.microsoft MatMulIntegerToFloat, and float inputs times dequantized weights."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx

from qtool.exporter.weight_codes import dequantized_constant
from qtool.graph import GraphIndex, attribute

MS_DOMAIN = "com.microsoft"
EIGHT_BIT_TYPES = ("int8", "uint8")  # a dtype compares equal to its name


# -- step 3: projections -----------------------------------------------------------------------------
def activation_dequantize(graph: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    """The DequantizeLinear of an 8-bit activation (scalar scale and zero point) producing `tensor`."""
    node = graph.producer.get(tensor)
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] in graph.initializers:
        return None
    scale = graph.array(node.input[1])
    zero_point = graph.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None or scale.size != 1 or zero_point is None or zero_point.dtype not in EIGHT_BIT_TYPES:
        return None
    return node


def _weight_dequantize(graph: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    """The DequantizeLinear of a constant 2-D 8-bit weight producing `tensor` (read by one node only)."""
    node = graph.producer.get(tensor)
    if node is None or node.op_type != "DequantizeLinear" or len(graph.consumers[tensor]) != 1:
        return None
    weight = graph.array(node.input[0])
    if weight is None or weight.ndim != 2 or weight.dtype not in EIGHT_BIT_TYPES:
        return None
    return node


def _single_follower(graph: GraphIndex, tensor: str, op_type: str) -> onnx.NodeProto | None:
    followers = graph.consumers[tensor]
    if len(followers) != 1 or tensor in graph.graph_outputs or followers[0][0].op_type != op_type:
        return None
    return followers[0][0]


class _Projection(NamedTuple):
    transposed: bool  # the weight is [N, K] (Gemm transB=1)
    bias: str
    add: onnx.NodeProto | None  # the bias Add that the fused node replaces
    total: onnx.NodeProto | None  # the Sum of a PEG split GEMM whose first partial takes the bias


def _biased_projection(graph: GraphIndex, node: onnx.NodeProto) -> _Projection | None:
    """MatMul -> Add(b) or Gemm with a bias, or a partial product of a PEG split GEMM, MatMul -> Sum
    -> Add(b): the first partial takes the bias, the others have none (bias "")."""
    if node.op_type == "MatMul":
        total = _single_follower(graph, node.output[0], "Sum")
        result = (total or node).output[0]
        add = _single_follower(graph, result, "Add")
        if total is not None and (total.input[0] != node.output[0] or add is None):
            return _Projection(False, "", None, None)
        if add is None:
            return None
        bias = add.input[1] if add.input[0] == result else add.input[0]
        return _Projection(False, bias, add, total)
    if node.op_type == "Gemm" and len(node.input) == 3 and node.input[2]:
        if attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0 or attribute(node, "beta", 1.0) != 1.0:
            return None
        return _Projection(bool(attribute(node, "transB", 0)), node.input[2], None, None)
    return None


def projections_to_matmul_integer_to_float(graph: GraphIndex) -> int:
    """DQ(x) -> MatMul(DQ(W)) -> Add(b) and Gemm(DQ(x), DQ(W), b) -> MatMulIntegerToFloat(..., b), and
    the partial products of PEG's split GEMMs (the bias joins the first).

    MatMulIntegerToFloat reads the weight as [K, N] with a per-tensor or per-column (N) scale;
    a Gemm weight with transB=1 is transposed in int8, its per-row scales becoming per-column.
    """
    fused = 0
    for node in list(graph.graph.node):
        projection = _biased_projection(graph, node)
        if projection is None:
            continue
        transposed, bias, add, total = projection
        activation_dq = activation_dequantize(graph, node.input[0])
        weight_dq = _weight_dequantize(graph, node.input[1])
        if activation_dq is None or weight_dq is None:
            continue
        weight, scale = graph.array(weight_dq.input[0]), graph.array(weight_dq.input[1])
        output_axis = 0 if transposed else 1
        if scale is None or (scale.size > 1 and attribute(weight_dq, "axis", 1) % 2 != output_axis):
            continue
        bias_source = graph.constant_source(bias) if bias else ""
        bias_array = graph.array(bias_source) if bias_source else None
        if bias and (
            bias_array is None or bias_array.dtype != np.float32 or bias_array.shape != (weight.shape[output_axis],)
        ):
            continue
        weight_name = weight_dq.input[0]
        if transposed:
            weight_name = graph.add_initializer(f"{weight_name}/transposed", np.ascontiguousarray(weight.T))
        weight_zero_point = weight_dq.input[2] if len(weight_dq.input) > 2 else ""  # absent: 0
        fused_node = onnx.helper.make_node(
            "MatMulIntegerToFloat",
            [
                activation_dq.input[0],
                weight_name,
                activation_dq.input[1],
                weight_dq.input[1],
                activation_dq.input[2],
                weight_zero_point,
                bias_source,
            ],
            [add.output[0] if add is not None and total is None else node.output[0]],
            name=node.name,
            domain=MS_DOMAIN,
        )
        if add is not None:
            graph.replace_node(add, [])  # first: the fused node (or the Sum) takes over the Add's output
        if total is not None:
            total.output[0] = add.output[0]
        graph.replace_node(node, [fused_node])
        fused += 1
    return fused


def gemm_bias_to_add(graph: GraphIndex) -> int:
    """Gemm(DQ(x), DQ(W), float bias) -> Add(Gemm(DQ(x), DQ(W)), bias), which ONNX Runtime fuses into QGemm."""
    rewritten = 0
    for node in list(graph.graph.node):
        if node.op_type != "Gemm" or len(node.input) < 3 or not node.input[2]:
            continue
        if attribute(node, "beta", 1.0) != 1.0:
            continue
        if activation_dequantize(graph, node.input[0]) is None or _weight_dequantize(graph, node.input[1]) is None:
            continue
        product = graph.unique_name(f"{node.output[0]}/without_bias")
        add = onnx.helper.make_node(
            "Add", [product, node.input[2]], [node.output[0]], name=graph.unique_name(f"{node.name}/BiasAdd")
        )
        del node.input[2]
        node.output[0] = product
        graph.replace_node(node, [node, add])
        rewritten += 1
    return rewritten


# -- step 6: float activations times dequantized weights ----------------------------------------------
def float_input_weights_dequantized(graph: GraphIndex) -> int:
    """A MatMul or Gemm whose activation stays float reads its weight's dequantized values ((w - z) * s in
    float32) as an initializer; returns how many. Left as DQ -> MatMul, ONNX Runtime makes MatMulNBits of
    it (accuracy level 4), which quantizes the activation that the recipe keeps in float."""
    folded = 0
    for node in list(graph.graph.node):
        if node.op_type != "DequantizeLinear":
            continue
        weight, readers = graph.array(node.input[0]), graph.consumers[node.output[0]]
        if weight is None or weight.dtype not in EIGHT_BIT_TYPES or not readers:
            continue
        if any(
            reader.op_type not in ("MatMul", "Gemm") or index != 1 or activation_dequantize(graph, reader.input[0])
            for reader, index in readers
        ):
            continue
        values = dequantized_constant(graph, node.output[0])
        if values is None:
            continue
        name = graph.add_initializer(f"{node.input[0]}/dequantized", values)
        for reader, index in readers:
            reader.input[index] = name
        folded += 1
    return folded
