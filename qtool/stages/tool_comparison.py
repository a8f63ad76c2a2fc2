"""Each tool at its fastest within the budget, side by side: qtool's and every peer's fastest
configurations on each backend (the two fastest by their one-by-one timing, which can be 20 % off),
with FP32 as the baseline, timed in one interleaved run per batch size of COMPARISON_BATCHES; each
tool's fastest in that run is the one compared, so the report can say by how much qtool leads or
trails the fastest peer and whether that is beyond the run-to-run spread."""

from __future__ import annotations

import logging
import statistics
from dataclasses import replace
from pathlib import Path

from qtool.data import QnliSplit
from qtool.defaults import COMPARISON_BATCHES
from qtool.report.advice import (
    PER_TOOL_COMPARED,
    deployed_accuracy,
    fastest_per_tool,
    repeat_spread,
    tool_of,
    tool_verdict,
)
from qtool.stages.deploy import interleaved_comparison

log = logging.getLogger(__name__)


def tool_comparison(rows: list[dict], split: QnliSplit, config, folder: Path) -> dict | None:
    """FP32 (`rows[0]`) and each tool's fastest configurations within `config.max_drop` on each
    backend, their deployed accuracy and p50 per batch size, and qtool's verdict against the fastest peer."""
    picks = fastest_per_tool(rows, config.max_drop, per_backend=PER_TOOL_COMPARED)
    if not picks or not rows[0].get("latency"):
        return None
    compared = [rows[0], *picks]
    graphs = {row["configuration"]: Path(row["latency"]["graph"]) for row in compared}
    log.info("timing %d configurations side by side at batch %s", len(graphs), ", ".join(map(str, COMPARISON_BATCHES)))
    try:
        runs = {
            str(batch): interleaved_comparison(
                graphs, split, replace(config.bench, batch_sizes=(batch,)), folder / f"tool-comparison-b{batch}.json"
            )
            for batch in COMPARISON_BATCHES
        }
    except Exception as failed:  # noqa: BLE001 (an optional section must not cost the study its report)
        log.warning("the tool comparison did not run: %s", failed)
        return {"skipped": f"{type(failed).__name__}: {failed}"}
    summary = [_summary(row, runs, "fp32" if row is rows[0] else tool_of(row)) for row in compared]
    return {
        "max_drop_points": config.max_drop,
        "batches": list(runs),
        "repeats": next(iter(runs.values()))["repeats"],
        "sequence_length": next(iter(runs.values()))["sequence_length"],
        "picks": summary,
        "verdicts": {batch: tool_verdict(summary[1:], batch) for batch in runs},
        "verdicts_by_backend": {
            backend: {batch: tool_verdict([p for p in summary[1:] if p["backend"] == backend], batch) for batch in runs}
            for backend in dict.fromkeys(p["backend"] for p in summary[1:])
        },
    }


def _summary(row: dict, runs: dict[str, dict], tool: str) -> dict:
    """What the report shows of one compared configuration: the deployed graph's accuracy (the one
    that is timed) with its paired interval against FP32, and its median p50 and spread per batch."""
    name = row["configuration"]
    return {
        "tool": tool,
        "backend": row.get("backend", "ort"),
        "configuration": name,
        "deployed_accuracy": deployed_accuracy(row),
        "deployed_vs_fp32": row.get("deployed_vs_fp32") or row.get("vs_fp32"),
        "p50_ms": {batch: statistics.median(run["p50_ms"][name]) for batch, run in runs.items()},
        "repeats_ms": {batch: run["p50_ms"][name] for batch, run in runs.items()},
        "spread": {batch: repeat_spread(run["p50_ms"][name]) for batch, run in runs.items()},
    }
