"""What the commands print: tables on a terminal (readable at 80 columns, and when piped), or JSON.

A table shows its essential columns and folds long cells instead of cutting them; `--wide` shows
every column at the width it needs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from qtool.report.intervals import budget_verdict, paired_points

stdout = Console()
stderr = Console(stderr=True)


LEGEND_AFTER = 16  # characters of a name cell kept in a table too narrow for whole names


@dataclass(frozen=True)
class Column:
    name: str
    right: bool = True  # numbers are right-aligned
    essential: bool = True  # shown without --wide


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def error(message: str) -> None:
    """The one-line `error: ...` of a failed command, on stderr."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def path_problem(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}; check that the path exists, is a file or folder as asked, and is writable"


def note(text: str) -> None:
    stdout.print(text, highlight=False, soft_wrap=True)


def _table(title: str, columns: list[Column], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        # Names and paths (left-aligned) are never split, so they can be copied; numbers may wrap.
        table.add_column(
            column.name, justify="right" if column.right else "left", overflow="fold", no_wrap=not column.right
        )
    for row in rows:
        table.add_row(*row)
    return table


def print_table(title: str, columns: list[Column], rows: list[list[str]], wide: bool = False) -> None:
    shown = [index for index, column in enumerate(columns) if wide or column.essential]
    columns, rows = [columns[i] for i in shown], [[row[i] for i in shown] for row in rows]
    table, legend = _table(title, columns, rows), []
    console = stdout
    if wide:  # as wide as the table needs, even past the terminal or the 80 columns of a pipe
        needed = Measurement.get(stdout, stdout.options.update(max_width=10**4), table).maximum
        console = Console(file=stdout.file, width=max(stdout.width, needed), force_terminal=stdout.is_terminal)
    elif Measurement.get(stdout, stdout.options.update(max_width=10**4), table).maximum > stdout.width:
        # Too wide with whole names: the rows name their long cells by key, listed whole below the table.
        keys: dict[str, str] = {}
        for row in rows:
            for index, column in enumerate(columns):
                if not column.right and len(row[index]) > LEGEND_AFTER:
                    row[index] = keys.setdefault(row[index], f"[{len(keys) + 1}]")
        table, legend = _table(title, columns, rows), [f"{key} {name}" for name, key in keys.items()]
    console.print(table)
    for line in legend:
        console.print(escape(line), highlight=False, soft_wrap=True)


def print_fields(title: str, rows: list[tuple[str, Any]]) -> None:
    """Named values, one per line (`name  value`): a long value such as a path stays one line that the
    terminal wraps, so it can be copied whole."""
    width = max((len(key) for key, _ in rows), default=0)
    stdout.print(f"[bold]{escape(title)}[/]", highlight=False)
    for key, value in rows:
        stdout.print(f"  [bold]{escape(key.ljust(width))}[/]  {escape(str(value))}", highlight=False, soft_wrap=True)


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


# -- analyze -----------------------------------------------------------------------------------------
ANALYSIS_COLUMNS = [
    Column("point", right=False),
    Column("kurtosis"),
    Column("top-1% energy"),
    Column("max |x|", essential=False),
    Column("p99.99", essential=False),
    Column("max/p99.99"),
    Column("outlier channels (max |x|)", right=False),
]


def analysis_tables(document: dict, paths: dict, top: int | None, wide: bool) -> None:
    rows = document["points"]
    if top:
        rows = sorted((r for r in rows if r["kurtosis"] is not None), key=lambda r: -r["kurtosis"])[:top]
    cells = []
    for r in rows:
        channels = ", ".join(f"{c['channel']} ({c['absmax']:.3g})" for c in r["outlier_channels"][:4])
        extra = len(r["outlier_channels"]) - 4
        cells.append(
            [
                r["name"],
                fmt(r["kurtosis"], ".1f"),
                percent(r["top_energy_share"]),
                f"{r['absmax']:.2f}",
                f"{r['percentile']:.2f}",
                fmt(r["absmax_over_percentile"], ".1f"),
                channels + (f" +{extra}" if extra > 0 else ""),
            ]
        )
    print_table(f"activation outliers: {document['model'].get('source_model')}", ANALYSIS_COLUMNS, cells, wide)
    layer_columns = [
        Column("layer", right=False),
        Column("max kurtosis"),
        Column("at", right=False, essential=False),
        Column("max top-1% energy"),
        Column("at", right=False, essential=False),
        Column("residual outlier channels", right=False),
    ]
    layer_rows = [
        [
            s["layer"],
            fmt(s["max_kurtosis"], ".1f"),
            s["max_kurtosis_point"] or "-",
            percent(s["max_top_energy_share"]),
            s["max_top_energy_point"] or "-",
            " ".join(map(str, s["residual_outlier_channels"])) or "-",
        ]
        for s in document["layers"]
    ]
    print_table("per layer", layer_columns, layer_rows, wide)
    for key, text in document["definitions"].items():
        stdout.print(f"[dim]{key}: {text}[/]", highlight=False)
    stdout.print(
        f"[dim]{document['samples']} pairs {document['sample_sources']} from {document['data']['name']}; "
        f"outputs in {Path(paths['json']).parent}[/]",
        highlight=False,
    )


# -- calibrate ---------------------------------------------------------------------------------------
def accuracy(fraction: float) -> str:
    """An accuracy as every command prints it: percent of the pairs, two decimals."""
    return f"{100 * fraction:.2f} %"


def metric_fields(metrics: dict) -> list[tuple[str, str]]:
    """Macro-F1, F1 and MCC with their 95 % intervals, as fields."""
    shown = {"macro_f1": "macro-F1", "f1": "F1", "mcc": "MCC"}
    return [
        (label, f"{metrics[name]:.4f} (95 % CI {metrics[name + '_ci95'][0]:.4f}-{metrics[name + '_ci95'][1]:.4f})")
        for name, label in shown.items()
        if name in metrics
    ]


def calibration_summary(summary: dict) -> None:
    rows = [
        ("recipe", summary["recipe"]),
        ("scope", summary["scope"]),
        ("quantized points", f"{summary['quantized_points']} of {summary['total_points']}"),
        ("kept in float", ", ".join(summary["kept_in_float"]) or "-"),
    ]
    if summary.get("smoothing"):
        rows.append(("smoothing", f"alpha {summary['smoothing']['alpha']:g} ({summary['smoothing']['graph']})"))
    rows += [("calibration", summary["calibration"]), ("QDQ graph", summary["qdq_graph"])]
    if "qdq_accuracy" in summary:
        paired = summary["eval_vs_fp32"]
        rows += [
            ("FP32 accuracy", accuracy(summary["fp32_accuracy"])),
            ("QDQ accuracy", f"{accuracy(summary['qdq_accuracy'])} ({paired_points(paired)} points, paired 95 %)"),
            ("eval pairs", summary["eval_examples"]),
        ]
    print_fields("calibration", rows)
    if summary.get("search"):
        search_summary(summary["search"], summary.get("eval_vs_fp32"))


def search_summary(search: dict, eval_paired: dict | None = None) -> None:
    tuning = search["tuning"]
    columns = [Column("points in float"), Column("accuracy %"), Column("vs FP32"), Column("lost / won"),
               Column("drop bound"), Column("within budget")]
    rows = [
        [str(p["float_points"]), f"{100 * p['accuracy']:.2f}", f"{-p['drop']:+.2f}", f"{p['losses']} / {p['gains']}",
         f"{p['upper']:.2f}", "yes" if p["within"] else "no"]
        for p in search["curve"]
    ]
    confidence = search["tuning_paired"]["confidence"]
    given = f" from --tune-data {tuning['tune_data']['name']}" if tuning.get("tune_data") else ""
    print_table(f"mixed-precision search on {tuning['pairs']} tuning pairs{given} (drop bound: one-sided "
                f"{100 * confidence:g} %)", columns, rows)
    if not search["within_budget"]:
        note(
            f"budget not met: no set kept in float came within {search['max_drop']:g} points of FP32 at "
            f"{100 * confidence:g} % confidence on the tuning pairs; kept the set with the lowest bound "
            "(raise --max-drop, lower --confidence, or give more tuning data)"
        )
    chosen = search["tuning_paired"]
    note(
        f"FP32 {accuracy(tuning['fp32_accuracy'])} on the tuning pairs; chosen after pruning: "
        f"{len(search['chosen'])} points in float ({accuracy(search['tuning_accuracy'])}, {paired_points(chosen)} "
        f"points, bound {chosen['upper']:.2f}); {search['evaluations']} evaluations "
        f"({search['reused_evaluations']} reused) in {search['seconds']:.0f} s; curve {search['figure']}"
    )
    if eval_paired is not None:
        verdict = budget_verdict(eval_paired, search["max_drop"])
        note(f"on the eval part: {paired_points(eval_paired)} points vs FP32 (paired 95 %), {verdict}")


def export_scales_summary(target: Path, summary: dict, smoothing: dict | None, with_model: bool) -> None:
    header = f" (header {summary['header']})" if "header" in summary else ""
    note(f"wrote {target}: {summary['tensors']} tensor scales from {summary['points']} quantized points{header}")
    if "placement_note" in summary:
        note(f"note: {summary['placement_note']}")
    if smoothing:
        note(
            "note: this calibration migrates activation range into the weights (--smooth); use the scales with "
            f"the smoothed graph {smoothing['graph']} beside the FP32 graph, not with the FP32 graph"
        )
    if not with_model:
        note(
            "note: without --model only each point's own tensor is named; pass --model FP32.onnx to also name "
            "the attention MatMul inputs and reshapes that carry the same values"
        )


# -- bench -------------------------------------------------------------------------------------------
LATENCY_COLUMNS = [
    Column("model", right=False),
    Column("shape", essential=False),
    Column("p50 ms"),
    Column("mean ms", essential=False),
    Column("p90 ms", essential=False),
    Column("p99 ms"),
    Column("min ms", essential=False),
    Column("max ms", essential=False),
    Column("seq/s"),
    Column("runner RSS MB", essential=False),
    Column("size MB"),
]


def _latency_row(name: str, entry: dict) -> list[str]:
    latency, memory = entry["latency"], entry.get("memory", {})
    added = memory.get("rss_runner_added_bytes")
    return [
        name,
        f"{entry['batch']}x{entry['sequence_length']}",
        *(f"{latency[key]:.2f}" for key in ("p50_ms", "mean_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")),
        f"{latency['throughput_per_s']:.1f}",
        "-" if added is None else f"{added / 2**20:.0f}",
        f"{entry['model_bytes'] / 2**20:.1f}",
    ]


def bench_tables(result: dict, compare: bool, wide: bool) -> None:
    config = result.get("config") or (result["runs"][0]["config"] if result.get("runs") else {})
    inputs, threads = config.get("inputs"), config.get("threads")
    columns = LATENCY_COLUMNS + ([Column("speedup vs first")] if compare else [])
    if compare:
        rows = [
            _latency_row(c["name"], {**c, "batch": r["batch"], "sequence_length": r["sequence_length"]})
            + [f"{c['speedup']:.2f}x"]
            for r in result["results"]
            for c in r["candidates"]
        ]
    else:
        rows = [_latency_row(Path(run["model"]).name, entry) for run in result["runs"] for entry in run["results"]]
    shapes = {row[1] for row in rows}
    title = "latency" + (f" at batch x sequence {shapes.pop()}" if len(shapes) == 1 else "")
    if len(shapes) > 1:  # a sweep: the shape column is needed to read the rows
        columns = [Column(c.name, c.right, True) if c.name == "shape" else c for c in columns]
    print_table(title, columns, rows, wide)
    for model, evaluation in result.get("accuracy", {}).items():
        note(f"{Path(model).name}: accuracy {accuracy(evaluation['accuracy'])} on {evaluation['examples']} pairs")
    environment = result.get("environment", {})
    features = environment.get("dot_product_features")
    stdout.print(
        f"[dim]CPU: {environment.get('cpu', 'unknown')} ({' '.join(features) if features else 'features unknown'}); "
        f"inputs: {inputs}; threads: {threads or 'default'}; host memory is the RSS added by creating the "
        "runner (--isolated for per-process peaks); --wide shows every column[/]",
        highlight=False,
    )


# -- build and reproduce -------------------------------------------------------------------------------
def build_summary(report: dict) -> None:
    rows = {"ort": _ort_build_rows, "trt": _trt_build_rows}.get(report["backend"], _plain_build_rows)(report)
    print_fields(f"build ({report['backend']})", rows)


def _ort_build_rows(report: dict) -> list[tuple[str, Any]]:
    kernels = ", ".join(f"{k} {v}" for k, v in sorted(report["integer_ops"].items())) or "none"
    return [
        ("graph", report["graph"]),
        ("int8 kernels", f"{report['int8_kernels']}: {report['int8_kernels_reason']}"),
        ("fused integer kernels", kernels),
        ("float MatMuls fed by two DequantizeLinear", report["float_matmuls_two_dequantized_inputs"]),
        ("QuantizeLinear / DequantizeLinear left", f"{report['quantize_linear']} / {report['dequantize_linear']}"),
        *([("note", report["note"])] if report.get("note") else []),
    ]


def _trt_build_rows(report: dict) -> list[tuple[str, Any]]:
    rows = [
        ("engine", report["engine"]),
        ("TensorRT", report.get("tensorrt_version", "-")),
        ("GPU", report.get("gpu", "-")),
    ]
    precision, layers = report.get("precision", {}), report.get("layer_precision", {})
    if precision:
        tf32 = "allowed" if precision.get("tf32_allowed") else "off"
        rows.append(("precision", f"{precision['engine']} (strongly typed; TF32 {tf32})"))
    if layers.get("detailed"):
        counts = ", ".join(f"{k} {v}" for k, v in layers["by_precision"].items())
        moved = f"{layers.get('reformats', 0)} reformat, {layers.get('quantize_layers', 0)} Q/DQ, {layers.get('casts', 0)} cast"
        rows.append(("layers", f"{layers['layers']}: {counts}; {moved}"))
        rows.append(("GEMMs INT8", f"{layers.get('gemms_int8', '-')}/{layers['gemms']} (fused attention layers: "
                                   f"{layers.get('fused_attention', '-')})"))
        rows.append(("GEMMs not INT8", ", ".join(layers["gemms_not_int8"]) or "none"))
    return rows


def _plain_build_rows(report: dict) -> list[tuple[str, Any]]:
    """Any other backend's report: what it wrote, then its one-value fields (`--json` has the rest)."""
    skip = {"backend", "artifact", "graph", "model"}
    return [("artifact", report["artifact"])] + [
        (key.replace("_", " "), value) for key, value in report.items()
        if key not in skip and isinstance(value, (str, int, float, bool))
    ]


def reproduce_table(result: dict, report: Path) -> None:
    columns = [
        Column("configuration", right=False),
        Column("scope", right=False),
        Column("accuracy %"),
        Column("95 % CI"),
        Column("vs FP32"),
        Column("deployed changed"),
    ]
    fp32 = result["results"][0]["accuracy"]
    rows = [
        [
            row["configuration"],
            row["scope"],
            f"{100 * row['accuracy']:.2f}",
            f"{100 * row['accuracy_ci95'][0]:.1f}-{100 * row['accuracy_ci95'][1]:.1f}",
            f"{100 * (row['accuracy'] - fp32):+.2f}",
            "-" if row.get("deployed_changed") is None else f"{row['deployed_changed']} {row['deployed_kernels']}",
        ]
        for row in result["results"]
    ]
    print_table(f"qtool reproduce: {result['model']}", columns, rows)
    split = result["data_split"]
    note(f"data: {split['name']} (fingerprint {split['fingerprint']}); report: {report}")
    if times := result.get("stage_times"):
        note(f"{times['wall_seconds'] / 60:.1f} min on {result['environment']['cpu']}; stage times in the report")
