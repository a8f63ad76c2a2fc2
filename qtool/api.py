"""`import qtool`: the documented functions behind every `qtool` command.

Each function takes paths (or names) and keyword options whose `None` means the stage's own
default, checks every rule once, raises `QtoolError` with a one-line fix for bad input, and returns
a typed result whose `to_dict()` is the document `qtool <command> --json` prints. Data: `data` is a
file (CSV, TSV, JSONL, Parquet), a GLUE task folder, a saved dataset, `"hub:NAME[:CONFIG]"` or
`"hub"` (default: `$QTOOL_DATA`, else GLUE QNLI from the hub), or a `qtool.DataConfig` that also
names its columns, task or splits.

    import qtool
    graph = qtool.export("my-org/my-bert-qnli", data="data/QNLI").graph
    made = qtool.calibrate(graph, method="percentile", p=99.99, data="data/QNLI")
    deployed = qtool.build(made.qdq_graph, backend="ort").artifact
    print(made.qdq_accuracy, qtool.evaluate(deployed, data="data/QNLI").accuracy)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from qtool.data.split import DataConfig  # qtool.DataConfig: data with its columns, task or splits named
from qtool.defaults import BASE_METHOD, PEG_LAYOUT
from qtool.errors import QtoolError

ARTIFACTS_ENV = "QTOOL_ARTIFACTS"
log = logging.getLogger(__name__)
AUTO_METHOD = "auto"  # calibrate: search the points to keep in float within a max accuracy drop


# -- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    """A command's result: typed fields for code, `details` for everything `--json` prints."""

    details: dict = field(repr=False)

    def to_dict(self) -> dict:
        return dict(self.details)


@dataclass(frozen=True)
class Finetuned(Result):
    folder: Path
    eval_accuracy: float


@dataclass(frozen=True)
class Exported(Result):
    graph: Path
    max_abs_logit_diff: float  # against PyTorch on real batches


@dataclass(frozen=True)
class Statistics(Result):
    stats: Path
    points: int


@dataclass(frozen=True)
class Analysis(Result):
    outputs: dict  # what was written: analysis.json, .csv, figures


@dataclass(frozen=True)
class Calibrated(Result):
    recipe: str
    calibration: Path
    qdq_graph: Path
    fp32_accuracy: float | None  # fractions of the eval part; None when not evaluated
    qdq_accuracy: float | None


@dataclass(frozen=True)
class Evaluation(Result):
    accuracy: float  # a fraction of `examples`
    correct: int
    examples: int


@dataclass(frozen=True)
class Built(Result):
    backend: str
    artifact: Path  # the ONNX Runtime graph or the TensorRT engine


@dataclass(frozen=True)
class Benchmark(Result):
    runs: list


@dataclass(frozen=True)
class Study(Result):
    report: Path
    rows: list


# -- shared options --------------------------------------------------------------------------------
def configured(cls, base=None, **overrides: Any):
    """A stage config with only the options given replaced; None keeps the config's default."""
    base = base or cls()
    known = {f.name for f in fields(cls)}
    return replace(base, **{k: v for k, v in overrides.items() if v is not None and k in known})


def artifacts_folder(path: Path | str | None) -> Path:
    return Path(path or os.environ.get(ARTIFACTS_ENV) or "artifacts")


def data_config(data=None, seed: int | None = None, max_length: int | None = None):
    """Where the data comes from, how it is read and split, and how many tokens a text or pair keeps.
    `data`: a path or source text (`hub:NAME[:CONFIG]`), or a `qtool.DataConfig` naming its columns,
    task or splits too."""
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 8):
        raise QtoolError(f"--max-length must be a whole number of tokens, at least 8, got {max_length!r}")
    if isinstance(data, DataConfig):
        return configured(DataConfig, data, seed=seed, max_length=max_length)
    return configured(DataConfig, source=str(data) if data is not None else None, seed=seed, max_length=max_length)


