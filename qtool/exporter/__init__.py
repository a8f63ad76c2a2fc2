"""PyTorch to ONNX export (FP32), with parity checks against PyTorch."""

from qtool.exporter.onnx_export import ExportConfig, export_onnx
from qtool.graph import read_qtool_metadata

__all__ = ["ExportConfig", "export_onnx", "read_qtool_metadata"]
