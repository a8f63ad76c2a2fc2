from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.analysis import CollectConfig, collect
from qtool.analysis.stats import TensorStats
from qtool.data import DataConfig, load_qnli, make_batches, tokenize_part
from qtool.errors import QtoolError
from qtool.exporter.points import QuantPoint, find_quant_points
from qtool.exporter.smooth import SmoothConfig, apply_smoothing, smooth_model, smoothing_factors
from qtool.models.resolve import load_tokenizer
from tests.helpers.models import build_bert_classifier, export_tiny

OUTLIER_CHANNEL = 7
OUTLIER_POINT = "layer.0.attention.layernorm"


def _collect(graph, split):
    return collect(graph, split, load_tokenizer(graph.parent / "tokenizer"), CollectConfig(samples=32, batch_size=8))


@pytest.fixture(scope="module")
def split(session_data):
    return load_qnli(DataConfig(source=str(session_data)))


@pytest.fixture(scope="module")
def tiny(tiny_onnx, split):
    """The shared tiny classifier: its LayerNorm parameters are deduplicated Identity outputs."""
    return {"path": tiny_onnx, "model": onnx.load(str(tiny_onnx)), "stats": _collect(tiny_onnx, split)}


@pytest.fixture(scope="module")
def outlier(tmp_path_factory, embedded_tokenizer, session_data, split):
    """A tiny classifier whose layer-0 attention LayerNorm output has one channel ~50x the others."""
    import torch
    from transformers import BertForSequenceClassification

    folder = build_bert_classifier(
        tmp_path_factory.mktemp("smooth-outlier"), embedded_tokenizer, layers=2, hidden=32, heads=4, seed=1
    )
    model = BertForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        layer_norm = model.bert.encoder.layer[0].attention.output.LayerNorm
        layer_norm.weight[OUTLIER_CHANNEL] = 50.0
        layer_norm.bias[OUTLIER_CHANNEL] = 10.0
    model.save_pretrained(folder)
    graph = export_tiny(folder, session_data, tmp_path_factory.mktemp("smooth-outlier-onnx") / "fp32.onnx")
    return {"path": graph, "model": onnx.load(str(graph)), "stats": _collect(graph, split)}


def _batches(graph_path, split, count=3):
    part = tokenize_part(load_tokenizer(graph_path.parent / "tokenizer"), split.parts["eval"][:24], 128)
    return make_batches(part, 8)[:count]


def _run(model: onnx.ModelProto, feeds: dict, tensors=()) -> dict[str, np.ndarray]:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    for tensor in tensors:
        if tensor not in existing:
            model.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted}), strict=True))


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray:
    """An initializer's value, through the exporter's Identity copies."""
    initializers = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    while name not in initializers:
        name = producers[name].input[0]
    return numpy_helper.to_array(initializers[name])


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


@pytest.mark.parametrize("which", ["tiny", "outlier"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8, 1.0])
def test_smoothed_graph_computes_the_same_logits(which, alpha, request, split):
    case = request.getfixturevalue(which)
    original = case["model"]
    before = original.SerializeToString()
    smoothed, factors = smooth_model(original, case["stats"], SmoothConfig(alpha=alpha))
    assert original.SerializeToString() == before, "the input model must not change"
    onnx.checker.check_model(smoothed, full_check=True)
    assert set(factors) == {
        "embeddings.output",
        "layer.0.attention.layernorm",
        "layer.0.ffn.layernorm",
        "layer.1.attention.layernorm",
    }
    points = {p.name: p for p in case["stats"].points}
    tensors = [points[name].tensor for name in factors]
    for batch in _batches(case["path"], split):
        reference = _run(original, batch.feeds, tensors)
        result = _run(smoothed, batch.feeds, tensors)
        scale = float(np.abs(reference["logits"]).max())
        np.testing.assert_allclose(result["logits"], reference["logits"], rtol=0, atol=1e-4 * scale)
        for name, s in factors.items():  # X' * s == X at every smoothed LayerNorm
            x = reference[points[name].tensor]
            np.testing.assert_allclose(
                result[points[name].tensor] * np.float32(s), x, rtol=1e-5, atol=1e-5 * np.abs(x).max(), err_msg=name
            )


