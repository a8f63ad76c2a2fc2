"""The report says where qtool stands against each peer, and old results still read correctly."""

from __future__ import annotations

from qtool.graph import is_recipe_graph
from qtool.report.advice import COMPARED, fastest_per_tool
from qtool.report.comparison import tool_comparison_lines
from qtool.report.markdown import deploy_paragraph


def _row(name, accuracy, p50, **extra):
    return {"configuration": name, "accuracy": accuracy, "latency": {"p50_ms": p50}, **extra}


def test_a_qtool_row_whose_deployed_graph_misses_the_budget_is_not_a_pick():
    rows = [
        _row("fp32", 0.82, 10.0),
        _row("fast", 0.818, 4.0, deployed_accuracy=0.80),  # the recipe is in budget, its deployed graph is not
        _row("slow", 0.815, 5.0, deployed_accuracy=0.816),
        *[_row(f"peer{i}", 0.82, 6.0 + i, peer=True) for i in range(12)],
    ]
    picks = [r["configuration"] for r in fastest_per_tool(rows, 1.0)]
    assert picks[0] == "slow" and "fast" not in picks and len(picks) == COMPARED  # the fastest ones only


def _pick(tool, backend, name, p50):
    return {"tool": tool, "backend": backend, "configuration": name, "deployed_accuracy": 0.82,
            "deployed_vs_fp32": None, "p50_ms": {"1": p50}, "repeats_ms": {"1": [p50] * 3}, "spread": {"1": 0.0}}


def test_verdicts_per_backend_show_only_beside_another_backend():
    from qtool.report.advice import tool_verdict

    picks = [_pick("fp32", "ort", "fp32", 10.0), _pick("qtool", "ort", "q", 5.0), _pick("ort-dynamic", "ort", "p", 6.0)]
    verdicts = {"1": tool_verdict(picks[1:], "1")}
    comparison = {"batches": ["1"], "picks": picks, "verdicts": verdicts, "verdicts_by_backend": {"ort": verdicts}}
    text = "\n".join(tool_comparison_lines({"tool_comparison": comparison}))
    assert "Batch 1: qtool's `q` is 20.0 % faster than the fastest peer `p`" in text and "**ahead**" in text
    assert "alone" not in text  # one backend: its verdict is the overall one
    comparison["verdicts_by_backend"] = {"ort": verdicts, "openvino": {"1": None}}
    text = "\n".join(tool_comparison_lines({"tool_comparison": comparison}))
    assert "On ort alone, batch 1: qtool's `q`" in text and "On openvino alone, batch 1: no peer" in text
    failed = "\n".join(tool_comparison_lines({"tool_comparison": {"skipped": "MemoryError: "}}))
    assert "did not complete (MemoryError: )" in failed


def test_advice_written_before_the_ratio_spread_keeps_its_own_words():
    advice = {
        "configuration": "a", "max_drop_points": 1.0, "candidates": 2, "accuracy": 0.81, "drop_points": 0.2,
        "p50_ms": 5.0, "speedup_vs_fp32": 2.0, "repeats": 3, "spread": 0.2, "runner_up": "b",
        "runner_up_p50_ms": 5.2, "margin": 0.04, "margin_within_spread": True,
    }
    result = {"results": [_row("fp32", 0.812, 10.0), _row("a", 0.81, 5.0)], "recommendation": advice}
    assert "spread of the winner's repeats 20.0 %" in " ".join(deploy_paragraph(result))
    advice["margin_spread"] = 0.01
    assert "the ratio of the two moved by 1.0 % over the repeats" in " ".join(deploy_paragraph(result))


def test_runtime_graphs_of_either_metadata_key_are_not_recipes():
    assert is_recipe_graph({"precision": "int8-qdq"})
    assert not is_recipe_graph({"precision": "int8-qdq", "runtime": "onnxruntime-cpu"})
    assert not is_recipe_graph({"precision": "int8-qdq", "runtime_form": "tensorrt"})  # written before the rename
