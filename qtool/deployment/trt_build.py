"""Build a TensorRT engine (.plan) from a Q/DQ ONNX graph on this machine's GPU, with its manifest.

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
cast; the engine gets one optimization profile with the (min, opt, max) batch and sequence sizes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from qtool import __version__
from qtool.deployment.trt_layers import inspect_engine
from qtool.errors import QtoolError
from qtool.fileio import atomic_path, manifest_path, sha256_file, write_json
from qtool.graph import load_model, position_table_rows, read_qtool_metadata
from qtool.runners.device import current_gpu, missing_gpu_reason
from qtool.runners.trt import ENGINE_KIND, ProfileShapes, Shape, import_tensorrt, one_line, trt_logger

log = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = range(6)
AXIS_OPTIONS = ("--batch", "--sequence")


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


@dataclass(frozen=True)
class OnnxFacts:
    metadata: dict[str, str]
    max_positions: int | None
    quantize_nodes: int


def read_onnx_facts(onnx_path: Path) -> OnnxFacts:
    """What the build needs from the graph: qtool metadata, position-table size, Q/DQ count."""
    model = load_model(onnx_path, load_external_data=False)
    positions = position_table_rows(model)
    quantize_nodes = sum(node.op_type == "QuantizeLinear" for node in model.graph.node)
    return OnnxFacts(read_qtool_metadata(model), positions, quantize_nodes)


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
        f"TensorRT {trt_version} cannot parse {onnx_path}{where}: {one_line(error.desc())}{more}; "
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
    # Every layer's precision in the engine inspector (the manifest's `layer_precision`), not names only.
    builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
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
            f"no CUDA GPU is visible to this process ({missing_gpu_reason()}); TensorRT builds {plan_path.name} "
            "on the GPU that will run it"
        )
    if not facts.quantize_nodes:
        log.warning("%s has no QuantizeLinear nodes; the engine will have no INT8 layers", onnx_path)

    logger = trt_logger(trt)
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

    layers = inspect_engine(trt, trt.Runtime(logger), serialized)
    if layers["gemms_not_int8"]:
        log.warning(
            "%d GEMM layer(s) of %s do not run INT8: %s",
            len(layers["gemms_not_int8"]),
            plan_path.name,
            ", ".join(layers["gemms_not_int8"][:5]),
        )
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
        "layer_precision": layers,
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