def load_data(data=None, seed: int | None = None, max_length: int | None = None):
    """The data config and the split it names."""
    from qtool.data import load_data as load

    config = data_config(data, seed, max_length)
    return config, load(config)


def check_positions(graph: Path, max_length: int, tokenizer_path: Path | None = None) -> None:
    """A one-line error when `max_length` tokens exceed what the graph's model (and its tokenizer) take."""
    from qtool.deployment.model_files import model_max_positions, tokenizer_for_model

    try:
        tokenizer = tokenizer_for_model(graph, tokenizer_path)
    except QtoolError:
        tokenizer = None  # a graph without a recorded tokenizer: its position table decides
    limit = model_max_positions(graph, tokenizer)
    if limit is not None and max_length > limit:
        raise QtoolError(f"--max-length {max_length} exceeds the {limit} positions of {graph}; use at most {limit}")


def collect_config(samples=None, batch_size=None, threads=None, max_length=None, bins=None):
    from qtool.analysis.collect import CollectConfig

    config = configured(
        CollectConfig, samples=samples, batch_size=batch_size, threads=threads, max_length=max_length,
        histogram_bins=bins,
    )
    config.validate()
    return config


def eval_config(batch_size=None, limit=None, threads=None, part=None):
    from qtool.deployment.evaluate import EvalConfig

    config = configured(EvalConfig, batch_size=batch_size, limit=limit, threads=threads, part=part)
    config.validate()
    return config


def executor_config(kind=None, address=None, cpus_per_task=None):
    """Where independent tasks run (local, or a Ray cluster), checked."""
    from qtool.executor import ExecutorConfig

    config = configured(ExecutorConfig, kind=kind, address=address, cpus_per_task=cpus_per_task)
    config.validate()
    return config


def _graph(path: Path | str) -> Path:
    from qtool.runners.ort import check_onnx_file

    return check_onnx_file(Path(path))


# -- the model -------------------------------------------------------------------------------------
def finetune(model=None, *, data=None, seed=None, epochs=None, learning_rate=None, batch_size=None,
             warmup_ratio=None, max_steps=None, max_length=None, force=False, artifacts=None) -> Finetuned:
    """Fine-tune `model` (a hub id, a folder, or None for the default) into a classifier for the
    data's labels, cached under ARTIFACTS/models/."""
    from qtool.models.finetune import FinetuneConfig
    from qtool.stages.model import finetune_stage

    config = configured(
        FinetuneConfig, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
        warmup_ratio=warmup_ratio, max_steps=max_steps, seed=seed,
    )
    data_options, split = load_data(data, seed, max_length)
    folder, manifest = finetune_stage(model, split, config, artifacts_folder(artifacts), data_options.max_length, force)
    details = {key: manifest[key] for key in ("eval_accuracy", "eval_examples", "steps", "train_seconds")}
    details |= {"model_dir": str(folder), "data_split": split.describe()}
    return Finetuned(details, folder=Path(folder), eval_accuracy=manifest["eval_accuracy"])


def export(model=None, *, data=None, seed=None, output=None, opset=None, max_length=None, force=False,
           artifacts=None) -> Exported:
    """The classifier as FP32 ONNX (with its tokenizer and a parity manifest), reused when unchanged."""
    from qtool.models.finetune import FinetuneConfig
    from qtool.models.onnx_export import ExportConfig
    from qtool.stages.model import export_stage

    data_options, split = load_data(data, seed, max_length)
    config = configured(ExportConfig, opset=opset, max_length=data_options.max_length)
    made = export_stage(
        model, split, artifacts_folder(artifacts), config, configured(FinetuneConfig, seed=seed),
        Path(output) if output else None, force=force,
    )
    details = {**made.manifest, "onnx": str(made.graph)}
    return Exported(details, graph=made.graph, max_abs_logit_diff=made.manifest["parity"]["max_abs_logit_diff"])


