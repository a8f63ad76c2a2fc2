"""What to deploy: the fastest configuration within an accuracy budget."""

from __future__ import annotations


def recommend(rows: list[dict], max_drop: float) -> dict | None:
    """The fastest configuration whose accuracy is within `max_drop` points of FP32."""
    fp32 = rows[0]["accuracy"]
    eligible = [r for r in rows if r.get("latency") and 100 * (fp32 - r["accuracy"]) <= max_drop]
    if not eligible:
        return None
    best = min(eligible, key=lambda r: r["latency"]["p50_ms"])
    return {
        "configuration": best["configuration"],
        "max_drop_points": max_drop,
        "accuracy": best["accuracy"],
        "drop_points": 100 * (fp32 - best["accuracy"]),
        "p50_ms": best["latency"]["p50_ms"],
        "speedup_vs_fp32": rows[0]["latency"]["p50_ms"] / best["latency"]["p50_ms"],
    }

