"""The integer weights of a graph and which of ONNX Runtime's integer kernels they make it run: the
codes of the GEMM weights (7-bit weights never saturate U8S8's 16-bit pair sums) and whether a graph's
constant 8-bit weights are int8 (U8S8 kernels), uint8 (U8U8) or absent."""

from __future__ import annotations

import numpy as np
import onnx

from qtool.exporter.ort_fused import is_integer_op
from qtool.graph import GraphIndex, attribute

SEVEN_BIT_MAX = 63  # weights within [-64, 63] never saturate U8S8's 16-bit pair sums


def gemm_weight_codes(model: onnx.ModelProto) -> tuple[int, int] | None:
    """The smallest and largest code of the constant int8 weights that a MatMul or Gemm reads through a
    DequantizeLinear (zero point 0), or None when there are none."""
    graph = GraphIndex(model.graph)
    low = high = None
    for node in graph.graph.node:
        if node.op_type != "DequantizeLinear" or not any(
            reader.op_type in ("MatMul", "Gemm") and index == 1 for reader, index in graph.consumers[node.output[0]]
        ):
            continue
        weight = graph.array(node.input[0])
        if weight is None or weight.dtype != np.int8 or weight.size == 0:
            continue
        low = int(weight.min()) if low is None else min(low, int(weight.min()))
        high = int(weight.max()) if high is None else max(high, int(weight.max()))
    return None if low is None else (low, high)


def u8s8_exact_everywhere(model: onnx.ModelProto) -> bool:
    """Whether every integer GEMM weight of `model` is within 7 bits ([-64, 63]), so that ONNX Runtime's
    U8S8 kernels, even where they add pairs of products in 16 bits, never saturate (255 x 64 x 2 < 32768)."""
    codes = gemm_weight_codes(model)
    return codes is not None and codes[0] >= -(SEVEN_BIT_MAX + 1) and codes[1] <= SEVEN_BIT_MAX


def weight_kernels(model: onnx.ModelProto) -> str:
    """Which integer GEMMs a graph's constant 8-bit weights make ONNX Runtime run: `u8s8` (int8 weights,
    as ONNX Runtime's quantizers and NNCF write them), `u8u8` (uint8 weights) or `float` (none)."""
    graph = GraphIndex(model.graph)
    kinds = set()
    for node in graph.graph.node:
        if node.op_type == "DequantizeLinear":
            weight = graph.array(node.input[0])  # the dequantized tensor
        elif is_integer_op(node.op_type) and len(node.input) > 1:
            weight = graph.array(node.input[1])  # the second operand of an integer GEMM
        else:
            continue
        if weight is not None and weight.ndim == 2 and weight.dtype in (np.int8, np.uint8):
            kinds.add("u8s8" if weight.dtype == np.int8 else "u8u8")
    return "u8s8" if "u8s8" in kinds else "u8u8" if kinds else "float"


def dequantized_constant(index: GraphIndex, name: str) -> np.ndarray | None:
    """The float values of `name` when a DequantizeLinear of constants produces it, else None."""
    node = index.producer.get(name)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    values = [index.constant_value(i) if i else None for i in node.input]
    if values[0] is None or values[1] is None or (len(values) > 2 and node.input[2] and values[2] is None):
        return None
    codes, scale = values[0].astype(np.float32), values[1].astype(np.float32)
    zero = values[2].astype(np.float32) if len(values) > 2 and values[2] is not None else np.float32(0)
    if scale.ndim == 1 and codes.ndim > 1:  # per-axis
        shape = [1] * codes.ndim
        shape[attribute(node, "axis", 1)] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
    return ((codes - zero) * scale).astype(np.float32)
