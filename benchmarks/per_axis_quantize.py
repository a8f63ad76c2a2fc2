"""Per-channel activation quantization in ONNX Runtime's CPU kernels: QuantizeLinear/DequantizeLinear
with a per-axis scale on the last axis against Div + per-tensor Q/DQ at scale 1 + Mul (PEG's
`scaled` layout), which gives the same values.

    python benchmarks/per_axis_quantize.py --width 384 --tokens 128 --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def _model(kind: str, scales: np.ndarray, shape: tuple[int, ...]) -> bytes:
    width = scales.size
    initializers = [
        numpy_helper.from_array(scales, "scales"),
        numpy_helper.from_array(np.zeros(width, np.int8), "zeros"),
        numpy_helper.from_array(np.array(1, np.float32), "one"),
        numpy_helper.from_array(np.array(0, np.int8), "zero"),
    ]
    if kind == "per-axis":
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "scales", "zeros"], ["q"], axis=-1),
            helper.make_node("DequantizeLinear", ["q", "scales", "zeros"], ["y"], axis=-1),
        ]
    else:
        nodes = [
            helper.make_node("Div", ["x", "scales"], ["divided"]),
            helper.make_node("QuantizeLinear", ["divided", "one", "zero"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "one", "zero"], ["unit"]),
            helper.make_node("Mul", ["unit", "scales"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [i for i in initializers if any(i.name in n.input for n in nodes)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import onnxruntime as ort

    rng = np.random.default_rng(0)
    shape = (args.batch, args.tokens, args.width)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    scales = (rng.random(args.width) * 0.05 + 0.01).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.log_severity_level = 3
    sessions = {
        kind: ort.InferenceSession(_model(kind, scales, shape), options, providers=["CPUExecutionProvider"])
        for kind in ("per-axis", "div-q-dq-mul")
    }
    outputs, times = {}, {kind: [] for kind in sessions}
    for _ in range(20):
        for session in sessions.values():
            session.run(None, {"x": x})
    for _ in range(args.runs):  # interleaved
        for kind, session in sessions.items():
            start = time.perf_counter()
            outputs[kind] = session.run(None, {"x": x})[0]
            times[kind].append(time.perf_counter() - start)
    from qtool.runners.ort import cpu_summary

    print(f"CPU {cpu_summary()}, onnxruntime {ort.__version__}, tensor {'x'.join(map(str, shape))}, {args.threads} threads")
    for kind, samples in times.items():
        print(f"{kind}: p50 {np.median(samples) * 1000:.3f} ms per Q/DQ")
    print("identical values:", bool(np.array_equal(outputs["per-axis"], outputs["div-q-dq-mul"])))


if __name__ == "__main__":
    main()
