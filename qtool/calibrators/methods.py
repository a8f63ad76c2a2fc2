"""The calibration methods, registered by name in `CALIBRATORS`."""

from __future__ import annotations

import numpy as np

from qtool.analysis.stats import TensorStats
from qtool.calibrators.base import ActivationRange, Calibrator, ChannelGroup
from qtool.defaults import PEG_GROUPS, PERCENTILE
from qtool.errors import QtoolError
from qtool.exporter.points import QuantPoint

# Per-embedding-group ranges apply to the d-wide tensors of the residual stream and attention
# (Bondarenko et al. 2021), not to the 4d-wide FFN intermediate or the attention probabilities.
PEG_ROLES = frozenset(
    {
        "embeddings_sum",
        "embeddings_output",
        "embeddings_projection",
        "query",
        "key",
        "value",
        "attention_context",
        "attention_output",
        "residual_sum",
        "layernorm_output",
        "ffn_output",
    }
)


class MaxCalibrator(Calibrator):
    name = "max"

    def params(self) -> dict:
        return {}

    def estimate(self, point: QuantPoint, stats: TensorStats) -> ActivationRange:
        return ActivationRange(stats.absmax)


class PercentileCalibrator(Calibrator):
    name = "percentile"
    options = ("p",)

    def __init__(self, p: float = PERCENTILE):
        if not 0 < p <= 100:
            raise QtoolError(f"--p must be in (0, 100], got {p:g}")
        self.p = float(p)

    def params(self) -> dict:
        return {"p": self.p}

    def estimate(self, point: QuantPoint, stats: TensorStats) -> ActivationRange:
        return ActivationRange(stats.percentile(self.p))


class PegCalibrator(Calibrator):
    """Per-embedding-group ranges: channels sorted by range (or kept in order with `permute=False`),
    split into K groups of near-equal size (K need not divide the width), one range per group."""

    name = "peg"
    options = ("groups", "permute")

    def __init__(self, groups: int = PEG_GROUPS, permute: bool = True):
        if groups < 1:
            raise QtoolError(f"--groups must be at least 1, got {groups}")
        self.groups = int(groups)
        self.permute = bool(permute)

    def params(self) -> dict:
        return {"groups": self.groups, "permute": self.permute}

    def label(self) -> str:
        return f"peg-k{self.groups}" + ("" if self.permute else "-contiguous")

    def estimate(self, point: QuantPoint, stats: TensorStats) -> ActivationRange:
        channel_absmax = stats.channel_absmax
        if point.role not in PEG_ROLES or channel_absmax is None:
            return ActivationRange(stats.absmax)
        width = channel_absmax.size
        if self.groups > width:
            raise QtoolError(f"--groups {self.groups} exceeds the {width} channels of {point.name}")
        order = np.argsort(channel_absmax, kind="stable") if self.permute else np.arange(width)
        groups = tuple(
            ChannelGroup(tuple(int(c) for c in members), float(channel_absmax[members].max()))
            for members in np.array_split(order, self.groups)
        )
        return ActivationRange(stats.absmax, groups)


CALIBRATORS: dict[str, type[Calibrator]] = {
    "max": MaxCalibrator,
    "percentile": PercentileCalibrator,
    "peg": PegCalibrator,
}


def make_calibrator(method: str, **options) -> Calibrator:
    try:
        cls = CALIBRATORS[method]
    except KeyError:
        raise QtoolError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATORS)}") from None
    return cls(**{k: v for k, v in options.items() if k in cls.options and v is not None})
