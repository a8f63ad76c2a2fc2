"""The graph OpenVINO converts: the QDQ graph with each per-tensor Q/DQ pair at the op that computes its
values, and each quantizer reading whole codes.

A QDQ graph quantizes an activation where a GEMM reads it: the attention's query, key and value after
the Reshape/Transpose that split heads, its context after the Transpose/Reshape that merges them.
OpenVINO turns a Q/DQ pair into a FakeQuantize and fuses it into the op before it as an output
post-op (the projection writes int8), except across such shape ops: there the FakeQuantize runs on
its own, one pass over the tensor each (24 of the 36 FakeQuantize layers of the default classifier's
gemm-inputs graph; `benchmarks/runtime_cpu.py` times the graph with and without this pass).

So each QuantizeLinear with one scale and zero point, whose only reader is a DequantizeLinear with
the same scale and zero point, moves with it up a chain of ops that only rearrange values (Reshape,
Transpose, Squeeze, Unsqueeze, Flatten, Identity) to the tensor the chain starts from, when no other
node reads inside the chain and that tensor comes out of an INT8 GEMM (all its inputs dequantized,
its bias added or not). After a float GEMM OpenVINO converts to int8 in a separate reorder, slower
than the FakeQuantize was.
Quantizing per tensor commutes with rearranging, so the graph computes the same values bit for bit;
a pair with per-channel scales stays where it is (its axis would move).

Then each QuantizeLinear of an activation with one scale s reads the codes already rounded, Round(x / s)
(ONNX's Round and QuantizeLinear both round half to even), and quantizes them with scale 1: in ONNX's
semantics the same codes. OpenVINO computes a FakeQuantize as round(x * 255 / (high - low) - low * 255
/ (high - low)), which for int8 adds 128 before rounding. In float32 that sum is only good to about 2^-17
of a step, where ONNX's x / s of a small code is good to about 2^-22, so codes near a rounding boundary
came out one step off far more often than in the QDQ graph: most where the scale is set by outliers and
most codes are small, as after a LayerNorm. On the default classifier's max-gemm-inputs graph OpenVINO
changed 28 of 1,658 predictions against its QDQ graph as converted, 7 with the codes rounded first
(docs/results.md). A FakeQuantize of whole numbers maps them exactly.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from qtool.graph import SAME_VALUE_OPS, GraphIndex

log = logging.getLogger(__name__)

VERSION = "quantize-at-producers-3,whole-codes-1"  # part of a built model's cache key: a changed pass rebuilds it
GEMM_OPS = ("MatMul", "Gemm")


def _single_scale(index: GraphIndex, node: onnx.NodeProto) -> bool:
    scale = index.constant_value(node.input[1])
    zero_point = index.constant_value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return scale is not None and scale.size == 1 and (zero_point is None or zero_point.size == 1)


def _rearranging_chain(index: GraphIndex, tensor: str) -> list[onnx.NodeProto]:
    """The value-rearranging ops that lead to `tensor`, first to last, whose values only the next reads
    (a Shape reader is fine: shapes do not change)."""
    chain: list[onnx.NodeProto] = []
    while True:
        node = index.producer.get(tensor)
        if (
            node is None
            or node.op_type not in SAME_VALUE_OPS
            or len(index.value_consumers(tensor)) != 1
            or tensor in index.graph_outputs
            or tensor in index.subgraph_uses
        ):
            return chain
        chain.insert(0, node)
        tensor = node.input[0]


def _movable_pair(index: GraphIndex, quantize: onnx.NodeProto):
    """(DequantizeLinear, chain) when `quantize`'s pair can move up a chain, else None."""
    if quantize.op_type != "QuantizeLinear" or not _single_scale(index, quantize):
        return None
    readers = index.consumers.get(quantize.output[0], [])
    if len(readers) != 1 or readers[0][0].op_type != "DequantizeLinear" or quantize.output[0] in index.graph_outputs:
        return None
    dequantize = readers[0][0]
    if (
        list(dequantize.input[1:]) != list(quantize.input[1:])  # the same scale and zero point, so one per tensor
        or quantize.output[0] in index.subgraph_uses
        or dequantize.output[0] in index.graph_outputs | index.subgraph_uses
    ):
        return None
    chain = _rearranging_chain(index, quantize.input[0])
    return (dequantize, chain) if chain and _integer_gemm_output(index, chain[0].input[0]) else None


def _integer_gemm_output(index: GraphIndex, tensor: str) -> bool:
    """Whether `tensor` is a GEMM's output (its bias added or not) whose inputs are all dequantized: an
    INT8 GEMM on OpenVINO, which writes int8 with the FakeQuantize fused. After a float GEMM (an input
    kept in float) OpenVINO converts in a separate reorder, slower than the FakeQuantize where it was."""
    node = index.producer.get(tensor)
    if node is not None and node.op_type == "Add":
        summands = [name for name in node.input if not index.is_constant(name)]
        if len(summands) != 1 or len(index.value_consumers(summands[0])) != 1:
            return False
        node = index.producer.get(summands[0])
    return node is not None and node.op_type in GEMM_OPS and all(_dequantized(index, name) for name in node.input[:2])


