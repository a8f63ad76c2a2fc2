"""The NNCF peers in the study: skipped with a note when the extra is missing, refused when asked for."""

from __future__ import annotations

import pytest

from qtool.errors import QtoolError
from qtool.quantization.nncf_quantizers import NNCF_PEERS
from qtool.report.markdown import peer_lines
from qtool.stages import study
from qtool.stages.study import ReproduceConfig


def test_without_nncf_a_full_study_skips_its_peers_with_a_note(monkeypatch):
    monkeypatch.setattr(study, "nncf_missing", lambda: "NNCF is not installed (pip install 'qtool[peers]')")
    full = ReproduceConfig()
    assert not set(NNCF_PEERS) & set(full.selected()) and "ort-dynamic" in full.selected()
    assert set(full.skipped()) == {*NNCF_PEERS, "extended"}
    lines = peer_lines({"results": [], "skipped": full.skipped()})
    assert any("`nncf-ptq` did not run: NNCF is not installed (pip install 'qtool[peers]')" in line for line in lines)
    with pytest.raises(QtoolError, match=r"nncf-ptq cannot run: .*qtool\[peers\]"):
        ReproduceConfig(configurations=("fp32", "nncf-ptq")).selected()
    assert "nncf-accuracy-control" not in ReproduceConfig(configurations=("extended",)).selected()
    assert ReproduceConfig(configurations=("fp32", "max-all")).skipped() == {}


def test_with_nncf_every_peer_is_in_a_full_study(monkeypatch):
    monkeypatch.setattr(study, "nncf_missing", lambda: None)
    assert set(NNCF_PEERS) <= set(ReproduceConfig(configurations=("all",)).selected())
    assert "nncf-ptq" in ReproduceConfig().selected() and set(ReproduceConfig().skipped()) == {"extended"}
    assert "nncf-accuracy-control" in ReproduceConfig(configurations=("extended",)).selected()


def test_the_default_study_leaves_the_extended_rows_to_c_all(monkeypatch):
    """A default run: the default set and the peers; `-c all` adds the extended rows (sweeps around a
    default row), `-c extended` runs only them, and a default report says how to run them."""
    monkeypatch.setattr(study, "nncf_missing", lambda: None)
    default, everything = ReproduceConfig().selected(), ReproduceConfig(configurations=("all",)).selected()
    extended = ReproduceConfig(configurations=("extended",)).selected()
    assert set(extended) == set(study.extended_rows()) and not set(extended) & set(default)
    assert set(everything) == set(default) | set(extended)
    assert {"peg-k4-all", "peg-auto-all", "peg-k4-all-wfolded", "max-all-mp-auto0.5"} <= set(default)
    assert {"peg-k1-all", "peg-k8-all", "peg-k2-all-wfolded", "peg-k4-all-smooth0.5"} <= set(extended)
    assert ReproduceConfig(configurations=("all", "max-all")).skipped() == {}
    lines = peer_lines({"results": [], "skipped": ReproduceConfig().skipped()})
    assert any("`extended` did not run: its 15 rows (percentile-99.999-all," in line and "`-c all`" in line
               and "nncf-accuracy-control" in line for line in lines)


def test_report_names_an_nncf_peer_as_nncf_and_shows_its_accuracy_control():
    from qtool.report.markdown import deploy_paragraph, search_lines

    peer = {
        "configuration": "nncf-accuracy-control", "peer": True, "accuracy": 0.8,
        "peer_record": {
            "tuning_pairs": 1000, "tuning_accuracy": 0.95, "tuning_fp32_accuracy": 0.955, "evaluations": 7,
            "seconds": 80.0, "kept_in_float": ["/layer.0/output/dense/MatMul"],
            "tuning_paired": {"drop": 0.5, "upper": 1.2, "losses": 9, "gains": 4},
        },
        "vs_fp32": {"drop": 0.2, "half_width_95": 0.61},
    }
    advice = {
        "configuration": "nncf-accuracy-control", "max_drop_points": 1.0, "candidates": 2, "accuracy": 0.8,
        "drop_points": 0.2, "p50_ms": 5.0, "speedup_vs_fp32": 1.8, "repeats": 3,
    }
    result = {"results": [{"configuration": "fp32", "accuracy": 0.802}, peer], "recommendation": advice}
    paragraph = " ".join(deploy_paragraph(result))
    assert "OpenVINO" in paragraph and "ONNX Runtime's own quantizer" not in paragraph
    table = "\n".join(search_lines(result))  # no qtool search row: NNCF's accuracy control still shows
    assert "| nncf-accuracy-control | 1 GEMMs | 80.00 | -0.20 ± 0.61 | 1000 | 95.00 (95.50) | 0.50 (1.20) | 7 | 80 |" in table


def test_report_says_when_the_search_budget_does_not_hold_on_the_eval_part():
    from qtool.report.markdown import search_lines

    def study(drop: float, half_width: float) -> str:
        search = {
            "tuning": {"pairs": 787, "fp32_accuracy": 0.86, "sources": {"tuning": 787}},
            "tuning_accuracy": 0.857, "evaluations": 18, "reused_evaluations": 184, "seconds": 199.5,
            "tuning_paired": {"losses": 6, "gains": 4, "drop": 0.25, "upper": 0.45, "confidence": 0.9},
            "curve": [{"float_points": 0, "accuracy": 0.46}], "max_drop": 0.5, "within_budget": True,
        }
        paired = {"drop": drop, "half_width_95": half_width}
        row = {"configuration": "max-all-mp-auto0.5", "accuracy": 0.8655 - drop / 100, "kept_in_float": ["a"],
               "search": search, "vs_fp32": paired, "deployed_vs_fp32": paired}
        return "\n".join(search_lines({"results": [{"configuration": "fp32", "accuracy": 0.8655}, row]}))

    clearly = study(2.35, 0.7)
    assert "its recipe -2.35 ± 0.70 points vs FP32 and its deployed graph -2.35 ± 0.70" in clearly
    assert "beyond the 0.5-point budget by more than its paired interval" in clearly
    assert "at 90 % one-sided confidence on 787 tuning pairs (the data's tuning part: never fine-tuning" in clearly
    assert "| 0.25 (0.45) |" in clearly
    assert "beyond the 0.5-point budget (within its interval)" in study(0.8, 0.5)
    assert "within the 0.5-point budget." in study(0.3, 0.5)


def test_without_openvino_the_study_says_why_its_rows_are_missing(monkeypatch):
    from qtool.deployment.backends import Backend
    from qtool.stages.backend_rows import backend_rows

    def missing(self):
        raise QtoolError("OpenVINO is not installed; pip install 'qtool[peers]' (or pip install openvino)")

    monkeypatch.setattr(Backend, "require_library", missing)
    rows, skipped = backend_rows([{"configuration": "fp32"}], None, ReproduceConfig())
    assert rows == [] and skipped == {"@openvino rows": "OpenVINO is not installed; pip install 'qtool[peers]' (or pip install openvino)"}
    lines = peer_lines({"results": [], "skipped": skipped})
    assert any("`@openvino rows` did not run: OpenVINO is not installed" in line for line in lines)
