"""Where the CPU time goes in one deployed graph: kernel time per op type, from ONNX Runtime's
profiler, or per layer type and kernel from OpenVINO's performance counters for an OpenVINO model
(`qtool build --backend openvino`, `.ov.xml`).

    python benchmarks/ort_profile.py artifacts/<model>/peg-k4-all.qdq.ort.onnx --batch 1 --threads 2
    python benchmarks/ort_profile.py artifacts/<model>/max-gemm-inputs.qdq.ov.xml --batch 1 --threads 2

Random token ids over the vocabulary (`qtool bench --inputs random`), full attention mask, sequence
128; the profiler's own overhead inflates every op a little, so compare shares and counts between
graphs, not milliseconds with `qtool bench`.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np

WARMUP = 5  # untimed runs first, on either runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graph", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    if args.graph.suffix == ".xml":
        total_us, count = _openvino_times(args.graph, args)
    else:
        total_us, count = _onnxruntime_times(args.graph, args)
    overall = sum(total_us.values())
    from qtool.runners.ort import cpu_summary

    print(f"{args.graph.name}: batch {args.batch} x {args.seq_len}, {args.threads} threads, {args.runs} runs, CPU {cpu_summary()}")
    print("| op | ms per run | share | nodes per run |\n| --- | --- | --- | --- |")
    for op, micros in total_us.most_common(args.top):
        print(f"| {op} | {micros / args.runs / 1000:.2f} | {micros / overall:.1%} | {count[op] / args.runs:.0f} |")
    print(f"| all kernels | {overall / args.runs / 1000:.2f} | 100% | |")


def _feeds(model: Path, names: list[str], batch: int, seq_len: int) -> dict[str, np.ndarray]:
    """`qtool bench --inputs random` inputs for the graph's own input names."""
    from qtool.deployment.bench import benchmark_inputs
    from qtool.deployment.model_files import tokenizer_for_model

    feeds = benchmark_inputs(tokenizer_for_model(model), [], batch, seq_len, "random")
    return {name: feeds[name] for name in names}


def _openvino_times(model: Path, args) -> tuple[collections.Counter, collections.Counter]:
    import openvino as ov

    from qtool.runners.openvino import compile_properties

    compiled = ov.Core().compile_model(str(model), "CPU", compile_properties(args.threads) | {"PERF_COUNT": True})
    request = compiled.create_infer_request()
    feeds = _feeds(model, [port.get_any_name() for port in compiled.inputs], args.batch, args.seq_len)
    for _ in range(WARMUP):
        request.infer(feeds)
    total_us: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for _ in range(args.runs):
        request.infer(feeds)
        for layer in request.get_profiling_info():
            if layer.status == layer.Status.EXECUTED:
                total_us[f"{layer.node_type} ({layer.exec_type})"] += layer.real_time.total_seconds() * 1e6
                count[f"{layer.node_type} ({layer.exec_type})"] += 1
    return total_us, count


def _onnxruntime_times(graph: Path, args) -> tuple[collections.Counter, collections.Counter]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="qtool-profile-") as scratch:
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.enable_profiling = True
        options.log_severity_level = 3
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        feeds = _feeds(graph, [graph_input.name for graph_input in session.get_inputs()], args.batch, args.seq_len)
        for _ in range(WARMUP + args.runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())

    total_us: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    runs = sorted(event["ts"] for event in events if event.get("cat") == "Session" and event["name"] == "model_run")
    timed_from = runs[WARMUP] if len(runs) > WARMUP else 0  # the profiler records the warm-up runs too
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= timed_from:
            total_us[event["args"]["op_name"]] += event["dur"]
            count[event["args"]["op_name"]] += 1
    return total_us, count


if __name__ == "__main__":
    main()
