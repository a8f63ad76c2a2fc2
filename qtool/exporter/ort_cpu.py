"""Rewrite a qtool QDQ graph into the graph ONNX Runtime's CPU kernels run fastest, values unchanged.

qtool writes TensorRT-style QDQ graphs (int8 activations and weights, zero point 0), which ONNX
Runtime on x86 runs slower than FP32: its QDQ fusions refuse int8 activations there
(`session.qdqisint8allowed` is 0 off ARM; forced, S8S8 kernels are slower still), and its
int8-to-uint8 conversion skips a QuantizeLinear with several consumers (a LayerNorm output feeding
Q, K, V and the residual), so those projections stay float MatMuls that dequantize weights every run.

The rewrite keeps every quantized value; it changes only how a value is stored, or fuses steps
whose float result is the same up to rounding:

- activation Q/DQ pairs: int8 with zero point z becomes uint8 with zero point z + 128 and the
  same scale (q_u8 = q_s8 + 128, so DequantizeLinear returns exactly the same floats). ONNX
  Runtime then fuses DQ -> MatMul -> Q into QLinearMatMul and DQ -> MatMul into
  MatMulIntegerToFloat (U8S8 kernels, VNNI where the CPU has it); weights stay int8;
- `kernels="u8u8"` (x86 without VNNI, where U8S8 can saturate: `int8_kernels_for_this_cpu`):
  projection weights move to uint8 the same way (zero point 128): U8U8 kernels, slower but exact;
- a quantized embedding table read by Gather is gathered in int8 and dequantized afterwards (the
  same scales on the same elements) instead of dequantizing the whole table on every run;
- `fuse_bias=True` (default): a projection with a constant bias, DQ(x) -> MatMul(DQ(W)) -> Add(b)
  or Gemm(DQ(x), DQ(W), b), becomes one com.microsoft MatMulIntegerToFloat(x_q, W_q, scales, zero
  points, b) (ONNX Runtime's own fusion leaves the Add, then makes a slow BiasGelu of it); the int32
  accumulation is exact, so only float rounding differs;
- PEG's division of each channel by its scale (its `scaled` layout, Div before QuantizeLinear)
  stays: folded into the producer (its weight scales and bias, or a LayerNorm's scale and bias) it
  saved about 3 % at batch 8 (nothing consistent at batch 1) but rounded the quantizer's input differently (docs/calibration.md);
- a Gather of some channels (last axis) of an activation, as PEG's split GEMMs read their groups'
  codes, becomes a Gather of rows of the transposed tensor (one Transpose per tensor, shared by its
  Gathers) and a Transpose back: ONNX Runtime copies a last-axis Gather element by element, rows as
  blocks (`python benchmarks/ort_profile.py` on a PEG layout shows the difference);
- with `fuse_bias`, a projection whose input stays float reads its weight dequantized into a float
  initializer (the same values): ONNX Runtime would make MatMulNBits of DQ(W) -> MatMul, which
  quantizes the float input on the fly;
- `fuse_bias=False`: Gemm(DQ(x), DQ(W), b) becomes Gemm(DQ(x), DQ(W)) + Add(b), since the QDQ
  Gemm fusion (QGemm) needs the bias absent or int32-quantized (which would change its values).
  With `fuse_bias=False` the rewritten graph computes bit-for-bit what the QDQ graph computes
  when ONNX Runtime runs both without graph optimizations.

- a quantized sum, DQ(a) + DQ(b) -> Q (the residual stream of scope `all`), dequantizes one input
  as Cast -> Mul (the same floats), so that ONNX Runtime does not make a QLinearAdd of it, whose
  fixed-point scale ratios round some sums one step differently.

Nothing else moves: a Q/DQ pair on a LayerNorm input, a residual sum or a GELU input stays (scope
`all`), since dropping one would change the values. `qtool.exporter.ort_fused.check_fused` reports
what ONNX Runtime made of a graph.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from qtool.exporter.ort_projections import (
    MS_DOMAIN,
    activation_dequantize,
    float_input_weights_dequantized,
    gemm_bias_to_add,
    projections_to_matmul_integer_to_float,
)
from qtool.exporter.weight_codes import u8s8_exact_everywhere
from qtool.graph import (
    RUNTIME_KEY,
    GraphIndex,
    attribute,
    prune_dead_nodes,
    save_derived_graph,
    set_attribute,
    tensor_ranks,
)
from qtool.runners.ort import GEMM_WEIGHT_BITS_METADATA, INT8_KERNELS, INT8_KERNELS_METADATA

log = logging.getLogger(__name__)

REWRITE_VERSION = 8  # bumped whenever the rewrite changes, so cached ONNX Runtime graphs are rebuilt
UINT8_OFFSET = 128  # uint8 code = int8 code + 128 for the same real value


def _scalar_int8_zero_point(graph: GraphIndex, node: onnx.NodeProto) -> int | None:
    """The node's zero point if it is a constant int8 scalar, else None."""
    if len(node.input) < 3 or not node.input[2]:
        return None  # no zero point: uint8 already
    zero_point = graph.array(node.input[2])
    if zero_point is None or zero_point.dtype != np.int8 or zero_point.size != 1:
        return None
    return int(zero_point.reshape(()))


