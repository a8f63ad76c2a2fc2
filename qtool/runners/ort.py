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
GEMM_WEIGHT_BITS_METADATA = "gemm_weight_bits"  # "7": no U8S8 kernel can saturate on this graph
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})  # /proc/cpuinfo names
# Integer dot-product features, as /proc/cpuinfo names them, and NumPy's runtime (CPUID) names.
DOT_PRODUCT_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")
NUMPY_FEATURES = {"AVX2": "avx2", "AVX512BW": "avx512bw", "AVX512VNNI": "avx512_vnni", "ASIMDDP": "asimddp"}
PROBE_DEPTH = 64  # products per output of the saturation probe


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags: what CPUID says through NumPy (also right under an emulator, where
    /proc/cpuinfo describes the host), plus /proc/cpuinfo's names NumPy does not know (avx_vnni,
    amx_int8); None if neither can be read."""
    flags: set[str] | None = None
    try:
        from numpy._core._multiarray_umath import __cpu_features__

        flags = {name for feature, name in NUMPY_FEATURES.items() if __cpu_features__.get(feature)}
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                listed = set(line.partition(":")[2].split())
                return (flags | (listed - set(NUMPY_FEATURES.values()))) if flags is not None else listed
    except OSError:
        pass
    return flags


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_description() -> dict:
    """This CPU as a benchmark or report names it: model, architecture, integer dot-product features."""
    flags = _cpu_flags()
    return {
        "cpu": _cpu_name(),
        "machine": platform.machine(),
        "dot_product_features": None if flags is None else [f for f in DOT_PRODUCT_FLAGS if f in flags],
    }


def cpu_summary() -> str:
    """One line: `AMD EPYC (x86_64; avx2 avx512bw avx512_vnni)`."""
    described = cpu_description()
    features = described["dot_product_features"]
    listed = "features unknown" if features is None else " ".join(features) or "no integer dot-product features"
    return f"{described['cpu']} ({described['machine']}; {listed})"


_adopted: dict[str, bool] = {}  # a parent process's probe answer, taken by a benchmark process on its CPU


@cache
def u8s8_saturates() -> bool | None:
    """Whether ONNX Runtime's U8S8 integer GEMM on this CPU clips sums of products: a MatMulInteger
    of 255 x 127 over PROBE_DEPTH products, which saturates where pairs of products are added in
    16 bits (x86 without VNNI: 255 x 127 x 2 > 32767). None if the probe cannot run. A benchmark
    process that qtool started takes its parent's answer (`adopt_saturation`) instead."""
    if "saturates" in _adopted:
        return _adopted["saturates"]
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        weight = numpy_helper.from_array(np.full((PROBE_DEPTH, 8), 127, dtype=np.int8), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
            "u8s8_probe",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, PROBE_DEPTH])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [None, 8])],
            [weight],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        result = session.run(None, {"a": np.full((4, PROBE_DEPTH), 255, dtype=np.uint8)})[0]
    except Exception as exc:  # any failure only means the probe says nothing
        log.debug("U8S8 saturation probe failed: %s", exc)
        return None
    return bool((result != 255 * 127 * PROBE_DEPTH).any())


def adopt_saturation(saturates: bool | None) -> None:
    """Take the probe answer of the process that started this one on the same CPU (an isolated
    benchmark), which then need not import onnx to build the probe again. None: probe here."""
    if saturates is not None:
        _adopted["saturates"] = saturates
        u8s8_saturates.cache_clear()
        int8_kernels_for_this_cpu.cache_clear()


@cache
def int8_kernels_for_this_cpu() -> tuple[str, str]:
    """Which integer GEMMs ONNX Runtime computes exactly on this CPU, and why.

    On x86 without VNNI, ONNX Runtime's U8S8 kernels add pairs of uint8 x int8 products in 16 bits
    (VPMADDUBSW), which saturates (255 x 127 x 2 > 32767), so a result can differ from the QDQ
    graph's; its U8U8 kernels widen to 16 bits first and never saturate. With VNNI (VPDPBUSD adds
    in 32 bits) and on other architectures U8S8 is exact and the faster of the two. The answer is
    measured (`u8s8_saturates`); the CPU's flags decide only when the probe cannot run."""
    cpu = cpu_summary()
    saturates = u8s8_saturates()
    if saturates is False:
        return "u8s8", f"ONNX Runtime's U8S8 kernels add without saturating on this CPU, {cpu}"
    if saturates:
        return "u8u8", f"ONNX Runtime's U8S8 kernels saturate pairs of products in 16 bits on this CPU, {cpu}"
    machine = platform.machine().lower()
    if machine not in X86_MACHINES:
        return "u8s8", f"a {machine} CPU, where U8S8 kernels do not saturate ({cpu})"
    flags = _cpu_flags()
    if flags is None:
        return "u8u8", f"an x86 CPU whose features could not be read, so U8S8's saturation cannot be ruled out ({cpu})"
    if flags & VNNI_FLAGS:
        return "u8s8", f"an x86 CPU with VNNI, where U8S8 kernels add in 32 bits ({cpu})"
    return "u8u8", f"an x86 CPU without VNNI, where U8S8 kernels add pairs of products in 16 bits ({cpu})"


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
    library = "onnxruntime"

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
        if not in_memory and not Path(self.model_path).is_file():
            check_onnx_file(self.model_path)  # a missing file or a folder: the one-line error
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
        failure = None
        try:
            model = self.model_path if in_memory else str(self.model_path)
            self.session = ort.InferenceSession(model, options, providers=self.providers)
        except Exception as exc:
            failure = str(exc).splitlines()[0]
        if failure is not None:
            if not in_memory:  # an empty or unreadable file has its own one-line error: onnx parses it only then
                check_onnx_file(self.model_path)
            where = "the graph in memory" if in_memory else self.model_path
            raise QtoolError(f"ONNX Runtime cannot load {where}: {failure}")
        self._warn_on_saturating_kernels()
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _warn_on_saturating_kernels(self) -> None:
        metadata = self.session.get_modelmeta().custom_metadata_map
        recorded = metadata.get(METADATA_PREFIX + INT8_KERNELS_METADATA)
        seven_bit = metadata.get(METADATA_PREFIX + GEMM_WEIGHT_BITS_METADATA) == "7"
        wanted, why = int8_kernels_for_this_cpu()
        if recorded == "u8s8" and not seven_bit and wanted == "u8u8" and "CPUExecutionProvider" in self.providers[:1]:
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
