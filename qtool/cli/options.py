"""Every command-line option, declared once. Defaults live in the stage configs, `qtool.defaults`
and the registries; help texts read them there, and None means "the config's default"."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from qtool.analysis.collect import CollectConfig
from qtool.analysis.outliers import OutlierConfig
from qtool.api import ARTIFACTS_ENV, AUTO_METHOD
from qtool.calibrators.methods import CALIBRATORS, PEG_GROUPINGS
from qtool.calibrators.precision import MIXED_PRECISION_PRESETS, SCOPES
from qtool.cli.data_options import Data, LabelColumn, Split, Task, TextColumns, TuneData  # noqa: F401 (every option here)
from qtool.cli.study_options import (  # noqa: F401 (every option here)
    Backends,
    ConfigFile,
    Configurations,
    DeployMaxDrop,
    StudyIterations,
    StudyWarmup,
)
from qtool.data.split import EVAL_PARTS, DataConfig
from qtool.defaults import (
    BASE_METHOD,
    ORT_INT8_KERNELS,
    PEG_AUTO_MAX_GROUPS,
    PEG_AUTO_NOISE_FACTOR,
    PEG_LAYOUT,
)
from qtool.deployment.backends import BACKENDS
from qtool.deployment.bench import INPUT_KINDS, BenchConfig
from qtool.deployment.evaluate import EvalConfig
from qtool.deployment.trt_build import TrtBuildConfig
from qtool.executor import EXECUTORS, RAY_HINT, ExecutorConfig
from qtool.exporter.qdq import PEG_LAYOUTS, WEIGHT_MODES
from qtool.models.finetune import FinetuneConfig
from qtool.models.onnx_export import ExportConfig
from qtool.quantization.calibration import CalibrateConfig
from qtool.quantization.scale_formats import FALLBACK_TRT_VERSION, FORMATS
from qtool.quantization.search import SearchConfig


def _triple(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


# -- shared ------------------------------------------------------------------------------------------
Model = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Local Hugging Face folder or hub id. Default: the embedded all-MiniLM-L6-v2."),
]
MaxLength = Annotated[
    int | None,
    typer.Option(
        "--max-length",
        help=f"Tokens per text pair; longer pairs are cut. At most the model's positions. Default: {DataConfig.max_length}.",
    ),
]
Seed = Annotated[
    int | None, typer.Option("--seed", help=f"Seed of the data split and of training. Default: {DataConfig.seed}.")
]
Artifacts = Annotated[
    Path | None,
    typer.Option(
        "--artifacts",
        help=f"Output folder for models, graphs and reports. Default: ${ARTIFACTS_ENV}, else ./artifacts.",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
Wide = Annotated[
    bool, typer.Option("--wide", help="Print every table column, however wide (default: what fits 80 columns).")
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        help=f"Batch size. Default: {EvalConfig.batch_size} (fine-tuning: {FinetuneConfig.batch_size}).",
        show_default=False,
    ),
]
Limit = Annotated[
    int | None, typer.Option("--limit", help="Evaluate only the first N pairs of the part (for quick checks).")
]
Threads = Annotated[
    int | None, typer.Option("--threads", help="Intra-op threads for ONNX Runtime. Default: all cores.")
]
Force = Annotated[bool, typer.Option("--force", help="Recompute even if a matching cached result exists.")]
Samples = Annotated[
    int | None,
    typer.Option(
        "--samples",
        help=f"Calibration pairs (calibration part, topped up from train). Default: {CollectConfig.samples}.",
    ),
]
Stats = Annotated[
    Path | None, typer.Option("--stats", help="Statistics file. Default: <model>.stats.npz beside the graph.")
]


def graph_argument(text: str):
    return Annotated[Path, typer.Argument(help=text, show_default=False)]


Fp32Graph = graph_argument("FP32 ONNX graph written by `qtool export`.")
CalibrationFile = graph_argument("Calibration JSON written by `qtool calibrate`.")

# -- finetune and export ---------------------------------------------------------------------------
Epochs = Annotated[float | None, typer.Option(help=f"Training epochs. Default: {FinetuneConfig.epochs:g}.")]
LearningRate = Annotated[
    float | None, typer.Option("--lr", help=f"Peak AdamW learning rate. Default: {FinetuneConfig.learning_rate:g}.")
]
WarmupRatio = Annotated[
    float | None, typer.Option(help=f"Share of steps for linear warm-up. Default: {FinetuneConfig.warmup_ratio:g}.")
]
MaxSteps = Annotated[int | None, typer.Option(help="Stop after N optimizer steps (for quick checks).")]
RetrainForce = Annotated[
    bool, typer.Option("--force", help="Train again even if a matching fine-tuned model is cached.")
]
ExportOutput = Annotated[
    Path | None, typer.Option("--output", "-o", help="ONNX file to write. Default: ARTIFACTS/<model>/fp32.onnx.")
]
Opset = Annotated[int | None, typer.Option(help=f"ONNX opset, 17 or newer. Default: {ExportConfig.opset}.")]
ReexportForce = Annotated[
    bool, typer.Option("--force", help="Export again even if the graph of the same weights and options exists.")
]

# -- eval ------------------------------------------------------------------------------------------
RUNNABLE_FILES = ", ".join(f"{'/'.join(b.suffixes)} ({b.summary})" for b in BACKENDS.values())
EvalGraph = graph_argument(f"Classifier to score: an ONNX graph (qtool's or any), or a built artifact: {RUNNABLE_FILES}.")
Part = Annotated[
    str | None,
    typer.Option(
        help=f"Data part: {', '.join(EVAL_PARTS)} (all: every row of the file given to --data, or of its dev.tsv). "
        f"Default: {EvalConfig.part}."
    ),
]
Tokenizer = Annotated[Path | None, typer.Option(help="Tokenizer folder. Default: the one exported beside the graph.")]

# -- collect and analyze ---------------------------------------------------------------------------
Bins = Annotated[
    int | None, typer.Option(help=f"Histogram bins of |x| (power of two). Default: {CollectConfig.histogram_bins}.")
]
AnalysisOut = Annotated[
    Path | None,
    typer.Option(
        "--out", "-o", help="Folder for analysis.json, analysis.csv and PNG figures. Default: <graph folder>/analysis."
    ),
]
Top = Annotated[int | None, typer.Option("--top", help="Show only the N points with the highest kurtosis.")]
Sigma = Annotated[
    float | None,
    typer.Option(
        help="Outlier rule: channel max |x| above SIGMA standard deviations of the tensor. "
        f"Default: {OutlierConfig.sigma:g}."
    ),
]
Figures = Annotated[bool, typer.Option("--figures/--no-figures", help="Write PNG figures.")]

# -- calibrate -------------------------------------------------------------------------------------
Method = Annotated[
    str | None,
    typer.Option(
        "--method",
        help=f"Calibration method: {', '.join(CALIBRATORS)}, or {AUTO_METHOD} (search the points to keep in float, "
        f"see --max-drop). Default: {CalibrateConfig.method}.",
    ),
]
MethodOption = Annotated[
    list[str] | None,
    typer.Option(
        "--method-option",
        help="NAME=VALUE: an option of --method that has no flag of its own (a calibrator registered from "
        "outside qtool), e.g. --method-option fraction=0.5; repeatable.",
    ),
]
Percentile = Annotated[
    float | None,
    typer.Option(
        "--p", help=f"Percentile of |x| for --method percentile, in (0, 100]. Default: {CalibrateConfig.p:g}."
    ),
]
Groups = Annotated[
    str | None,
    typer.Option(
        "--groups",
        "-k",
        help=f"Channel groups K for --method peg (K >= 1), or auto: per tensor the smallest K whose expected "
        f"rounding noise is at most {PEG_AUTO_NOISE_FACTOR:g}x per-channel quantization's (K <= {PEG_AUTO_MAX_GROUPS}). "
        f"Default: {CalibrateConfig.groups}.",
    ),
]
Grouping = Annotated[
    str | None,
    typer.Option(
        "--grouping",
        help=f"PEG group boundaries: {', '.join(PEG_GROUPINGS)} (optimal: the least expected rounding noise, "
        f"see docs/calibration.md; equal: groups of equal size, as in the study). Default: {CalibrateConfig.grouping}.",
    ),
]
Permute = Annotated[
    bool | None,
    typer.Option(
        "--permute/--no-permute",
        help="PEG: sort channels by range before grouping (Bondarenko et al.), or keep contiguous groups.",
    ),
]
Scope = Annotated[
    str | None,
    typer.Option(help=f"What is quantized: {', '.join(SCOPES)} (see docs/calibration.md). Default: {CalibrateConfig.scope}."),
]
Weights = Annotated[
    str | None,
    typer.Option(
        help=f"Weight scales: {', '.join(WEIGHT_MODES)} (folded, with --method peg: per output channel after "
        "multiplying each weight row by its input channel's PEG group scale, so that a projection is one integer "
        f"GEMM at about plain INT8's speed; the weights round differently). Default: {CalibrateConfig.weights}."
    ),
]
WeightBits = Annotated[
    int | None,
    typer.Option(
        "--weight-bits",
        help="Grid of the projection weights: 8, or 7 (codes in [-64, 63]), which ONNX Runtime's U8S8 kernels "
        "compute exactly also on x86 CPUs without VNNI, where 8-bit weights need the slower U8U8 kernels to stay "
        f"exact. Embedding tables keep 8 bits. Default: {CalibrateConfig.weight_bits}.",
    ),
]
KeepFp = Annotated[
    list[str] | None,
    typer.Option(
        "--keep-fp", help="Keep the points matching this glob (e.g. 'layer.*.ffn.output') in float; repeatable."
    ),
]
MixedPrecision = Annotated[
    str | None,
    typer.Option("--mixed-precision", help=f"Preset of points kept in float: {', '.join(MIXED_PRECISION_PRESETS)}."),
]
OutlierRatio = Annotated[
    float | None,
    typer.Option(
        help="--mixed-precision outliers keeps points with max|x| >= RATIO x p99.99. "
        f"Default: {CalibrateConfig.outlier_ratio:g}."
    ),
]
Smooth = Annotated[
    float | None,
    typer.Option(
        "--smooth",
        help="Migrate activation range into the following weights first (SmoothQuant-style, strength ALPHA "
        "in [0, 1], folded into the LayerNorms); statistics of the smoothed graph are collected once.",
    ),
]
BaseMethod = Annotated[
    str | None,
    typer.Option(
        "--base-method",
        help=f"--method {AUTO_METHOD}: the ranges of the quantized points ({', '.join(CALIBRATORS)}; --p, --groups "
        f"apply). Default: {BASE_METHOD}.",
    ),
]
SearchMaxDrop = Annotated[
    float | None,
    typer.Option(
        "--max-drop",
        help=f"--method {AUTO_METHOD}: accuracy points below FP32 allowed on the tuning pairs. "
        f"Default: {SearchConfig.max_drop:g}.",
    ),
]
SearchConfidence = Annotated[
    float | None,
    typer.Option(
        "--confidence",
        help=f"--method {AUTO_METHOD}: a set is accepted when the drop's one-sided upper bound at this confidence "
        f"(from the tuning pairs FP32 and the set predict differently) is within --max-drop. "
        f"Default: {SearchConfig.confidence:g}.",
    ),
]
TuneSamples = Annotated[
    int | None,
    typer.Option(
        "--tune-samples",
        help=f"--method {AUTO_METHOD}: tuning pairs at most (the data's tuning part: never fine-tuning, "
        "calibration or eval pairs). "
        f"Default: {SearchConfig.tune_samples}.",
    ),
]
SensitivitySamples = Annotated[
    int | None,
    typer.Option(
        "--sensitivity-samples",
        help=f"--method {AUTO_METHOD}: pairs for the one-point-at-a-time sensitivity runs (the first tuning pairs). "
        f"Default: {SearchConfig.sensitivity_samples}.",
    ),
]
CalibrationOut = Annotated[
    Path | None,
    typer.Option(
        "--out", "-o", help="Folder for <recipe>.calib.json and <recipe>.qdq.onnx. Default: the graph's folder."
    ),
]
EvaluateAccuracy = Annotated[
    bool, typer.Option("--eval/--no-eval", help="Evaluate the QDQ graph and FP32 on the eval part.")
]

# -- quantize and export-scales --------------------------------------------------------------------
PegLayout = Annotated[
    str,
    typer.Option(
        "--peg-layout",
        "--peg-form",
        help=f"How PEG groups are laid out in the QDQ graph: {' or '.join(PEG_LAYOUTS)} (scaled: per-channel "
        "scales around one QuantizeLinear, fast on ONNX Runtime; gathered: per-tensor scales per group, what "
        "TensorRT accepts). A calibration with --weights folded has a layout of its own. --peg-form is the "
        f"older name. Default: {PEG_LAYOUT}.",
    ),
]
QdqOutput = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="QDQ graph to write. Default: <recipe>.qdq.onnx beside the graph."),
]
ScaleFormat = Annotated[
    str,
    typer.Option(
        "--format",
        "-f",
        help=f"One of {', '.join(FORMATS)}. trt-cache: TensorRT calibration cache (trtexec --int8 --calib=FILE), "
        "TensorRT 10 and older only (11 removed implicit quantization: deploy the QDQ graph there); "
        "ort-overrides: ONNX Runtime TensorQuantOverrides JSON for quantize_static.",
        show_default=False,
    ),
]
ScalesOutput = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="File to write. Default: <recipe>.calib.cache or <recipe>.ort-overrides.json beside the calibration.",
    ),
]
CalibratedModel = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="The FP32 graph the calibration was made for (checked). Recommended: the scales are then also "
        "given to the tensors that carry the same values (attention MatMul inputs, reshapes).",
    ),
]
TrtVersion = Annotated[
    str | None,
    typer.Option(
        "--trt-version",
        help="TensorRT version named in the cache header, e.g. 10.14.1; use the one that reads the cache "
        "(10 or older: TensorRT 11 reads no calibration cache). "
        f"Default: the installed tensorrt package, else {FALLBACK_TRT_VERSION}.",
    ),
]

# -- bench -----------------------------------------------------------------------------------------
BenchModels = Annotated[
    list[Path], typer.Argument(help=f"Models to measure: {RUNNABLE_FILES}.", show_default=False)
]
Compare = Annotated[
    bool, typer.Option("--compare", help="Run the models interleaved on the same inputs and print ratios to the first.")
]
BenchBatch = Annotated[
    list[str] | None,
    typer.Option("--batch", help=f"Batch size(s); a list makes a sweep (1,8). Default: {BenchConfig.batch_sizes[0]}."),
]
SeqLen = Annotated[
    list[str] | None,
    typer.Option(
        "--seq-len", help=f"Sequence length(s); a list makes a sweep. Default: {BenchConfig.sequence_lengths[0]}."
    ),
]
Warmup = Annotated[int | None, typer.Option(help=f"Untimed runs first. Default: {BenchConfig.warmup}.")]
Iterations = Annotated[int | None, typer.Option(help=f"Timed runs. Default: {BenchConfig.iterations}.")]
Duration = Annotated[float | None, typer.Option(help="Run for this many seconds instead of --iterations.")]
Inputs = Annotated[
    str | None,
    typer.Option(help=f"Inputs: {', '.join(INPUT_KINDS)} (data: texts or pairs of --data's eval part, tokenized; random: "
                 f"token ids). Default: {BenchConfig.inputs}."),
]
Provider = Annotated[
    list[str] | None,
    typer.Option(
        "--provider",
        help="ONNX Runtime execution provider(s) in priority order, e.g. CUDAExecutionProvider. Default: CPU.",
    ),
]
Isolated = Annotated[bool, typer.Option("--isolated", help="Measure peak memory of each model in its own process.")]
WithEval = Annotated[bool, typer.Option("--eval", help="Add eval-part accuracy from the same runner.")]

# -- build -----------------------------------------------------------------------------------------
BuildGraph = graph_argument("QDQ (or FP32) ONNX graph, e.g. <recipe>.qdq.onnx.")
DEFAULT_BACKEND = next(iter(BACKENDS))
ORT_PANEL, TRT_PANEL = "ONNX Runtime options (--backend ort)", "TensorRT options (--backend trt)"
Backend = Annotated[
    str,
    typer.Option(help="Target: " + "; ".join(f"{b.name} ({b.summary})" for b in BACKENDS.values()) + "."),
]
BuildOutput = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="File to write. Default: <graph>.ort.onnx (ort), <graph>.plan (trt), <graph>.ov.xml (openvino)."),
]
Fp16 = Annotated[
    bool | None,
    typer.Option(
        "--fp16/--fp32",
        help="trt: the float parts of the graph (all but its Q/DQ INT8 layers) in FP16 or FP32; the network is "
        f"strongly typed either way. Default: {'--fp16' if TrtBuildConfig.fp16 else '--fp32'}.",
        show_default=False, rich_help_panel=TRT_PANEL,
    ),
]
Tf32 = Annotated[
    bool | None,
    typer.Option(
        "--tf32/--no-tf32",
        help=f"trt: let FP32 layers use TF32 (recorded in the manifest). Default: {'on' if TrtBuildConfig.tf32 else 'off'}.",
        show_default=False, rich_help_panel=TRT_PANEL,
    ),
]
Int8Kernels = Annotated[
    str | None,
    typer.Option(
        "--int8-kernels",
        help="ort: integer GEMMs for uint8 activations times int8 weights (u8s8) or uint8 weights (u8u8, same values). "
        "auto: u8s8 where it is exact, else u8u8. U8S8 kernels on x86 without VNNI add pairs of products in 16 bits "
        "and can saturate (auto tests this CPU's kernels once); a graph calibrated with --weight-bits 7 cannot "
        f"saturate them and gets u8s8 on every CPU. Default: {ORT_INT8_KERNELS}.",
        show_default=False, rich_help_panel=ORT_PANEL,
    ),
]
QuantizeHead = Annotated[
    bool | None,
    typer.Option(
        "--quantize-head",
        help="trt: keep the Q/DQ pairs of the pooler and classifier GEMVs (dropped by default: INT8 gains nothing "
        "on a batch-1 GEMV).",
        show_default=False, rich_help_panel=TRT_PANEL,
    ),
]
ProfileBatch = Annotated[
    str | None,
    typer.Option(
        "--batch", help=f"trt: batch MIN,OPT,MAX of the optimization profile. Default: {_triple(TrtBuildConfig.batch)}."
    , rich_help_panel=TRT_PANEL),
]
ProfileSequence = Annotated[
    str | None,
    typer.Option("--sequence", help=f"trt: sequence length MIN,OPT,MAX. Default: {_triple(TrtBuildConfig.sequence)}.", rich_help_panel=TRT_PANEL),
]
WorkspaceMib = Annotated[int | None, typer.Option(help="trt: builder workspace limit in MiB. Default: TensorRT's.", rich_help_panel=TRT_PANEL)]
TimingCache = Annotated[Path | None, typer.Option(help="trt: timing cache file, read and updated. Default: none.", rich_help_panel=TRT_PANEL)]
OptimizationLevel = Annotated[
    int | None,
    typer.Option(help=f"trt: builder optimization level 0-5. Default: {TrtBuildConfig.optimization_level}.", rich_help_panel=TRT_PANEL),
]

# -- reproduce (its own options are in study_options.py) --------------------------------------
Executor = Annotated[
    str | None,
    typer.Option(
        "--executor",
        help=f"Where independent work runs (the study's configurations, the evaluations of --method {AUTO_METHOD}): "
        f"{' or '.join(EXECUTORS)} (Ray tasks on a cluster that sees the artifacts folder; {escape(RAY_HINT)}). "
        f"Default: {ExecutorConfig.kind}.",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option("--address", help="ray: the cluster to join ('auto': the running one). Default: start one here."),
]
CpusPerTask = Annotated[
    int | None,
    typer.Option(
        "--cpus-per-task",
        help="ray: CPUs each task reserves, also its ONNX Runtime threads. Default: all of this machine's.",
    ),
]
