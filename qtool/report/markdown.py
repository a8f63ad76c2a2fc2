"""The study report as Markdown, side by side with the published figures."""

from __future__ import annotations

from pathlib import Path

from qtool.fileio import write_text
from qtool.report.advice import CLOSE_CALL, CONTENDERS
from qtool.report.comparison import tool_comparison_lines, tool_comparison_note
from qtool.report.intervals import budget_verdict, paired_points

# The reference study (arXiv 2603.04308): BERT-base fine-tuned on GLUE QNLI, validation accuracy.
PUBLISHED = {
    "fp32": 89.66,
    "max-all": 54.33,
    "max-all-mp-paper": 89.42,
    "peg-k3-equal-all": 66.12,
    "peg-k4-equal-all": 86.18,
    "percentile-99-all": 50.54,
    "percentile-99.9-all": 50.54,
    "percentile-99.99-all": 50.54,
}
PUBLISHED_NOTE = (
    "Published: BERT-base fine-tuned on the full GLUE QNLI training set, accuracy on the official "
    "validation split (arXiv 2603.04308); percentile is reported there as about 50.54 % for p = 99.0 to 99.99. "
    "That is another model and another split: compare the shape of the results, not the numbers."
)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _latency_cells(latency: dict | None) -> str:
    if not latency:
        return "- | - | - | - | -"
    return (
        f"{latency['p50_ms']:.1f} | {latency['throughput_per_s']:.1f} | {latency['runner_rss_mb']:.0f} | "
        f"{latency.get('peak_rss_mb', 0):.0f} | "
        f"{latency['size_mb']:.1f}"
    )


def _paired_cell(row: dict, fp32: float, key: str = "vs_fp32") -> str:
    """Signed points against FP32 with the paired 95 % half-width where the row has it."""
    paired = row.get(key)
    return f"{100 * (row['accuracy'] - fp32):+.2f}" if paired is None else paired_points(paired)


def _deployed_cell(row: dict) -> str:
    """The deployed graph's accuracy where it is another graph than the recipe's, `=` where equal."""
    deployed = row.get("deployed_accuracy")
    if deployed is None:
        return "-"
    return "=" if deployed == row["accuracy"] else _pct(deployed)


def _changed_cell(row: dict) -> str:
    """Predictions of the deployed graph that differ from the QDQ graph's, and the kernels it ran."""
    if row.get("deployed_changed") is None:
        return f"- | {row.get('deployed_kernels', '-')}"
    share = row["deployed_changed"] / row["examples"]
    return f"{row['deployed_changed']} ({100 * share:.1f} %) | {row['deployed_kernels']}"


def stage_time_lines(result: dict) -> list[str]:
    """Seconds per stage of the study: this run's and, for reused stages, what they took when computed."""
    times = result.get("stage_times")
    if not times:
        return []
    lines = [
        f"Wall time of this run: {times['wall_seconds'] / 60:.1f} min. Per stage, over every configuration "
        "(a stage reused from the cache costs this run almost nothing; `computed` is what it took when it ran):",
        "",
        "| stage | runs | reused | this run s | computed s |",
        "| --- | --- | --- | --- | --- |",
    ]
    stages = sorted(times["stages"].items(), key=lambda item: -item[1]["computed_seconds"])
    for stage, total in stages:
        lines.append(
            f"| {stage} | {total['runs']} | {total['reused']} | {total['seconds']:.1f} | {total['computed_seconds']:.1f} |"
        )
    calibrations = [
        (row["configuration"], row.get("method", "-"), sum(t["computed_seconds"] for t in stage_list))
        for row in result.get("results", [])
        if (stage_list := [t for t in row.get("stage_times") or [] if t["stage"] == "calibration"])
    ]
    if calibrations:
        lines += ["", "Calibration time of each configuration (computed; from the statistics file):", ""]
        lines += ["| configuration | method | calibration s |", "| --- | --- | --- |"]
        lines += [f"| {name} | {method} | {seconds:.2f} |" for name, method, seconds in calibrations]
    return lines