# -- step 0: quantized sums outside QLinearAdd -------------------------------------------------------
def _sums_outside_qlinear_add(graph: GraphIndex) -> int:
    """DQ(a) + DQ(b) -> Q, a quantized sum (the residual stream of scope `all`): one input's
    dequantization becomes Cast -> Mul by its scale (Sub of its zero point between, unless 0), the same
    floats, so ONNX Runtime leaves the sum as the QDQ graph computes it. Fused into QLinearAdd, its
    kernel multiplies the codes by the scale ratios in 22-bit fixed point (MLAS `qladd`) and rounds
    some sums one step off (`benchmarks/first_divergence.py`). The input taken is one whose codes
    nothing else reads, so every other pair still moves to uint8; returns the sums rewritten."""
    rewritten = 0
    for add in list(graph.graph.node):
        if add.op_type != "Add" or not any(r.op_type == "QuantizeLinear" for r, _ in graph.consumers[add.output[0]]):
            continue
        sources = [activation_dequantize(graph, name) for name in add.input]
        if any(source is None for source in sources):
            continue
        for dq in sources:
            zero_point = _scalar_int8_zero_point(graph, dq)
            codes_readers = graph.consumers[dq.input[0]]
            if zero_point is None or len(codes_readers) != 1 or len(graph.consumers[dq.output[0]]) != 1:
                continue
            codes = graph.unique_name(f"{dq.output[0]}/codes_as_float")
            steps = [
                onnx.helper.make_node(
                    "Cast", [dq.input[0]], [codes], name=graph.unique_name(f"{dq.name}/Cast"), to=onnx.TensorProto.FLOAT
                )
            ]
            if zero_point:
                centred = graph.unique_name(f"{dq.output[0]}/centred")
                offset = graph.add_initializer(f"{dq.output[0]}/zero_point_as_float", np.float32(zero_point))
                steps.append(
                    onnx.helper.make_node("Sub", [codes, offset], [centred], name=graph.unique_name(f"{dq.name}/Sub"))
                )
                codes = centred
            steps.append(onnx.helper.make_node("Mul", [codes, dq.input[1]], [dq.output[0]], name=dq.name))
            graph.replace_node(dq, steps)
            rewritten += 1
            break
    return rewritten


# -- step 1: activations in uint8 ------------------------------------------------------------------
def _activations_to_uint8(graph: GraphIndex) -> int:
    """Int8 activation Q/DQ pairs -> uint8 with the zero point moved by 128; returns the pair count."""
    converted = 0
    zero_point_names: dict[int, str] = {}
    for node in list(graph.graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] in graph.initializers:
            continue
        zero_point = _scalar_int8_zero_point(graph, node)
        scale = graph.array(node.input[1])
        if zero_point is None or scale is None or scale.size != 1:
            continue
        readers = _code_readers(graph, node.output[0])
        if readers is None:
            log.debug("QuantizeLinear %s feeds more than DequantizeLinear; left in int8", node.name)
            continue
        if any(_scalar_int8_zero_point(graph, reader) != zero_point for reader in readers):
            continue
        value = zero_point + UINT8_OFFSET
        if value not in zero_point_names:
            zero_point_names[value] = graph.add_initializer(f"ort_cpu/uint8_zero_point_{value}", np.uint8(value))
        for member in (node, *readers):
            member.input[2] = zero_point_names[value]
        converted += 1
    return converted


