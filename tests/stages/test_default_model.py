"""End-to-end CLI runs on the real default model (embedded all-MiniLM-L6-v2) and the shared QNLI data."""

from __future__ import annotations

import json

import onnx
import pytest
from typer.testing import CliRunner

from qtool.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_default_model_finetune_export_eval(tmp_path, shared_qnli):
    artifacts = tmp_path / "artifacts"
    common = ["--data", str(shared_qnli), "--artifacts", str(artifacts)]
    tuned = runner.invoke(app, ["finetune", "--max-steps", "2", "--json", *common])
    assert tuned.exit_code == 0, tuned.output
    tuned = json.loads(tuned.stdout)
    assert tuned["data_split"]["sizes"]["eval"] > 1000

    exported = runner.invoke(app, ["export", "--model", tuned["model_dir"], "--json", *common])
    assert exported.exit_code == 0, exported.output
    manifest = json.loads(exported.stdout)
    assert manifest["parity"]["max_abs_logit_diff"] <= 1e-4
    graph = onnx.load(manifest["onnx"])
    layer_norms = {
        n.name.split("/")[3]
        for n in graph.graph.node
        if n.op_type == "LayerNormalization" and n.name.startswith("/bert/encoder/")
    }
    assert layer_norms == {f"layer.{i}" for i in range(6)}  # read from the real config: 6 layers

    evaluated = runner.invoke(app, ["eval", manifest["onnx"], "--limit", "256", "--json", "--data", str(shared_qnli)])
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads(evaluated.stdout)
    assert result["examples"] == 256 and 0.0 <= result["accuracy"] <= 1.0
    assert result["data_split"]["fingerprint"] == tuned["data_split"]["fingerprint"]