METRIC_NAMES = {"accuracy": "accuracy", "f1": "F1", "macro_f1": "macro-F1", "mcc": "MCC"}


def metric_lines(result: dict) -> list[str]:
    """Macro-F1, F1 and Matthews correlation of every configuration with their bootstrap intervals."""
    rows = [row for row in result.get("results", []) if row.get("metrics")]
    if not rows:
        return []
    names = [name for name in ("macro_f1", "f1", "mcc") if name in rows[0]["metrics"]]
    lines = ["| configuration | " + " | ".join(f"{METRIC_NAMES[name]} (95 % CI)" for name in names) + " |"]
    lines.append("| --- |" + " --- |" * len(names))
    for row in rows:
        metrics = row["metrics"]
        cells = [f"{metrics[n]:.4f} ({metrics[n + '_ci95'][0]:.4f}-{metrics[n + '_ci95'][1]:.4f})" for n in names]
        lines.append(f"| {row['configuration']} | " + " | ".join(cells) + " |")
    primary = rows[0]["metrics"].get("primary_metric", "accuracy")
    return [*lines, "", f"The task's primary metric, which the deploy budget counts in: {METRIC_NAMES[primary]}."]


METRIC_NOTE = (
    "On the eval part, from the recipe's predictions (the QDQ graph as scored above); intervals are 95 % "
    "percentile bootstraps over the pairs (1,000 resamples, fixed seed). F1 is the second label's "
    "(scikit-learn's default positive label); MCC is Gorodkin's multi-class Matthews correlation."
)


def deploy_paragraph(result: dict) -> list[str]:
    advice = result.get("recommendation")
    if advice is None or advice["configuration"] == "fp32" and "runner_up" not in advice:
        return ["No quantized configuration stays within the accuracy budget; deploy FP32 or widen the budget."]
    row = next(r for r in result["results"] if r["configuration"] == advice["configuration"])
    backend = row.get("backend", "ort")
    if row.get("peer"):
        what = f"a peer: {peer_description(row['configuration'])}"
    elif advice["configuration"].partition("@")[0] == "fp32":
        what = "FP32 graph" + ("" if backend == "ort" else f" on {backend}")
    elif backend == "ort":
        what = "qtool's QDQ graph as its ONNX Runtime CPU graph, `qtool build --backend ort`"
    else:
        what = f"qtool's QDQ graph on {backend}, `qtool build --backend {backend}`"
    metric = METRIC_NAMES[advice.get("metric", "accuracy")]
    lines = [
        f"Within {advice['max_drop_points']:g} {metric} point(s) of FP32, the fastest of the {advice['candidates']} "
        f"close calls on this machine (FP32 and the configurations in budget within {CLOSE_CALL:g}x of the fastest "
        f"one-by-one p50, at most {CONTENDERS}, each tool's fastest on each backend first) is "
        f"`{advice['configuration']}` ({what}): "
        f"{100 * advice['accuracy']:.2f} % accuracy as deployed ({-advice['drop_points']:+.2f} {metric} points vs FP32), "
        f"p50 {advice['p50_ms']:.1f} ms, "
        f"{advice['speedup_vs_fp32']:.2f}x the speed of FP32. The candidates ran interleaved (all sessions loaded, "
        f"round-robin on the same inputs), {advice['repeats']} times; p50 is the median of those runs."
    ]
    if "runner_up" in advice:
        verdict = (
            "within the run-to-run spread, so the two are level on this machine"
            if advice["margin_within_spread"]
            else "beyond the run-to-run spread"
        )
        lines.append(
            f"Runner-up: `{advice['runner_up']}`, p50 {advice['runner_up_p50_ms']:.1f} ms; the winner is "
            f"{100 * advice['margin']:.1f} % faster ({_margin_noise(advice)}), "
            f"{verdict}."
        )
    return lines


