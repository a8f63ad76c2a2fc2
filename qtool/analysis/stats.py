"""Streaming activation statistics with memory that does not depend on the number of batches.

Per tensor: count, min, max and the central moments up to the fourth, merged batch by batch in
float64 with the pairwise update of Pébay (2008), so mean, variance and kurtosis are exact to
float64 rounding. Per channel (last axis): min, max and energy (sum of squares). A histogram of
|x| on a power-of-two range whose bins merge pairwise when the range has to double, so it stays
exact (every value keeps its bin boundaries) while the range grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DEFAULT_BINS = 1 << 14


@dataclass
class TensorStats:
    bins: int = DEFAULT_BINS
    count: int = 0
    min: float = math.inf
    max: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0
    channel_min: np.ndarray | None = None
    channel_max: np.ndarray | None = None
    channel_energy: np.ndarray | None = None
    histogram: np.ndarray = field(default=None)  # counts of |x| over [0, histogram_range]
    histogram_range: float = 0.0

    def __post_init__(self) -> None:
        if self.bins < 2 or self.bins & (self.bins - 1):
            raise ValueError("histogram bins must be a power of two")
        if self.histogram is None:
            self.histogram = np.zeros(self.bins, dtype=np.int64)

    # -- accumulation -------------------------------------------------------------------------
    def update(self, values: np.ndarray, channel_rows: np.ndarray | None = None) -> None:
        """Add a batch. `values` is any array of valid elements; `channel_rows` ([N, C]), when given,
        holds the same elements arranged by channel for the per-channel statistics."""
        flat = np.asarray(values).ravel()
        if flat.size == 0:
            return
        self._merge_moments(flat)
        self._update_histogram(np.abs(flat))
        if channel_rows is not None:
            self._update_channels(channel_rows)

    def _merge_moments(self, flat: np.ndarray) -> None:
        """Central moments of the batch in float64 (whatever the input dtype), merged into the running ones."""
        n_b = flat.size
        mean_b = float(flat.mean(dtype=np.float64))
        deviation = np.subtract(flat, mean_b, dtype=np.float64)
        m2_b = float(np.dot(deviation, deviation))
        squared = deviation * deviation
        m3_b = float(np.dot(squared, deviation))
        m4_b = float(np.dot(squared, squared))
        self.min = min(self.min, float(flat.min()))
        self.max = max(self.max, float(flat.max()))
        n_a = self.count
        if n_a == 0:
            self.count, self.mean, self.m2, self.m3, self.m4 = n_b, mean_b, m2_b, m3_b, m4_b
            return
        n = n_a + n_b
        delta = mean_b - self.mean
        m2_a, m3_a = self.m2, self.m3
        self.m4 = (
            self.m4
            + m4_b
            + delta**4 * n_a * n_b * (n_a * n_a - n_a * n_b + n_b * n_b) / n**3
            + 6.0 * delta**2 * (n_a * n_a * m2_b + n_b * n_b * m2_a) / n**2
            + 4.0 * delta * (n_a * m3_b - n_b * m3_a) / n
        )
        self.m3 = m3_a + m3_b + delta**3 * n_a * n_b * (n_a - n_b) / n**2 + 3.0 * delta * (n_a * m2_b - n_b * m2_a) / n
        self.m2 = m2_a + m2_b + delta**2 * n_a * n_b / n
        self.mean += delta * n_b / n
        self.count = n

    def _update_histogram(self, magnitudes: np.ndarray) -> None:
        peak = float(magnitudes.max())
        if self.histogram_range == 0.0:
            self.histogram_range = 2.0 ** math.ceil(math.log2(peak)) if peak > 0 else 2.0**-20
        while peak > self.histogram_range:
            merged = self.histogram.reshape(-1, 2).sum(axis=1)
            self.histogram = np.concatenate([merged, np.zeros(self.bins // 2, dtype=np.int64)])
            self.histogram_range *= 2.0
        scaled = magnitudes * (self.bins / self.histogram_range)
        np.minimum(scaled, self.bins - 1, out=scaled)
        index = scaled.astype(np.intp)
        self.histogram += np.bincount(index, minlength=self.bins)

    def _update_channels(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.shape[0] == 0:
            return
        low, high = rows.min(axis=0).astype(np.float64), rows.max(axis=0).astype(np.float64)
        wide = rows.astype(np.float64, copy=False)
        energy = np.einsum("ij,ij->j", wide, wide)
        if self.channel_min is None:
            self.channel_min, self.channel_max, self.channel_energy = low, high, energy
            return
        if low.shape != self.channel_min.shape:
            raise ValueError(f"channel count changed from {self.channel_min.shape[0]} to {low.shape[0]}")
        np.minimum(self.channel_min, low, out=self.channel_min)
        np.maximum(self.channel_max, high, out=self.channel_max)
        self.channel_energy += energy

    # -- derived statistics -------------------------------------------------------------------
    @property
    def variance(self) -> float:
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    @property
    def kurtosis(self) -> float:
        """Pearson kurtosis, E[(x - mean)^4] / Var(x)^2: 3 for a normal distribution."""
        return self.count * self.m4 / (self.m2 * self.m2) if self.m2 > 0 else math.nan

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))

    @property
    def channel_absmax(self) -> np.ndarray | None:
        if self.channel_min is None:
            return None
        return np.maximum(np.abs(self.channel_min), np.abs(self.channel_max))

    def percentile(self, p: float) -> float:
        """The p-th percentile of |x|, linearly interpolated inside the histogram bin that holds it."""
        if not 0 < p <= 100:
            raise ValueError("percentile must be in (0, 100]")
        if p == 100:
            return self.absmax
        target = p / 100.0 * self.count
        cumulative = np.cumsum(self.histogram)
        index = int(np.searchsorted(cumulative, target, side="left"))
        index = min(index, self.bins - 1)
        before = cumulative[index - 1] if index > 0 else 0
        inside = self.histogram[index]
        width = self.histogram_range / self.bins
        fraction = (target - before) / inside if inside else 1.0
        return min((index + fraction) * width, self.absmax)

    def top_channel_energy_share(self, fraction: float = 0.01) -> float:
        """Share of the energy (sum of squares) held by the top `fraction` of channels (at least one)."""
        if self.channel_energy is None:
            return math.nan
        top = max(1, math.ceil(fraction * self.channel_energy.size))
        total = float(self.channel_energy.sum())
        return float(np.sort(self.channel_energy)[-top:].sum() / total) if total > 0 else math.nan

    # -- persistence --------------------------------------------------------------------------
    SCALARS = ("count", "min", "max", "mean", "m2", "m3", "m4", "histogram_range")
    ARRAYS = ("channel_min", "channel_max", "channel_energy", "histogram")

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        arrays = {f"{prefix}/scalars": np.array([float(getattr(self, s)) for s in self.SCALARS], dtype=np.float64)}
        for name in self.ARRAYS:
            value = getattr(self, name)
            if value is not None:
                arrays[f"{prefix}/{name}"] = value
        return arrays

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> TensorStats:
        histogram = np.asarray(arrays[f"{prefix}/histogram"])
        stats = cls(bins=histogram.size, histogram=histogram.astype(np.int64))
        for name, value in zip(cls.SCALARS, arrays[f"{prefix}/scalars"], strict=True):
            setattr(stats, name, int(value) if name == "count" else float(value))
        present = [name for name in cls.ARRAYS[:3] if f"{prefix}/{name}" in arrays]
        for name in present:
            setattr(stats, name, np.asarray(arrays[f"{prefix}/{name}"], dtype=np.float64))
        shapes = {getattr(stats, name).shape for name in present}
        if present and (len(present) != 3 or len(shapes) != 1 or len(next(iter(shapes))) != 1):
            raise ValueError(f"the per-channel arrays of {prefix} are incomplete or differ in length")
        return stats

    def nbytes(self) -> int:
        return sum(
            a.nbytes for a in (self.channel_min, self.channel_max, self.channel_energy, self.histogram) if a is not None
        )
