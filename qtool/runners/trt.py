"""TensorRT backend: build an engine (.plan) from a Q/DQ ONNX graph and run it behind the runner protocol.

Precision, TensorRT 10 and newer. INT8 comes only from the graph's QuantizeLinear/DequantizeLinear
pairs (explicit quantization): no calibrator, and no INT8 builder flag for it (calibrators are
deprecated since TensorRT 10.1, precision builder flags since 10.12, and both are gone in 11). By
default the network is created STRONGLY_TYPED, as TensorRT recommends for explicit quantization:
every tensor keeps its type from the graph, so whatever is not quantized runs in FP32 (TF32 where
TensorRT allows it). `fp16=True` asks for the older weakly typed build with the FP16 and INT8 builder
flags, which lets TensorRT run the unquantized layers in FP16; that exists only in TensorRT 10, and
on 11 qtool says so instead of building something else.

Inputs. The exported graph takes int64 `input_ids`, `attention_mask` and `token_type_ids` of shape
[batch, sequence]. TensorRT 10 has a native INT64 tensor type (`trt.int64`), so the graph needs no
cast; the runner binds every input with the dtype the engine declares and casts feeds to it, which
also serves an engine built from a graph with int32 inputs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qtool import __version__
from qtool.errors import QtoolError
from qtool.fileio import atomic_path, manifest_path, read_json, sha256_file, write_json
from qtool.runners.base import Runner
from qtool.runners.device import GpuInfo, current_gpu
from qtool.runners.ort import check_onnx_file

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'qtool[trt]' on a machine with an NVIDIA GPU"
ENGINE_KIND = "tensorrt-engine"
MINIMUM_TENSORRT_MAJOR = 10
OPTIMIZATION_LEVELS = range(6)
AXIS_OPTIONS = ("--batch", "--sequence")

Shape = tuple[int, ...]
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def import_tensorrt():
    """The `tensorrt` module, or a one-line error saying how to get a usable one."""
    try:
        import tensorrt
    except ModuleNotFoundError:
        raise QtoolError(f"TensorRT is not installed; {INSTALL_HINT}") from None
    except (ImportError, OSError) as exc:
        reason = _one_line(exc)[:200]
        raise QtoolError(f"TensorRT is installed but cannot be loaded ({reason}); {INSTALL_HINT}") from None
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < MINIMUM_TENSORRT_MAJOR:
        raise QtoolError(
            f"TensorRT {tensorrt.__version__} is too old; qtool needs TensorRT {MINIMUM_TENSORRT_MAJOR} or newer "
            f"({INSTALL_HINT})"
        )
    return tensorrt


@dataclass(frozen=True)
class TrtBuildConfig:
    """How an engine is built. `batch` and `sequence` are (min, opt, max) of its one optimization profile."""

    fp16: bool = False
    batch: tuple[int, int, int] = (1, 1, 32)
    sequence: tuple[int, int, int] = (1, 128, 128)
    workspace_mib: int | None = None  # None leaves TensorRT's default: all device memory
    timing_cache: Path | None = None
    optimization_level: int = 3  # TensorRT's builder_optimization_level; higher builds longer

    def validate(self, max_positions: int | None = None) -> None:
        """Fail on impossible settings; `max_positions` is the model's position-table size when known."""
        for option, value in zip(AXIS_OPTIONS, (self.batch, self.sequence), strict=True):
            if len(value) != 3 or not 1 <= value[0] <= value[1] <= value[2]:
                raise QtoolError(
                    f"{option} must be MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {','.join(map(str, value))}"
                )
        if max_positions is not None and self.sequence[2] > max_positions:
            raise QtoolError(
                f"--sequence max {self.sequence[2]} exceeds the model's {max_positions} positions; "
                f"use at most {max_positions}"
            )
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise QtoolError(f"--workspace-mib must be at least 1, got {self.workspace_mib}")
        if self.optimization_level not in OPTIMIZATION_LEVELS:
            raise QtoolError(
                f"--optimization-level must be {OPTIMIZATION_LEVELS[0]} to {OPTIMIZATION_LEVELS[-1]}, "
                f"got {self.optimization_level}"
            )
        if self.timing_cache is not None and Path(self.timing_cache).is_dir():
            raise QtoolError(f"--timing-cache {self.timing_cache} is a folder; give a file path")

    def to_manifest(self) -> dict:
        """The settings as JSON values, exactly as they read back from the manifest."""
        record = asdict(self)
        record.update(batch=list(self.batch), sequence=list(self.sequence))
        record["timing_cache"] = str(self.timing_cache) if self.timing_cache is not None else None
        return record


