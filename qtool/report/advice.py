"""What to deploy: the fastest configuration within an accuracy budget, decided on an interleaved run."""

from __future__ import annotations

import statistics


def score(row: dict) -> float:
    """A row's value in the task's primary metric (accuracy unless its metrics name another)."""
    metrics = row.get("metrics") or {}
    return metrics.get(metrics.get("primary_metric", "accuracy"), row["accuracy"])


def within_budget(rows: list[dict], max_drop: float) -> list[dict]:
    """The rows (FP32 first) within `max_drop` points of FP32 in the task's primary metric, and timed."""
    fp32 = score(rows[0])
    return [r for r in rows if r.get("latency") and 100 * (fp32 - score(r)) <= max_drop]


CONTENDERS = 6  # the most configurations loaded side by side for the interleaved run
CLOSE_CALL = 1.5  # configurations whose one-by-one p50 is within this factor of the fastest's contend


def contenders(rows: list[dict], max_drop: float) -> list[dict]:
    """What the interleaved run times: FP32 (the baseline) and the configurations within the budget
    whose one-by-one p50 is within CLOSE_CALL of the fastest's, at most CONTENDERS of them, so that a
    big model's sessions still fit in memory side by side."""
    eligible = sorted(within_budget(rows, max_drop)[1:], key=lambda r: r["latency"]["p50_ms"])
    close = [r for r in eligible if r["latency"]["p50_ms"] <= CLOSE_CALL * eligible[0]["latency"]["p50_ms"]]
    return [rows[0], *close[:CONTENDERS]] if rows[0].get("latency") else close[:CONTENDERS]


def recommend(rows: list[dict], max_drop: float, comparison: dict | None) -> dict | None:
    """The winner, the runner-up and the margin between them, from `comparison`: the p50 of each
    candidate in every repeat of an interleaved run (`{"p50_ms": {name: [per repeat]}, ...}`).
    The spread of a candidate is (slowest - fastest repeat) / median: a margin inside the spread is
    noise, and the advice says so."""
    eligible = within_budget(rows, max_drop)
    if not eligible or not comparison:
        return None
    runs = comparison["p50_ms"]
    median = {name: statistics.median(values) for name, values in runs.items()}
    spread = {name: (max(values) - min(values)) / median[name] for name, values in runs.items()}
    ranked = sorted((r for r in eligible if r["configuration"] in median), key=lambda r: median[r["configuration"]])
    best = ranked[0]
    fp32 = rows[0]
    advice = {
        "configuration": best["configuration"],
        "max_drop_points": max_drop,
        "accuracy": best["accuracy"],
        "metric": (best.get("metrics") or {}).get("primary_metric", "accuracy"),
        "drop_points": 100 * (score(fp32) - score(best)),
        "p50_ms": median[best["configuration"]],
        "speedup_vs_fp32": median[fp32["configuration"]] / median[best["configuration"]],
        "spread": spread[best["configuration"]],
        "repeats": comparison["repeats"],
        "candidates": len(ranked),
    }
    if len(ranked) > 1:
        second = ranked[1]["configuration"]
        margin = median[second] / median[best["configuration"]] - 1
        advice |= {
            "runner_up": second,
            "runner_up_p50_ms": median[second],
            "margin": margin,
            "margin_within_spread": margin <= max(spread[best["configuration"]], spread[second]),
        }
    return advice
