"""The least a split GEMM costs on ONNX Runtime's CPU integer kernels: one MatMulIntegerToFloat against
K of them (one per channel group, each with its own activation scale) and their Sum.

    python benchmarks/peg_split_floor.py --hidden 384 --intermediate 1536 --batch 1 --batch 8
    python benchmarks/peg_split_floor.py --hidden 768 --intermediate 3072 --batch 1 --batch 8

Exact PEG needs one int32 accumulator per group: each group's integer products are scaled by its
own activation scale, and MatMulIntegerToFloat takes one scale for its whole input (a per-column
`a_scale` is refused). So a PEG projection is at least K integer GEMMs that together do the MACs of
one, each writing a full float output, plus the Sum of the K outputs. This script measures that
floor and nothing else: the groups arrive already split and quantized as graph inputs (no Gather,
no QuantizeLinear), so a real PEG graph can only be slower. Shapes are a BERT layer's projections
(QKV and attention output: hidden x hidden; FFN: hidden x intermediate and back) for `--tokens`
tokens per sequence, and one layer's: PEG groups only the hidden-wide tensors, so a layer has four
split hidden x hidden projections, a split FFN input and an FFN output of one GEMM; group sizes are
fractions of the input width (`--split`, repeatable, or `--calibration <recipe>.calib.json`,
repeatable: the mean sorted group fractions over its PEG tensors; default: what `--calibration`
gives for the default classifier's peg-k2-all and peg-k4-all, K = 2: 0.904/0.096 and K = 4:
0.574/0.282/0.117/0.026, the mean over its 62 PEG points).
Every candidate of a shape runs interleaved, `--iterations` times after 10 warm-up runs. A session
now and then runs one shape several times slower for its whole life (seen here on a single GEMM,
1536 or 3072 wide), so each candidate is built `--sessions` times (new weights) and its fastest p50
counts.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _session(width: int, outputs: int, rows: int, sizes: list[int], threads: int, rng: np.random.Generator):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    initializers = [
        numpy_helper.from_array(np.array(1.0, np.float32), "unit_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "zero_point"),
    ]
    nodes, inputs, partials, feeds = [], [], [], {}
    for k, size in enumerate(sizes):
        initializers += [
            numpy_helper.from_array(rng.integers(-127, 128, (size, outputs)).astype(np.int8), f"w{k}"),
            numpy_helper.from_array((rng.random(outputs) * 0.01).astype(np.float32), f"w{k}_scale"),
            numpy_helper.from_array(np.zeros(outputs, np.int8), f"w{k}_zero_point"),
        ]
        inputs.append(helper.make_tensor_value_info(f"x{k}", TensorProto.UINT8, [rows, size]))
        feeds[f"x{k}"] = rng.integers(0, 256, (rows, size)).astype(np.uint8)
        nodes.append(
            helper.make_node(
                "MatMulIntegerToFloat",
                [f"x{k}", f"w{k}", "unit_scale", f"w{k}_scale", "zero_point", f"w{k}_zero_point"],
                [f"partial{k}"],
                domain="com.microsoft",
            )
        )
        partials.append(f"partial{k}")
    nodes.append(helper.make_node("Sum" if len(sizes) > 1 else "Identity", partials, ["y"]))
    graph = helper.make_graph(
        nodes, "split_gemm", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, feeds


def _mean_group_fractions(path: str) -> list[float]:
    """The mean, over a calibration's PEG tensors with the most groups, of each group's share of the channels, largest first."""
    with open(path) as file:
        tensors = json.load(file)["tensors"].values()
    sizes = [sorted((len(g["channels"]) for g in t["groups"]), reverse=True) for t in tensors if t.get("groups")]
    most = max(len(s) for s in sizes)
    shares = np.array([np.array(s) / sum(s) for s in sizes if len(s) == most])
    return [float(f) for f in shares.mean(axis=0)]


def _group_sizes(width: int, fractions: list[float]) -> list[int]:
    sizes = [max(1, round(width * f)) for f in fractions[1:]]
    return [width - sum(sizes), *sizes]


def _print_row(name: str, batch: int, shape: str, p50: dict[str, float], splits: dict) -> None:
    cells = " | ".join(f"{p50[key]:.3f} ({p50[key] / p50['one']:.2f}x)" for key in splits)
    print(f"| {name} | {batch} | {shape} | {p50['one']:.3f} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--split", action="append", help="group fractions of one candidate, largest first")
    parser.add_argument(
        "--calibration", action="append", help="a PEG calibration file whose mean group fractions to use"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    splits = {}
    for path in args.calibration or []:
        fractions = _mean_group_fractions(path)
        print(f"{path}: K = {len(fractions)}, mean group fractions {'/'.join(f'{f:.3f}' for f in fractions)}")
        splits[f"K={len(fractions)}"] = fractions
    for text in args.split or ([] if splits else ["0.904,0.096", "0.574,0.282,0.117,0.026"]):
        fractions = [float(f) for f in text.split(",")]
        splits[f"K={len(fractions)}"] = fractions
    shapes = {
        "qkv/attention output": (args.hidden, args.hidden),
        "ffn in": (args.hidden, args.intermediate),
        "ffn out": (args.intermediate, args.hidden),
    }
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    from qtool.runners.ort import cpu_summary

    print(f"CPU {cpu_summary()}, threads {args.threads}, {args.iterations} interleaved runs per shape; p50 ms; ratio to one GEMM")
    print("| projection | batch | width x outputs | one GEMM | " + " | ".join(f"{k} (ratio)" for k in splits) + " |")
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in splits) + " |")
    for batch in args.batch or [1, 8]:
        for name, (width, outputs) in shapes.items():
            tokens = batch * args.tokens
            candidates = {"one": [width], **{key: _group_sizes(width, f) for key, f in splits.items()}}
            sessions = {
                (key, copy): _session(width, outputs, tokens, sizes, args.threads, rng)
                for key, sizes in candidates.items()
                for copy in range(args.sessions)
            }
            times: dict[tuple, list[float]] = {key: [] for key in sessions}
            for iteration in range(args.iterations + 10):
                for key, (session, feeds) in sessions.items():
                    start = time.perf_counter()
                    session.run(None, feeds)
                    if iteration >= 10:
                        times[key].append(time.perf_counter() - start)
            p50 = {
                key: min(float(np.median(times[(key, copy)])) * 1e3 for copy in range(args.sessions))
                for key in candidates
            }
            row = {
                "projection": name,
                "batch": batch,
                "width": width,
                "outputs": outputs,
                "groups": candidates,
                "p50_ms": p50,
            }
            rows.append(row)
            _print_row(name, batch, f"{width} x {outputs}", p50, splits)
        shown = {row["projection"]: row["p50_ms"] for row in rows if row["batch"] == batch}
        ffn_out = shown["ffn out"]["one"]
        layer = {
            key: 4 * shown["qkv/attention output"][key] + shown["ffn in"][key] + ffn_out for key in ["one", *splits]
        }
        rows.append({"projection": "one layer", "batch": batch, "p50_ms": layer})
        _print_row("one layer (4 x qkv/attention output + ffn in + ffn out unsplit)", batch, "", layer, splits)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"threads": args.threads, "iterations": args.iterations, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
