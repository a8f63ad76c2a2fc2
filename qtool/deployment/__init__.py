"""Deployment: accuracy of a graph or engine, latency and memory benchmarks, TensorRT engine builds."""
