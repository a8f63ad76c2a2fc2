"""How far a recipe's float32 score and its deployed ONNX Runtime graph each are from the QDQ graph
computed in float64, on the eval part: predictions that differ, pair by pair.

The study scores a recipe as ONNX Runtime computes its QDQ graph in float32 with optimizations off,
and counts the deployed graph's `deployed_changed` against that. Float32 accumulation has its own
rounding, so on a recipe whose clipped residual stream amplifies single steps, that reference is
itself some predictions away from the QDQ graph's exact values. Here every float tensor of the graph
becomes float64 (a Cast to float32 before each QuantizeLinear, a Cast to float64 after each
DequantizeLinear; Erf, float32-only in ONNX Runtime, runs between Casts), which leaves only the
quantization's own rounding. Usage:

    python benchmarks/exact_reference.py artifacts/<model>/ --data ../shared/data/QNLI \\
        --recipe percentile-99.99-all --recipe percentile-99.99-all-smooth0.5 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

FLOAT32_ONLY = ("Erf",)


def float64_graph(path: Path) -> bytes:
    """The QDQ graph at `path` with every float tensor but the quantization scales in float64."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    scales = {name for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for name in n.input[1:]}

    def widened(tensor):
        return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)

    for initializer in graph.initializer:
        if initializer.data_type == TensorProto.FLOAT and initializer.name not in scales:
            initializer.CopyFrom(widened(initializer))
    nodes = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT and node.output[0] not in scales:
                attr.t.CopyFrom(widened(attr.t))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
        narrowed_input = node.op_type == "QuantizeLinear" or node.op_type in FLOAT32_ONLY
        widened_output = node.op_type == "DequantizeLinear" or node.op_type in FLOAT32_ONLY
        if narrowed_input:
            narrow = f"{node.input[0]}/float32_for_{node.name or node.output[0]}"
            nodes.append(helper.make_node("Cast", [node.input[0]], [narrow], to=TensorProto.FLOAT))
            node.input[0] = narrow
        if widened_output:
            wide = node.output[0]
            node.output[0] = f"{wide}/float32"
            nodes += [node, helper.make_node("Cast", [node.output[0]], [wide], to=TensorProto.DOUBLE)]
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    for output in graph.output:
        if output.type.tensor_type.elem_type == TensorProto.FLOAT:
            output.type.tensor_type.elem_type = TensorProto.DOUBLE
    return model.SerializeToString()


def predictions(model, level: str, batches, size: int, mapping: np.ndarray) -> np.ndarray:
    from qtool.deployment.evaluate import predict_logits
    from qtool.runners.ort import OrtRunner

    with OrtRunner(model, optimization_level=level) as runner:
        return mapping[predict_logits(runner, batches, size).argmax(-1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the model folder of `make reproduce` (holds the QDQ graphs)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--recipe", action="append", required=True, help="a recipe whose <recipe>.qdq.onnx is there")
    parser.add_argument("--limit", type=int, help="the first N pairs of the eval part")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from qtool.data import DataConfig, load_qnli, make_batches, tokenize_part
    from qtool.deployment.backends import OrtBuildOptions, build_ort
    from qtool.deployment.evaluate import RECIPE_LEVEL, logit_to_label
    from qtool.models.families import tokenizer_for
    from qtool.runners.ort import cpu_summary

    split = load_qnli(DataConfig(source=args.data))
    scratch = tempfile.TemporaryDirectory()  # the deployed graphs, as `qtool build` makes them here
    rows = []
    print(f"CPU {cpu_summary()}", flush=True)
    for recipe in args.recipe:
        qdq = args.folder / f"{recipe}.qdq.onnx"
        deployed_graph = build_ort(qdq, Path(scratch.name) / f"{recipe}.ort.onnx", OrtBuildOptions())["graph"]
        examples = split.part("eval")[: args.limit] if args.limit else split.part("eval")
        part = tokenize_part(tokenizer_for(qdq), examples)
        batches, mapping = make_batches(part, 32), logit_to_label(qdq, split.labels)
        scored = {
            "float64": predictions(float64_graph(qdq), RECIPE_LEVEL, batches, len(part), mapping),
            "float32": predictions(qdq, RECIPE_LEVEL, batches, len(part), mapping),
            "deployed": predictions(deployed_graph, "all", batches, len(part), mapping),
        }
        row = {
            "recipe": recipe,
            "examples": len(part),
            "accuracy": {name: float((p == part.labels).mean()) for name, p in scored.items()},
            "float32_vs_float64": int((scored["float32"] != scored["float64"]).sum()),
            "deployed_vs_float64": int((scored["deployed"] != scored["float64"]).sum()),
            "deployed_vs_float32": int((scored["deployed"] != scored["float32"]).sum()),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_summary(), "limit": args.limit, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
