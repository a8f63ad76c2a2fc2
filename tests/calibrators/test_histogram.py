"""Entropy and MSE ranges against loop-by-loop NumPy references of their objectives on known histograms."""

from __future__ import annotations

import numpy as np
import pytest

from qtool.analysis.stats import TensorStats
from qtool.calibrators.histogram import (
    LEVELS,
    EntropyCalibrator,
    MseCalibrator,
    coarse_histogram,
    kl_divergence_of_clipping,
    kl_divergences,
    quantization_mse,
)
from qtool.calibrators.methods import CALIBRATORS, make_calibrator


def _reference_kl(histogram: np.ndarray, edge: int, levels: int = LEVELS) -> float:
    """TensorRT's entropy calibration step written as loops (pytorch-quantization's `_compute_amax_entropy`)."""
    reference = [float(c) for c in histogram[:edge]]
    reference[-1] += float(histogram[edge:].sum())
    level_of = [int(np.digitize(j, np.linspace(0, edge, levels + 1))) - 1 for j in range(edge)]
    mass, occupied = [0.0] * levels, [0] * levels
    for j in range(edge):
        if histogram[j] > 0:
            mass[level_of[j]] += float(histogram[j])
            occupied[level_of[j]] += 1
    candidate = [mass[level_of[j]] / occupied[level_of[j]] if histogram[j] > 0 else 0.0 for j in range(edge)]
    p_total, q_total = sum(reference), sum(candidate)
    divergence = 0.0
    for p, q in zip(reference, candidate, strict=True):
        if p > 0:
            if q == 0:
                return np.inf
            divergence += p / p_total * np.log((p / p_total) / (q / q_total))
    return divergence


def _stats_of(values: np.ndarray, bins: int = 1 << 14) -> TensorStats:
    stats = TensorStats(bins=bins)
    stats.update(values.astype(np.float32))
    return stats


@pytest.mark.parametrize("seed", range(6))
def test_kl_divergence_matches_the_loop_reference(seed):
    rng = np.random.default_rng(seed)
    histogram = np.floor(rng.exponential(50.0, size=512) * (rng.random(512) > 0.3))
    for edge in (128, 129, 200, 333, 511, 512):
        assert kl_divergence_of_clipping(histogram, edge) == pytest.approx(_reference_kl(histogram, edge), rel=1e-9)


