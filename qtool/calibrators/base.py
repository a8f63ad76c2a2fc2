"""Range estimation, kept apart from the quantization grid and the precision policy.

The collector observes activations once and keeps their statistics (`TensorStats`); a calibrator
only turns one point's statistics into a range. The grid (symmetric INT8, zero point 0) turns a
range into a scale; the precision policy (scope and overrides) decides which points are
quantized at all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from qtool.analysis.stats import TensorStats
from qtool.exporter.grid import ActivationRange, ChannelGroup
from qtool.exporter.points import QuantPoint

__all__ = ["ActivationRange", "Calibrator", "ChannelGroup"]  # the range type lives with the grid


class Calibrator(ABC):
    """Turns the statistics of one quantization point into a range."""

    name: str
    # Keyword options the constructor takes: p, groups, grouping and permute have flags of their own;
    # any other (a calibrator from outside qtool) comes as `--method-option NAME=VALUE`.
    options: tuple[str, ...] = ()

    @abstractmethod
    def params(self) -> dict: ...

    @abstractmethod
    def estimate(self, point: QuantPoint, stats: TensorStats) -> ActivationRange: ...

    def label(self) -> str:
        values = "-".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.params().values())
        return f"{self.name}-{values}" if values else self.name