def _weights_to_uint8(graph: GraphIndex) -> int:
    """Constant int8 weights with zero point 0 read (dequantized) only as the weight of a MatMul or
    Gemm -> uint8 with zero point 128, so the dequantized weights stay the same; returns the count."""
    converted = 0
    for node in list(graph.graph.node):
        if node.op_type != "DequantizeLinear":
            continue
        weight, scale = graph.array(node.input[0]), graph.array(node.input[1])
        zero_point = graph.array(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.int8)
        readers = graph.consumers[node.output[0]]
        if (
            weight is None
            or scale is None
            or weight.dtype != np.int8
            or zero_point is None
            or zero_point.dtype != np.int8
            or zero_point.any()
            or not readers
            or any(reader.op_type not in ("MatMul", "Gemm") or index != 1 for reader, index in readers)
        ):
            continue
        base = node.input[0]
        node.input.extend([""] * (3 - len(node.input)))
        node.input[0] = graph.add_initializer(
            f"{base}/uint8", (weight.astype(np.int16) + UINT8_OFFSET).astype(np.uint8)
        )
        node.input[2] = graph.add_initializer(f"{base}/uint8_zero_point", np.full(scale.shape, UINT8_OFFSET, np.uint8))
        converted += 1
    return converted


def _code_readers(graph: GraphIndex, codes: str) -> list[onnx.NodeProto] | None:
    """The DequantizeLinear nodes that read the codes `codes`, directly or through Gathers of some of
    their channels (PEG's `scaled` layout); None when anything else reads them."""
    readers = graph.consumers[codes]
    if codes in graph.graph_outputs or not readers:
        return None
    found: list[onnx.NodeProto] = []
    for reader, index in readers:
        if index != 0:
            return None
        if reader.op_type == "DequantizeLinear":
            found.append(reader)
        elif reader.op_type == "Gather" and (gathered := _code_readers(graph, reader.output[0])):
            found.extend(gathered)
        else:
            return None
    return found


# -- step 2: embedding tables gathered before dequantization ---------------------------------------
def _gather_before_dequantize(graph: GraphIndex) -> int:
    """Gather(DQ(int8 table), ids) -> DQ(Gather(int8 table, ids)); returns the table count."""
    rewritten = 0
    for dq in list(graph.graph.node):
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in graph.initializers:
            continue
        readers = graph.consumers[dq.output[0]]
        if not readers or dq.output[0] in graph.graph_outputs:
            continue
        if any(reader.op_type != "Gather" or index != 0 for reader, index in readers):
            continue
        table, scale = graph.array(dq.input[0]), graph.array(dq.input[1])
        if table is None or scale is None:
            continue
        rank = table.ndim
        scale_axis = attribute(dq, "axis", 1) % rank if scale.size > 1 else None
        if scale_axis is not None and any(attribute(r, "axis", 0) % rank == scale_axis for r, _ in readers):
            continue  # per-row scales would have to be gathered too
        for reader, _ in readers:
            gather_axis = attribute(reader, "axis", 0) % rank
            gathered = graph.unique_name(f"{reader.output[0]}/quantized")
            dequantize = onnx.helper.make_node(
                "DequantizeLinear",
                [gathered, *dq.input[1:]],
                [reader.output[0]],
                name=graph.unique_name(f"{reader.name}/DequantizeLinear"),
            )
            if scale_axis is not None:
                # Axes before the gathered one keep their index, axes after it their distance from the end.
                set_attribute(dequantize, "axis", scale_axis if scale_axis < gather_axis else scale_axis - rank)
            reader.input[0] = dq.input[0]
            reader.output[0] = gathered
            graph.replace_node(reader, [reader, dequantize])
        rewritten += 1
    return rewritten


