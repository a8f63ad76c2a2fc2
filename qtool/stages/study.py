"""`qtool reproduce`: the study as a chain of the same cached stages the commands run.

fine-tune (when the model has no classification head) -> export FP32 ONNX -> collect statistics ->
analyze outliers -> for every configuration: calibrate, write the QDQ graph, evaluate, time its
ONNX Runtime CPU graph -> results.json, report.md and report.html. Every stage writes files that the
next reads and each is cached by content (model hash, data fingerprint, recipe), so a rerun or an
interrupted run redoes only what is missing.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from qtool.analysis.collect import ActivationStats, CollectConfig
from qtool.analysis.outliers import OutlierConfig
from qtool.cache import cached_stage, recording_stage_times, timed_stage
from qtool.calibrators.methods import AUTO_GROUPS
from qtool.data import DataConfig, QnliSplit
from qtool.defaults import DEPLOY_MAX_DROP, SEARCH_MAX_DROP, SEED, SMOOTH_ALPHA, STUDY_ITERATIONS, STUDY_WARMUP
from qtool.deployment.backends import build_ort
from qtool.deployment.bench import BenchConfig
from qtool.deployment.evaluate import (
    EvalConfig,
    changed_predictions,
    evaluate_graph,
    evaluation_metrics,
    paired_against,
)
from qtool.errors import QtoolError
from qtool.executor import ExecutorConfig, run_tasks
from qtool.exporter.weight_codes import weight_kernels
from qtool.fileio import manifest_path, sha256_file, write_json
from qtool.graph import load_model
from qtool.models.families import tokenizer_for
from qtool.models.finetune import FinetuneConfig
from qtool.models.onnx_export import ExportConfig
from qtool.quantization.calibration import CalibrateConfig
from qtool.quantization.nncf_quantizers import (
    ACCURACY_CONTROL,
    NNCF_PEERS,
    RANKING_PAIRS,
    nncf_missing,
    quantize_with_nncf,
)
from qtool.quantization.ort_quantizers import OPTIMIZER_FORMAT, PEERS, quantize_with_ort
from qtool.quantization.search import SearchConfig, auto_recipe_name
from qtool.quantization.search_evaluations import tuning_examples
from qtool.report.advice import contenders, recommend
from qtool.report.figures import write_study_figures
from qtool.report.html import write_html_report
from qtool.report.intervals import wilson_interval
from qtool.report.markdown import write_markdown_report
from qtool.stages.backend_rows import backend_rows, check_row_backends
from qtool.stages.calibrate import calibrate_stage
from qtool.stages.deploy import deployment_environment, interleaved_comparison, latency_stage
from qtool.stages.model import export_stage
from qtool.stages.statistics import cached_analysis, collect_stage
from qtool.stages.tool_comparison import tool_comparison

log = logging.getLogger(__name__)

FP32 = "fp32"


@dataclass(frozen=True)
class AutoMixedPrecision:
    """A configuration whose points kept in float come from the mixed-precision search."""

    base: CalibrateConfig = field(default_factory=CalibrateConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def recipe_name(self) -> str:
        return auto_recipe_name(self.base.recipe_name(), self.search.max_drop)


ALL = "all"  # -c all: every built-in configuration, the extended rows included, and the peers
EXTENDED = "extended"  # -c extended: the extended rows only


def study_configurations(extended: bool = True) -> dict[str, CalibrateConfig | AutoMixedPrecision]:
    """The study's configurations, keyed by recipe name. Without `extended`, the default set: the
    paper's rows (max, percentile 99-99.99, PEG K = 3, 4, 6 in equal groups, mixed precision) and
    qtool's answers. The extended rows, left to `-c all` so that a fresh `make reproduce` stays within
    30 minutes on two cores, are sweeps around a default row: percentile 99.999, equal PEG at K = 2
    and 8, range-optimal PEG at K = 1, 2, 3, 6, 8, folded PEG at K = 2 and 3, and migration."""
    sweeps: list[CalibrateConfig] = []

    def swept(*configs: CalibrateConfig) -> list[CalibrateConfig]:
        sweeps.extend(configs)
        return list(configs)

    configs = [CalibrateConfig(method="max", scope=scope) for scope in ("all", "gemm", "gemm-inputs")]
    configs += [CalibrateConfig(method="percentile", p=p) for p in (99.0, 99.9, 99.99)]
    configs += swept(CalibrateConfig(method="percentile", p=99.999))
    # Beyond the study: Q/DQ only on the GEMM edges, the residual stream in float (max-gemm-inputs above too).
    configs += [CalibrateConfig(method="percentile", p=99.99, scope="gemm-inputs")]
    # Beyond the study: ranges from objectives over the histogram, TensorRT's entropy and the least MSE.
    configs += [CalibrateConfig(method="entropy"), CalibrateConfig(method="mse")]
    configs += swept(CalibrateConfig(method="peg", groups=2, grouping="equal"))
    configs += [CalibrateConfig(method="peg", groups=k, grouping="equal") for k in (3, 4, 6)]
    configs += swept(CalibrateConfig(method="peg", groups=8, grouping="equal"))
    # Beyond the study: group boundaries with the least expected rounding noise (K = 1 is one group either way).
    configs += swept(*(CalibrateConfig(method="peg", groups=k) for k in (1, 2, 3)))
    configs += [CalibrateConfig(method="peg", groups=4)]
    configs += swept(*(CalibrateConfig(method="peg", groups=k) for k in (6, 8)))
    configs.append(CalibrateConfig(method="peg", groups=AUTO_GROUPS))
    # Beyond the study: the same groups with their scales folded into the weights, one GEMM per projection.
    configs += swept(*(CalibrateConfig(method="peg", groups=k, weights="folded") for k in (2, 3)))
    configs += [CalibrateConfig(method="peg", groups=k, weights="folded") for k in (4, AUTO_GROUPS)]
    # Beyond the study: 7-bit weights, exact on U8S8 kernels also on x86 CPUs without VNNI.
    configs += [
        CalibrateConfig(method="max", scope="gemm-inputs", weight_bits=7),
        CalibrateConfig(method="peg", groups=4, weights="folded", weight_bits=7),
    ]
    configs += [CalibrateConfig(mixed_precision="paper"), CalibrateConfig(mixed_precision="outliers")]
    # Beyond the study: SmoothQuant-style migration before each kind of calibration.
    configs += swept(
        CalibrateConfig(method="max", smooth=SMOOTH_ALPHA),
        CalibrateConfig(method="max", scope="gemm", smooth=SMOOTH_ALPHA),
        CalibrateConfig(method="percentile", p=99.99, smooth=SMOOTH_ALPHA),
        CalibrateConfig(method="peg", groups=4, smooth=SMOOTH_ALPHA),
    )
    # Beyond the study: the points kept in float found by the search instead of a preset.
    configs += [AutoMixedPrecision()]
    return {c.recipe_name(): c for c in configs if extended or c not in sweeps}


# NNCF's accuracy control ranks and reverts quantizers until the search's bound holds on the tuning part:
# about 200 evaluations and 25 minutes on the default model, so it runs with `-c all` (or by name).
EXTENDED_PEERS = (ACCURACY_CONTROL,)


def extended_rows() -> list[str]:
    recipes = [name for name in study_configurations() if name not in study_configurations(extended=False)]
    return recipes + list(EXTENDED_PEERS)


@dataclass(frozen=True)
class ReproduceConfig:
    seed: int = SEED
    configurations: tuple[str, ...] | None = None  # None: the default set and the peers
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=lambda: BenchConfig(warmup=STUDY_WARMUP, iterations=STUDY_ITERATIONS))
    max_drop: float = DEPLOY_MAX_DROP  # accuracy points: the "what to deploy" budget
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # where the configurations run
    extra_configurations: tuple[tuple[str, CalibrateConfig], ...] = ()  # from a TOML file
    tune_data: DataConfig | str | None = None  # the searches' tuning pairs; None: the split's tuning part
    backends: tuple[str, ...] | None = None  # CPU backends besides ONNX Runtime for @-rows; None: every one installed

    def validate(self) -> None:
        """Options a run needs, checked before any data or model is loaded."""
        if not 0 <= self.max_drop < 100:
            raise QtoolError(f"--max-drop must be a number of accuracy points in [0, 100), got {self.max_drop}")
        self.collect.validate()
        self.eval.validate()
        self.bench.validate()
        check_row_backends(self.backends)

    def selected(self) -> dict[str, CalibrateConfig | AutoMixedPrecision | None]:
        """Configurations to run: a calibration recipe, or None for an ONNX Runtime peer."""
        available: dict[str, CalibrateConfig | AutoMixedPrecision | None] = {
            **study_configurations(extended=self.configurations is not None),
            **dict.fromkeys(PEERS),
            **dict.fromkeys(NNCF_PEERS),
        }
        available |= dict(self.extra_configurations)
        if self.configurations is None:
            left = set(self.skipped()) | set(EXTENDED_PEERS)
            return {name: recipe for name, recipe in available.items() if name not in left}
        runnable = [name for name in extended_rows() if not (name in NNCF_PEERS and nncf_missing())]
        aliases = {ALL: [name for name in available if name not in self.skipped()], EXTENDED: runnable}
        names = [n for name in self.configurations for n in aliases.get(name, [name])]
        unknown = [c for c in names if c not in available and c != FP32]
        if unknown:
            raise QtoolError(
                f"unknown configuration(s) {', '.join(unknown)}; choose from {FP32}, {ALL}, {EXTENDED}, "
                f"{', '.join(available)}"
            )
        missing = nncf_missing()
        asked = [name for name in names if name in NNCF_PEERS]
        if asked and missing:
            raise QtoolError(f"{', '.join(asked)} cannot run: {missing}")
        return {name: available[name] for name in dict.fromkeys(names) if name != FP32}

    def skipped(self) -> dict[str, str]:
        """Peers left out of a full study because their optional extra is missing, and why."""
        missing = nncf_missing()
        full = self.configurations is None or ALL in self.configurations
        skipped = dict.fromkeys(NNCF_PEERS, missing) if missing and full else {}
        if self.configurations is None:
            rows = extended_rows()
            skipped[EXTENDED] = f"its {len(rows)} rows ({', '.join(rows)}) run with `-c {ALL}`"
        return skipped


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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise QtoolError(f"{path} is not valid UTF-8 TOML ({exc})") from None
    tables = document.get("configurations")
    if not isinstance(tables, dict) or not tables:
        raise QtoolError(f"{path} defines no [configurations.NAME] tables")
    known = set(CalibrateConfig.__dataclass_fields__)
    kinds = {key: type(value) for key, value in vars(CalibrateConfig()).items() if value is not None}
    kinds |= {"keep_fp": list, "groups": (int, str), "p": (int, float), "outlier_ratio": (int, float)}
    kinds |= {"smooth": (int, float), "mixed_precision": str, "method_options": dict}  # None or empty by default
    loaded = []
    for name, options in tables.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise QtoolError(
                f"{path}: configuration name {name!r} must be letters, digits, '.', '_' or '-' (it names files)"
            )
        if not isinstance(options, dict):
            raise QtoolError(
                f"{path}: configurations.{name} is not a table; write [configurations.{name}] and its keys"
            )
        if name == FP32 or name in PEERS or name in NNCF_PEERS:
            raise QtoolError(f"{path}: configuration {name!r} is taken by a built-in row; choose another name")
        unknown = sorted(set(options) - known)
        if unknown:
            raise QtoolError(f"{path}: configuration {name!r} has unknown keys {unknown}; valid keys: {sorted(known)}")
        wrong = sorted(key for key, value in options.items() if not isinstance(value, kinds.get(key, object)))
        if wrong or any(not isinstance(glob, str) for glob in options.get("keep_fp", [])):
            raise QtoolError(f"{path}: configuration {name!r} has values of the wrong type for {wrong or ['keep_fp']}")
        if "keep_fp" in options:
            options = {**options, "keep_fp": tuple(options["keep_fp"])}
        if "method_options" in options:  # [configurations.NAME.method_options] or method_options = {...}
            options = {**options, "method_options": tuple(sorted(options["method_options"].items()))}
        config = CalibrateConfig(**options)
        config.validate()
        loaded.append((name, config))
    return tuple(loaded)


def _write_peer(name: str, fp32: Path, graph: Path, split: QnliSplit, config: ReproduceConfig) -> dict:
    """A peer's graph, written once per FP32 graph, calibration size (and NNCF's budget and version)."""
    key = {"fp32_sha256": sha256_file(fp32), "samples": config.collect.samples, "data": split.describe()}
    arguments = (name, fp32, graph, split, tokenizer_for(fp32), config.collect.samples, config.export.max_length)
    if name in NNCF_PEERS:
        searched = SearchConfig(max_length=config.export.max_length, tune_data=config.tune_data)
        tuning = {k: v for k, v in asdict(searched).items() if k not in ("threads", "tune_data")}
        if config.tune_data is not None:  # its rows, not where they were read from
            tuning["tune_data"] = tuning_examples(split, searched).tune_data["fingerprint"]
        key |= {"tuning": tuning, "ranking_pairs": RANKING_PAIRS, "nncf": importlib.metadata.version("nncf")}
        write = partial(quantize_with_nncf, *arguments, max_drop=SEARCH_MAX_DROP, threads=config.eval.threads,
                        tune_data=config.tune_data)
    else:
        if PEERS[name][0]:  # graphs of an optimizer run that was not told the heads are written again
            key["optimizer"] = OPTIMIZER_FORMAT
        write = partial(quantize_with_ort, *arguments)
    return cached_stage(manifest_path(graph), key, write, artifact=graph, stage="peer quantization")


def _peer_row(name: str, fp32: Path, split: QnliSplit, config: ReproduceConfig) -> dict:
    """A peer quantizer's graph (ONNX Runtime's or NNCF's), scored and timed as it deploys."""
    graph = fp32.with_name(f"{name}.onnx")
    used = _write_peer(name, fp32, graph, split, config)
    evaluation = evaluate_graph(graph, split, config.eval, config.export.max_length, predictions=True)
    extra = {
        "method": name,
        "params": {"calibration_pairs": used["calibration_pairs"]},
        "peer": True,
        "peer_record": used,
        "latency": latency_stage(graph, split, config.bench),
        # scored as deployed, so nothing changes between the two; its kernels saturate where U8S8 does
        "deployed_kernels": weight_kernels(load_model(graph)),
    }
    if "kept_in_float" in used:
        extra["kept_in_float"] = used["kept_in_float"]
    extra |= _vs_fp32(fp32, split, config, vs_fp32=evaluation)
    return _result_row(name, graph, evaluation, used["scope"], extra | _metrics(split, config, evaluation))


