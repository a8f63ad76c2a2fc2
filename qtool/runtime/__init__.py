"""Runners behind one protocol (ONNX Runtime now, TensorRT later), evaluation and benchmarks."""

from qtool.runtime.base import Runner
from qtool.runtime.ort import OrtRunner, check_onnx_file

__all__ = ["OrtRunner", "Runner", "check_onnx_file"]
