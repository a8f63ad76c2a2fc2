"""The study's deployment profile on an NVIDIA GPU: TensorRT engines, latency, memory, accuracy.

    make gpu-check                  # on a machine with an NVIDIA GPU and `pip install qtool[trt]`
    python benchmarks/gpu_check.py artifacts/<model> --data ../shared/data/QNLI -c max-all -c peg-k4-all

For the FP32 export of a `qtool reproduce` folder and each configuration's calibration file there:
1. the QDQ graph in the form TensorRT takes (PEG: `--peg-form gathered`), `<c>.trt.qdq.onnx`;
2. its engine (`qtool build --backend trt`: strongly typed, FP16 around the Q/DQ pairs), whose
   manifest counts the layers by precision from the engine inspector; and the FP16 engine of the
   FP32 export, built the same way, as the baseline;
3. one interleaved comparison of every engine (`qtool bench --compare`, each in its own process for
   memory) with accuracy on the eval part from the same runners.
With no `-c`, the configurations are the study's core and the report's what-to-deploy choice.
It writes `gpu-check.json` and a Markdown table beside the graphs. On a machine without a GPU or
TensorRT it stops at once with a one-line error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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


def _engines(folder: Path, configurations: list[str]) -> dict[str, Path]:
    from qtool.deployment.trt_build import TrtBuildConfig
    from qtool.errors import QtoolError
    from qtool.stages.calibrate import quantize_stage
    from qtool.stages.deploy import build_stage

    fp32 = folder / "fp32.onnx"
    if not fp32.is_file():
        raise QtoolError(f"{folder} has no fp32.onnx; run `qtool reproduce` (or `qtool export`) first")
    engines = {"fp16": Path(build_stage(fp32, "trt", folder / "fp32.fp16.plan", TrtBuildConfig(fp16=True))["engine"])}
    for name in configurations:
        calibration = folder / f"{name}.calib.json"
        if not calibration.is_file():
            raise QtoolError(f"{calibration} is missing; run `qtool reproduce -c {name}` first")
        graph = quantize_stage(fp32, calibration, folder / f"{name}.trt.qdq.onnx", "gathered")
        engines[name] = Path(build_stage(graph, "trt", folder / f"{name}.plan")["engine"])
    return engines


def _table(engines: dict[str, Path], result: dict) -> list[str]:
    """One row per engine and shape. VRAM comes from each engine's own process (`isolated_memory`):
    device memory used after deserializing the engine (weights) and after creating its context
    (activations), from cudaMemGetInfo differences; engine MB is the plan file."""
    from qtool.runners.trt import read_plan_manifest

    def mb(value) -> str:
        return "-" if value is None else f"{value / 2**20:.1f}"

    lines = [
        "| engine | precision | batch x seq | p50 ms | p99 ms | seq/s | VRAM MB (weights + context) | engine MB "
        "| accuracy % | INT8 GEMMs | fused attention |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shape in result["results"]:
        for name, row in zip(engines, shape["candidates"], strict=True):
            latency, path = row["latency"], engines[name]
            vram = row.get("isolated_memory", {})
            manifest = read_plan_manifest(path) or {}
            layers = manifest.get("layer_precision", {})
            accuracy = result["accuracy"][str(path)]["accuracy"]
            lines.append(
                f"| {name} | {manifest.get('precision', {}).get('engine', '-')} | {shape['batch']} x "
                f"{shape['sequence_length']} | {latency['p50_ms']:.2f} | {latency['p99_ms']:.2f} | "
                f"{latency['throughput_per_s']:.1f} | {mb(vram.get('vram_total_bytes'))} "
                f"({mb(vram.get('vram_engine_bytes'))} + {mb(vram.get('vram_context_bytes'))}) | "
                f"{path.stat().st_size / 2**20:.1f} | {100 * accuracy:.2f} | "
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
    from qtool.deployment.evaluate import EvalConfig
    from qtool.errors import QtoolError
    from qtool.fileio import write_json, write_text
    from qtool.stages.deploy import bench_stage

    try:
        _preflight()
        engines = _engines(args.folder, args.config or _with_recommendation(args.folder, list(DEFAULT_CONFIGURATIONS)))
        config = BenchConfig(batch_sizes=(1, 8), sequence_lengths=(128,))
        data = DataConfig(source=args.data)
        comparison = bench_stage(
            list(engines.values()), config, data, compare=True, isolated=True, evaluation=EvalConfig()
        )
    except QtoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json(args.folder / "gpu-check.json", {"engines": {k: str(v) for k, v in engines.items()}, **comparison})
    table = _table(engines, comparison)
    write_text(args.folder / "gpu-check.md", "\n".join(table) + "\n")
    print("\n".join(table))
    print(json.dumps({"written": [str(args.folder / "gpu-check.json"), str(args.folder / "gpu-check.md")]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