# -- statistics ------------------------------------------------------------------------------------
def collect(graph, *, data=None, seed=None, samples=None, batch_size=None, threads=None, bins=None,
            max_length=None, stats=None, force=False) -> Statistics:
    """Activation statistics at every quantization point of an FP32 graph, streamed over the
    calibration pairs (cached in `<graph>.stats.npz`, or `stats`)."""
    from qtool.fileio import distinct_output
    from qtool.stages.statistics import collect_stage

    config = collect_config(samples, batch_size, threads, data_config(data, seed, max_length).max_length, bins)
    graph = _graph(graph)
    check_positions(graph, config.max_length)
    if stats is not None:
        distinct_output(Path(stats), graph)
    split = load_data(data, seed, max_length)[1]
    result, target = collect_stage(graph, split, config, Path(stats) if stats else None, force)
    manifest = result.manifest
    details = {key: manifest[key] for key in ("samples", "sample_sources", "tokens", "model")}
    details |= {"stats": str(target), "points": len(result.points), "data_split": manifest["data"]}
    return Statistics(details, stats=Path(target), points=len(result.points))


def analyze(graph, *, data=None, seed=None, samples=None, batch_size=None, threads=None, max_length=None,
            stats=None, out=None, sigma=None, figures=True, force=False) -> Analysis:
    """Outlier measures at every point (kurtosis, top-1 % channel energy, outlier channels) and their
    files in `out` (default: `<graph folder>/analysis`). Reads `stats` or the statistics beside the
    graph; when they are missing or were made with other options, collects them on `data`."""
    from qtool.analysis.outliers import OutlierConfig
    from qtool.stages.statistics import analyze_stage, statistics_for

    graph = _graph(graph)
    outliers = configured(OutlierConfig, sigma=sigma)
    outliers.validate()
    split = None
    if stats is None or data is not None:
        data_options, split = load_data(data, seed, max_length)
        check_positions(graph, data_options.max_length)
    config = collect_config(samples, batch_size, threads, data_options.max_length if split else None)
    asked = stats or force or samples is not None or max_length is not None
    collected = None if asked else _statistics_beside(graph, split)
    if collected is None:
        collected = statistics_for(graph, split, config, Path(stats) if stats else None, force)
    document, paths = analyze_stage(collected, outliers, Path(out) if out else graph.parent / "analysis", figures)
    return Analysis({**document, "outputs": paths}, outputs=paths)


def _statistics_beside(graph: Path, split):
    """The statistics file `collect` wrote beside `graph`, whatever its options, if it belongs to this
    model and data split (so `analyze` after `collect --samples 32` reads those 32 pairs)."""
    from qtool.analysis.collect import default_stats_path
    from qtool.stages.statistics import statistics_for

    existing = default_stats_path(graph)
    if not existing.is_file():
        return None
    try:
        collected = statistics_for(graph, split, stats_path=existing)
    except QtoolError:
        return None
    log.info("reading %s (%s pairs); --samples N collects again", existing, collected.manifest.get("samples"))
    return collected


# -- calibration -----------------------------------------------------------------------------------
def calibration_methods(options: bool = False):
    """The names `calibrate(method=...)` takes: every registered calibrator, and `auto`; with
    `options`, a dict of each calibrator's options (default, help, bounds) instead."""
    from qtool.calibrators.base import describe_options
    from qtool.calibrators.methods import CALIBRATORS

    if options:
        return {name: describe_options(cls.options) for name, cls in CALIBRATORS.items()}
    return (*CALIBRATORS, AUTO_METHOD)


def register_calibrator(calibrator: type) -> None:
    """Make a `qtool.calibrators.base.Calibrator` subclass available by its `name` to `calibrate`,
    the CLI's `--method` and study configuration files."""
    from qtool.calibrators.base import Calibrator
    from qtool.calibrators.methods import CALIBRATORS

    if not (isinstance(calibrator, type) and issubclass(calibrator, Calibrator)) or not getattr(calibrator, "name", ""):
        raise QtoolError("a calibrator is a subclass of qtool.calibrators.base.Calibrator with a `name`")
    if calibrator.name == AUTO_METHOD:
        raise QtoolError(f"{AUTO_METHOD!r} is the search, not a calibrator name; choose another name")
    if not (isinstance(calibrator.options, type) and dataclasses.is_dataclass(calibrator.options)):
        raise QtoolError(
            "a calibrator's `options` is a dataclass of the keywords its constructor takes, each a "
            "`qtool.calibrators.base.method_option(default, help, ...)` field (or leave it unset for none)"
        )
    CALIBRATORS[calibrator.name] = calibrator


