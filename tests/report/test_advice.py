"""What to deploy comes from interleaved repeats and names the runner-up and the margin."""

from __future__ import annotations

import pytest

from qtool.report.advice import recommend, within_budget

ROWS = [
    {"configuration": "fp32", "accuracy": 0.82, "latency": {"p50_ms": 10.0}},
    {"configuration": "a", "accuracy": 0.818, "latency": {"p50_ms": 5.0}},
    {"configuration": "b", "accuracy": 0.815, "latency": {"p50_ms": 5.5}},
    {"configuration": "c", "accuracy": 0.70, "latency": {"p50_ms": 1.0}},  # fastest, but out of budget
]


def test_only_rows_within_the_budget_compete():
    assert [r["configuration"] for r in within_budget(ROWS, 1.0)] == ["fp32", "a", "b"]


def test_the_interleaved_medians_decide_not_the_sequential_timings():
    comparison = {"p50_ms": {"fp32": [10.0, 10.2, 9.8], "a": [5.6, 5.7, 5.5], "b": [5.0, 5.1, 4.9]}, "repeats": 3}
    advice = recommend(ROWS, 1.0, comparison)
    assert advice["configuration"] == "b" and advice["runner_up"] == "a"  # sequential timings said "a"
    assert advice["margin"] == pytest.approx(5.6 / 5.0 - 1) and not advice["margin_within_spread"]
    assert advice["speedup_vs_fp32"] == pytest.approx(10.0 / 5.0) and advice["candidates"] == 3


def test_a_margin_inside_the_spread_is_called_level():
    comparison = {"p50_ms": {"fp32": [10.0, 10.0, 10.0], "a": [5.0, 5.4, 4.8], "b": [5.1, 5.0, 5.2]}, "repeats": 3}
    advice = recommend(ROWS, 1.0, comparison)
    assert advice["margin_within_spread"]


def test_only_close_calls_are_loaded_side_by_side():
    from qtool.report.advice import CONTENDERS, contenders

    rows = [ROWS[0]] + [
        {"configuration": f"q{i}", "accuracy": 0.819, "latency": {"p50_ms": 5.0 + i}} for i in range(10)
    ]
    chosen = [r["configuration"] for r in contenders(rows, 1.0)]
    assert chosen[0] == "fp32" and chosen[1:] == ["q0", "q1", "q2"]  # 5, 6, 7 ms are within 1.5x of 5 ms
    many = [ROWS[0]] + [{"configuration": f"q{i}", "accuracy": 0.819, "latency": {"p50_ms": 5.0}} for i in range(9)]
    assert len(contenders(many, 1.0)) == 1 + CONTENDERS
    assert [r["configuration"] for r in contenders([ROWS[0], ROWS[3]], 1.0)] == ["fp32"]