def profile_shapes(config: TrtBuildConfig, input_names: Sequence[str]) -> ProfileShapes:
    """(min, opt, max) shapes of each [batch, sequence] input for the engine's optimization profile."""
    minimum, optimum, maximum = zip(config.batch, config.sequence, strict=True)
    return {name: (minimum, optimum, maximum) for name in input_names}


def check_network_inputs(input_dims: Mapping[str, Shape], shapes: ProfileShapes) -> None:
    """Every graph input must be [batch, sequence], and a fixed axis must fit the profile."""
    for name, dims in input_dims.items():
        if len(dims) != len(AXIS_OPTIONS):
            raise QtoolError(
                f"graph input {name} has shape {list(dims)}; qtool builds engines for [batch, sequence] inputs"
            )
        for axis, size in enumerate(dims):
            if size >= 0 and any(shape[axis] != size for shape in shapes[name]):
                raise QtoolError(
                    f"graph input {name} has a fixed size {size} on axis {axis}; set {AXIS_OPTIONS[axis]} "
                    f"{size},{size},{size} or re-export the model with dynamic axes"
                )


def check_feed_shape(name: str, shape: Shape, profile: tuple[Shape, Shape, Shape]) -> None:
    """A feed must lie inside the engine's optimization profile."""
    minimum, _, maximum = profile
    inside = len(shape) == len(minimum) and all(
        low <= size <= high for size, low, high in zip(shape, minimum, maximum, strict=True)
    )
    if not inside:
        raise QtoolError(
            f"{name} has shape {list(shape)} but the engine accepts {list(minimum)} to {list(maximum)}; "
            "feed smaller batches or rebuild the engine with larger --batch/--sequence"
        )


@dataclass(frozen=True)
class OnnxFacts:
    metadata: dict[str, str]
    max_positions: int | None
    quantize_nodes: int


def read_onnx_facts(onnx_path: Path) -> OnnxFacts:
    """What the build needs from the graph: qtool metadata, position-table size, Q/DQ count."""
    import onnx

    from qtool.exporter import read_qtool_metadata

    check_onnx_file(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    positions = next(
        (
            int(initializer.dims[0])
            for initializer in model.graph.initializer
            if "position_embeddings" in initializer.name and len(initializer.dims) == 2
        ),
        None,
    )
    quantize_nodes = sum(node.op_type == "QuantizeLinear" for node in model.graph.node)
    return OnnxFacts(read_qtool_metadata(model), positions, quantize_nodes)


_forwarding_logger: tuple[object, object] | None = None


def _trt_logger(trt):
    """The process's one TensorRT logger (TensorRT warns when builder and runtime get different ones).

    It forwards TensorRT's messages to `logging` and remembers the last errors for qtool's messages.
    """
    global _forwarding_logger
    if _forwarding_logger is not None and _forwarding_logger[0] is trt:
        return _forwarding_logger[1]
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.ERROR,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.DEBUG,
        severity.VERBOSE: logging.DEBUG,
    }

    class ForwardingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level, message) -> None:
            python_level = levels.get(level, logging.DEBUG)
            if python_level >= logging.ERROR:
                self.errors = [*self.errors[-9:], _one_line(message)]
            log.log(python_level, "TensorRT: %s", message)

        def last_error(self, default: str) -> str:
            return self.errors[-1] if self.errors else default

    _forwarding_logger = (trt, ForwardingLogger())
    return _forwarding_logger[1]


def _parser_error_message(parser, onnx_path: Path, trt_version: str) -> str:
    count = parser.num_errors
    if not count:
        return f"TensorRT {trt_version} cannot parse {onnx_path}; check it with `polygraphy inspect capability`"
    error = parser.get_error(0)
    node = error.node_name() if hasattr(error, "node_name") else ""
    operator = error.node_operator() if hasattr(error, "node_operator") else ""
    where = f" at node {node}" + (f" ({operator})" if operator else "") if node else ""
    more = f" (and {count - 1} more)" if count > 1 else ""
    return (
        f"TensorRT {trt_version} cannot parse {onnx_path}{where}: {_one_line(error.desc())}{more}; "
        "check which nodes it supports with `polygraphy inspect capability`"
    )


