"""TensorRT backend: config, profiles, manifests and compatibility run everywhere; engines need a GPU.

Without a GPU, the build and runner code paths run against `FakeTensorRT`, a stand-in for the slice of
the TensorRT 10 Python API that qtool calls (names checked against the real bindings), and a fake of
polygraphy's CUDA buffers. Tests marked `gpu`/`tensorrt` build and run real engines and skip cleanly
where TensorRT or a CUDA device is absent.
"""

from __future__ import annotations

import enum
import importlib.util
import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from qtool.data.batching import INPUT_NAMES
from qtool.deployment import trt_build
from qtool.deployment.trt_build import (
    TrtBuildConfig,
    build_engine,
    check_network_inputs,
    profile_shapes,
    read_onnx_facts,
)
from qtool.errors import QtoolError
from qtool.fileio import manifest_path, sha256_file, write_json
from qtool.runners import device
from qtool.runners import trt as backend
from qtool.runners.device import GpuInfo
from qtool.runners.trt import (
    TrtRunner,
    check_feed_shape,
    check_plan_compatibility,
    import_tensorrt,
    read_plan_manifest,
)

BUILD_GPU = GpuInfo(compute_capability="8.6", name="NVIDIA A10", driver_version="550.54")
TRT_VERSION = "10.16.1.11"


# --- a tiny BERT-shaped graph built in code -------------------------------------------------------


