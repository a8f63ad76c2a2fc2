"""The `qtool` commands: each parses its options, calls one stage and renders the result."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.logging import RichHandler
from rich.markup import escape
from typer.core import TyperGroup

from qtool import __version__, api
from qtool.cli import options as o
from qtool.cli import render
from qtool.data.split import DataConfig
from qtool.defaults import PEG_LAYOUT
from qtool.deferred_imports import load_deferred
from qtool.errors import QtoolError

# Click's usage errors, wherever this Typer takes Click from (Typer 0.29 vendors it).
USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
NO_ARGS_IS_HELP = getattr(sys.modules[USAGE_ERROR.__module__], "NoArgsIsHelpError", ())


class OneLineUsageErrors(TyperGroup):
    """Usage errors (an unknown option, a missing argument) as the one-line `error:` every other
    error is, naming the command's --help; exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NO_ARGS_IS_HELP:
            return super().main(["--help"], prog_name, complete_var, standalone_mode=True, **extra)
        except USAGE_ERROR as exc:
            where = exc.ctx.command_path if exc.ctx else "qtool"
            render.error(f"{exc.format_message().rstrip('.')}; see `{where} --help`")
            sys.exit(exc.exit_code)
        except typer.Abort:
            render.stderr.print("interrupted")
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineUsageErrors,
    name="qtool",
    help="Post-training INT8 quantization of BERT-family text classifiers: export, measure outliers, "
    "calibrate, build and benchmark.\n\nYour own model, in order: export (finetune first if it has no "
    "classification head), analyze, calibrate, build, bench; reproduce runs the whole study. "
    "Data: --data FOLDER (GLUE TSV) or $QTOOL_DATA, else the hub.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def int_list(values: list[str] | None, option: str) -> tuple[int, ...] | None:
    """Repeatable or comma-separated integers: `--batch 1,8` or `--batch 1 --batch 8`."""
    if not values:
        return None
    try:
        return tuple(int(v) for value in values for v in value.split(",") if v.strip())
    except ValueError:
        raise QtoolError(f"{option} takes whole numbers such as 1,8; got {' '.join(values)}") from None


def data_source(data, text_columns=None, label_column=None, task=None, split=None):
    """--data alone, or a DataConfig when its columns, task or splits are named too."""
    if not (text_columns or label_column or task or split):
        return data
    names = [tuple(n.strip() for n in v.split(",") if n.strip()) if v else None for v in (text_columns, split)]
    return DataConfig(source=data, text_columns=names[0], label_column=label_column, task=task, splits=names[1])


def name_values(items: list[str] | None, option: str) -> dict | None:
    """Repeatable NAME=VALUE options, values read as a whole number, a number, true/false or text."""
    if not items:
        return None
    values = {}
    for item in items:
        name, equals, text = item.partition("=")
        if not equals or not name.strip():
            raise QtoolError(f"{option} takes NAME=VALUE such as fraction=0.5; got {item!r}")
        values[name.strip()] = _typed(text.strip())
    return values


