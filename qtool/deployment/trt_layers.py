"""What a TensorRT engine computes in, read from its engine inspector rather than from the graph.

An engine built with detailed profiling verbosity describes every layer as JSON
(`IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`). The schemas differ by
version and by which compiler made a layer, and all of them are read here:

- TensorRT 10.x, a CASK layer: a tensor's `Format/Datatype` is a long text, "Row major linear Int8
  format", "Channel major FP16 format where channel % 8 == 0";
- TensorRT 10.x, a Myelin layer (`LayerType` "kgen", "gemm", "Myelin"): the same field holds a
  short token, "Int8", "Half", "Float", "BFloat16", "FP8" (the tokens trex's activation parser
  maps);
- TensorRT 11.x: the field is split into `DataType` (the short token) and `Format` (the layout),
  and `Bindings` became `I/O Tensors`.

Strong typing guarantees that Q/DQ layers run, not that the GEMMs behind them take INT8 inputs, so
INT8 is counted on GEMM-type layers only (matrix multiply, fully connected, convolution, a fused
attention kernel): one runs INT8 when its input tensors are all Int8 (float activations beside
Int8 weights are a weight-only GEMM, in the float type) or its tactic is an integer one (IMMA, i8). Reformat, Q/DQ (Scale, Quantize, Dequantize) and Cast layers move or convert data and
are counted apart. With several optimization profiles, layers of profiles after the first carry a
"[profile N]" suffix; only the first profile is counted. An engine built without detailed
verbosity lists layer names only: nothing is known.
"""

from __future__ import annotations

import json
import re
from collections import Counter

PRECISIONS = ("INT8", "FP8", "FP16", "BF16", "FP32")
_TOKENS = {
    "int8": "INT8",
    "fp8": "FP8",
    "half": "FP16",
    "fp16": "FP16",
    "bfloat16": "BF16",
    "bf16": "BF16",
    "float": "FP32",
    "fp32": "FP32",
}
_GEMM_TYPES = ("gemm", "matrixmultiply", "matmul", "fullyconnected", "convolution")
# fused attention kernels by their kernel names (_gemm_mha_v2, fmha_v2_..., flash...), not ONNX node paths
_ATTENTION = re.compile(r"(?:^|_)f?mha(?:_|$)|flash", re.IGNORECASE)
_INTEGER_TACTIC = re.compile(r"imma|i8i8|int8|(?<![a-z0-9])i8(?![0-9])", re.IGNORECASE)
_QDQ = re.compile(r"(?:Dequantize|Quantize)Linear")
_LATER_PROFILE = re.compile(r"\[profile +[1-9][0-9]*\]")


def tensor_precision(tensor: dict) -> str | None:
    """INT8, FP8, FP16, BF16 or FP32 of a tensor in any of the schemas; None for other types (Int32,
    Int64, Bool) or none given."""
    if not isinstance(tensor, dict):
        return None
    text = " ".join(str(tensor.get(key, "")) for key in ("DataType", "Datatype", "Format/Datatype"))
    for word in re.split(r"[\s/.,()]+", text.lower()):
        if word in _TOKENS:
            return _TOKENS[word]
    return None


def layer_kind(layer: dict | str) -> str:
    """`attention` (a fused attention kernel), `gemm`, `reformat`, `quantize` (Q/DQ), `cast`, `other`, or
    `unknown` (a names-only description)."""
    if not isinstance(layer, dict):
        return "unknown"
    kinds = f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}".lower().split()
    name = str(layer.get("Name", ""))
    if "reformat" in kinds or name.startswith("Reformatting CopyNode"):
        return "reformat"
    if "cast" in kinds:
        return "cast"
    if "quantize" in kinds or "dequantize" in kinds:
        return "quantize"
    if _ATTENTION.search(f"{name} {layer.get('TacticName', '')}"):
        return "attention"
    if any(kind in word for word in kinds for kind in _GEMM_TYPES) or "_gemm" in name.lower():
        return "gemm"
    nodes = re.findall(r"\[ONNX Layer: ([^\]]*)\]", str(layer.get("Metadata", ""))) or name.split(" + ")
    if all(_QDQ.search(node) for node in nodes):
        return "quantize"  # a Scale (CASK) or kgen (Myelin) layer made of Q/DQ nodes only
    return "other"


