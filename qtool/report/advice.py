"""What to deploy: the fastest configuration within an accuracy budget, decided on an interleaved run."""

from __future__ import annotations

import statistics

from qtool.defaults import AHEAD_MARGIN


def score(row: dict) -> float:
    """A row's value in the task's primary metric (accuracy unless its metrics name another)."""
    metrics = row.get("metrics") or {}
    return metrics.get(metrics.get("primary_metric", "accuracy"), row["accuracy"])


def deployed_accuracy(row: dict) -> float:
    """The accuracy of what a row deploys: a qtool row's deployed graph's (peers and `@backend` rows
    are scored as deployed already)."""
    return row["accuracy"] if row.get("deployed_accuracy") is None else row["deployed_accuracy"]


def deployed_score(row: dict) -> float:
    """A row's primary metric as deployed: `deployed_accuracy` where accuracy is the metric, else
    `score` (other metrics are the recipe's)."""
    metric = (row.get("metrics") or {}).get("primary_metric", "accuracy")
    return deployed_accuracy(row) if metric == "accuracy" else score(row)


def within_budget(rows: list[dict], max_drop: float) -> list[dict]:
    """The rows (FP32 first) within `max_drop` points of FP32 in the task's primary metric as deployed
    (`deployed_score`: what runs is what must hold), and timed."""
    fp32 = deployed_score(rows[0])
    return [r for r in rows if r.get("latency") and 100 * (fp32 - deployed_score(r)) <= max_drop]


CONTENDERS = 6  # the most configurations loaded side by side for the interleaved run
CLOSE_CALL = 1.5  # configurations whose one-by-one p50 is within this factor of the fastest's contend


def contenders(rows: list[dict], max_drop: float) -> list[dict]:
    """What the interleaved run times: FP32 (the baseline) and the configurations within the budget
    whose one-by-one p50 is within CLOSE_CALL of the fastest's, at most CONTENDERS of them, so that a
    big model's sessions still fit in memory side by side. Each tool's fastest on each backend comes
    first (up to CONTENDERS): a one-by-one timing can be 20 % off, and the cap must not leave out
    another tool's best."""
    eligible = [r for r in within_budget(rows, max_drop) if r is not rows[0]]  # FP32 is the baseline
    eligible.sort(key=lambda r: r["latency"]["p50_ms"])
    close = [r for r in eligible if r["latency"]["p50_ms"] <= CLOSE_CALL * eligible[0]["latency"]["p50_ms"]]
    leaders = {r["configuration"] for r in fastest_per_tool(rows, max_drop)}
    first = [r for r in close if r["configuration"] in leaders]
    chosen = (first + [r for r in close if r["configuration"] not in leaders])[:CONTENDERS]
    chosen.sort(key=lambda r: r["latency"]["p50_ms"])
    return [rows[0], *chosen] if rows[0].get("latency") else chosen


def repeat_spread(p50s: list[float]) -> float:
    """How far apart the repeats of an interleaved run are: (slowest - fastest) / median."""
    return (max(p50s) - min(p50s)) / statistics.median(p50s)


def ratio_spread(first: list[float], second: list[float]) -> float:
    """How much the ratio second / first moves over the repeats of one interleaved run (each repeat's
    pair of p50s): (largest - smallest ratio) / median ratio."""
    return repeat_spread([b / a for a, b in zip(first, second, strict=True)])


