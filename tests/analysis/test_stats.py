from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from qtool.analysis.stats import TensorStats


def _reference(values: np.ndarray, rows: np.ndarray) -> dict:
    x = values.astype(np.float64).ravel()
    mean = x.mean()
    central = x - mean
    m2, m4 = np.mean(central**2), np.mean(central**4)
    wide = rows.astype(np.float64)
    return {
        "count": x.size,
        "min": x.min(),
        "max": x.max(),
        "mean": mean,
        "variance": m2,
        "kurtosis": m4 / m2**2,
        "channel_min": wide.min(0),
        "channel_max": wide.max(0),
        "channel_energy": (wide**2).sum(0),
    }


def _batches(rng, count: int, channels: int = 24, outlier_channel: int | None = 5):
    for index in range(count):
        tokens = int(rng.integers(3, 40))
        batch = rng.standard_t(df=4, size=(tokens, channels)).astype(np.float32) * (1 + index % 3)
        batch += 0.5 * index
        if outlier_channel is not None:
            batch[:, outlier_channel] *= 40
        yield batch


def _relative(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))


def test_streamed_statistics_equal_numpy_on_concatenated_batches():
    rng = np.random.default_rng(0)
    batches = list(_batches(rng, 17))
    stats = TensorStats(bins=4096)
    for batch in batches:
        stats.update(batch, batch)
    everything = np.concatenate(batches)
    reference = _reference(everything, everything)
    assert stats.count == reference["count"]
    for name in ("min", "max", "mean", "variance", "kurtosis"):
        assert _relative(getattr(stats, name), reference[name]) <= 1e-9, name
    for name in ("channel_min", "channel_max", "channel_energy"):
        assert _relative(getattr(stats, name), reference[name]) <= 1e-9, name
    assert _relative(stats.absmax, np.abs(everything).max()) <= 1e-12


def test_energy_share_and_kurtosis_definitions():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(200_000, 100))
    stats = TensorStats()
    stats.update(rows, rows)
    assert stats.kurtosis == pytest.approx(3.0, abs=0.05)  # Pearson: 3 for a normal
    energy = (rows**2).sum(0)
    assert stats.top_channel_energy_share(0.01) == pytest.approx(np.sort(energy)[-1:].sum() / energy.sum(), rel=1e-12)
    assert stats.top_channel_energy_share(0.05) == pytest.approx(np.sort(energy)[-5:].sum() / energy.sum(), rel=1e-12)


def test_histogram_percentiles_track_numpy_while_the_range_grows():
    rng = np.random.default_rng(2)
    stats = TensorStats(bins=1 << 14)
    pieces = []
    for scale in (0.1, 1.0, 5.0, 60.0):  # every batch widens the range: bins must merge, not restart
        piece = rng.standard_t(df=3, size=50_000) * scale
        pieces.append(piece)
        stats.update(piece)
    magnitudes = np.abs(np.concatenate(pieces))
    width = stats.histogram_range / stats.bins
    assert stats.histogram.sum() == magnitudes.size
    assert stats.histogram_range >= magnitudes.max() > stats.histogram_range / 2
    ordered = np.sort(magnitudes)
    for p in (50, 99, 99.9, 99.99, 99.999):
        rank = p / 100 * ordered.size  # the estimate must fall between the order statistics around it
        low, high = ordered[max(int(np.floor(rank)) - 1, 0)], ordered[min(int(np.ceil(rank)), ordered.size - 1)]
        assert low - width <= stats.percentile(p) <= high + width, p
    assert stats.percentile(100) == magnitudes.max()


def test_histogram_merge_keeps_counts_in_their_bins():
    exact = TensorStats(bins=256)
    exact.update(np.array([0.0, 100.0]))  # range 128 from the start
    exact.update(np.linspace(0, 30, 1000))
    grown = TensorStats(bins=256)
    grown.update(np.linspace(0, 30, 1000))  # range 32, then doubled twice
    grown.update(np.array([0.0, 100.0]))
    assert grown.histogram_range == exact.histogram_range == 128
    np.testing.assert_array_equal(grown.histogram, exact.histogram)


def test_memory_does_not_grow_with_the_number_of_batches():
    def peak_for(count: int) -> tuple[int, int]:
        rng = np.random.default_rng(3)
        stats = TensorStats()
        batches = _batches(rng, count, channels=64)  # a generator: batches are not kept
        tracemalloc.start()
        for batch in batches:
            stats.update(batch, batch)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak, stats.nbytes()

    few_peak, few_state = peak_for(5)
    many_peak, many_state = peak_for(200)
    assert few_state == many_state
    assert many_peak < few_peak * 1.25


def test_round_trip_through_arrays():
    rng = np.random.default_rng(4)
    stats = TensorStats(bins=512)
    for batch in _batches(rng, 4):
        stats.update(batch, batch)
    restored = TensorStats.from_arrays(stats.to_arrays("p"), "p")
    assert restored.count == stats.count and restored.kurtosis == stats.kurtosis
    np.testing.assert_array_equal(restored.histogram, stats.histogram)
    np.testing.assert_array_equal(restored.channel_energy, stats.channel_energy)
    assert math.isclose(restored.percentile(99.9), stats.percentile(99.9))


@pytest.mark.parametrize("damage", ["missing", "short"])
def test_incomplete_per_channel_arrays_are_refused(damage):
    rng = np.random.default_rng(5)
    stats = TensorStats(bins=512)
    for batch in _batches(rng, 2):
        stats.update(batch, batch)
    arrays = stats.to_arrays("p")
    if damage == "missing":
        del arrays["p/channel_max"]
    else:
        arrays["p/channel_min"] = arrays["p/channel_min"][:-1]
    with pytest.raises(ValueError, match="per-channel arrays"):
        TensorStats.from_arrays(arrays, "p")