def _precision_flag_names(trt, config: TrtBuildConfig) -> list[str]:
    if not config.fp16:
        return []
    if not hasattr(trt.BuilderFlag, "FP16"):
        raise QtoolError(
            f"--fp16 needs TensorRT 10; TensorRT {trt.__version__} takes precision only from the graph, "
            "so build without --fp16 (or install 'tensorrt>=10,<11')"
        )
    # Weakly typed: Q/DQ pairs still fix the INT8 layers; FP16 lets the other layers drop to half.
    return ["FP16", "INT8"]


def _network_flags(trt, config: TrtBuildConfig) -> int:
    if config.fp16:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _create_builder(trt, logger):
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError):  # the binding raises when CUDA cannot start
        builder = None
    if builder is None:
        reason = logger.last_error("CUDA initialization failed")
        raise QtoolError(f"TensorRT cannot start a builder ({reason}); check the NVIDIA driver with nvidia-smi")
    return builder


def _builder_config(trt, builder, config: TrtBuildConfig, shapes: ProfileShapes):
    builder_config = builder.create_builder_config()
    for flag_name in _precision_flag_names(trt, config):
        builder_config.set_flag(getattr(trt.BuilderFlag, flag_name))
    if config.workspace_mib is not None:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib << 20)
    builder_config.builder_optimization_level = config.optimization_level
    profile = builder.create_optimization_profile()
    for name, (minimum, optimum, maximum) in shapes.items():
        profile.set_shape(name, minimum, optimum, maximum)
    builder_config.add_optimization_profile(profile)
    return builder_config


def _use_timing_cache(builder_config, path: Path) -> None:
    """Start from the timing cache at `path` when it exists and fits this GPU and TensorRT."""
    data = path.read_bytes() if path.is_file() else b""
    if data:
        try:
            cache = builder_config.create_timing_cache(data)
        except (RuntimeError, TypeError, ValueError):
            cache = None
        if cache is not None and builder_config.set_timing_cache(cache, ignore_mismatch=False):
            log.info("using timing cache %s", path)
            return
        log.warning("timing cache %s was written by another GPU or TensorRT version; starting a new one", path)
    builder_config.set_timing_cache(builder_config.create_timing_cache(b""), ignore_mismatch=False)


def _save_timing_cache(builder_config, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(builder_config.get_timing_cache().serialize())


def build_engine(onnx_path: Path, plan_path: Path, config: TrtBuildConfig = TrtBuildConfig()) -> dict:
    """Build `plan_path` from `onnx_path` on this machine's GPU, write it and its manifest; return the manifest."""
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    facts = read_onnx_facts(onnx_path)
    config.validate(facts.max_positions)
    trt = import_tensorrt()
    precision_flags = _precision_flag_names(trt, config)
    gpu = current_gpu()
    if gpu is None:
        raise QtoolError(
            f"no CUDA GPU is visible to this process; TensorRT builds {plan_path.name} on the GPU that will run it"
        )
    if not facts.quantize_nodes:
        log.warning("%s has no QuantizeLinear nodes; the engine will have no INT8 layers", onnx_path)

    logger = _trt_logger(trt)
    logger.errors.clear()
    builder = _create_builder(trt, logger)
    network = builder.create_network(_network_flags(trt, config))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise QtoolError(_parser_error_message(parser, onnx_path, trt.__version__))
    graph_inputs = [network.get_input(index) for index in range(network.num_inputs)]
    input_dims = {tensor.name: tuple(tensor.shape) for tensor in graph_inputs}
    shapes = profile_shapes(config, list(input_dims))
    check_network_inputs(input_dims, shapes)
    builder_config = _builder_config(trt, builder, config, shapes)
    if config.timing_cache is not None:
        _use_timing_cache(builder_config, Path(config.timing_cache))

    log.info("building a TensorRT %s engine from %s on %s", trt.__version__, onnx_path, gpu.describe())
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, builder_config)
    build_seconds = time.perf_counter() - started
    if serialized is None:
        reason = logger.last_error("no reason given")
        raise QtoolError(
            f"TensorRT could not build an engine from {onnx_path} ({reason}); "
            "raise --workspace-mib, or check the graph with `polygraphy inspect capability`"
        )
    if config.timing_cache is not None:
        _save_timing_cache(builder_config, Path(config.timing_cache))

    manifest_path(plan_path).unlink(missing_ok=True)  # never leave an old manifest beside a new plan
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(serialized)
    manifest = {
        "kind": ENGINE_KIND,
        "plan": plan_path.name,
        "plan_sha256": sha256_file(plan_path),
        "plan_bytes": plan_path.stat().st_size,
        "onnx": os.path.relpath(onnx_path.resolve(), plan_path.resolve().parent),
        "onnx_sha256": sha256_file(onnx_path),
        "onnx_metadata": facts.metadata,
        "tensorrt_version": trt.__version__,
        "gpu": gpu.to_manifest(),
        "precision": {
            "int8": "explicit: QuantizeLinear/DequantizeLinear pairs of the graph",
            "quantize_nodes": facts.quantize_nodes,
            "fp16": config.fp16,
            "strongly_typed": not config.fp16,
            "builder_flags": precision_flags,
        },
        "profiles": {
            name: dict(zip(("min", "opt", "max"), map(list, shape), strict=True)) for name, shape in shapes.items()
        },
        "config": config.to_manifest(),
        "build_seconds": round(build_seconds, 2),
        "qtool_version": __version__,
    }
    write_json(manifest_path(plan_path), manifest)
    log.info("built %s in %.1f s (%d bytes)", plan_path, build_seconds, manifest["plan_bytes"])
    return manifest


