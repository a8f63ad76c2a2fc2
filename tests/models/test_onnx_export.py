from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from qtool.data import DataConfig, load_qnli
from qtool.errors import QtoolError
from qtool.fileio import manifest_path, sha256_file
from qtool.graph import read_qtool_metadata
from qtool.models import resolve_model
from qtool.models.onnx_export import ExportConfig, export_onnx
from qtool.runners import OrtRunner
from qtool.stages.model import export_stage
from tests.helpers.models import build_bert_classifier


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _check_structure(graph_path, layers: int):
    model = onnx.load(str(graph_path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in model.graph.output] == ["logits"]
    for graph_input in model.graph.input:
        assert _dims(graph_input) == ["batch", "sequence"]
    assert _dims(model.graph.output[0])[0] == "batch"
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    names = [n.name for n in model.graph.node]
    for layer in range(layers):
        assert any(n.startswith(f"/bert/encoder/layer.{layer}/output/LayerNorm/") for n in names)
    assert not any(f"layer.{layers}/" in n for n in names)
    return model


def test_tiny_export_structure_parity_and_manifest(tiny_classifier, tiny_data, tmp_path):
    split = load_qnli(DataConfig(source=str(tiny_data)))
    target = tmp_path / "out" / "fp32.onnx"
    exported = export_stage(str(tiny_classifier), split, tmp_path / "artifacts", ExportConfig(), output=target)
    manifest = exported.manifest
    model = _check_structure(target, layers=2)
    metadata = read_qtool_metadata(model)
    assert json.loads(metadata["labels"]) == ["entailment", "not_entailment"]
    assert (target.parent / metadata["tokenizer"] / "tokenizer_config.json").is_file()
    assert manifest["parity"]["max_abs_logit_diff"] <= 1e-4
    shapes = manifest["parity"]["batch_shapes"]
    assert len({s[1] for s in shapes}) >= 3 and [1] in [s[:1] for s in shapes]
    recorded = json.loads(manifest_path(target).read_text())
    assert recorded["artifact_sha256"] == manifest["onnx_sha256"] == sha256_file(target)
    assert recorded["result"]["parity"]["data_split"]["fingerprint"] == split.fingerprint
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
    written = target.stat().st_mtime_ns
    again = export_stage(str(tiny_classifier), split, tmp_path / "artifacts", ExportConfig(), output=target)
    assert again.manifest == manifest and target.stat().st_mtime_ns == written  # reused, not exported again
    target.write_bytes(target.read_bytes() + b"\0")  # a graph changed behind the record is exported again
    export_stage(str(tiny_classifier), split, tmp_path / "artifacts", ExportConfig(), output=target)
    assert sha256_file(target) == json.loads(manifest_path(target).read_text())["artifact_sha256"]
    _check_structure(target, layers=2)


def test_export_runs_at_any_batch_and_length(tiny_classifier, tiny_data, tmp_path):
    split = load_qnli(DataConfig(source=str(tiny_data)))
    target = tmp_path / "fp32.onnx"
    export_onnx(resolve_model(str(tiny_classifier)), split, target)
    rng = np.random.default_rng(0)
    with OrtRunner(target) as runner:
        for batch, length in [(1, 5), (3, 17), (7, 128)]:
            feeds = {
                "input_ids": rng.integers(1000, 2000, (batch, length)),
                "attention_mask": np.ones((batch, length), dtype=np.int64),
                "token_type_ids": np.zeros((batch, length), dtype=np.int64),
            }
            assert runner.infer(feeds)["logits"].shape == (batch, 2)


def test_bert_base_shape_exports_with_parity(tmp_path, tiny_data, embedded_tokenizer):
    folder = build_bert_classifier(tmp_path / "bert-base-shaped", embedded_tokenizer, layers=12, hidden=768, heads=12)
    split = load_qnli(DataConfig(source=str(tiny_data)))
    target = tmp_path / "base" / "fp32.onnx"
    manifest = export_onnx(resolve_model(str(folder)), split, target)
    _check_structure(target, layers=12)
    assert manifest["parity"]["max_abs_logit_diff"] <= 1e-4


def test_headless_model_is_refused_with_the_fix(tiny_encoder, tiny_data, tmp_path):
    split = load_qnli(DataConfig(source=str(tiny_data)))
    target = tmp_path / "fp32.onnx"
    with pytest.raises(QtoolError, match="qtool finetune"):
        export_onnx(resolve_model(str(tiny_encoder)), split, target)
    assert not target.exists()


def test_opset_below_17_is_refused(tiny_classifier, tiny_data, tmp_path):
    split = load_qnli(DataConfig(source=str(tiny_data)))
    with pytest.raises(QtoolError, match="opset"):
        export_onnx(resolve_model(str(tiny_classifier)), split, tmp_path / "x.onnx", ExportConfig(opset=13))
