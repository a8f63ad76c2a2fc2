"""A fake of the slice of the TensorRT 10 Python API that qtool calls, and the builders its tests share.

Without a GPU, the build and runner code paths run against `fake_tensorrt()` (names checked against the real
bindings) and `FakeCudart`, a CUDA runtime whose device memory is host memory. `skip_without_tensorrt_gpu` skips the
tests that build and run real engines where TensorRT or a CUDA device is absent.

Used by tests/runners/test_trt.py and tests/deployment/test_trt_build.py; import from here, never from a conftest.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from qtool.data.batching import INPUT_NAMES
from qtool.deployment import trt_build
from qtool.errors import QtoolError
from qtool.runners import device
from qtool.runners import trt as backend
from qtool.runners.device import GpuInfo
from qtool.runners.trt import import_tensorrt

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
# The engine inspector's JSON for a tiny QDQ BERT, written by hand in the format TensorRT documents
# for detailed verbosity (fields Name, LayerType, Inputs/Outputs with Format/Datatype); not recorded
# on a GPU, since none is reachable here.
INSPECTOR_SAMPLE = Path(__file__).with_name("trt_inspector_sample.json")
# The same for a TensorRT 10.x Myelin engine, in the short tokens ("Half", "Int8") that trex's
# activation parser maps, with a fused MHA kernel and a second optimization profile.
MYELIN_SAMPLE = Path(__file__).with_name("trt_inspector_myelin_sample.json")


def fake_tensorrt(version: str = TRT_VERSION, weakly_typed_flags: bool = True) -> types.ModuleType:
    """A `tensorrt` module: builder, parser, runtime and engine, recording what qtool asks of them."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    state = types.SimpleNamespace(
        parse_error=None,
        build_error=None,
        timing_cache_loaded=None,
        builder_flags=set(),
        profiles=[],
        profiling_verbosity=None,
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
    trt.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    trt.LayerInformationFormat = enum.IntEnum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})
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
            state.parsed_quantize_nodes = sum(node.op_type == "QuantizeLinear" for node in graph.node)
            state.parsed_float16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
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
        profiling_verbosity = None

        def __init__(self) -> None:
            self.cache: TimingCache | None = None
            state.memory_pool_limits = {}
            state.cleared_flags = set()
            self.flags = {"TF32"}  # TensorRT's builder config allows TF32 unless told otherwise

        def set_flag(self, flag) -> None:
            state.builder_flags.add(flag.name)
            self.flags.add(flag.name)

        def clear_flag(self, flag) -> None:
            state.cleared_flags.add(flag.name)
            self.flags.discard(flag.name)

        def get_flag(self, flag) -> bool:
            return flag.name in self.flags

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
            state.profiling_verbosity = config.profiling_verbosity
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
            shape = self.shapes["input_ids"]
            ids = device_array(self.addresses["input_ids"], shape, np.int64)
            mask = device_array(self.addresses["attention_mask"], shape, np.int64)
            logits = device_array(self.addresses["logits"], (shape[0], 2), np.float32)
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
            FAKE_VRAM["used"] += FAKE_CONTEXT_VRAM
            return ExecutionContext()

        def create_engine_inspector(self):
            return EngineInspector(state.profiling_verbosity)

    class EngineInspector:
        """Serves INSPECTOR_SAMPLE, or layer names only unless the build asked for detailed verbosity."""

        def __init__(self, verbosity) -> None:
            self.verbosity = verbosity
            state.inspector_context = None

        @property
        def execution_context(self):
            return state.inspector_context

        @execution_context.setter
        def execution_context(self, context) -> None:
            state.inspector_context = context

        def get_engine_information(self, fmt) -> str:
            layers = json.loads(INSPECTOR_SAMPLE.read_text())["Layers"]
            floats = "FP16" if state.parsed_float16 else "FP32"
            if not getattr(state, "parsed_quantize_nodes", 1):  # a float graph: no Q layer, no Int8 tensor
                text = json.dumps([layer for layer in layers if "QuantizeLinear" not in layer["Name"]])
                layers = json.loads(text.replace("Int8", floats).replace("_i8", "_f16"))
            if not state.parsed_float16:  # an FP32 graph: its float layers run FP32
                layers = json.loads(json.dumps(layers).replace("FP16", "FP32"))
            if self.verbosity != trt.ProfilingVerbosity.DETAILED:
                layers = [layer["Name"] for layer in layers]
            return json.dumps({"Layers": layers})

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            if not data.startswith(FAKE_PLAN_MAGIC):
                self.logger.log(Severity.ERROR, "Serialization assertion magicTagRead == kMAGIC_TAG failed")
                return None
            FAKE_VRAM["used"] += FAKE_ENGINE_VRAM
            return Engine(json.loads(data[len(FAKE_PLAN_MAGIC) :]))

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


