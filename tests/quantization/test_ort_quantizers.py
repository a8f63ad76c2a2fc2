"""ONNX Runtime's quantizers and transformer optimizer as peers, on a tiny classifier."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from qtool.data import DataConfig, load_qnli, make_batches, tokenize_part
from qtool.errors import QtoolError
from qtool.graph import graph_metadata
from qtool.models.resolve import load_tokenizer
from qtool.quantization.ort_quantizers import PEER_SCOPE, attention_shape, quantize_with_ort
from qtool.runners import OrtRunner


@pytest.fixture(scope="module")
def peer_inputs(tiny_onnx, session_data):
    split = load_qnli(DataConfig(source=str(session_data)))
    tokenizer = load_tokenizer(tiny_onnx.parent / "tokenizer")
    batches = make_batches(tokenize_part(tokenizer, split.parts["eval"][:24], 128), 8)
    return split, tokenizer, batches


def _logits(graph, batches) -> np.ndarray:
    with OrtRunner(graph) as runner:
        return np.concatenate([runner.infer(b.feeds)["logits"] for b in batches])


def test_transformer_optimizer_peers_fuse_and_keep_the_classifier(tiny_onnx, peer_inputs, tmp_path):
    split, tokenizer, batches = peer_inputs
    fp32 = _logits(tiny_onnx, batches)
    optimized = tmp_path / "ort-optimizer-fp32.onnx"
    used = quantize_with_ort("ort-optimizer-fp32", tiny_onnx, optimized, split, tokenizer, 16)
    assert used.pop("seconds") >= 0
    assert used == {"method": "ort-optimizer-fp32", "calibration_pairs": 0, "scope": "none"}
    ops = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    assert ops["SkipLayerNormalization"] > 0 and ops["LayerNormalization"] < 3, ops  # fused, as deployed
    assert attention_shape(onnx.load(str(tiny_onnx))) == (4, 32) and ops["Attention"] == 2, ops  # heads passed
    np.testing.assert_allclose(_logits(optimized, batches), fp32, atol=1e-4)
    dynamic = tmp_path / "ort-optimizer-dynamic.onnx"
    used = quantize_with_ort("ort-optimizer-dynamic", tiny_onnx, dynamic, split, tokenizer, 16)
    assert used["scope"] == PEER_SCOPE and graph_metadata(dynamic)["precision"] == "int8-ort-optimizer-dynamic"
    ops = Counter(n.op_type for n in onnx.load(str(dynamic)).graph.node)
    assert ops["SkipLayerNormalization"] > 0 and ops["DynamicQuantizeLinear"] + ops["DynamicQuantizeMatMul"] > 0, ops
    assert np.abs(_logits(dynamic, batches) - fp32).max() > 1e-5  # really quantized
    with pytest.raises(QtoolError, match="unknown peer"):
        quantize_with_ort("ort-something", tiny_onnx, tmp_path / "x.onnx", split, tokenizer, 16)
    assert not (tmp_path / "x.onnx").exists()