def _dequantized(index: GraphIndex, tensor: str) -> bool:
    """Whether `tensor` holds a DequantizeLinear's values, rearranged or not."""
    node = index.producer.get(tensor)
    while node is not None and node.op_type in SAME_VALUE_OPS:
        node = index.producer.get(node.input[0])
    return node is not None and node.op_type == "DequantizeLinear"


def _has_subgraphs(model: onnx.ModelProto) -> bool:
    """Whether a node of `model` has a body (If, Loop, Scan), whose reads a rewrite here would not see."""
    subgraph_types = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)  # onnx stays deferred until used
    return any(attribute.type in subgraph_types for node in model.graph.node for attribute in node.attribute)


def quantize_at_producers(model: onnx.ModelProto) -> list[str]:
    """Move each movable Q/DQ pair of `model` (in place) up to its chain's start; return the moved
    QuantizeLinear nodes' names. The node list stays topologically sorted. A graph with subgraphs
    (If, Loop, Scan) is left as it is: the sort would not see what their bodies read."""
    moved: list[str] = []
    if _has_subgraphs(model):
        log.info("OpenVINO graph: the graph has subgraphs; no Q/DQ pair moved")
        return moved
    while True:
        index = GraphIndex(model.graph)
        found = next(((q, *pair) for q in index.nodes if (pair := _movable_pair(index, q))), None)
        if found is None:
            break
        quantize, dequantize, chain = found
        chain_end = quantize.input[0]
        for reader, position in index.consumers[dequantize.output[0]]:
            reader.input[position] = chain_end  # the chain's end now holds the dequantized values
        stale = {quantize.output[0], dequantize.output[0]}  # their shapes are now the chain start's
        dequantize.output[0] = index.unique_name(f"{dequantize.output[0]}_at_source")
        quantize.input[0] = chain[0].input[0]
        chain[0].input[0] = dequantize.output[0]
        kept = [value for value in model.graph.value_info if value.name not in stale]
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept)
        moved.append(quantize.name or quantize.output[0])
    if moved:
        from onnxruntime.transformers.onnx_model import OnnxModel

        OnnxModel(model).topological_sort()  # each moved pair now comes before the chain it was after
    log.info("OpenVINO graph: %d Q/DQ pairs moved to the op that computes their values", len(moved))
    return moved


def _integer_codes(index: GraphIndex, quantize: onnx.NodeProto) -> bool:
    """Whether `quantize` writes integer codes (its zero point's type, uint8 without one): a float8
    QuantizeLinear does not round to whole numbers."""
    if len(quantize.input) < 3 or not quantize.input[2]:
        return True
    zero_point = index.constant_value(quantize.input[2])
    return zero_point is not None and np.issubdtype(zero_point.dtype, np.integer)


def quantize_whole_codes(model: onnx.ModelProto) -> list[str]:
    """Each QuantizeLinear of `model` (in place) that quantizes a float32 activation to integers with one
    scale s reads Round(x / s) (no Div where s is 1) and quantizes with scale 1, the same codes; return
    their names. (In float16 the Div would round x / s before QuantizeLinear's float32 division would.)
    A graph with subgraphs is left as it is, as by `quantize_at_producers`."""
    if _has_subgraphs(model):
        log.info("OpenVINO graph: the graph has subgraphs; no QuantizeLinear rewritten")
        return []
    index = GraphIndex(model.graph)
    rounded: list[str] = []
    unit_scales: dict[tuple, str] = {}  # by shape: () or (1,)
    for quantize in list(index.nodes):
        if quantize.op_type != "QuantizeLinear" or index.is_constant(quantize.input[0]):
            continue
        scale = index.constant_value(quantize.input[1])
        if scale is None or scale.size != 1 or scale.dtype != np.float32 or not scale > 0:
            continue
        if not _integer_codes(index, quantize):
            continue
        name = quantize.name or quantize.output[0]
        steps = []
        if scale.reshape(()) != 1:
            divided = index.unique_name(f"{quantize.input[0]}/in_steps")
            steps.append(onnx.helper.make_node("Div", [quantize.input[0], quantize.input[1]], [divided],
                                               name=index.unique_name(f"{name}/Div")))
            if scale.shape not in unit_scales:
                unit_scales[scale.shape] = index.add_initializer("openvino/unit_scale", np.ones_like(scale))
            quantize.input[1] = unit_scales[scale.shape]
            quantize.input[0] = divided
        codes = index.unique_name(f"{quantize.input[0]}/rounded")
        round_name = index.unique_name(f"{name}/Round")
        steps.append(onnx.helper.make_node("Round", [quantize.input[0]], [codes], name=round_name))
        quantize.input[0] = codes
        index.replace_node(quantize, [*steps, quantize])
        rounded.append(name)
    log.info("OpenVINO graph: %d QuantizeLinear nodes read whole codes", len(rounded))
    return rounded


def openvino_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """The graph OpenVINO converts for `model` (a copy) and what each pass changed."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    moved = quantize_at_producers(rewritten)
    return rewritten, {"quantize_at_producers": moved, "quantize_whole_codes": quantize_whole_codes(rewritten)}
