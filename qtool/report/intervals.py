"""Confidence intervals for accuracies."""

from __future__ import annotations

import math


def wilson_interval(correct: int, total: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95 % by default)."""
    if total <= 0:
        raise ValueError("total must be positive")
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_points(paired: dict) -> str:
    """A paired difference against FP32 (a `PairedDrop.to_dict()`) as signed points with its 95 %
    half-width: "-0.30 ± 0.41"."""
    return f"{0.0 - paired['drop']:+.2f} ± {paired['half_width_95']:.2f}"


def budget_verdict(paired: dict, max_drop: float) -> str:
    """Where a paired drop stands against a budget in points, said plainly."""
    if paired["drop"] <= max_drop:
        return f"within the {max_drop:g}-point budget"
    clearly = paired["drop"] - paired["half_width_95"] > max_drop
    return f"beyond the {max_drop:g}-point budget" + (" by more than its paired interval" if clearly else " (within its interval)")
