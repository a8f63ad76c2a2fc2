"""Where OpenVINO departs from qtool's QDQ graphs: for max calibration at `--scope gemm-inputs` with
some kinds of points kept in float, how many eval predictions the graph on OpenVINO's CPU plugin
changes against the same graph scored by ONNX Runtime (as the recipe is), with the plugin's dynamic
quantization of float GEMM inputs off (qtool's setting) and on (OpenVINO's default, group size 32).

    python benchmarks/openvino_departure.py artifacts/<model>/fp32.onnx --data ../shared/data/QNLI \\
        --out /tmp/departure --json benchmarks/results/openvino-departure-<date>.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

VARIANTS = {  # name: the points kept in float (`--keep-fp` globs)
    "every-gemm-input": [],
    "attention-probs-in-float": ["layer.*.attention.probs"],
    "attention-matmuls-in-float": [f"layer.*.attention.{p}" for p in ("query", "key", "value", "probs")],
    "attention-context-in-float": ["layer.*.attention.context"],
    "ffn-activation-in-float": ["layer.*.ffn.activation"],
    "layernorm-outputs-in-float": ["layer.*.attention.layernorm", "layer.*.ffn.layernorm", "embeddings.output"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graph", type=Path, help="the FP32 graph of `make reproduce` (its statistics beside it)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the variants' graphs")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import qtool
    import qtool.runners.openvino as openvino_runner
    from qtool.data import DataConfig, load_qnli
    from qtool.defaults import MAX_LENGTH
    from qtool.deployment.evaluate import EvalConfig, changed_predictions, evaluate_artifact, evaluate_graph
    from qtool.runners.ort import cpu_summary

    split = load_qnli(DataConfig(source=args.data))
    config = EvalConfig(threads=args.threads)
    qtools = openvino_runner.compile_properties
    rows = []
    for name in args.variant or list(VARIANTS):
        started = time.perf_counter()
        made = qtool.calibrate(args.graph, "max", scope="gemm-inputs", keep_fp=VARIANTS[name] or None,
                               out=args.out / name, evaluate=False, data=args.data,
                               stats=args.graph.with_name(f"{args.graph.stem}.stats.npz"))
        model = qtool.build(made.qdq_graph, "openvino").artifact
        recipe = evaluate_graph(made.qdq_graph, split, config, predictions=True)
        row = {"variant": name, "keep_fp": VARIANTS[name], "recipe_accuracy": recipe["accuracy"]}
        try:
            for label, group_size in (("dynamic_quantization_off", 0), ("dynamic_quantization_32", 32)):
                openvino_runner.compile_properties = lambda threads=None, g=group_size: qtools(threads) | {
                    "DYNAMIC_QUANTIZATION_GROUP_SIZE": g
                }
                on_openvino = evaluate_artifact(model, split, config, MAX_LENGTH)
                row[label] = {"accuracy": on_openvino["accuracy"], "changed": changed_predictions(recipe, on_openvino)}
        finally:
            openvino_runner.compile_properties = qtools
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(f"{name}: changed {row['dynamic_quantization_off']['changed']} (dynamic quantization off), "
              f"{row['dynamic_quantization_32']['changed']} (on) of {len(recipe['predictions'])}", flush=True)
    if args.json:
        import openvino

        document = {"cpu": cpu_summary(), "openvino": openvino.__version__, "graph": str(args.graph),
                    "eval_pairs": len(split.part("eval")), "threads": args.threads, "rows": rows}
        args.json.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
