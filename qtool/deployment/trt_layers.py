"""What precision each layer of a TensorRT engine runs in, from its engine inspector.

An engine built with detailed profiling verbosity describes every layer as JSON
(`IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`): its name, `LayerType`,
and for each input and output tensor a `Format/Datatype` string such as "Row major linear Int8
format" or "Channel major FP16 format where channel % 8 == 0". A layer runs in the precision of
its inputs: Int8 if any input is Int8, else FP16 (or BF16, FP8), else FP32. Reformat layers only
move data between formats and are counted apart. An engine built with the default verbosity lists
layer names only; its layers count as unknown.

TensorRT may fuse a whole attention block into one foreign (Myelin) layer whose inputs show the
precision at its boundary only; the summary cannot see inside it.
"""

from __future__ import annotations

import json
from collections import Counter

PRECISIONS = ("INT8", "FP8", "FP16", "BF16", "FP32")
_GEMM_TYPES = ("gemm", "matrixmultiply", "matmul", "fullyconnected", "convolution")


def _datatype(format_text: str) -> str | None:
    words = format_text.replace("/", " ").upper().split()
    for precision in PRECISIONS:
        if precision in words or (precision == "FP32" and "FLOAT" in words):
            return precision
    return None


def layer_precision(layer: dict | str) -> str:
    """INT8, FP8, FP16, BF16, FP32, `reformat`, or `unknown` (a names-only description)."""
    if not isinstance(layer, dict):
        return "unknown"
    if str(layer.get("LayerType", "")).lower() == "reformat":
        return "reformat"
    found = {_datatype(str(t.get("Format/Datatype", ""))) for t in layer.get("Inputs", []) if isinstance(t, dict)}
    return next((precision for precision in PRECISIONS if precision in found), "unknown")


def is_gemm(layer: dict | str) -> bool:
    return isinstance(layer, dict) and any(kind in str(layer.get("LayerType", "")).lower() for kind in _GEMM_TYPES)


def summarize_layers(engine_information: str | dict) -> dict:
    """Layer counts by precision and the GEMM layers that do not run INT8, from the inspector's JSON."""
    info = json.loads(engine_information) if isinstance(engine_information, str) else engine_information
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    counts = Counter(layer_precision(layer) for layer in layers)
    return {
        "layers": len(layers),
        "by_precision": {key: counts[key] for key in (*PRECISIONS, "reformat", "unknown") if counts[key]},
        "gemms": sum(is_gemm(layer) for layer in layers),
        "gemms_not_int8": [layer["Name"] for layer in layers if is_gemm(layer) and layer_precision(layer) != "INT8"],
        "detailed": bool(layers) and all(isinstance(layer, dict) for layer in layers),
    }


def inspect_engine(trt, runtime, serialized) -> dict:
    """`summarize_layers` of a serialized engine (needs the GPU it was built on)."""
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        return {"layers": 0, "by_precision": {}, "gemms": 0, "gemms_not_int8": [], "detailed": False}
    inspector = engine.create_engine_inspector()
    return summarize_layers(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
