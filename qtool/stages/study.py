"""`qtool reproduce`: the study as a chain of cached stages.

fine-tune (when the model has no QNLI head) -> export FP32 ONNX -> collect statistics ->
analyze outliers -> for every configuration: calibrate, write the QDQ graph, evaluate ->
results.json and report.md. Every stage writes files that the next reads and each is cached by
content (model hash, data fingerprint, recipe), so a rerun or an interrupted run redoes only
what is missing.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import onnx
import onnxruntime
import torch

from qtool import __version__
from qtool.analysis import CollectConfig, collect_or_load
from qtool.analysis.outliers import OutlierConfig
from qtool.analysis.writer import analysis_document, write_analysis
from qtool.quantization.ort_quantizers import PEERS, quantize_with_ort
from qtool.quantization.calibration import (
    CalibrateConfig,
    calibrate_model,
    calibration_paths,
    write_calibrated_graph,
    write_calibration,
)
from qtool.quantization.search import SearchConfig, auto_calibrate, auto_recipe_name, search_summary
from qtool.data import QnliSplit
from qtool.errors import QtoolError
from qtool.exporter import ExportConfig, export_onnx
from qtool.exporter.onnx_export import read_qtool_metadata
from qtool.fileio import manifest_path, read_json, sha256_file, write_json
from qtool.models.finetune import FinetuneConfig, classifier_for
from qtool.models.resolve import ModelSource, load_tokenizer
from qtool.progress import progress_bar
from qtool.report.figures import write_study_figures
from qtool.report.html import write_html_report
from qtool.report.intervals import wilson_interval
from qtool.report.markdown import write_markdown_report
from qtool.deployment.bench import BenchConfig, benchmark_inputs, run_benchmark, runner_factory
from qtool.deployment.evaluate import EvalConfig, evaluate_graph
from qtool.exporter.ort_cpu import rewrite_file_for_ort_cpu

log = logging.getLogger(__name__)

FP32 = "fp32"
SMOOTH_ALPHA = 0.5


@dataclass(frozen=True)
class SearchConfiguration:
    """A configuration whose points kept in float come from the mixed-precision search."""

    base: CalibrateConfig = field(default_factory=CalibrateConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def recipe_name(self) -> str:
        return auto_recipe_name(self.base.recipe_name(), self.search.max_drop)


def study_configurations() -> dict[str, CalibrateConfig | SearchConfiguration]:
    """The study's configurations, keyed by recipe name."""
    configs = [CalibrateConfig(method="max", scope=scope) for scope in ("all", "gemm", "gemm-inputs")]
    configs += [CalibrateConfig(method="percentile", p=p) for p in (99.0, 99.9, 99.99, 99.999)]
    # Beyond the study: Q/DQ only on the GEMM edges, the residual stream in float (max-gemm-inputs above too).
    configs += [CalibrateConfig(method="percentile", p=99.99, scope="gemm-inputs")]
    configs += [CalibrateConfig(method="peg", groups=k) for k in (1, 2, 3, 4, 6, 8)]
    configs += [CalibrateConfig(mixed_precision="paper"), CalibrateConfig(mixed_precision="outliers")]
    # Beyond the study: SmoothQuant-style migration before each kind of calibration.
    configs += [
        CalibrateConfig(method="max", smooth=SMOOTH_ALPHA),
        CalibrateConfig(method="max", scope="gemm", smooth=SMOOTH_ALPHA),
        CalibrateConfig(method="percentile", p=99.99, smooth=SMOOTH_ALPHA),
        CalibrateConfig(method="peg", groups=4, smooth=SMOOTH_ALPHA),
    ]
    # Beyond the study: the points kept in float found by the search instead of a preset.
    configs += [SearchConfiguration()]
    return {c.recipe_name(): c for c in configs}


@dataclass(frozen=True)
class ReproduceConfig:
    seed: int = 0
    configurations: tuple[str, ...] | None = None  # None: every study configuration
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=lambda: BenchConfig(warmup=5, iterations=30))
    max_drop: float = 1.0  # accuracy points: the "what to deploy" budget
    extra_configurations: tuple[tuple[str, CalibrateConfig], ...] = ()  # from a TOML file

    def selected(self) -> dict[str, CalibrateConfig | SearchConfiguration | None]:
        """Configurations to run: a calibration recipe, or None for an ONNX Runtime peer."""
        available: dict[str, CalibrateConfig | SearchConfiguration | None] = {
            **study_configurations(),
            **dict.fromkeys(PEERS),
        }
        available |= dict(self.extra_configurations)
        if self.configurations is None:
            return available
        unknown = [c for c in self.configurations if c not in available and c != FP32]
        if unknown:
            raise QtoolError(
                f"unknown configuration(s) {', '.join(unknown)}; choose from {FP32}, {', '.join(available)}"
            )
        return {name: available[name] for name in self.configurations if name != FP32}


