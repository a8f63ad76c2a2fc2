"""Which ONNX Runtime integer kernels to deploy on this CPU: U8S8, U8U8 and U8S8 with 7-bit weights.

For each qtool recipe given (default: max-gemm-inputs and peg-k4-all-wfolded, with their 7-bit
twins `-w7` from `make reproduce`), its ONNX Runtime graph is built with 8-bit weights on U8S8 kernels
(exact only where U8S8 does not saturate: x86 with VNNI, other architectures) and on U8U8 kernels
(exact everywhere), and with 7-bit weights on U8S8 kernels (exact everywhere). Each build is scored on
the eval part against its QDQ graph (predictions that differ), and every build, FP32 and the study's
ONNX Runtime peers are timed interleaved (all sessions loaded, round-robin on the same QNLI inputs,
`--repeats` runs) at each batch size. The CPU, its integer dot-product features and what
`--int8-kernels auto` picks are named in the output. Usage, after `make reproduce`:

    python benchmarks/int8_kernels.py artifacts/<model>/ --data ../shared/data/QNLI --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from dataclasses import replace
from pathlib import Path

RECIPES = ("max-gemm-inputs", "peg-k4-all-wfolded")
PEERS = ("ort-dynamic", "ort-optimizer-dynamic")


def _builds(folder: Path, recipes: list[str]) -> dict[str, tuple[Path, Path]]:
    """name -> (deployed graph, its QDQ graph)."""
    from qtool.deployment.backends import OrtBuildOptions, build_ort

    builds = {}
    for recipe in recipes:
        eight, seven = folder / f"{recipe}.qdq.onnx", folder / f"{recipe}-w7.qdq.onnx"
        for kernels in ("u8s8", "u8u8"):
            built = build_ort(eight, folder / f"{recipe}.{kernels}.ort.onnx", OrtBuildOptions(kernels))
            builds[f"{recipe} {kernels}"] = (Path(built["graph"]), eight)
        if seven.is_file():
            built = build_ort(seven, folder / f"{recipe}-w7.u8s8.ort.onnx", OrtBuildOptions("u8s8"))
            builds[f"{recipe}-w7 u8s8"] = (Path(built["graph"]), seven)
    return builds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the model folder of `make reproduce` (holds fp32.onnx)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--recipe", action="append", help=f"a recipe with its QDQ graph there (default {RECIPES})")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    from qtool.data import DataConfig, load_qnli
    from qtool.deployment.bench import BenchConfig
    from qtool.deployment.evaluate import EvalConfig, changed_predictions, evaluate_graph
    from qtool.runners.ort import cpu_description, cpu_summary, int8_kernels_for_this_cpu
    from qtool.stages.deploy import interleaved_comparison

    folder = args.folder
    split = load_qnli(DataConfig(source=args.data))
    builds = _builds(folder, args.recipe or list(RECIPES))
    scored = {}
    for name, (graph, qdq) in builds.items():
        recipe = evaluate_graph(qdq, split, EvalConfig(threads=args.threads), predictions=True)
        deployed = evaluate_graph(graph, split, EvalConfig(threads=args.threads), predictions=True)
        changed = changed_predictions(recipe, deployed)
        scored[name] = {"recipe_accuracy": recipe["accuracy"], "accuracy": deployed["accuracy"], "changed": changed}
    fp32 = evaluate_graph(folder / "fp32.onnx", split, EvalConfig(threads=args.threads))
    graphs = {"fp32": folder / "fp32.onnx", **{name: graph for name, (graph, _) in builds.items()}}
    for peer in PEERS:
        if (folder / f"{peer}.onnx").is_file():
            graphs[peer] = folder / f"{peer}.onnx"
            scored[peer] = {"accuracy": evaluate_graph(graphs[peer], split, EvalConfig(threads=args.threads))["accuracy"]}
    config = BenchConfig(warmup=10, iterations=args.iterations, threads=args.threads)
    timings = {}
    for batch in args.batch or [1, 8]:
        record = folder / f"int8-kernels-b{batch}.compare.json"
        timings[batch] = interleaved_comparison(
            graphs, split, replace(config, batch_sizes=(batch,)), record, repeats=args.repeats
        )["p50_ms"]

    kernels, why = int8_kernels_for_this_cpu()
    result = {
        "date": datetime.date.today().isoformat(),
        "environment": {**cpu_description(), "cpu_summary": cpu_summary(), "auto": kernels, "auto_reason": why},
        "model_folder": str(folder),
        "eval_examples": fp32["examples"],
        "fp32_accuracy": fp32["accuracy"],
        "scored": scored,
        "p50_ms": {str(batch): p50 for batch, p50 in timings.items()},
        "threads": args.threads,
        "iterations": args.iterations,
        "repeats": args.repeats,
    }
    lines = [
        f"CPU {cpu_summary()}; `--int8-kernels auto` for 8-bit weights: {kernels} ({why}); {args.threads} threads; "
        f"{len(timings)} batch sizes x {args.repeats} interleaved runs of {args.iterations} iterations, sequence 128; "
        f"eval part {fp32['examples']} pairs, FP32 {100 * fp32['accuracy']:.2f} %.",
        "",
        "| build | accuracy % | changed vs its QDQ graph | " + " | ".join(
            f"b{b} p50 ms | b{b} vs FP32" for b in timings
        ) + " |",
        "| --- | --- | --- | " + " | ".join("--- | ---" for _ in timings) + " |",
    ]
    for name in graphs:
        entry = scored.get(name, {"accuracy": fp32["accuracy"]})
        changed = entry.get("changed")
        cells = []
        for p50 in timings.values():
            median, baseline = statistics.median(p50[name]), statistics.median(p50["fp32"])
            spread = (max(p50[name]) - min(p50[name])) / median
            cells.append(f"{median:.2f} (spread {100 * spread:.0f} %) | {baseline / median:.2f}x")
        changed_cell = "-" if changed is None else f"{changed} ({100 * changed / fp32['examples']:.1f} %)"
        lines.append(f"| {name} | {100 * entry['accuracy']:.2f} | {changed_cell} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    features = "-".join(cpu_description()["dot_product_features"] or ["unknown"])
    stem = args.out / f"int8-kernels-{result['date']}-{features}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
