"""BERT, RoBERTa, DistilBERT, MPNet and ELECTRA through export, quantization points, calibration,
the QDQ graph and its ONNX Runtime CPU graph, as tiny random models built here."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from qtool.cli import app
from qtool.data import DataConfig, load_qnli, make_batches, tokenize_part
from qtool.exporter.openvino_graph import openvino_graph, quantize_at_producers
from qtool.exporter.points import find_quant_points
from qtool.graph import SAME_VALUE_OPS, GraphIndex
from qtool.models import resolve_model
from qtool.models.onnx_export import ExportConfig, export_onnx
from qtool.quantization.calibration import CalibrateConfig, calibrate
from qtool.quantization.graphs import calibrated_model
from qtool.runners import OrtRunner
from qtool.stages.statistics import collect_stage
from tests.helpers.models import FAMILIES, build_family_classifier
from tests.helpers.reference_bert import LAYER_POINTS

runner = CliRunner()
INPUTS = {
    "bert": ["input_ids", "attention_mask", "token_type_ids"],
    "roberta": ["input_ids", "attention_mask"],  # one segment row: no token types
    "distilbert": ["input_ids", "attention_mask"],
    "mpnet": ["input_ids", "attention_mask"],
    "electra": ["input_ids", "attention_mask", "token_type_ids"],
}


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, tmp_path_factory, embedded_tokenizer, session_data):
    family = request.param
    folder = build_family_classifier(tmp_path_factory.mktemp(family), embedded_tokenizer, family)
    split = load_qnli(DataConfig(source=str(session_data)))
    graph = folder / "onnx" / "fp32.onnx"
    manifest = export_onnx(resolve_model(str(folder)), split, graph, ExportConfig())
    return {"family": family, "graph": graph, "manifest": manifest, "split": split, "data": session_data}


def _batches(exported, count: int = 24, size: int = 8):
    tokenizer = embedded_tokenizer_of(exported)
    return make_batches(tokenize_part(tokenizer, exported["split"].parts["eval"][:count]), size)


def embedded_tokenizer_of(exported):
    from qtool.models.families import tokenizer_for

    return tokenizer_for(exported["graph"])


def test_export_takes_the_inputs_of_the_family_with_parity(exported):
    manifest = exported["manifest"]
    assert manifest["family"] == exported["family"] and manifest["inputs"] == INPUTS[exported["family"]]
    model = onnx.load(str(exported["graph"]))
    assert [value.name for value in model.graph.input] == INPUTS[exported["family"]]
    assert manifest["parity"]["max_abs_logit_diff"] <= 1e-4
    assert len({shape[1] for shape in manifest["parity"]["batch_shapes"]}) >= 3  # several lengths


def test_analyze_draws_every_family(exported, tmp_path):
    from qtool.analysis.outliers import OutlierConfig
    from qtool.stages.statistics import analyze_stage

    stats, _ = collect_stage(exported["graph"], exported["split"])
    document, paths = analyze_stage(stats, OutlierConfig(), tmp_path / "analysis")
    assert {"residual_heatmap", "kurtosis_by_layer"} <= set(paths) and len(document["points"]) == len(stats.points)


def test_points_have_the_same_names_in_every_family(exported):
    points = [p.name for p in find_quant_points(onnx.load(str(exported["graph"])))]
    head = ["embeddings.sum", "embeddings.output"]
    if exported["family"] == "electra":
        head.append("embeddings.projection")
    layers = [f"layer.{i}.{point}" for i in range(2) for point in LAYER_POINTS]
    assert points == head + layers + ["pooler.input", "classifier.input"]


def test_qdq_graph_quantizes_every_point_as_the_calibration_says(exported):
    """Point by point: each quantized value is the NumPy fake quantization of the value that reaches
    it, with the calibration's scale, and every reader of the point reads the quantized value."""
    stats, _ = collect_stage(exported["graph"], exported["split"])
    calibration = calibrate(stats, CalibrateConfig())
    model = calibrated_model(exported["graph"], calibration)
    points = {p.name: p for p in stats.points}
    probes = []
    for name in calibration.tensors:
        quantize = next(n for n in model.graph.node if n.name == f"{name}/QuantizeLinear")
        probes += [quantize.input[0], f"{name}/dequantized"]
        readers = [n for n in model.graph.node if quantize.input[0] in n.input and n.op_type not in ("Shape", "Size")]
        assert readers == [quantize], f"{name} is read unquantized by {[n.name for n in readers if n is not quantize]}"
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(p) for p in probes if p not in existing)
    with OrtRunner(model.SerializeToString(), optimization_level="disable") as session:
        for batch in _batches(exported):
            outputs = session.infer(batch.feeds)
            for name, entry in calibration.tensors.items():
                value = outputs[points[name].matmul_input or points[name].tensor]
                scale = np.float32(entry.scale)
                expected = np.clip(np.rint(value / scale), -128, 127).astype(np.float32) * scale
                np.testing.assert_allclose(outputs[f"{name}/dequantized"], expected, rtol=0, atol=1e-6 * float(scale))