def _typed(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def int_triple(value: str | None, option: str) -> tuple[int, int, int] | None:
    parts = int_list([value], option) if value is not None else None
    if value is not None and (parts is None or len(parts) != 3):
        raise QtoolError(f"{option} takes MIN,OPT,MAX such as 1,1,32; got {value}")
    return parts


def _setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=render.stderr, show_path=False, show_time=False, markup=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("qtool").setLevel(logging.DEBUG if verbose else logging.INFO)
    # Quiet transformers and the hub through their environment, read when a command first imports
    # them (importing transformers here would cost every command, --help included, about 0.7 s).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity_error()
        sys.modules["transformers"].logging.disable_progress_bar()


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
            load_deferred()  # the command runs: its libraries load now, in their usual order
            try:
                return function(*args, **kwargs)
            except QtoolError as exc:
                render.error(exc.cli_message)
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
    model: o.Model = None, data: o.Data = None,
    text_columns: o.TextColumns = None, label_column: o.LabelColumn = None, task: o.Task = None, split: o.Split = None, seed: o.Seed = None, epochs: o.Epochs = None, lr: o.LearningRate = None,
    batch_size: o.BatchSize = None, warmup_ratio: o.WarmupRatio = None, max_steps: o.MaxSteps = None,
    max_length: o.MaxLength = None, force: o.RetrainForce = False, artifacts: o.Artifacts = None, as_json: o.Json = False,
) -> None:
    """Fine-tune --model into a classifier for the data's labels (AdamW, linear warm-up and decay, fixed seed).

    The result is saved in Hugging Face format under ARTIFACTS/models/ with a manifest, and reused
    when the model, data, seed and hyper-parameters match.
    """
    made = api.finetune(
        model,
        data=data_source(data, text_columns, label_column, task, split), seed=seed, epochs=epochs, learning_rate=lr, batch_size=batch_size,
        warmup_ratio=warmup_ratio, max_steps=max_steps, max_length=max_length, force=force, artifacts=artifacts,
    )
    if as_json:
        return render.print_json(made.to_dict())
    summary = made.details
    render.print_fields(
        "fine-tuned classifier",
        [("folder", made.folder), ("eval accuracy", render.accuracy(made.eval_accuracy)),
         ("eval pairs", summary["eval_examples"]), ("steps", summary["steps"]),
         ("train time", f"{summary['train_seconds']:.0f} s"), ("data", summary["data_split"]["name"])],
    )


@command()
def export(
    model: o.Model = None, data: o.Data = None,
    text_columns: o.TextColumns = None, label_column: o.LabelColumn = None, task: o.Task = None, split: o.Split = None, seed: o.Seed = None, output: o.ExportOutput = None,
    opset: o.Opset = None, max_length: o.MaxLength = None, force: o.ReexportForce = False,
    artifacts: o.Artifacts = None, as_json: o.Json = False,
) -> None:
    """Export the classifier to FP32 ONNX and check it against PyTorch on real batches of the data.

    A --model without a classification head uses its cached fine-tuned copy (see `qtool finetune`).
    Writes the graph, its tokenizer beside it and a manifest with the parity figure; a graph of the
    same weights and options is reused unless --force.
    """
    made = api.export(
        model,
        data=data_source(data, text_columns, label_column, task, split), seed=seed, output=output, opset=opset, max_length=max_length, force=force, artifacts=artifacts
    )
    if as_json:
        return render.print_json(made.to_dict())
    parity = made.details["parity"]
    render.print_fields(
        "FP32 ONNX export",
        [("graph", made.graph), ("source model", made.details["source_model"]), ("opset", made.details["opset"]),
         ("max |logit diff| vs torch", f"{parity['max_abs_logit_diff']:.2e} (tolerance {parity['tolerance']:g})"),
         ("parity batches", ", ".join("x".join(map(str, s)) for s in parity["batch_shapes"]))],
    )


@command("eval")
def eval_command(
    model_path: o.EvalGraph, data: o.Data = None,
    text_columns: o.TextColumns = None, label_column: o.LabelColumn = None, task: o.Task = None, split: o.Split = None, seed: o.Seed = None, part: o.Part = None,
    batch_size: o.BatchSize = None, limit: o.Limit = None, threads: o.Threads = None, tokenizer: o.Tokenizer = None,
    max_length: o.MaxLength = None, as_json: o.Json = False,
) -> None:
    """Accuracy of a classifier on a data part: an ONNX graph through ONNX Runtime on the CPU, a built
    artifact (OpenVINO model, TensorRT engine) through its backend's runner."""
    result = api.evaluate(
        model_path,
        data=data_source(data, text_columns, label_column, task, split), seed=seed, part=part, batch_size=batch_size, limit=limit, threads=threads,
        tokenizer=tokenizer, max_length=max_length,
    )
    if as_json:
        return render.print_json(result.to_dict())
    details = result.details
    render.print_fields(
        "accuracy",
        [("model", model_path), ("accuracy", f"{render.accuracy(result.accuracy)} ({result.correct}/{result.examples})"),
         *render.metric_fields(details["metrics"]), ("throughput", f"{details['examples_per_second']:.0f} pairs/s"),
         ("data", f"{details['data_split']['name']}, part {details['data_part']}")],
    )


