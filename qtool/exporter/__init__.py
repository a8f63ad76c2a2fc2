"""Graph passes over ONNX graphs: quantization points from the graph's structure, the INT8 grid, the
QDQ writer, smoothing, and the ONNX Runtime CPU and TensorRT graphs. (The PyTorch export is
`qtool.models.onnx_export`.)"""