def test_peg_calibration_and_the_ort_graph_give_the_qdq_logits(exported, tmp_path):
    graph, data = exported["graph"], str(exported["data"])
    result = runner.invoke(
        app, ["calibrate", str(graph), "--method", "peg", "--groups", "3", "--no-eval", "--json", "-o", str(tmp_path),
              "--data", data, "--samples", "32"],
    )
    assert result.exit_code == 0, result.output
    qdq = json.loads(result.stdout)["qdq_graph"]
    built = runner.invoke(app, ["build", qdq, "--backend", "ort", "--json"])
    assert built.exit_code == 0, built.output
    report = json.loads(built.stdout)
    assert report["float_matmuls_two_dequantized_inputs"] == 0 and sum(report["integer_ops"].values()) > 0
    # the QDQ graph as scored (no fusions): with them ONNX Runtime would fuse parts of the int8 graph into
    # integer kernels that saturate on x86 without VNNI, while `build` chose exact kernels for this CPU
    with OrtRunner(qdq, optimization_level="disable") as reference, OrtRunner(report["graph"]) as deployed:
        for batch in _batches(exported):
            expected, got = reference.infer(batch.feeds)["logits"], deployed.infer(batch.feeds)["logits"]
            np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))


def test_the_openvino_graph_moves_per_tensor_pairs_and_computes_the_same_values(exported):
    """Each family's attention reshapes its projections before the Q/DQ pairs of `gemm-inputs`; the
    OpenVINO graph moves those pairs to the projections, and the graph's logits stay bit for bit."""
    stats, _ = collect_stage(exported["graph"], exported["split"])
    qdq = calibrated_model(exported["graph"], calibrate(stats, CalibrateConfig(method="max", scope="gemm-inputs")))
    moved_graph, passes = openvino_graph(qdq)
    assert passes["quantize_at_producers"], "no pair moved"
    only_moved = onnx.ModelProto()
    only_moved.CopyFrom(qdq)
    assert quantize_at_producers(only_moved) == passes["quantize_at_producers"]
    index = GraphIndex(only_moved.graph)
    for node in index.nodes:
        if (node.name or node.output[0]) in passes["quantize_at_producers"]:
            assert index.producer[node.input[0]].op_type not in SAME_VALUE_OPS
    with (
        OrtRunner(qdq.SerializeToString(), optimization_level="disable") as before,
        OrtRunner(moved_graph.SerializeToString(), optimization_level="disable") as after,
    ):
        for batch in _batches(exported, count=16):
            np.testing.assert_array_equal(after.infer(batch.feeds)["logits"], before.infer(batch.feeds)["logits"])


