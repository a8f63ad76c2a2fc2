"""What ONNX Runtime's U8S8 kernels would do to a graph's ONNX Runtime graph on an x86 CPU without VNNI.

There (AVX2, or AVX-512 without VNNI) ONNX Runtime's U8S8 GEMMs multiply uint8 activations by int8
weights with VPMADDUBSW, which adds each pair of neighbouring products along the reduction axis
(k = 2j, 2j + 1) in 16 bits with saturation, so a pair above 32767 or below -32768 is clipped
(255 x 127 x 2 = 64770). This CPU has VNNI, whose kernels add in 32 bits, so the clipping is
emulated: each MatMulIntegerToFloat of the U8S8 build (`qtool build --backend ort --int8-kernels
u8s8`) is replaced by the same product written with ONNX operators, each pair clipped to int16,
then the activations' zero point taken off, scaled and biased as the kernel does. The emulated
graph and the real U8S8 build are scored on the same pairs; `--int8-kernels u8u8` (what `auto`
picks on such a CPU) computes the real build's values there.

Not emulated: GEMMs that ONNX Runtime fuses itself from a QDQ pattern (the ONNX Runtime CPU graph fuses every
projection with a bias; the attention products multiply two uint8 activations, U8U8 kernels).

    python benchmarks/u8s8_saturation.py artifacts/<model>/max-all.qdq.onnx --data ../shared/data/QNLI \\
        --limit 300 --json out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INT16 = (-32768.0, 32767.0)
COLUMNS_PER_CHUNK = 128


def _emulate(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """`model` with every MatMulIntegerToFloat written out with 16-bit pair saturation, and for each
    replaced node the name of an extra output: how many pairs it clipped. A reduction of odd length
    (none in BERT-family models) is left exact."""
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    constants: list[onnx.TensorProto] = []
    counters: dict[str, str] = {}

    def constant(name: str, value) -> str:
        constants.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    for node in model.graph.node:
        a, b, a_scale, b_scale, a_zero, b_zero, bias = [*node.input, *[""] * 7][:7]
        if node.op_type != "MatMulIntegerToFloat" or initializers[b].shape[0] % 2:
            nodes.append(node)
            continue
        weight = initializers[b].astype(np.float32)
        assert initializers[b].dtype == np.int8 and (not b_zero or not initializers[b_zero].any()), node.name
        tag = f"{node.name or node.output[0]}/emulated"
        zero = float(initializers[a_zero]) if a_zero else 0.0
        last, pair_axis, step = (
            constant(f"{tag}/axis_{k}", np.array([v], np.int64)) for k, v in (("last", -1), ("pairs", -2), ("step", 2))
        )
        first, second, end = (
            constant(f"{tag}/axis_{k}", np.array([v], np.int64))
            for k, v in (("first", 0), ("second", 1), ("end", 2**62))
        )
        scaled = f"{tag}/scaled" if bias else node.output[0]
        counters[node.name or node.output[0]] = f"{tag}/clipped_pairs"
        nodes += [
            helper.make_node("Cast", [a], [f"{tag}/a"], to=TensorProto.FLOAT),
            helper.make_node("Slice", [f"{tag}/a", first, end, last, step], [f"{tag}/a_even"]),
            helper.make_node("Slice", [f"{tag}/a", second, end, last, step], [f"{tag}/a_odd"]),
            helper.make_node("Unsqueeze", [f"{tag}/a_even", last], [f"{tag}/a_even3"]),
            helper.make_node("Unsqueeze", [f"{tag}/a_odd", last], [f"{tag}/a_odd3"]),
        ]
        low, high = (constant(f"{tag}/{k}", np.float32(v)) for k, v in zip(("low", "high"), INT16, strict=True))
        sums, counts = [], []
        for start in range(0, weight.shape[1], COLUMNS_PER_CHUNK):  # [rows, K/2, columns] stays small
            chunk = f"{tag}/columns{start}"
            columns = slice(start, start + COLUMNS_PER_CHUNK)
            nodes += [
                helper.make_node(
                    "Mul", [f"{tag}/a_even3", constant(f"{chunk}/w_even", weight[0::2, columns])], [f"{chunk}/p_even"]
                ),
                helper.make_node(
                    "Mul", [f"{tag}/a_odd3", constant(f"{chunk}/w_odd", weight[1::2, columns])], [f"{chunk}/p_odd"]
                ),
                helper.make_node("Add", [f"{chunk}/p_even", f"{chunk}/p_odd"], [f"{chunk}/pairs"]),
                helper.make_node("Clip", [f"{chunk}/pairs", low, high], [f"{chunk}/clipped"]),
                helper.make_node("ReduceSum", [f"{chunk}/clipped", pair_axis], [f"{chunk}/sum"], keepdims=0),
                helper.make_node("Sub", [f"{chunk}/pairs", f"{chunk}/clipped"], [f"{chunk}/excess"]),
                helper.make_node("Abs", [f"{chunk}/excess"], [f"{chunk}/excess_abs"]),
                helper.make_node("Sign", [f"{chunk}/excess_abs"], [f"{chunk}/was_clipped"]),
                helper.make_node("ReduceSum", [f"{chunk}/was_clipped"], [f"{chunk}/count"], keepdims=0),
            ]
            sums.append(f"{chunk}/sum")
            counts.append(f"{chunk}/count")
        scale = (initializers[a_scale] * initializers[b_scale]).astype(np.float32)
        nodes += [
            helper.make_node("Concat", sums, [f"{tag}/sum"], axis=-1),
            helper.make_node("Sum", counts, [f"{tag}/clipped_pairs"]),
            helper.make_node(
                "Sub", [f"{tag}/sum", constant(f"{tag}/zero_columns", zero * weight.sum(0))], [f"{tag}/centred"]
            ),
            helper.make_node("Mul", [f"{tag}/centred", constant(f"{tag}/scale", scale)], [scaled]),
            *([helper.make_node("Add", [scaled, bias], [node.output[0]])] if bias else []),
        ]
    emulated = onnx.ModelProto()
    emulated.CopyFrom(model)
    del emulated.graph.node[:]
    emulated.graph.node.extend(nodes)
    emulated.graph.initializer.extend(constants)
    for counter in counters.values():
        emulated.graph.output.append(helper.make_tensor_value_info(counter, TensorProto.FLOAT, []))
    return emulated, counters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graph", type=Path, help="a qtool QDQ graph (<recipe>.qdq.onnx)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--part", default="eval")
    parser.add_argument(
        "--limit", type=int, default=300, help="score the first N pairs of the part (emulation is slow)"
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from qtool.data import DataConfig, load_qnli, make_batches, tokenize_part
    from qtool.deployment.evaluate import logit_to_label
    from qtool.exporter.ort_cpu import rewrite_for_ort_cpu
    from qtool.models.families import tokenizer_for
    from qtool.runners.ort import OrtRunner, cpu_summary

    split = load_qnli(DataConfig(source=args.data))
    rows = split.part(args.part)[: args.limit]
    part = tokenize_part(tokenizer_for(args.graph), rows, 128)
    batches = make_batches(part, args.batch)
    mapping = logit_to_label(args.graph, split.labels)
    exact = rewrite_for_ort_cpu(onnx.load(str(args.graph)), kernels="u8s8")
    emulated, counters = _emulate(exact)

    def run(model: onnx.ModelProto, outputs: list[str]) -> tuple[np.ndarray, dict[str, float]]:
        logits = np.zeros((len(part), 2), np.float32)
        totals = dict.fromkeys(outputs, 0.0)
        with OrtRunner(model.SerializeToString(), threads=args.threads, optimization_level="basic") as runner:
            for batch in batches:
                values = runner.infer(batch.feeds)
                logits[batch.indices] = values["logits"]
                for name in outputs:
                    totals[name] += float(values[name])
        return logits, totals

    reference, _ = run(exact, [])
    clipped_logits, clipped = run(emulated, list(counters.values()))
    labels = part.labels
    tokens = sum(int(np.prod(b.feeds["input_ids"].shape)) for b in batches)  # rows of every GEMM, padding included
    weights = {i.name: i.dims for i in exact.graph.initializer}
    pair_count = tokens * sum(
        weights[n.input[1]][0] // 2 * weights[n.input[1]][1]
        for n in exact.graph.node
        if (n.name or n.output[0]) in counters
    )
    result = {
        "graph": str(args.graph),
        "data": split.describe(),
        "part": args.part,
        "examples": len(part),
        "u8s8_exact_correct": int((mapping[reference.argmax(-1)] == labels).sum()),
        "u8s8_clipped_correct": int((mapping[clipped_logits.argmax(-1)] == labels).sum()),
        "predictions_changed": int((reference.argmax(-1) != clipped_logits.argmax(-1)).sum()),
        "max_abs_logit_diff": round(float(np.abs(reference - clipped_logits).max()), 4),
        "gemms_emulated": len(counters),
        "gemms_with_clipped_pairs": sum(value > 0 for value in clipped.values()),
        "clipped_pairs": int(sum(clipped.values())),
        "clipped_pair_fraction": float(sum(clipped.values()) / max(pair_count, 1)),
        "clipped_pairs_by_gemm": {
            name: int(clipped[counter]) for name, counter in counters.items() if clipped[counter]
        },
        "token_rows": tokens,
        "cpu": cpu_summary(),  # the clipping is emulated in ONNX operators, whatever this CPU's kernels do
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
