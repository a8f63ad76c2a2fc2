"""What ONNX Runtime's CPU provider made of a graph: the integer kernels it fused and any float
MatMul still fed by DequantizeLinear (the check behind `qtool build --backend ort`)."""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import onnx

from qtool.graph import GraphIndex

log = logging.getLogger(__name__)

INTEGER_OPS = frozenset(
    {
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QGemm",
        "QAttention",
        "QEmbedLayerNormalization",
        "MatMulNBits",
        "ConvInteger",
    }
)
FLOAT_MATMUL_OPS = frozenset({"MatMul", "Gemm", "FusedMatMul", "FusedGemm"})
def is_integer_op(op_type: str) -> bool:
    return op_type in INTEGER_OPS or op_type.startswith("QLinear")


def count_fused_integer_ops(optimized_model_path: Path) -> dict[str, int]:
    """Counts of the integer kernels (QLinearMatMul, MatMulIntegerToFloat, QGemm, ...) in a saved graph."""
    model = onnx.load(str(optimized_model_path), load_external_data=False)
    counts = Counter(node.op_type for node in model.graph.node if is_integer_op(node.op_type))
    return dict(sorted(counts.items()))


def _float_matmul_report(model: onnx.ModelProto) -> dict[str, int]:
    producer = GraphIndex(model.graph).producer

    def dequantized(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    report = {"float_matmuls": 0, "float_matmuls_one_dequantized_input": 0, "float_matmuls_two_dequantized_inputs": 0}
    for node in model.graph.node:
        if node.op_type not in FLOAT_MATMUL_OPS:
            continue
        report["float_matmuls"] += 1
        from_dequantize = sum(dequantized(name) for name in node.input[:2])
        if from_dequantize == 1:
            report["float_matmuls_one_dequantized_input"] += 1
        elif from_dequantize == 2:
            report["float_matmuls_two_dequantized_inputs"] += 1
    return report


def check_fused(model_path: Path, optimized_model_path: Path | None = None, level: str = "all") -> dict:
    """Let ONNX Runtime (CPU) optimize `model_path`, save the result and report what it fused.

    The optimized graph is saved with its initializers in a side file (so graphs above protobuf's
    2 GB limit save too) and read back without them. ONNX Runtime saves level `all` graphs (with a
    warning that layout transforms make them machine-specific); if saving fails at `all`, the
    graph is optimized again at `extended`, which already holds every QDQ fusion (they run at
    level 2; level 3 only adds layout transforms).
    """
    import onnxruntime as ort

    from qtool.runners.ort import session_options

    levels = ("extended", "all")
    if level not in levels:
        raise ValueError(f"level must be one of {', '.join(levels)}")
    with tempfile.TemporaryDirectory(prefix="qtool-ort-") as scratch:
        target = Path(optimized_model_path) if optimized_model_path else Path(scratch) / "optimized.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        for attempt in [level, "extended"] if level == "all" else [level]:
            options = session_options(optimization_level=attempt)
            options.optimized_model_filepath = str(target)
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", f"{target.name}.data"
            )
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
            try:
                ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
                break
            except Exception as exc:  # ONNX Runtime raises its own exception types
                if attempt == "extended" or level != "all":
                    raise
                log.warning("ONNX Runtime could not save the level-%s graph (%s); trying extended", attempt, exc)
        model = onnx.load(str(target), load_external_data=False)
        all_ops = Counter(node.op_type for node in model.graph.node)
        report = {
            "model": str(model_path),
            "optimization_level": attempt,
            "onnxruntime": ort.__version__,
            "integer_ops": count_fused_integer_ops(target),
            **_float_matmul_report(model),
            "quantize_linear": all_ops.get("QuantizeLinear", 0),
            "dequantize_linear": all_ops.get("DequantizeLinear", 0),
            "op_counts": dict(sorted(all_ops.items())),
        }
        if optimized_model_path:
            report["optimized_model"] = str(target)
    if report["float_matmuls_two_dequantized_inputs"]:
        log.warning(
            "%s: %d float MatMul/Gemm still read two DequantizeLinear outputs after ONNX Runtime's fusions",
            model_path,
            report["float_matmuls_two_dequantized_inputs"],
        )
    return report

