"""The calibration methods, registered by name in `CALIBRATORS`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import numpy as np

from qtool.analysis.stats import TensorStats
from qtool.calibrators.base import (
    FLAGGED_METHOD_OPTIONS,
    ActivationRange,
    Calibrator,
    ChannelGroup,
    checked_options,
    method_option,
)
from qtool.calibrators.histogram import EntropyCalibrator, MseCalibrator
from qtool.defaults import PEG_AUTO_MAX_GROUPS, PEG_AUTO_NOISE_FACTOR, PEG_GROUPING, PEG_GROUPS, PERCENTILE
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


@dataclass(frozen=True)
class PercentileOptions:
    p: float = method_option(PERCENTILE, "the percentile of |x| that becomes the range", above=0, at_most=100)


class PercentileCalibrator(Calibrator):
    name = "percentile"
    options = PercentileOptions

    def __init__(self, p: float = PERCENTILE):
        self.p = float(checked_options(self.name, PercentileOptions, {"p": p}).p)

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


def _checked_ranges(ranges: np.ndarray) -> np.ndarray:
    ranges = np.asarray(ranges, dtype=np.float64)
    if not np.all(np.isfinite(ranges)) or np.any(np.abs(ranges) > 1e150):
        raise QtoolError("a channel range is not finite; collect the statistics again (`qtool collect --force`)")
    return ranges


def optimal_splits(ranges: np.ndarray) -> Iterator[list[int]]:
    """For K = 1, 2, ... up to the channel count, the group starts of the split of `ranges` (channel
    max |x|, in grouping order) into K contiguous groups whose `rounding_noise` is smallest: exact
    dynamic programming over every split, one more group per step. Among equal splits the one whose
    cuts come earliest, last cut first, wins, so the result is deterministic."""
    ranges = _checked_ranges(ranges)
    width = ranges.size
    # cost[j]: the least noise of the first j channels in the groups so far; lasts[k - 1][j]: where
    # the k-th group starts in that best split.
    cost = np.full(width + 1, np.inf)
    cost[0] = 0.0
    lasts: list[np.ndarray] = []
    # tail[j][i] = (j - i) * max(ranges[i:j])^2: the noise of one group holding channels i .. j-1.
    tail = [np.array([])] + [
        (j - np.arange(j)) * np.maximum.accumulate(ranges[j - 1 :: -1])[::-1] ** 2 for j in range(1, width + 1)
    ]
    for k in range(1, width + 1):
        following, last = np.full(width + 1, np.inf), np.zeros(width + 1, dtype=np.int64)
        for j in range(k, width + 1):
            candidates = cost[:j] + tail[j]
            last[j] = int(np.argmin(candidates))
            following[j] = candidates[last[j]]
        cost = following
        lasts.append(last)
        starts, j = [], width
        for row in reversed(lasts):
            j = int(row[j])
            starts.append(j)
        yield starts[::-1]


def optimal_group_starts(ranges: np.ndarray, groups: int) -> list[int]:
    """Where each of `groups` contiguous groups of `ranges` starts in the least-noise split (`optimal_splits`)."""
    width = np.asarray(ranges).size
    if not 1 <= groups <= width:
        raise QtoolError(f"--groups {groups} must be between 1 and the {width} channels")
    return next(itertools.islice(optimal_splits(ranges), groups - 1, None))


def equal_splits(ranges: np.ndarray) -> Iterator[list[int]]:
    """For K = 1, 2, ...: the starts of K groups of near-equal size (as `np.array_split` cuts)."""
    width = np.asarray(ranges).size
    for k in range(1, width + 1):
        sizes = [part.size for part in np.array_split(np.arange(width), k)]
        yield [0, *itertools.accumulate(sizes[:-1])]


def smallest_split(splits: Iterator[list[int]], ranges: np.ndarray, factor: float, most: int) -> list[int]:
    """The first of `splits` (fewer groups first) whose `rounding_noise` is at most `factor` times
    that of per-channel quantization, or the one with `most` groups."""
    ranges = _checked_ranges(ranges)
    target = factor * float(np.sum(ranges**2))
    for starts in splits:
        if len(starts) >= most or rounding_noise(ranges, starts) <= target * (1 + 1e-12):
            return starts
    raise AssertionError("unreachable: the splits end with one channel per group")


PEG_GROUPINGS = ("optimal", "equal")
AUTO_GROUPS = "auto"


@dataclass(frozen=True)
class PegOptions:
    groups: int | str = method_option(
        PEG_GROUPS, f"groups K per tensor, or {AUTO_GROUPS} (the fewest groups near per-channel noise)",
        at_least=1, choices=(AUTO_GROUPS,),
    )
    permute: bool = method_option(True, "sort the channels by range before cutting them into groups")
    grouping: str = method_option(PEG_GROUPING, "where the group boundaries fall", choices=PEG_GROUPINGS)


class PegCalibrator(Calibrator):
    """Per-embedding-group ranges: channels sorted by range (or kept in order with `permute=False`)
    and cut into K groups (K need not divide the width), one range per group. `grouping="optimal"`
    places the cuts where the expected rounding noise is least (`rounding_noise`); `"equal"` cuts
    into groups of near-equal size, as Bondarenko et al. do. `groups="auto"` takes, per tensor, the
    smallest K whose expected rounding noise is at most `PEG_AUTO_NOISE_FACTOR` times that of
    per-channel quantization (at most `PEG_AUTO_MAX_GROUPS` groups)."""

    name = "peg"
    options = PegOptions

    def __init__(self, groups: int | str = PEG_GROUPS, permute: bool = True, grouping: str = PEG_GROUPING):
        checked = checked_options(self.name, PegOptions, {"groups": groups, "permute": permute, "grouping": grouping})
        self.groups, self.permute, self.grouping = checked.groups, checked.permute, checked.grouping

    def params(self) -> dict:
        return {"groups": self.groups, "permute": self.permute, "grouping": self.grouping}

    def label(self) -> str:
        grouping = "" if self.grouping == PEG_GROUPING else f"-{self.grouping}"
        count = "auto" if self.groups == AUTO_GROUPS else f"k{self.groups}"
        return f"peg-{count}{grouping}" + ("" if self.permute else "-contiguous")

    def _members(self, order: np.ndarray, ranges: np.ndarray) -> list[np.ndarray]:
        ordered = ranges[order]
        splits = optimal_splits(ordered) if self.grouping == "optimal" else equal_splits(ordered)
        if self.groups == AUTO_GROUPS:
            starts = smallest_split(splits, ordered, PEG_AUTO_NOISE_FACTOR, PEG_AUTO_MAX_GROUPS)
        else:
            starts = next(itertools.islice(splits, self.groups - 1, None))
        return np.split(order, starts[1:])

    def estimate(self, point: QuantPoint, stats: TensorStats) -> ActivationRange:
        channel_absmax = stats.channel_absmax
        if point.role not in PEG_ROLES or channel_absmax is None:
            return ActivationRange(stats.absmax)
        width = channel_absmax.size
        if self.groups != AUTO_GROUPS and self.groups > width:
            raise QtoolError(f"--groups {self.groups} exceeds the {width} channels of {point.name}")
        order = np.argsort(channel_absmax, kind="stable") if self.permute else np.arange(width)
        groups = tuple(
            ChannelGroup(members, channel_absmax[members].max())
            for members in self._members(order, channel_absmax)
        )
        return ActivationRange(stats.absmax, groups=groups)


CALIBRATORS: dict[str, type[Calibrator]] = {
    "max": MaxCalibrator,
    "percentile": PercentileCalibrator,
    "peg": PegCalibrator,
    "entropy": EntropyCalibrator,
    "mse": MseCalibrator,
}


def make_calibrator(method: str, **options) -> Calibrator:
    """The calibrator `method` with `options` checked against its declared options (qtool's flagged
    options p, groups, grouping and permute are dropped where the method does not take them)."""
    try:
        cls = CALIBRATORS[method]
    except KeyError:
        raise QtoolError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATORS)}") from None
    takes = {f.name for f in fields(cls.options)}
    given = {k: v for k, v in options.items() if k in takes or k not in FLAGGED_METHOD_OPTIONS}
    try:
        return cls(**asdict(checked_options(method, cls.options, given)))
    except (TypeError, ValueError) as exc:  # a calibrator from outside qtool refusing a value
        raise QtoolError(f"method {method}: {exc}") from None
