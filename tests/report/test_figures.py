"""Every study figure draws every row it is about (counted from the figure's data, not by eye)."""

from __future__ import annotations

import numpy as np
import pytest

from qtool.report import figures


def _row(configuration, method, accuracy, **params):
    return {
        "configuration": configuration, "method": method, "scope": "all", "params": params, "accuracy": accuracy,
        "accuracy_ci95": [accuracy - 0.01, accuracy + 0.01], "kept_in_float": [], "smoothing": None,
    }


RESULT = {
    "model": "m",
    "results": [
        _row("fp32", None, 0.82),
        *[_row(f"percentile-{p:g}-all", "percentile", 0.6 + i / 20, p=p) for i, p in enumerate((99, 99.9, 99.99, 99.999))],
        *[_row(f"peg-k{k}-equal-all", "peg", 0.5 + k / 20, groups=k, permute=True, grouping="equal") for k in (2, 3, 4)],
        *[_row(f"peg-k{k}-all", "peg", 0.8, groups=k, permute=True, grouping="optimal") for k in (1, 2, 3, 4)],
        *[
            _row(f"peg-k{k}-all-wfolded", "peg", 0.79, groups=k, permute=True, grouping="optimal") | {"weights": "folded"}
            for k in (2, 4)
        ],
    ],
}


@pytest.fixture
def drawn(monkeypatch):
    captured = []
    monkeypatch.setattr(figures, "save_figure", lambda figure, path: captured.append(figure) or path)
    return captured


def _curves(figure) -> dict[str, np.ndarray]:
    """Each error-bar curve's label and the x of every point it draws."""
    return {
        container.get_label(): np.asarray(container.lines[0].get_xdata(), dtype=float)
        for container in figure.axes[0].containers
    }


def test_percentile_figure_draws_every_percentile_on_its_axis(drawn, tmp_path):
    figures.accuracy_by_parameter(RESULT, "percentile", "p", "percentile p", tmp_path / "p.png")
    (xs,) = _curves(drawn[0]).values()
    np.testing.assert_allclose(np.sort(xs), [0.001, 0.01, 0.1, 1.0])
    axis = drawn[0].axes[0]
    low, high = axis.get_xlim()
    assert low < xs.min() and xs.max() < high and axis.get_xscale() == "log"


def test_peg_figure_draws_both_groupings_and_folded_weights_with_one_group_in_each(drawn, tmp_path):
    figures.accuracy_by_parameter(RESULT, "peg", "groups", "PEG groups K", tmp_path / "g.png")
    curves = _curves(drawn[0])
    assert {name: sorted(xs) for name, xs in curves.items()} == {
        "equal groups": [1, 2, 3, 4],
        "optimal groups": [1, 2, 3, 4],
        "optimal groups, folded weights": [1, 2, 4],
    }


def test_latency_figure_draws_every_configuration_and_labels_the_front(drawn, tmp_path):
    rows = [
        {"configuration": name, "accuracy": accuracy, "latency": {"p50_ms": p50, "batch": 1, "sequence_length": 128}}
        for name, accuracy, p50 in (
            ("fp32", 0.82, 10.0), ("fast-bad", 0.50, 3.0), ("mid", 0.81, 5.0), ("slow-worse", 0.80, 8.0),
            ("best", 0.821, 6.0),
        )
    ]
    # fp32 and slow-worse are beaten by "best" on both counts
    assert [r["configuration"] for r in figures.pareto_front(rows)] == ["fast-bad", "mid", "best"]
    figures.accuracy_against_latency({"model": "m", "results": rows}, tmp_path / "l.png")
    axis = drawn[0].axes[0]
    drawn_points = sum(len(collection.get_offsets()) for collection in axis.collections)
    assert drawn_points == len(rows)
    assert sorted(text.get_text() for text in axis.texts) == sorted(["fast-bad", "mid", "best"])
