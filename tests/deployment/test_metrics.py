"""Macro-F1, F1 and Matthews correlation against hand-computed and loop-by-loop NumPy references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qtool.deployment.metrics import (
    PairedDrop,
    classification_metrics,
    confusion,
    macro_f1,
    matthews,
    paired_drop,
    positive_f1,
)


def _loop_mcc(labels, predictions, classes) -> float:
    """Matthews correlation as the covariance of one-hot indicators over their standard deviations."""
    x = np.eye(classes)[labels]
    y = np.eye(classes)[predictions]
    cov = lambda a, b: sum(np.mean((a[:, k] - a[:, k].mean()) * (b[:, k] - b[:, k].mean())) for k in range(classes))  # noqa: E731
    denominator = math.sqrt(cov(x, x) * cov(y, y))
    return cov(x, y) / denominator if denominator else 0.0


def test_binary_metrics_match_the_hand_computed_values():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    predictions = np.array([1, 0, 1, 0, 1, 0, 1, 0])  # TP 3, FN 1, FP 1, TN 3
    counts = confusion(labels, predictions, 2)
    assert counts.tolist() == [[3, 1], [1, 3]]
    assert positive_f1(counts) == pytest.approx(0.75) and macro_f1(counts) == pytest.approx(0.75)
    assert matthews(counts) == pytest.approx((3 * 3 - 1 * 1) / math.sqrt(4 * 4 * 4 * 4))


@pytest.mark.parametrize("seed", range(5))
def test_multiclass_mcc_and_macro_f1_match_loop_references(seed):
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 6))
    labels = rng.integers(0, classes, 200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, classes, 200))
    counts = confusion(labels, predictions, classes)
    assert matthews(counts) == pytest.approx(_loop_mcc(labels, predictions, classes), abs=1e-12)
    per_class = []
    for k in range(classes):
        tp = np.sum((labels == k) & (predictions == k))
        fp, fn = np.sum((labels != k) & (predictions == k)), np.sum((labels == k) & (predictions != k))
        per_class.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0)
    assert macro_f1(counts) == pytest.approx(np.mean(per_class), abs=1e-12)


def test_intervals_are_deterministic_and_hold_the_estimate():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    predictions = np.where(rng.random(500) < 0.8, labels, 1 - labels)
    first, again = classification_metrics(labels, predictions, 2), classification_metrics(labels, predictions, 2)
    assert first == again and set(first) == {"macro_f1", "macro_f1_ci95", "mcc", "mcc_ci95", "f1", "f1_ci95"}
    for name in ("macro_f1", "mcc", "f1"):
        low, high = first[f"{name}_ci95"]
        assert low <= first[name] <= high and high - low < 0.2
    perfect = classification_metrics(labels, labels, 2)
    assert perfect["mcc"] == 1.0 and perfect["mcc_ci95"] == [1.0, 1.0]
    assert "f1" not in classification_metrics(labels % 3, labels % 3, 3)  # F1 of one label only for two


@pytest.mark.parametrize("seed", range(4))
def test_paired_drop_matches_the_paired_difference_of_per_example_scores(seed):
    """Drop and half-width against a NumPy reference: the mean and standard error of the per-example
    difference (reference right - candidate right), normal quantiles."""
    rng = np.random.default_rng(seed)
    reference = rng.random(800) < 0.85
    candidate = np.where(rng.random(800) < 0.05, ~reference, reference)
    paired = paired_drop(reference, candidate)
    difference = reference.astype(float) - candidate.astype(float)
    standard_error = difference.std() / math.sqrt(difference.size)  # population form: sum of squares / n
    assert paired.drop == pytest.approx(100 * difference.mean())
    assert paired.half_width() == pytest.approx(100 * 1.959963984540054 * standard_error)
    assert paired.upper(0.9) == pytest.approx(100 * (difference.mean() + 1.2815515655446004 * standard_error))
    assert paired.losses + paired.gains == int((reference != candidate).sum())


def test_many_balanced_flips_are_refused_where_few_flips_at_the_same_accuracy_pass():
    """The search's rule: both candidates score exactly FP32's accuracy; only the one with few flips has
    a one-sided bound within 0.5 points."""
    few, many = PairedDrop(losses=2, gains=2, total=1000), PairedDrop(losses=20, gains=20, total=1000)
    assert few.drop == many.drop == 0.0
    assert few.upper(0.9) <= 0.5 < many.upper(0.9)
    assert PairedDrop(0, 0, 1000).upper(0.99) == 0.0  # no flips: no doubt
    with pytest.raises(ValueError):
        paired_drop(np.array([True]), np.array([True, False]))