@command()
def collect(
    model_path: o.Fp32Graph, data: o.Data = None,
    text_columns: o.TextColumns = None, label_column: o.LabelColumn = None, task: o.Task = None, split: o.Split = None, seed: o.Seed = None, samples: o.Samples = None,
    batch_size: o.BatchSize = None, threads: o.Threads = None, bins: o.Bins = None, stats: o.Stats = None,
    max_length: o.MaxLength = None, force: o.Force = False, as_json: o.Json = False,
) -> None:
    """Stream activation statistics at every quantization point over the calibration pairs.

    Per tensor: count, min, max, four moments (float64); per channel: min, max, energy; a histogram
    of |x|. Padding is excluded. Every calibrator and `qtool analyze` read this one file.
    """
    made = api.collect(
        model_path,
        data=data_source(data, text_columns, label_column, task, split), seed=seed, samples=samples, batch_size=batch_size, threads=threads, bins=bins,
        stats=stats, max_length=max_length, force=force,
    )
    if as_json:
        return render.print_json(made.to_dict())
    summary = made.details
    render.print_fields(
        "activation statistics",
        [("file", made.stats), ("quantization points", made.points), ("real tokens", summary["tokens"]),
         ("pairs", f"{summary['samples']} ({summary['sample_sources']})"), ("data", summary["data_split"]["name"])],
    )


@command()
def analyze(
    model_path: o.Fp32Graph, data: o.Data = None,
    text_columns: o.TextColumns = None, label_column: o.LabelColumn = None, task: o.Task = None, split: o.Split = None, seed: o.Seed = None, samples: o.Samples = None,
    batch_size: o.BatchSize = None, threads: o.Threads = None, stats: o.Stats = None, out: o.AnalysisOut = None,
    top: o.Top = None, sigma: o.Sigma = None, figures: o.Figures = True, force: o.Force = False,
    max_length: o.MaxLength = None, as_json: o.Json = False, wide: o.Wide = False,
) -> None:
    """Measure the outliers: kurtosis, top-1 % channel energy and outlier channels at every point.

    Collects statistics first when no matching statistics file exists (see `qtool collect`).
    """
    if top is not None and top < 1:
        raise QtoolError(f"--top must be at least 1, got {top}")
    made = api.analyze(
        model_path,
        data=data_source(data, text_columns, label_column, task, split), seed=seed, samples=samples, batch_size=batch_size, threads=threads, stats=stats,
        out=out, sigma=sigma, figures=figures, force=force, max_length=max_length,
    )
    if as_json:
        return render.print_json(made.to_dict())
    render.analysis_tables(made.details, made.outputs, top, wide)


@command()
def calibrate(
    model_path: o.Fp32Graph, method: o.Method = None, p: o.Percentile = None, groups: o.Groups = None,
    grouping: o.Grouping = None, permute: o.Permute = None, scope: o.Scope = None, weights: o.Weights = None,
    weight_bits: o.WeightBits = None, keep_fp: o.KeepFp = None, mixed_precision: o.MixedPrecision = None,
    outlier_ratio: o.OutlierRatio = None, smooth: o.Smooth = None, method_option: o.MethodOption = None,
    base_method: o.BaseMethod = None,
    max_drop: o.SearchMaxDrop = None, confidence: o.SearchConfidence = None, tune_samples: o.TuneSamples = None,
    sensitivity_samples: o.SensitivitySamples = None, tune_data: o.TuneData = None, stats: o.Stats = None, out: o.CalibrationOut = None, evaluate_accuracy: o.EvaluateAccuracy = True,
    data: o.Data = None,
    text_columns: o.TextColumns = None, label_column: o.LabelColumn = None, task: o.Task = None, split: o.Split = None, seed: o.Seed = None, samples: o.Samples = None, batch_size: o.BatchSize = None,
    limit: o.Limit = None, threads: o.Threads = None, max_length: o.MaxLength = None, as_json: o.Json = False,
    executor: o.Executor = None, address: o.RayAddress = None, cpus_per_task: o.CpusPerTask = None,
) -> None:
    """Compute activation scales with one method and write the calibration JSON and the QDQ graph.

    Reads the statistics file (collecting it first if needed), so trying another method costs no
    new pass over the data. Prints the QDQ graph's eval accuracy beside FP32 unless --no-eval.

    --method auto searches a small set of points to keep in float so that the drop below FP32 on the
    data's tuning part (pairs never used to fine-tune, calibrate or evaluate) stays within --max-drop
    points at --confidence; it also writes
    <recipe>.search.json (sensitivities, the accuracy curve, timings) and <recipe>.search.png;
    --executor ray spreads its evaluations over a Ray cluster.
    """
    made = api.calibrate(
        model_path, method, p=p, groups=groups, grouping=grouping, permute=permute, scope=scope, weights=weights,
        weight_bits=weight_bits, keep_fp=keep_fp, mixed_precision=mixed_precision, outlier_ratio=outlier_ratio,
        smooth=smooth, base_method=base_method, max_drop=max_drop, confidence=confidence, tune_samples=tune_samples,
        sensitivity_samples=sensitivity_samples, stats=stats, out=out, evaluate=evaluate_accuracy,
        tune_data=data_source(tune_data, text_columns, label_column, task, None) if tune_data else None,
        data=data_source(data, text_columns, label_column, task, split),
        seed=seed, samples=samples, batch_size=batch_size, limit=limit, threads=threads, executor=executor,
        address=address, cpus_per_task=cpus_per_task, max_length=max_length,
        method_options=name_values(method_option, "--method-option"),
    )
    render.print_json(made.to_dict()) if as_json else render.calibration_summary(made.details)