def load_configuration_file(path: Path) -> tuple[tuple[str, CalibrateConfig], ...]:
    """New configurations from TOML: one table per configuration under `configurations`, e.g.

    [configurations.peg-k5-gemm]
    method = "peg"
    groups = 5
    scope = "gemm"
    """
    import tomllib

    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QtoolError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise QtoolError(f"{path} is not valid TOML ({exc})") from None
    tables = document.get("configurations")
    if not isinstance(tables, dict) or not tables:
        raise QtoolError(f"{path} defines no [configurations.NAME] tables")
    known = set(CalibrateConfig.__dataclass_fields__)
    loaded = []
    for name, options in tables.items():
        unknown = sorted(set(options) - known)
        if unknown:
            raise QtoolError(f"{path}: configuration {name!r} has unknown keys {unknown}; valid keys: {sorted(known)}")
        if "keep_fp" in options:
            options = {**options, "keep_fp": tuple(options["keep_fp"])}
        config = CalibrateConfig(**options)
        config.validate()
        loaded.append((name, config))
    return tuple(loaded)


def cached_export(source: ModelSource, target: Path, config: ExportConfig) -> dict | None:
    manifest_file = manifest_path(target)
    if not (target.is_file() and manifest_file.is_file()):
        return None
    manifest = read_json(manifest_file)
    fresh = (
        manifest.get("model_sha256") == source.content_hash
        and manifest.get("config") == asdict(config)
        and manifest.get("onnx_sha256") == sha256_file(target)
    )
    return manifest if fresh else None


def cached_latency(graph: Path, tokenizer, split: QnliSplit, config: BenchConfig) -> dict:
    """Latency of the ONNX Runtime CPU form of `graph`, cached beside it by content and settings."""
    deployed = graph
    if read_qtool_metadata(onnx.load(str(graph), load_external_data=False)).get("precision") == "int8-qdq":
        deployed = graph.with_name(graph.name.replace(".qdq.onnx", ".ort.onnx"))
        if not deployed.is_file() or read_json(manifest_path(deployed)).get("source_sha256") != sha256_file(graph):
            rewrite_file_for_ort_cpu(graph, deployed)
            write_json(manifest_path(deployed), {"source": graph.name, "source_sha256": sha256_file(graph)})
    key = {"graph_sha256": sha256_file(deployed), "bench": config.to_record()}
    cache = deployed.with_name(deployed.name + ".bench.json")
    if cache.is_file() and (cached := read_json(cache)).get("key") == key:
        return cached["result"]
    batch, seq_len = config.batch_sizes[0], config.sequence_lengths[0]
    feeds = benchmark_inputs(tokenizer, split.part("eval"), batch, seq_len)
    measured = run_benchmark(runner_factory(deployed, config.threads), feeds, config)
    result = {
        "graph": str(deployed),
        "batch": batch,
        "sequence_length": seq_len,
        **measured["latency"],
        "runner_rss_mb": measured["memory"].get("rss_runner_added_bytes", 0) / 2**20,
        "size_mb": measured["model_bytes"] / 2**20,
    }
    write_json(cache, {"key": key, "result": result})
    return result


def recommend(rows: list[dict], max_drop: float) -> dict | None:
    """The fastest configuration whose accuracy is within `max_drop` points of FP32."""
    fp32 = rows[0]["accuracy"]
    eligible = [r for r in rows if r.get("latency") and 100 * (fp32 - r["accuracy"]) <= max_drop]
    if not eligible:
        return None
    best = min(eligible, key=lambda r: r["latency"]["p50_ms"])
    return {
        "configuration": best["configuration"],
        "max_drop_points": max_drop,
        "accuracy": best["accuracy"],
        "drop_points": 100 * (fp32 - best["accuracy"]),
        "p50_ms": best["latency"]["p50_ms"],
        "speedup_vs_fp32": rows[0]["latency"]["p50_ms"] / best["latency"]["p50_ms"],
    }


def _peer_row(name: str, fp32: Path, split: QnliSplit, tokenizer, config: ReproduceConfig, max_length: int) -> dict:
    """An ONNX Runtime quantizer's graph, written once per FP32 graph and calibration size."""
    graph = fp32.with_name(f"{name}.onnx")
    key = {"fp32_sha256": sha256_file(fp32), "samples": config.collect.samples, "data": split.describe()}
    record = manifest_path(graph)
    if graph.is_file() and record.is_file() and read_json(record).get("key") == key:
        used = read_json(record)["used"]
    else:
        used = quantize_with_ort(name, fp32, graph, split, tokenizer, config.collect.samples, max_length)
        write_json(record, {"key": key, "used": used})
    evaluation = evaluate_graph(graph, split, config.eval, max_length)
    extra = {
        "method": name,
        "params": {"calibration_pairs": used["calibration_pairs"]},
        "peer": True,
        "latency": cached_latency(graph, tokenizer, split, config.bench),
    }
    return _result_row(name, graph, evaluation, used["scope"], extra)


