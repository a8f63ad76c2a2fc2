"""Ranges chosen by an objective over the streamed histogram of |x|: entropy (KL divergence, the
default of TensorRT's and Model Optimizer's activation calibrators) and the least mean squared
quantization error (ONNX Runtime's and Quark's MSE-style calibrators).

Both search the clipping point `amax` over the edges of the histogram coarsened to
`SEARCH_BINS` bins (as TensorRT's calibrator keeps 2048), so a tensor costs the same whatever its
statistics file's resolution. The errors are measured on the finer bins of the file.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from qtool.analysis.stats import TensorStats
from qtool.calibrators.base import ActivationRange, Calibrator
from qtool.exporter.grid import INT8_MAX
from qtool.exporter.points import QuantPoint

SEARCH_BINS = 2048
LEVELS = INT8_MAX + 1  # the magnitudes a symmetric int8 code can take: 0 .. 127
MSE_CHUNK = 128  # candidates evaluated together (memory: chunk x non-empty bins)
SCREEN_TOLERANCE = 1e-9  # divergences this close to the least are compared by the exact per-edge sum


def coarse_histogram(stats: TensorStats, bins: int = SEARCH_BINS) -> tuple[np.ndarray, float]:
    """The histogram of |x| merged into at most `bins` bins (exact: the file's bins nest) and the width of one."""
    histogram = np.asarray(stats.histogram, dtype=np.float64)
    factor = max(1, histogram.size // bins)
    merged = histogram.reshape(-1, factor).sum(axis=1)
    return merged, stats.histogram_range / merged.size


def kl_divergence_of_clipping(histogram: np.ndarray, edge: int, levels: int = LEVELS) -> float:
    """KL(P || Q) of clipping at bin `edge` (TensorRT's entropy calibration): P is the histogram's
    first `edge` bins with every count beyond added to the last; Q spreads each of `levels` equal
    slices of those bins evenly over the slice's non-empty bins. Infinite when Q misses mass of P."""
    reference = histogram[:edge].copy()
    reference[-1] += histogram[edge:].sum()
    total = reference.sum()
    if total == 0:
        return np.inf
    kept = histogram[:edge]
    slices = (np.arange(edge) * levels) // edge  # the level of each bin, `levels` near-equal slices
    occupied = kept > 0
    mass = np.bincount(slices, weights=kept, minlength=levels)
    occupied_bins = np.bincount(slices, weights=occupied, minlength=levels)
    spread = np.divide(mass, occupied_bins, out=np.zeros(levels), where=occupied_bins > 0)
    candidate = np.where(occupied, spread[slices], 0.0)
    if candidate.sum() == 0:
        return np.inf
    p = reference / total
    q = candidate / candidate.sum()
    present = p > 0
    if np.any(q[present] == 0):
        return np.inf
    return float(np.sum(p[present] * np.log(p[present] / q[present])))


def kl_divergences(histogram: np.ndarray, edges: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """`kl_divergence_of_clipping` at each of `edges` at once, from running sums: each slice's mass
    and occupied bins are differences of running totals, and KL(P || Q) = sum p log p - sum p log q
    needs only each slice's total. Equal up to float rounding (under 1e-10), O(edges x levels)."""
    histogram = np.asarray(histogram, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.int64)
    present = histogram > 0
    running = np.concatenate([[0.0], np.cumsum(histogram)])
    total = running[-1]  # the same sum as every running total, so a tail of zeros is exactly 0
    if total == 0:
        return np.full(edges.size, np.inf)
    running_occupied = np.concatenate([[0], np.cumsum(present)])
    running_plogp = np.concatenate([[0.0], np.cumsum(histogram * np.log(np.where(present, histogram, 1.0)))])
    # slice j of edge e holds the bins ceil(j e / L) .. ceil((j + 1) e / L) - 1
    bounds = -(-np.outer(edges, np.arange(levels + 1)) // levels)
    mass = np.diff(running[bounds], axis=1)
    occupied = np.diff(running_occupied[bounds], axis=1)
    kept = running[edges]
    tail = total - kept  # the counts beyond the edge, which P adds to its last bin
    last = histogram[edges - 1] + tail
    plogp = running_plogp[edges - 1] + last * np.log(np.where(last > 0, last, 1.0))
    weight = mass.copy()
    weight[np.arange(edges.size), (edges - 1) * levels // edges] += tail  # into the last bin's slice
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.log(mass / (occupied * kept[:, None]))
        plogq = np.where(weight > 0, weight * log_q, 0.0).sum(axis=1)
        divergences = (plogp - plogq) / total - np.log(total)
    missed = (kept == 0) | ((histogram[edges - 1] == 0) & (tail > 0))  # Q has nothing where P has mass
    divergences[missed | np.isnan(divergences)] = np.inf
    return divergences


def quantization_mse(centers: np.ndarray, counts: np.ndarray, amax: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """Mean squared error of symmetric int8 fake quantization (scale amax / 127, codes clipped at
    127) of values `centers` with weights `counts`, for each of the ranges `amax`."""
    scale = np.asarray(amax, dtype=np.float64)[:, None] / (levels - 1)
    codes = np.minimum(np.rint(centers[None, :] / scale), levels - 1)
    return ((centers[None, :] - codes * scale) ** 2) @ counts / counts.sum()


class HistogramObjectiveCalibrator(Calibrator):
    """A range chosen by an objective over the histogram of |x|; an empty tensor keeps its max."""

    def params(self) -> dict:
        return {}

    def estimate(self, point: QuantPoint, stats: TensorStats) -> ActivationRange:
        histogram, width = coarse_histogram(stats)
        if stats.absmax == 0 or histogram.sum() == 0:
            return ActivationRange(stats.absmax)
        return ActivationRange(min(self.clipping_point(stats, histogram, width), stats.absmax))

    @abstractmethod
    def clipping_point(self, stats: TensorStats, histogram: np.ndarray, width: float) -> float:
        """The chosen amax, given the coarse `histogram` whose bins are `width` wide."""


class EntropyCalibrator(HistogramObjectiveCalibrator):
    """The clipping point whose clipped-and-quantized histogram loses the least information (KL)."""

    name = "entropy"

    def clipping_point(self, stats: TensorStats, histogram: np.ndarray, width: float) -> float:
        edges = np.arange(min(LEVELS, histogram.size), histogram.size + 1)
        divergences = kl_divergences(histogram, edges)
        if not np.isfinite(divergences).any():
            return stats.absmax
        # The edges within rounding of the least divergence, decided by the per-edge definition: the
        # first (smallest) of equal divergences, as a loop over every edge would choose. (Where the
        # divergence is flat, e.g. one occupied bin, that is every edge, at the loop's cost.)
        close = edges[divergences <= divergences[np.isfinite(divergences)].min() + SCREEN_TOLERANCE]
        exact = [kl_divergence_of_clipping(histogram, int(edge)) for edge in close]
        return int(close[int(np.argmin(exact))]) * width


class MseCalibrator(HistogramObjectiveCalibrator):
    """The clipping point with the least mean squared error between |x| and its int8 value."""

    name = "mse"

    def clipping_point(self, stats: TensorStats, histogram: np.ndarray, width: float) -> float:
        counts = np.asarray(stats.histogram, dtype=np.float64)
        present = np.flatnonzero(counts)
        centers = np.minimum((present + 0.5) * (stats.histogram_range / counts.size), stats.absmax)
        candidates = np.unique(np.minimum(np.arange(1, histogram.size + 1) * width, stats.absmax))
        errors = np.concatenate(
            [
                quantization_mse(centers, counts[present], candidates[start : start + MSE_CHUNK])
                for start in range(0, candidates.size, MSE_CHUNK)
            ]
        )
        return float(candidates[int(np.argmin(errors))])
