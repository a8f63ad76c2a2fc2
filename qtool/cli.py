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
from rich.table import Table

from qtool import __version__
from qtool.analysis.collect import CollectConfig
from qtool.analysis.outliers import OutlierConfig
from qtool.data import DataConfig
from qtool.errors import QtoolError
from qtool.exporter.onnx_export import ExportConfig
from qtool.models.finetune import FinetuneConfig
from qtool.runtime.evaluate import EvalConfig

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
            stderr.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
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
    from qtool.runtime import OrtRunner, check_onnx_file
    from qtool.runtime.evaluate import EvalConfig, evaluate, logit_to_label, tokenizer_for

    check_onnx_file(model_path)
    config = _config(EvalConfig, part=part, batch_size=batch_size, limit=limit, threads=threads)
    config.validate()
    data_config, split = _load_split(data, seed)
    with OrtRunner(model_path, threads=config.threads) as runner:
        result = evaluate(
            runner,
            tokenizer_for(model_path, tokenizer),
            split,
            config,
            logit_to_label(model_path),
            data_config.max_length,
            description=f"eval {model_path.name}",
        )
    result = {"model": str(model_path), **result}
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
    from qtool.runtime import check_onnx_file
    from qtool.runtime.evaluate import tokenizer_for

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
    from qtool.analysis import ActivationStats, collect_or_load
    from qtool.analysis.report import analysis_document, write_analysis
    from qtool.runtime import check_onnx_file
    from qtool.runtime.evaluate import tokenizer_for

    check_onnx_file(model_path)
    if top is not None and top < 1:
        raise QtoolError(f"--top must be at least 1, got {top}")
    config = _config(OutlierConfig, sigma=sigma)
    config.validate()
    if stats is not None:
        collected = ActivationStats.load(stats)
        collected.check_model(model_path)
    else:
        data_config, split = _load_split(data, seed)
        collect_config = _collect_config(samples, batch_size, threads, data_config.max_length)
        collected = collect_or_load(model_path, split, tokenizer_for(model_path), collect_config, force=force)
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


@app.command()
@user_errors
def reproduce(
    model: ModelOpt = None,
    data: DataOpt = None,
    seed: SeedOpt = None,
    artifacts: ArtifactsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the study end to end: fine-tune if needed, export FP32 ONNX, evaluate (growing with each stage)."""
    from qtool.pipeline import ReproduceConfig, run_reproduce

    _, split = _load_split(data, seed)
    result = run_reproduce(model, split, _config(ReproduceConfig, seed=seed), _artifacts(artifacts))
    if as_json:
        _print_json(result)
        return
    table = Table(title=f"qtool reproduce: {result['model']}", title_justify="left")
    for column in ("configuration", "accuracy", "pairs", "graph"):
        table.add_column(column)
    for row in result["results"]:
        table.add_row(row["configuration"], f"{row['accuracy']:.4f}", str(row["examples"]), row["graph"])
    stdout.print(table)
    stdout.print(f"data: {split.name} (fingerprint {split.fingerprint})", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