@command()
def quantize(
    model_path: o.Fp32Graph, calibration: o.CalibrationFile, output: o.QdqOutput = None,
    peg_layout: o.PegLayout = PEG_LAYOUT, as_json: o.Json = False,
) -> None:
    """Write the QDQ graph of an existing calibration file (refused if it was made for another model).

    For TensorRT, write PEG calibrations with `--peg-layout gathered`."""
    written = api.quantize(model_path, calibration, output=output, peg_layout=peg_layout)
    if as_json:
        return render.print_json({"qdq_graph": str(written), "calibration": str(calibration)})
    render.note(f"wrote {written}")


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
    summary = api.export_scales(calibration, fmt, output=output, model=model_path, trt_version=trt_version)
    render.export_scales_summary(Path(summary["output"]), summary, summary["smoothing"], model_path is not None)


@command()
def bench(
    models: o.BenchModels, compare_models: o.Compare = False, batch: o.BenchBatch = None, seq_len: o.SeqLen = None,
    warmup: o.Warmup = None, iterations: o.Iterations = None, duration: o.Duration = None, threads: o.Threads = None,
    inputs: o.Inputs = None, provider: o.Provider = None, isolated: o.Isolated = False, with_eval: o.WithEval = False,
    data: o.Data = None,
    text_columns: o.TextColumns = None, label_column: o.LabelColumn = None, task: o.Task = None, split: o.Split = None, seed: o.Seed = None, part: o.Part = None, limit: o.Limit = None, as_json: o.Json = False,
    wide: o.Wide = False, tokenizer: o.Tokenizer = None,
) -> None:
    """Latency (mean, p50, p90, p99, min, max), throughput, host memory and size of engines.

    With several models and --compare they run interleaved, so machine noise hits all alike.
    Speed is measured, never assumed: compare candidates in one run on the same machine.
    """
    result = api.bench(
        models, compare=compare_models, batch_sizes=int_list(batch, "--batch"),
        sequence_lengths=int_list(seq_len, "--seq-len"), warmup=warmup, iterations=iterations, duration=duration,
        threads=threads, inputs=inputs, providers=provider, isolated=isolated, with_eval=with_eval,
        data=data_source(data, text_columns, label_column, task, split),
        seed=seed, part=part, limit=limit, tokenizer=tokenizer,
    )
    if as_json:
        return render.print_json(result.to_dict())
    render.bench_tables(result.details, compare_models, wide)