def _metrics(split: QnliSplit, config: ReproduceConfig, evaluation: dict) -> dict:
    return {"metrics": evaluation_metrics(split, config.eval, evaluation)}


def _vs_fp32(fp32: Path, split: QnliSplit, config: ReproduceConfig, **evaluations: dict) -> dict:
    """Each named evaluation (with predictions) as its paired drop below FP32's on the eval part (FP32's is cached)."""
    reference = evaluate_graph(fp32, split, config.eval, config.export.max_length, predictions=True)
    return {key: paired_against(reference, evaluation, split, config.eval).to_dict() for key, evaluation in evaluations.items()}


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


def _calibrated_row(
    name: str,
    recipe: CalibrateConfig | AutoMixedPrecision,
    fp32: Path,
    stats,
    split: QnliSplit,
    config: ReproduceConfig,
) -> dict:
    base = recipe.base if isinstance(recipe, AutoMixedPrecision) else recipe
    search = None
    if isinstance(recipe, AutoMixedPrecision):
        search = replace(recipe.search, threads=config.eval.threads, max_length=config.export.max_length,
                         tune_data=config.tune_data)
    made = calibrate_stage(fp32, split, stats, base, fp32.parent, search, config.collect, name, config.executor)
    calibration = made.calibration
    evaluation = evaluate_graph(made.qdq_graph, split, config.eval, config.export.max_length, predictions=True)
    built = build_ort(made.qdq_graph)
    extra = {
        "method": calibration.method,
        "params": calibration.params,
        "weights": calibration.weights,
        "quantized_points": calibration.quantized_points,
        "total_points": calibration.total_points,
        "kept_in_float": list(calibration.kept_in_float),
        "smoothing": (calibration.smoothing or {}).get("alpha"),
        "without_smoothing": None if base.smooth is None else replace(base, smooth=None).recipe_name(),
        "calibration": str(made.calibration_file),
        "latency": latency_stage(Path(built["graph"]), split, config.bench),
    }
    deployed = evaluate_graph(Path(built["graph"]), split, config.eval, config.export.max_length, predictions=True)
    changed = changed_predictions(deployed, evaluation)
    metrics = _metrics(split, config, evaluation)
    extra |= _vs_fp32(fp32, split, config, vs_fp32=evaluation, deployed_vs_fp32=deployed)
    del deployed["predictions"], evaluation["predictions"]
    extra |= {
        "deployed_accuracy": deployed["accuracy"],
        "deployed_correct": deployed["correct"],
        "deployed_changed": changed,  # predictions of the deployed graph that differ from the QDQ graph's
        "deployed_kernels": built["int8_kernels"],
        "deployed_kernels_reason": built["int8_kernels_reason"],
    }
    if made.search is not None:
        extra["search"] = made.search
    return _result_row(name, made.qdq_graph, evaluation, calibration.scope, extra | metrics)


