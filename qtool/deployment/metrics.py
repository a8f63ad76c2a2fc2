"""Classification metrics beyond accuracy, each with a 95 % bootstrap interval: macro-F1, F1 of the
second label (for two labels, as scikit-learn's default positive label), and the Matthews correlation
(Gorodkin's multi-class form). Accuracy's interval is the Wilson interval the report computes; a
difference of two accuracies on the same examples is a `PairedDrop`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from qtool.defaults import SEED

RESAMPLES = 1000
CONFIDENCE = 0.95


def confusion(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    flat = np.asarray(labels, dtype=np.int64) * classes + np.asarray(predictions, dtype=np.int64)
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def _f1_per_class(counts: np.ndarray) -> np.ndarray:
    """F1 of each class for confusion matrices `counts[..., true, predicted]`; 0 where undefined."""
    hits = np.diagonal(counts, axis1=-2, axis2=-1).astype(np.float64)
    predicted, actual = counts.sum(axis=-2), counts.sum(axis=-1)
    denominator = predicted + actual
    return np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=denominator > 0)


def macro_f1(counts: np.ndarray) -> np.ndarray:
    return _f1_per_class(counts).mean(axis=-1)


def positive_f1(counts: np.ndarray) -> np.ndarray:
    return _f1_per_class(counts)[..., 1]


def matthews(counts: np.ndarray) -> np.ndarray:
    """(c s - sum_k p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)); 0 where undefined."""
    counts = counts.astype(np.float64)
    s = counts.sum(axis=(-2, -1))
    c = np.diagonal(counts, axis1=-2, axis2=-1).sum(axis=-1)
    predicted, actual = counts.sum(axis=-2), counts.sum(axis=-1)
    numerator = c * s - (predicted * actual).sum(axis=-1)
    denominator = np.sqrt((s * s - (predicted**2).sum(axis=-1)) * (s * s - (actual**2).sum(axis=-1)))
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


METRICS = {"macro_f1": macro_f1, "mcc": matthews}
BINARY_METRICS = {"f1": positive_f1}


def classification_metrics(
    labels: np.ndarray, predictions: np.ndarray, classes: int, resamples: int = RESAMPLES, seed: int = SEED
) -> dict:
    """Each metric of `METRICS` (and, for two classes, `BINARY_METRICS`) and its 95 % percentile
    bootstrap interval over `resamples` resamplings of the examples (fixed seed: same inputs, same
    interval)."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    if labels.size == 0:
        return {}
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, labels.size, size=(resamples, labels.size))
    offsets = np.arange(resamples)[:, None] * classes * classes
    flat = (offsets + labels[drawn] * classes + predictions[drawn]).ravel()
    resampled = np.bincount(flat, minlength=resamples * classes * classes).reshape(resamples, classes, classes)
    counts = confusion(labels, predictions, classes)
    chosen = METRICS | (BINARY_METRICS if classes == 2 else {})
    tail = 100 * (1 - CONFIDENCE) / 2
    result = {}
    for name, metric in chosen.items():
        low, high = np.percentile(metric(resampled), [tail, 100 - tail])
        result[name] = float(metric(counts))
        result[f"{name}_ci95"] = [float(low), float(high)]
    return result


@dataclass(frozen=True)
class PairedDrop:
    """How far a candidate's accuracy is below a reference's on the same examples, from the examples
    whose correctness differs: `losses` (reference right, candidate wrong) and `gains` (the reverse).
    The interval is the normal approximation to the paired difference (its variance from the flips)."""

    losses: int
    gains: int
    total: int

    @property
    def drop(self) -> float:
        """Accuracy points below the reference."""
        return 100 * (self.losses - self.gains) / self.total

    def half_width(self, confidence: float = CONFIDENCE, one_sided: bool = False) -> float:
        """Points either side of `drop` (two-sided) or above it (`one_sided`) at `confidence`."""
        z = NormalDist().inv_cdf(confidence if one_sided else (1 + confidence) / 2)
        flips = self.losses + self.gains
        variance = max(flips - (self.losses - self.gains) ** 2 / self.total, 0.0)
        return 100 * z * math.sqrt(variance) / self.total

    def upper(self, confidence: float) -> float:
        """The one-sided upper bound of the drop at `confidence`."""
        return self.drop + self.half_width(confidence, one_sided=True)

    def to_dict(self, confidence: float = CONFIDENCE) -> dict:
        return {
            "losses": self.losses,
            "gains": self.gains,
            "pairs": self.total,
            "drop": round(self.drop, 4),
            "half_width_95": round(self.half_width(), 4),
            "upper": round(self.upper(confidence), 4),
            "confidence": confidence,
        }


def paired_drop(reference_right: np.ndarray, candidate_right: np.ndarray) -> PairedDrop:
    """The `PairedDrop` of a candidate against a reference from per-example correctness."""
    reference_right, candidate_right = np.asarray(reference_right, bool), np.asarray(candidate_right, bool)
    if reference_right.shape != candidate_right.shape or not reference_right.size:
        raise ValueError("a paired difference needs the same, non-empty examples on both sides")
    losses = int((reference_right & ~candidate_right).sum())
    gains = int((~reference_right & candidate_right).sum())
    return PairedDrop(losses, gains, int(reference_right.size))
