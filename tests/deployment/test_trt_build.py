"""TensorRT engine build: config, profiles and ONNX facts run everywhere; real engines need a GPU.

Without a GPU, the build runs against the fake TensorRT in `tests.helpers.fake_tensorrt`. Tests marked
`gpu`/`tensorrt` build and run real engines and skip cleanly where TensorRT or a CUDA device is absent.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from qtool.data.batching import INPUT_NAMES
from qtool.deployment.trt_build import (
    TrtBuildConfig,
    build_engine,
    check_network_inputs,
    profile_shapes,
    read_onnx_facts,
)
from qtool.deployment.trt_layers import engine_precision, layer_kind, layer_precision, summarize_layers
from qtool.errors import QtoolError, api_spelling
from qtool.fileio import manifest_path, sha256_file
from qtool.graph import graph_metadata
from qtool.runners.trt import TrtRunner, read_plan_manifest
from tests.helpers.fake_tensorrt import (
    BUILD_GPU,
    FAKE_PLAN_MAGIC,
    INSPECTOR_SAMPLE,
    MYELIN_SAMPLE,
    TRT_VERSION,
    fake_installer,
    fake_tensorrt,
    no_tmp_files,
    skip_without_tensorrt_gpu,
    write_tiny_graph,
)

# --- configuration and profiles -------------------------------------------------------------------


@pytest.fixture
def tiny_graph(tmp_path: Path) -> Path:
    return write_tiny_graph(tmp_path / "model" / "int8.qdq.onnx")


def test_default_config_is_valid_and_frozen():
    config = TrtBuildConfig()
    config.validate(max_positions=512)
    assert config.fp16 is True and config.tf32 is True and config.quantize_head is False
    assert config.batch == (1, 1, 32) and config.sequence == (1, 128, 128)
    with pytest.raises(AttributeError):
        config.fp16 = True


@pytest.mark.parametrize(
    ("config", "max_positions", "words"),
    [
        (TrtBuildConfig(batch=(0, 1, 8)), None, ["--batch", "0,1,8"]),
        (TrtBuildConfig(batch=(1, 16, 8)), None, ["--batch", "1,16,8"]),
        (TrtBuildConfig(sequence=(64, 32, 128)), None, ["--sequence", "64,32,128"]),
        (TrtBuildConfig(sequence=(1, 2)), None, ["--sequence", "1,2"]),
        (TrtBuildConfig(sequence=(1, 128, 1024)), 512, ["--sequence", "1024", "512"]),
        (TrtBuildConfig(workspace_mib=0), None, ["--workspace-mib", "0"]),
        (TrtBuildConfig(optimization_level=6), None, ["--optimization-level", "0 to 5", "6"]),
    ],
)
def test_config_validation_names_the_problem_on_one_line(config, max_positions, words):
    with pytest.raises(QtoolError) as raised:
        config.validate(max_positions=max_positions)
    message = raised.value.cli_message
    assert "\n" not in message and all(word in message for word in words)


def test_timing_cache_must_be_a_file(tmp_path):
    with pytest.raises(QtoolError, match=api_spelling("--timing-cache .* is a folder")):
        TrtBuildConfig(timing_cache=tmp_path).validate()


def test_profile_shapes_pairs_batch_and_sequence_per_input():
    shapes = profile_shapes(TrtBuildConfig(batch=(1, 4, 16), sequence=(8, 64, 256)), INPUT_NAMES)
    assert list(shapes) == list(INPUT_NAMES)
    for name in INPUT_NAMES:
        assert shapes[name] == ((1, 8), (4, 64), (16, 256))
    assert profile_shapes(TrtBuildConfig(), ["input_ids"]) == {"input_ids": ((1, 1), (1, 128), (32, 128))}


def test_network_inputs_must_be_batch_by_sequence_and_fit_fixed_axes():
    shapes = profile_shapes(TrtBuildConfig(), ["input_ids"])
    check_network_inputs({"input_ids": (-1, -1)}, shapes)
    with pytest.raises(QtoolError, match=r"input_ids has shape \[-1, -1, 4\]"):
        check_network_inputs({"input_ids": (-1, -1, 4)}, shapes)
    with pytest.raises(QtoolError, match=api_spelling("fixed size 64 on axis 1; set --sequence 64,64,64")):
        check_network_inputs({"input_ids": (-1, 64)}, shapes)
    check_network_inputs(
        {"input_ids": (-1, 128)}, profile_shapes(TrtBuildConfig(sequence=(128, 128, 128)), ["input_ids"])
    )


def test_onnx_facts_come_from_the_graph(tiny_graph, tmp_path):
    facts = read_onnx_facts(tiny_graph)
    assert facts.max_positions == 512 and facts.quantize_nodes == 1
    assert json.loads(facts.metadata["labels"]) == ["entailment", "not_entailment"]
    with pytest.raises(QtoolError, match="does not exist"):
        read_onnx_facts(tmp_path / "missing.onnx")


def test_config_errors_come_before_the_tensorrt_import(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    short_positions = write_tiny_graph(tmp_path / "short.onnx", positions=64)
    with pytest.raises(QtoolError, match=api_spelling("--sequence max 128 exceeds the model's 64 positions")):
        build_engine(short_positions, tmp_path / "engine.plan")


# --- building against the fake TensorRT -----------------------------------------------------------


@pytest.fixture
def use_fake(monkeypatch):
    """Install a fake TensorRT (and polygraphy) and a fixed current GPU; returns a function to swap TRT."""
    return fake_installer(monkeypatch)


def test_build_writes_plan_and_manifest_strongly_typed(use_fake, tiny_graph, tmp_path):
    trt = use_fake()
    plan = tmp_path / "engines" / "int8.plan"
    manifest = build_engine(tiny_graph, plan)
    state = trt.state
    assert state.network_flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert state.builder_flags == set() and state.memory_pool_limits == {} and state.optimization_level == 3
    assert state.profiles == [{name: ((1, 1), (1, 128), (32, 128)) for name in INPUT_NAMES}]
    assert plan.read_bytes().startswith(FAKE_PLAN_MAGIC) and no_tmp_files(plan.parent)
    assert json.loads(manifest_path(plan).read_text()) == manifest
    assert manifest["kind"] == "tensorrt-engine" and manifest["plan_sha256"] == sha256_file(plan)
    assert manifest["tensorrt_version"] == TRT_VERSION and manifest["gpu"] == BUILD_GPU.to_manifest()
    assert manifest["onnx"] == "../model/int8.qdq.onnx" and manifest["onnx_sha256"] == sha256_file(tiny_graph)
    assert manifest["precision"] == {
        "engine": "INT8 GEMMs 2/3 + FP16 + FP32",  # read from the engine inspector, not the graph
        "requested": "INT8 + FP16",
        "int8": "explicit: QuantizeLinear/DequantizeLinear pairs of the graph",
        "quantize_nodes": 1,
        "float": "fp16",
        "fp16": True,
        "strongly_typed": True,
        "builder_flags": [],
        "tf32_allowed": True,
    }
    # TensorRT parsed the FP16 TensorRT graph written beside the plan, not the graph it was given
    parsed = tmp_path / "engines" / "int8.trt.onnx"
    assert manifest["parsed_onnx"] == "int8.trt.onnx" and manifest["parsed_onnx_sha256"] == sha256_file(parsed)
    assert manifest["trt_graph"]["float"] == "fp16" and manifest["trt_graph"]["opset"] == 19
    assert graph_metadata(parsed)["runtime"] == "tensorrt"
    assert manifest["profiles"]["input_ids"] == {"min": [1, 1], "opt": [1, 128], "max": [32, 128]}
    assert json.loads(manifest["onnx_metadata"]["labels"]) == ["entailment", "not_entailment"]
    assert read_plan_manifest(plan) == manifest
    # Detailed profiling verbosity, so the inspector gives every layer's precision to the manifest.
    assert state.profiling_verbosity == trt.ProfilingVerbosity.DETAILED
    assert manifest["layer_precision"] == {
        "layers": 7,
        "by_precision": {"INT8": 2, "FP16": 2, "FP32": 1},  # compute layers; the Q layer is counted apart
        "gemms": 3,
        "gemms_int8": 2,
        "gemms_not_int8": ["/bert/pooler/dense/Gemm"],
        "fused_attention": 0,
        "reformats": 1,
        "quantize_layers": 1,
        "casts": 0,
        "detailed": True,
    }
    assert json.loads((plan.parent / "int8.plan.layers.json").read_text()) == json.loads(INSPECTOR_SAMPLE.read_text())
    assert manifest["inspector_json"] == "int8.plan.layers.json" and trt.state.inspector_context


def _split_schema(information: dict) -> dict:
    """A TensorRT 10.x inspector JSON in 11.x's schema (its migration guide): each tensor's Format/Datatype
    split into `DataType` (the short token) and `Format` (the layout), `Bindings` replaced by `I/O Tensors`."""
    short = {"Int8": "Int8", "Half": "Half", "Float": "Float", "Int64": "Int64", "FP16": "Half", "FP32": "Float"}

    def split(tensor: dict) -> dict:
        text = tensor.pop("Format/Datatype")
        token = next((short[w] for w in text.split() if w in short), text)
        return {**tensor, "DataType": token, "Format": "Row major linear format (kLINEAR)"}

    layers = [{**layer, "Inputs": [split(dict(t)) for t in layer["Inputs"]],
               "Outputs": [split(dict(t)) for t in layer["Outputs"]]} for layer in information["Layers"]]
    tensors = [{"Name": name, "IOMode": "Input", "DataType": "Int64"} for name in information.get("Bindings", [])]
    return {"Layers": layers, "I/O Tensors": tensors}


@pytest.mark.parametrize("schema", ["10.x", "11.x"])
def test_inspector_in_short_tokens_counts_int8_on_gemms_only(schema):
    """A Myelin engine's layers ("Half", "Int8", "Float" tokens; kgen/gemm layers; a fused MHA kernel; a
    second optimization profile), written by hand from trex's activation parser and the 11.x migration
    guide (no GPU here to record one): a quantize layer with an Int8 output is not an INT8 layer, a GEMM
    whose tactic is an integer one is, the fused attention kernel in FP16 is a GEMM that is not INT8,
    and profile 1's layers are not counted twice."""
    information = json.loads(MYELIN_SAMPLE.read_text())
    if schema == "11.x":
        information = _split_schema(information)
    summary = summarize_layers(json.dumps(information))
    assert summary == {
        "layers": 7,
        "by_precision": {"INT8": 2, "FP16": 2, "FP32": 1},
        "gemms": 4,
        "gemms_int8": 2,
        "gemms_not_int8": ["_gemm_mha_v2_myl0_4", "/bert/pooler/dense/Gemm_myl0_5"],
        "fused_attention": 1,
        "reformats": 1,
        "quantize_layers": 1,
        "casts": 0,
        "detailed": True,
    }
    assert engine_precision(summary, "INT8 + FP16") == "INT8 GEMMs 2/4 + FP16 + FP32"
    assert engine_precision(summarize_layers({"Layers": ["a", "b"]}), "INT8 + FP16") == "INT8 + FP16 (not inspected)"
    fp16_only = {"Layers": [layer for layer in information["Layers"] if "gemm_mha" in layer["Name"]]}
    assert engine_precision(summarize_layers(fp16_only), "FP16") == "FP16"