# -- step 5: channel Gathers as row Gathers --------------------------------------------------------
def _channel_gathers_as_row_gathers(graph: GraphIndex, ranks: dict[str, int]) -> int:
    """Gather(X, channels, axis=-1) -> Transpose(Gather(Transpose(X), channels, axis=0)), one leading
    Transpose per X; returns the Gathers rewritten. The same values: ONNX Runtime gathers the last axis
    one element at a time, rows as blocks."""
    by_source: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.graph.node:
        if node.op_type != "Gather":
            continue
        rank, indices = ranks.get(node.input[0], 0), graph.array(node.input[1])
        if indices is None or indices.ndim != 1 or rank < 2 or node.input[0] in graph.initializers:
            continue
        if attribute(node, "axis", 0) % rank == rank - 1:
            by_source.setdefault(node.input[0], []).append(node)
    for source, gathers in by_source.items():
        rank = ranks[source]
        channels_first = graph.unique_name(f"{source}/channels_first")
        transpose = onnx.helper.make_node(
            "Transpose",
            [source],
            [channels_first],
            name=graph.unique_name(f"{source}/ChannelsFirst"),
            perm=[rank - 1, *range(rank - 1)],
        )
        for position, node in enumerate(gathers):
            rows = graph.unique_name(f"{node.output[0]}/channels_first")
            replacement = [
                onnx.helper.make_node("Gather", [channels_first, node.input[1]], [rows], name=node.name, axis=0),
                onnx.helper.make_node(
                    "Transpose",
                    [rows],
                    [node.output[0]],
                    name=graph.unique_name(f"{node.name}/ChannelsLast"),
                    perm=[*range(1, rank), 0],
                ),
            ]
            graph.replace_node(node, [transpose, *replacement] if position == 0 else replacement)
    return sum(len(gathers) for gathers in by_source.values())


# -- assembly -----------------------------------------------------------------------------------------
def rewrite_for_ort_cpu(model: onnx.ModelProto, *, fuse_bias: bool = True, kernels: str = "u8s8") -> onnx.ModelProto:
    """A copy of a qtool QDQ graph that ONNX Runtime's CPU provider runs on integer kernels.

    Every quantized tensor keeps its values: activations move from int8 (zero point z) to uint8
    (zero point z + 128), with `kernels="u8u8"` projection weights too, embedding tables are
    dequantized after their Gather, and with `fuse_bias` projections with a bias become
    MatMulIntegerToFloat. See the module docstring.
    """
    if kernels not in INT8_KERNELS:
        raise ValueError(f"kernels must be one of {INT8_KERNELS}, got {kernels!r}")
    try:
        ranks = tensor_ranks(model)
    except Exception as exc:  # onnx raises several types here; the rewrite only loses step 5
        log.warning("no shapes for the ONNX Runtime graph (%s); channel Gathers stay as they are", exc)
        ranks = {}
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    counts = {
        "sums_outside_qlinear_add": _sums_outside_qlinear_add(GraphIndex(rewritten.graph)),
        "uint8_activation_pairs": _activations_to_uint8(GraphIndex(rewritten.graph)),
        "uint8_weights": _weights_to_uint8(GraphIndex(rewritten.graph)) if kernels == "u8u8" else 0,
        "gathers_before_dequantize": _gather_before_dequantize(GraphIndex(rewritten.graph)),
    }
    if fuse_bias:
        counts["matmul_integer_to_float_with_bias"] = projections_to_matmul_integer_to_float(
            GraphIndex(rewritten.graph)
        )
        if counts["matmul_integer_to_float_with_bias"] and not any(
            o.domain == MS_DOMAIN for o in rewritten.opset_import
        ):
            rewritten.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
        counts["float_input_weights_dequantized"] = float_input_weights_dequantized(GraphIndex(rewritten.graph))
    counts["gemm_bias_to_add"] = gemm_bias_to_add(GraphIndex(rewritten.graph))
    prune_dead_nodes(rewritten)
    counts["channel_gathers_as_row_gathers"] = _channel_gathers_as_row_gathers(GraphIndex(rewritten.graph), ranks)
    log.info("ONNX Runtime CPU rewrite: %s", ", ".join(f"{key} {value}" for key, value in counts.items()))
    onnx.checker.check_model(rewritten)
    return rewritten


def rewrite_file_for_ort_cpu(source: Path, output: Path, *, fuse_bias: bool = True, kernels: str = "u8s8") -> Path:
    """`rewrite_for_ort_cpu` from one ONNX file to another; the tokenizer path in the metadata is
    re-pointed from the output's folder, and `qtool.runtime`, `qtool.int8_kernels` and
    `qtool.gemm_weight_bits` (7 when every GEMM weight fits [-64, 63], else 8) record the rewrite."""
    model = onnx.load(str(source))
    rewritten = rewrite_for_ort_cpu(model, fuse_bias=fuse_bias, kernels=kernels)
    metadata = {
        RUNTIME_KEY: "onnxruntime-cpu" + ("" if fuse_bias else " (bias unfused)"),
        INT8_KERNELS_METADATA: kernels,
        GEMM_WEIGHT_BITS_METADATA: "7" if u8s8_exact_everywhere(model) else "8",
    }
    return save_derived_graph(rewritten, source, output, metadata)
