"""What the TensorRT graph qtool writes does to accuracy, as far as a CPU can show it.

`qtool build --backend trt` parses a TensorRT graph written from the graph (`qtool/exporter/trt_graph.py`: float
embedding tables, no Q/DQ on the head GEMVs, the attention scale moved before the score MatMul,
float parts in FP16). This script writes that graph for each graph given and scores it in ONNX
Runtime on the CPU (optimizations off, FP16 where the graph says FP16) beside the graph itself
(a QDQ graph with optimizations off: its recipe accuracy; FP32 as deployed) on the same part.
TensorRT's own kernels round differently, so this bounds nothing: it shows how sensitive each
recipe is to the TensorRT graph's small perturbations before a GPU is at hand.

    python benchmarks/trt_graph_cpu.py artifacts/<model> --data ../shared/data/QNLI \\
        -g fp32.onnx -g max-gemm-inputs.qdq.onnx -g max-all-mp-paper.qdq.onnx --json out.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a model folder of `qtool reproduce` (artifacts/<model>)")
    parser.add_argument("--data", required=True)
    parser.add_argument("-g", "--graph", action="append", required=True, help="graph file names in the folder")
    parser.add_argument("--part", default="eval")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import numpy as np

    from qtool.data import DataConfig, load_qnli, make_batches, tokenize_part
    from qtool.deployment.evaluate import logit_to_label, predict_logits, scoring_level
    from qtool.exporter.trt_graph import write_trt_graph
    from qtool.models.families import tokenizer_for
    from qtool.runners.ort import OrtRunner

    split = load_qnli(DataConfig(source=args.data))
    fp32 = args.folder / "fp32.onnx"
    part = tokenize_part(tokenizer_for(fp32), split.part(args.part), 128)
    batches = make_batches(part, 32)
    mapping = logit_to_label(fp32, split.labels)

    def logits(graph: Path, level: str) -> np.ndarray:
        with OrtRunner(graph, threads=args.threads, optimization_level=level) as runner:
            return predict_logits(runner, batches, len(part))

    rows = {}
    with tempfile.TemporaryDirectory(prefix="qtool-trt-graph-") as scratch:
        for name in args.graph:
            source = args.folder / name
            trt_graph = Path(scratch) / f"{source.stem}.trt.onnx"
            passes = write_trt_graph(source, trt_graph)
            before, after = logits(source, scoring_level(source)), logits(trt_graph, "disable")
            rows[name] = {
                "examples": len(part),
                "graph_correct": int((mapping[before.argmax(-1)] == part.labels).sum()),
                "trt_graph_correct": int((mapping[after.argmax(-1)] == part.labels).sum()),
                "predictions_changed": int((before.argmax(-1) != after.argmax(-1)).sum()),
                "max_abs_logit_diff": round(float(np.abs(before - after).max()), 4),
                "passes": {k: len(v) if isinstance(v, list) else v for k, v in passes.items()},
            }
            print(json.dumps({name: rows[name]}), flush=True)
    result = {"folder": str(args.folder), "data": split.describe(), "part": args.part, "graphs": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    from qtool.runners.ort import cpu_summary

    print(f"CPU {cpu_summary()} (ONNX Runtime's CPU kernels: its fused integer kernels and FP16 fallbacks are this CPU's)")
    print("| graph | examples | graph correct | TensorRT graph correct | predictions changed | max abs logit diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(
            f"| {name} | {row['examples']} | {row['graph_correct']} | {row['trt_graph_correct']} | "
            f"{row['predictions_changed']} | {row['max_abs_logit_diff']:.3f} |"
        )


if __name__ == "__main__":
    main()
