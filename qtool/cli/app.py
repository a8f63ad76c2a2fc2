"""The `qtool` command line: parse options, call one library function, render the result."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from qtool import __version__
from qtool.analysis.collect import CollectConfig
from qtool.analysis.outliers import OutlierConfig
from qtool.calibrators.methods import CALIBRATORS
from qtool.calibrators.precision import MIXED_PRECISION_PRESETS, SCOPES
from qtool.quantization.calibration import CalibrateConfig
from qtool.quantization.search import SearchConfig
from qtool.data import DataConfig
from qtool.errors import QtoolError
from qtool.exporter.onnx_export import ExportConfig
from qtool.exporter.qdq import WEIGHT_MODES
from qtool.models.finetune import FinetuneConfig
from qtool.runners import check_onnx_file
from qtool.deployment.bench import INPUT_KINDS, BenchConfig
from qtool.deployment.evaluate import EvalConfig
from qtool.runners.trt import TrtBuildConfig

app = typer.Typer(
    name="qtool",
    help="Post-training INT8 quantization of BERT-family QNLI classifiers: export, measure outliers, "
    "calibrate, build and benchmark. Data: --data FOLDER (GLUE TSV) or $QTOOL_DATA, else the hub.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()
stderr = Console(stderr=True)
ARTIFACTS_ENV = "QTOOL_ARTIFACTS"

# Shared options: declared once, defaults live in the stage config dataclasses.
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Local Hugging Face folder or hub id. Default: the embedded all-MiniLM-L6-v2."),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        "-d",
        help="Folder with GLUE QNLI TSV files (dev.tsv, optional train.tsv), or 'hub'. "
        "Default: $QTOOL_DATA, else the Hugging Face hub.",
    ),
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help=f"Seed of the data split and of training. Default: {DataConfig.seed}.")
]
ArtifactsOpt = Annotated[
    Path | None,
    typer.Option(
        "--artifacts",
        help=f"Output folder for models, graphs and reports. Default: ${ARTIFACTS_ENV}, else ./artifacts.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        help=f"Batch size. Default: {EvalConfig.batch_size} (fine-tuning: {FinetuneConfig.batch_size}).",
        show_default=False,
    ),
]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", help="Evaluate only the first N pairs of the part (for quick checks).")
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="Intra-op threads for ONNX Runtime. Default: all cores.")
]


def _config(cls, base=None, **overrides: Any):
    """A stage config with only the options the user gave replaced; None keeps the dataclass default."""
    base = base or cls()
    known = {f.name for f in fields(cls)}
    return replace(base, **{k: v for k, v in overrides.items() if v is not None and k in known})


def _artifacts(path: Path | None) -> Path:
    return Path(path or os.environ.get(ARTIFACTS_ENV) or "artifacts")


def _setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=stderr, show_path=False, show_time=False, markup=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("qtool").setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass


def user_errors(command):
    """Turn a QtoolError into a one-line message and exit code 2, with no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except QtoolError as exc:
            stderr.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            stderr.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, str(value))
    return table


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details on stderr.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the qtool version and exit.")] = False,
) -> None:
    if version:
        stdout.print(__version__)
        raise typer.Exit()
    _setup_logging(verbose)


def _load_split(data: str | None, seed: int | None):
    from qtool.data import DataConfig, load_qnli

    config = _config(DataConfig, source=data, seed=seed)
    return config, load_qnli(config)


