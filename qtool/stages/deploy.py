"""The stages that deploy and measure a graph: build (ONNX Runtime CPU form, TensorRT engine),
evaluate, and benchmark."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import onnxruntime

from qtool import __version__
from qtool.cache import cached_stage
from qtool.calibrators.precision import SCOPES
from qtool.data import DataConfig, QnliSplit, load_qnli
from qtool.defaults import ORT_INT8_KERNELS
from qtool.deployment.bench import (
    BenchConfig,
    bench_compare,
    bench_model,
    benchmark_inputs,
    compare,
    run_benchmark,
    runner_factory,
    tokenizer_for_model,
)
from qtool.deployment.evaluate import EvalConfig, evaluate, logit_to_label, tokenizer_for
from qtool.deployment.trt_build import TrtBuildConfig, build_engine
from qtool.errors import QtoolError
from qtool.exporter.ort_cpu import FORM_VERSION as ORT_FORM_VERSION
from qtool.exporter.ort_cpu import rewrite_file_for_ort_cpu
from qtool.exporter.ort_fused import check_fused
from qtool.exporter.weight_codes import u8s8_exact_everywhere
from qtool.fileio import distinct_output, manifest_path, sha256_file
from qtool.graph import graph_metadata, is_recipe_graph, load_model
from qtool.runners.ort import (
    INT8_KERNELS,
    check_onnx_file,
    cpu_description,
    cpu_summary,
    int8_kernels_for_this_cpu,
)


def resolve_int8_kernels(choice: str, graph: Path | None = None) -> tuple[str, str]:
    """`--int8-kernels`: u8s8 or u8u8 as given, or for `auto` the fastest exact one for this CPU and
    `graph`: U8S8 where it does not saturate, or where every GEMM weight is within 7 bits; and why."""
    if choice == "auto":
        kernels, why = int8_kernels_for_this_cpu()
        if kernels == "u8u8" and graph is not None and u8s8_exact_everywhere(load_model(graph)):
            return "u8s8", (
                "every GEMM weight is within 7 bits ([-64, 63]), so U8S8 kernels cannot saturate although "
                f"they add pairs of products in 16 bits on this CPU, {cpu_summary()}"
            )
        return kernels, why
    if choice not in INT8_KERNELS:
        raise QtoolError(f"--int8-kernels must be auto or one of {', '.join(INT8_KERNELS)}, got {choice!r}")
    return choice, "as asked"


def build_ort(
    graph: Path, output: Path | None = None, options: TrtBuildConfig | None = None, int8_kernels: str | None = None
) -> dict:
    """The ONNX Runtime CPU form `<graph stem>.ort.onnx`, rebuilt only when the graph or the kernel
    choice changed; the report says which integer kernels it is for and why, what ONNX Runtime fused
    in it and, for a scope that quantizes the residual path, how to leave fewer Q/DQ passes."""
    graph = Path(graph)
    graph_metadata(graph)  # a one-line error for a missing, empty or corrupt graph
    target = distinct_output(Path(output or graph.with_name(f"{graph.stem}.ort.onnx")), graph)
    kernels, why = resolve_int8_kernels(int8_kernels or ORT_INT8_KERNELS, graph)

    def run() -> dict:
        scope = graph_metadata(graph).get("scope")
        rewrite_file_for_ort_cpu(graph, target, kernels=kernels)
        report = {
            "backend": "ort",
            "graph": str(target),
            "scope": scope,
            "int8_kernels": kernels,
            "int8_kernels_reason": why,
            **check_fused(target),
        }
        if scope in SCOPES and not SCOPES[scope].gemm_edges_only:
            report["note"] = (
                f"scope {scope} also quantizes the residual path (a Q/DQ pair per residual input); "
                "`qtool calibrate --scope gemm-inputs` quantizes values only where they enter a MatMul/Gemm, "
                "which leaves fewer Q/DQ passes"
            )
        return report

    key = {
        "source_sha256": sha256_file(graph),
        "qtool": __version__,
        "form": ORT_FORM_VERSION,
        "int8_kernels": kernels,
        "onnxruntime": onnxruntime.__version__,
    }
    report = cached_stage(manifest_path(target), key, run, artifact=target, stage="build ONNX Runtime form")
    # where it is now, not where it was built; why the kernels, as this CPU says now
    return {**report, "int8_kernels_reason": why, "graph": str(target), "model": str(target)}


def build_trt(
    graph: Path, output: Path | None = None, options: TrtBuildConfig | None = None, int8_kernels: str | None = None
) -> dict:
    """A TensorRT engine `<graph>.plan` with its build manifest (needs TensorRT and an NVIDIA GPU)."""
    if int8_kernels is not None:
        raise QtoolError("--int8-kernels is for --backend ort; TensorRT chooses its own kernels")
    if graph_metadata(graph).get("peg_form", "gathered") not in ("gathered", "folded"):
        raise QtoolError(
            f"{graph} writes PEG groups with per-channel activation scales, which TensorRT does not take; "
            "write the TensorRT form with `qtool quantize FP32.onnx CALIB.json --peg-form gathered`, "
            "or calibrate with --weights folded"
        )
    target = distinct_output(Path(output or Path(graph).with_suffix(".plan")), graph)
    return {"backend": "trt", "engine": str(target), **build_engine(graph, target, options or TrtBuildConfig())}


BACKENDS: dict[str, Callable[[Path, Path | None, TrtBuildConfig | None, str | None], dict]] = {
    "ort": build_ort,
    "trt": build_trt,
}


def build_stage(
    graph: Path,
    backend: str,
    output: Path | None = None,
    options: TrtBuildConfig | None = None,
    int8_kernels: str | None = None,
) -> dict:
    """`qtool build`: a deployable artifact of `graph` for `backend` (a key of BACKENDS);
    `int8_kernels` (ONNX Runtime only) as `--int8-kernels`."""
    check_onnx_file(graph)
    if backend not in BACKENDS:
        raise QtoolError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[backend](Path(graph), output, options, int8_kernels)


def deployed_form(graph: Path) -> Path:
    """What is deployed on a CPU for `graph`: the ONNX Runtime form of a QDQ graph, else the graph itself."""
    if is_recipe_graph(graph_metadata(graph)):
        return Path(build_ort(graph)["graph"])
    return Path(graph)


def latency_stage(graph: Path, split: QnliSplit, config: BenchConfig) -> dict:
    """Latency and memory of the deployed CPU form of `graph` at the first batch and sequence length
    of `config`, on eval pairs, cached beside it (`<form>.bench.json`) by content and settings.

    Each form runs in a process of its own, so the resident memory its session adds (weights,
    buffers, ONNX Runtime's arena) and the peak are its own, not what earlier sessions left behind."""
    deployed = deployed_form(graph)
    batch, seq_len = config.batch_sizes[0], config.sequence_lengths[0]

    def run() -> dict:
        feeds = benchmark_inputs(tokenizer_for(graph), split.part("eval"), batch, seq_len)
        measured = run_benchmark(runner_factory(deployed, config.threads), feeds, config, isolated=True)
        return {
            "graph": str(deployed),
            "batch": batch,
            "sequence_length": seq_len,
            **measured["latency"],
            "runner_rss_mb": measured["memory"]["rss_runner_added_bytes"] / 2**20,
            "peak_rss_mb": measured["memory"]["rss_peak_added_bytes"] / 2**20,
            "memory_scope": measured["memory"]["scope"],
            "size_mb": measured["model_bytes"] / 2**20,
        }

    key = {
        "graph_sha256": sha256_file(deployed),
        "bench": config.to_record(),
        "memory": "isolated process",
        "cpu": cpu_summary(),  # a time from another CPU is not this one's
    }
    record = deployed.with_name(deployed.name + ".bench.json")
    return {**cached_stage(record, key, run, stage="time deployed graph"), "graph": str(deployed)}


def interleaved_comparison(
    graphs: dict[str, Path], split: QnliSplit, config: BenchConfig, record: Path, repeats: int = 3
) -> dict:
    """p50 of every graph in `repeats` interleaved runs (all sessions loaded, round-robin on the same
    eval inputs), cached in `record` by the graphs' content and the settings. The first graph's
    tokenizer makes the inputs."""
    batch, seq_len = config.batch_sizes[0], config.sequence_lengths[0]

    def run() -> dict:
        feeds = benchmark_inputs(tokenizer_for(next(iter(graphs.values()))), split.part("eval"), batch, seq_len)
        candidates = [(name, runner_factory(graph, config.threads)) for name, graph in graphs.items()]
        p50: dict[str, list[float]] = {name: [] for name in graphs}
        for _ in range(repeats):
            for candidate in compare(candidates, feeds, config)["candidates"]:
                p50[candidate["name"]].append(candidate["latency"]["p50_ms"])
        return {"p50_ms": p50, "repeats": repeats, "batch": batch, "sequence_length": seq_len}

    key = {
        "graphs": {name: sha256_file(graph) for name, graph in graphs.items()},
        "bench": config.to_record(),
        "cpu": cpu_summary(),
    }
    return cached_stage(
        record, key | {"repeats": repeats}, run, description="the interleaved comparison", stage="interleaved comparison"
    )


def engine_accuracy(
    models: Sequence[Path], data_config: DataConfig, config: EvalConfig, providers: Sequence[str]
) -> dict[str, dict]:
    """Eval-part accuracy of each graph or engine through the runner that benchmarks it."""
    split = load_qnli(data_config)
    accuracy = {}
    for model in models:
        labels = logit_to_label(model) if Path(model).suffix == ".onnx" else None
        with runner_factory(model, config.threads, providers)() as runner:
            result = evaluate(
                runner,
                tokenizer_for_model(model),
                split,
                config,
                labels,
                data_config.max_length,
                description=f"eval {Path(model).name}",
            )
        accuracy[str(model)] = {k: v for k, v in result.items() if k != "predictions"}
    return accuracy


def bench_stage(
    models: Sequence[Path],
    config: BenchConfig,
    data_config: DataConfig,
    compare: bool = False,
    isolated: bool = False,
    evaluation: EvalConfig | None = None,
) -> dict:
    """`qtool bench`: latency, throughput and memory of each model (interleaved with `compare`), and
    with `evaluation` the accuracy of the same runners."""
    config.validate()
    if evaluation is not None:
        evaluation.validate()
    if compare:
        result = bench_compare(models, config, data_config, isolated_memory=isolated)
    else:
        result = {"runs": [bench_model(model, config, data_config, isolated=isolated) for model in models]}
    if evaluation is not None:
        evaluation = replace(evaluation, threads=evaluation.threads or config.threads)
        result["accuracy"] = engine_accuracy(models, data_config, evaluation, config.providers)
    kernels, why = int8_kernels_for_this_cpu()
    result["environment"] = {
        **cpu_description(),
        "onnxruntime": onnxruntime.__version__,
        "int8_kernels": kernels,  # what `--int8-kernels auto` picks here for 8-bit weights
        "int8_kernels_reason": why,
    }
    return result
