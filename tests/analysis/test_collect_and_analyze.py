from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from qtool.analysis import ActivationStats, CollectConfig, OutlierConfig, collect, point_reports
from qtool.analysis.collect import _augmented_model, calibration_examples
from qtool.cli import app
from qtool.data import DataConfig, load_qnli, make_batches, tokenize_part
from qtool.data.split import question_position
from qtool.errors import QtoolError
from qtool.exporter.points import find_quant_points
from qtool.models.resolve import load_tokenizer
from tests.helpers.models import build_bert_classifier, export_tiny
from tests.helpers.reference_bert import LAYER_POINTS

runner = CliRunner()


def test_points_follow_the_graph_not_a_fixed_shape(tiny_onnx):
    points = find_quant_points(onnx.load(str(tiny_onnx)))
    expected = ["embeddings.sum", "embeddings.output"]
    expected += [f"layer.{i}.{suffix}" for i in range(2) for suffix in LAYER_POINTS]
    expected += ["pooler.input", "classifier.input"]
    assert [p.name for p in points] == expected
    graph = onnx.load(str(tiny_onnx)).graph
    tensors = {o for n in graph.node for o in n.output}
    assert all(p.tensor in tensors for p in points)
    by_name = {p.name: p for p in points}
    assert "layer.1/output/LayerNorm" in by_name["layer.1.ffn.residual_sum"].consumer_inputs[0][0]
    assert by_name["layer.0.attention.probs"].tensor.endswith("Softmax_output_0")


def test_a_graph_that_is_not_bert_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "mlp",
        [x],
        [y],
        [weight],
    )
    with pytest.raises(QtoolError, match="not a BERT-family encoder"):
        find_quant_points(helper.make_model(graph))


def _reference_rows(model_path, split, tokenizer, point, config):
    """Concatenated real-token activations of one point, by running the graph batch by batch."""
    model = onnx.load(str(model_path))
    points = find_quant_points(model)
    session = ort.InferenceSession(_augmented_model(model, points))
    examples, _ = calibration_examples(split, config.samples)
    rows = []
    for batch in make_batches(tokenize_part(tokenizer, examples, config.max_length), config.batch_size):
        value = session.run([point.tensor], batch.feeds)[0]
        rows.append(value[batch.feeds["attention_mask"].astype(bool)])
    return np.concatenate(rows).astype(np.float64)