def test_factors_equal_a_numpy_reference_and_the_weights_move(tiny):
    model, stats, alpha = tiny["model"], tiny["stats"], 0.5
    smoothed, factors = smooth_model(model, stats, SmoothConfig(alpha=alpha))
    # layer.0.ffn.layernorm (the output LayerNorm of layer 0) feeds the query, key and value of layer 1.
    point = "layer.0.ffn.layernorm"
    prefix = "/bert/encoder/layer.1/attention/self"
    projections = [_node(model, f"{prefix}/{role}/MatMul") for role in ("query", "key", "value")]
    weights = np.concatenate([_constant(model, p.input[1]) for p in projections], axis=1).astype(np.float64)
    activation = stats.stats[point].channel_absmax
    expected = activation**alpha / np.abs(weights).max(axis=1) ** (1 - alpha)
    s = np.asarray(factors[point])
    np.testing.assert_allclose(s, expected, rtol=1e-6)
    # layer.0.attention.layernorm feeds the FFN intermediate projection alone.
    intermediate = _constant(model, _node(model, "/bert/encoder/layer.0/intermediate/dense/MatMul").input[1])
    np.testing.assert_allclose(
        factors[OUTLIER_POINT],
        np.sqrt(stats.stats[OUTLIER_POINT].channel_absmax / np.abs(intermediate.astype(np.float64)).max(axis=1)),
        rtol=1e-6,
    )
    assert json.loads(json.dumps(factors)) == factors
    assert smooth_model(model, stats, SmoothConfig(alpha=alpha))[1] == factors  # deterministic

    s32 = s.astype(np.float32)
    for projection in projections:  # W' = diag(s) W, in place under the same initializer name
        np.testing.assert_allclose(
            _constant(smoothed, projection.input[1]), _constant(model, projection.input[1]) * s32[:, None], rtol=1e-6
        )
    layer_norm = _node(smoothed, "/bert/encoder/layer.0/output/LayerNorm/LayerNormalization")
    original_ln = _node(model, layer_norm.name)
    assert list(layer_norm.input) == list(original_ln.input)  # deduplicated parameters made private, same names
    for slot in (1, 2):
        np.testing.assert_allclose(
            _constant(smoothed, layer_norm.input[slot]), _constant(model, original_ln.input[slot]) / s32, rtol=1e-6
        )

    # The residual Add reads the unsmoothed tensor through one Mul; Shape nodes keep X'.
    unsmooth = _node(smoothed, f"{point}/Unsmooth")
    assert unsmooth.op_type == "Mul" and unsmooth.input[0] == layer_norm.output[0]
    np.testing.assert_array_equal(_constant(smoothed, unsmooth.input[1]), s32)
    residual = _node(smoothed, "/bert/encoder/layer.1/attention/output/Add")
    assert unsmooth.output[0] in residual.input
    shapes = [n for n in model.graph.node if n.op_type == "Shape" and n.input[0] == layer_norm.output[0]]
    assert shapes and all(_node(smoothed, n.name).input[0] == layer_norm.output[0] for n in shapes)

    # The last LayerNorm feeds only the pooler (Gather of token 0, then Gemm): no projection, not smoothed.
    assert "layer.1.ffn.layernorm" not in factors
    assert _node(smoothed, "/bert/pooler/Gather").input[0] == _node(model, "/bert/pooler/Gather").input[0]


def test_smoothing_flattens_an_outlier_channel(outlier, split):
    model, stats = outlier["model"], outlier["stats"]
    tensor = stats.point(OUTLIER_POINT).tensor
    smoothed, _ = smooth_model(model, stats, SmoothConfig(alpha=0.5))

    def channel_absmax(graph):
        rows = []
        for batch in _batches(outlier["path"], split):
            value = _run(graph, batch.feeds, [tensor])[tensor]
            rows.append(np.abs(value[batch.feeds["attention_mask"].astype(bool)]))
        return np.concatenate(rows).max(axis=0)

    before, after = channel_absmax(model), channel_absmax(smoothed)
    assert int(before.argmax()) == OUTLIER_CHANNEL
    ratio_before = before.max() / np.median(before)
    ratio_after = after.max() / np.median(after)
    assert ratio_before > 20
    assert ratio_after < ratio_before / 4, (ratio_before, ratio_after)


@pytest.mark.parametrize("which", ["tiny", "outlier"])
def test_quantization_points_keep_names_roles_and_tensors(which, request):
    case = request.getfixturevalue(which)
    smoothed, factors = smooth_model(case["model"], case["stats"], SmoothConfig(alpha=0.5))
    before = find_quant_points(case["model"])
    after = find_quant_points(smoothed)
    assert [(p.name, p.role, p.layer, p.tensor, p.matmul_input) for p in after] == [
        (p.name, p.role, p.layer, p.tensor, p.matmul_input) for p in before
    ]
    by_name = {p.name: p for p in after}
    for name in factors:  # the smoothed outputs now reach their residual Add through the Unsmooth Mul
        assert (f"{name}/Unsmooth", 0) in by_name[name].consumer_inputs