FAKE_DEVICE_MEMORY: dict[int, np.ndarray] = {}  # address -> the bytes a fake cudaMalloc gave
FAKE_PINNED_MEMORY: dict[int, np.ndarray] = {}  # the same for cudaMallocHost

# --- a fake CUDA runtime for device-memory readings -----------------------------------------------

FAKE_VRAM_TOTAL = 4 << 30
FAKE_ENGINE_VRAM = 6 << 20  # what deserializing a fake engine takes (weights)
FAKE_CONTEXT_VRAM = 2 << 20  # what creating its execution context takes (activations)
FAKE_VRAM = {"used": 0}  # device memory in use, moved by the fake engine; read by FakeCudart


def device_array(address: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A view of fake device memory at `address` as an array (the memory a fake cudaMalloc gave)."""
    count = int(np.prod(shape))
    return FAKE_DEVICE_MEMORY[address][: count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)


class FakeCudart:
    """The CUDA runtime functions qtool calls, in ctypes' calling convention (results through byref
    pointers, values as ctypes objects): device memory is host memory kept in FAKE_DEVICE_MEMORY, so
    copies are real. `fail` maps a function name to the cudaError_t it returns."""

    def __init__(self, fail: dict[str, int] | None = None, devices: int = 1) -> None:
        self.fail, self.devices, self.events = dict(fail or {}), devices, 0

    def _status(self, name: str) -> int:
        return self.fail.get(name, 0)

    def cudaGetErrorString(self, status):  # noqa: N802 (the C names)
        return {2: b"out of memory", 35: b"CUDA driver version is insufficient for CUDA runtime version",
                100: b"no CUDA-capable device is detected"}.get(status, b"unknown error")

    def cudaGetDeviceCount(self, count) -> int:  # noqa: N802
        count._obj.value = self.devices
        return self._status("cudaGetDeviceCount")

    def cudaDriverGetVersion(self, version) -> int:  # noqa: N802
        version._obj.value = 12040
        return 0

    def cudaRuntimeGetVersion(self, version) -> int:  # noqa: N802
        version._obj.value = 12080
        return 0

    def cudaMemGetInfo(self, free, total) -> int:  # noqa: N802
        free._obj.value = FAKE_VRAM_TOTAL - FAKE_VRAM["used"]
        total._obj.value = FAKE_VRAM_TOTAL
        return self._status("cudaMemGetInfo")

    def cudaMalloc(self, pointer, size) -> int:  # noqa: N802
        if self._status("cudaMalloc"):
            return self._status("cudaMalloc")
        memory = np.zeros(size.value, np.uint8)
        FAKE_DEVICE_MEMORY[memory.ctypes.data] = memory
        pointer._obj.value = memory.ctypes.data
        return 0

    def cudaFree(self, pointer) -> int:  # noqa: N802
        FAKE_DEVICE_MEMORY.pop(pointer.value, None)
        return 0

    def cudaMallocHost(self, pointer, size) -> int:  # noqa: N802
        memory = np.zeros(size.value, np.uint8)
        FAKE_PINNED_MEMORY[memory.ctypes.data] = memory
        pointer._obj.value = memory.ctypes.data
        return 0

    def cudaFreeHost(self, pointer) -> int:  # noqa: N802
        return 0 if FAKE_PINNED_MEMORY.pop(pointer.value, None) is not None else 1

    def cudaMemcpyAsync(self, destination, source, size, kind, stream) -> int:  # noqa: N802
        device_side = destination.value if kind.value == 1 else source.value
        assert device_side in FAKE_DEVICE_MEMORY and size.value <= FAKE_DEVICE_MEMORY[device_side].nbytes
        ctypes.memmove(destination.value, source.value, size.value)
        return self._status("cudaMemcpyAsync")

    def cudaStreamCreate(self, stream) -> int:  # noqa: N802
        stream._obj.value = 42
        return self._status("cudaStreamCreate")

    def cudaStreamDestroy(self, stream) -> int:  # noqa: N802
        return 0

    def cudaStreamSynchronize(self, stream) -> int:  # noqa: N802
        return self._status("cudaStreamSynchronize")

    def cudaEventCreate(self, event) -> int:  # noqa: N802
        self.events += 1
        event._obj.value = 7000 + self.events
        return 0

    def cudaEventRecord(self, event, stream) -> int:  # noqa: N802
        return 0

    def cudaEventSynchronize(self, event) -> int:  # noqa: N802
        return 0

    def cudaEventElapsedTime(self, milliseconds, start, end) -> int:  # noqa: N802
        milliseconds._obj.value = 0.5 * (end.value - start.value)
        return 0

    def cudaEventDestroy(self, event) -> int:  # noqa: N802
        return 0


def install_fakes_in_this_process() -> None:
    """Fake TensorRT and CUDA runtime for the rest of this process (an isolated child)."""
    sys.modules["tensorrt"] = fake_tensorrt()
    backend.current_gpu = lambda: BUILD_GPU
    device.load_cuda_runtime = lambda roots=None: FakeCudart()
    FAKE_VRAM["used"] = 100 << 20  # the CUDA context and whatever else ran before


class FakeTrtRunnerFactory:
    """A picklable runner factory: in the process that calls it, installs the fakes and returns a TrtRunner."""

    def __init__(self, plan: Path) -> None:
        self.plan = Path(plan)

    def __call__(self):
        install_fakes_in_this_process()
        return backend.TrtRunner(self.plan)


def fake_installer(monkeypatch):
    """The body of the `use_fake` fixture: installs a fake TensorRT, a fake CUDA runtime and a fixed
    current GPU. Returns a function to swap TRT (and the CUDA runtime). `current_gpu` is patched where
    each module reads it.
    """

    def install(
        trt: types.ModuleType | None = None, gpu: GpuInfo | None = BUILD_GPU, cudart: FakeCudart | None = None
    ) -> types.ModuleType:
        trt = trt or fake_tensorrt()
        FAKE_DEVICE_MEMORY.clear()
        FAKE_PINNED_MEMORY.clear()
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        library = cudart or FakeCudart()
        monkeypatch.setattr(device, "load_cuda_runtime", lambda roots=None: library)
        for module in (backend, trt_build):  # the runner checks the GPU, and so does the build
            monkeypatch.setattr(module, "current_gpu", lambda: gpu)
        return trt

    return install


def no_tmp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# --- plan manifests -------------------------------------------------------------------------------


def engine_manifest(**changes) -> dict:
    manifest = {
        "kind": "tensorrt-engine",
        "plan": "int8.plan",
        "tensorrt_version": TRT_VERSION,
        "gpu": BUILD_GPU.to_manifest(),
    }
    return {**manifest, **changes}


# --- real engines: need TensorRT and a CUDA GPU ---------------------------------------------------


def _why_no_tensorrt_gpu() -> str | None:
    """Why the real-engine tests skip: only where no GPU is visible. On a machine with a GPU and no usable
    TensorRT they run and fail (naming the install), so a GPU user never reads "skipped" as "passed"."""
    if device.current_gpu() is not None:
        return None
    installed = importlib.util.find_spec("tensorrt") is not None
    try:
        installed and import_tensorrt()
    except QtoolError as exc:
        return f"no CUDA GPU is visible ({exc})"
    return "no CUDA GPU is visible" + ("" if installed else "; TensorRT is not installed either")


_NO_TENSORRT_GPU = _why_no_tensorrt_gpu()
skip_without_tensorrt_gpu = pytest.mark.skipif(_NO_TENSORRT_GPU is not None, reason=_NO_TENSORRT_GPU or "")
