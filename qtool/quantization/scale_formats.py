"""qtool's activation scales in other tools' formats: a TensorRT calibration cache and ONNX Runtime
`TensorQuantOverrides`.

Both formats hold one symmetric INT8 scale (zero point 0) per activation tensor, named by its ONNX
tensor name in the FP32 graph; weights are not part of either (TensorRT and ONNX Runtime take
weight scales from the weights themselves).

Which tensors are named. Without the FP32 graph, each quantized point names its `tensor` only.
With it (`model=`), a point also names the tensors that carry the same values: the attention
MatMul input where qtool's QDQ writer places the Q/DQ of query/key/value/probabilities
(`QuantPoint.matmul_input`, after the head reshape/transpose), and the tensors its values are
reshaped or transposed from and to along a single-consumer chain (the attention context is the
context MatMul's output, transposed and reshaped). All get the point's scale. This matters: TensorRT
then has a range on every tensor of the chain, and ONNX Runtime, which gives the output of a
Reshape/Transpose the scale of its input, uses qtool's scale along the whole chain instead of one
it calibrated itself for the chain's first tensor. ONNX Runtime does the same for a Gather's
output (the pooler's [CLS] slice): leave "Gather" out of `op_types_to_quantize` to get qtool's
scale there. Points kept in float are absent: TensorRT falls back to a non-INT8 implementation for
layers that read or produce a tensor without a range (its builder warns "Missing scale and
zero-point for tensor ..."), and ONNX Runtime calibrates a range of its own for whatever it
quantizes that has no override.

A scale file holds scales, not placements: a `gemm-inputs` calibration (quantized only on the
edges into MatMul/Gemm, residual path in float) exported this way is quantized where the reading
tool decides, which for ONNX Runtime's quantize_static includes the residual Add's input; the
export says so.

Per-embedding-group (PEG) calibrations with more than one group hold several scales per tensor,
which neither format can express; they are refused (deploy qtool's QDQ graph instead).

TensorRT cache format (text, as TensorRT's `writeCalibrationCache` produces it and ONNX Runtime's
TensorRT execution provider reads it in `ReadDynamicRange`, onnxruntime
`onnxruntime/core/providers/tensorrt/tensorrt_execution_provider.cc`):

    TRT-<version>-EntropyCalibration2
    <tensor name>: <float32 scale as 8 hex digits, the IEEE-754 bits big-endian>

`<version>` is TensorRT's `NV_TENSORRT_VERSION` of the TensorRT that reads the cache:
major*10000 + minor*100 + patch from TensorRT 10 (NvInferRuntimeBase.h), so 10.14.1 is 101401;
major*1000 + minor*100 + patch before (8.6.1 is 8601). TensorRT may skip a cache it considers
incompatible (NVIDIA/TensorRT#1378), so the header should name the TensorRT that will read it.
`EntropyCalibration2` is the algorithm of trtexec's calibrator, which reads `--calib=FILE`.
Calibration caches drive TensorRT's implicit quantization, deprecated since TensorRT 10.1 and gone
in 11; the QDQ graph (explicit quantization) works on every version.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

from qtool.calibrators.precision import SCOPES
from qtool.errors import QtoolError
from qtool.exporter.points import QuantPoint, find_quant_points
from qtool.fileio import read_json, write_json, write_text
from qtool.graph import SAME_VALUE_OPS, GraphIndex
from qtool.quantization.calibration import Calibration

log = logging.getLogger(__name__)

TRT_ALGORITHM = "EntropyCalibration2"
# Used when no `tensorrt` package is installed here: a TensorRT 10 release (10.x is the last major
# version that reads calibration caches). Pass the version of the TensorRT that reads the cache.
FALLBACK_TRT_VERSION = "10.14.1"
ORT_QUANT_TYPE = "QInt8"
FORMATS = ("trt-cache", "ort-overrides")


# -- the scales of a calibration ------------------------------------------------------------------
def point_tensor_names(model: onnx.ModelProto, points: Iterable[QuantPoint]) -> dict[str, list[str]]:
    """Point name -> the ONNX tensors that carry its values in `model`: the point's tensor, the
    tensors it is reshaped from and to along a single-consumer chain of SAME_VALUE_OPS, and the
    attention MatMul input where qtool's QDQ writer places its Q/DQ (`matmul_input`)."""
    points = list(points)
    index = GraphIndex(model.graph)
    owner = {p.tensor: p.name for p in points} | {p.matmul_input: p.name for p in points if p.matmul_input}

    def same_values(tensor: str, point: str) -> list[str]:
        names = [tensor]
        while (node := index.producer.get(names[0])) is not None and node.op_type in SAME_VALUE_OPS:
            source = node.input[0]
            if owner.get(source, point) != point or len(index.value_consumers(source)) != 1 or source in names:
                break
            names.insert(0, source)
        while len(following := index.value_consumers(names[-1])) == 1 and following[0][0].op_type in SAME_VALUE_OPS:
            node, slot = following[0]
            output = node.output[0]
            if slot != 0 or owner.get(output, point) != point or output in names:
                break
            names.append(output)
        return names

    names = {}
    for point in points:
        found = same_values(point.tensor, point.name)
        if point.matmul_input:
            found += same_values(point.matmul_input, point.name)
        names[point.name] = list(dict.fromkeys(found))
    return names