@app.command()
@user_errors
def finetune(
    model: ModelOpt = None,
    data: DataOpt = None,
    seed: SeedOpt = None,
    epochs: Annotated[float | None, typer.Option(help=f"Training epochs. Default: {FinetuneConfig.epochs:g}.")] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help=f"Peak AdamW learning rate. Default: {FinetuneConfig.learning_rate:g}.")
    ] = None,
    batch_size: BatchOpt = None,
    warmup_ratio: Annotated[
        float | None, typer.Option(help=f"Share of steps for linear warm-up. Default: {FinetuneConfig.warmup_ratio:g}.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps (for quick checks).")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Train again even if a matching fine-tuned model is cached.")
    ] = False,
    artifacts: ArtifactsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune --model into a QNLI classifier (AdamW, linear warm-up and decay, fixed seed).

    The result is saved in Hugging Face format under ARTIFACTS/models/ with a manifest, and reused
    when the model, data, seed and hyper-parameters match.
    """
    from qtool.models import resolve_model
    from qtool.models.finetune import FinetuneConfig
    from qtool.models.finetune import finetune as run_finetune

    data_config, split = _load_split(data, seed)
    config = _config(
        FinetuneConfig,
        epochs=epochs,
        learning_rate=lr,
        batch_size=batch_size,
        warmup_ratio=warmup_ratio,
        max_steps=max_steps,
        seed=seed,
    )
    directory, manifest = run_finetune(
        resolve_model(model), split, config, _artifacts(artifacts), data_config.max_length, force=force
    )
    summary = {
        "model_dir": str(directory),
        "eval_accuracy": manifest["eval_accuracy"],
        "eval_examples": manifest["eval_examples"],
        "steps": manifest["steps"],
        "train_seconds": manifest["train_seconds"],
        "data_split": split.describe(),
    }
    if as_json:
        _print_json(summary)
    else:
        stdout.print(
            _table(
                "fine-tuned classifier",
                [
                    ("folder", directory),
                    ("eval accuracy", f"{manifest['eval_accuracy']:.4f}"),
                    ("eval pairs", manifest["eval_examples"]),
                    ("steps", manifest["steps"]),
                    ("train time", f"{manifest['train_seconds']:.0f} s"),
                    ("data", split.name),
                ],
            )
        )


@app.command()
@user_errors
def export(
    model: ModelOpt = None,
    data: DataOpt = None,
    seed: SeedOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="ONNX file to write. Default: ARTIFACTS/<model>/fp32.onnx.")
    ] = None,
    opset: Annotated[int | None, typer.Option(help=f"ONNX opset, 17 or newer. Default: {ExportConfig.opset}.")] = None,
    artifacts: ArtifactsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export the QNLI classifier to FP32 ONNX and check it against PyTorch on real QNLI batches.

    A --model without a classification head uses its cached fine-tuned copy (see `qtool finetune`).
    Writes the graph, its tokenizer beside it and a manifest with the parity figure.
    """
    from qtool.exporter import ExportConfig, export_onnx
    from qtool.models.finetune import FinetuneConfig, classifier_for

    data_config, split = _load_split(data, seed)
    root = _artifacts(artifacts)
    source, _ = classifier_for(
        model, split, _config(FinetuneConfig, seed=seed), root, data_config.max_length, allow_finetune=False
    )
    target = output or root / source.slug / "fp32.onnx"
    manifest = export_onnx(source, split, target, _config(ExportConfig, opset=opset, max_length=data_config.max_length))
    if as_json:
        _print_json({**manifest, "onnx": str(target)})
    else:
        parity = manifest["parity"]
        stdout.print(
            _table(
                "FP32 ONNX export",
                [
                    ("graph", target),
                    ("source model", source.name),
                    ("opset", manifest["opset"]),
                    (
                        "max |logit diff| vs torch",
                        f"{parity['max_abs_logit_diff']:.2e} (tolerance {parity['tolerance']:g})",
                    ),
                    ("parity batches", ", ".join("x".join(map(str, s)) for s in parity["batch_shapes"])),
                ],
            )
        )


