"""Calibration files, the mixed-precision search, scale formats for other tools, ONNX Runtime's quantizers."""