def layer_precision(layer: dict | str) -> str:
    """What a layer computes in: INT8 (a GEMM or attention layer whose inputs are all Int8, or with an
    integer tactic; any other layer with an Int8 input), else the first of FP8, FP16, BF16, FP32 among its
    inputs (its outputs when no input is a float or Int8); `reformat`,
    `quantize`, `cast` for layers that only convert; `unknown` when nothing is given."""
    kind = layer_kind(layer)
    if kind in ("unknown", "reformat", "quantize", "cast"):
        return kind
    if kind in ("gemm", "attention") and _INTEGER_TACTIC.search(str(layer.get("TacticName", ""))):
        return "INT8"
    for tensors in ("Inputs", "Outputs"):  # a layer reading integer indices only (a Gather) computes in its outputs'
        found = {tensor_precision(t) for t in layer.get(tensors, [])} - {None}
        if found == {"INT8"} or (found and kind not in ("gemm", "attention") and "INT8" in found):
            return "INT8"
        if found:  # a GEMM with float activations and Int8 weights (weight-only) computes in the float type
            return next(precision for precision in PRECISIONS if precision in found and precision != "INT8")
    return "unknown"


def _first_profile(layers: list) -> list:
    return [layer for layer in layers if not _LATER_PROFILE.search(layer["Name"] if isinstance(layer, dict) else layer)]


def summarize_layers(engine_information: str | dict) -> dict:
    """Counts of a TensorRT engine's layers from the inspector's JSON (any schema above): compute layers
    by precision, the GEMM-type layers that run INT8 and those that do not (by name), fused attention
    layers, and the layers that only convert data."""
    info = json.loads(engine_information) if isinstance(engine_information, str) else engine_information
    layers = _first_profile(info.get("Layers", []) if isinstance(info, dict) else [])
    kinds = [layer_kind(layer) for layer in layers]
    precisions = [layer_precision(layer) for layer in layers]
    gemms = [(layer, p) for layer, k, p in zip(layers, kinds, precisions, strict=True) if k in ("gemm", "attention")]
    computed = Counter(p for k, p in zip(kinds, precisions, strict=True) if k not in ("reformat", "quantize", "cast"))
    return {
        "layers": len(layers),
        "by_precision": {key: computed[key] for key in (*PRECISIONS, "unknown") if computed[key]},
        "gemms": len(gemms),
        "gemms_int8": sum(p == "INT8" for _, p in gemms),
        "gemms_not_int8": [layer["Name"] for layer, p in gemms if p != "INT8"],
        "fused_attention": sum(k == "attention" for k in kinds),
        "reformats": kinds.count("reformat"),
        "quantize_layers": kinds.count("quantize"),
        "casts": kinds.count("cast"),
        "detailed": bool(layers) and all(isinstance(layer, dict) for layer in layers),
    }


def engine_precision(layers: dict, requested: str) -> str:
    """The manifest's precision: what the inspector shows ("INT8 GEMMs 72/73 + FP16"), or what the graph
    asked for with "(not inspected)" when the engine has no detailed layer information."""
    if not layers.get("detailed"):
        return f"{requested} (not inspected)"
    floats = [p for p in ("FP16", "BF16", "FP8", "FP32") if layers["by_precision"].get(p)]
    float_part = " + ".join(floats[:2]) or "no float layers"
    if not layers["gemms_int8"]:
        return float_part
    return f"INT8 GEMMs {layers['gemms_int8']}/{layers['gemms']} + {float_part}"


def inspect_engine(trt, runtime, serialized) -> tuple[dict, str]:
    """`summarize_layers` of a serialized engine and the inspector's raw JSON (needs the GPU it was built
    on). The inspector is given an execution context, so shapes and tactics are those it runs."""
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        return summarize_layers({}), "{}"
    inspector = engine.create_engine_inspector()
    context = engine.create_execution_context()
    if context is not None:
        inspector.execution_context = context
    raw = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return summarize_layers(raw), raw