def test_inspector_with_layer_names_only_counts_nothing_as_known():
    names_only = {"Layers": ["/bert/encoder/layer.0/attention/self/query/MatMul", "Reformatting CopyNode 0"]}
    summary = summarize_layers(names_only)
    assert summary["by_precision"] == {"unknown": 2} and not summary["detailed"] and summary["gemms"] == 0
    assert (
        layer_precision({"LayerType": "Myelin", "Inputs": [{"Format/Datatype": "Row major linear BF16 format"}]})
        == "BF16"
    )
    assert (
        layer_precision({"Inputs": [{"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]}) == "FP16"
    )
    assert layer_precision({"LayerType": "kgen", "Inputs": [{"Format/Datatype": "BFloat16"}]}) == "BF16"
    weight_only = {"Name": "q_myl0_9", "LayerType": "gemm", "TacticName": "sm89_xmma_gemm_f16f16_f32",
                   "Inputs": [{"Format/Datatype": "Half"}, {"Name": "__mye3_weights", "Format/Datatype": "Int8"}]}
    assert layer_precision(weight_only) == "FP16" and layer_kind(weight_only) == "gemm"
    module_named_mha = {"Name": "/encoder/mha/query/MatMul", "LayerType": "CaskGemmMatrixMultiply",
                        "Inputs": [{"Format/Datatype": "Row major linear Int8 format"}]}
    assert layer_kind(module_named_mha) == "gemm" and layer_precision(module_named_mha) == "INT8"
    fused_add = {"Name": "x/DequantizeLinear_1 + x/Add_2", "LayerType": "Scale",
                 "Inputs": [{"Format/Datatype": "Row major linear Int8 format"}]}
    assert layer_kind(fused_add) == "other" and layer_kind({**fused_add, "Name": "x/QuantizeLinear"}) == "quantize"
    assert layer_precision({"LayerType": "kgen", "Inputs": [{"DataType": "Half", "Format": "Row major Int8"}]}) == "FP16"


def _dequantize_outputs_fp16(path: Path) -> bool:
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    outputs = [n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    return bool(outputs) and all(types[o] == onnx.TensorProto.FLOAT16 for o in outputs)


@pytest.mark.parametrize("version", [TRT_VERSION, "11.4.0.106"])
def test_build_is_strongly_typed_without_deprecated_precision_flags(use_fake, tiny_graph, tmp_path, version):
    """TensorRT 10 and 11 alike: STRONGLY_TYPED, no FP16/INT8 builder flag; the FP16 graph gives the precision."""
    trt = use_fake(fake_tensorrt(version=version, weakly_typed_flags=version.startswith("10.")))
    config = TrtBuildConfig(workspace_mib=512, optimization_level=5, batch=(1, 8, 8), sequence=(16, 64, 64))
    manifest = build_engine(tiny_graph, tmp_path / "int8.plan", config)
    assert trt.state.network_flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert trt.state.builder_flags == set() and trt.state.cleared_flags == set()
    assert trt.state.memory_pool_limits == {"WORKSPACE": 512 << 20} and trt.state.optimization_level == 5
    assert manifest["precision"]["builder_flags"] == [] and manifest["precision"]["requested"] == "INT8 + FP16"
    assert manifest["profiles"]["token_type_ids"] == {"min": [1, 16], "opt": [8, 64], "max": [8, 64]}
    assert _dequantize_outputs_fp16(tmp_path / "int8.trt.onnx")


def test_fp16_baseline_from_the_fp32_export_does_not_claim_int8(use_fake, tmp_path):
    import onnx

    trt = use_fake()
    source = onnx.load(str(write_tiny_graph(tmp_path / "with-qdq.onnx")))
    index = {n.output[0]: n for n in source.graph.node}
    dequantize = index["dequantized"]
    index["pooled"].input[0] = index[dequantize.input[0]].input[0]  # drop the pair: an FP32 export
    fp32 = tmp_path / "fp32.onnx"
    from qtool.graph import prune_dead_nodes

    prune_dead_nodes(source)
    onnx.save(source, str(fp32))
    manifest = build_engine(fp32, tmp_path / "fp32.fp16.plan")
    assert trt.state.builder_flags == set()
    assert manifest["precision"]["requested"] == "FP16" and manifest["precision"]["int8"] is None
    assert manifest["precision"]["engine"] == "FP16 + FP32"  # as the inspector shows it: no INT8 GEMM, a float32 softmax
    assert manifest["layer_precision"]["gemms_int8"] == 0 and manifest["layer_precision"]["quantize_layers"] == 0
    assert manifest["precision"]["quantize_nodes"] == 0 and manifest["precision"]["float"] == "fp16"
    parsed = onnx.load(str(tmp_path / "fp32.fp16.trt.onnx"))
    assert [i.type.tensor_type.elem_type for i in parsed.graph.input] == [onnx.TensorProto.INT64] * 3
    assert parsed.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {i.data_type for i in parsed.graph.initializer if i.data_type in (1, 10)} == {onnx.TensorProto.FLOAT16}


def test_fp32_build_without_tf32_records_it(use_fake, tiny_graph, tmp_path):
    trt = use_fake()
    manifest = build_engine(tiny_graph, tmp_path / "int8.fp32.plan", TrtBuildConfig(fp16=False, tf32=False))
    assert trt.state.builder_flags == set() and trt.state.cleared_flags == {"TF32"}
    precision = manifest["precision"]
    assert precision["engine"] == "INT8 GEMMs 2/3 + FP32" and precision["requested"] == "INT8 + FP32"
    assert precision["float"] == "fp32" and precision["tf32_allowed"] is False
    assert manifest["trt_graph"]["float"] == "fp32" and "fp16_converter" not in manifest["trt_graph"]


def test_trt_graph_never_overwrites_the_graph_it_was_given(use_fake, tmp_path):
    use_fake()
    graph = write_tiny_graph(tmp_path / "model.trt.onnx")
    before = graph.read_bytes()
    manifest = build_engine(graph, tmp_path / "model.plan")
    assert graph.read_bytes() == before and manifest["parsed_onnx"] == "model.plan.trt.onnx"


def test_timing_cache_is_saved_reused_and_replaced_when_stale(use_fake, tiny_graph, tmp_path, caplog):
    trt = use_fake()
    cache = tmp_path / "caches" / "timing.cache"
    config = TrtBuildConfig(timing_cache=cache)
    build_engine(tiny_graph, tmp_path / "a.plan", config)
    assert trt.state.timing_cache_loaded == b"" and cache.read_bytes() == b"+tactics"
    build_engine(tiny_graph, tmp_path / "b.plan", config)
    assert trt.state.timing_cache_loaded == b"+tactics" and cache.read_bytes() == b"+tactics+tactics"
    cache.write_bytes(b"written by another GPU")
    with caplog.at_level(logging.WARNING, logger="qtool.deployment.trt_build"):
        build_engine(tiny_graph, tmp_path / "c.plan", config)
    assert "was written by another GPU or TensorRT version" in caplog.text
    assert trt.state.timing_cache_loaded == b"" and cache.read_bytes() == b"+tactics"


def test_parse_errors_are_one_line_and_name_the_node(use_fake, tiny_graph, tmp_path):
    trt = use_fake()
    trt.state.parse_error = ("Unsupported operator\nNonZero", "/bert/encoder/NonZero_3", "NonZero")
    plan = tmp_path / "x.plan"
    with pytest.raises(QtoolError) as raised:
        build_engine(tiny_graph, plan)
    message = raised.value.cli_message
    assert "\n" not in message and "at node /bert/encoder/NonZero_3 (NonZero): Unsupported operator NonZero" in message
    assert "(and 1 more)" in message and "polygraphy inspect capability" in message
    assert not plan.exists()


def test_build_failure_reports_tensorrt_reason(use_fake, tiny_graph, tmp_path):
    trt = use_fake()
    trt.state.build_error = "Internal Error: out of memory during tactic selection"
    with pytest.raises(QtoolError, match="could not build an engine .*out of memory during tactic selection"):
        build_engine(tiny_graph, tmp_path / "x.plan")


def test_build_needs_a_gpu(use_fake, tiny_graph, tmp_path):
    use_fake(gpu=None)
    with pytest.raises(QtoolError, match="no CUDA GPU is visible"):
        build_engine(tiny_graph, tmp_path / "x.plan")


def test_fixed_sequence_graph_needs_a_matching_profile(use_fake, tmp_path):
    use_fake()
    graph = write_tiny_graph(tmp_path / "fixed.onnx", fixed_sequence=32)
    with pytest.raises(QtoolError, match=api_spelling("fixed size 32 on axis 1; set --sequence 32,32,32")):
        build_engine(graph, tmp_path / "x.plan")
    build_engine(graph, tmp_path / "x.plan", TrtBuildConfig(sequence=(32, 32, 32)))


# --- real engines: need TensorRT and a CUDA GPU ---------------------------------------------------


@pytest.fixture(scope="module")
def eval_batches(tiny_classifier, session_data) -> list[dict]:
    """Real tokenized eval batches of several shapes for the tiny classifier behind `tiny_onnx`."""
    from qtool.data import DataConfig, load_qnli, make_batches, tokenize_part
    from qtool.models.resolve import load_tokenizer

    split = load_qnli(DataConfig(source=str(session_data)))
    batches = make_batches(tokenize_part(load_tokenizer(tiny_classifier), split.part("eval"), 128), 8)
    return [batches[0].feeds, batches[len(batches) // 2].feeds, batches[-1].feeds]


def _ort_logits(onnx_path: Path, feeds: dict) -> np.ndarray:
    from qtool.runners import OrtRunner

    with OrtRunner(onnx_path) as runner:
        return runner.infer(feeds)["logits"]


@pytest.mark.gpu
@pytest.mark.tensorrt
@skip_without_tensorrt_gpu
def test_gpu_fp32_engine_matches_onnxruntime(tiny_onnx, eval_batches, tmp_path):
    onnx_path, batches = tiny_onnx, eval_batches
    plan = tmp_path / "fp32.plan"
    cache = tmp_path / "timing.cache"
    manifest = build_engine(onnx_path, plan, TrtBuildConfig(fp16=False, timing_cache=cache, batch=(1, 8, 8)))
    assert manifest["precision"]["quantize_nodes"] == 0 and cache.stat().st_size > 0
    assert manifest["precision"]["requested"] == "FP32" and manifest["layer_precision"]["gemms_int8"] == 0
    with TrtRunner(plan) as runner:
        assert runner.device_memory_bytes > 0
        for feeds in batches:
            expected = _ort_logits(onnx_path, feeds)
            # The random tiny model's logits are ~1e-2; TF32 matmuls may move them by a few per cent.
            np.testing.assert_allclose(runner.infer(feeds)["logits"], expected, atol=0.1 * np.abs(expected).max())


def _ort_qdq_graph(onnx_path: Path, batches: list[dict], target: Path) -> Path:
    """A Q/DQ graph as TensorRT takes it (symmetric INT8 on MatMul/Gemm inputs, float biases), made by ONNX Runtime."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(batches)

        def get_next(self):
            return next(self.remaining, None)

    quantize_static(
        str(onnx_path),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    return target


@pytest.mark.gpu
@pytest.mark.tensorrt
@skip_without_tensorrt_gpu
def test_gpu_qdq_engine_builds_strongly_typed_and_runs(tiny_onnx, eval_batches, tmp_path):
    onnx_path, batches = tiny_onnx, eval_batches
    qdq = _ort_qdq_graph(onnx_path, batches, tmp_path / "int8.qdq.onnx")
    plan = tmp_path / "int8.plan"
    manifest = build_engine(qdq, plan, TrtBuildConfig(batch=(1, 8, 8)))
    assert manifest["precision"]["strongly_typed"] and manifest["precision"]["quantize_nodes"] > 0
    with TrtRunner(plan) as runner:
        for feeds in batches:
            logits = runner.infer(feeds)["logits"]
            assert logits.shape == (len(feeds["input_ids"]), 2) and np.isfinite(logits).all()
            reference = _ort_logits(onnx_path, feeds)
            simulated_error = np.abs(_ort_logits(qdq, feeds) - reference).max()
            # TensorRT's INT8 engine should stray from FP32 about as far as ONNX Runtime's run of the same graph.
            assert np.abs(logits - reference).max() <= 3 * simulated_error + 0.02 * np.abs(reference).max()


def test_gpu_check_stops_with_one_line_on_a_machine_without_a_gpu(tmp_path):
    """`make gpu-check` runs benchmarks/gpu_check.py; without TensorRT or a GPU it writes nothing."""
    import subprocess

    from qtool.runners.device import current_gpu

    if importlib.util.find_spec("tensorrt") is not None and current_gpu() is not None:
        pytest.skip("a GPU with TensorRT is here: gpu-check would run for real")
    script = Path(__file__).parents[2] / "benchmarks" / "gpu_check.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "--data", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "error:" in done.stderr
    assert "TensorRT" in done.stderr or "NVIDIA GPU" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_gpu_check_adds_what_to_deploy_when_it_is_a_calibrated_configuration(tmp_path):
    import json

    script = Path(__file__).parents[2] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", script)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    folder = tmp_path / "model"
    folder.mkdir()
    core = ["max-all", "peg-k4-all"]
    assert gpu_check._with_recommendation(folder, core) == core  # no report yet
    (tmp_path / "report").mkdir()
    results = tmp_path / "report" / "results.json"
    for chosen, calibrated, expected in [
        ("max-gemm-inputs", True, [*core, "max-gemm-inputs"]),
        ("ort-dynamic", False, core),  # a peer: no calibration, no TensorRT engine of its own
        ("max-all", True, core),
    ]:
        results.write_text(json.dumps({"recommendation": {"configuration": chosen}}))
        if calibrated:
            (folder / f"{chosen}.calib.json").write_text("{}")
        assert gpu_check._with_recommendation(folder, core) == expected


def test_preflight_records_the_cuda_pieces_and_refuses_a_tensorrt_newer_than_the_driver(use_fake, tiny_graph, tmp_path,
                                                                                          monkeypatch):
    """TensorRT for CUDA 13 on a driver that supports CUDA 12.4 (the fake runtime's): one line naming both and
    the fix, before anything is built; with TensorRT for CUDA 12 the build goes on and records what it used."""
    from qtool.runners import trt as runner_module

    use_fake()
    monkeypatch.setattr(runner_module, "tensorrt_cuda_major", lambda version=None: 13)
    with pytest.raises(QtoolError) as raised:
        build_engine(tiny_graph, tmp_path / "int8.plan")
    message = raised.value.cli_message
    assert "built for CUDA 13, which needs an NVIDIA driver of R580 or newer" in message and "\n" not in message
    assert "supports CUDA 12.4" in message and "install the CUDA 12 build" in message
    assert not (tmp_path / "int8.plan").exists()
    monkeypatch.setattr(runner_module, "tensorrt_cuda_major", lambda version=None: 12)
    checked = build_engine(tiny_graph, tmp_path / "int8.plan")["preflight"]
    assert checked["tensorrt_cuda"] == 12 and checked["driver_cuda"] == "12.4" and checked["cuda_runtime"] == "12.8"
    assert checked["gpu"] == BUILD_GPU.describe() and checked["compute_capability"] == "8.6"


def test_gpu_check_verdict_lines_and_table_read_the_engines_and_both_run_orders(use_fake, tiny_graph, tmp_path):
    """The verdict of each INT8 engine from its manifest (the inspector's INT8 GEMMs, fused attention), its
    accuracy check and the two interleaved runs (forward, then reversed): the lower speed-up is reported."""
    import importlib.util

    script = Path(__file__).parents[2] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", script)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    use_fake()
    engines = {"fp16": tmp_path / "fp32.fp16.b8.plan", "max-all": tmp_path / "max-all.b8.plan"}
    for path in engines.values():
        build_engine(tiny_graph, path)

    def row(name, host, device):
        return {"name": name, "latency": {"p50_ms": host, "p99_ms": host, "throughput_per_s": 8 / host,
                                          "device": {"p50_ms": device}}, "isolated_memory": {"vram_total_bytes": 8 << 20}}

    def run(rows):
        return {"results": [{"batch": 8, "sequence_length": 128, "candidates": rows}]}

    runs = [run([row("fp16", 2.0, 1.0), row("max-all", 1.0, 0.5)]), run([row("max-all", 1.25, 0.4), row("fp16", 2.0, 1.0)])]
    checks = {"max-all": {"accuracy": 0.8, "ci95": (0.78, 0.82), "agreement": 0.995}}
    (line,) = gpu_check._verdicts(engines, runs, checks)
    assert line == ("max-all b8: build ok; INT8 GEMMs 2/3; fused attention no; accuracy 80.00 % (95 % 78.00-82.00); "
                    "argmax agreement with ONNX Runtime 99.50 %; INT8/FP16 speed-up 2.00x GPU-only, 1.60x end to end; "
                    "VRAM 8 MB")
    table = gpu_check._table(engines, runs[0], checks)
    assert len(table) == 4 and "| max-all | INT8 GEMMs 2/3 + FP16 + FP32 | 8 x 128 | 1.000 | 0.500 |" in table[3]


@pytest.mark.gpu
@pytest.mark.tensorrt
@skip_without_tensorrt_gpu
def test_gpu_engine_of_a_qtool_graph_runs_its_gemms_in_int8(scaled_model, relabelled, tmp_path):
    """qtool's own QDQ graph (max ranges on the GEMM inputs), built strongly typed: the engine inspector
    must show INT8 GEMMs, and the engine's predictions must agree with ONNX Runtime's run of the graph."""
    from qtool.data import make_batches, tokenize_part
    from qtool.quantization.calibration import CalibrateConfig, calibrate
    from qtool.quantization.graphs import write_calibrated_graph
    from qtool.runners.ort import OrtRunner

    split, tokenizer = relabelled
    calibration = calibrate(scaled_model["stats"], CalibrateConfig(method="max", scope="gemm-inputs"))
    graph = write_calibrated_graph(scaled_model["graph"], calibration, tmp_path / "max-gemm-inputs.qdq.onnx", "gathered")
    manifest = build_engine(graph, tmp_path / "int8.plan", TrtBuildConfig(batch=(1, 8, 8), sequence=(1, 128, 128)))
    layers = manifest["layer_precision"]
    assert layers["detailed"] and layers["gemms_int8"] > 0, layers
    assert manifest["precision"]["engine"].startswith("INT8 GEMMs")
    batches = make_batches(tokenize_part(tokenizer, split.parts["eval"][:64], 128), 8)
    agree = total = 0
    with TrtRunner(tmp_path / "int8.plan") as engine, OrtRunner(graph, optimization_level="disable") as reference:
        for batch in batches:
            ours, theirs = engine.infer(batch.feeds)["logits"], reference.infer(batch.feeds)["logits"]
            agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            total += len(ours)
    assert agree >= 0.95 * total, (agree, total)  # FP16 around the INT8 GEMMs moves a few near-ties


def test_the_cuda_of_tensorrt_is_the_installed_wheel_family_of_the_imported_version(monkeypatch):
    """Both tensorrt-cu12 and -cu13 installed (plain `tensorrt` pulls cu13 beside qtool[trt]'s cu12): the
    family whose version is the imported TensorRT's decides."""
    import importlib.metadata

    from qtool.runners.trt import tensorrt_cuda_major

    versions = {"tensorrt-cu12": "10.16.1.11", "tensorrt-cu13": "11.4.0.106"}

    def version(name):
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert tensorrt_cuda_major("11.4.0.106") == 13 and tensorrt_cuda_major("10.16.1.11") == 12
    assert tensorrt_cuda_major("9.0") is None
    del versions["tensorrt-cu13"]
    assert tensorrt_cuda_major("10.16.1.11") == 12 and tensorrt_cuda_major(None) == 12
