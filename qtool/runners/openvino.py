"""OpenVINO backend: run an OpenVINO model (IR `.xml`, built by `qtool build --backend openvino`) on
OpenVINO's CPU plugin behind the runner protocol.

OpenVINO turns a QDQ graph's QuantizeLinear/DequantizeLinear pairs into FakeQuantize operations and
runs the GEMMs between them in INT8 where the CPU has integer kernels (VNNI, AMX). The float parts
run in float32: the CPU plugin would otherwise pick bfloat16 on CPUs with native bf16
(`INFERENCE_PRECISION_HINT`), and quantize float inputs of GEMMs with 8-bit weights at run time
(`DYNAMIC_QUANTIZATION_GROUP_SIZE`); neither is the graph's arithmetic.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from qtool.errors import QtoolError
from qtool.runners.base import Runner

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'qtool[peers]' (or pip install openvino)"


def import_openvino():
    """The `openvino` module, or a one-line error saying how to get it."""
    try:
        import openvino
    except ImportError:
        raise QtoolError(f"OpenVINO is not installed; {INSTALL_HINT}") from None
    return openvino


def compile_properties(threads: int | None = None) -> dict:
    """How qtool compiles a model for OpenVINO's CPU plugin: the graph's arithmetic, tuned for latency,
    on `threads` threads (None: OpenVINO's default). Float parts run in f32 (as the graph was scored),
    and a GEMM whose input the graph keeps in float stays float: by default the plugin quantizes the
    input of a GEMM with 8-bit weights in groups of 32 at run time (dynamic quantization)."""
    settings = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}
    return settings | ({"INFERENCE_NUM_THREADS": threads} if threads else {})


FUSED_GEMM_TYPES = ("MatMul", "Softmax", "ScaledDotProductAttention")  # a fused block holding these holds GEMMs


class OpenVinoRunner(Runner):
    """An OpenVINO model compiled for the CPU at latency (one request, `threads` inference threads)."""

    name = "openvino"
    library = "openvino"

    def __init__(self, model_path: Path, threads: int | None = None) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.threads = threads
        self._compiled = self._request = None
        self._inputs: list[str] = []
        self._layer_types: dict[str, str] = {}

    def _activate(self) -> None:
        ov = import_openvino()
        if not self.model_path.is_file():
            raise QtoolError(f"{self.model_path} does not exist; build it with `qtool build GRAPH --backend openvino`")
        config = compile_properties(self.threads)
        try:
            core = ov.Core()
            model = core.read_model(str(self.model_path))
            self._layer_types = {op.get_friendly_name(): op.get_type_name() for op in model.get_ordered_ops()}
            self._compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            reason = " ".join(str(exc).split())[:200]
            raise QtoolError(f"OpenVINO cannot compile {self.model_path} ({reason}); rebuild it from its graph") from None
        self._request = self._compiled.create_infer_request()
        self._inputs = [port.get_any_name() for port in self._compiled.inputs]

    def _deactivate(self) -> None:
        self._request = self._compiled = None

    def input_names(self) -> list[str]:
        return self._inputs

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._request.infer(dict(feeds))
        return {port.get_any_name(): np.array(results[port]) for port in self._compiled.outputs}

    def kernels(self) -> str | None:
        """How many of the compiled model's GEMMs (projections and attention blocks) OpenVINO runs in
        int8 on this CPU, and which primitives it chose for them, once the model has run: for example
        `openvino: 44/44 GEMMs int8 (brgemm_avx512_i8, jit_avx512_i8)`."""
        if self._compiled is None:
            return None
        layers = self._compiled.get_runtime_model().get_ordered_ops()
        gemms = [primitive for op in layers if (primitive := _gemm_primitive(op, self._layer_types))]
        if not gemms:
            return None
        integer = sorted({p for p in gemms if _is_integer(p) and not p.startswith("undef")})  # undef: not run yet
        count = sum(_is_integer(primitive) for primitive in gemms)
        return f"openvino: {count}/{len(gemms)} GEMMs int8" + (f" ({', '.join(integer)})" if integer else "")


def _gemm_primitive(op, layer_types: Mapping[str, str]) -> str | None:
    """The primitive that runs a GEMM layer of OpenVINO's runtime model (a fully connected layer, a
    MatMul, or a fused block holding MatMuls), lower-cased; None for any other layer. A fused block is
    known by the types its original layers had in the model as read (`layer_types`): a MatMul, a
    Softmax (the middle of an attention block, whose MatMuls' names OpenVINO may have replaced), or the
    ScaledDotProductAttention that OpenVINO makes of a float attention block when it reads the model."""
    info = op.get_rt_info()
    layer = info["layerType"].astype(str) if "layerType" in info else ""
    merged = info["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in info else []
    is_gemm = "FullyConnected" in layer or layer in ("MatMul", "ScaledDotProductAttention") or (
        layer == "Subgraph" and any(layer_types.get(name) in FUSED_GEMM_TYPES for name in merged)
    )
    return info["primitiveType"].astype(str).lower() if is_gemm and "primitiveType" in info else None


def _is_integer(primitive: str) -> bool:
    return primitive.rsplit("_", 1)[-1] in ("i8", "u8")