@app.command("eval")
@user_errors
def eval_command(
    model_path: Annotated[
        Path,
        typer.Argument(help="ONNX graph written by `qtool export` (or any QNLI classifier graph).", show_default=False),
    ],
    data: DataOpt = None,
    seed: SeedOpt = None,
    part: Annotated[
        str | None, typer.Option(help=f"Data part: train, calibration or eval. Default: {EvalConfig.part}.")
    ] = None,
    batch_size: BatchOpt = None,
    limit: LimitOpt = None,
    threads: ThreadsOpt = None,
    tokenizer: Annotated[
        Path | None, typer.Option(help="Tokenizer folder. Default: the one exported beside the graph.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy of an ONNX classifier on a QNLI part, through ONNX Runtime on the CPU."""
    from qtool.deployment.evaluate import evaluate_graph

    config = _config(EvalConfig, part=part, batch_size=batch_size, limit=limit, threads=threads)
    config.validate()
    check_onnx_file(model_path)
    data_config, split = _load_split(data, seed)
    result = evaluate_graph(
        model_path, split, config, data_config.max_length, use_cache=False, tokenizer_path=tokenizer
    )
    if as_json:
        _print_json(result)
    else:
        stdout.print(
            _table(
                "accuracy",
                [
                    ("model", model_path),
                    ("accuracy", f"{result['accuracy']:.4f} ({result['correct']}/{result['examples']})"),
                    ("throughput", f"{result['examples_per_second']:.0f} pairs/s"),
                    ("data", f"{split.name}, part {config.part}"),
                ],
            )
        )


SamplesOpt = Annotated[
    int | None,
    typer.Option(
        "--samples",
        help=f"Calibration pairs (calibration part, topped up from train). Default: {CollectConfig.samples}.",
    ),
]
StatsOpt = Annotated[
    Path | None, typer.Option("--stats", help="Statistics file. Default: <model>.stats.npz beside the graph.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute even if a matching cached result exists.")]


def _collect_config(samples, batch_size, threads, max_length):
    return _config(CollectConfig, samples=samples, batch_size=batch_size, threads=threads, max_length=max_length)


def _load_stats(model_path: Path, stats: Path | None, data, seed, samples, batch_size, threads, force=False):
    """Statistics for `model_path`: an explicit file (refused if it belongs to another model or data
    split) or the cached file beside the graph, collected when missing or stale."""
    from qtool.analysis import ActivationStats, collect_or_load
    from qtool.deployment.evaluate import tokenizer_for

    if stats is not None:
        collected = ActivationStats.load(stats)
        collected.check_model(model_path)
        if data is not None and collected.manifest["data"] != _load_split(data, seed)[1].describe():
            raise QtoolError(f"{stats} was collected on another data split; run `qtool collect {model_path}` again")
        return collected
    data_config, split = _load_split(data, seed)
    config = _collect_config(samples, batch_size, threads, data_config.max_length)
    return collect_or_load(model_path, split, tokenizer_for(model_path), config, force=force)


@app.command()
@user_errors
def collect(
    model_path: Annotated[Path, typer.Argument(help="FP32 ONNX graph written by `qtool export`.", show_default=False)],
    data: DataOpt = None,
    seed: SeedOpt = None,
    samples: SamplesOpt = None,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    bins: Annotated[
        int | None, typer.Option(help=f"Histogram bins of |x| (power of two). Default: {CollectConfig.histogram_bins}.")
    ] = None,
    stats: StatsOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Stream activation statistics at every quantization point over the calibration pairs.

    Per tensor: count, min, max, four moments (float64); per channel: min, max, energy; a histogram
    of |x|. Padding is excluded. Every calibrator and `qtool analyze` read this one file.
    """
    from qtool.analysis.collect import collect_or_load, default_stats_path
    from qtool.deployment.evaluate import tokenizer_for

    check_onnx_file(model_path)
    data_config, split = _load_split(data, seed)
    config = _config(_collect_config(samples, batch_size, threads, data_config.max_length), histogram_bins=bins)
    target = stats or default_stats_path(model_path)
    result = collect_or_load(model_path, split, tokenizer_for(model_path), config, target, force=force)
    summary = {
        "stats": str(target),
        "points": len(result.points),
        "samples": result.manifest["samples"],
        "sample_sources": result.manifest["sample_sources"],
        "tokens": result.manifest["tokens"],
        "data_split": result.manifest["data"],
        "model": result.manifest["model"],
    }
    if as_json:
        _print_json(summary)
    else:
        stdout.print(
            _table(
                "activation statistics",
                [
                    ("file", target),
                    ("quantization points", summary["points"]),
                    ("pairs", f"{summary['samples']} ({summary['sample_sources']})"),
                    ("real tokens", summary["tokens"]),
                    ("data", split.name),
                ],
            )
        )


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@app.command()
@user_errors
def analyze(
    model_path: Annotated[Path, typer.Argument(help="FP32 ONNX graph written by `qtool export`.", show_default=False)],
    data: DataOpt = None,
    seed: SeedOpt = None,
    samples: SamplesOpt = None,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    stats: StatsOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for analysis.json, analysis.csv and PNG figures. Default: <graph folder>/analysis.",
        ),
    ] = None,
    top: Annotated[int | None, typer.Option("--top", help="Show only the N points with the highest kurtosis.")] = None,
    sigma: Annotated[
        float | None,
        typer.Option(
            help=f"Outlier rule: channel max |x| above SIGMA standard deviations of the tensor. Default: {OutlierConfig.sigma:g}."
        ),
    ] = None,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write PNG figures.")] = True,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure the outliers: kurtosis, top-1 % channel energy and outlier channels at every point.

    Collects statistics first when no matching statistics file exists (see `qtool collect`).
    """
    from qtool.analysis.writer import analysis_document, write_analysis

    check_onnx_file(model_path)
    if top is not None and top < 1:
        raise QtoolError(f"--top must be at least 1, got {top}")
    config = _config(OutlierConfig, sigma=sigma)
    config.validate()
    collected = _load_stats(model_path, stats, data, seed, samples, batch_size, threads, force=force)
    document = analysis_document(collected, config)
    paths = write_analysis(collected, document, out or model_path.parent / "analysis", figures=figures)
    if as_json:
        _print_json({**document, "outputs": paths})
        return
    rows = document["points"]
    if top:
        rows = sorted((r for r in rows if r["kurtosis"] is not None), key=lambda r: -r["kurtosis"])[:top]
    table = Table(title=f"activation outliers: {document['model'].get('source_model')}", title_justify="left")
    for column in (
        "point",
        "kurtosis",
        "top-1% energy",
        "max |x|",
        "p99.99",
        "max/p99.99",
        "outlier channels (max |x|)",
    ):
        table.add_column(column, justify="left" if column.startswith(("point", "outlier")) else "right")
    for r in rows:
        channels = ", ".join(f"{c['channel']} ({c['absmax']:.0f})" for c in r["outlier_channels"][:4])
        extra = len(r["outlier_channels"]) - 4
        table.add_row(
            r["name"],
            _fmt(r["kurtosis"], ".1f"),
            _fmt(r["top_energy_share"] and 100 * r["top_energy_share"], ".1f"),
            f"{r['absmax']:.2f}",
            f"{r['percentile']:.2f}",
            _fmt(r["absmax_over_percentile"], ".1f"),
            channels + (f" +{extra}" if extra > 0 else ""),
        )
    stdout.print(table)
    layers = Table(title="per layer", title_justify="left")
    for column in ("layer", "max kurtosis", "at", "max top-1% energy", "at", "residual outlier channels"):
        layers.add_column(column)
    for s in document["layers"]:
        layers.add_row(
            s["layer"],
            _fmt(s["max_kurtosis"], ".1f"),
            s["max_kurtosis_point"] or "-",
            _fmt(s["max_top_energy_share"] and 100 * s["max_top_energy_share"], ".1f"),
            s["max_top_energy_point"] or "-",
            " ".join(map(str, s["residual_outlier_channels"])) or "-",
        )
    stdout.print(layers)
    for key, text in document["definitions"].items():
        stdout.print(f"[dim]{key}: {text}[/]", highlight=False)
    stdout.print(
        f"[dim]{document['samples']} pairs {document['sample_sources']} from {document['data']['name']}; "
        f"outputs in {Path(paths['json']).parent}[/]",
        highlight=False,
    )


MethodOpt = Annotated[
    str | None,
    typer.Option(
        "--method",
        help=f"Calibration method: {', '.join(CALIBRATORS)}, or auto (search the points to keep in float, "
        f"see --max-drop). Default: {CalibrateConfig.method}.",
    ),
]
AUTO_METHOD = "auto"


@app.command()
@user_errors
def calibrate(
    model_path: Annotated[Path, typer.Argument(help="FP32 ONNX graph written by `qtool export`.", show_default=False)],
    method: MethodOpt = None,
    p: Annotated[
        float | None,
        typer.Option(
            "--p", help=f"Percentile of |x| for --method percentile, in (0, 100]. Default: {CalibrateConfig.p:g}."
        ),
    ] = None,
    groups: Annotated[
        int | None,
        typer.Option(
            "--groups", "-k", help=f"Channel groups K for --method peg (K >= 1). Default: {CalibrateConfig.groups}."
        ),
    ] = None,
    permute: Annotated[
        bool,
        typer.Option(
            "--permute/--no-permute",
            help="PEG: sort channels by range before grouping (Bondarenko et al.), or keep contiguous groups.",
        ),
    ] = True,
    scope: Annotated[
        str | None,
        typer.Option(help=f"What is quantized: {', '.join(SCOPES)} (see README). Default: {CalibrateConfig.scope}."),
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help=f"Weight scales: {', '.join(WEIGHT_MODES)}. Default: {CalibrateConfig.weights}.")
    ] = None,
    keep_fp: Annotated[
        list[str] | None,
        typer.Option(
            "--keep-fp", help="Keep the points matching this glob (e.g. 'layer.*.ffn.output') in float; repeatable."
        ),
    ] = None,
    mixed_precision: Annotated[
        str | None,
        typer.Option(
            "--mixed-precision", help=f"Preset of points kept in float: {', '.join(MIXED_PRECISION_PRESETS)}."
        ),
    ] = None,
    outlier_ratio: Annotated[
        float | None,
        typer.Option(
            help=f"--mixed-precision outliers keeps points with max|x| >= RATIO x p99.99. Default: {CalibrateConfig.outlier_ratio:g}."
        ),
    ] = None,
    smooth: Annotated[
        float | None,
        typer.Option(
            "--smooth",
            help="Migrate activation range into the following weights first (SmoothQuant-style, strength ALPHA "
            "in [0, 1], folded into the LayerNorms); statistics of the smoothed graph are collected once.",
        ),
    ] = None,
    base_method: Annotated[
        str | None,
        typer.Option(
            "--base-method",
            help=f"--method auto: the ranges of the quantized points ({', '.join(CALIBRATORS)}; --p, --groups apply). "
            "Default: max.",
        ),
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(
            "--max-drop",
            help="--method auto: accuracy points below FP32 allowed on the tuning pairs. "
            f"Default: {SearchConfig.max_drop:g}.",
        ),
    ] = None,
    tune_samples: Annotated[
        int | None,
        typer.Option(
            "--tune-samples",
            help="--method auto: tuning pairs (calibration part, topped up from train; never eval). "
            f"Default: {SearchConfig.tune_samples}.",
        ),
    ] = None,
    sensitivity_samples: Annotated[
        int | None,
        typer.Option(
            "--sensitivity-samples",
            help="--method auto: pairs for the one-point-at-a-time sensitivity runs (the first tuning pairs). "
            f"Default: {SearchConfig.sensitivity_samples}.",
        ),
    ] = None,
    stats: StatsOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for <recipe>.calib.json and <recipe>.qdq.onnx. Default: the graph's folder."
        ),
    ] = None,
    evaluate_accuracy: Annotated[
        bool, typer.Option("--eval/--no-eval", help="Evaluate the QDQ graph and FP32 on the eval part.")
    ] = True,
    data: DataOpt = None,
    seed: SeedOpt = None,
    samples: SamplesOpt = None,
    batch_size: BatchOpt = None,
    limit: LimitOpt = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compute activation scales with one method and write the calibration JSON and the QDQ graph.

    Reads the statistics file (collecting it first if needed), so trying another method costs no
    new pass over the data. Prints the QDQ graph's eval accuracy beside FP32 unless --no-eval.

    --method auto searches a small set of points to keep in float so that accuracy on tuning pairs
    (never the eval part) stays within --max-drop points of FP32; it also writes
    <recipe>.search.json (sensitivities, the accuracy curve, timings) and <recipe>.search.png.
    """
    from qtool.quantization.calibration import calibrate_model, calibration_paths, write_calibrated_graph, write_calibration
    from qtool.deployment.evaluate import evaluate_graph, tokenizer_for

    check_onnx_file(model_path)
    auto = method == AUTO_METHOD
    if not auto and any(v is not None for v in (base_method, max_drop, tune_samples, sensitivity_samples)):
        raise QtoolError("--base-method, --max-drop, --tune-samples and --sensitivity-samples need --method auto")
    if auto and (keep_fp or mixed_precision):
        raise QtoolError("--method auto chooses the points kept in float itself; drop --keep-fp/--mixed-precision")
    search_config = _config(
        SearchConfig,
        max_drop=max_drop,
        tune_samples=tune_samples,
        sensitivity_samples=sensitivity_samples,
        batch_size=batch_size,
        threads=threads,
    )
    if auto:
        search_config.validate()
    config = _config(
        CalibrateConfig,
        method=(base_method or "max") if auto else method,
        p=p,
        groups=groups,
        permute=permute,
        scope=scope,
        weights=weights,
        keep_fp=tuple(keep_fp or ()),
        mixed_precision=mixed_precision,
        outlier_ratio=outlier_ratio,
        smooth=smooth,
    )
    config.validate()
    collected = _load_stats(model_path, stats, data, seed, samples, batch_size, threads)
    data_config, split = _load_split(data, seed)
    if collected.manifest["data"] != split.describe():
        raise QtoolError(f"the statistics were collected on another data split; run `qtool collect {model_path}` again")
    document, collected = calibrate_model(
        model_path,
        collected,
        config,
        lambda graph: _load_stats(graph, None, data, seed, samples, batch_size, threads),
    )
    search = None
    if auto:
        from qtool.quantization.search import auto_calibrate, search_summary

        search_config = replace(search_config, max_length=data_config.max_length)
        document, search, curve_figure = auto_calibrate(
            model_path, collected, document, split, tokenizer_for(model_path), search_config, out or model_path.parent
        )
    calibration_file, qdq_file = calibration_paths(out or model_path.parent, document["recipe"])
    write_calibrated_graph(model_path, document, qdq_file)
    write_calibration(document, calibration_file)
    summary = {
        "recipe": document["recipe"],
        "method": document["method"],
        "params": document["params"],
        "scope": document["scope"],
        "weights": document["weights"],
        "quantized_points": document["quantized_points"],
        "total_points": document["total_points"],
        "kept_in_float": document["kept_in_float"],
        "calibration": str(calibration_file),
        "qdq_graph": str(qdq_file),
        "data_split": split.describe(),
        "smoothing": {k: v for k, v in document["smoothing"].items() if k != "factors"}
        if document.get("smoothing")
        else None,
    }
    if search is not None:
        record = calibration_file.with_name(document["mixed_precision"]["record"])
        summary["search"] = search_summary(search, curve_figure) | {"record": str(record)}
    if evaluate_accuracy:
        eval_config = _config(EvalConfig, batch_size=batch_size, limit=limit, threads=threads)
        fp32 = evaluate_graph(model_path, split, eval_config, data_config.max_length)
        qdq = evaluate_graph(qdq_file, split, eval_config, data_config.max_length)
        summary |= {
            "fp32_accuracy": fp32["accuracy"],
            "qdq_accuracy": qdq["accuracy"],
            "eval_examples": qdq["examples"],
        }
    if as_json:
        _print_json(summary)
        return
    rows = [
        ("recipe", summary["recipe"]),
        ("scope", summary["scope"]),
        ("quantized points", f"{summary['quantized_points']} of {summary['total_points']}"),
        ("kept in float", ", ".join(summary["kept_in_float"]) or "-"),
        *(
            [("smoothing", f"alpha {document['smoothing']['alpha']:g} ({document['smoothing']['graph']})")]
            if document.get("smoothing")
            else []
        ),
        ("calibration", calibration_file),
        ("QDQ graph", qdq_file),
    ]
    if evaluate_accuracy:
        rows += [
            ("FP32 accuracy", f"{summary['fp32_accuracy']:.4f}"),
            (
                "QDQ accuracy",
                f"{summary['qdq_accuracy']:.4f} ({100 * (summary['qdq_accuracy'] - summary['fp32_accuracy']):+.2f} points)",
            ),
            ("eval pairs", summary["eval_examples"]),
        ]
    stdout.print(_table("calibration", rows))
    if search is not None:
        _print_search(summary["search"])


def _print_search(search: dict) -> None:
    tuning = search["tuning"]
    table = Table(title=f"mixed-precision search: accuracy on {tuning['pairs']} tuning pairs", title_justify="left")
    for column in ("points in float", "accuracy", "vs FP32", "within budget"):
        table.add_column(column, justify="right")
    for point in search["curve"]:
        table.add_row(
            str(point["float_points"]),
            f"{100 * point['accuracy']:.2f}",
            f"{-point['drop']:+.2f}",
            "yes" if point["within"] else "no",
        )
    stdout.print(table)
    if not search["within_budget"]:
        stdout.print(
            f"[bold]budget not met:[/] no set kept in float came within {search['max_drop']:g} points of FP32 on the "
            "tuning pairs; kept the most sensitive points up to the best tuning accuracy (raise --max-drop)",
            soft_wrap=True,
        )
    stdout.print(
        f"FP32 {100 * tuning['fp32_accuracy']:.2f} on the tuning pairs; chosen after pruning: "
        f"{len(search['chosen'])} points in float ({100 * search['tuning_accuracy']:.2f}, {-search['tuning_drop']:+.2f}); "
        f"{search['evaluations']} evaluations ({search['reused_evaluations']} reused) in {search['seconds']:.0f} s; "
        f"curve {search['figure']}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@user_errors
def quantize(
    model_path: Annotated[Path, typer.Argument(help="FP32 ONNX graph written by `qtool export`.", show_default=False)],
    calibration: Annotated[
        Path, typer.Argument(help="Calibration JSON written by `qtool calibrate`.", show_default=False)
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="QDQ graph to write. Default: <recipe>.qdq.onnx beside the graph."),
    ] = None,
) -> None:
    """Write the QDQ graph of an existing calibration file (refused if it was made for another model)."""
    from qtool.quantization.calibration import calibration_paths, load_calibration, write_calibrated_graph

    check_onnx_file(model_path)
    document = load_calibration(calibration, model_path)
    target = output or calibration_paths(model_path.parent, document["recipe"])[1]
    write_calibrated_graph(model_path, document, target)
    stdout.print(f"wrote {target}", highlight=False)


@app.command("export-scales")
@user_errors
def export_scales(
    calibration: Annotated[
        Path, typer.Argument(help="Calibration JSON written by `qtool calibrate`.", show_default=False)
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="trt-cache: TensorRT calibration cache (trtexec --int8 --calib=FILE); ort-overrides: ONNX "
            "Runtime TensorQuantOverrides JSON for quantize_static.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="File to write. Default: <recipe>.calib.cache or <recipe>.ort-overrides.json beside the calibration.",
        ),
    ] = None,
    model_path: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="The FP32 graph the calibration was made for (checked). Recommended: the scales are then also "
            "given to the tensors that carry the same values (attention MatMul inputs, reshapes).",
        ),
    ] = None,
    trt_version: Annotated[
        str | None,
        typer.Option(
            "--trt-version",
            help="TensorRT version named in the cache header, e.g. 10.14.1; use the one that reads the cache. "
            "Default: the installed tensorrt package, else 10.14.1.",
        ),
    ] = None,
) -> None:
    """Write a calibration's activation scales for use outside qtool (per-tensor calibrations only).

    TensorRT 10 (implicit quantization, deprecated since 10.1): `trtexec --onnx=FP32.onnx --int8
    --calib=FILE`. ONNX Runtime: `quantize_static(..., extra_options={"TensorQuantOverrides":
    qtool.quantization.scale_formats.load_ort_overrides(FILE), "ActivationSymmetric": True})`.
    Points kept in float are left out. PEG calibrations are refused: deploy their QDQ graph.
    """
    from qtool.quantization import scale_formats as interchange

    if fmt not in interchange.FORMATS:
        raise QtoolError(f"--format must be one of {', '.join(interchange.FORMATS)}, got {fmt!r}")
    from qtool.quantization.calibration import load_calibration
    from qtool.exporter.points import load_quant_points

    if model_path is not None:
        check_onnx_file(model_path)
    document = load_calibration(calibration, model_path)
    model = load_quant_points(model_path)[0] if model_path is not None else None
    target = output or interchange.default_output(calibration, document, fmt)
    summary = interchange.export_scales(document, fmt, target, model=model, trt_version=trt_version)
    header = f" (header {summary['header']})" if "header" in summary else ""
    stdout.print(
        f"wrote {target}: {summary['tensors']} tensor scales from {summary['points']} quantized points{header}",
        highlight=False,
        soft_wrap=True,
    )
    if "placement_note" in summary:
        stdout.print(f"note: {summary['placement_note']}", highlight=False, soft_wrap=True)
    if document.get("smoothing"):
        stdout.print(
            f"note: this calibration migrates activation range into the weights (--smooth); use the scales with "
            f"the smoothed graph {document['smoothing']['graph']} beside the FP32 graph, not with the FP32 graph",
            highlight=False,
            soft_wrap=True,
        )
    if model is None:
        stdout.print(
            "note: without --model only each point's own tensor is named; pass --model FP32.onnx to also name "
            "the attention MatMul inputs and reshapes that carry the same values",
            highlight=False,
            soft_wrap=True,
        )


def _int_list(values: list[str] | None, option: str) -> tuple[int, ...] | None:
    """Repeatable or comma-separated integers: `--batch 1,8` or `--batch 1 --batch 8`."""
    if not values:
        return None
    try:
        return tuple(int(v) for value in values for v in value.split(",") if v.strip())
    except ValueError:
        raise QtoolError(f"{option} takes whole numbers such as 1,8; got {' '.join(values)}") from None


def _latency_row(name: str, entry: dict) -> list[str]:
    latency, memory = entry["latency"], entry.get("memory", {})
    added = memory.get("rss_runner_added_bytes")
    return [
        name,
        f"{entry['batch']}x{entry['sequence_length']}",
        f"{latency['p50_ms']:.2f}",
        f"{latency['mean_ms']:.2f}",
        f"{latency['p90_ms']:.2f}",
        f"{latency['p99_ms']:.2f}",
        f"{latency['min_ms']:.2f}",
        f"{latency['max_ms']:.2f}",
        f"{latency['throughput_per_s']:.1f}",
        "-" if added is None else f"{added / 2**20:.0f}",
        f"{entry['model_bytes'] / 2**20:.1f}",
    ]


LATENCY_COLUMNS = (
    "model",
    "shape",
    "p50 ms",
    "mean ms",
    "p90 ms",
    "p99 ms",
    "min ms",
    "max ms",
    "seq/s",
    "runner RSS MB",
    "size MB",
)


@app.command()
@user_errors
def bench(
    models: Annotated[
        list[Path],
        typer.Argument(help="Engines to measure: .onnx (ONNX Runtime) or .plan (TensorRT).", show_default=False),
    ],
    compare_models: Annotated[
        bool,
        typer.Option("--compare", help="Run the models interleaved on the same inputs and print ratios to the first."),
    ] = False,
    batch: Annotated[
        list[str] | None,
        typer.Option(
            "--batch", help=f"Batch size(s); a list makes a sweep (1,8). Default: {BenchConfig.batch_sizes[0]}."
        ),
    ] = None,
    seq_len: Annotated[
        list[str] | None,
        typer.Option(
            "--seq-len", help=f"Sequence length(s); a list makes a sweep. Default: {BenchConfig.sequence_lengths[0]}."
        ),
    ] = None,
    warmup: Annotated[int | None, typer.Option(help=f"Untimed runs first. Default: {BenchConfig.warmup}.")] = None,
    iterations: Annotated[int | None, typer.Option(help=f"Timed runs. Default: {BenchConfig.iterations}.")] = None,
    duration: Annotated[float | None, typer.Option(help="Run for this many seconds instead of --iterations.")] = None,
    threads: ThreadsOpt = None,
    inputs: Annotated[
        str | None,
        typer.Option(help=f"Inputs: {', '.join(INPUT_KINDS)} (real tokenized pairs). Default: {BenchConfig.inputs}."),
    ] = None,
    provider: Annotated[
        list[str] | None,
        typer.Option(
            "--provider",
            help="ONNX Runtime execution provider(s) in priority order, e.g. CUDAExecutionProvider. Default: CPU.",
        ),
    ] = None,
    isolated: Annotated[
        bool, typer.Option("--isolated", help="Measure peak memory of each model in its own process.")
    ] = False,
    with_eval: Annotated[bool, typer.Option("--eval", help="Add eval-part accuracy from the same runner.")] = False,
    data: DataOpt = None,
    seed: SeedOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Latency (mean, p50, p90, p99, min, max), throughput, host memory and size of engines.

    With several models and --compare they run interleaved, so machine noise hits all alike.
    Speed is measured, never assumed: compare candidates in one run on the same machine.
    """
    from qtool.data import DataConfig as _DataConfig
    from qtool.deployment.bench import bench_compare, bench_model, runner_factory, tokenizer_for_model
    from qtool.deployment.evaluate import evaluate, logit_to_label

    config = _config(
        BenchConfig,
        batch_sizes=_int_list(batch, "--batch"),
        sequence_lengths=_int_list(seq_len, "--seq-len"),
        warmup=warmup,
        iterations=iterations,
        duration_seconds=duration,
        threads=threads,
        inputs=inputs,
        providers=tuple(provider) if provider else None,
    )
    config.validate()
    data_config = _config(_DataConfig, source=data, seed=seed)
    if compare_models:
        result = bench_compare(models, config, data_config, isolated_memory=isolated)
        entries = [
            (c["name"], {**c, **{k: r[k] for k in ("batch", "sequence_length") if k in r}}, c)
            for r in result["results"]
            for c in r["candidates"]
        ]
    else:
        runs = [bench_model(m, config, data_config, isolated=isolated) for m in models]
        result = {"runs": runs}
        entries = [(Path(run["model"]).name, entry, None) for run in runs for entry in run["results"]]
    if with_eval:
        from qtool.data import load_qnli

        split = load_qnli(data_config)
        eval_config = _config(EvalConfig, limit=limit, threads=threads)
        accuracy = {}
        for model in models:
            labels = logit_to_label(model) if model.suffix == ".onnx" else None
            with runner_factory(model, threads, config.providers)() as runner:
                accuracy[str(model)] = evaluate(
                    runner,
                    tokenizer_for_model(model),
                    split,
                    eval_config,
                    labels,
                    data_config.max_length,
                    description=f"eval {model.name}",
                )
        result["accuracy"] = accuracy
    if as_json:
        _print_json(result)
        return
    table = Table(title="latency", title_justify="left")
    for column in LATENCY_COLUMNS + (("speedup vs first",) if compare_models else ()):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, entry, candidate in entries:
        row = _latency_row(name, entry)
        if candidate is not None:
            row.append(f"{candidate['speedup']:.2f}x")
        table.add_row(*row)
    stdout.print(table)
    if with_eval:
        for model, evaluation in result["accuracy"].items():
            stdout.print(
                f"{Path(model).name}: accuracy {evaluation['accuracy']:.4f} on {evaluation['examples']} pairs",
                highlight=False,
            )
    stdout.print(
        f"[dim]inputs: {config.inputs}; threads: {config.threads or 'default'}; host memory is the RSS added "
        "by creating the runner (--isolated for per-process peaks)[/]",
        highlight=False,
    )


BACKENDS = ("ort", "trt")


def _triple(value: str | None, option: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    parts = _int_list([value], option)
    if parts is None or len(parts) != 3:
        raise QtoolError(f"{option} takes MIN,OPT,MAX such as 1,1,32; got {value}")
    return parts


@app.command()
@user_errors
def build(
    model_path: Annotated[
        Path, typer.Argument(help="QDQ (or FP32) ONNX graph, e.g. <recipe>.qdq.onnx.", show_default=False)
    ],
    backend: Annotated[
        str, typer.Option(help=f"Target: {', '.join(BACKENDS)} (ONNX Runtime CPU graph, or TensorRT engine).")
    ] = "ort",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write. Default: <graph>.ort.onnx (ort) or <graph>.plan (trt)."),
    ] = None,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="trt: let layers without Q/DQ run in FP16 (TensorRT 10).")
    ] = False,
    batch: Annotated[
        str | None,
        typer.Option(
            "--batch",
            help=f"trt: batch MIN,OPT,MAX of the optimization profile. Default: {','.join(map(str, TrtBuildConfig.batch))}.",
        ),
    ] = None,
    sequence: Annotated[
        str | None,
        typer.Option(
            "--sequence",
            help=f"trt: sequence length MIN,OPT,MAX. Default: {','.join(map(str, TrtBuildConfig.sequence))}.",
        ),
    ] = None,
    workspace_mib: Annotated[
        int | None, typer.Option(help="trt: builder workspace limit in MiB. Default: TensorRT's.")
    ] = None,
    timing_cache: Annotated[
        Path | None, typer.Option(help="trt: timing cache file, read and updated. Default: none.")
    ] = None,
    optimization_level: Annotated[
        int | None,
        typer.Option(help=f"trt: builder optimization level 0-5. Default: {TrtBuildConfig.optimization_level}."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a deployable artifact from a graph: the ONNX Runtime CPU form or a TensorRT engine.

    ort: rewrites the TensorRT-style QDQ graph into the form ONNX Runtime's CPU kernels run fastest
    (same quantized values: int8 zero point 0 stored as uint8 zero point 128, fused integer
    projections) and reports which integer kernels ONNX Runtime fused. trt: builds engine.plan
    with explicit quantization, one optimization profile and a build manifest (needs TensorRT and
    an NVIDIA GPU: pip install 'qtool[trt]').
    """
    check_onnx_file(model_path)
    if backend not in BACKENDS:
        raise QtoolError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "ort":
        from qtool.exporter.ort_cpu import build_for_ort_cpu

        target = output or model_path.with_name(f"{model_path.stem}.ort.onnx")
        report = {"backend": "ort", **build_for_ort_cpu(model_path, target)}
        summary = [
            ("graph", target),
            (
                "fused integer kernels",
                ", ".join(f"{k} {v}" for k, v in sorted(report["integer_ops"].items())) or "none",
            ),
            ("float MatMuls fed by two DequantizeLinear", report["float_matmuls_two_dequantized_inputs"]),
            ("QuantizeLinear / DequantizeLinear left", f"{report['quantize_linear']} / {report['dequantize_linear']}"),
            *([("note", report["note"])] if report.get("note") else []),
        ]
    else:
        from qtool.runners.trt import build_engine

        config = _config(
            TrtBuildConfig,
            fp16=fp16,
            batch=_triple(batch, "--batch"),
            sequence=_triple(sequence, "--sequence"),
            workspace_mib=workspace_mib,
            timing_cache=timing_cache,
            optimization_level=optimization_level,
        )
        target = output or model_path.with_suffix(".plan")
        report = {"backend": "trt", "engine": str(target), **build_engine(model_path, target, config)}
        summary = [
            ("engine", target),
            ("TensorRT", report.get("tensorrt_version", "-")),
            ("GPU", report.get("gpu", "-")),
        ]
    if as_json:
        _print_json(report)
    else:
        stdout.print(_table(f"build ({backend})", summary))


@app.command()
@user_errors
def reproduce(
    model: ModelOpt = None,
    data: DataOpt = None,
    seed: SeedOpt = None,
    configs: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            "-c",
            help="Run only this configuration (repeatable), e.g. fp32, max-all, peg-k4-all. Default: all of them.",
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config-file", help="TOML file with more configurations: [configurations.NAME] method = ..., groups = ..."
        ),
    ] = None,
    max_drop: Annotated[
        float | None, typer.Option(help="Accuracy budget in points for the 'what to deploy' advice. Default: 1.")
    ] = None,
    samples: SamplesOpt = None,
    limit: LimitOpt = None,
    artifacts: ArtifactsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the study end to end: fine-tune if needed, export, collect, analyze, then calibrate and
    evaluate every configuration; writes ARTIFACTS/report/results.json and report.md.

    Configurations: FP32; max (scope all and gemm); percentile 99, 99.9, 99.99, 99.999; PEG K = 1, 2,
    3, 4, 6, 8; mixed precision paper and outliers. Every stage is cached, so a rerun (or a run after
    an interruption) only does what is missing.
    """
    from qtool.stages.study import ReproduceConfig, load_configuration_file, run_reproduce

    data_config, split = _load_split(data, seed)
    config = _config(ReproduceConfig, seed=seed, configurations=tuple(configs) if configs else None)
    config = replace(
        config,
        collect=_config(CollectConfig, samples=samples),
        eval=_config(EvalConfig, limit=limit),
        extra_configurations=load_configuration_file(config_file) if config_file else (),
        max_drop=config.max_drop if max_drop is None else max_drop,
    )
    result = run_reproduce(model, split, config, _artifacts(artifacts))
    if as_json:
        _print_json(result)
        return
    table = Table(title=f"qtool reproduce: {result['model']}", title_justify="left")
    for column in ("configuration", "scope", "accuracy %", "95 % CI", "vs FP32"):
        table.add_column(column, justify="left" if column in ("configuration", "scope") else "right")
    fp32 = result["results"][0]["accuracy"]
    for row in result["results"]:
        low, high = row["accuracy_ci95"]
        table.add_row(
            row["configuration"],
            row["scope"],
            f"{100 * row['accuracy']:.2f}",
            f"{100 * low:.1f}-{100 * high:.1f}",
            f"{100 * (row['accuracy'] - fp32):+.2f}",
        )
    stdout.print(table)
    stdout.print(
        f"data: {split.name} (fingerprint {split.fingerprint}); report: "
        f"{_artifacts(artifacts) / 'report' / 'report.md'}",
        highlight=False,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
