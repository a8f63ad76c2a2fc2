"""Activation statistics (collected once, streamed) and the outlier analysis built on them."""

from qtool.analysis.collect import ActivationStats, CollectConfig, collect, collect_or_load
from qtool.analysis.outliers import OutlierConfig, layer_summary, point_reports

__all__ = [
    "ActivationStats",
    "CollectConfig",
    "OutlierConfig",
    "collect",
    "collect_or_load",
    "layer_summary",
    "point_reports",
]
