"""Where a recipe's deployed ONNX Runtime graph first departs from its QDQ graph: the codes of every
QuantizeLinear, in graph order, on the first eval pairs, the QDQ graph with ONNX Runtime's
optimizations off (as the recipe is scored) against the ONNX Runtime CPU graph with all of them (as it is deployed).
Prints each point whose codes differ: how many, and by how many steps at most. Usage:

    python benchmarks/first_divergence.py artifacts/<model>/percentile-99.99-all.qdq.onnx \\
        --data ../shared/data/QNLI --limit 256 --points 9
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _codes(model, level: str, batches) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every QuantizeLinear output as uint8-offset codes (int8 + 128), flattened over the batches."""
    import onnx

    from qtool.runners.ort import OrtRunner

    initializers = {i.name: i for i in model.graph.initializer}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    signed = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            element = initializers[node.input[2]].data_type
            signed[node.output[0]] = element == onnx.TensorProto.INT8
            probe.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], element, None))
    collected: dict[str, list[np.ndarray]] = {name: [] for name in signed}
    with OrtRunner(probe.SerializeToString(), optimization_level=level) as runner:
        for batch in batches:
            outputs = runner.infer(batch.feeds)
            for name in signed:
                collected[name].append(outputs[name].ravel())
    codes = {name: np.concatenate(v).astype(np.int32) + (128 if signed[name] else 0) for name, v in collected.items()}
    return codes, list(signed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graph", type=Path, help="a recipe's <recipe>.qdq.onnx")
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int, default=256, help="the first N pairs of the eval part")
    parser.add_argument("--points", type=int, default=9, help="how many differing points to print")
    args = parser.parse_args()

    import onnx

    from qtool.data import DataConfig, load_qnli, make_batches, tokenize_part
    from qtool.exporter.ort_cpu import rewrite_for_ort_cpu
    from qtool.models.families import tokenizer_for
    from qtool.runners.ort import cpu_summary, int8_kernels_for_this_cpu

    split = load_qnli(DataConfig(source=args.data))
    batches = make_batches(tokenize_part(tokenizer_for(args.graph), split.part("eval")[: args.limit], 128), 32)
    qdq = onnx.load(str(args.graph))
    kernels = int8_kernels_for_this_cpu()[0]
    expected, order = _codes(qdq, "disable", batches)
    actual, _ = _codes(rewrite_for_ort_cpu(qdq, kernels=kernels), "all", batches)
    print(f"CPU {cpu_summary()}; {kernels} build; {args.graph.name}; first {args.limit} eval pairs")
    shown = 0
    for name in order:
        steps = np.abs(actual[name] - expected[name]) if name in actual else None
        if steps is not None and steps.max() > 0 and shown < args.points:
            print(f"{name}: {int((steps > 0).sum())} of {steps.size} codes differ, at most {int(steps.max())} step(s)")
            shown += 1


if __name__ == "__main__":
    main()
