"""Range estimation, kept apart from the quantization grid and the precision policy.

The collector observes activations once and keeps their statistics (`TensorStats`); a calibrator
only turns one point's statistics into a range. The grid (symmetric INT8, zero point 0) turns a
range into a scale; the precision policy (scope and overrides) decides which points are
quantized at all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from qtool.analysis.stats import TensorStats
from qtool.exporter.grid import scale_for
from qtool.exporter.points import QuantPoint


@dataclass(frozen=True)
class ChannelGroup:
    channels: tuple[int, ...]
    amax: float

    @property
    def scale(self) -> float:
        return scale_for(self.amax)


@dataclass(frozen=True)
class ActivationRange:
    """A symmetric range: one `amax`, or, for per-embedding-group ranges, one per channel group."""

    amax: float
    groups: tuple[ChannelGroup, ...] | None = None

    @property
    def scale(self) -> float:
        return scale_for(self.amax)

    def to_json(self) -> dict:
        data = {"amax": self.amax, "scale": self.scale}
        if self.groups is not None:
            data["groups"] = [{"amax": g.amax, "scale": g.scale, "channels": list(g.channels)} for g in self.groups]
        return data


class Calibrator(ABC):
    """Turns the statistics of one quantization point into a range."""

    name: str
    options: tuple[str, ...] = ()  # keyword options the constructor takes from the CLI

    @abstractmethod
    def params(self) -> dict: ...

    @abstractmethod
    def estimate(self, point: QuantPoint, stats: TensorStats) -> ActivationRange: ...

    def label(self) -> str:
        values = "-".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.params().values())
        return f"{self.name}-{values}" if values else self.name