def write_tiny_graph(path: Path, positions: int = 512, fixed_sequence: int | None = None) -> Path:
    """[batch, sequence] int64 inputs, a position table, one Q/DQ pair and [batch, 2] logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sequence = fixed_sequence or "sequence"
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", sequence]) for name in INPUT_NAMES]
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])
    initializers = [
        numpy_helper.from_array(
            rng.standard_normal((positions, 4)).astype(np.float32), "bert.embeddings.position_embeddings.weight"
        ),
        numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
        numpy_helper.from_array(np.array(0, np.int8), "zero_point"),
        numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "classifier.weight"),
    ]
    nodes = [
        helper.make_node("Gather", ["bert.embeddings.position_embeddings.weight", "input_ids"], ["embedded"]),
        helper.make_node("QuantizeLinear", ["embedded", "scale", "zero_point"], ["quantized"]),
        helper.make_node("DequantizeLinear", ["quantized", "scale", "zero_point"], ["dequantized"]),
        helper.make_node("ReduceMean", ["dequantized"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "classifier.weight"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "tiny", inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="qtool.labels", value=json.dumps(["entailment", "not_entailment"]))
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_graph(tmp_path: Path) -> Path:
    return write_tiny_graph(tmp_path / "model" / "int8.qdq.onnx")


# --- a fake of the TensorRT 10 Python API surface qtool uses --------------------------------------


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class DataType(enum.IntEnum):
    FLOAT = 0
    INT32 = 3
    INT64 = 10


NUMPY_TYPES = {DataType.FLOAT: np.float32, DataType.INT32: np.int32, DataType.INT64: np.int64}
FAKE_PLAN_MAGIC = b"FAKEPLAN"


def fake_tensorrt(version: str = TRT_VERSION, weakly_typed_flags: bool = True) -> types.ModuleType:
    """A `tensorrt` module: builder, parser, runtime and engine, recording what qtool asks of them."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    state = types.SimpleNamespace(
        parse_error=None, build_error=None, timing_cache_loaded=None, builder_flags=set(), profiles=[]
    )
    trt.state = state

    class ILogger:
        def __init__(self) -> None:
            pass

    ILogger.Severity = Severity
    trt.ILogger = ILogger
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1})
    flags = {"FP16": 0, "INT8": 1, "TF32": 7} if weakly_typed_flags else {"TF32": 7}
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.nptype = lambda data_type: NUMPY_TYPES[data_type]

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int) -> None:
            state.network_flags = flags
            self.inputs: list[Tensor] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> Tensor:
            return self.inputs[index]

    class ParserError:
        def __init__(self, description: str, node: str, operator: str) -> None:
            self._description, self._node, self._operator = description, node, operator

        def desc(self) -> str:
            return self._description

        def node_name(self) -> str:
            return self._node

        def node_operator(self) -> str:
            return self._operator

    class OnnxParser:
        def __init__(self, network: Network, logger) -> None:
            self.network, self.errors = network, []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> ParserError:
            return self.errors[index]

        def parse_from_file(self, path: str) -> bool:
            import onnx

            if state.parse_error:
                self.errors = [ParserError(*state.parse_error), ParserError("second", "n2", "Op")]
                return False
            graph = onnx.load(path, load_external_data=False).graph
            for graph_input in graph.input:
                dims = tuple(d.dim_value if d.dim_value else -1 for d in graph_input.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(graph_input.name, dims))
            return True

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return self.data

    class OptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict = {}

        def set_shape(self, name, minimum, optimum, maximum) -> None:
            self.shapes[name] = (tuple(minimum), tuple(optimum), tuple(maximum))

    class BuilderConfig:
        builder_optimization_level = 3

        def __init__(self) -> None:
            self.cache: TimingCache | None = None
            state.memory_pool_limits = {}

        def set_flag(self, flag) -> None:
            state.builder_flags.add(flag.name)

        def set_memory_pool_limit(self, pool, size: int) -> None:
            state.memory_pool_limits[pool.name] = size

        def add_optimization_profile(self, profile: OptimizationProfile) -> int:
            state.profiles.append(profile.shapes)
            return len(state.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if cache.data == b"written by another GPU":
                return False
            state.timing_cache_loaded, self.cache = cache.data, cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return TimingCache(self.cache.data + b"+tactics")

    class Builder:
        def __init__(self, logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig):
            state.optimization_level = config.builder_optimization_level
            if state.build_error:
                self.logger.log(Severity.ERROR, state.build_error)
                return None
            plan = {"profile": {k: [list(s) for s in v] for k, v in state.profiles[0].items()}}
            return FAKE_PLAN_MAGIC + json.dumps(plan).encode()

    class ExecutionContext:
        def __init__(self) -> None:
            self.shapes: dict = {}
            self.addresses: dict = {}

        def set_input_shape(self, name: str, shape) -> bool:
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (self.shapes["input_ids"][0], 2)

        def set_tensor_address(self, name: str, address: int) -> None:
            self.addresses[name] = address

        def execute_async_v3(self, stream_handle: int) -> bool:
            ids = FAKE_DEVICE_MEMORY[self.addresses["input_ids"]]
            mask = FAKE_DEVICE_MEMORY[self.addresses["attention_mask"]]
            logits = FAKE_DEVICE_MEMORY[self.addresses["logits"]]
            logits[:, 0], logits[:, 1] = ids.sum(axis=1), mask.sum(axis=1)
            return True

    class Engine:
        device_memory_size_v2 = 12345

        def __init__(self, plan: dict) -> None:
            self.profile = plan["profile"]
            self.names = [*self.profile, "logits"]

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, index: int) -> str:
            return self.names[index]

        def get_tensor_mode(self, name: str):
            return trt.TensorIOMode.INPUT if name in self.profile else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> DataType:
            return DataType.INT64 if name in self.profile else DataType.FLOAT

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
            return self.profile[name]

        def create_execution_context(self) -> ExecutionContext:
            return ExecutionContext()

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            if not data.startswith(FAKE_PLAN_MAGIC):
                self.logger.log(Severity.ERROR, "Serialization assertion magicTagRead == kMAGIC_TAG failed")
                return None
            return Engine(json.loads(data[len(FAKE_PLAN_MAGIC) :]))

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


FAKE_DEVICE_MEMORY: dict[int, np.ndarray] = {}


