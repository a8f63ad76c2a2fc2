"""The report's "Each tool at its fastest" section: qtool's and each peer's fastest configuration
within the budget on each backend, timed side by side, and where qtool stands."""

from __future__ import annotations

from qtool.defaults import AHEAD_MARGIN
from qtool.report.advice import PER_TOOL_COMPARED
from qtool.report.intervals import paired_points


def tool_comparison_lines(result: dict) -> list[str]:
    """Each tool's fastest configuration within the budget on each backend, interleaved per batch
    size, and where qtool's fastest stands against the fastest peer's."""
    comparison = result.get("tool_comparison")
    if not comparison:
        return []
    if "skipped" in comparison:
        return [f"The side-by-side run did not complete ({comparison['skipped']}); the accuracy table has each one's own timing."]
    batches = comparison["batches"]
    lines = [
        "| tool | backend | configuration | deployed % | vs FP32 (paired 95 %) | "
        + " | ".join(f"b{b} p50 ms" for b in batches) + " |",
        "| --- | --- | --- | --- | --- |" + " --- |" * len(batches),
    ]
    for pick in comparison["picks"]:
        paired = paired_points(pick["deployed_vs_fp32"]) if pick["deployed_vs_fp32"] else "-"
        timings = " | ".join(f"{pick['p50_ms'][b]:.1f} (±{50 * pick['spread'][b]:.0f} %)" for b in batches)
        lines.append(f"| {pick['tool']} | {pick['backend']} | {pick['configuration']} | "
                     f"{100 * pick['deployed_accuracy']:.2f} | {paired} | {timings} |")
    lines += ["", *_verdict_lines(comparison["verdicts"], "Batch")]
    by_backend = comparison.get("verdicts_by_backend", {})
    for backend, verdicts in by_backend.items() if len(by_backend) > 1 else ():
        lines += ["", *_verdict_lines(verdicts, f"On {backend} alone, batch")]
    return lines


def _verdict_lines(verdicts: dict, label: str) -> list[str]:
    lines = []
    for batch, verdict in verdicts.items():
        if verdict is None:
            lines.append(f"{label} {batch}: no peer (or no qtool configuration) within the budget to compare.")
            continue
        lead = (f"{100 * verdict['margin']:.1f} % faster than" if verdict["margin"] >= 0
                else f"{100 * (1 / (1 + verdict['margin']) - 1):.1f} % slower than")
        lines.append(f"{label} {batch}: qtool's `{verdict['qtool']}` is {lead} the fastest peer "
                     f"`{verdict['peer']}` (their ratio moved by {100 * verdict['spread']:.1f} % over the repeats): "
                     f"**{verdict['verdict']}**.")
    return lines


def tool_comparison_note(result: dict) -> str:
    comparison = result.get("tool_comparison") or {}
    return (
        f"For a {comparison.get('max_drop_points', 0):g}-point budget, the {PER_TOOL_COMPARED} fastest configurations "
        "(one-by-one p50) of qtool and of each peer on each backend, with FP32, loaded side by side and timed "
        f"round-robin on the same eval inputs, {comparison.get('repeats')} repeats per batch size at sequence length "
        f"{comparison.get('sequence_length')}; p50 is the median of the repeats and ± half their spread. Deployed % "
        "is the timed graph's. Each tool's fastest in this run is the one compared. "
        f"Ahead means at least {100 * AHEAD_MARGIN:.0f} % faster, and by more than the ratio of "
        "the two moved over the repeats; behind, the peer faster by more than that; anything else is level."
    )
