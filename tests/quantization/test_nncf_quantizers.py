"""NNCF's post-training quantization and its accuracy control as peers, on tiny classifiers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qtool.data import make_batches, tokenize_part
from qtool.errors import QtoolError
from qtool.graph import graph_metadata
from qtool.quantization import nncf_quantizers
from qtool.quantization.nncf_quantizers import NNCF_SCOPE, quantize_with_nncf, quantized_ops
from qtool.runners import OrtRunner

pytest.importorskip("nncf")


def _logits(graph, split, tokenizer) -> np.ndarray:
    batches = make_batches(tokenize_part(tokenizer, split.parts["eval"][:48], 128), 16)
    with OrtRunner(graph) as runner:
        return np.concatenate([runner.infer(b.feeds)["logits"] for b in batches])


def test_nncf_ptq_quantizes_every_projection_and_keeps_qtool_metadata(scaled_model, relabelled, tmp_path):
    split, tokenizer = relabelled
    output = tmp_path / "nncf-ptq.onnx"
    record = quantize_with_nncf("nncf-ptq", scaled_model["graph"], output, split, tokenizer, 24)
    assert record["scope"] == NNCF_SCOPE and record["calibration_pairs"] == 24 and record["seconds"] >= 0
    model = onnx.load(str(output))
    weight_gemms = [
        n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and not n.name.endswith(("MatMul", "MatMul_1"))
    ]
    found = quantized_ops(model)
    assert found["float_weight_gemms"] == record["kept_in_float"] == []
    assert {n.name for n in weight_gemms} <= set(found["quantized"])  # every projection reads Q/DQ
    assert graph_metadata(output)["precision"] == "int8-nncf-ptq"
    assert graph_metadata(output)["labels"] == graph_metadata(scaled_model["graph"])["labels"]
    quantized, fp32 = _logits(output, split, tokenizer), _logits(scaled_model["graph"], split, tokenizer)
    assert np.abs(quantized - fp32).max() > 1e-4  # really quantized
    assert np.corrcoef(quantized.ravel(), fp32.ravel())[0, 1] > 0.5  # still the same function, roughly


def test_accuracy_control_removes_quantizers_until_the_budget_holds(scaled_model, relabelled, tmp_path):
    """FP32 scores 100 % on relabelled pairs and the outlier channel costs accuracy, so a zero budget
    makes NNCF put projections back in float; the record names them and the graph agrees."""
    split, tokenizer = relabelled
    output = tmp_path / "nncf-ac.onnx"
    record = quantize_with_nncf(
        "nncf-accuracy-control", scaled_model["graph"], output, split, tokenizer, 24, max_drop=0.0
    )
    assert record["tuning_fp32_accuracy"] == 1.0 and record["tuning_pairs"] == len(split.parts["tuning"])
    assert record["evaluations"] > 2  # FP32, the quantized graph and candidates without some quantizers
    assert record["kept_in_float"], record
    assert quantized_ops(onnx.load(str(output)))["float_weight_gemms"] == record["kept_in_float"]
    assert record["within_budget"] == (record["tuning_paired"]["upper"] <= 0)
    assert record["tuning_paired"]["upper"] >= record["tuning_drop"] >= 0


def test_nncf_peer_errors_name_the_fix(tiny_onnx, relabelled, tmp_path, monkeypatch):
    split, tokenizer = relabelled
    with pytest.raises(QtoolError, match="unknown NNCF peer"):
        quantize_with_nncf("nncf-other", tiny_onnx, tmp_path / "x.onnx", split, tokenizer, 8)
    monkeypatch.setattr(nncf_quantizers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(QtoolError, match=r"pip install 'qtool\[peers\]'"):
        quantize_with_nncf("nncf-ptq", tiny_onnx, tmp_path / "x.onnx", split, tokenizer, 8)
    assert not (tmp_path / "x.onnx").exists()


def test_nncf_failures_are_one_line_and_leave_the_caller_state_alone(tiny_onnx, relabelled, tmp_path, monkeypatch, caplog):
    import logging

    import nncf
    from nncf.common.logging.logger import nncf_logger

    split, tokenizer = relabelled

    def failing(*args, **kwargs):
        nncf_logger.info("collecting statistics")
        raise RuntimeError("no kernel for this op\nlong NNCF trace")

    monkeypatch.setattr(nncf, "quantize", failing)
    handlers = list(nncf_logger.handlers)
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    with caplog.at_level(logging.DEBUG, logger="qtool"), pytest.raises(QtoolError) as raised:
        quantize_with_nncf("nncf-ptq", tiny_onnx, tmp_path / "x.onnx", split, tokenizer, 8)
    assert str(raised.value).startswith("NNCF failed (RuntimeError: no kernel for this op)") and "\n" not in str(raised.value)
    assert "NNCF: collecting statistics" in caplog.text  # NNCF's records reach qtool's log
    assert nncf_logger.handlers == handlers and (np.random.get_state()[1] == state).all()
    assert not (tmp_path / "x.onnx").exists()
