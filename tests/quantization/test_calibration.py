from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from qtool.analysis import CollectConfig, collect, point_reports
from qtool.calibrators.methods import PEG_ROLES
from qtool.cli import app
from qtool.data import make_batches, tokenize_part
from qtool.defaults import PEG_AUTO_MAX_GROUPS
from qtool.errors import QtoolError, api_spelling
from qtool.fileio import dumps_stable
from qtool.graph import graph_metadata
from qtool.models.resolve import load_tokenizer
from qtool.quantization.calibration import CalibrateConfig, calibrate
from qtool.quantization.graphs import write_calibrated_graph
from qtool.runners import OrtRunner
from tests.helpers.models import SCALED_HIDDEN as HIDDEN
from tests.helpers.models import build_bert_classifier, export_tiny
from tests.helpers.reference_bert import bert_forward

runner = CliRunner()


def _fake_quant(x: np.ndarray, scale, axis_scales=None, top: int = 127) -> np.ndarray:
    scale = np.float32(scale) if axis_scales is None else axis_scales
    return (np.clip(np.rint(x / scale), -top - 1, top) * scale).astype(np.float32)


def _reference_hooks(calibration):
    document = calibration.to_json()
    tensors = document["tensors"]

    def activation(name: str, x: np.ndarray) -> np.ndarray:
        entry = tensors.get(name)
        if entry is None:
            return x
        if not entry.get("groups"):
            return _fake_quant(x, entry["scale"])
        out = np.empty_like(x)
        for group in entry["groups"]:
            channels = np.asarray(group["channels"])
            out[..., channels] = _fake_quant(x[..., channels], group["scale"])
        return out

    def weight(name: str, w: np.ndarray) -> np.ndarray:
        if name.startswith("bert.embeddings.") and not document["embedding_tables_quantized"]:
            return w
        top = 63 if document.get("weight_bits") == 7 and not name.startswith("bert.embeddings.") else 127
        if document["weights"] == "per-tensor":
            amax = np.abs(w).max()
        elif name.startswith("bert.embeddings."):  # tables [rows, hidden]: one scale per hidden channel
            amax = np.abs(w).max(axis=0, keepdims=True)
        else:  # torch layout [out, in]: one scale per output channel
            amax = np.abs(w).max(axis=1, keepdims=True)
        scales = (np.maximum(amax, 1e-12) / top).astype(np.float32)
        return _fake_quant(w, None, scales, top)

    return activation, weight


def _batches(scaled_model, count=3):
    tokenizer = load_tokenizer(scaled_model["graph"].parent / "tokenizer")
    part = tokenize_part(tokenizer, scaled_model["split"].parts["eval"][:40], 128)
    return make_batches(part, 8)[:count]


def assert_matches_reference(scaled_model, graph_path, activation, weight, float_residuals=False):
    """ONNX Runtime's QDQ graph against the NumPy fake-quantized model, point by point.

    At every quantization point the float tensor ONNX Runtime computed must match NumPy's to float
    tolerance; NumPy then quantizes ONNX Runtime's tensor, so that a value lying on a rounding
    boundary (one ulp apart between the two) cannot flip a step and drift the rest of the network.
    """
    points = scaled_model["stats"].points
    model = onnx.load(str(graph_path))
    for tensor in dict.fromkeys(p.tensor for p in points):
        model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options)
    names = [o.name for o in session.get_outputs()]
    by_name = {p.name: p.tensor for p in points}
    for batch in _batches(scaled_model):
        outputs = dict(zip(names, session.run(names, batch.feeds), strict=True))

        def forced(name, x, outputs=outputs):
            computed = outputs[by_name[name]]
            np.testing.assert_allclose(computed, x, rtol=1e-4, atol=1e-4 * float(np.abs(x).max()) + 1e-6, err_msg=name)
            return activation(name, computed)

        expected = bert_forward(
            scaled_model["state"], scaled_model["model"].config, batch.feeds, forced, weight, float_residuals
        )
        np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-4, atol=1e-5)
    return True


