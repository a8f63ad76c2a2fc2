"""The `qtool` commands: each parses its options, calls one stage and renders the result."""

from __future__ import annotations

import functools
import inspect
import logging
import os
from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.logging import RichHandler
from rich.markup import escape

from qtool import __version__
from qtool.cli import options as o
from qtool.cli import render
from qtool.defaults import BASE_METHOD, PEG_FORM
from qtool.errors import QtoolError
from qtool.fileio import distinct_output

app = typer.Typer(
    name="qtool",
    help="Post-training INT8 quantization of BERT-family QNLI classifiers: export, measure outliers, "
    "calibrate, build and benchmark. Data: --data FOLDER (GLUE TSV) or $QTOOL_DATA, else the hub.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def configured(cls, base=None, **overrides: Any):
    """A stage config with only the options the user gave replaced; None keeps the config's default."""
    base = base or cls()
    known = {f.name for f in fields(cls)}
    return replace(base, **{k: v for k, v in overrides.items() if v is not None and k in known})


def artifacts_folder(path: Path | None) -> Path:
    return Path(path or os.environ.get(o.ARTIFACTS_ENV) or "artifacts")


def data_options(data: str | None, seed: int | None):
    from qtool.data import DataConfig

    return configured(DataConfig, source=data, seed=seed)


def load_split(data: str | None, seed: int | None):
    """The data config of the options and the QNLI split it names (loaded after the options are checked)."""
    from qtool.data import load_qnli

    config = data_options(data, seed)
    return config, load_qnli(config)


def int_list(values: list[str] | None, option: str) -> tuple[int, ...] | None:
    """Repeatable or comma-separated integers: `--batch 1,8` or `--batch 1 --batch 8`."""
    if not values:
        return None
    try:
        return tuple(int(v) for value in values for v in value.split(",") if v.strip())
    except ValueError:
        raise QtoolError(f"{option} takes whole numbers such as 1,8; got {' '.join(values)}") from None


def int_triple(value: str | None, option: str) -> tuple[int, int, int] | None:
    parts = int_list([value], option) if value is not None else None
    if value is not None and (parts is None or len(parts) != 3):
        raise QtoolError(f"{option} takes MIN,OPT,MAX such as 1,1,32; got {value}")
    return parts


def _setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=render.stderr, show_path=False, show_time=False, markup=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("qtool").setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass


def command_help(docstring: str) -> str:
    """A docstring as `--help` shows it: each paragraph on one line for the terminal to wrap, and
    brackets literal (`pip install 'qtool[trt]'` is not Rich markup)."""
    paragraphs = inspect.cleandoc(docstring).split("\n\n")
    return escape("\n\n".join(" ".join(paragraph.split("\n")) for paragraph in paragraphs))


def command(name: str | None = None):
    """Register a command whose QtoolError becomes a one-line message and exit code 2, with no traceback."""

    def register(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except QtoolError as exc:
                render.error(str(exc))
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                render.stderr.print("interrupted")
                raise typer.Exit(130) from None
            except OSError as exc:  # a path that is a folder, missing or not writable, met while reading or writing
                render.error(render.path_problem(exc))
                raise typer.Exit(2) from None

        return app.command(name, help=command_help(function.__doc__ or ""))(wrapper)

    return register


def _print_version(value: bool) -> None:
    if value:
        render.stdout.print(__version__)
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details on stderr.")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the qtool version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    _setup_logging(verbose)


@command()
def finetune(
    model: o.Model = None, data: o.Data = None, seed: o.Seed = None, epochs: o.Epochs = None, lr: o.LearningRate = None,
    batch_size: o.BatchSize = None, warmup_ratio: o.WarmupRatio = None, max_steps: o.MaxSteps = None,
    force: o.RetrainForce = False, artifacts: o.Artifacts = None, as_json: o.Json = False,
) -> None:
    """Fine-tune --model into a QNLI classifier (AdamW, linear warm-up and decay, fixed seed).

    The result is saved in Hugging Face format under ARTIFACTS/models/ with a manifest, and reused
    when the model, data, seed and hyper-parameters match.
    """
    from qtool.models.finetune import FinetuneConfig
    from qtool.stages.model import finetune_stage

    data_config, split = load_split(data, seed)
    config = configured(
        FinetuneConfig, epochs=epochs, learning_rate=lr, batch_size=batch_size, warmup_ratio=warmup_ratio,
        max_steps=max_steps, seed=seed,
    )
    folder, manifest = finetune_stage(model, split, config, artifacts_folder(artifacts), data_config.max_length, force)
    summary = {key: manifest[key] for key in ("eval_accuracy", "eval_examples", "steps", "train_seconds")}
    summary |= {"model_dir": str(folder), "data_split": split.describe()}
    if as_json:
        return render.print_json(summary)
    render.print_fields(
        "fine-tuned classifier",
        [("folder", folder), ("eval accuracy", f"{summary['eval_accuracy']:.4f}"),
         ("eval pairs", summary["eval_examples"]), ("steps", summary["steps"]),
         ("train time", f"{summary['train_seconds']:.0f} s"), ("data", split.name)],
    )


@command()
def export(
    model: o.Model = None, data: o.Data = None, seed: o.Seed = None, output: o.ExportOutput = None,
    opset: o.Opset = None, force: o.ReexportForce = False, artifacts: o.Artifacts = None, as_json: o.Json = False,
) -> None:
    """Export the QNLI classifier to FP32 ONNX and check it against PyTorch on real QNLI batches.

    A --model without a classification head uses its cached fine-tuned copy (see `qtool finetune`).
    Writes the graph, its tokenizer beside it and a manifest with the parity figure; a graph of the
    same weights and options is reused unless --force.
    """
    from qtool.exporter.onnx_export import ExportConfig
    from qtool.models.finetune import FinetuneConfig
    from qtool.stages.model import export_stage

    data_config, split = load_split(data, seed)
    config = configured(ExportConfig, opset=opset, max_length=data_config.max_length)
    exported = export_stage(
        model, split, artifacts_folder(artifacts), config, configured(FinetuneConfig, seed=seed), output, force=force
    )
    if as_json:
        return render.print_json({**exported.manifest, "onnx": str(exported.graph)})
    parity = exported.manifest["parity"]
    render.print_fields(
        "FP32 ONNX export",
        [("graph", exported.graph), ("source model", exported.source.name), ("opset", exported.manifest["opset"]),
         ("max |logit diff| vs torch", f"{parity['max_abs_logit_diff']:.2e} (tolerance {parity['tolerance']:g})"),
         ("parity batches", ", ".join("x".join(map(str, s)) for s in parity["batch_shapes"]))],
    )


@command("eval")
def eval_command(
    model_path: o.EvalGraph, data: o.Data = None, seed: o.Seed = None, part: o.Part = None,
    batch_size: o.BatchSize = None, limit: o.Limit = None, threads: o.Threads = None, tokenizer: o.Tokenizer = None,
    as_json: o.Json = False,
) -> None:
    """Accuracy of an ONNX classifier on a QNLI part, through ONNX Runtime on the CPU."""
    from qtool.deployment.evaluate import EvalConfig, evaluate_graph
    from qtool.runners.ort import check_onnx_file

    config = configured(EvalConfig, part=part, batch_size=batch_size, limit=limit, threads=threads)
    config.validate()
    check_onnx_file(model_path)
    data_config, split = load_split(data, seed)
    result = evaluate_graph(model_path, split, config, data_config.max_length, False, tokenizer)
    if as_json:
        return render.print_json(result)
    render.print_fields(
        "accuracy",
        [("model", model_path), ("accuracy", f"{result['accuracy']:.4f} ({result['correct']}/{result['examples']})"),
         ("throughput", f"{result['examples_per_second']:.0f} pairs/s"), ("data", f"{split.name}, part {config.part}")],
    )


def collect_config(samples, batch_size, threads, max_length, bins=None):
    from qtool.analysis.collect import CollectConfig

    return configured(
        CollectConfig, samples=samples, batch_size=batch_size, threads=threads, max_length=max_length,
        histogram_bins=bins,
    )


@command()
def collect(
    model_path: o.Fp32Graph, data: o.Data = None, seed: o.Seed = None, samples: o.Samples = None,
    batch_size: o.BatchSize = None, threads: o.Threads = None, bins: o.Bins = None, stats: o.Stats = None,
    force: o.Force = False, as_json: o.Json = False,
) -> None:
    """Stream activation statistics at every quantization point over the calibration pairs.

    Per tensor: count, min, max, four moments (float64); per channel: min, max, energy; a histogram
    of |x|. Padding is excluded. Every calibrator and `qtool analyze` read this one file.
    """
    from qtool.runners.ort import check_onnx_file
    from qtool.stages.statistics import collect_stage

    config = collect_config(samples, batch_size, threads, data_options(data, seed).max_length, bins)
    config.validate()
    check_onnx_file(model_path)
    if stats is not None:
        distinct_output(stats, model_path)
    split = load_split(data, seed)[1]
    result, target = collect_stage(model_path, split, config, stats, force)
    manifest = result.manifest
    summary = {key: manifest[key] for key in ("samples", "sample_sources", "tokens", "model")}
    summary |= {"stats": str(target), "points": len(result.points), "data_split": manifest["data"]}
    if as_json:
        return render.print_json(summary)
    render.print_fields(
        "activation statistics",
        [("file", target), ("quantization points", summary["points"]), ("real tokens", summary["tokens"]),
         ("pairs", f"{summary['samples']} ({summary['sample_sources']})"), ("data", split.name)],
    )


@command()
def analyze(
    model_path: o.Fp32Graph, data: o.Data = None, seed: o.Seed = None, samples: o.Samples = None,
    batch_size: o.BatchSize = None, threads: o.Threads = None, stats: o.Stats = None, out: o.AnalysisOut = None,
    top: o.Top = None, sigma: o.Sigma = None, figures: o.Figures = True, force: o.Force = False,
    as_json: o.Json = False, wide: o.Wide = False,
) -> None:
    """Measure the outliers: kurtosis, top-1 % channel energy and outlier channels at every point.

    Collects statistics first when no matching statistics file exists (see `qtool collect`).
    """
    from qtool.analysis.outliers import OutlierConfig
    from qtool.runners.ort import check_onnx_file
    from qtool.stages.statistics import analyze_stage, statistics_for

    check_onnx_file(model_path)
    if top is not None and top < 1:
        raise QtoolError(f"--top must be at least 1, got {top}")
    config = configured(OutlierConfig, sigma=sigma)
    config.validate()
    data_config, split = load_split(data, seed) if stats is None or data is not None else (None, None)
    max_length = data_config.max_length if data_config else None
    collected = statistics_for(model_path, split, collect_config(samples, batch_size, threads, max_length), stats, force)
    document, paths = analyze_stage(collected, config, out or model_path.parent / "analysis", figures)
    if as_json:
        return render.print_json({**document, "outputs": paths})
    render.analysis_tables(document, paths, top, wide)


def calibrate_configs(method, base_method, search_options: dict, recipe_options: dict):
    """The recipe and, for --method auto, the search configuration of `qtool calibrate`'s options."""
    from qtool.quantization.calibration import CalibrateConfig
    from qtool.quantization.search import SearchConfig

    auto = method == o.AUTO_METHOD
    search_only = ("max_drop", "tune_samples", "sensitivity_samples")
    if not auto and (base_method is not None or any(search_options.get(k) is not None for k in search_only)):
        raise QtoolError("--base-method, --max-drop, --tune-samples and --sensitivity-samples need --method auto")
    if auto and (recipe_options["keep_fp"] or recipe_options["mixed_precision"]):
        raise QtoolError("--method auto chooses the points kept in float itself; drop --keep-fp/--mixed-precision")
    search = configured(SearchConfig, **search_options) if auto else None
    if search is not None:
        search.validate()
    config = configured(CalibrateConfig, method=(base_method or BASE_METHOD) if auto else method, **recipe_options)
    config.validate()
    if auto and config.weights == "folded":
        raise QtoolError("--method auto switches points to float one at a time, which folded weights cannot; "
                         "search with --weights per-channel")
    return config, search


@command()
def calibrate(
    model_path: o.Fp32Graph, method: o.Method = None, p: o.Percentile = None, groups: o.Groups = None,
    grouping: o.Grouping = None, permute: o.Permute = True, scope: o.Scope = None, weights: o.Weights = None,
    weight_bits: o.WeightBits = None, keep_fp: o.KeepFp = None, mixed_precision: o.MixedPrecision = None, outlier_ratio: o.OutlierRatio = None,
    smooth: o.Smooth = None, base_method: o.BaseMethod = None, max_drop: o.SearchMaxDrop = None,
    tune_samples: o.TuneSamples = None, sensitivity_samples: o.SensitivitySamples = None, stats: o.Stats = None,
    out: o.CalibrationOut = None, evaluate_accuracy: o.EvaluateAccuracy = True, data: o.Data = None,
    seed: o.Seed = None, samples: o.Samples = None, batch_size: o.BatchSize = None, limit: o.Limit = None,
    threads: o.Threads = None, as_json: o.Json = False, executor: o.Executor = None, address: o.RayAddress = None,
    cpus_per_task: o.CpusPerTask = None,
) -> None:
    """Compute activation scales with one method and write the calibration JSON and the QDQ graph.

    Reads the statistics file (collecting it first if needed), so trying another method costs no
    new pass over the data. Prints the QDQ graph's eval accuracy beside FP32 unless --no-eval.

    --method auto searches a small set of points to keep in float so that accuracy on tuning pairs
    (never the eval part) stays within --max-drop points of FP32; it also writes
    <recipe>.search.json (sensitivities, the accuracy curve, timings) and <recipe>.search.png;
    --executor ray spreads its evaluations over a Ray cluster.
    """
    from qtool.runners.ort import check_onnx_file
    from qtool.stages.calibrate import calibrate_and_evaluate

    max_length = data_options(data, seed).max_length
    config, search = calibrate_configs(
        method, base_method,
        dict(max_drop=max_drop, tune_samples=tune_samples, sensitivity_samples=sensitivity_samples,
             batch_size=batch_size, threads=threads, max_length=max_length),
        dict(p=p, groups=groups, grouping=grouping, permute=permute, scope=scope, weights=weights,
             weight_bits=weight_bits, keep_fp=tuple(keep_fp or ()), mixed_precision=mixed_precision, outlier_ratio=outlier_ratio, smooth=smooth),
    )
    collect, evaluation = collect_config(samples, batch_size, threads, max_length), None
    if evaluate_accuracy:
        evaluation = eval_config(batch_size, limit, threads)
    check_onnx_file(model_path)
    split = load_split(data, seed)[1]
    tasks = executor_config(executor, address, cpus_per_task)
    summary = calibrate_and_evaluate(model_path, split, config, search, collect, stats, out, evaluation, tasks)
    render.print_json(summary) if as_json else render.calibration_summary(summary)


def executor_config(kind=None, address=None, cpus_per_task=None):
    """Where the independent tasks of a command run (--executor, --address, --cpus-per-task), checked."""
    from qtool.executor import ExecutorConfig

    config = configured(ExecutorConfig, kind=kind, address=address, cpus_per_task=cpus_per_task)
    config.validate()
    return config


def eval_config(batch_size=None, limit=None, threads=None, part=None):
    from qtool.deployment.evaluate import EvalConfig

    return configured(EvalConfig, batch_size=batch_size, limit=limit, threads=threads, part=part)


@command()
def quantize(
    model_path: o.Fp32Graph, calibration: o.CalibrationFile, output: o.QdqOutput = None,
    peg_form: o.PegForm = PEG_FORM,
) -> None:
    """Write the QDQ graph of an existing calibration file (refused if it was made for another model).

    For TensorRT, write PEG calibrations with `--peg-form gathered`."""
    from qtool.stages.calibrate import quantize_stage

    render.note(f"wrote {quantize_stage(model_path, calibration, output, peg_form)}")


@command("export-scales")
def export_scales(
    calibration: o.CalibrationFile, fmt: o.ScaleFormat, output: o.ScalesOutput = None,
    model_path: o.CalibratedModel = None, trt_version: o.TrtVersion = None,
) -> None:
    """Write a calibration's activation scales for use outside qtool (per-tensor calibrations only).

    TensorRT 10 only (implicit quantization, deprecated since 10.1, removed in 11): `trtexec --onnx=FP32.onnx --int8
    --calib=FILE`. ONNX Runtime: `quantize_static(..., extra_options={"TensorQuantOverrides":
    qtool.quantization.scale_formats.load_ort_overrides(FILE), "ActivationSymmetric": True})`.
    Points kept in float are left out. PEG calibrations are refused: deploy their QDQ graph.
    """
    from qtool.stages.calibrate import export_scales_stage

    loaded, summary = export_scales_stage(calibration, fmt, output, model_path, trt_version)
    render.export_scales_summary(Path(summary["output"]), summary, loaded.smoothing, model_path is not None)


@command()
def bench(
    models: o.BenchModels, compare_models: o.Compare = False, batch: o.BenchBatch = None, seq_len: o.SeqLen = None,
    warmup: o.Warmup = None, iterations: o.Iterations = None, duration: o.Duration = None, threads: o.Threads = None,
    inputs: o.Inputs = None, provider: o.Provider = None, isolated: o.Isolated = False, with_eval: o.WithEval = False,
    data: o.Data = None, seed: o.Seed = None, part: o.Part = None, limit: o.Limit = None, as_json: o.Json = False,
    wide: o.Wide = False,
) -> None:
    """Latency (mean, p50, p90, p99, min, max), throughput, host memory and size of engines.

    With several models and --compare they run interleaved, so machine noise hits all alike.
    Speed is measured, never assumed: compare candidates in one run on the same machine.
    """
    from qtool.deployment.bench import BenchConfig
    from qtool.stages.deploy import bench_stage

    config = configured(
        BenchConfig, batch_sizes=int_list(batch, "--batch"), sequence_lengths=int_list(seq_len, "--seq-len"),
        warmup=warmup, iterations=iterations, duration_seconds=duration, threads=threads, inputs=inputs,
        providers=tuple(provider) if provider else None,
    )
    evaluation = eval_config(limit=limit, threads=threads, part=part) if with_eval else None
    result = bench_stage(models, config, data_options(data, seed), compare_models, isolated, evaluation)
    if as_json:
        return render.print_json(result)
    render.bench_tables(result, compare_models, config.inputs, config.threads, wide)


@command()
def build(
    model_path: o.BuildGraph, backend: o.Backend = o.DEFAULT_BACKEND, output: o.BuildOutput = None, fp16: o.Fp16 = None,
    tf32: o.Tf32 = None, quantize_head: o.QuantizeHead = None, batch: o.ProfileBatch = None,
    sequence: o.ProfileSequence = None, workspace_mib: o.WorkspaceMib = None, timing_cache: o.TimingCache = None,
    optimization_level: o.OptimizationLevel = None, int8_kernels: o.Int8Kernels = None, as_json: o.Json = False,
) -> None:
    """Build a deployable artifact from a graph: the ONNX Runtime CPU form or a TensorRT engine.

    ort: rewrites the TensorRT-style QDQ graph into the form ONNX Runtime's CPU kernels run fastest
    (same quantized values: int8 zero point 0 stored as uint8 zero point 128, fused integer projections,
    U8S8 or U8U8 kernels: --int8-kernels) and reports which integer kernels ONNX Runtime fused. trt: writes the graph's
    TensorRT form (<engine>.trt.onnx: FP16 around the Q/DQ pairs, float embedding tables and head)
    and builds engine.plan from it, strongly typed, with one optimization profile and a build
    manifest (needs TensorRT and an NVIDIA GPU: pip install 'qtool[trt]'). An FP32 export gives
    the FP16 baseline.
    """
    from qtool.deployment.trt_build import TrtBuildConfig
    from qtool.stages.deploy import build_stage

    options = configured(
        TrtBuildConfig, fp16=fp16, tf32=tf32, quantize_head=quantize_head, batch=int_triple(batch, "--batch"),
        sequence=int_triple(sequence, "--sequence"), workspace_mib=workspace_mib, timing_cache=timing_cache,
        optimization_level=optimization_level,
    )
    report = build_stage(model_path, backend, output, options, int8_kernels)
    render.print_json(report) if as_json else render.build_summary(report)


@command()
def reproduce(
    model: o.Model = None, data: o.Data = None, seed: o.Seed = None, configs: o.Configurations = None,
    config_file: o.ConfigFile = None, max_drop: o.DeployMaxDrop = None, samples: o.Samples = None,
    limit: o.Limit = None, artifacts: o.Artifacts = None, as_json: o.Json = False, executor: o.Executor = None,
    address: o.RayAddress = None, cpus_per_task: o.CpusPerTask = None,
) -> None:
    """Run the study end to end: fine-tune if needed, export, collect, analyze, then calibrate and
    evaluate every configuration; writes ARTIFACTS/report/results.json and report.md.

    Configurations: FP32; max (scope all, gemm, gemm-inputs); percentile 99, 99.9, 99.99, 99.999;
    PEG K = 1, 2, 3, 4, 6, 8 and auto, in equal and range-optimal groups, and with folded weights; 7-bit
    weights (max-gemm-inputs-w7, peg-k4-all-wfolded-w7); mixed precision paper, outliers and the search
    (auto); migration (--smooth 0.5); peers: ONNX Runtime's quantizers and
    transformer optimizer, and NNCF's (with qtool[peers]; skipped with a note without it). -c NAME
    runs a subset. Every stage is cached, so a rerun (or a run after an interruption) only does
    what is missing.
    """
    from qtool.stages.study import ReproduceConfig, load_configuration_file, run_reproduce

    config = configured(
        ReproduceConfig, seed=seed, configurations=tuple(configs) if configs else None, max_drop=max_drop,
        collect=collect_config(samples, None, None, None), eval=eval_config(limit=limit),
        extra_configurations=load_configuration_file(config_file) if config_file else None,
        executor=executor_config(executor, address, cpus_per_task),
    )
    config.validate()
    _, split = load_split(data, seed)
    result = run_reproduce(model, split, config, artifacts_folder(artifacts))
    if as_json:
        return render.print_json(result)
    render.reproduce_table(result, artifacts_folder(artifacts) / "report" / "report.md")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