def configuration_row(
    name: str,
    recipe: CalibrateConfig | AutoMixedPrecision | None,
    fp32: Path,
    stats_path: Path,
    split: QnliSplit,
    config: ReproduceConfig,
) -> dict:
    """One configuration of the study (an ONNX Runtime peer when `recipe` is None): a task of the
    executor, which reads the FP32 graph and statistics from their files and writes through the cache.
    The row carries the wall time of each stage it ran or reused (`stage_times`)."""
    with recording_stage_times() as times:
        if recipe is None:
            row = _peer_row(name, fp32, split, config)
        else:
            row = _calibrated_row(name, recipe, fp32, ActivationStats.load(stats_path), split, config)
    return {**row, "stage_times": times}


def _for_tasks(config: ReproduceConfig) -> ReproduceConfig:
    """`config` with ONNX Runtime's threads set to the CPUs a task reserves, when it reserves some."""
    threads = config.executor.task_threads()
    if threads is None:
        return config
    return replace(
        config,
        eval=replace(config.eval, threads=config.eval.threads or threads),
        bench=replace(config.bench, threads=config.bench.threads or threads),
    )


def _recommendation(rows: list[dict], split: QnliSplit, config: ReproduceConfig, folder: Path) -> dict | None:
    """What to deploy: the close calls within the budget, timed again side by side (interleaved)."""
    graphs = {row["configuration"]: Path(row["latency"]["graph"]) for row in contenders(rows, config.max_drop)}
    if not graphs:
        return None
    comparison = interleaved_comparison(graphs, split, config.bench, folder / "deploy-comparison.json")
    return recommend(rows, config.max_drop, comparison)