def tensor_scales(calibration: Calibration, model: onnx.ModelProto | None = None) -> dict[str, float]:
    """ONNX tensor name -> float32 scale of every quantized point, sorted by tensor name.

    Without `model` (the FP32 graph), each point names its tensor only; with it, also the tensors
    that carry the same values (`point_tensor_names`). Raises if a point has several channel-group
    scales (PEG).
    """
    grouped = sorted(name for name, entry in calibration.tensors.items() if len(entry.groups or ()) > 1)
    if grouped:
        raise QtoolError(
            f"this calibration has per-embedding-group (PEG) scales ({len(grouped)} points, e.g. {grouped[0]}), "
            "which a per-tensor scale format cannot hold; deploy its QDQ graph instead (explicit quantization, "
            "`qtool quantize`), or export the scales of a per-tensor method (max, percentile, or peg --groups 1)"
        )
    names: dict[str, list[str]] | None = None
    if model is not None:
        names = point_tensor_names(model, find_quant_points(model))
        missing = sorted(set(calibration.tensors) - set(names))
        if missing:
            raise QtoolError(f"the calibration names points that the model does not have ({', '.join(missing[:3])})")
    scales: dict[str, float] = {}
    for name, entry in calibration.tensors.items():
        scale = float(np.float32(entry.tensor_scale))
        for tensor in names[name] if names is not None else [entry.tensor]:
            if scales.get(tensor, scale) != scale:
                raise QtoolError(f"tensor {tensor} would get two different scales (point {name} and another)")
            scales[tensor] = scale
    return dict(sorted(scales.items()))


# -- TensorRT calibration cache --------------------------------------------------------------------
def default_trt_version() -> str:
    """The version of the `tensorrt` package installed here, else FALLBACK_TRT_VERSION."""
    try:
        return importlib.metadata.version("tensorrt")
    except importlib.metadata.PackageNotFoundError:
        return FALLBACK_TRT_VERSION


def trt_version_code(version: str) -> int:
    """TensorRT's NV_TENSORRT_VERSION for a version string such as '10.14.1' (a build number is ignored)."""
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)*(?:[.+-].*)?", version.strip())
    if match is None:
        raise QtoolError(f"--trt-version takes a TensorRT version such as 10.14.1, got {version!r}")
    major, minor, patch = int(match[1]), int(match[2]), int(match[3] or 0)
    if minor > 99 or patch > 99:
        raise QtoolError(f"--trt-version {version}: minor and patch numbers above 99 cannot be encoded")
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def trt_cache_header(trt_version: str | None = None) -> str:
    return f"TRT-{trt_version_code(trt_version or default_trt_version())}-{TRT_ALGORITHM}"


def scale_hex(scale: float) -> str:
    """The float32 scale as TensorRT writes it: the IEEE-754 bits as 8 hex digits (big-endian)."""
    return struct.pack(">f", scale).hex()


def trt_cache_text(calibration: Calibration, header: str | None = None, model: onnx.ModelProto | None = None) -> str:
    """The TensorRT calibration cache of `calibration`: the header line, then `name: hex` per tensor.

    Points kept in float are absent, so TensorRT runs the layers that read or produce them in
    higher precision. PEG calibrations with several groups are refused.
    """
    return _trt_text(tensor_scales(calibration, model), header or trt_cache_header())


def _trt_text(scales: dict[str, float], header: str) -> str:
    if not header.startswith("TRT-") or "\n" in header:
        raise QtoolError(f"a TensorRT cache header starts with 'TRT-', got {header!r}")
    lines = [header]
    for tensor, scale in scales.items():
        if "\n" in tensor or "\r" in tensor:
            raise QtoolError(f"tensor name {tensor!r} has a line break; a TensorRT cache cannot hold it")
        lines.append(f"{tensor}: {scale_hex(scale)}")
    return "\n".join(lines) + "\n"


def write_trt_cache(
    calibration: Calibration, path: Path, header: str | None = None, model: onnx.ModelProto | None = None
) -> Path:
    return write_text(path, trt_cache_text(calibration, header, model))