def _result_row(name: str, graph: Path, evaluation: dict, scope: str, extra: dict) -> dict:
    low, high = wilson_interval(evaluation["correct"], evaluation["examples"])
    return {
        "configuration": name,
        "graph": str(graph),
        "scope": scope,
        "accuracy": evaluation["accuracy"],
        "accuracy_ci95": [low, high],
        "correct": evaluation["correct"],
        "examples": evaluation["examples"],
        **extra,
    }


def run_reproduce(model: str | None, split: QnliSplit, config: ReproduceConfig, artifacts: Path) -> dict:
    artifacts = Path(artifacts)
    configurations = config.selected()
    finetune_config = FinetuneConfig(**{**asdict(config.finetune), "seed": config.seed})
    max_length = config.export.max_length
    source, finetune_manifest = classifier_for(model, split, finetune_config, artifacts, max_length)
    fp32 = artifacts / source.slug / "fp32.onnx"
    export_manifest = cached_export(source, fp32, config.export)
    if export_manifest is None:
        export_manifest = export_onnx(source, split, fp32, config.export)
    else:
        log.info("reusing %s", fp32)

    stats = collect_or_load(fp32, split, load_tokenizer(source.path), config.collect)
    analysis = analysis_document(stats, OutlierConfig())
    analysis_paths = write_analysis(stats, analysis, fp32.parent / "analysis")

    tokenizer = load_tokenizer(source.path)
    rows = [
        _result_row(
            FP32,
            fp32,
            evaluate_graph(fp32, split, config.eval, max_length),
            "none (FP32)",
            {"latency": cached_latency(fp32, tokenizer, split, config.bench)},
        )
    ]
    with progress_bar("study configurations", total=len(configurations)) as bar:
        for name, calibrate_config in configurations.items():
            if calibrate_config is None:
                rows.append(_peer_row(name, fp32, split, tokenizer, config, max_length))
                bar.advance(1, status=f"{name}: {rows[-1]['accuracy']:.4f}")
                continue
            search = None
            base_config = (
                calibrate_config.base if isinstance(calibrate_config, SearchConfiguration) else calibrate_config
            )
            document, used_stats = calibrate_model(
                fp32, stats, base_config, lambda graph: collect_or_load(graph, split, tokenizer, config.collect)
            )
            if isinstance(calibrate_config, SearchConfiguration):
                search_config = replace(calibrate_config.search, threads=config.eval.threads, max_length=max_length)
                document, search, search_figure = auto_calibrate(
                    fp32, used_stats, document, split, tokenizer, search_config, fp32.parent
                )
            calibration_file, qdq_file = calibration_paths(fp32.parent, name)
            write_calibrated_graph(fp32, document, qdq_file)
            write_calibration(document, calibration_file)
            evaluation = evaluate_graph(qdq_file, split, config.eval, max_length)
            extra = {
                "method": document["method"],
                "params": document["params"],
                "weights": document["weights"],
                "quantized_points": document["quantized_points"],
                "total_points": document["total_points"],
                "kept_in_float": document["kept_in_float"],
                "smoothing": (document.get("smoothing") or {}).get("alpha"),
                "without_smoothing": None
                if base_config.smooth is None
                else replace(base_config, smooth=None).recipe_name(),
                "calibration": str(calibration_file),
                "latency": cached_latency(qdq_file, tokenizer, split, config.bench),
            }
            if search is not None:
                extra["search"] = search_summary(search, search_figure)
            rows.append(_result_row(name, qdq_file, evaluation, document["scope"], extra))
            bar.advance(1, status=f"{name}: {evaluation['accuracy']:.4f}")

    result = {
        "model": source.name,
        "model_sha256": source.content_hash,
        "base_model": (finetune_manifest or {}).get("key", {}).get("base_model", source.name),
        "data_split": split.describe(),
        "finetune": finetune_manifest,
        "export_parity": export_manifest["parity"]["max_abs_logit_diff"],
        "statistics": {
            "samples": stats.manifest["samples"],
            "sample_sources": stats.manifest["sample_sources"],
            "tokens": stats.manifest["tokens"],
        },
        "analysis": {"layers": analysis["layers"], "definitions": analysis["definitions"], "files": analysis_paths},
        "results": rows,
        "recommendation": recommend(rows, config.max_drop),
        "environment": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "qtool": __version__,
            "threads": config.bench.threads or os.cpu_count(),
        },
    }
    report_dir = artifacts / "report"
    figures = write_study_figures(result, report_dir)
    figures |= {f"search_{r['configuration']}": r["search"]["figure"] for r in rows if r.get("search")}
    figures["kurtosis_by_layer"] = analysis_paths["kurtosis_by_layer"]
    figures["residual_channel_absmax"] = analysis_paths["residual_heatmap"]
    result["figures"] = figures
    write_json(report_dir / "results.json", result)
    markdown = write_markdown_report(result, report_dir / "report.md")
    write_html_report(markdown, figures, report_dir / "report.html", f"qtool study: {source.name}")
    return result