def read_plan_manifest(plan_path: Path) -> dict | None:
    """The build manifest of `plan_path`, or None when it has none; fails on files that are not engines."""
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise QtoolError(f"{plan_path} does not exist; build the engine first")
    if plan_path.suffix == ".onnx":
        raise QtoolError(f"{plan_path} is not a TensorRT engine but an ONNX model; build an engine from it first")
    if plan_path.stat().st_size == 0:
        raise QtoolError(f"{plan_path} is not a TensorRT engine (the file is empty); rebuild it")
    recorded = manifest_path(plan_path)
    if not recorded.is_file():
        return None
    manifest = read_json(recorded)
    if not isinstance(manifest, dict) or manifest.get("kind") != ENGINE_KIND:
        raise QtoolError(
            f"{plan_path} is not a TensorRT engine (its manifest {recorded.name} describes something else); "
            "pass a .plan built by qtool"
        )
    if manifest.get("plan_sha256") != sha256_file(plan_path):
        raise QtoolError(f"{plan_path} changed after its manifest {recorded.name} was written; rebuild the engine")
    return manifest


def check_plan_compatibility(manifest: Mapping, current_trt_version: str, current_gpu: GpuInfo | None) -> list[str]:
    """Fail when the plan cannot run here (other TensorRT, other GPU architecture, no GPU); return warnings."""
    plan = manifest.get("plan", "the engine")
    warnings: list[str] = []
    built_version = manifest.get("tensorrt_version")
    if built_version is None:
        warnings.append(f"{plan}: its manifest records no TensorRT version")
    elif built_version != current_trt_version:
        raise QtoolError(
            f"{plan} was built with TensorRT {built_version} but this machine has TensorRT {current_trt_version}; "
            f"rebuild the engine here (or install tensorrt=={built_version})"
        )
    built_gpu = GpuInfo.from_manifest(manifest.get("gpu"))
    if current_gpu is None:
        needed = built_gpu.describe() if built_gpu else "an NVIDIA GPU"
        raise QtoolError(f"{plan} needs a CUDA GPU ({needed}) but none is visible here; run it on such a machine")
    if built_gpu is None:
        warnings.append(f"{plan}: its manifest records no GPU; it may have been built for another one")
    elif built_gpu.compute_capability != current_gpu.compute_capability:
        raise QtoolError(
            f"{plan} was built for {built_gpu.describe()} but this machine has {current_gpu.describe()}; "
            "rebuild the engine on this GPU"
        )
    elif built_gpu.name and current_gpu.name and built_gpu.name != current_gpu.name:
        warnings.append(
            f"{plan} was built on {built_gpu.name} and runs on {current_gpu.name} (same compute capability "
            f"{current_gpu.compute_capability}); rebuild it here for kernels tuned to this GPU"
        )
    return warnings


def _import_polygraphy_cuda():
    try:
        from polygraphy import cuda
        from polygraphy.exception import PolygraphyException
    except ImportError:
        raise QtoolError(
            f"polygraphy is not installed (the TensorRT runner uses its CUDA buffers); {INSTALL_HINT}"
        ) from None
    return cuda, PolygraphyException


