"""The study's deployment profile on an NVIDIA GPU: TensorRT engines, latency, memory, accuracy.

    make gpu-check                  # on a machine with an NVIDIA GPU and `pip install qtool[trt]`
    python benchmarks/gpu_check.py artifacts/<model> --data ../shared/data/QNLI -c max-all -c peg-k4-all

It prints a preflight line (TensorRT and the CUDA it is built for, the CUDA runtime and the CUDA
version the driver supports, the GPU) and stops with one line when they do not fit. Then, for batch
1 and 8 (x 128 tokens), from the FP32 export of a `qtool reproduce` folder and each configuration's
calibration file there:
1. the QDQ graph in the PEG layout TensorRT takes (PEG: `--peg-layout gathered`), `<c>.trt.qdq.onnx`;
2. its engine (`qtool build --backend trt`: strongly typed, FP16 around the Q/DQ pairs) with the
   optimization profile's optimum at the batch it is timed at, whose manifest reads the INT8 GEMMs
   from the engine inspector; and the FP16 engine of the FP32 export, built the same way, as the
   baseline;
3. two interleaved comparisons of every engine (`qtool bench --compare`), in both orders, 200
   warm-ups and 1,000 iterations each: end to end from page-locked memory and on the GPU alone
   between CUDA events; the first also measures each engine's VRAM in a process of its own;
4. each INT8 engine's accuracy on the eval part with its 95 % interval, and its argmax agreement
   with ONNX Runtime on the same QDQ graph.
With no `-c`, the configurations are the study's core and the report's what-to-deploy choice.
It writes `gpu-check.json` and `gpu-check.md` (the table and one verdict line per INT8 engine)
beside the graphs. On a machine without a GPU or TensorRT it stops at once with a one-line error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SEQUENCE = 128
BATCHES = (1, 8)
WARMUP, ITERATIONS = 200, 1000  # per candidate and shape; GPU kernels take a while to reach steady clocks
DEFAULT_CONFIGURATIONS = (
    "max-all",
    "max-gemm",
    "max-gemm-inputs",
    "percentile-99.99-all",
    "peg-k4-all",
    "max-all-mp-paper",
)


def _preflight() -> dict:
    """TensorRT, the CUDA runtime and driver, the GPU: printed, and refused in one line when they do not fit."""
    from qtool.errors import QtoolError
    from qtool.runners.device import current_gpu, missing_gpu_reason
    from qtool.runners.trt import import_tensorrt, preflight

    import_tensorrt()
    gpu = current_gpu()
    if gpu is None:
        raise QtoolError(f"gpu-check needs an NVIDIA GPU: {missing_gpu_reason()}")
    checked = preflight(gpu)
    print("preflight: " + "; ".join(f"{key} {value}" for key, value in checked.items()))
    return checked


def _with_recommendation(folder: Path, configurations: list[str]) -> list[str]:
    """`configurations` and the study's what-to-deploy choice (from `report/results.json` beside the
    model folder) when that is a qtool configuration with a calibration file."""
    results = folder.parent / "report" / "results.json"
    if not results.is_file():
        return configurations
    chosen = (json.loads(results.read_text(encoding="utf-8")).get("recommendation") or {}).get("configuration")
    if chosen and chosen not in configurations and (folder / f"{chosen}.calib.json").is_file():
        return [*configurations, chosen]
    return configurations


def _engines(folder: Path, configurations: list[str], batch: int) -> dict[str, Path]:
    """The FP16 baseline and each configuration's INT8 engine, built with the optimization profile's
    optimum at `batch` x 128 (the shape they are timed at; the context is sized for that batch)."""
    from qtool.deployment.trt_build import TrtBuildConfig
    from qtool.errors import QtoolError
    from qtool.stages.calibrate import quantize_stage
    from qtool.stages.deploy import build_stage

    fp32 = folder / "fp32.onnx"
    if not fp32.is_file():
        raise QtoolError(f"{folder} has no fp32.onnx; run `qtool reproduce` (or `qtool export`) first")
    profile = {"batch": (1, batch, batch), "sequence": (1, SEQUENCE, SEQUENCE)}
    fp16 = build_stage(fp32, "trt", folder / f"fp32.fp16.b{batch}.plan", TrtBuildConfig(fp16=True, **profile))
    engines = {"fp16": Path(fp16["engine"])}
    for name in configurations:
        calibration = folder / f"{name}.calib.json"
        if not calibration.is_file():
            raise QtoolError(f"{calibration} is missing; run `qtool reproduce -c {name}` first")
        graph = quantize_stage(fp32, calibration, folder / f"{name}.trt.qdq.onnx", "gathered")
        built = build_stage(graph, "trt", folder / f"{name}.b{batch}.plan", TrtBuildConfig(**profile))
        engines[name] = Path(built["engine"])
    return engines


def _agreement(engine: Path, graph: Path, data, batch: int) -> dict:
    """The engine's eval accuracy with its 95 % interval, and how often its argmax equals ONNX Runtime's
    on the graph it was built from (the QDQ graph scored as a recipe)."""
    from qtool.data import load_data
    from qtool.deployment.evaluate import EvalConfig, evaluate, evaluate_graph, logit_to_label
    from qtool.deployment.model_files import tokenizer_for_model
    from qtool.report.intervals import wilson_interval
    from qtool.runners.trt import TrtRunner

    split = load_data(data)
    with TrtRunner(engine) as runner:
        config = EvalConfig(batch_size=batch)  # the engine's profile takes at most `batch`
        result = evaluate(runner, tokenizer_for_model(engine), split, config, logit_to_label(engine, split.labels))
    reference = evaluate_graph(graph, split, EvalConfig(), predictions=True)["predictions"]
    same = sum(a == b for a, b in zip(result["predictions"], reference, strict=True))
    return {"accuracy": result["accuracy"], "ci95": wilson_interval(result["correct"], result["examples"]),
            "agreement": same / len(reference)}


def _verdicts(engines: dict[str, Path], runs: list[dict], checks: dict[str, dict]) -> list[str]:
    """One line per INT8 engine: build, INT8 GEMMs n/m, fused attention, accuracy with its interval and
    argmax agreement with ONNX Runtime, speed-up over the FP16 engine GPU-only and end to end (the lower
    of the two run orders), VRAM of the engine in its own process."""
    from qtool.runners.trt import read_plan_manifest

    def p50(run: dict, name: str, kind: str) -> float:
        latency = next(row for row in run["results"][0]["candidates"] if row["name"] == name)["latency"]
        return (latency.get("device") or {}).get("p50_ms", float("nan")) if kind == "device" else latency["p50_ms"]

    lines = []
    for name, path in engines.items():
        if name == "fp16":
            continue
        layers = (read_plan_manifest(path) or {}).get("layer_precision", {})
        speedup = {kind: min(p50(run, "fp16", kind) / p50(run, name, kind) for run in runs) for kind in ("device", "host")}
        memory = next(r for r in runs[0]["results"][0]["candidates"] if r["name"] == name).get("isolated_memory", {})
        vram, check = memory.get("vram_total_bytes"), checks[name]
        lines.append(
            f"{name} b{runs[0]['results'][0]['batch']}: build ok; INT8 GEMMs {layers.get('gemms_int8', '-')}/"
            f"{layers.get('gemms', '-')}; fused attention {'yes' if layers.get('fused_attention') else 'no'}; accuracy "
            f"{100 * check['accuracy']:.2f} % (95 % {100 * check['ci95'][0]:.2f}-{100 * check['ci95'][1]:.2f}); argmax "
            f"agreement with ONNX Runtime {100 * check['agreement']:.2f} %; INT8/FP16 speed-up {speedup['device']:.2f}x "
            f"GPU-only, {speedup['host']:.2f}x end to end; VRAM {'-' if vram is None else f'{vram / 2**20:.0f} MB'}"
        )
    return lines


def _table(engines: dict[str, Path], result: dict, checks: dict[str, dict]) -> list[str]:
    """One row per engine at the run's shape: p50 end to end and on the GPU alone (CUDA events), p99,
    throughput, VRAM from each engine's own process (`isolated_memory`: cudaMemGetInfo differences after
    deserializing the engine, the weights, and after creating its context, the activations), engine MB
    (the plan file), accuracy and the engine inspector's INT8 GEMMs."""
    from qtool.runners.trt import read_plan_manifest

    def mb(value) -> str:
        return "-" if value is None else f"{value / 2**20:.1f}"

    lines = [
        "| engine | precision | batch x seq | p50 ms end to end | p50 ms GPU | p99 ms | seq/s | VRAM MB (weights + "
        "context) | engine MB | accuracy % | INT8 GEMMs | fused attention |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    shape = result["results"][0]
    for row in shape["candidates"]:
        name, latency = row["name"], row["latency"]
        path, vram = engines[name], row.get("isolated_memory", {})
        manifest = read_plan_manifest(path) or {}
        layers = manifest.get("layer_precision", {})
        accuracy = f"{100 * checks[name]['accuracy']:.2f}" if name in checks else "-"
        lines.append(
            f"| {name} | {manifest.get('precision', {}).get('engine', '-')} | {shape['batch']} x "
            f"{shape['sequence_length']} | {latency['p50_ms']:.3f} | {latency.get('device', {}).get('p50_ms', float('nan')):.3f} "
            f"| {latency['p99_ms']:.3f} | {latency['throughput_per_s']:.1f} | {mb(vram.get('vram_total_bytes'))} "
            f"({mb(vram.get('vram_engine_bytes'))} + {mb(vram.get('vram_context_bytes'))}) | "
            f"{path.stat().st_size / 2**20:.1f} | {accuracy} | "
            f"{layers.get('gemms_int8', '-')}/{layers.get('gemms', '-')} | {layers.get('fused_attention', '-')} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a model folder of `qtool reproduce` (artifacts/<model>)")
    parser.add_argument("--data", required=True)
    parser.add_argument("-c", "--config", action="append", help="configurations (default: the study's core)")
    args = parser.parse_args()

    from qtool.data import DataConfig
    from qtool.deployment.bench import BenchConfig
    from qtool.errors import QtoolError
    from qtool.fileio import write_json, write_text
    from qtool.stages.deploy import bench_stage

    data = DataConfig(source=args.data)
    configurations = args.config or _with_recommendation(args.folder, list(DEFAULT_CONFIGURATIONS))
    record: dict = {"preflight": None, "batches": {}}
    table, verdicts = [], []
    try:
        record["preflight"] = _preflight()
        for batch in BATCHES:
            engines = _engines(args.folder, configurations, batch)
            paths = list(engines.values())
            config = BenchConfig(batch_sizes=(batch,), sequence_lengths=(SEQUENCE,), warmup=WARMUP, iterations=ITERATIONS)
            runs = [bench_stage(paths, config, data, compare=True, isolated=True),  # interleaved, then reversed
                    bench_stage(list(reversed(paths)), config, data, compare=True)]
            for run in runs:
                run["results"][0]["candidates"] = [
                    {**row, "name": next(n for n, p in engines.items() if p.resolve() == Path(row["model"]).resolve())}
                    for row in run["results"][0]["candidates"]
                ]
            checks = {name: _agreement(path, args.folder / f"{name}.trt.qdq.onnx", data, batch)
                      for name, path in engines.items() if name != "fp16"}
            record["batches"][batch] = {"engines": {k: str(v) for k, v in engines.items()}, "runs": runs,
                                        "checks": checks}
            table += _table(engines, runs[0], checks)
            verdicts += _verdicts(engines, runs, checks)
    except QtoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json(args.folder / "gpu-check.json", record)
    write_text(args.folder / "gpu-check.md", "\n".join([*table, "", *verdicts]) + "\n")
    print("\n".join([*table, "", *verdicts]))
    print(json.dumps({"written": [str(args.folder / "gpu-check.json"), str(args.folder / "gpu-check.md")]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