@pytest.mark.parametrize("seed", range(8))
def test_every_edges_divergence_at_once_matches_the_per_edge_definition(seed):
    rng = np.random.default_rng(seed)
    size = (100, 300, 777, 2048, 512, 1024, 60, 127)[seed]
    histogram = rng.exponential(50.0, size=size) * (rng.random(size) > rng.random())
    if seed % 4:  # counts, as statistics files hold; the others are fractional
        histogram = np.floor(histogram)
    histogram[rng.integers(0, size, 2)] += 1e6 * (seed % 2)  # outliers, on every other histogram
    histogram[size // 2 : size // 2 + 40 * (seed % 3)] = 0  # an empty stretch, on some
    histogram[-size // 5 :] *= seed % 3 != 1  # a tail of empty bins, on some
    edges = np.arange(1 if size < LEVELS else LEVELS, size + 1)  # below LEVELS bins, every edge
    expected = np.array([kl_divergence_of_clipping(histogram, int(edge)) for edge in edges])
    divergences = kl_divergences(histogram, edges)
    assert np.array_equal(np.isinf(divergences), np.isinf(expected)) and not np.isnan(divergences).any()
    finite = np.isfinite(expected)
    np.testing.assert_allclose(divergences[finite], expected[finite], rtol=0, atol=1e-10)
    # the chosen edge is a loop's over every edge: the first of the least divergences
    chosen = EntropyCalibrator().clipping_point(_stats_of(rng.random(10)), histogram, 1.0)
    every = np.arange(min(LEVELS, size), size + 1)
    assert chosen == every[int(np.argmin([kl_divergence_of_clipping(histogram, int(edge)) for edge in every]))]


def test_equal_divergences_choose_the_first_edge_whatever_the_screen_rounds(monkeypatch):
    from qtool.calibrators import histogram as module

    histogram = np.zeros(600)
    histogram[3] = 10.0  # every edge past the one occupied bin keeps it whole: all divergences are 0
    edges = np.arange(LEVELS, 601)
    assert not kl_divergences(histogram, edges).any()
    # a screen whose rounding makes the last edge look least: the per-edge sums still decide
    monkeypatch.setattr(module, "kl_divergences", lambda h, e: kl_divergences(h, e) - 1e-13 * np.arange(e.size))
    assert EntropyCalibrator().clipping_point(_stats_of(np.full(10, 3.5)), histogram, 0.5) == LEVELS * 0.5


def test_kl_is_infinite_when_the_clipped_mass_lands_in_an_empty_bin():
    histogram = np.array([5.0] * 200 + [0.0] * 100 + [1.0])
    assert kl_divergence_of_clipping(histogram, 300) == np.inf
    assert np.isfinite(kl_divergence_of_clipping(histogram, 200))


def test_entropy_range_is_the_least_divergence_over_every_edge():
    rng = np.random.default_rng(3)
    stats = _stats_of(np.concatenate([rng.laplace(size=50_000), [40.0]]))
    histogram, width = coarse_histogram(stats)
    divergences = {edge: _reference_kl(histogram, edge) for edge in range(LEVELS, histogram.size + 1, 16)}
    best = min(divergences.values())
    amax = EntropyCalibrator().estimate(None, stats).amax
    assert kl_divergence_of_clipping(histogram, round(amax / width)) <= best + 1e-12
    assert amax < 0.5 * stats.absmax  # the lone outlier is clipped


def test_mse_objective_matches_fake_quantization_of_the_values():
    rng = np.random.default_rng(4)
    centers = np.sort(rng.random(300) * 5)
    counts = rng.integers(1, 20, size=300).astype(np.float64)
    values = np.repeat(centers, counts.astype(int))
    for amax in (0.5, 2.0, 4.9, 7.0):
        scale = amax / 127
        fake = np.clip(np.rint(values / scale), -127, 127) * scale
        expected = np.mean((values - fake) ** 2)
        assert quantization_mse(centers, counts, np.array([amax]))[0] == pytest.approx(expected, rel=1e-9)


def test_mse_range_is_the_least_error_over_every_candidate():
    rng = np.random.default_rng(5)
    stats = _stats_of(np.concatenate([rng.normal(size=50_000), [30.0, -25.0]]), bins=1 << 12)
    amax = MseCalibrator().estimate(None, stats).amax
    counts = stats.histogram.astype(np.float64)
    fine = stats.histogram_range / counts.size
    centers = np.minimum((np.arange(counts.size) + 0.5) * fine, stats.absmax)
    _, width = coarse_histogram(stats)
    every = np.minimum(np.arange(1, 2049) * width, stats.absmax)
    errors = quantization_mse(centers, counts, every)
    assert quantization_mse(centers, counts, np.array([amax]))[0] == pytest.approx(errors.min(), rel=1e-9)
    assert 1.0 < amax < stats.absmax  # neither the bulk alone nor the outliers' full range


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_a_zero_tensor_and_a_constant_tensor_get_their_max(method):
    assert make_calibrator(method).estimate(None, _stats_of(np.zeros(100))).amax == 0.0
    constant = make_calibrator(method).estimate(None, _stats_of(np.full(100, 3.0))).amax
    assert constant == pytest.approx(3.0)


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_histogram_methods_are_registered_without_options(method):
    assert method in CALIBRATORS
    calibrator = make_calibrator(method, p=99.0, groups=3)  # other methods' options are not theirs
    assert calibrator.params() == {} and calibrator.label() == method