def test_collector_equals_numpy_on_the_concatenated_activations(tiny_onnx, session_data):
    split = load_qnli(DataConfig(source=str(session_data)))
    tokenizer = load_tokenizer(tiny_onnx.parent / "tokenizer")
    config = CollectConfig(samples=48, batch_size=7, histogram_bins=1024)
    stats = collect(tiny_onnx, split, tokenizer, config)
    assert stats.manifest["samples"] == 48
    for name in ("layer.1.ffn.residual_sum", "embeddings.sum", "layer.0.ffn.activation"):
        point = stats.point(name)
        rows = _reference_rows(tiny_onnx, split, tokenizer, point, config)
        tensor = stats.stats[name]
        flat = rows.ravel()
        central = flat - flat.mean()
        assert tensor.count == flat.size
        np.testing.assert_allclose(tensor.mean, flat.mean(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(tensor.variance, np.mean(central**2), rtol=1e-9)
        np.testing.assert_allclose(tensor.kurtosis, np.mean(central**4) / np.mean(central**2) ** 2, rtol=1e-9)
        np.testing.assert_allclose(tensor.channel_min, rows.min(0), rtol=1e-9)
        np.testing.assert_allclose(tensor.channel_max, rows.max(0), rtol=1e-9)
        np.testing.assert_allclose(tensor.channel_energy, (rows**2).sum(0), rtol=1e-9)


def test_statistics_file_round_trip_and_model_check(tiny_onnx, session_data, tmp_path, embedded_tokenizer):
    split = load_qnli(DataConfig(source=str(session_data)))
    stats = collect(tiny_onnx, split, load_tokenizer(tiny_onnx.parent / "tokenizer"), CollectConfig(samples=16))
    path = stats.save(tmp_path / "stats.npz")
    loaded = ActivationStats.load(path)
    assert loaded.content_sha256 == stats.content_sha256
    loaded.check_model(tiny_onnx)
    tokenizer = load_tokenizer(tiny_onnx.parent / "tokenizer")
    one_thread = collect(tiny_onnx, split, tokenizer, CollectConfig(samples=16, threads=1))
    assert one_thread.content_sha256 == stats.content_sha256  # the thread count is not part of the result
    other = export_tiny(
        build_bert_classifier(tmp_path / "other", embedded_tokenizer, layers=2, hidden=32, heads=4, seed=5),
        session_data,
        tmp_path / "other-onnx" / "fp32.onnx",
    )
    with pytest.raises(QtoolError, match="another model"):
        loaded.check_model(other)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(QtoolError, match="not a qtool statistics file"):
        ActivationStats.load(tmp_path / "junk.npz")


def test_injected_outlier_channel_is_reported_at_its_layer(tmp_path, session_data, embedded_tokenizer):
    import torch
    from transformers import BertForSequenceClassification

    folder = build_bert_classifier(tmp_path / "outlier", embedded_tokenizer, layers=3, hidden=64, heads=4)
    model = BertForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.bias[11] = 400.0  # channel 11, FFN output of layer 1
    model.save_pretrained(folder)
    graph = export_tiny(folder, session_data, tmp_path / "onnx" / "fp32.onnx")
    split = load_qnli(DataConfig(source=str(session_data)))
    stats = collect(graph, split, load_tokenizer(graph.parent / "tokenizer"), CollectConfig(samples=32))
    reports = {r["name"]: r for r in point_reports(stats, OutlierConfig())}
    assert [c["channel"] for c in reports["layer.1.ffn.residual_sum"]["outlier_channels"]] == [11]
    assert [c["channel"] for c in reports["layer.1.ffn.output"]["outlier_channels"]] == [11]
    assert reports["layer.0.ffn.residual_sum"]["outlier_channels"] == []
    assert reports["layer.1.ffn.residual_sum"]["top_energy_share"] > 0.9
    assert reports["layer.1.ffn.residual_sum"]["kurtosis"] > 20
    assert reports["layer.0.ffn.residual_sum"]["kurtosis"] < 10


def test_analyze_cli_writes_table_json_csv_and_figures(tiny_onnx, session_data, tmp_path):
    out = tmp_path / "analysis"
    args = ["analyze", str(tiny_onnx), "--data", str(session_data), "--samples", "24", "--out", str(out)]
    result = runner.invoke(app, [*args, "--top", "5"])
    assert result.exit_code == 0, result.output
    assert "kurtosis" in result.stdout and "per layer" in result.stdout
    document = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert len(document["layers"]) == 4  # embeddings, two layers, head
    assert {"kurtosis", "top_energy_share", "outlier_channels"} <= set(document["points"][0])
    for name in (
        "analysis.json",
        "analysis.csv",
        "kurtosis_by_layer.png",
        "top1_energy_by_layer.png",
        "residual_channel_absmax.png",
        "residual_histogram.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "analysis.csv").read_text().count("\n") == len(document["points"]) + 1


def test_analyze_bad_inputs(tiny_onnx, session_data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for wanted, code in (((0.0, 0.5), 0), ((0.7, 1.0), 2)):  # its one pair in the train part, or in eval
        question = next(q for q in (f"which question {i}?" for i in range(200)) if wanted[0] <= question_position(q, 0) < wanted[1])
        (empty / "dev.tsv").write_text(f"index\tquestion\tsentence\tlabel\n0\t{question}\tsome sentence.\tentailment\n")
        assert not load_qnli(DataConfig(source=str(empty))).parts["calibration"]
        result = runner.invoke(app, ["analyze", str(tiny_onnx), "--data", str(empty), "--out", str(tmp_path / "a")])
        assert result.exit_code == code, result.output  # the train part tops up an empty calibration part
        assert code == 0 or "calibration part" in result.stderr
    result = runner.invoke(app, ["analyze", str(tiny_onnx), "--data", str(session_data), "--samples", "0"])
    assert result.exit_code == 2 and "--samples" in result.stderr
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    plain = tmp_path / "plain.onnx"
    onnx.save(
        helper.make_model(
            helper.make_graph(
                [helper.make_node("Relu", ["x"], ["y"])],
                "g",
                [x],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
            )
        ),
        str(plain),
    )
    result = runner.invoke(app, ["analyze", str(plain), "--stats", str(tmp_path / "none.npz")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_the_studys_analysis_is_drawn_once_and_again_when_a_figure_is_missing(scaled_model, tmp_path, monkeypatch):
    from qtool.analysis import writer
    from qtool.stages.statistics import analyze_stage, cached_analysis

    stats = scaled_model["stats"]
    stats_path = stats.save(tmp_path / "fp32.stats.npz")
    drawn = []
    draw = writer.write_figures
    monkeypatch.setattr(writer, "write_figures", lambda *args: drawn.append(1) or draw(*args))
    folder = tmp_path / "analysis"
    first, paths = cached_analysis(stats, stats_path, OutlierConfig(), folder)
    again, paths_again = cached_analysis(stats, stats_path, OutlierConfig(), folder)
    assert drawn == [1] and again == first and paths_again == paths and len(paths) == 6
    direct = analyze_stage(stats, OutlierConfig(), tmp_path / "direct", figures=False)[0]
    assert first == json.loads(json.dumps(direct))
    Path(paths["residual_heatmap"]).unlink()
    cached_analysis(stats, stats_path, OutlierConfig(), folder)
    assert drawn == [1, 1] and Path(paths["residual_heatmap"]).is_file()
    cached_analysis(stats, stats_path, OutlierConfig(sigma=4.0), folder)  # other settings: drawn again
    assert drawn == [1, 1, 1]
    moved = folder.rename(tmp_path / "moved")  # a copied or moved artifacts folder: its own files, not drawn again
    paths_moved = cached_analysis(stats, stats_path, OutlierConfig(sigma=4.0), moved)[1]
    assert drawn == [1, 1, 1] and all(Path(path).parent == moved and Path(path).is_file() for path in paths_moved.values())
    stats_path.write_bytes(stats_path.read_bytes() + b"\0")  # other statistics in the same file: drawn again
    cached_analysis(stats, stats_path, OutlierConfig(sigma=4.0), moved)
    assert drawn == [1, 1, 1, 1]