def _margin_noise(advice: dict) -> str:
    """What the margin is weighed against: the ratio's spread, or (results written before it was
    recorded) the winner's own spread."""
    if "margin_spread" in advice:
        return f"the ratio of the two moved by {100 * advice['margin_spread']:.1f} % over the repeats"
    return f"spread of the winner's repeats {100 * advice['spread']:.1f} %"


def is_qnli(result: dict) -> bool:
    """Whether the study ran on QNLI, the task of the published figures (other data records its labels)."""
    return "labels" not in result["data_split"]


def accuracy_table(result: dict) -> list[str]:
    fp32 = next(r for r in result["results"] if r["configuration"] == "fp32")["accuracy"]
    lines = [
        "| configuration | scope | quantized points | accuracy % | 95 % CI | vs FP32 (points, paired 95 %) | deployed % "
        "| deployed changed | kernels | published (BERT-base) % | p50 ms | throughput seq/s | session RSS MB "
        "| peak RSS MB | size MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["results"]:
        low, high = row["accuracy_ci95"]
        points = f"{row['quantized_points']}/{row['total_points']}" if "quantized_points" in row else "-"
        published = PUBLISHED.get(row["configuration"]) if is_qnli(result) else None
        lines.append(
            f"| {row['configuration']} | {row['scope']} | {points} | {_pct(row['accuracy'])} | "
            f"{_pct(low)}-{_pct(high)} | {_paired_cell(row, fp32)} | {_deployed_cell(row)} | {_changed_cell(row)} | "
            f"{'-' if published is None else f'{published:.2f}'} | {_latency_cells(row.get('latency'))} |"
        )
    return lines


def smoothing_table(result: dict) -> list[str]:
    """Each configuration calibrated after the migration beside the same one without it."""
    by_name = {r["configuration"]: r for r in result["results"]}
    smoothed = [row for row in result["results"] if row.get("smoothing") is not None and "backend" not in row]
    if not smoothed:
        return []
    lines = [
        "| configuration | scope | without migration % | with migration % | change (points) | alpha |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in smoothed:
        plain = by_name.get(row.get("without_smoothing"))
        without = "-" if plain is None else _pct(plain["accuracy"])
        change = "-" if plain is None else f"{100 * (row['accuracy'] - plain['accuracy']):+.2f}"
        name = plain["configuration"] if plain else row["configuration"]
        lines.append(
            f"| {name} | {row['scope']} | {without} | {_pct(row['accuracy'])} | {change} | {row['smoothing']:g} |"
        )
    return lines


def search_lines(result: dict) -> list[str]:
    """The mixed-precision search beside the presets: how many points in float, at what accuracy."""
    rows = [r for r in result["results"] if r.get("search")]
    controlled = [r for r in result["results"] if "tuning_pairs" in r.get("peer_record", {})]
    if not rows and not controlled:
        return []
    fp32 = result["results"][0]["accuracy"]
    presets = [r for r in result["results"]
               if r.get("kept_in_float") and not r.get("search") and not r.get("peer") and "backend" not in r]
    lines = [
        "| configuration | points in float | eval accuracy % | vs FP32 on eval (paired 95 %) | tuning pairs | tuning "
        "accuracy % (FP32) | tuning drop (bound) | evaluations run (reused) | seconds this run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows + presets:
        search = row.get("search")
        tuning = (
            f"{search['tuning']['pairs']} | {_pct(search['tuning_accuracy'])} ({_pct(search['tuning']['fp32_accuracy'])}) "
            f"| {_bounded(search.get('tuning_paired'))} | {search['evaluations']} ({search['reused_evaluations']}) "
            f"| {search['seconds']:.0f}"
            if search
            else "- | - | - | - | -"
        )
        lines.append(f"| {row['configuration']} | {len(row['kept_in_float'])} | {_pct(row['accuracy'])} | "
                     f"{_paired_cell(row, fp32)} | {tuning} |")
    for row in controlled:  # NNCF's accuracy control, on the same tuning pairs, budget and rule
        peer = row["peer_record"]
        lines.append(
            f"| {row['configuration']} | {len(peer['kept_in_float'])} GEMMs | {_pct(row['accuracy'])} | "
            f"{_paired_cell(row, fp32)} | {peer['tuning_pairs']} | {_pct(peer['tuning_accuracy'])} "
            f"({_pct(peer['tuning_fp32_accuracy'])}) | {_bounded(peer.get('tuning_paired'))} | {peer['evaluations']} "
            f"| {peer['seconds']:.0f} |"
        )
    for row in rows:
        search = row["search"]
        curve = ", ".join(f"{c['float_points']}: {_pct(c['accuracy'])}" for c in search["curve"])
        confidence = search.get("tuning_paired", {}).get("confidence")
        rule = f" at {100 * confidence:g} % one-sided confidence" if confidence else ""
        lines += [
            "",
            f"`{row['configuration']}` kept in float: {', '.join(row['kept_in_float']) or 'nothing'}. Tuning accuracy % "
            f"by number of the most sensitive points in float: {curve}. Budget: {search['max_drop']:g} points below "
            f"FP32{rule} on {search['tuning']['pairs']} tuning pairs ({_tuning_sources(search)})."
            + eval_budget_sentence(row, search["max_drop"]),
        ]
    return lines


def _tuning_sources(search: dict) -> str:
    sources, given = search["tuning"]["sources"], search["tuning"].get("tune_data")
    if given:
        return (f"--tune-data {given['name']}: {given['rows']} rows, {given['left_out']} sharing a first text with "
                "train, calibration or eval left out")
    if set(sources) == {"tuning"}:
        return "the data's tuning part: never fine-tuning, calibration or eval pairs"
    return " + ".join(f"{n} {part}" for part, n in sources.items() if n) + "; never the eval part"


def _bounded(paired: dict | None) -> str:
    return "-" if paired is None else f"{paired['drop']:.2f} ({paired['upper']:.2f})"


def eval_budget_sentence(row: dict, max_drop: float) -> str:
    """Where the chosen set stands on the eval part against the budget it met on the tuning pairs."""
    scored = [(name, row.get(key)) for name, key in (("recipe", "vs_fp32"), ("deployed graph", "deployed_vs_fp32"))]
    scored = [(name, paired) for name, paired in scored if paired]
    if not scored:
        return ""
    parts = [f"its {name} {paired_points(p)} points vs FP32" for name, p in scored]
    verdict = budget_verdict(max((p for _, p in scored), key=lambda p: p["drop"]), max_drop)
    return f" On the eval part (paired 95 %): {' and '.join(parts)}, {verdict}."


PEER_NOTE = (
    "Peers start from the same FP32 export, calibrate on the same pairs and are scored on the same eval part. "
    "`nncf-ptq` is `nncf.quantize` (ONNX backend, transformer model type); `nncf-accuracy-control` is "
    "`nncf.quantize_with_accuracy_control` with qtool's search budget and tuning pairs, its candidates scored as "
    "qtool's search scores them (ONNX Runtime optimizations off). Quantize seconds: the time to write the graph, "
    "when it was written (a cached graph keeps its first figure)."
)


SMOOTHING_NOTE = (
    "Migration (SmoothQuant-style, Xiao et al. 2023): each LayerNorm output that feeds projections is divided per "
    "channel by s = max|x|^alpha / max|w|^(1 - alpha) (folded into the LayerNorm's gamma and beta) and the projection "
    "weights' rows are multiplied by s; the residual branch reads the output times s, so the FP32 graph computes the "
    "same function. Statistics are collected again on the smoothed graph. Only LayerNorm outputs move: the FFN "
    "output and residual sums, where BERT's largest outliers sit, are not inputs of a projection and keep their range."
)


PEER_DESCRIPTIONS = {
    "ort": "its own graph on ONNX Runtime's CPU provider, where it is meant to be fast",
    "nncf": "its QDQ graph, meant for OpenVINO's CPU plugin; timed here on ONNX Runtime's CPU provider",
    "nncf@openvino": "its QDQ graph on OpenVINO's CPU plugin, where it is meant to be fast",
}


def peer_description(name: str) -> str:
    kind = "nncf" if name.startswith("nncf-") else "ort"
    _, on, backend = name.partition("@")
    return PEER_DESCRIPTIONS.get(kind + on + backend, PEER_DESCRIPTIONS[kind])


def peer_lines(result: dict) -> list[str]:
    """What each peer deploys, where it is meant to be fast, what it cost to make and what it left in float."""
    peers = [r for r in result["results"] if r.get("peer")]
    lines = []
    if peers:
        lines += [
            "| peer | deploys | accuracy % | p50 ms | quantize seconds | quantized ops | weight GEMMs in float |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
    for row in peers:
        record = row.get("peer_record", {})
        description = peer_description(row["configuration"])
        seconds = record.get("seconds")
        kept = record.get("kept_in_float")
        lines.append(
            f"| {row['configuration']} | {description} | {_pct(row['accuracy'])} | "
            f"{(row.get('latency') or {}).get('p50_ms', float('nan')):.1f} | "
            f"{'-' if seconds is None else f'{seconds:.0f}'} | {record.get('quantized_ops', '-')} | "
            f"{'-' if kept is None else len(kept)} |"
        )
    for name, reason in (result.get("skipped") or {}).items():
        lines += ["", f"`{name}` did not run: {reason}."]
    return lines


def outlier_table(result: dict) -> list[str]:
    lines = [
        "| layer | max kurtosis | at | max top-1 % energy | at | residual outlier channels |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for layer in result["analysis"]["layers"]:
        kurtosis = layer["max_kurtosis"]
        share = layer["max_top_energy_share"]
        lines.append(
            f"| {layer['layer']} | {'-' if kurtosis is None else f'{kurtosis:.1f}'} | {layer['max_kurtosis_point'] or '-'} | "
            f"{'-' if share is None else f'{100 * share:.1f} %'} | {layer['max_top_energy_point'] or '-'} | "
            f"{' '.join(map(str, layer['residual_outlier_channels'][:10])) or '-'} |"
        )
    return lines


def _shape(result: dict) -> str:
    latency = result["results"][0].get("latency") or {}
    return f"{latency.get('batch', '-')} x {latency.get('sequence_length', '-')}"


def _timing(result: dict) -> str:
    timing = result.get("timing")  # absent from studies before 2026-12-07
    if not timing:
        return "p50 of timed runs after warm-up"

    def runs(count: int, kind: str) -> str:
        return f"{count} {kind} run{'' if count == 1 else 's'}"

    return f"p50 of {runs(timing['iterations'], 'timed')} after {runs(timing['warmup'], 'warm-up')}"


def _section(title: str, body: list[str], note: str | None = None) -> list[str]:
    """A `##` section, or nothing when `body` is empty (the configurations it covers did not run)."""
    if not body:
        return []
    return [f"## {title}", "", *body, "", *([note, ""] if note else [])]


def write_markdown_report(result: dict, path: Path) -> Path:
    split = result["data_split"]
    environment = result["environment"]
    lines = [
        f"# qtool study: {result['model']}",
        "",
        f"- model: `{result['model']}` (sha256 {result['model_sha256'][:12]}), base `{result['base_model']}`",
        f"- data: {split['name']}; sizes {split['sizes']}; fingerprint {split['fingerprint']}"
        + (f"; labels {', '.join(split['labels'])}" + (f"; GLUE task {split['task']}" if split.get("task") else "")
           if "labels" in split else ""),
        f"- accuracy on the eval part; calibration statistics from {result['statistics']['samples']} pairs "
        f"{result['statistics']['sample_sources']}",
        "- quantization: symmetric INT8, zero point 0; activations per tensor (PEG: per channel group), weights per "
        "output channel; scope `all` = every weight and activation point, `gemm` = inputs of MatMul/Gemm and residual Adds, "
        "`gemm-inputs` = Q/DQ only on the edges into MatMul/Gemm (residual Adds read float), "
        "`ort-matmul` = ONNX Runtime's quantizers with their defaults (MatMul/Gemm inputs as U8, weights as S8 per channel); "
        "`ort-optimizer-*` = ONNX Runtime's transformer optimizer (fused attention, LayerNorm and GELU kernels) alone "
        "(FP32) or before `quantize_dynamic`; `nncf-transformer` = NNCF's transformer preset (projection inputs and "
        "weights; attention MatMuls in float). The ONNX Runtime peers deploy their own graph on ONNX Runtime's CPU "
        "provider, where they are meant to be fast; NNCF's graphs are meant for OpenVINO and are timed here on ONNX "
        "Runtime; qtool's rows deploy their ONNX Runtime CPU graph here and their QDQ graph on TensorRT. With OpenVINO "
        "installed, `NAME@openvino` rows are FP32, NNCF's graph and qtool's rows within the budget built with "
        "`qtool build --backend openvino` and scored and timed on OpenVINO's CPU plugin",
        f"- environment: CPU {environment.get('cpu', environment['processor'])}, {environment['platform']}, "
        f"python {environment['python']}, "
        f"torch {environment['torch']}, onnxruntime {environment['onnxruntime']}, "
        + (f"openvino {openvino}, " if (openvino := environment.get("openvino")) else "")
        + f"qtool {environment['qtool']}"
        + (f"; qtool's ONNX Runtime graphs use {kernels}" if (kernels := environment.get("int8_kernels")) else ""),
        "",
        "## Accuracy",
        "",
        *accuracy_table(result),
        *(["", PUBLISHED_NOTE] if is_qnli(result) else []),
        "",
        "Accuracy % is the recipe's: qtool's QDQ graph scored with ONNX Runtime's graph optimizations off, as the "
        "QDQ semantics (and the NumPy reference of the tests) compute it, so it does not depend on how a CPU's fused "
        "integer kernels round. Deployed % is the ONNX Runtime CPU graph that the latency columns time, with every "
        "optimization on (`=`: the same accuracy). FP32, the peers and the `@openvino` rows are scored as deployed "
        "(an `@openvino` row's changed count is against its source graph: the QDQ graph, FP32's or the peer's). Deployed changed "
        "counts the eval predictions of the deployed graph that differ from the QDQ graph's; kernels are the integer "
        "GEMMs it runs (u8s8: int8 weights, u8u8: uint8 weights), as `qtool build --int8-kernels auto` chose them for "
        "this CPU and graph: U8S8 where it adds without saturating (x86 with VNNI, other architectures) or where "
        "every weight is within 7 bits, else U8U8; for an `@openvino` row, how many of its GEMMs OpenVINO ran in "
        "int8 and with which primitives. Another CPU can fuse and round differently: the counts are this CPU's.",
        "",
        f"Latency: ONNX Runtime CPU graph of each graph (an `@openvino` row: its OpenVINO model), batch x sequence "
        f"{_shape(result)}, {result['environment'].get('threads')} threads, {_timing(result)}. Each "
        "configuration runs in a process of its own: session RSS is the resident memory that creating its ONNX Runtime "
        "session added (weights, buffers), peak RSS the most the process held above its baseline while running. "
        "Measured one configuration after another, so machine noise is not shared; use `qtool bench --compare` for "
        "interleaved ratios.",
        "",
        *_section("Migrating activation range into the weights", smoothing_table(result), SMOOTHING_NOTE),
        *_section("Automatic mixed precision", search_lines(result)),
        *_section("Peers", peer_lines(result), PEER_NOTE),
        *_section("Other metrics", metric_lines(result), METRIC_NOTE),
        *_section("Each tool at its fastest", tool_comparison_lines(result), tool_comparison_note(result)),
        "## What to deploy",
        "",
        *deploy_paragraph(result),
        "",
        *_section("Stage times", stage_time_lines(result)),
        "## Activation outliers (FP32)",
        "",
        *outlier_table(result),
        "",
        *(f"- {key}: {text}" for key, text in result["analysis"]["definitions"].items()),
        "",
    ]
    return write_text(path, "\n".join(lines))
