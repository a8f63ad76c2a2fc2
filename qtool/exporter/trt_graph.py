"""The graph TensorRT builds an engine from, written as TensorRT recommends: explicit Q/DQ, strongly typed, FP16 around it.

`qtool build --backend trt` parses this graph, written beside the engine as `<engine>.trt.onnx`, not
the graph it was given. Each pass is reported in the engine's manifest. Passes 1 and 3 compute the
same function up to float rounding, but a rounding step can move a value that sits on an int8
rounding boundary by one step; pass 2 removes the head's quantization noise and pass 4 rounds to
FP16. So this graph's accuracy is close to the recipe's, not equal (`benchmarks/trt_graph_cpu.py`
measures it on a CPU):

1. Embedding tables in float. A DequantizeLinear of a constant int8 table feeding a Gather (scope
   `all`) is folded into a float table holding the dequantized values: the Gather reads exactly the
   numbers it read before, and TensorRT, whose INT8 kernels do not cover Gather, never sees an int8
   table.
2. No Q/DQ on the head GEMVs. A MatMul/Gemm whose activation has rank 2 (one row per sequence: the
   pooler and classifier, a GEMV at batch 1) reads its float activation and its dequantized weight
   as a float constant: INT8 gains nothing there and each Q/DQ costs a kernel. `quantize_head` keeps them.
3. Attention scale before the score MatMul. The export computes softmax(Q Kᵀ * c + mask) with
   c = 1/sqrt(d) applied after the first attention MatMul; TensorRT's fused attention needs Q scaled
   before it. The Mul (or Div) is moved onto Q; when Q passes a Q/DQ pair, the Mul goes before the
   QuantizeLinear and the pair's scale is multiplied by c, so the int8 codes stay the same.
4. FP16. Every float tensor, initializer and constant becomes FP16 through ONNX Runtime's converter
   (`onnxruntime.transformers.float16.convert_float_to_float16`, keep_io_types): the int64 inputs
   stay as they are and the float32 logits come out of one final Cast. Q/DQ scales become FP16 so
   that each DequantizeLinear outputs FP16, which a strongly typed TensorRT network requires; FP16
   scales need opset 19, so a graph with Q/DQ nodes and an older opset is converted to 19 first.
   LayerNormalization stays FP32 between casts (as Model Optimizer's AutoCast keeps normalization):
   BERT's residual outlier channels reach hundreds, and their squares overflow FP16.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from qtool.defaults import TRT_FP16, TRT_QUANTIZE_HEAD
from qtool.errors import QtoolError
from qtool.exporter.weight_codes import dequantized_constant
from qtool.graph import (
    RUNTIME_KEY,
    GraphIndex,
    load_model,
    onnx_opset,
    prune_dead_nodes,
    save_derived_graph,
    tensor_ranks,
)

log = logging.getLogger(__name__)

FP16_OPSET = 19  # QuantizeLinear/DequantizeLinear take FP16 scales from opset 19
FP16_CONVERTER = "onnxruntime.transformers.float16.convert_float_to_float16"
RUNTIME = "tensorrt"
GEMM_OPS = ("MatMul", "Gemm")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
FP32_OPS = ("LayerNormalization",)  # kept FP32 in the FP16 graph (see pass 4)


@dataclass(frozen=True)
class TrtGraphConfig:
    fp16: bool = TRT_FP16
    quantize_head: bool = TRT_QUANTIZE_HEAD
    float_embeddings: bool = True
    scale_query: bool = True


# -- constants -------------------------------------------------------------------------------------
def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    try:
        return tensor_ranks(model)
    except Exception as exc:  # onnx raises several types here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise QtoolError(
            f"cannot infer the graph's shapes for its TensorRT graph ({first}); check it with onnx.checker"
        ) from None


# -- passes ----------------------------------------------------------------------------------------
def float_embedding_tables(model: onnx.ModelProto) -> list[str]:
    """Pass 1: Gathers of a dequantized constant table read a float table instead; returns their names."""
    index = GraphIndex(model.graph)
    changed = []
    for node in index.nodes:
        if node.op_type != "Gather":
            continue
        table = dequantized_constant(index, node.input[0])
        if table is not None:
            node.input[0] = index.add_initializer(f"{node.input[0]}/float", table)
            changed.append(node.name)
    return changed


def float_head_gemms(model: onnx.ModelProto) -> list[str]:
    """Pass 2: MatMul/Gemm nodes with a rank-2 activation lose their Q/DQ; returns their names."""
    index = GraphIndex(model.graph)
    ranks = _ranks(model)
    changed = []
    for node in index.nodes:
        if node.op_type not in GEMM_OPS or ranks.get(node.input[0]) != 2:
            continue
        touched = False
        dequantize = index.producer.get(node.input[0])
        if dequantize is not None and dequantize.op_type == "DequantizeLinear":
            quantize = index.producer.get(dequantize.input[0])
            if quantize is not None and quantize.op_type == "QuantizeLinear":
                node.input[0], touched = quantize.input[0], True
        weight = dequantized_constant(index, node.input[1])
        if weight is not None:
            node.input[1], touched = index.add_initializer(f"{node.input[1]}/float", weight), True
        if touched:
            changed.append(node.name)
    return changed


def _scalar(index: GraphIndex, name: str) -> float | None:
    value = index.constant_value(name)
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def _score_scale(index: GraphIndex, matmul: onnx.NodeProto) -> tuple[onnx.NodeProto, float] | None:
    """(the Mul/Div node, factor c) when `matmul` is an attention score MatMul scaled after the product."""
    readers = index.consumers.get(matmul.output[0], [])
    if len(readers) != 1 or readers[0][0].op_type not in ("Mul", "Div") or matmul.output[0] in index.graph_outputs:
        return None
    scale_node, position = readers[0]
    if scale_node.op_type == "Div" and position != 0:
        return None
    factor = _scalar(index, scale_node.input[1 - position])
    if not factor:
        return None
    follower = scale_node.output[0]
    for _ in range(3):  # an Add of the mask (maybe two) and then the Softmax
        nexts = index.consumers.get(follower, [])
        if len(nexts) != 1:
            return None
        if nexts[0][0].op_type == "Softmax":
            return scale_node, (1.0 / factor if scale_node.op_type == "Div" else factor)
        follower = nexts[0][0].output[0]
    return None


def _scale_through_qdq(index: GraphIndex, query: str, factor: float, constant: str) -> bool:
    """Put the Mul before the Q/DQ pair producing `query`, its scale times `factor`; False if shared."""
    dequantize = index.producer.get(query)
    if dequantize is None or dequantize.op_type != "DequantizeLinear" or index.use_count(query) != 1:
        return False
    quantize = index.producer.get(dequantize.input[0])
    if quantize is None or quantize.op_type != "QuantizeLinear" or index.use_count(quantize.output[0]) != 1:
        return False
    scale = index.constant_value(quantize.input[1])
    if scale is None or scale.size != 1 or index.constant_value(dequantize.input[1]) is None:
        return False
    scaled = index.unique_name(f"{quantize.input[0]}/attention_scaled")
    multiply = onnx.helper.make_node(
        "Mul", [quantize.input[0], constant], [scaled], name=index.unique_name(f"{quantize.name}/AttentionScale")
    )
    new_scale = index.add_initializer(f"{quantize.input[1]}/attention_scaled", (scale * factor).astype(scale.dtype))
    quantize.input[0] = scaled  # before replace_node, which inserts copies
    quantize.input[1] = dequantize.input[1] = new_scale
    index.replace_node(quantize, [multiply, quantize])
    return True


def scale_query_first(model: onnx.ModelProto) -> list[str]:
    """Pass 3: the attention scale moves from after the score MatMul onto its query; returns the MatMuls."""
    index = GraphIndex(model.graph)
    moved = []
    for matmul in index.nodes:
        if matmul.op_type != "MatMul" or any(index.is_constant(name) for name in matmul.input):
            continue
        found = _score_scale(index, matmul)
        if found is None:
            continue
        scale_node, factor = found
        constant = index.add_initializer(f"{matmul.name}/attention_scale", np.array(factor, np.float32))
        if not _scale_through_qdq(index, matmul.input[0], factor, constant):
            if (
                index.producer.get(matmul.input[0]) is not None
                and index.producer[matmul.input[0]].op_type == "DequantizeLinear"
            ):
                log.warning(
                    "%s: the query's Q/DQ pair is shared or per-channel, so the attention scale goes between its "
                    "DequantizeLinear and the MatMul; TensorRT may run that score MatMul in FP16, not INT8",
                    matmul.name,
                )
            scaled = index.unique_name(f"{matmul.input[0]}/attention_scaled")
            multiply = onnx.helper.make_node(
                "Mul", [matmul.input[0], constant], [scaled], name=index.unique_name(f"{matmul.name}/AttentionScale")
            )
            matmul.input[0] = scaled  # before replace_node, which inserts copies
            index.replace_node(matmul, [multiply, matmul])
        for reader, position in index.consumers.get(scale_node.output[0], []):
            reader.input[position] = matmul.output[0]
        index.replace_node(scale_node, [])
        moved.append(matmul.name)
    return moved


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Pass 4: the float parts in FP16 (see the module docstring); inputs and outputs keep their types."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    opset = onnx_opset(model)
    if opset < FP16_OPSET and any(node.op_type in QDQ_OPS for node in model.graph.node):
        try:
            model = onnx.version_converter.convert_version(model, FP16_OPSET)
        except Exception as exc:
            raise QtoolError(
                f"cannot convert the graph from opset {opset} to {FP16_OPSET} for FP16 Q/DQ scales "
                f"({type(exc).__name__}); re-export with `qtool export --opset {FP16_OPSET}`"
            ) from None
    io_types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS])
    OnnxModel(converted).topological_sort()  # the converter appends the casts around blocked ops at the end
    problems = fp16_problems(converted, io_types)
    if problems:
        raise QtoolError(f"the FP16 conversion left {problems[0]}; build with --fp32 and report this graph")
    return converted


def fp16_problems(model: onnx.ModelProto, io_types: dict[str, int]) -> list[str]:
    """What keeps `model` from being the FP16 graph: float32 Q/DQ scales, changed input/output types."""
    index = GraphIndex(model.graph)
    problems = [
        f"a float32 scale at {node.name or node.output[0]}"
        for node in index.nodes
        if node.op_type in QDQ_OPS
        and (scale := index.constant_value(node.input[1])) is not None
        and scale.dtype != np.float16
    ]
    for value in (*model.graph.input, *model.graph.output):
        if value.name in io_types and value.type.tensor_type.elem_type != io_types[value.name]:
            problems.append(f"{value.name} as {onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)}")
    return problems


# -- the whole graph -------------------------------------------------------------------------------
def tensorrt_graph(model: onnx.ModelProto, config: TrtGraphConfig = TrtGraphConfig()) -> tuple[onnx.ModelProto, dict]:
    """The TensorRT graph of `model` (a copy) and what each pass changed."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    report: dict = {RUNTIME_KEY: RUNTIME, "float": "fp16" if config.fp16 else "fp32"}
    report["embedding_tables_float"] = float_embedding_tables(rewritten) if config.float_embeddings else []
    report["head_gemms_float"] = [] if config.quantize_head else float_head_gemms(rewritten)
    report["attention_scale_moved"] = scale_query_first(rewritten) if config.scale_query else []
    prune_dead_nodes(rewritten)
    if config.fp16:
        rewritten = to_fp16(rewritten)
        report["fp16_converter"] = FP16_CONVERTER
    report["opset"] = onnx_opset(rewritten) or None
    report["quantize_nodes"] = sum(node.op_type == "QuantizeLinear" for node in rewritten.graph.node)
    del rewritten.metadata_props[:]
    rewritten.metadata_props.extend(model.metadata_props)
    try:
        onnx.checker.check_model(rewritten)
    except onnx.checker.ValidationError as exc:
        first = (str(exc).strip().splitlines() or ["invalid graph"])[0]
        raise QtoolError(
            f"the TensorRT graph written from this graph is not valid ONNX ({first}); build with --fp32 or report it"
        ) from None
    log.info(
        "TensorRT graph: %s floats, %d float embedding tables, %d head GEMMs without Q/DQ, %d attention scales moved",
        report["float"],
        len(report["embedding_tables_float"]),
        len(report["head_gemms_float"]),
        len(report["attention_scale_moved"]),
    )
    return rewritten, report


def write_trt_graph(source: Path, target: Path, config: TrtGraphConfig = TrtGraphConfig()) -> dict:
    """Write the TensorRT graph of the QDQ or FP32 graph at `source` to `target`; return the pass report."""
    rewritten, report = tensorrt_graph(load_model(source), config)
    save_derived_graph(rewritten, source, target, {RUNTIME_KEY: RUNTIME, "float_precision": report["float"]})
    return report