def fake_polygraphy() -> types.ModuleType:
    """polygraphy.cuda's DeviceArray and Stream, with 'device memory' kept in FAKE_DEVICE_MEMORY."""
    cuda = types.ModuleType("polygraphy.cuda")
    addresses = iter(range(1000, 10**6))

    class DeviceArray:
        def __init__(self, shape=None, dtype=None) -> None:
            self.dtype, self.ptr = np.dtype(dtype), 0
            self.resize(shape)

        def resize(self, shape):
            self.free()
            self.ptr = next(addresses)
            FAKE_DEVICE_MEMORY[self.ptr] = np.zeros(shape, self.dtype)
            return self

        def copy_from(self, host, stream=None):
            FAKE_DEVICE_MEMORY[self.ptr][...] = host
            return self

        def copy_to(self, host, stream=None):
            host[...] = FAKE_DEVICE_MEMORY[self.ptr]
            return host

        def free(self) -> None:
            FAKE_DEVICE_MEMORY.pop(self.ptr, None)
            self.ptr = 0

    class Stream:
        ptr = 42

        def synchronize(self) -> None:
            pass

        def free(self) -> None:
            pass

    cuda.DeviceArray, cuda.Stream = DeviceArray, Stream
    package = types.ModuleType("polygraphy")
    package.cuda = cuda
    exception = types.ModuleType("polygraphy.exception")
    exception.PolygraphyException = type("PolygraphyException", (Exception,), {})
    package.exception = exception
    return package


@pytest.fixture
def use_fake(monkeypatch):
    """Install a fake TensorRT (and polygraphy) and a fixed current GPU; returns a function to swap TRT."""

    def install(trt: types.ModuleType | None = None, gpu: GpuInfo | None = BUILD_GPU) -> types.ModuleType:
        trt = trt or fake_tensorrt()
        polygraphy = fake_polygraphy()
        FAKE_DEVICE_MEMORY.clear()
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setitem(sys.modules, "polygraphy", polygraphy)
        monkeypatch.setitem(sys.modules, "polygraphy.cuda", polygraphy.cuda)
        monkeypatch.setitem(sys.modules, "polygraphy.exception", polygraphy.exception)
        for module in (backend, trt_build):  # the runner checks the GPU, and so does the build
            monkeypatch.setattr(module, "current_gpu", lambda: gpu)
        return trt

    return install


def no_tmp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# --- configuration and profiles -------------------------------------------------------------------


def test_default_config_is_valid_and_frozen():
    config = TrtBuildConfig()
    config.validate(max_positions=512)
    assert config.fp16 is False and config.batch == (1, 1, 32) and config.sequence == (1, 128, 128)
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
    message = str(raised.value)
    assert "\n" not in message and all(word in message for word in words)


def test_timing_cache_must_be_a_file(tmp_path):
    with pytest.raises(QtoolError, match="--timing-cache .* is a folder"):
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
    with pytest.raises(QtoolError, match="fixed size 64 on axis 1; set --sequence 64,64,64"):
        check_network_inputs({"input_ids": (-1, 64)}, shapes)
    check_network_inputs(
        {"input_ids": (-1, 128)}, profile_shapes(TrtBuildConfig(sequence=(128, 128, 128)), ["input_ids"])
    )


def test_feed_shapes_must_lie_inside_the_profile():
    profile = ((1, 1), (1, 128), (32, 128))
    check_feed_shape("input_ids", (32, 128), profile)
    check_feed_shape("input_ids", (1, 1), profile)
    for shape in [(33, 10), (2, 129), (0, 5), (4,)]:
        with pytest.raises(QtoolError, match=r"input_ids has shape .* engine accepts \[1, 1\] to \[32, 128\]"):
            check_feed_shape("input_ids", shape, profile)


def test_onnx_facts_come_from_the_graph(tiny_graph, tmp_path):
    facts = read_onnx_facts(tiny_graph)
    assert facts.max_positions == 512 and facts.quantize_nodes == 1
    assert json.loads(facts.metadata["labels"]) == ["entailment", "not_entailment"]
    with pytest.raises(QtoolError, match="does not exist"):
        read_onnx_facts(tmp_path / "missing.onnx")


# --- TensorRT missing or unusable -----------------------------------------------------------------


