"""The stages that turn statistics into quantized graphs: calibrate (with the optional migration and
mixed-precision search), quantize an existing calibration, and export its scales for other tools."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from qtool.analysis.collect import ActivationStats, CollectConfig
from qtool.cache import timed_stage
from qtool.data import QnliSplit
from qtool.defaults import PEG_LAYOUT
from qtool.deployment.evaluate import EvalConfig, evaluate_graph, paired_against
from qtool.errors import QtoolError
from qtool.executor import ExecutorConfig
from qtool.exporter.points import load_quant_points
from qtool.exporter.qdq import PEG_LAYOUTS
from qtool.fileio import distinct_output
from qtool.graph import model_identity
from qtool.models.families import tokenizer_for
from qtool.quantization import scale_formats
from qtool.quantization.calibration import (
    CalibrateConfig,
    Calibration,
    calibrate,
    calibration_paths,
    load_calibration,
    write_calibration,
)
from qtool.quantization.graphs import smoothed_graph, write_calibrated_graph
from qtool.quantization.search import SearchConfig, auto_calibrate, search_summary
from qtool.quantization.search_evaluations import tuning_examples
from qtool.report.figures import precision_search_curve
from qtool.runners.ort import check_onnx_file
from qtool.stages.statistics import statistics_for


@dataclass(frozen=True)
class Calibrated:
    calibration: Calibration
    calibration_file: Path
    qdq_graph: Path
    search: dict | None = None  # the search's summary, with its curve figure, for --method auto


def calibrate_model(
    model_path: Path,
    stats: ActivationStats,
    config: CalibrateConfig,
    collect_stats: Callable[[Path], ActivationStats],
) -> tuple[Calibration, ActivationStats]:
    """`calibrate`, with the migration first when `config.smooth` is set: the smoothed graph's
    statistics come from `collect_stats(graph_path)` (cached), and the calibration records the
    factors so that the QDQ graph can be rebuilt from the FP32 graph. Returns the calibration and
    the statistics it was calibrated on."""
    if config.smooth is None:
        return calibrate(stats, config), stats
    config.validate()
    graph, factors = smoothed_graph(model_path, stats, config.smooth)
    smoothed_stats = collect_stats(graph)
    calibration = calibrate(smoothed_stats, config)
    smoothing = {
        "alpha": config.smooth,
        "graph": graph.name,
        "fp32_statistics_sha256": stats.content_sha256,
        "factors": factors,
    }
    return replace(calibration, model=model_identity(model_path), smoothing=smoothing), smoothed_stats


def calibrate_stage(
    model_path: Path,
    split: QnliSplit,
    stats: ActivationStats,
    config: CalibrateConfig,
    folder: Path,
    search: SearchConfig | None = None,
    collect: CollectConfig = CollectConfig(),
    name: str | None = None,
    executor: ExecutorConfig = ExecutorConfig(),
) -> Calibrated:
    """`qtool calibrate`: `<name>.calib.json` and `<name>.qdq.onnx` in `folder` (name: the recipe).

    With `search`, the points kept in float come from the mixed-precision search, which also
    writes `<recipe>.search.json` and its curve `<recipe>.search.png`; its evaluations run on `executor`.
    """
    check_onnx_file(model_path)
    config.validate()
    with timed_stage("calibration"):
        calibration, used_stats = calibrate_model(
            model_path, stats, config, lambda graph: statistics_for(graph, split, collect)
        )
    summary = None
    if search is not None:
        with timed_stage("mixed-precision search"):
            calibration, record = auto_calibrate(
                model_path, used_stats, calibration, split, tokenizer_for(model_path), search, folder, executor
            )
            title = f"Mixed-precision search: {calibration.recipe} ({calibration.model['source_model']})"
            figure = precision_search_curve(record, Path(folder) / f"{calibration.recipe}.search.png", title)
        summary = search_summary(record, figure) | {"record": str(Path(folder) / f"{calibration.recipe}.search.json")}
    calibration_file, qdq_file = calibration_paths(folder, name or calibration.recipe)
    with timed_stage("write QDQ graph"):
        write_calibrated_graph(model_path, calibration, qdq_file)
        write_calibration(calibration, calibration_file)
    return Calibrated(calibration, calibration_file, qdq_file, summary)


def quantize_stage(
    model_path: Path, calibration_file: Path, output: Path | None = None, peg_layout: str = PEG_LAYOUT
) -> Path:
    """`qtool quantize`: the QDQ graph of an existing calibration (refused for another model)."""
    check_onnx_file(model_path)
    if peg_layout not in PEG_LAYOUTS:
        raise QtoolError(f"unknown --peg-layout {peg_layout!r}; choose one of {', '.join(PEG_LAYOUTS)}")
    calibration = load_calibration(calibration_file, model_path)
    target = output or calibration_paths(Path(model_path).parent, calibration.recipe)[1]
    distinct_output(target, model_path, calibration_file)
    return write_calibrated_graph(model_path, calibration, target, peg_layout)


TRT_CACHE_LAST_MAJOR = 10  # TensorRT 11 removed implicit quantization, and with it calibration caches


def check_trt_cache_version(version: str) -> None:
    """Calibration caches are read by TensorRT 10 and older only: a one-line error for 11 and newer."""
    scale_formats.trt_version_code(version)  # a malformed version is named first
    if int(version.strip().split(".")[0]) > TRT_CACHE_LAST_MAJOR:
        raise QtoolError(
            f"TensorRT {version} reads no calibration cache (implicit quantization ended with TensorRT "
            f"{TRT_CACHE_LAST_MAJOR}); build the QDQ graph instead with `qtool build GRAPH --backend trt`, "
            f"or pass --trt-version {TRT_CACHE_LAST_MAJOR}.x for a TensorRT {TRT_CACHE_LAST_MAJOR} that will read it"
        )


def export_scales_stage(
    calibration_file: Path,
    fmt: str,
    output: Path | None = None,
    model_path: Path | None = None,
    trt_version: str | None = None,
) -> tuple[Calibration, dict]:
    """`qtool export-scales`: a calibration's per-tensor scales as a TensorRT cache or ONNX Runtime overrides."""
    scale_formats.check_format(fmt)
    if fmt == "trt-cache":
        check_trt_cache_version(trt_version or scale_formats.default_trt_version())
    if model_path is not None:
        check_onnx_file(model_path)
    calibration = load_calibration(calibration_file, model_path)
    model = load_quant_points(model_path)[0] if model_path is not None else None
    target = distinct_output(
        output or scale_formats.default_output(calibration_file, calibration, fmt), calibration_file
    )
    return calibration, scale_formats.export_scales(calibration, fmt, target, model=model, trt_version=trt_version)