@pytest.mark.parametrize("alpha", [1.5, -0.1, math.nan, "0.5"])
def test_alpha_outside_zero_one_is_refused(alpha, tiny):
    with pytest.raises(QtoolError, match="alpha must be between 0 and 1"):
        SmoothConfig(alpha=alpha).validate()
    with pytest.raises(QtoolError, match="alpha"):
        smooth_model(tiny["model"], tiny["stats"], SmoothConfig(alpha=alpha))


def test_bad_roles_and_missing_statistics_are_refused(tiny):
    with pytest.raises(QtoolError, match="roles"):
        SmoothConfig(roles=("query",)).validate()
    with pytest.raises(QtoolError, match="no point 'embeddings.output'"):
        smooth_model(tiny["model"], {}, SmoothConfig())


# -- a hand-built graph with every kind of consumer ------------------------------------------------
C = 4


def _synthetic():
    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)

    gamma = numpy_helper.from_array(np.array([1.0, 0.5, 20.0, 1.0], np.float32), "gamma")  # shared by both LNs
    beta = numpy_helper.from_array(np.array([0.1, -0.2, 3.0, 0.0], np.float32), "beta")
    w_q, w_k = rng.normal(size=(2, C, 5)).astype(np.float32)
    w_q[3] = w_k[3] = 0.0  # a channel that no projection weight reads: s = 1
    initializers = [
        gamma,
        beta,
        numpy_helper.from_array(w_q, "w_q"),
        numpy_helper.from_array(w_k, "w_k"),
        init("w_shared", (C, 5)),
        init("w_t", (5, C)),
        init("w_pool", (6, C)),
        init("w_gemm", (C, 3)),
        init("w_gemm_t", (3, C)),
        numpy_helper.from_array(np.array(0, np.int64), "token0"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], name="ln_a", epsilon=1e-5),
        helper.make_node("MatMul", ["y", "w_q"], ["q"], name="q"),
        helper.make_node("MatMul", ["y", "w_k"], ["k"], name="k"),
        helper.make_node("MatMul", ["y", "w_shared"], ["shared_y"], name="shared_y"),
        helper.make_node("MatMul", ["x", "w_shared"], ["shared_x"], name="shared_x"),
        helper.make_node("Transpose", ["w_t"], ["w_computed"], name="transpose"),
        helper.make_node("MatMul", ["y", "w_computed"], ["computed"], name="computed"),
        helper.make_node("Add", ["y", "x"], ["residual"], name="residual"),
        helper.make_node("Shape", ["y"], ["shape"], name="shape"),
        helper.make_node("Gather", ["y", "token0"], ["pooled"], name="pool_gather", axis=1),
        helper.make_node("Gemm", ["pooled", "w_pool"], ["pool"], name="pool", transB=1),
        helper.make_node("LayerNormalization", ["x2", "gamma"], ["y2"], name="ln_b", epsilon=1e-5),
        helper.make_node("Gemm", ["y2", "w_gemm"], ["gemm"], name="gemm"),
        helper.make_node("Gemm", ["y2", "w_gemm_t"], ["gemm_t"], name="gemm_t", transB=1, alpha=0.5),
        helper.make_node("Add", ["y2", "x2"], ["residual2"], name="residual2"),
    ]
    outputs = {
        "q": [2, 3, 5],
        "k": [2, 3, 5],
        "shared_y": [2, 3, 5],
        "shared_x": [2, 3, 5],
        "computed": [2, 3, 5],
        "residual": [2, 3, C],
        "shape": [3],
        "pool": [2, 6],
        "gemm": [2, 3],
        "gemm_t": [2, 3],
        "residual2": [2, C],
    }
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, C]),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, [2, C]),
        ],
        [
            helper.make_tensor_value_info(name, TensorProto.INT64 if name == "shape" else TensorProto.FLOAT, shape)
            for name, shape in outputs.items()
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": rng.normal(size=(2, 3, C)).astype(np.float32), "x2": rng.normal(size=(2, C)).astype(np.float32)}
    points = [
        QuantPoint("a.layernorm", "layernorm_output", 0, "y", ()),
        QuantPoint("b.layernorm", "layernorm_output", 1, "y2", ()),
    ]
    return model, feeds, points, list(outputs)


def test_every_kind_of_consumer_on_a_hand_built_graph():
    model, feeds, points, outputs = _synthetic()
    onnx.checker.check_model(model, full_check=True)
    reference = _run(model, feeds, ["y", "y2"])
    stats = {}
    for point in points:
        value = reference[point.tensor]
        stats[point.name] = TensorStats(bins=256)
        stats[point.name].update(value, value.reshape(-1, C))
    stats["b.layernorm"].channel_min[0] = stats["b.layernorm"].channel_max[0] = 0.0  # a dead channel: s = 1

    factors = smoothing_factors(model, points, stats, 0.5)
    weights = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    # a: only the private MatMul weights count (not the shared, the computed or the pooler's).
    w_a = np.abs(np.concatenate([weights["w_q"], weights["w_k"]], axis=1)).max(axis=1)
    expected_a = np.ones(C)
    expected_a[:3] = np.sqrt(stats["a.layernorm"].channel_absmax[:3] / w_a[:3])
    np.testing.assert_allclose(factors["a.layernorm"], expected_a, rtol=1e-6)
    assert factors["a.layernorm"][3] == 1.0
    # b: Gemm rows of B, and columns of B when transB = 1.
    w_b = np.maximum(np.abs(weights["w_gemm"]).max(axis=1), np.abs(weights["w_gemm_t"]).max(axis=0))
    expected_b = np.sqrt(stats["b.layernorm"].channel_absmax / w_b)
    expected_b[0] = 1.0
    np.testing.assert_allclose(factors["b.layernorm"], expected_b, rtol=1e-6)
    assert factors["b.layernorm"][0] == 1.0

    smoothed = apply_smoothing(model, points, factors)
    onnx.checker.check_model(smoothed, full_check=True)
    result = _run(smoothed, feeds)
    for name in outputs:
        np.testing.assert_allclose(result[name], reference[name], rtol=1e-5, atol=1e-5, err_msg=name)

    nodes = {n.name: n for n in smoothed.graph.node}
    after = {i.name: numpy_helper.to_array(i) for i in smoothed.graph.initializer}
    for name in ("w_shared", "w_t", "w_pool"):  # not projections of y: untouched, read through the Mul
        np.testing.assert_array_equal(after[name], weights[name])
    for name in ("shared_y", "computed", "residual", "pool_gather"):
        assert nodes[name].input[0] == "a.layernorm/Unsmooth_output_0", name
    assert nodes["shape"].input[0] == "y"
    assert nodes["residual2"].input[0] == "b.layernorm/Unsmooth_output_0"
    np.testing.assert_allclose(after["w_gemm_t"], weights["w_gemm_t"] * factors["b.layernorm"][None, :], rtol=1e-6)
    # The shared scale: each LayerNorm gets its own copy, the orphaned original is dropped; beta in place.
    assert nodes["ln_a"].input[1:] == ["gamma/smoothed", "beta"]
    assert nodes["ln_b"].input[1:] == ["gamma/smoothed_1"]
    assert "gamma" not in after

    with pytest.raises(QtoolError, match="cannot be smoothed"):
        apply_smoothing(model, points + [QuantPoint("q", "query", 0, "q", ())], {"q": [1.0] * 5})


def test_calibrate_with_smoothing_records_factors_and_rebuilds_the_same_graph(outlier, session_data, tmp_path):
    from typer.testing import CliRunner

    from qtool.cli import app
    from qtool.graph import model_identity

    runner = CliRunner()
    graph = tmp_path / "model" / "fp32.onnx"
    graph.parent.mkdir()
    graph.write_bytes(outlier["path"].read_bytes())
    (graph.parent / "tokenizer").symlink_to(outlier["path"].parent / "tokenizer")
    common = ["--data", str(session_data), "--samples", "32", "--batch-size", "8", "--no-eval", "--json"]
    plain = json.loads(runner.invoke(app, ["calibrate", str(graph), *common]).stdout)
    result = runner.invoke(app, ["calibrate", str(graph), "--smooth", "0.5", *common])
    assert result.exit_code == 0, result.output
    smoothed = json.loads(result.stdout)
    assert smoothed["recipe"] == "max-all-smooth0.5" and smoothed["smoothing"]["alpha"] == 0.5
    document = json.loads((graph.parent / "max-all-smooth0.5.calib.json").read_text())
    assert document["model"] == model_identity(graph)  # the FP32 export's identity, not the smoothed graph's
    assert OUTLIER_POINT in document["smoothing"]["factors"]
    # The smoothed graph has statistics of its own, refused for the plain graph and vice versa.
    smoothed_graph = graph.parent / "fp32.smooth0.5.onnx"
    assert model_identity(smoothed_graph) != model_identity(graph)
    assert (graph.parent / "fp32.smooth0.5.stats.npz").is_file()
    # The migration shrinks the outlier LayerNorm output's range, so its scale drops.
    plain_document = json.loads((graph.parent / "max-all.calib.json").read_text())
    assert plain["recipe"] == "max-all"
    assert document["tensors"][OUTLIER_POINT]["scale"] < plain_document["tensors"][OUTLIER_POINT]["scale"] / 4
    # `qtool quantize` rebuilds the same QDQ graph from the FP32 graph and the recorded factors.
    rebuilt = graph.parent / "rebuilt.qdq.onnx"
    quantize = runner.invoke(
        app, ["quantize", str(graph), str(graph.parent / "max-all-smooth0.5.calib.json"), "-o", str(rebuilt)]
    )
    assert quantize.exit_code == 0, quantize.output
    assert rebuilt.read_bytes() == (graph.parent / "max-all-smooth0.5.qdq.onnx").read_bytes()
    again = runner.invoke(app, ["calibrate", str(graph), "--smooth", "0.5", *common])
    assert again.exit_code == 0
    assert json.loads((graph.parent / "max-all-smooth0.5.calib.json").read_text()) == document
    bad = runner.invoke(app, ["calibrate", str(graph), "--smooth", "1.5", *common])
    assert bad.exit_code == 2 and "alpha" in bad.stderr


def test_smoothed_graph_is_rewritten_when_its_file_and_record_disagree(outlier, split, tmp_path):
    from qtool.graph import model_identity
    from qtool.quantization.graphs import smoothed_graph

    graph = tmp_path / "fp32.onnx"
    graph.write_bytes(outlier["path"].read_bytes())
    (tmp_path / "tokenizer").symlink_to(outlier["path"].parent / "tokenizer")
    tokenizer = load_tokenizer(tmp_path / "tokenizer")
    stats_a = collect(graph, split, tokenizer, CollectConfig(samples=16, batch_size=8))
    stats_b = collect(graph, split, tokenizer, CollectConfig(samples=32, batch_size=8))
    target, factors_a = smoothed_graph(graph, stats_a, 0.5)
    graph_a = target.read_bytes()
    same_target, factors_b = smoothed_graph(graph, stats_b, 0.5)
    assert same_target == target and factors_b != factors_a
    assert stats_b.content_sha256[:16] in model_identity(target)["transform"]
    target.write_bytes(graph_a)  # a graph from other statistics behind B's record (an interrupted or racing run)
    _, again = smoothed_graph(graph, stats_b, 0.5)
    assert again == factors_b and stats_b.content_sha256[:16] in model_identity(target)["transform"]


def test_gemm_inputs_scope_with_smoothing_quantizes_only_the_gemm_edges(outlier, split, tmp_path):
    from qtool.quantization.calibration import CalibrateConfig
    from qtool.quantization.graphs import calibrated_model
    from qtool.stages.calibrate import calibrate_model

    graph = tmp_path / "fp32.onnx"
    graph.write_bytes(outlier["path"].read_bytes())
    (tmp_path / "tokenizer").symlink_to(outlier["path"].parent / "tokenizer")
    config = CalibrateConfig(scope="gemm-inputs", smooth=0.5)
    document, _ = calibrate_model(graph, outlier["stats"], config, lambda path: _collect(path, split))
    model = calibrated_model(graph, document)
    producers = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    activation_dqs = [
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and producers.get(n.input[0])
        and producers[n.input[0]].op_type == "QuantizeLinear"
    ]
    read_by = {r.op_type for dq in activation_dqs for r in readers[dq.output[0]]}
    assert read_by == {"MatMul", "Gemm", "Gather"}  # Gather: the pooler's token slice of the last LayerNorm
    layer_norm_readers = {
        r.op_type for n in model.graph.node if n.op_type == "LayerNormalization" for r in readers[n.output[0]]
    }
    assert "Mul" in layer_norm_readers  # the residual branch undoes the smoothing on the float LayerNorm output
