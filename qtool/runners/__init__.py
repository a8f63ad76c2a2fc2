"""Runners behind one protocol: ONNX Runtime, TensorRT and PyTorch. The bottom layer above the
foundations: runners import nothing else of qtool."""

from qtool.runners.base import Runner
from qtool.runners.ort import OrtRunner, check_onnx_file

__all__ = ["OrtRunner", "Runner", "check_onnx_file"]