class TrtRunner(Runner):
    """Runs a serialized engine; the plan is loaded and checked against its manifest on entry."""

    name = "tensorrt"

    def __init__(self, plan_path: Path) -> None:
        super().__init__()
        self.plan_path = Path(plan_path)
        self.manifest: dict | None = None
        self.device_memory_bytes: int | None = None  # the engine's activation memory, for benchmarks
        self._runtime = self._engine = self._context = self._stream = None
        self._cuda_error: type[Exception] = RuntimeError
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._dtypes: dict[str, np.dtype] = {}
        self._profiles: ProfileShapes = {}
        self._buffers: dict = {}

    def _activate(self) -> None:
        try:
            self._load()
        except BaseException:
            self._deactivate()
            raise

    def _load(self) -> None:
        self.manifest = read_plan_manifest(self.plan_path)
        trt = import_tensorrt()
        if self.manifest is None:
            log.warning("%s has no build manifest; its TensorRT version and GPU are not checked", self.plan_path)
        else:
            for warning in check_plan_compatibility(self.manifest, trt.__version__, current_gpu()):
                log.warning(warning)
        logger = _trt_logger(trt)
        logger.errors.clear()
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self._engine is None:
            raise QtoolError(
                f"{self.plan_path} is not a TensorRT engine, or not one of TensorRT {trt.__version__} "
                f"({logger.last_error('deserialization failed')}); rebuild it on this machine"
            )
        engine = self._engine
        has_v2 = hasattr(engine, "device_memory_size_v2")  # TensorRT 11 has only the v2 attribute
        self.device_memory_bytes = int(engine.device_memory_size_v2 if has_v2 else engine.device_memory_size)
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        self._inputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        self._outputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {name: np.dtype(trt.nptype(engine.get_tensor_dtype(name))) for name in names}
        self._profiles = {
            name: tuple(tuple(dims) for dims in engine.get_tensor_profile_shape(name, 0)) for name in self._inputs
        }
        self._context = engine.create_execution_context()
        if self._context is None:
            raise QtoolError(
                f"TensorRT cannot create an execution context for {self.plan_path} "
                f"({logger.last_error('out of GPU memory?')}); free GPU memory and retry"
            )
        cuda, self._cuda_error = _import_polygraphy_cuda()
        try:
            self._stream = cuda.Stream()
            self._buffers = {name: cuda.DeviceArray(shape=(0,), dtype=self._dtypes[name]) for name in names}
        except self._cuda_error as exc:
            raise QtoolError(f"CUDA cannot set up buffers for {self.plan_path}: {_one_line(exc)}") from None
        log.info(
            "loaded %s: inputs %s, outputs %s, %d bytes of device memory",
            self.plan_path,
            self._inputs,
            self._outputs,
            self.device_memory_bytes,
        )

    def _deactivate(self) -> None:
        for buffer in self._buffers.values():
            buffer.free()
        self._buffers = {}
        if self._stream is not None:
            self._stream.free()
            self._stream = None
        # Destroy in dependency order: context, then engine, then runtime.
        self._context = None
        self._engine = None
        self._runtime = None

    def input_names(self) -> list[str]:
        return self._inputs

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._run(feeds)
        except self._cuda_error as exc:
            raise QtoolError(f"CUDA failed while running {self.plan_path}: {_one_line(exc)}") from None

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        context, stream = self._context, self._stream
        host_inputs = []
        for name in self._inputs:
            array = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            check_feed_shape(name, array.shape, self._profiles[name])
            if not context.set_input_shape(name, array.shape):
                raise QtoolError(f"TensorRT rejected shape {list(array.shape)} for {name}; rebuild the engine")
            buffer = self._buffers[name].resize(array.shape)
            buffer.copy_from(array, stream)
            context.set_tensor_address(name, buffer.ptr)
            host_inputs.append(array)  # keep alive until the stream is synchronized
        outputs = {}
        for name in self._outputs:
            shape = tuple(context.get_tensor_shape(name))
            context.set_tensor_address(name, self._buffers[name].resize(shape).ptr)
            outputs[name] = np.empty(shape, dtype=self._dtypes[name])
        if not context.execute_async_v3(stream.ptr):
            raise QtoolError(f"TensorRT failed to run {self.plan_path}; see the TensorRT errors logged above")
        for name, host in outputs.items():
            self._buffers[name].copy_to(host, stream)
        stream.synchronize()
        return outputs