def test_missing_tensorrt_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(QtoolError, match=r"^TensorRT is not installed; pip install 'qtool\[trt\]'"):
        import_tensorrt()


def test_broken_tensorrt_install_is_one_line(monkeypatch):
    class BrokenLibraries:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorrt":
                raise ImportError("libnvinfer.so.10: cannot open shared object file:\nNo such file or directory")

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(sys, "meta_path", [BrokenLibraries(), *sys.meta_path])
    with pytest.raises(QtoolError) as raised:
        import_tensorrt()
    assert "cannot be loaded (libnvinfer.so.10" in str(raised.value) and "\n" not in str(raised.value)


def test_old_tensorrt_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version="8.6.1"))
    with pytest.raises(QtoolError, match="TensorRT 8.6.1 is too old; qtool needs TensorRT 10"):
        import_tensorrt()


def test_build_and_run_without_tensorrt_fail_cleanly(monkeypatch, tiny_graph, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    plan = tmp_path / "engine.plan"
    with pytest.raises(QtoolError, match="TensorRT is not installed"):
        build_engine(tiny_graph, plan)
    assert not plan.exists() and not manifest_path(plan).exists()
    plan.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(QtoolError, match="TensorRT is not installed"), TrtRunner(plan):
        pass


def test_config_errors_come_before_the_tensorrt_import(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    short_positions = write_tiny_graph(tmp_path / "short.onnx", positions=64)
    with pytest.raises(QtoolError, match="--sequence max 128 exceeds the model's 64 positions"):
        build_engine(short_positions, tmp_path / "engine.plan")


# --- plan files, manifests and compatibility ------------------------------------------------------


def engine_manifest(**changes) -> dict:
    manifest = {
        "kind": "tensorrt-engine",
        "plan": "int8.plan",
        "tensorrt_version": TRT_VERSION,
        "gpu": BUILD_GPU.to_manifest(),
    }
    return {**manifest, **changes}


def test_compatible_plan_passes_without_warnings():
    assert check_plan_compatibility(engine_manifest(), TRT_VERSION, BUILD_GPU) == []


def test_other_tensorrt_version_names_both():
    with pytest.raises(QtoolError) as raised:
        check_plan_compatibility(engine_manifest(), "10.3.0", BUILD_GPU)
    message = str(raised.value)
    assert "int8.plan was built with TensorRT 10.16.1.11 but this machine has TensorRT 10.3.0" in message
    assert "rebuild" in message and "\n" not in message


def test_other_gpu_architecture_names_both():
    here = GpuInfo(compute_capability="7.5", name="Tesla T4")
    with pytest.raises(QtoolError) as raised:
        check_plan_compatibility(engine_manifest(), TRT_VERSION, here)
    message = str(raised.value)
    assert "NVIDIA A10 (compute capability 8.6)" in message and "Tesla T4 (compute capability 7.5)" in message


def test_same_architecture_other_board_only_warns():
    here = GpuInfo(compute_capability="8.6", name="NVIDIA RTX A4000")
    (warning,) = check_plan_compatibility(engine_manifest(), TRT_VERSION, here)
    assert "NVIDIA A10" in warning and "NVIDIA RTX A4000" in warning


def test_no_gpu_here_or_unrecorded_facts():
    with pytest.raises(QtoolError, match=r"needs a CUDA GPU \(NVIDIA A10 \(compute capability 8.6\)\) but none"):
        check_plan_compatibility(engine_manifest(), TRT_VERSION, None)
    warnings = check_plan_compatibility(engine_manifest(tensorrt_version=None, gpu=None), TRT_VERSION, BUILD_GPU)
    assert len(warnings) == 2


def test_plan_files_that_are_not_engines(tmp_path, tiny_graph):
    with pytest.raises(QtoolError, match="does not exist; build the engine first"):
        read_plan_manifest(tmp_path / "missing.plan")
    with pytest.raises(QtoolError, match="is not a TensorRT engine but an ONNX model"):
        read_plan_manifest(tiny_graph)
    empty = tmp_path / "empty.plan"
    empty.touch()
    with pytest.raises(QtoolError, match=r"is not a TensorRT engine \(the file is empty\)"):
        read_plan_manifest(empty)
    foreign = tmp_path / "model.bin"
    foreign.write_bytes(b"\x08\x07 not an engine")
    write_json(manifest_path(foreign), {"onnx": "model.bin", "opset": 17})
    with pytest.raises(QtoolError, match=r"model.bin is not a TensorRT engine \(its manifest"):
        read_plan_manifest(foreign)


def test_plan_manifest_is_read_and_tied_to_the_plan(tmp_path):
    plan = tmp_path / "int8.plan"
    plan.write_bytes(b"engine bytes")
    assert read_plan_manifest(plan) is None
    write_json(manifest_path(plan), engine_manifest(plan_sha256=sha256_file(plan)))
    assert read_plan_manifest(plan)["tensorrt_version"] == TRT_VERSION
    plan.write_bytes(b"another engine")
    with pytest.raises(QtoolError, match="changed after its manifest"):
        read_plan_manifest(plan)


def test_gpu_info_round_trips_through_manifests():
    assert GpuInfo.from_manifest(BUILD_GPU.to_manifest()) == BUILD_GPU
    assert GpuInfo.from_manifest(None) is None and GpuInfo.from_manifest({"name": "x"}) is None
    assert GpuInfo("9.0").describe() == "a GPU of compute capability 9.0"


def test_no_cuda_runtime_means_no_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "polygraphy", None)
    assert device.current_gpu() is None


# --- building and running against the fake TensorRT -----------------------------------------------


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
    assert manifest["precision"]["strongly_typed"] and manifest["precision"]["quantize_nodes"] == 1
    assert manifest["profiles"]["input_ids"] == {"min": [1, 1], "opt": [1, 128], "max": [32, 128]}
    assert json.loads(manifest["onnx_metadata"]["labels"]) == ["entailment", "not_entailment"]
    assert read_plan_manifest(plan) == manifest


def test_fp16_build_is_weakly_typed_with_fp16_and_int8_flags(use_fake, tiny_graph, tmp_path):
    trt = use_fake()
    config = TrtBuildConfig(fp16=True, workspace_mib=512, optimization_level=5, batch=(1, 8, 8), sequence=(16, 64, 64))
    manifest = build_engine(tiny_graph, tmp_path / "fp16.plan", config)
    assert trt.state.network_flags == 0 and trt.state.builder_flags == {"FP16", "INT8"}
    assert trt.state.memory_pool_limits == {"WORKSPACE": 512 << 20} and trt.state.optimization_level == 5
    assert manifest["precision"]["builder_flags"] == ["FP16", "INT8"]
    assert manifest["profiles"]["token_type_ids"] == {"min": [1, 16], "opt": [8, 64], "max": [8, 64]}


def test_fp16_on_tensorrt_11_is_refused(use_fake, tiny_graph, tmp_path):
    use_fake(fake_tensorrt(version="11.4.0.106", weakly_typed_flags=False))
    plan = tmp_path / "fp16.plan"
    with pytest.raises(QtoolError, match="--fp16 needs TensorRT 10; TensorRT 11.4.0.106 takes precision only"):
        build_engine(tiny_graph, plan, TrtBuildConfig(fp16=True))
    assert not plan.exists()


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
    message = str(raised.value)
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
    with pytest.raises(QtoolError, match="fixed size 32 on axis 1; set --sequence 32,32,32"):
        build_engine(graph, tmp_path / "x.plan")
    build_engine(graph, tmp_path / "x.plan", TrtBuildConfig(sequence=(32, 32, 32)))


def test_runner_binds_casts_and_frees_buffers(use_fake, tiny_graph, tmp_path):
    use_fake()
    plan = tmp_path / "int8.plan"
    build_engine(tiny_graph, plan, TrtBuildConfig(batch=(1, 2, 4), sequence=(1, 8, 16)))
    rng = np.random.default_rng(0)
    with TrtRunner(plan) as runner:
        assert runner.input_names() == list(INPUT_NAMES) and runner.device_memory_bytes == 12345
        assert runner.manifest["plan_sha256"] == sha256_file(plan)
        for batch, sequence in [(1, 1), (4, 16), (3, 7), (4, 16)]:
            feeds = {name: rng.integers(0, 50, (batch, sequence)).astype(np.int32) for name in INPUT_NAMES}
            logits = runner.infer(feeds)["logits"]
            assert logits.shape == (batch, 2) and logits.dtype == np.float32
            np.testing.assert_array_equal(logits[:, 0], feeds["input_ids"].sum(axis=1))
            np.testing.assert_array_equal(logits[:, 1], feeds["attention_mask"].sum(axis=1))
        too_long = {name: np.ones((1, 17), np.int64) for name in INPUT_NAMES}
        with pytest.raises(QtoolError, match=r"input_ids has shape \[1, 17\] but the engine accepts"):
            runner.infer(too_long)
    assert FAKE_DEVICE_MEMORY == {}


def test_runner_refuses_random_bytes(use_fake, tmp_path):
    use_fake()
    plan = tmp_path / "random.plan"
    plan.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(QtoolError) as raised, TrtRunner(plan):
        pass
    message = str(raised.value)
    assert message.startswith(f"{plan} is not a TensorRT engine") and "magicTagRead" in message
    assert FAKE_DEVICE_MEMORY == {}


def test_runner_refuses_plans_from_another_tensorrt_or_gpu(use_fake, tiny_graph, tmp_path):
    use_fake()
    plan = tmp_path / "int8.plan"
    build_engine(tiny_graph, plan)
    use_fake(fake_tensorrt(version="10.3.0.26"))
    with pytest.raises(QtoolError, match="built with TensorRT 10.16.1.11 but this machine has TensorRT 10.3.0.26"):
        with TrtRunner(plan):
            pass
    use_fake(gpu=GpuInfo(compute_capability="8.9", name="NVIDIA L4"))
    with pytest.raises(QtoolError, match=r"built for NVIDIA A10 .* this machine has NVIDIA L4"), TrtRunner(plan):
        pass


def test_runner_needs_polygraphy(use_fake, monkeypatch, tiny_graph, tmp_path):
    use_fake()
    plan = tmp_path / "int8.plan"
    build_engine(tiny_graph, plan)
    monkeypatch.setitem(sys.modules, "polygraphy", None)
    with pytest.raises(QtoolError, match=r"polygraphy is not installed .*pip install 'qtool\[trt\]'"), TrtRunner(plan):
        pass


# --- real engines: need TensorRT and a CUDA GPU ---------------------------------------------------


def _why_no_tensorrt_gpu() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    try:
        import_tensorrt()
    except QtoolError as exc:
        return str(exc)
    return None if device.current_gpu() is not None else "no CUDA GPU is visible"


_NO_TENSORRT_GPU = _why_no_tensorrt_gpu()
skip_without_tensorrt_gpu = pytest.mark.skipif(_NO_TENSORRT_GPU is not None, reason=_NO_TENSORRT_GPU or "")


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
    manifest = build_engine(onnx_path, plan, TrtBuildConfig(timing_cache=cache, batch=(1, 8, 8)))
    assert manifest["precision"]["quantize_nodes"] == 0 and cache.stat().st_size > 0
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


@pytest.mark.gpu
@pytest.mark.tensorrt
@skip_without_tensorrt_gpu
def test_gpu_runner_refuses_a_plan_for_another_tensorrt(tiny_onnx, tmp_path):
    plan = tmp_path / "fp32.plan"
    manifest = build_engine(tiny_onnx, plan, TrtBuildConfig(batch=(1, 1, 2), sequence=(1, 16, 16)))
    write_json(manifest_path(plan), {**manifest, "tensorrt_version": "10.0.0.0"})
    expected = f"built with TensorRT 10.0.0.0 but this machine has TensorRT {manifest['tensorrt_version']}"
    with pytest.raises(QtoolError, match=expected), TrtRunner(plan):
        pass