def recommend(rows: list[dict], max_drop: float, comparison: dict | None) -> dict | None:
    """The winner, the runner-up and the margin between them, from `comparison`: the p50 of each
    candidate in every repeat of an interleaved run (`{"p50_ms": {name: [per repeat]}, ...}`).
    The margin is the ratio of the two medians; its spread is how far the ratio of the two in the
    same repeat moves over the repeats (`ratio_spread`): a margin inside it is noise, and the advice
    says so. (A drift that slows every candidate alike moves each one's p50 but not their ratio.)"""
    eligible = within_budget(rows, max_drop)
    if not eligible or not comparison:
        return None
    runs = comparison["p50_ms"]
    median = {name: statistics.median(values) for name, values in runs.items()}
    spread = {name: repeat_spread(values) for name, values in runs.items()}
    ranked = sorted((r for r in eligible if r["configuration"] in median), key=lambda r: median[r["configuration"]])
    best = ranked[0]
    fp32 = rows[0]
    advice = {
        "configuration": best["configuration"],
        "max_drop_points": max_drop,
        "accuracy": deployed_accuracy(best),
        "metric": (best.get("metrics") or {}).get("primary_metric", "accuracy"),
        "drop_points": 100 * (deployed_score(fp32) - deployed_score(best)),
        "p50_ms": median[best["configuration"]],
        "speedup_vs_fp32": median[fp32["configuration"]] / median[best["configuration"]],
        "spread": spread[best["configuration"]],
        "repeats": comparison["repeats"],
        "candidates": len(ranked),
    }
    if len(ranked) > 1:
        second = ranked[1]["configuration"]
        margin = median[second] / median[best["configuration"]] - 1
        margin_spread = ratio_spread(runs[best["configuration"]], runs[second])
        advice |= {
            "runner_up": second,
            "runner_up_p50_ms": median[second],
            "margin": margin,
            "margin_spread": margin_spread,
            "margin_within_spread": margin <= margin_spread,
        }
    return advice


QTOOL = "qtool"  # the tool of every configuration that is not a peer's


def tool_of(row: dict) -> str:
    """Whose configuration a row is: qtool's, or the peer's (its name without the backend)."""
    return row["configuration"].partition("@")[0] if row.get("peer") else QTOOL


COMPARED = 8  # the most picks the tool comparison loads beside FP32 (the fastest ones), so big models fit
PER_TOOL_COMPARED = 2  # each tool's fastest configurations on a backend that the tool comparison times


def fastest_per_tool(rows: list[dict], max_drop: float, per_backend: int = 1) -> list[dict]:
    """qtool's and each peer's `per_backend` fastest timed configurations on each backend (by the
    one-by-one p50) whose deployed graph is within the budget, fastest first, at most COMPARED of them:
    every tool's fastest on each backend comes before any tool's second. FP32 (on any backend) is the
    baseline, not a pick; a peer that stays in float (ONNX Runtime's optimizer alone) is one, as a user
    could deploy it too."""
    ranked: dict[tuple[str, str], list[dict]] = {}
    for row in sorted(within_budget(rows, max_drop), key=lambda r: r["latency"]["p50_ms"]):
        if row["configuration"].partition("@")[0] != rows[0]["configuration"]:
            ranked.setdefault((tool_of(row), row.get("backend", "ort")), []).append(row)
    by_rank = [row for rank in range(per_backend) for fastest in ranked.values() for row in fastest[rank : rank + 1]]
    return sorted(by_rank[:COMPARED], key=lambda r: r["latency"]["p50_ms"])


def tool_verdict(picks: list[dict], batch: str) -> dict | None:
    """qtool's fastest pick against the fastest peer's at `batch` (a key of each pick's `p50_ms`, the
    median of its `repeats_ms`): how much faster qtool is, how much the ratio of the two moved over
    the repeats, and whether that makes qtool ahead (at least AHEAD_MARGIN faster and beyond that
    spread), behind (the peer faster by any amount beyond it) or level. The bar is not symmetric on
    purpose: qtool claims a lead only where it is worth a switch."""
    timed = [p for p in picks if batch in p["p50_ms"]]
    ours = min((p for p in timed if p["tool"] == QTOOL), key=lambda p: p["p50_ms"][batch], default=None)
    theirs = min((p for p in timed if p["tool"] != QTOOL), key=lambda p: p["p50_ms"][batch], default=None)
    if ours is None or theirs is None:
        return None
    margin = theirs["p50_ms"][batch] / ours["p50_ms"][batch] - 1
    spread = ratio_spread(ours["repeats_ms"][batch], theirs["repeats_ms"][batch])
    if margin >= AHEAD_MARGIN and margin > spread:
        verdict = "ahead"
    elif ours["p50_ms"][batch] / theirs["p50_ms"][batch] - 1 > spread:
        verdict = "behind"
    else:
        verdict = "level"
    return {"qtool": ours["configuration"], "peer": theirs["configuration"], "margin": margin, "spread": spread,
            "verdict": verdict}