def test_peers_quantize_every_family(exported, tmp_path):
    """NNCF's PTQ and ONNX Runtime's transformer optimizer + quantize_dynamic take each family's graph."""
    pytest.importorskip("nncf")
    from qtool.quantization.nncf_quantizers import quantize_with_nncf, quantized_ops
    from qtool.quantization.ort_quantizers import attention_shape, quantize_with_ort

    graph, split, tokenizer = exported["graph"], exported["split"], embedded_tokenizer_of(exported)
    record = quantize_with_nncf("nncf-ptq", graph, tmp_path / "nncf.onnx", split, tokenizer, 16)
    found = quantized_ops(onnx.load(str(tmp_path / "nncf.onnx")))
    assert record["quantized_ops"] >= 6 * 2 + 1 and found["float_weight_gemms"] == []  # 2 layers x 6 projections
    assert attention_shape(onnx.load(str(graph))) == (4, 40)  # what the optimizer is told: 4 heads, 40 wide
    quantize_with_ort("ort-optimizer-dynamic", graph, tmp_path / "ort.onnx", split, tokenizer, 16)
    with OrtRunner(graph) as fp32, OrtRunner(tmp_path / "nncf.onnx") as nncf, OrtRunner(tmp_path / "ort.onnx") as ort:
        for batch in _batches(exported, count=8):
            expected = fp32.infer(batch.feeds)["logits"]
            for peer in (nncf, ort):
                got = peer.infer(batch.feeds)["logits"]
                assert got.shape == expected.shape and np.isfinite(got).all()


def _gpt2(folder, tokenizer):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=16, n_layer=1, n_head=2, num_labels=2, pad_token_id=0)
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "case, words",
    [
        ("gpt2", "qtool quantizes BERT-family encoders: bert, roberta"),
        ("no tokenizer", "has no tokenizer files"),
        ("three labels", "already classifies into 3 labels (entailment, not_entailment, neutral)"),
        ("bert with 64 positions", "takes at most 64 tokens"),
        ("roberta with 64 positions", "takes at most 63 tokens"),  # positions count from the padding index + 1
    ],
)
def test_models_qtool_cannot_take_are_one_line_errors(case, words, tmp_path, embedded_tokenizer, session_data):
    folder = tmp_path / "model"
    if case == "gpt2":
        _gpt2(folder, embedded_tokenizer)
    elif case == "no tokenizer":
        build_family_classifier(folder, embedded_tokenizer, "bert")
        for path in folder.iterdir():
            if "token" in path.name or path.name == "vocab.txt":
                path.unlink()
    elif case == "three labels":
        build_family_classifier(folder, embedded_tokenizer, "roberta", num_labels=3)
    else:
        build_family_classifier(folder, embedded_tokenizer, case.split()[0])
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 64}))
    artifacts = tmp_path / "artifacts"
    for command in ("export", "finetune"):
        result = runner.invoke(
            app, [command, "--model", str(folder), "--data", str(session_data), "--artifacts", str(artifacts),
                  "--max-steps", "1"][: 7 if command == "export" else 9],
        )
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        errors = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and words in errors[0] and result.stderr.strip().endswith(errors[0]), result.stderr
        assert not artifacts.exists() or not any(artifacts.rglob("*.onnx"))


@pytest.mark.parametrize("family", ["roberta", "distilbert", "mpnet"])
def test_finetune_gives_an_encoder_a_qnli_head_that_exports(family, tmp_path, embedded_tokenizer, tiny_data):
    folder = build_family_classifier(tmp_path / "model", embedded_tokenizer, family, head=False)
    common = ["--data", str(tiny_data), "--artifacts", str(tmp_path / "artifacts"), "--json"]
    tuned = runner.invoke(app, ["finetune", "--model", str(folder), "--max-steps", "2", *common])
    assert tuned.exit_code == 0, tuned.output
    exported = runner.invoke(app, ["export", "--model", json.loads(tuned.stdout)["model_dir"], *common])
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["inputs"] == INPUTS[family]


def test_finetune_never_replaces_a_trained_head_with_other_labels(tmp_path, embedded_tokenizer, tiny_data):
    folder = build_family_classifier(tmp_path / "model", embedded_tokenizer, "bert", num_labels=1)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"problem_type": "regression"}))
    artifacts = tmp_path / "artifacts"
    common = ["--data", str(tiny_data), "--artifacts", str(artifacts), "--json"]
    tuned = runner.invoke(app, ["finetune", "--model", str(folder), "--max-steps", "2", *common])
    assert tuned.exit_code == 2 and "already classifies into 1 label (entailment)" in tuned.stderr
    assert "does not replace a trained head" in tuned.stderr and not (artifacts / "models").exists()