@command()
def build(
    model_path: o.BuildGraph, backend: o.Backend = o.DEFAULT_BACKEND, output: o.BuildOutput = None, fp16: o.Fp16 = None,
    tf32: o.Tf32 = None, quantize_head: o.QuantizeHead = None, batch: o.ProfileBatch = None,
    sequence: o.ProfileSequence = None, workspace_mib: o.WorkspaceMib = None, timing_cache: o.TimingCache = None,
    optimization_level: o.OptimizationLevel = None, int8_kernels: o.Int8Kernels = None, as_json: o.Json = False,
) -> None:
    """Build a deployable artifact from a graph: the ONNX Runtime CPU graph or a TensorRT engine.

    ort: rewrites the TensorRT-style QDQ graph into the graph ONNX Runtime's CPU kernels run fastest
    (same quantized values: int8 zero point 0 stored as uint8 zero point 128, fused integer projections,
    U8S8 or U8U8 kernels: --int8-kernels) and reports which integer kernels ONNX Runtime fused. trt: writes the graph's
    TensorRT graph (<engine>.trt.onnx: FP16 around the Q/DQ pairs, float embedding tables and head)
    and builds engine.plan from it, strongly typed, with one optimization profile and a build
    manifest (needs TensorRT and an NVIDIA GPU: pip install 'qtool[trt]'). An FP32 export gives
    the FP16 baseline.
    """
    options = dict(
        fp16=fp16, tf32=tf32, quantize_head=quantize_head, batch=int_triple(batch, "--batch"),
        sequence=int_triple(sequence, "--sequence"), workspace_mib=workspace_mib, timing_cache=timing_cache,
        optimization_level=optimization_level, int8_kernels=int8_kernels,
    )
    given = {name: value for name, value in options.items() if value is not None}
    built = api.build(model_path, backend, output=output, **given)
    render.print_json(built.to_dict()) if as_json else render.build_summary(built.details)


@command()
def reproduce(
    model: o.Model = None, data: o.Data = None,
    text_columns: o.TextColumns = None, label_column: o.LabelColumn = None, task: o.Task = None, split: o.Split = None, seed: o.Seed = None, configs: o.Configurations = None,
    config_file: o.ConfigFile = None, max_drop: o.DeployMaxDrop = None, tune_data: o.TuneData = None, samples: o.Samples = None,
    limit: o.Limit = None, max_length: o.MaxLength = None, artifacts: o.Artifacts = None, as_json: o.Json = False,
    executor: o.Executor = None, address: o.RayAddress = None, cpus_per_task: o.CpusPerTask = None, backends: o.Backends = None,
    warmup: o.StudyWarmup = None, iterations: o.StudyIterations = None,
) -> None:
    """Run the study end to end: fine-tune if needed, export, collect, analyze, then calibrate and
    evaluate every configuration; writes ARTIFACTS/report/results.json and report.md.

    Configurations: FP32; max (scope all, gemm, gemm-inputs); percentile 99, 99.9, 99.99, 99.999;
    entropy and mse (ranges from the histogram); PEG K = 2, 3, 4, 6, 8 in equal groups, K = 4 and
    auto in range-optimal groups, and with folded weights; 7-bit weights (max-gemm-inputs-w7,
    peg-k4-all-wfolded-w7); mixed precision paper, outliers and the search (auto); peers: ONNX
    Runtime's quantizers and transformer optimizer, and NNCF's (with qtool[peers]; skipped with a
    note without it). -c all adds the extended rows: range-optimal PEG at K = 1, 2, 3, 6, 8, folded
    at K = 2, 3, and migration (--smooth 0.5) before max, max-gemm, percentile and PEG K = 4.
    -c NAME runs a subset. Every stage is cached, so a rerun (or a run after an interruption) only
    does what is missing.
    """
    study = api.reproduce(
        model,
        data=data_source(data, text_columns, label_column, task, split), seed=seed, configurations=configs, config_file=config_file, max_drop=max_drop,
        samples=samples, limit=limit, max_length=max_length, artifacts=artifacts, executor=executor,
        address=address, cpus_per_task=cpus_per_task, backends=backends, warmup=warmup, iterations=iterations,
        tune_data=data_source(tune_data, text_columns, label_column, task, None) if tune_data else None,
    )
    if as_json:
        return render.print_json(study.to_dict())
    render.reproduce_table(study.details, study.report)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
