"""Outlier statistics per quantization point, computed from collected activation statistics.

Definitions (stated in every report):
- kurtosis: Pearson's, E[(x - mean)^4] / Var(x)^2 over all real-token elements; 3 for a normal.
- top-1 % energy share: the share of sum(x^2) held by the 1 % of channels (last axis) with the
  most energy, at least one channel.
- outlier channel: a channel whose largest |x| exceeds `sigma` (default 6) standard deviations
  of the whole tensor.
- absmax / p99.99: the largest |x| over the 99.99th percentile of |x|: how far the extreme
  values stand beyond almost all others, i.e. how much range a max-calibrated INT8 grid wastes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from qtool.analysis.collect import ActivationStats
from qtool.errors import QtoolError

DEFINITIONS = {
    "kurtosis": "Pearson kurtosis E[(x-mean)^4]/Var(x)^2 over real-token elements (3 for a normal)",
    "top_energy_share": "share of the energy sum(x^2) in the top 1% of channels (last axis), at least one channel",
    "outlier_channels": "channels whose max |x| exceeds {sigma:g} standard deviations of the whole tensor",
    "absmax_over_percentile": "max |x| divided by the {percentile:g}th percentile of |x|",
}


@dataclass(frozen=True)
class OutlierConfig:
    sigma: float = 6.0
    top_fraction: float = 0.01
    percentile: float = 99.99

    def validate(self) -> None:
        if not 0 < self.sigma < math.inf:
            raise QtoolError(f"--sigma must be positive, got {self.sigma}")
        if not 0 < self.top_fraction < 1:
            raise QtoolError(f"the top fraction must be in (0, 1), got {self.top_fraction}")
        if not 0 < self.percentile < 100:
            raise QtoolError(f"the percentile must be in (0, 100), got {self.percentile}")

    def definitions(self) -> dict[str, str]:
        return {key: text.format(**asdict(self)) for key, text in DEFINITIONS.items()}


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def point_reports(stats: ActivationStats, config: OutlierConfig = OutlierConfig()) -> list[dict]:
    config.validate()
    reports = []
    for point in stats.points:
        tensor = stats.stats[point.name]
        threshold = config.sigma * tensor.std
        channel_absmax = tensor.channel_absmax
        outliers = []
        if channel_absmax is not None:
            flagged = np.flatnonzero(channel_absmax > threshold)
            order = flagged[np.argsort(-channel_absmax[flagged], kind="stable")]
            outliers = [{"channel": int(c), "absmax": float(channel_absmax[c])} for c in order]
        percentile = tensor.percentile(config.percentile)
        reports.append(
            {
                "name": point.name,
                "role": point.role,
                "layer": point.layer,
                "elements": tensor.count,
                "channels": None if channel_absmax is None else int(channel_absmax.size),
                "mean": tensor.mean,
                "std": tensor.std,
                "min": tensor.min,
                "max": tensor.max,
                "absmax": tensor.absmax,
                "kurtosis": _finite(tensor.kurtosis),
                "top_energy_share": _finite(tensor.top_channel_energy_share(config.top_fraction)),
                "percentile": percentile,
                "absmax_over_percentile": _finite(tensor.absmax / percentile) if percentile > 0 else None,
                "outlier_threshold": threshold,
                "outlier_channels": outliers,
            }
        )
    return reports


def layer_summary(reports: list[dict]) -> list[dict]:
    """Per layer (embeddings first, classifier head last): the heaviest tail and the energy share."""
    groups: dict[str, list[dict]] = {}
    for report in reports:
        key = (
            "embeddings"
            if report["layer"] is None and report["name"].startswith("embeddings")
            else ("head" if report["layer"] is None else f"layer.{report['layer']}")
        )
        groups.setdefault(key, []).append(report)
    summary = []
    for key, members in groups.items():
        with_kurtosis = [m for m in members if m["kurtosis"] is not None]
        heaviest = max(with_kurtosis, key=lambda m: m["kurtosis"]) if with_kurtosis else None
        with_energy = [m for m in members if m["top_energy_share"] is not None]
        most_concentrated = max(with_energy, key=lambda m: m["top_energy_share"]) if with_energy else None
        channels = sorted(
            {
                c["channel"]
                for m in members
                if m["role"] in ("residual_sum", "embeddings_sum")
                for c in m["outlier_channels"]
            }
        )
        summary.append(
            {
                "layer": key,
                "max_kurtosis": heaviest and heaviest["kurtosis"],
                "max_kurtosis_point": heaviest and heaviest["name"],
                "max_top_energy_share": most_concentrated and most_concentrated["top_energy_share"],
                "max_top_energy_point": most_concentrated and most_concentrated["name"],
                "residual_outlier_channels": channels,
            }
        )
    return summary
