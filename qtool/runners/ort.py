"""ONNX Runtime backend."""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np

from qtool.errors import QtoolError
from qtool.graph import METADATA_PREFIX, load_model
from qtool.runners.base import Runner

log = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
INT8_KERNELS = ("u8s8", "u8u8")  # uint8 activations times int8 or uint8 weights
INT8_KERNELS_METADATA = "int8_kernels"
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})  # /proc/cpuinfo names


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or NumPy's runtime detection elsewhere; None if unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        return None
    return {"avx512_vnni"} if __cpu_features__.get("AVX512VNNI") else set()


@cache
def int8_kernels_for_this_cpu() -> tuple[str, str]:
    """Which integer GEMMs ONNX Runtime computes exactly on this CPU, and why.

    On x86 without VNNI, ONNX Runtime's U8S8 kernels add pairs of uint8 x int8 products in 16 bits
    (VPMADDUBSW), which saturates (255 x 127 x 2 > 32767), so a result can differ from the QDQ
    graph's; its U8U8 kernels widen to 16 bits first and never saturate. With VNNI (VPDPBUSD adds
    in 32 bits) and on other architectures U8S8 is exact and the faster of the two."""
    machine = platform.machine().lower()
    if machine not in X86_MACHINES:
        return "u8s8", f"a {machine} CPU, where U8S8 kernels do not saturate"
    flags = _cpu_flags()
    if flags is None:
        return "u8u8", "an x86 CPU whose features could not be read, so U8S8's saturation cannot be ruled out"
    if flags & VNNI_FLAGS:
        return "u8s8", "an x86 CPU with VNNI, where U8S8 kernels add in 32 bits"
    return "u8u8", "an x86 CPU without VNNI, where U8S8 kernels add pairs of products in 16 bits and can saturate"


def check_onnx_file(path: Path) -> Path:
    """Fail with a one-line error for a missing or unreadable ONNX file."""
    load_model(path, load_external_data=False)
    return Path(path)


def session_options(threads: int | None = None, optimization_level: str = "all"):
    """ONNX Runtime session options as qtool uses them: quiet, `threads` intra-op threads (one
    inter-op thread), the named graph optimization level."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization_level]
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


class OrtRunner(Runner):
    """An ONNX Runtime session of an ONNX file, or of a serialized model (bytes) built in memory."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path | bytes,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
        optimization_level: str = "all",
        optimized_model_path: Path | None = None,
        spinning: bool = True,
    ) -> None:
        super().__init__()
        if optimization_level not in OPTIMIZATION_LEVELS:
            raise QtoolError(
                f"unknown optimization level {optimization_level!r}; choose {', '.join(OPTIMIZATION_LEVELS)}"
            )
        self.model_path = model_path if isinstance(model_path, bytes) else Path(model_path)
        self.providers = list(providers)
        self.threads = threads
        self.optimization_level = optimization_level
        self.optimized_model_path = optimized_model_path
        self.spinning = spinning
        self.session = None

    def _activate(self) -> None:
        import onnxruntime as ort

        in_memory = isinstance(self.model_path, bytes)
        if not in_memory:
            check_onnx_file(self.model_path)
        available = ort.get_available_providers()
        unknown = [p for p in self.providers if p not in available]
        if unknown:
            raise QtoolError(
                f"execution provider(s) {unknown} are not available here; available: {', '.join(available)}"
            )
        options = session_options(self.threads, self.optimization_level)
        if self.optimized_model_path:
            options.optimized_model_filepath = str(self.optimized_model_path)
        if not self.spinning:  # idle sessions must not busy-wait while another one runs (interleaved benchmarks)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            model = self.model_path if in_memory else str(self.model_path)
            self.session = ort.InferenceSession(model, options, providers=self.providers)
        except Exception as exc:
            where = "the graph in memory" if in_memory else self.model_path
            raise QtoolError(f"ONNX Runtime cannot load {where}: {str(exc).splitlines()[0]}") from None
        self._warn_on_saturating_kernels()
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _warn_on_saturating_kernels(self) -> None:
        recorded = self.session.get_modelmeta().custom_metadata_map.get(METADATA_PREFIX + INT8_KERNELS_METADATA)
        wanted, why = int8_kernels_for_this_cpu()
        if recorded == "u8s8" and wanted == "u8u8" and "CPUExecutionProvider" in self.providers[:1]:
            log.warning(
                "%s was built for U8S8 kernels; this is %s, so some results may differ from the QDQ graph's: "
                "rebuild it here with `qtool build --backend ort --int8-kernels u8u8`",
                self.model_path if not isinstance(self.model_path, bytes) else "the graph",
                why,
            )

    def _deactivate(self) -> None:
        self.session = None

    def input_names(self) -> list[str]:
        return self._inputs

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self._outputs, dict(feeds))
        return dict(zip(self._outputs, values, strict=True))
