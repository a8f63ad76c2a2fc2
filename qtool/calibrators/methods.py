"""The calibration methods, registered by name in `CALIBRATORS`."""

from __future__ import annotations

import itertools

import numpy as np

from qtool.analysis.stats import TensorStats
from qtool.calibrators.base import ActivationRange, Calibrator, ChannelGroup
from qtool.defaults import PEG_GROUPING, PEG_GROUPS, PERCENTILE
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


def rounding_noise(ranges: np.ndarray, bounds: list[int]) -> float:
    """The objective `optimal` grouping minimises: sum over groups of (channels in the group) x (the
    group's largest max |x|)^2. Each group is symmetric INT8 with scale s = amax / 127, whose rounding
    error is uniform with power s^2 / 12 on every element of its channels, and every channel holds
    the same tokens, so this is the tensor's expected rounding-noise power up to a constant factor.
    (No value is clipped: each group's range covers its channels.) `bounds` are the group starts."""
    edges = [*bounds, len(ranges)]
    return float(sum((end - start) * ranges[start:end].max() ** 2 for start, end in itertools.pairwise(edges)))


def optimal_group_starts(ranges: np.ndarray, groups: int) -> list[int]:
    """Where each of `groups` contiguous groups of `ranges` (channel max |x|, in grouping order)
    starts so that `rounding_noise` is smallest: exact dynamic programming over every split. Among
    equal splits the one whose cuts come earliest, last cut first, wins, so the result is
    deterministic."""
    ranges = np.asarray(ranges, dtype=np.float64)
    width = ranges.size
    if not 1 <= groups <= width:
        raise QtoolError(f"--groups {groups} must be between 1 and the {width} channels")
    if not np.all(np.isfinite(ranges)) or np.any(np.abs(ranges) > 1e150):
        raise QtoolError("a channel range is not finite; collect the statistics again (`qtool collect --force`)")
    # cost[j]: the least noise of the first j channels in the groups so far; last[k, j]: where the
    # k-th group starts in that best split.
    cost = np.full(width + 1, np.inf)
    cost[0] = 0.0
    last = np.zeros((groups + 1, width + 1), dtype=np.int64)
    # tail[j][i] = (j - i) * max(ranges[i:j])^2: the noise of one group holding channels i .. j-1.
    tail = [np.array([])] + [
        (j - np.arange(j)) * np.maximum.accumulate(ranges[j - 1 :: -1])[::-1] ** 2 for j in range(1, width + 1)
    ]
    for k in range(1, groups + 1):
        following = np.full(width + 1, np.inf)
        for j in range(k, width + 1):
            candidates = cost[:j] + tail[j]
            last[k, j] = int(np.argmin(candidates))
            following[j] = candidates[last[k, j]]
        cost = following
    starts, j = [], width
    for k in range(groups, 0, -1):
        j = int(last[k, j])
        starts.append(j)
    return starts[::-1]


PEG_GROUPINGS = ("optimal", "equal")


class PegCalibrator(Calibrator):
    """Per-embedding-group ranges: channels sorted by range (or kept in order with `permute=False`)
    and cut into K groups (K need not divide the width), one range per group. `grouping="optimal"`
    places the cuts where the expected rounding noise is least (`rounding_noise`); `"equal"` cuts
    into groups of near-equal size, as Bondarenko et al. do."""

    name = "peg"
    options = ("groups", "permute", "grouping")

    def __init__(self, groups: int = PEG_GROUPS, permute: bool = True, grouping: str = PEG_GROUPING):
        if groups < 1:
            raise QtoolError(f"--groups must be at least 1, got {groups}")
        if grouping not in PEG_GROUPINGS:
            raise QtoolError(f"unknown --grouping {grouping!r}; choose one of {', '.join(PEG_GROUPINGS)}")
        self.groups = int(groups)
        self.permute = bool(permute)
        self.grouping = grouping

    def params(self) -> dict:
        return {"groups": self.groups, "permute": self.permute, "grouping": self.grouping}

    def label(self) -> str:
        grouping = "" if self.grouping == PEG_GROUPING else f"-{self.grouping}"
        return f"peg-k{self.groups}{grouping}" + ("" if self.permute else "-contiguous")

    def _members(self, order: np.ndarray, ranges: np.ndarray) -> list[np.ndarray]:
        if self.grouping == "equal":
            return np.array_split(order, self.groups)
        starts = optimal_group_starts(ranges[order], self.groups)
        return np.split(order, starts[1:])

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
            for members in self._members(order, channel_absmax)
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