def recipe_configs(method=None, *, base_method=None, search_options: dict | None = None, **recipe_options):
    """The recipe (`CalibrateConfig`) and, for method `auto`, the `SearchConfig` of calibrate's options."""
    from qtool.calibrators.base import FLAGGED_METHOD_OPTIONS, option_names
    from qtool.calibrators.methods import CALIBRATORS
    from qtool.quantization.calibration import CalibrateConfig
    from qtool.quantization.search import SearchConfig

    search_options = {k: v for k, v in (search_options or {}).items() if v is not None}
    if method is not None and method not in calibration_methods():
        raise QtoolError(f"unknown calibration method {method!r}; choose one of {', '.join(calibration_methods())}")
    auto = method == AUTO_METHOD
    only_auto = {"max_drop", "confidence", "tune_samples", "sensitivity_samples", "tune_data"} & set(search_options)
    if not auto and (base_method is not None or only_auto):
        raise QtoolError("--base-method, --max-drop, --confidence, --tune-samples, --sensitivity-samples and --tune-data "
                         "need --method auto")
    if auto and (recipe_options.get("keep_fp") or recipe_options.get("mixed_precision")):
        raise QtoolError("--method auto chooses the points kept in float itself; drop --keep-fp/--mixed-precision")
    chosen = (base_method or BASE_METHOD) if auto else (method or CalibrateConfig.method)
    if chosen not in CALIBRATORS:
        raise QtoolError(f"unknown --base-method {chosen!r}; choose one of {', '.join(CALIBRATORS)}")
    takes = option_names(CALIBRATORS[chosen])
    foreign = [k for k in FLAGGED_METHOD_OPTIONS if recipe_options.get(k) is not None and k not in takes]
    if foreign:
        owners = sorted(name for name, cls in CALIBRATORS.items() if foreign[0] in option_names(cls))
        raise QtoolError(
            f"--{foreign[0]} is an option of --method {' or '.join(owners)}, not of {chosen}; drop it or change the method"
        )
    recipe_options = {k: tuple(v) if k == "keep_fp" and v else v for k, v in recipe_options.items()}
    recipe_options["method_options"] = tuple(sorted((recipe_options.get("method_options") or {}).items())) or None
    config = configured(CalibrateConfig, method=chosen, **recipe_options)
    config.validate()
    search = configured(SearchConfig, **search_options) if auto else None
    if search is not None:
        search.validate()
        if config.weights == "folded":
            raise QtoolError("--method auto switches points to float one at a time, which folded weights cannot; "
                             "search with --weights per-channel")
    return config, search