def calibrate_and_evaluate(
    model_path: Path,
    split: QnliSplit,
    config: CalibrateConfig,
    search: SearchConfig | None,
    collect: CollectConfig,
    stats_path: Path | None = None,
    folder: Path | None = None,
    evaluation: EvalConfig | None = None,
    executor: ExecutorConfig = ExecutorConfig(),
) -> dict:
    """`qtool calibrate` end to end: statistics (a given file or the cached ones), the calibration and
    its QDQ graph (the search's evaluations on `executor`), and with `evaluation` the eval accuracy of
    FP32 and of the QDQ graph."""
    executor.validate()
    if search is None and executor.kind != "local":
        raise QtoolError("--executor spreads the evaluations of --method auto; other methods run here")
    check_onnx_file(model_path)
    if search is not None:
        tuning_examples(split, search)  # before any statistics are collected
    stats = statistics_for(model_path, split, collect, stats_path)
    if stats.manifest["data"] != split.describe():
        raise QtoolError(f"the statistics were collected on another data split; run `qtool collect {model_path}` again")
    folder = folder or Path(model_path).parent
    made = calibrate_stage(model_path, split, stats, config, folder, search, collect, executor=executor)
    calibration = made.calibration
    summary = {
        "recipe": calibration.recipe,
        "method": calibration.method,
        "params": calibration.params,
        "scope": calibration.scope,
        "weights": calibration.weights,
        "weight_bits": calibration.weight_bits,
        "quantized_points": calibration.quantized_points,
        "total_points": calibration.total_points,
        "kept_in_float": list(calibration.kept_in_float),
        "calibration": str(made.calibration_file),
        "qdq_graph": str(made.qdq_graph),
        "data_split": split.describe(),
        "smoothing": {k: v for k, v in calibration.smoothing.items() if k != "factors"}
        if calibration.smoothing
        else None,
    }
    if made.search is not None:
        summary["search"] = made.search
    if evaluation is not None:
        fp32 = evaluate_graph(model_path, split, evaluation, collect.max_length, predictions=True)
        qdq = evaluate_graph(made.qdq_graph, split, evaluation, collect.max_length, predictions=True)
        summary |= {
            "fp32_accuracy": fp32["accuracy"],
            "qdq_accuracy": qdq["accuracy"],
            "eval_examples": qdq["examples"],
            "eval_vs_fp32": paired_against(fp32, qdq, split, evaluation).to_dict(),
        }
    return summary
