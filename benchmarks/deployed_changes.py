"""How many eval predictions of each recipe's deployed ONNX Runtime graph differ from its QDQ graph's,
on this CPU, with the kernels `--int8-kernels auto` picks here (or the ones given).

Nothing is taken from the cache: both graphs are scored here, so the count is this CPU's even where
the study's records come from another machine; with `--cached-recipe` the QDQ graph's predictions
come from the study's record when there is one (the recipe is scored without ONNX Runtime's fusions,
so only float rounding differs between CPUs). Under an emulator (`qemu-x86_64 -cpu Haswell`) it
counts what an AVX2 CPU without VNNI would compute (slowly: use --limit). Usage:

    python benchmarks/deployed_changes.py artifacts/<model>/ --data ../shared/data/QNLI --limit 300 \\
        --recipe max-gemm-inputs --recipe max-gemm-inputs-w7 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the model folder of `make reproduce` (holds the QDQ graphs)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--recipe", action="append", help="a recipe whose <recipe>.qdq.onnx is there (default: all)")
    parser.add_argument("--kernels", default="auto", choices=("auto", "u8s8", "u8u8"))
    parser.add_argument("--limit", type=int, help="the first N pairs of the eval part")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--cached-recipe", action="store_true", help="the QDQ graph's predictions from the cache")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from qtool.data import DataConfig, load_qnli
    from qtool.deployment.backends import OrtBuildOptions, build_ort
    from qtool.deployment.evaluate import EvalConfig, changed_predictions, evaluate_graph
    from qtool.runners.ort import cpu_summary, int8_kernels_for_this_cpu

    split = load_qnli(DataConfig(source=args.data))
    config = EvalConfig(limit=args.limit, threads=args.threads)
    recipes = args.recipe or sorted(p.name.removesuffix(".qdq.onnx") for p in args.folder.glob("*.qdq.onnx"))
    rows = []
    print(f"CPU {cpu_summary()}; auto for 8-bit weights: {': '.join(int8_kernels_for_this_cpu())}", flush=True)
    for recipe in recipes:
        qdq = args.folder / f"{recipe}.qdq.onnx"
        built = build_ort(qdq, qdq.with_name(f"{recipe}.{args.kernels}.ort.onnx"), OrtBuildOptions(args.kernels))
        scored = [
            evaluate_graph(qdq, split, config, use_cache=args.cached_recipe, predictions=True),
            evaluate_graph(Path(built["graph"]), split, config, use_cache=False, predictions=True),
        ]
        changed = changed_predictions(*scored)
        row = {
            "recipe": recipe,
            "kernels": built["int8_kernels"],
            "examples": scored[0]["examples"],
            "changed": changed,
            "recipe_accuracy": scored[0]["accuracy"],
            "deployed_accuracy": scored[1]["accuracy"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        record = {"cpu": cpu_summary(), "limit": args.limit, "cached_recipe": args.cached_recipe, "rows": rows}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