def calibrate(graph, method=None, *, p=None, groups=None, grouping=None, permute=None, scope=None, weights=None,
              weight_bits=None, keep_fp=None, mixed_precision=None, outlier_ratio=None, smooth=None,
              base_method=None, max_drop=None, confidence=None, tune_samples=None, sensitivity_samples=None, stats=None,
              out=None, tune_data=None,
              max_length=None, method_options=None,
              evaluate=True, data=None, seed=None, samples=None, batch_size=None, limit=None, threads=None,
              executor=None, address=None, cpus_per_task=None) -> Calibrated:
    """Scales for the FP32 `graph` with one method (see `calibration_methods()`), written as
    `<recipe>.calib.json` and `<recipe>.qdq.onnx` in `out` (default: beside the graph); with
    `evaluate`, the eval accuracy of FP32 and of the QDQ graph. Method `auto` searches the points to
    keep in float so that, at one-sided `confidence`, the drop below FP32 on the tuning part stays within
    `max_drop` points (`tune_data`: tuning pairs from another source instead). `method_options`
    (a dict) are a method's options that have no keyword here, e.g. a registered calibrator's own."""
    from qtool.stages.calibrate import calibrate_and_evaluate

    max_length = data_config(data, seed, max_length).max_length
    config, search = recipe_configs(
        method, base_method=base_method,
        search_options=dict(max_drop=max_drop, confidence=confidence, tune_samples=tune_samples,
                            sensitivity_samples=sensitivity_samples, tune_data=tune_data,
                            batch_size=batch_size, threads=threads, max_length=max_length),
        p=p, groups=groups, grouping=grouping, permute=permute, scope=scope, weights=weights,
        weight_bits=weight_bits, keep_fp=keep_fp, mixed_precision=mixed_precision, outlier_ratio=outlier_ratio,
        smooth=smooth, method_options=method_options,
    )
    collecting = collect_config(samples, batch_size, threads, max_length)
    evaluation = eval_config(batch_size, limit, threads) if evaluate else None
    tasks = executor_config(executor, address, cpus_per_task)
    graph = _graph(graph)
    check_positions(graph, max_length)
    split = load_data(data, seed, max_length)[1]
    details = calibrate_and_evaluate(
        graph, split, config, search, collecting, Path(stats) if stats else None, Path(out) if out else None,
        evaluation, tasks,
    )
    return Calibrated(
        details, recipe=details["recipe"], calibration=Path(details["calibration"]),
        qdq_graph=Path(details["qdq_graph"]), fp32_accuracy=details.get("fp32_accuracy"),
        qdq_accuracy=details.get("qdq_accuracy"),
    )


def quantize(graph, calibration, *, output=None, peg_layout=PEG_LAYOUT) -> Path:
    """The QDQ graph of an existing calibration file (refused if it was made for another model)."""
    from qtool.stages.calibrate import quantize_stage

    return Path(quantize_stage(Path(graph), Path(calibration), Path(output) if output else None, peg_layout))


def export_scales(calibration, fmt, *, output=None, model=None, trt_version=None) -> dict:
    """A calibration's per-tensor activation scales in another tool's format (`fmt`)."""
    from qtool.stages.calibrate import export_scales_stage

    loaded, summary = export_scales_stage(
        Path(calibration), fmt, Path(output) if output else None, Path(model) if model else None, trt_version
    )
    return {**summary, "smoothing": loaded.smoothing}


# -- deployment ------------------------------------------------------------------------------------
def evaluate(graph, *, data=None, seed=None, part=None, batch_size=None, limit=None, threads=None,
             max_length=None, tokenizer=None) -> Evaluation:
    """Accuracy of a classifier on a data part: an ONNX graph through ONNX Runtime on the CPU (cached
    beside it), another backend's artifact (`backends()`) through that backend's runner."""
    from qtool.deployment.evaluate import evaluate_graph, evaluation_metrics
    from qtool.deployment.model_files import check_model_files

    config = eval_config(batch_size, limit, threads, part)
    model = check_model_files([graph])[0]
    data_options, split = load_data(data, seed, max_length)
    tokenizer = Path(tokenizer) if tokenizer else None
    check_positions(model, data_options.max_length, tokenizer)
    result = evaluate_graph(model, split, config, data_options.max_length, False, tokenizer, predictions=True)
    metrics = evaluation_metrics(split, config, result)
    details = {k: v for k, v in result.items() if k != "predictions"} | {"data_split": split.describe(), "metrics": metrics}
    return Evaluation(details, accuracy=result["accuracy"], correct=result["correct"], examples=result["examples"])