def read_trt_cache(path: Path) -> dict[str, float]:
    """Tensor name -> scale of a TensorRT text calibration cache (the header line is checked, then skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise QtoolError(f"{path} does not exist") from None
    except UnicodeDecodeError:
        raise QtoolError(f"{path} is not a TensorRT text calibration cache (not text)") from None
    if not lines or not lines[0].startswith("TRT-"):
        raise QtoolError(f"{path} is not a TensorRT calibration cache (no 'TRT-' header line)")
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            bits = int(value.strip(), 16)
            scales[name] = float(struct.unpack(">f", struct.pack(">I", bits))[0])
        except (ValueError, struct.error):
            raise QtoolError(f"{path}:{number}: expected 'tensor: hex', got {line[:80]!r}") from None
    return scales


# -- ONNX Runtime TensorQuantOverrides -------------------------------------------------------------
def ort_overrides(calibration: Calibration, model: onnx.ModelProto | None = None) -> dict:
    """The JSON form of ONNX Runtime's `TensorQuantOverrides` for `calibration`'s activation scales:
    {tensor: [{"scale": s, "zero_point": 0, "quant_type": "QInt8"}]}. `load_ort_overrides` turns
    the written file into the objects `quantize_static` takes."""
    return _ort_json(tensor_scales(calibration, model))


def _ort_json(scales: dict[str, float]) -> dict:
    return {
        tensor: [{"scale": scale, "zero_point": 0, "quant_type": ORT_QUANT_TYPE}] for tensor, scale in scales.items()
    }


def write_ort_overrides(calibration: Calibration, path: Path, model: onnx.ModelProto | None = None) -> Path:
    return write_json(path, ort_overrides(calibration, model))


def load_ort_overrides(path: Path) -> dict:
    """The overrides file as `quantize_static(..., extra_options={"TensorQuantOverrides": ...})` takes it:
    scale a float32 NumPy scalar, zero_point an int8 (or uint8) NumPy scalar, quant_type a QuantType."""
    from onnxruntime.quantization import QuantType

    data = read_json(path)
    if not isinstance(data, dict):
        raise QtoolError(f"{path} is not an ONNX Runtime overrides file; write one with `qtool export-scales`")
    overrides = {}
    for tensor, entries in data.items():
        if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
            raise QtoolError(f"{path}: {tensor} must hold a list of one per-tensor override")
        entry = entries[0]
        try:
            quant_type = QuantType[entry.get("quant_type", ORT_QUANT_TYPE)]
            zero_dtype = {QuantType.QInt8: np.int8, QuantType.QUInt8: np.uint8}[quant_type]
            scale = np.array(entry["scale"], dtype=np.float32)
            zero_point = np.array(entry["zero_point"], dtype=zero_dtype)
        except (KeyError, TypeError, ValueError, OverflowError):
            raise QtoolError(
                f"{path}: the override of {tensor} needs a numeric scale and zero_point and quant_type QInt8 or QUInt8"
            ) from None
        overrides[tensor] = [{"scale": scale, "zero_point": zero_point, "quant_type": quant_type}]
    return overrides


# -- one entry point for the CLI -------------------------------------------------------------------
def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise QtoolError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def default_output(calibration_file: Path, calibration: Calibration, fmt: str) -> Path:
    """`<recipe>.calib.cache` or `<recipe>.ort-overrides.json` beside the calibration file."""
    suffix = {"trt-cache": ".calib.cache", "ort-overrides": ".ort-overrides.json"}[fmt]
    return Path(calibration_file).parent / f"{calibration.recipe}{suffix}"


def export_scales(
    calibration: Calibration, fmt: str, output: Path, model: onnx.ModelProto | None = None, trt_version: str | None = None
) -> dict:
    """Write `calibration`'s scales as `fmt` to `output` (atomically); a summary of what was written."""
    check_format(fmt)
    scales = tensor_scales(calibration, model)
    summary = {"format": fmt, "output": str(output), "tensors": len(scales), "points": len(calibration.tensors)}
    scope = SCOPES.get(calibration.scope)
    if scope is not None and scope.gemm_edges_only:
        summary["placement_note"] = (
            f"scope {calibration.scope} quantizes values only where they enter a MatMul/Gemm and keeps the residual "
            "path in float; a scale file cannot say where to quantize, and ONNX Runtime's quantize_static (and "
            "TensorRT) also feed the residual Add the quantized LayerNorm output, so accuracy may differ from qtool's "
            "QDQ graph: deploy that graph (`qtool build`) to keep the placement"
        )
    if fmt == "trt-cache":
        summary["header"] = trt_cache_header(trt_version)
        write_text(output, _trt_text(scales, summary["header"]))
    else:
        write_json(output, _ort_json(scales))
    log.debug("wrote %d tensor scales to %s", len(scales), output)
    return summary
