"""The stages that deploy and measure a graph: build (ONNX Runtime CPU graph, TensorRT engine),
evaluate, and benchmark."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import onnxruntime

from qtool import __version__
from qtool.cache import cached_stage
from qtool.calibrators.precision import SCOPES
from qtool.data import DataConfig, QnliSplit, load_qnli
from qtool.deployment.backends import backend_named, build_ort, runner_factory
from qtool.deployment.bench import (
    BenchConfig,
    bench_compare,
    bench_model,
    benchmark_inputs,
    compare,
    run_benchmark,
    tokenizer_for_model,
)
from qtool.deployment.evaluate import EvalConfig, evaluate_artifact
from qtool.deployment.model_files import artifact_key
from qtool.graph import graph_metadata, is_recipe_graph
from qtool.runners.ort import check_onnx_file, cpu_description, cpu_summary, int8_kernels_for_this_cpu


def build_stage(graph: Path, backend: str, output: Path | None = None, options=None) -> dict:
    """`qtool build`: a deployable artifact of `graph` for `backend` (a key of BACKENDS) with that
    backend's `options` (its options dataclass; None: its defaults)."""
    check_onnx_file(graph)
    chosen = backend_named(backend)
    if chosen.check_graph is not None:
        chosen.check_graph(Path(graph))
    chosen.require_library()
    report = chosen.build(Path(graph), output, options)
    scope = report.get("scope")
    if scope in SCOPES and not SCOPES[scope].gemm_edges_only:
        report["note"] = (
            f"scope {scope} also quantizes the residual path (a Q/DQ pair per residual input); "
            "`qtool calibrate --scope gemm-inputs` quantizes values only where they enter a MatMul/Gemm, "
            "which leaves fewer Q/DQ passes"
        )
    return report


def deployed_graph(graph: Path) -> Path:
    """What is deployed on a CPU for `graph`: the ONNX Runtime graph of a QDQ graph, else the graph itself."""
    if Path(graph).suffix == ".onnx" and is_recipe_graph(graph_metadata(graph)):
        return Path(build_ort(graph)["graph"])
    return Path(graph)


def latency_stage(graph: Path, split: QnliSplit, config: BenchConfig) -> dict:
    """Latency and memory of the deployed CPU graph of `graph` at the first batch and sequence length
    of `config`, on eval pairs, cached beside it (`<deployed graph>.bench.json`) by content and settings.

    Each graph runs in a process of its own, so the resident memory its session adds (weights,
    buffers, ONNX Runtime's arena) and the peak are its own, not what earlier sessions left behind."""
    deployed = deployed_graph(graph)
    batch, seq_len = config.batch_sizes[0], config.sequence_lengths[0]

    def run() -> dict:
        feeds = benchmark_inputs(tokenizer_for_model(deployed), split.part("eval"), batch, seq_len)
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
        **artifact_key(deployed),
        "bench": config.to_record(),
        "memory": "isolated process, runtime only",  # since 2026-12-07 no onnx import or graph parse in the RSS
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
        feeds = benchmark_inputs(tokenizer_for_model(next(iter(graphs.values()))), split.part("eval"), batch, seq_len)
        candidates = [(name, runner_factory(graph, config.threads)) for name, graph in graphs.items()]
        p50: dict[str, list[float]] = {name: [] for name in graphs}
        for _ in range(repeats):
            for candidate in compare(candidates, feeds, config)["candidates"]:
                p50[candidate["name"]].append(candidate["latency"]["p50_ms"])
        return {"p50_ms": p50, "repeats": repeats, "batch": batch, "sequence_length": seq_len}

    key = {
        "graphs": {name: artifact_key(graph) for name, graph in graphs.items()},
        "bench": config.to_record(),
        "cpu": cpu_summary(),
    }
    return cached_stage(
        record, key | {"repeats": repeats}, run, description="the interleaved comparison", stage="interleaved comparison"
    )


def engine_accuracy(
    models: Sequence[Path],
    data_config: DataConfig,
    config: EvalConfig,
    providers: Sequence[str],
    tokenizer_path: Path | None = None,
) -> dict[str, dict]:
    """Eval-part accuracy of each graph or engine through the runner that benchmarks it."""
    split = load_qnli(data_config)
    accuracy = {}
    for model in models:
        result = evaluate_artifact(model, split, config, data_config.max_length, providers, tokenizer_path)
        accuracy[str(model)] = {k: v for k, v in result.items() if k not in ("predictions", "model")}
    return accuracy


def bench_stage(
    models: Sequence[Path],
    config: BenchConfig,
    data_config: DataConfig,
    compare: bool = False,
    isolated: bool = False,
    evaluation: EvalConfig | None = None,
    tokenizer_path: Path | None = None,
) -> dict:
    """`qtool bench`: latency, throughput and memory of each model (interleaved with `compare`), and
    with `evaluation` the accuracy of the same runners; `tokenizer_path` overrides the tokenizer
    exported beside the models."""
    config.validate()
    if evaluation is not None:
        evaluation.validate()
    if compare:
        result = bench_compare(models, config, data_config, tokenizer_path, isolated_memory=isolated)
    else:
        result = {"runs": [bench_model(m, config, data_config, tokenizer_path, isolated=isolated) for m in models]}
    if evaluation is not None:
        evaluation = replace(evaluation, threads=evaluation.threads or config.threads)
        result["accuracy"] = engine_accuracy(models, data_config, evaluation, config.providers, tokenizer_path)
    kernels, why = int8_kernels_for_this_cpu()
    result["environment"] = {
        **cpu_description(),
        "onnxruntime": onnxruntime.__version__,
        "int8_kernels": kernels,  # what `--int8-kernels auto` picks here for 8-bit weights
        "int8_kernels_reason": why,
    }
    return result


def deployment_environment(threads: int | None) -> dict:
    """The machine and the libraries a study's figures come from (a runtime not installed: None)."""
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_summary(),
        "python": platform.python_version(),
        **{package: version(package) for package in ("torch", "onnxruntime", "openvino")},
        "qtool": __version__,
        "threads": threads or os.cpu_count(),
        "int8_kernels": ": ".join(int8_kernels_for_this_cpu()),  # of the ONNX Runtime graphs deployed here
    }