def build(graph, backend=None, *, output=None, **options) -> Built:
    """A deployable artifact of `graph` for `backend` (default: the first registered, `ort`: the
    ONNX Runtime CPU graph; `trt`: a TensorRT engine). `options` are the backend's own (`backends()`
    lists them; ort: int8_kernels; trt: fp16, tf32, quantize_head, batch, sequence, workspace_mib,
    timing_cache, optimization_level); None keeps an option's default."""
    from qtool.deployment.backends import BACKENDS, backend_named
    from qtool.stages.deploy import build_stage

    chosen = backend_named(backend or next(iter(BACKENDS)))
    report = build_stage(Path(graph), chosen.name, Path(output) if output else None, chosen.make_options(**options))
    return Built(report, backend=chosen.name, artifact=Path(report["artifact"]))


def backends() -> dict[str, tuple[str, ...]]:
    """Every registered backend and the build options it takes."""
    from qtool.deployment.backends import BACKENDS

    return {name: backend.option_names() for name, backend in BACKENDS.items()}


def register_backend(backend) -> None:
    """Make a `qtool.deployment.backends.Backend` available to `build`, `bench` and `evaluate` of its
    artifacts (by file suffix), and to the CLI's `--backend`."""
    from qtool.deployment.backends import register_backend as register

    register(backend)


def bench(models: Sequence, *, compare=False, batch_sizes=None, sequence_lengths=None, warmup=None,
          iterations=None, duration=None, threads=None, inputs=None, providers=None, isolated=False,
          with_eval=False, data=None, seed=None, part=None, limit=None, tokenizer=None) -> Benchmark:
    """Latency, throughput and memory of each model (ONNX graphs or TensorRT engines); with `compare`, interleaved
    so that machine noise hits all alike; with `with_eval`, accuracy too; `tokenizer`: overrides the exported one."""
    from qtool.deployment.bench import BenchConfig
    from qtool.stages.deploy import bench_stage

    config = configured(
        BenchConfig, batch_sizes=tuple(batch_sizes) if batch_sizes else None, warmup=warmup, iterations=iterations,
        sequence_lengths=tuple(sequence_lengths) if sequence_lengths else None, duration_seconds=duration,
        threads=threads, inputs=inputs, providers=tuple(providers) if providers else None,
    )
    evaluation = eval_config(limit=limit, threads=threads, part=part) if with_eval else None
    result = bench_stage([Path(m) for m in models], config, data_config(data, seed), compare, isolated, evaluation,
                         Path(tokenizer) if tokenizer else None)
    return Benchmark(result, runs=result.get("runs", []))


def reproduce(model=None, *, data=None, seed=None, configurations=None, config_file=None, max_drop=None,
              samples=None, limit=None, max_length=None, artifacts=None, executor=None, address=None,
              cpus_per_task=None, tune_data=None, backends=None, warmup=None, iterations=None) -> Study:
    """The study end to end (every stage cached): ARTIFACTS/report/ with results.json, report.md and
    report.html. `configurations` picks a subset by name (see `qtool reproduce --help`); `backends`
    the CPU backends it deploys on (`["ort"]`: ONNX Runtime alone; None: every one installed);
    `warmup` and `iterations` the untimed and timed runs of each latency measurement."""
    from qtool.deployment.bench import BenchConfig
    from qtool.models.onnx_export import ExportConfig
    from qtool.stages.backend_rows import row_backend_names
    from qtool.stages.study import ReproduceConfig, load_configuration_file, run_reproduce

    length = data_config(data, seed, max_length).max_length
    config = configured(
        ReproduceConfig, seed=seed, configurations=tuple(configurations) if configurations else None,
        max_drop=max_drop, collect=collect_config(samples, max_length=length), eval=eval_config(limit=limit),
        export=ExportConfig(max_length=length),
        extra_configurations=load_configuration_file(Path(config_file)) if config_file else None,
        executor=executor_config(executor, address, cpus_per_task), tune_data=tune_data,
        backends=row_backend_names(backends),
        bench=configured(BenchConfig, ReproduceConfig().bench, warmup=warmup, iterations=iterations),
    )
    config.validate()
    split = load_data(data, seed, max_length)[1]
    folder = artifacts_folder(artifacts)
    result = run_reproduce(model, split, config, folder)
    return Study(result, report=folder / "report" / "report.md", rows=result.get("results", []))