RECIPES = {
    "peg-k3-sorted-gathered": (CalibrateConfig(method="peg", groups=3), "gathered"),
    "peg-k5-equal-contiguous-gathered": (
        CalibrateConfig(method="peg", groups=5, grouping="equal", permute=False),
        "gathered",
    ),
    "peg-k3-gemm-inputs-scope-gathered": (CalibrateConfig(method="peg", groups=3, scope="gemm-inputs"), "gathered"),
    "max": CalibrateConfig(),
    "percentile": CalibrateConfig(method="percentile", p=99.9),
    "peg-k3-sorted": CalibrateConfig(method="peg", groups=3),
    "peg-k3-contiguous": CalibrateConfig(method="peg", groups=3, permute=False),
    "peg-auto": CalibrateConfig(method="peg", groups="auto"),
    "peg-k3-equal-sorted": CalibrateConfig(method="peg", groups=3, grouping="equal"),
    "peg-k5-equal-contiguous": CalibrateConfig(method="peg", groups=5, grouping="equal", permute=False),
    "gemm-scope": CalibrateConfig(scope="gemm"),
    "gemm-inputs-scope": CalibrateConfig(scope="gemm-inputs"),
    "peg-k3-gemm-inputs-scope": CalibrateConfig(method="peg", groups=3, scope="gemm-inputs"),
    "per-tensor-weights": CalibrateConfig(weights="per-tensor"),
    "seven-bit-weights": CalibrateConfig(scope="all", weight_bits=7),
    "seven-bit-per-tensor-weights": CalibrateConfig(method="percentile", p=99.9, weights="per-tensor", weight_bits=7),
    "mixed-paper": CalibrateConfig(mixed_precision="paper"),
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_qdq_graph_equals_numpy_fake_quantization(recipe, scaled_model, tmp_path):
    config, peg_layout = RECIPES[recipe] if isinstance(RECIPES[recipe], tuple) else (RECIPES[recipe], "scaled")
    document = calibrate(scaled_model["stats"], config)
    graph = write_calibrated_graph(scaled_model["graph"], document, tmp_path / "model.qdq.onnx", peg_layout)
    activation, weight = _reference_hooks(document)
    assert_matches_reference(scaled_model, graph, activation, weight, document.scope == "gemm-inputs")
    with OrtRunner(graph) as optimized, OrtRunner(scaled_model["graph"]) as fp32:
        for batch in _batches(scaled_model):
            quantized, unquantized = optimized.infer(batch.feeds)["logits"], fp32.infer(batch.feeds)["logits"]
            assert np.abs(quantized - unquantized).max() > 1e-4  # quantization really happened


def _folded_weight_hook(calibration):
    """The reference's weights for `--weights folded`: a projection that reads a PEG point has each
    input channel's column (torch layout [out, in]) multiplied by its group scale, is quantized per
    output channel, and divided back, so that NumPy's x_q @ W.T is the graph's codes @ folded W."""
    tensors = calibration.to_json()["tensors"]
    _, per_channel = _reference_hooks(calibration)
    roles = {"attention.self.query": None, "attention.self.key": None, "attention.self.value": None}
    roles |= {"attention.output.dense": "attention.context", "intermediate.dense": "attention.layernorm"}

    def read_point(name: str) -> str | None:
        parts = name.split(".")
        if not name.startswith("bert.encoder.layer.") or ".".join(parts[4:-1]) not in roles:
            return None
        layer, point = int(parts[3]), roles[".".join(parts[4:-1])]
        if point is None:  # Q, K and V read the previous LayerNorm's output
            return "embeddings.output" if layer == 0 else f"layer.{layer - 1}.ffn.layernorm"
        return f"layer.{layer}.{point}"

    top = 2 ** (calibration.weight_bits - 1) - 1

    def weight(name: str, w: np.ndarray) -> np.ndarray:
        groups = (tensors.get(read_point(name)) or {}).get("groups") or []
        if len(groups) < 2:
            return per_channel(name, w)
        scales = np.empty(w.shape[1], np.float32)
        for group in groups:
            scales[np.asarray(group["channels"])] = np.float32(group["scale"])
        folded = w * scales[None, :]
        folded_scales = (np.maximum(np.abs(folded).max(axis=1, keepdims=True), 1e-12) / top).astype(np.float32)
        return (_fake_quant(folded, None, folded_scales, top) / scales[None, :]).astype(np.float32)

    return weight


@pytest.mark.parametrize(
    "config",
    [
        CalibrateConfig(method="peg", groups=3),
        CalibrateConfig(method="peg", groups=3, permute=False),
        CalibrateConfig(method="peg", groups=5, grouping="equal", permute=False),
        CalibrateConfig(method="peg", groups=3, weight_bits=7),
    ],
    ids=["k3-optimal-sorted", "k3-optimal-contiguous", "k5-equal-contiguous", "k3-seven-bit"],
)
def test_folded_weights_equal_the_numpy_reference(config, scaled_model, tmp_path):
    folded = calibrate(scaled_model["stats"], replace(config, weights="folded"))
    graph = write_calibrated_graph(scaled_model["graph"], folded, tmp_path / "folded.qdq.onnx", "gathered")
    assert graph_metadata(graph)["peg_form"] == "folded"  # one layout, whatever --peg-layout says
    built = runner.invoke(app, ["build", str(graph), "--backend", "trt"])  # no TensorRT here: fails later
    assert "--peg-layout" not in built.stderr  # per-tensor activation scales: TensorRT's layout as it is
    activation, _ = _reference_hooks(folded)
    assert_matches_reference(scaled_model, graph, activation, _folded_weight_hook(folded))
    split = write_calibrated_graph(
        scaled_model["graph"], calibrate(scaled_model["stats"], config), tmp_path / "split.onnx"
    )
    with OrtRunner(graph) as one, OrtRunner(split) as exact:
        batch = _batches(scaled_model, count=1)[0]
        assert np.abs(one.infer(batch.feeds)["logits"] - exact.infer(batch.feeds)["logits"]).max() > 0  # weights differ


def test_weight_bits_name_the_recipe_and_are_checked(tmp_path):
    """7-bit weights are another recipe (`-w7`); only 8 and 7 bits exist, refused on one line otherwise."""
    assert CalibrateConfig(scope="gemm-inputs", weight_bits=7).recipe_name() == "max-gemm-inputs-w7"
    assert CalibrateConfig(method="peg", weights="folded", weight_bits=7).recipe_name() == "peg-k4-all-wfolded-w7"
    assert CalibrateConfig().recipe_name() == "max-all"
    for bad in (6, 9, True):
        with pytest.raises(QtoolError, match=api_spelling("--weight-bits must be one of 8, 7")):
            CalibrateConfig(weight_bits=bad).validate()
    result = runner.invoke(app, ["calibrate", str(tmp_path / "missing.onnx"), "--weight-bits", "9"])
    assert result.exit_code == 2 and "--weight-bits must be one of 8, 7" in result.stderr.strip().splitlines()[-1]


def test_another_outlier_ratio_is_another_recipe():
    assert CalibrateConfig(mixed_precision="outliers").recipe_name() == "max-all-mp-outliers"
    assert CalibrateConfig(mixed_precision="outliers", outlier_ratio=8).recipe_name() == "max-all-mp-outliers8"
    for ratio in (float("nan"), float("inf"), 0.5):
        with pytest.raises(QtoolError, match=api_spelling("--outlier-ratio")):
            CalibrateConfig(mixed_precision="outliers", outlier_ratio=ratio).validate()


def test_folded_weights_need_peg_and_cannot_be_searched(tmp_path):
    with pytest.raises(QtoolError, match=api_spelling("--method peg")):
        CalibrateConfig(method="max", weights="folded").validate()
    result = runner.invoke(
        app, ["calibrate", str(tmp_path / "m.onnx"), "--method", "auto", "--base-method", "peg", "--weights", "folded"]
    )
    assert result.exit_code == 2 and "folded" in result.output and "Traceback" not in result.output


def test_peg_with_k_equal_to_width_is_per_channel_quantization(scaled_model, tmp_path):
    stats = scaled_model["stats"]
    document = calibrate(stats, CalibrateConfig(method="peg", groups=HIDDEN))
    graph = write_calibrated_graph(scaled_model["graph"], document, tmp_path / "peg.qdq.onnx")
    per_channel = {}
    for point in stats.points:
        tensor = stats.stats[point.name]
        if point.role in PEG_ROLES:
            per_channel[point.name] = (np.maximum(tensor.channel_absmax, 1e-12) / 127).astype(np.float32)
        else:
            per_channel[point.name] = np.float32(max(tensor.absmax, 1e-12) / 127)

    def activation(name, x):
        return _fake_quant(x, None, per_channel[name]) if name in per_channel else x

    _, weight = _reference_hooks(document)
    assert_matches_reference(scaled_model, graph, activation, weight)


def test_peg_with_one_group_is_per_tensor_max(scaled_model, tmp_path):
    peg = calibrate(scaled_model["stats"], CalibrateConfig(method="peg", groups=1))
    plain = calibrate(scaled_model["stats"], CalibrateConfig(method="max"))
    assert {k: v.scale for k, v in peg.tensors.items()} == {k: v.scale for k, v in plain.tensors.items()}
    graphs = [
        write_calibrated_graph(scaled_model["graph"], d, tmp_path / f"{i}.onnx") for i, d in enumerate((peg, plain))
    ]
    with OrtRunner(graphs[0]) as first, OrtRunner(graphs[1]) as second:
        for batch in _batches(scaled_model):
            np.testing.assert_array_equal(first.infer(batch.feeds)["logits"], second.infer(batch.feeds)["logits"])


def _activation_q_scales(graph_path) -> list[np.ndarray]:
    model = onnx.load(str(graph_path))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [initializers[n.input[1]] for n in model.graph.node if n.op_type == "QuantizeLinear"]


def test_qdq_structure_scope_and_per_tensor_activation_scales(scaled_model, tmp_path):
    document = calibrate(scaled_model["stats"], CalibrateConfig())
    graph_path = write_calibrated_graph(scaled_model["graph"], document, tmp_path / "max.qdq.onnx")
    model = onnx.load(str(graph_path))
    onnx.checker.check_model(model, full_check=True)
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            assert producers[node.input[1]].op_type == "DequantizeLinear", node.name
            assert producers[node.input[0]].op_type == "DequantizeLinear", node.name
        if node.op_type == "LayerNormalization":
            assert producers[node.input[0]].op_type in ("DequantizeLinear", "Gather"), node.name
    peg = calibrate(scaled_model["stats"], CalibrateConfig(method="peg", groups=4))
    peg_path = write_calibrated_graph(scaled_model["graph"], peg, tmp_path / "peg.qdq.onnx", "gathered")
    onnx.checker.check_model(onnx.load(str(peg_path)), full_check=True)
    scales = _activation_q_scales(peg_path)
    assert len(scales) > len(_activation_q_scales(graph_path))  # several groups per PEG point
    assert all(scale.ndim == 0 for scale in scales)  # TensorRT takes per-tensor activation scales only
    # The scaled layout: one QuantizeLinear per point; only the codes of the small groups are gathered.
    scaled_path = write_calibrated_graph(scaled_model["graph"], peg, tmp_path / "peg.scaled.qdq.onnx")
    scaled = onnx.load(str(scaled_path))
    onnx.checker.check_model(scaled, full_check=True)
    assert len(_activation_q_scales(scaled_path)) == len(_activation_q_scales(graph_path))
    producers = {o: n for n in scaled.graph.node for o in n.output}
    grouped = {name for name, entry in peg.tensors.items() if entry.groups and len(entry.groups) > 1}
    gathers = [n for n in scaled.graph.node if n.op_type == "Gather" and n.name.split("/")[0] in peg.tensors]
    assert gathers and all(producers[n.input[0]].op_type == "QuantizeLinear" for n in gathers)
    assert {n.name.split("/")[0] for n in gathers} <= grouped
    partials = [n for n in scaled.graph.node if n.op_type == "MatMul" and "/group" in n.name]
    assert partials
    for node in partials:  # integer GEMMs: both inputs dequantized with per-tensor activation scales
        assert [producers[name].op_type for name in node.input] == ["DequantizeLinear"] * 2, node.name
    gemm = calibrate(scaled_model["stats"], CalibrateConfig(scope="gemm"))
    assert not any(t.role in ("residual_sum", "ffn_intermediate", "embeddings_sum") for t in gemm.tensors.values())
    assert gemm.scope == "gemm" and document.scope == "all"
    inputs = calibrate(scaled_model["stats"], CalibrateConfig(scope="gemm-inputs"))
    assert set(inputs.tensors) == set(gemm.tensors) - {
        n for n, t in gemm.tensors.items() if t.role in ("attention_output", "ffn_output")
    }
    model = onnx.load(str(write_calibrated_graph(scaled_model["graph"], inputs, tmp_path / "inputs.qdq.onnx")))
    producers = {o: n for n in model.graph.node for o in n.output}
    residual_adds = 0
    for node in model.graph.node:
        read = [producers[name].op_type for name in node.input if name in producers]
        if node.op_type in ("MatMul", "Gemm"):
            assert [producers[name].op_type for name in node.input[:2]] == ["DequantizeLinear"] * 2, node.name
        if node.op_type == "Add":  # residual Adds read the LayerNorm output and the dense output in float
            assert "DequantizeLinear" not in read, node.name
            residual_adds += "LayerNormalization" in read
    assert residual_adds == sum(p.role == "residual_sum" for p in scaled_model["stats"].points)


def test_mixed_precision_and_keep_fp(scaled_model):
    stats = scaled_model["stats"]
    paper = calibrate(stats, CalibrateConfig(mixed_precision="paper"))
    assert set(paper.kept_in_float) == {
        f"layer.{i}.ffn.{r}" for i in range(2) for r in ("output", "residual_sum", "layernorm")
    }
    ratios = {r["name"]: r["absmax_over_percentile"] or 0 for r in point_reports(stats)}
    threshold = sorted(ratios.values())[-3]  # the three most extreme points
    outliers = calibrate(stats, CalibrateConfig(mixed_precision="outliers", outlier_ratio=threshold))
    assert list(outliers.kept_in_float) == [n for n, r in ratios.items() if r >= threshold]
    assert len(outliers.kept_in_float) >= 3 and "preset outliers" in outliers.kept_reason
    kept = calibrate(stats, CalibrateConfig(keep_fp=("layer.1.attention.*",)))
    assert len(kept.kept_in_float) == 8 and not any(n.startswith("layer.1.attention") for n in kept.tensors)
    with pytest.raises(QtoolError, match="matches no quantization point"):
        calibrate(stats, CalibrateConfig(keep_fp=("layer.9.*",)))


def test_calibration_file_is_byte_identical_across_runs(scaled_model, session_data, tmp_path):
    split, graph = scaled_model["split"], scaled_model["graph"]
    tokenizer = load_tokenizer(graph.parent / "tokenizer")
    first = calibrate(collect(graph, split, tokenizer, CollectConfig(samples=24)), CalibrateConfig(method="peg"))
    second = calibrate(collect(graph, split, tokenizer, CollectConfig(samples=24)), CalibrateConfig(method="peg"))
    assert dumps_stable(first.to_json()).encode() == dumps_stable(second.to_json()).encode()
    outputs = []
    for run in range(2):
        out = tmp_path / f"run{run}"
        args = [
            "calibrate",
            str(graph),
            "--data",
            str(session_data),
            "--method",
            "percentile",
            "--p",
            "99.9",
            "--samples",
            "24",
            "--no-eval",
            "--out",
            str(out),
            "--json",
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outputs.append((out / "percentile-99.9-all.calib.json").read_bytes())
    assert outputs[0] == outputs[1]
    header = json.loads(outputs[0])
    for key in ("model", "statistics_sha256", "data", "scope", "qtool_version", "method", "params"):
        assert key in header
    entry = next(iter(header["tensors"].values()))
    assert {"scale", "amax", "method", "params"} <= set(entry)


def test_calibrate_cli_evaluates_and_refuses_bad_input(scaled_model, session_data, tmp_path, embedded_tokenizer):
    graph = scaled_model["graph"]
    common = ["--data", str(session_data), "--samples", "24", "--out", str(tmp_path / "out")]
    result = runner.invoke(
        app, ["calibrate", str(graph), "--method", "peg", "-k", "3", "--json", "--limit", "40", *common]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["recipe"] == "peg-k3-all" and summary["eval_examples"] == 40
    result = runner.invoke(
        app, ["calibrate", str(graph), "--method", "peg", "-k", "auto", "--json", "--no-eval", *common]
    )
    assert result.exit_code == 0, result.output
    auto = json.loads(result.stdout)
    assert auto["recipe"] == "peg-auto-all" and auto["params"]["groups"] == "auto"
    counts = {
        len(t["groups"])
        for t in json.loads(Path(auto["calibration"]).read_text())["tensors"].values()
        if t.get("groups")
    }
    assert counts and max(counts) <= PEG_AUTO_MAX_GROUPS
    result = runner.invoke(app, ["quantize", str(graph), auto["calibration"], "-o", str(tmp_path / "auto.onnx")])
    assert result.exit_code == 0, result.output

    for bad, message in (
        (["--method", "percentile", "--p", "0"], "--p"),
        (["--method", "percentile", "--p", "101"], "--p"),
        (["--method", "peg", "--groups", "0"], "--groups"),
        (["--method", "peg", "--groups", "many"], "--groups"),
        (["--method", "kmeans"], "unknown calibration method"),
        (["--scope", "most"], "unknown scope"),
        (["--keep-fp", "nothing.*"], "matches no quantization point"),
    ):
        result = runner.invoke(app, ["calibrate", str(graph), "--no-eval", *bad, *common])
        assert result.exit_code == 2, (bad, result.output)
        assert message in result.stderr.strip().splitlines()[-1], (bad, result.stderr)

    other_folder = build_bert_classifier(
        tmp_path / "other", embedded_tokenizer, layers=2, hidden=HIDDEN, heads=4, seed=9
    )
    other = export_tiny(other_folder, session_data, tmp_path / "other-onnx" / "fp32.onnx")
    stale = scaled_model["stats"].save(tmp_path / "stale.npz")
    result = runner.invoke(app, ["calibrate", str(other), "--stats", str(stale), "--no-eval", *common])
    assert result.exit_code == 2 and "another model" in result.stderr
    calibration = tmp_path / "out" / "peg-k3-all.calib.json"
    result = runner.invoke(app, ["quantize", str(other), str(calibration), "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "calibrated for" in result.stderr
    assert not (tmp_path / "x.onnx").exists()
    result = runner.invoke(app, ["quantize", str(graph), str(calibration), "-o", str(tmp_path / "y.onnx")])
    assert result.exit_code == 0, result.output
    rebuilt, original = (
        onnx.load(str(p)).graph for p in (tmp_path / "y.onnx", tmp_path / "out" / "peg-k3-all.qdq.onnx")
    )
    assert rebuilt.SerializeToString() == original.SerializeToString()
    # The gathered layout of the same calibration, for TensorRT: per-tensor activation scales only
    # (`--peg-form` is the option's older name); TensorRT refuses the scaled layout with the command
    # that writes the other one.
    result = runner.invoke(app, ["quantize", str(graph), str(calibration), "--peg-layout", "sideways", "-o", "z.onnx"])
    assert result.exit_code == 2 and "--peg-layout" in result.stderr and not (tmp_path / "z.onnx").exists()
    gathered = tmp_path / "gathered.onnx"
    result = runner.invoke(
        app, ["quantize", str(graph), str(calibration), "--peg-form", "gathered", "-o", str(gathered)]
    )
    assert result.exit_code == 0, result.output
    assert all(scale.ndim == 0 for scale in _activation_q_scales(gathered))
    assert (
        graph_metadata(gathered)["peg_form"] == "gathered"
        and graph_metadata(tmp_path / "y.onnx")["peg_form"] == "scaled"
    )
    result = runner.invoke(app, ["build", str(tmp_path / "y.onnx"), "--backend", "trt"])
    assert result.exit_code == 2 and "--peg-layout gathered" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("recipe", ["max", "peg-k3-sorted"])
def test_recipe_accuracy_is_scored_with_reference_semantics(recipe, scaled_model, tmp_path):
    """A QDQ graph is scored with ONNX Runtime's optimizations off: the values the QDQ semantics (and
    the NumPy reference) give, whatever integer kernels a CPU would fuse. ONNX Runtime's basic level,
    which fuses none, gives the same logits bit for bit; the runtime graph is scored as deployed."""
    from qtool.deployment.backends import build_ort
    from qtool.deployment.evaluate import EvalConfig, evaluate_graph

    graph = write_calibrated_graph(
        scaled_model["graph"], calibrate(scaled_model["stats"], RECIPES[recipe]), tmp_path / "q.onnx"
    )
    logits = {}
    for level in ("disable", "basic"):
        with OrtRunner(graph, optimization_level=level) as runner:
            logits[level] = np.concatenate([runner.infer(b.feeds)["logits"] for b in _batches(scaled_model)])
    np.testing.assert_array_equal(logits["disable"], logits["basic"])
    recipe_score = evaluate_graph(graph, scaled_model["split"], EvalConfig(limit=40))
    deployed = evaluate_graph(Path(build_ort(graph)["graph"]), scaled_model["split"], EvalConfig(limit=40))
    assert (recipe_score["optimization_level"], deployed["optimization_level"]) == ("disable", "all")
    assert recipe_score["examples"] == deployed["examples"] == 40