def stage_time_summary(rows: list[dict], closing: list[dict], wall_seconds: float) -> dict:
    """Seconds per stage over the study (this run's, and what reused stages took when computed), and
    the run's wall time; with the local executor the stages add up to about the wall time."""
    totals: dict[str, dict] = {}
    for entry in [e for row in rows for e in row.get("stage_times", [])] + closing:
        total = totals.setdefault(entry["stage"], {"runs": 0, "reused": 0, "seconds": 0.0, "computed_seconds": 0.0})
        total["runs"] += 1
        total["reused"] += int(entry["reused"])
        total["seconds"] += entry["seconds"]
        total["computed_seconds"] += entry["computed_seconds"] or 0.0
    for total in totals.values():
        total["seconds"], total["computed_seconds"] = round(total["seconds"], 1), round(total["computed_seconds"], 1)
    return {"wall_seconds": round(wall_seconds, 1), "stages": totals}


def run_reproduce(model: str | None, split: QnliSplit, config: ReproduceConfig, artifacts: Path) -> dict:
    """Run every selected configuration; write ARTIFACTS/report/ and return the results document."""
    artifacts = Path(artifacts)
    configurations = config.selected()
    if any(isinstance(r, AutoMixedPrecision) or n == ACCURACY_CONTROL for n, r in configurations.items()):
        tuning_examples(split, SearchConfig(tune_data=config.tune_data))  # the searches' error before anything runs
    finetune_config = FinetuneConfig(**{**asdict(config.finetune), "seed": config.seed})
    started = time.perf_counter()
    with recording_stage_times() as times:
        with timed_stage("fine-tune or load the model"):
            exported = export_stage(model, split, artifacts, config.export, finetune_config, allow_finetune=True)
        fp32 = exported.graph
        stats, stats_path = collect_stage(fp32, split, config.collect)
        analysis, analysis_paths = cached_analysis(stats, stats_path, OutlierConfig(), fp32.parent / "analysis")
        fp32_evaluation = evaluate_graph(fp32, split, config.eval, config.export.max_length, predictions=True)
        fp32_row = {"latency": latency_stage(fp32, split, config.bench)}
    fp32_row |= _metrics(split, config, fp32_evaluation)
    rows = [{**_result_row(FP32, fp32, fp32_evaluation, "none (FP32)", fp32_row), "stage_times": times}]
    tasks = [(name, recipe, fp32, stats_path, split, _for_tasks(config)) for name, recipe in configurations.items()]
    rows += run_tasks(
        configuration_row,
        tasks,
        config.executor,
        "study configurations",
        label=lambda row: f"{row['configuration']}: {row['accuracy']:.4f}",
    )
    on_backends, left_out = backend_rows(rows, split, config)
    rows += on_backends
    with recording_stage_times() as closing:
        recommendation = _recommendation(rows, split, config, artifacts / "report")
        comparison = tool_comparison(rows, split, config, artifacts / "report")

    result = {
        "model": exported.source.name,
        "model_sha256": exported.source.content_hash,
        "base_model": (exported.finetune or {}).get("key", {}).get("base_model", exported.source.name),
        "data_split": split.describe(),
        "finetune": exported.finetune,
        "export_parity": exported.manifest["parity"]["max_abs_logit_diff"],
        "statistics": {
            "samples": stats.manifest["samples"],
            "sample_sources": stats.manifest["sample_sources"],
            "tokens": stats.manifest["tokens"],
        },
        "analysis": {"layers": analysis["layers"], "definitions": analysis["definitions"], "files": analysis_paths},
        "results": rows,
        "skipped": config.skipped() | left_out,
        "recommendation": recommendation,
        "tool_comparison": comparison,
        "environment": deployment_environment(config.bench.threads),
        "timing": {"warmup": config.bench.warmup, "iterations": config.bench.iterations},
        "stage_times": stage_time_summary(rows, closing, time.perf_counter() - started),
    }
    write_study_report(result, artifacts / "report", analysis_paths)
    return result


def write_study_report(result: dict, folder: Path, analysis_paths: dict[str, str]) -> None:
    """results.json, report.md, report.html and the study figures in `folder`."""
    figures = write_study_figures(result, folder)
    figures |= {f"search_{r['configuration']}": r["search"]["figure"] for r in result["results"] if r.get("search")}
    figures["kurtosis_by_layer"] = analysis_paths["kurtosis_by_layer"]
    figures["residual_channel_absmax"] = analysis_paths["residual_heatmap"]
    result["figures"] = figures
    write_json(folder / "results.json", result)
    markdown = write_markdown_report(result, folder / "report.md")
    write_html_report(markdown, figures, folder / "report.html", f"qtool study: {result['model']}")
