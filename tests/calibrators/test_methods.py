"""Range estimators against NumPy: PEG's range-optimal groups are the exact minimum of their objective."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from qtool.analysis.stats import TensorStats
from qtool.calibrators.methods import PegCalibrator, make_calibrator, optimal_group_starts, rounding_noise
from qtool.defaults import PEG_AUTO_MAX_GROUPS, PEG_AUTO_NOISE_FACTOR
from qtool.errors import QtoolError, api_spelling
from qtool.exporter.points import QuantPoint


def _brute_force(ranges: np.ndarray, groups: int) -> float:
    return min(rounding_noise(ranges, [0, *cut]) for cut in itertools.combinations(range(1, ranges.size), groups - 1))


@pytest.mark.parametrize("seed", range(40))
def test_optimal_starts_reach_the_minimum_over_every_split(seed):
    rng = np.random.default_rng(seed)
    width = int(rng.integers(2, 10))
    groups = int(rng.integers(1, width + 1))
    ranges = np.abs(rng.standard_normal(width)) ** 3
    if seed % 2:
        ranges = np.sort(ranges)  # the range-sorted order PEG groups in
    starts = optimal_group_starts(ranges, groups)
    assert starts[0] == 0 and len(starts) == groups and starts == sorted(set(starts))
    assert rounding_noise(ranges, starts) == pytest.approx(_brute_force(ranges, groups), rel=1e-12)


def _stats(channel_absmax: np.ndarray) -> TensorStats:
    stats = TensorStats()
    rows = np.stack([channel_absmax, -channel_absmax * 0.5])  # two tokens whose max |x| per channel is known
    stats.update(rows.reshape(-1), rows)
    return stats


def test_an_outlier_channel_gets_a_group_of_its_own():
    ranges = np.concatenate([np.linspace(1.0, 12.5, 383), [221.7]])  # layer.0.ffn.residual_sum's shape
    point = QuantPoint("p", "residual_sum", 0, "t", ())
    optimal = PegCalibrator(groups=2).estimate(point, _stats(ranges))
    equal = PegCalibrator(groups=2, grouping="equal").estimate(point, _stats(ranges))
    assert [len(g.channels) for g in optimal.groups] == [383, 1] and optimal.groups[1].channels == (383,)
    assert [len(g.channels) for g in equal.groups] == [192, 192]
    noise = {name: sum(len(g.channels) * g.amax**2 for g in r.groups) for name, r in (("o", optimal), ("e", equal))}
    assert noise["o"] < noise["e"] / 50


@pytest.mark.parametrize("groups", [1, 3, 7])
@pytest.mark.parametrize("permute", [True, False])
def test_optimal_is_never_worse_than_equal_and_covers_every_channel_once(groups, permute):
    ranges = np.abs(np.random.default_rng(groups).standard_normal(40)) ** 4
    point = QuantPoint("p", "layernorm_output", 0, "t", ())
    results = {
        grouping: PegCalibrator(groups=groups, permute=permute, grouping=grouping).estimate(point, _stats(ranges))
        for grouping in ("optimal", "equal")
    }
    for result in results.values():
        assert sorted(c for g in result.groups for c in g.channels) == list(range(40)) and len(result.groups) == groups
        for group in result.groups:
            assert group.amax == pytest.approx(ranges[list(group.channels)].max())
    cost = {k: sum(len(g.channels) * g.amax**2 for g in r.groups) for k, r in results.items()}
    assert cost["optimal"] <= cost["equal"] * (1 + 1e-12)


def test_grouping_is_recorded_and_checked():
    assert make_calibrator("peg", groups=2).params() == {"groups": 2, "permute": True, "grouping": "optimal"}
    assert make_calibrator("peg", groups=2, grouping="equal").label() == "peg-k2-equal"
    assert make_calibrator("peg", groups=2).label() == "peg-k2"
    with pytest.raises(QtoolError, match=api_spelling("--grouping")):
        make_calibrator("peg", grouping="kmeans")


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("grouping", ["optimal", "equal"])
def test_auto_groups_are_the_fewest_within_the_noise_factor(seed, grouping):
    """`--groups auto`: per tensor, the smallest K whose expected rounding noise is at most
    PEG_AUTO_NOISE_FACTOR x per-channel quantization's, checked against every K below it."""
    rng = np.random.default_rng(seed)
    ranges = np.abs(rng.standard_normal(24)) ** int(rng.integers(1, 5)) + 0.05
    point = QuantPoint("p", "residual_sum", 0, "t", ())
    result = PegCalibrator(groups="auto", grouping=grouping).estimate(point, _stats(ranges))
    chosen = len(result.groups)
    assert 1 <= chosen <= PEG_AUTO_MAX_GROUPS
    assert sorted(c for g in result.groups for c in g.channels) == list(range(ranges.size))
    per_channel = float(np.sum(ranges.astype(np.float64) ** 2))

    def noise(k: int) -> float:
        groups = PegCalibrator(groups=k, grouping=grouping).estimate(point, _stats(ranges)).groups
        return sum(len(g.channels) * g.amax**2 for g in groups)

    assert noise(chosen) == pytest.approx(sum(len(g.channels) * g.amax**2 for g in result.groups), rel=1e-6)
    if chosen < PEG_AUTO_MAX_GROUPS:
        assert noise(chosen) <= PEG_AUTO_NOISE_FACTOR * per_channel * (1 + 1e-6)
    assert all(noise(k) > PEG_AUTO_NOISE_FACTOR * per_channel for k in range(1, chosen))


def test_auto_groups_follow_the_tensor():
    point = QuantPoint("p", "residual_sum", 0, "t", ())
    flat = PegCalibrator(groups="auto").estimate(point, _stats(np.linspace(0.8, 1.0, 64)))
    outlier = PegCalibrator(groups="auto").estimate(
        point, _stats(np.concatenate([np.linspace(1.0, 12.5, 383), [221.7]]))
    )
    assert len(flat.groups) == 1  # similar ranges: one scale is already within the factor
    assert len(outlier.groups) >= 2 and outlier.groups[-1].channels == (383,)
    assert PegCalibrator(groups="auto").label() == "peg-auto" and make_calibrator("peg", groups="3").groups == 3


@pytest.mark.parametrize("bad", [0, "0", "many", "2.5", -1, True])
def test_groups_must_be_a_count_or_auto(bad):
    with pytest.raises(QtoolError, match=api_spelling("--groups")):
        make_calibrator("peg", groups=bad)
