"""PyTorch to ONNX export with parity checks, quantization points from the graph's structure, the INT8
grid, and the graph passes: the QDQ writer, smoothing and the ONNX Runtime CPU form."""

from qtool.exporter.onnx_export import ExportConfig, export_onnx
from qtool.graph import read_qtool_metadata

__all__ = ["ExportConfig", "export_onnx", "read_qtool_metadata"]
