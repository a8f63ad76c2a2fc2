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


def test_each_tools_fastest_contends_even_when_its_one_by_one_timing_ranks_it_past_the_cap():
    from qtool.report.advice import CONTENDERS, contenders

    ours = [{"configuration": f"q{i}", "accuracy": 0.819, "latency": {"p50_ms": 5.0 + 0.1 * i}} for i in range(9)]
    peer = {"configuration": "nncf-ptq@openvino", "accuracy": 0.82, "peer": True, "backend": "openvino",
            "latency": {"p50_ms": 6.5}}  # within 1.5x of the fastest, but ninth or later by its noisy p50
    chosen = [r["configuration"] for r in contenders([ROWS[0], *ours, peer], 1.0)]
    assert len(chosen) == 1 + CONTENDERS and "nncf-ptq@openvino" in chosen and chosen[1] == "q0"
    slow = {**peer, "latency": {"p50_ms": 9.0}}  # beyond the close call: a leader, but not a contender
    assert "nncf-ptq@openvino" not in [r["configuration"] for r in contenders([ROWS[0], *ours, slow], 1.0)]
    untimed = {"configuration": "fp32", "accuracy": 0.82}  # FP32 without a timing: every other row still contends
    assert [r["configuration"] for r in contenders([untimed, *ours[:3]], 1.0)] == ["q0", "q1", "q2"]


def test_each_tool_keeps_its_fastest_configuration_in_budget_on_each_backend():
    from qtool.report.advice import fastest_per_tool

    rows = [
        *ROWS,
        {"configuration": "fp32@openvino", "accuracy": 0.82, "backend": "openvino", "latency": {"p50_ms": 9.0}},
        {"configuration": "a@openvino", "accuracy": 0.819, "backend": "openvino", "latency": {"p50_ms": 4.0}},
        {"configuration": "ort-dynamic", "accuracy": 0.82, "peer": True, "latency": {"p50_ms": 6.0}},
        {"configuration": "ort-static", "accuracy": 0.80, "peer": True, "latency": {"p50_ms": 2.0}},  # out of budget
        {"configuration": "nncf-ptq", "accuracy": 0.82, "peer": True, "latency": {"p50_ms": 12.0}},
        {"configuration": "nncf-ptq@openvino", "accuracy": 0.82, "peer": True, "backend": "openvino",
         "latency": {"p50_ms": 4.5}},
    ]
    picks = [(r["configuration"], r.get("backend", "ort")) for r in fastest_per_tool(rows, 1.0)]
    assert picks == [("a@openvino", "openvino"), ("nncf-ptq@openvino", "openvino"), ("a", "ort"),
                     ("ort-dynamic", "ort"), ("nncf-ptq", "ort")]
    two = [r["configuration"] for r in fastest_per_tool(rows, 1.0, per_backend=2)]
    assert two == ["a@openvino", "nncf-ptq@openvino", "a", "b", "ort-dynamic", "nncf-ptq"]  # qtool's runner-up on ORT


def test_every_tools_fastest_is_compared_before_any_tools_second():
    from qtool.report.advice import COMPARED, fastest_per_tool

    ours = [{"configuration": f"q{i}", "accuracy": 0.819, "latency": {"p50_ms": 4.0 + 0.1 * i}} for i in range(3)]
    peers = [{"configuration": f"peer{i}", "accuracy": 0.82, "peer": True, "latency": {"p50_ms": 5.0 + i}}
             for i in range(COMPARED)]  # one configuration each, all slower than qtool's second
    picks = [r["configuration"] for r in fastest_per_tool([ROWS[0], *ours, *peers], 1.0, per_backend=2)]
    assert picks == ["q0", *[f"peer{i}" for i in range(COMPARED - 1)]]  # q1 would have pushed out a peer's only pick
    fewer = [r["configuration"] for r in fastest_per_tool([ROWS[0], *ours, *peers[:2]], 1.0, per_backend=2)]
    assert fewer == ["q0", "q1", "peer0", "peer1"]  # room left: qtool's second is timed too


def test_the_tool_comparison_takes_each_tools_fastest_in_the_interleaved_run():
    """The one-by-one timing put `a` first; side by side `b` is qtool's fastest, and the verdict uses it."""
    from qtool.report.advice import tool_verdict

    def pick(tool, name, repeats):
        return {"tool": tool, "configuration": name, "p50_ms": {"1": sorted(repeats)[1]}, "repeats_ms": {"1": repeats}}

    picks = [pick("qtool", "a", [7.0, 7.1, 6.9]), pick("qtool", "b", [5.0, 5.1, 4.9]), pick("nncf-ptq", "p", [6.0, 6.1, 5.9])]
    verdict = tool_verdict(picks, "1")
    assert verdict["qtool"] == "b" and verdict["peer"] == "p" and verdict["verdict"] == "ahead"


def _pick(tool, name, repeats):
    return {"tool": tool, "configuration": name, "p50_ms": {"1": sorted(repeats)[1]}, "repeats_ms": {"1": repeats}}


@pytest.mark.parametrize(
    ("ours", "theirs", "verdict"),
    [
        ([5.0, 5.0, 5.0], [6.0, 6.06, 5.94], "ahead"),  # 20 % faster; the ratio moved by 2 %
        ([5.0, 6.0, 7.0], [6.0, 7.2, 8.4], "ahead"),  # both slowed alike over the repeats: the ratio held
        ([5.0, 5.0, 5.0], [5.4, 5.4, 5.4], "level"),  # 8 %: short of the 10 % an advantage needs
        ([5.0, 5.0, 5.0], [4.8, 6.0, 7.2], "level"),  # 20 %, but the ratio moved by 40 %
        ([6.0, 6.0, 6.0], [5.0, 5.0, 5.0], "behind"),
        ([5.2, 5.2, 5.2], [4.7, 5.0, 5.5], "level"),  # the peer 4 % faster, the ratio moved by 16 %
    ],
)
def test_qtool_against_the_fastest_peer(ours, theirs, verdict):
    from qtool.report.advice import tool_verdict

    picks = [_pick("qtool", "q", ours), _pick("ort-dynamic", "p", theirs),
             _pick("nncf-ptq", "n", [t + 3 for t in theirs])]
    said = tool_verdict(picks, "1")
    assert said["verdict"] == verdict and said["peer"] == "p" and said["qtool"] == "q"
    assert said["margin"] == pytest.approx(sorted(theirs)[1] / sorted(ours)[1] - 1)
    ratios = [t / o for o, t in zip(ours, theirs, strict=True)]
    assert said["spread"] == pytest.approx((max(ratios) - min(ratios)) / sorted(ratios)[1])
    assert tool_verdict([_pick("qtool", "q", ours)], "1") is None  # no peer in budget: nothing to compare


def test_a_drift_that_slows_both_alike_is_not_noise_in_the_advice():
    comparison = {"p50_ms": {"fp32": [10.0, 11.0, 12.0], "a": [5.5, 6.05, 6.6], "b": [5.0, 5.5, 6.0]}, "repeats": 3}
    advice = recommend(ROWS, 1.0, comparison)
    assert advice["configuration"] == "b" and advice["margin"] == pytest.approx(0.1)
    assert advice["margin_spread"] == pytest.approx(0.0) and not advice["margin_within_spread"]
