"""ONNX Runtime backend."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from qtool.errors import QtoolError
from qtool.graph import load_model
from qtool.runners.base import Runner

log = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


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
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _deactivate(self) -> None:
        self.session = None

    def input_names(self) -> list[str]:
        return self._inputs

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self._outputs, dict(feeds))
        return dict(zip(self._outputs, values, strict=True))
