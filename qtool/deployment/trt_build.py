"""Build a TensorRT engine (.plan) from a Q/DQ ONNX graph on this machine's GPU, with its manifest.

Precision, as TensorRT recommends for explicit quantization (TensorRT 10 and 11). The network is
always created STRONGLY_TYPED: every tensor keeps the type the graph gives it, INT8 comes only from
the graph's QuantizeLinear/DequantizeLinear pairs, and no precision builder flag (FP16, INT8: deprecated
since TensorRT 10.12, gone in 11) is ever set. So that the unquantized layers (LayerNorm, Softmax,
GELU, residual Adds, attention) run in FP16 rather than FP32/TF32, the graph is first rewritten into
its TensorRT graph (`qtool.exporter.trt_graph`, written beside the engine as `<engine>.trt.onnx`):
float parts in FP16 with FP16 Q/DQ scales, int64 ids in and float32 logits out, embedding tables in
float, no Q/DQ on the head GEMVs, the attention scale before the score MatMul. `fp16=False` keeps the
float parts in FP32 (TF32 allowed or not by `tf32`). The FP16 baseline is the FP32 export built the
same way: its manifest says FP16 and no INT8.

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
from qtool.defaults import TRT_FP16, TRT_QUANTIZE_HEAD, TRT_TF32
from qtool.deployment.trt_layers import engine_precision, inspect_engine
from qtool.errors import QtoolError
from qtool.exporter.trt_graph import TrtGraphConfig, write_trt_graph
from qtool.fileio import atomic_path, manifest_path, sha256_file, write_json, write_text
from qtool.graph import load_model, position_table_rows, read_qtool_metadata
from qtool.runners.device import current_gpu, missing_gpu_reason
from qtool.runners.trt import ENGINE_KIND, ProfileShapes, Shape, import_tensorrt, one_line, preflight, trt_logger

log = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = range(6)
AXIS_OPTIONS = ("--batch", "--sequence")


@dataclass(frozen=True)
class TrtBuildConfig:
    """How an engine is built. `batch` and `sequence` are (min, opt, max) of its one optimization profile."""

    fp16: bool = TRT_FP16  # the graph's float parts in FP16 (its TensorRT graph), else FP32
    tf32: bool = TRT_TF32  # FP32 layers may use TF32 (TensorRT's default)
    quantize_head: bool = TRT_QUANTIZE_HEAD  # keep Q/DQ on the pooler/classifier GEMVs
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


PRECISION_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4")  # weakly typed builds only: never set


def _network_flags(trt) -> int:
    """STRONGLY_TYPED (TensorRT 11 types every network strongly and ignores the flag)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def precision_summary(quantize_nodes: int, fp16: bool) -> str:
    """What the graph asks the engine to compute in: 'INT8 + FP16', 'FP16', 'INT8 + FP32', 'FP32'."""
    floats = "FP16" if fp16 else "FP32"
    return f"INT8 + {floats}" if quantize_nodes else floats


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
    if not config.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        builder_config.clear_flag(trt.BuilderFlag.TF32)
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


def _floats(config: TrtBuildConfig) -> str:
    return "fp16" if config.fp16 else "fp32"


def _flag_set(trt, builder_config, name: str) -> bool:
    flag = getattr(trt.BuilderFlag, name, None)
    return flag is not None and bool(builder_config.get_flag(flag))


def layers_path(plan_path: Path) -> Path:
    """Where the engine inspector's raw JSON is kept: `<engine>.layers.json` beside the engine."""
    return Path(plan_path).with_name(f"{Path(plan_path).name}.layers.json")


def trt_graph_path(plan_path: Path) -> Path:
    """Where the graph TensorRT parses is written: `<engine stem>.trt.onnx` beside the engine."""
    return Path(plan_path).with_name(f"{Path(plan_path).stem}.trt.onnx")


def _parsed_graph_path(onnx_path: Path, plan_path: Path) -> Path:
    path = trt_graph_path(plan_path)
    return path.with_name(f"{plan_path.name}.trt.onnx") if path.resolve() == onnx_path.resolve() else path


def build_engine(onnx_path: Path, plan_path: Path, config: TrtBuildConfig = TrtBuildConfig()) -> dict:
    """Build `plan_path` from `onnx_path` on this machine's GPU, write it and its manifest; return the manifest."""
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    facts = read_onnx_facts(onnx_path)
    config.validate(facts.max_positions)
    trt = import_tensorrt()
    gpu = current_gpu()
    if gpu is None:
        raise QtoolError(
            f"no CUDA GPU is visible to this process ({missing_gpu_reason()}); TensorRT builds {plan_path.name} "
            "on the GPU that will run it"
        )
    checked = preflight(gpu)
    if not facts.quantize_nodes:
        log.info("%s has no QuantizeLinear nodes: a %s engine without INT8 layers", onnx_path, _floats(config))
    parsed_path = _parsed_graph_path(onnx_path, plan_path)
    passes = write_trt_graph(onnx_path, parsed_path, TrtGraphConfig(fp16=config.fp16, quantize_head=config.quantize_head))

    logger = trt_logger(trt)
    logger.errors.clear()
    builder = _create_builder(trt, logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(parsed_path)):
        raise QtoolError(_parser_error_message(parser, parsed_path, trt.__version__))
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
    requested = precision_summary(passes["quantize_nodes"], config.fp16)

    layers, inspector_json = inspect_engine(trt, trt.Runtime(logger), serialized)
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
    write_text(layers_path(plan_path), inspector_json)
    manifest = {
        "kind": ENGINE_KIND,
        "plan": plan_path.name,
        "plan_sha256": sha256_file(plan_path),
        "plan_bytes": plan_path.stat().st_size,
        "onnx": os.path.relpath(onnx_path.resolve(), plan_path.resolve().parent),
        "onnx_sha256": sha256_file(onnx_path),
        "onnx_metadata": facts.metadata,
        "parsed_onnx": os.path.relpath(parsed_path.resolve(), plan_path.resolve().parent),
        "parsed_onnx_sha256": sha256_file(parsed_path),
        "trt_graph": passes,
        "tensorrt_version": trt.__version__,
        "gpu": gpu.to_manifest(),
        "preflight": checked,
        "precision": {
            "engine": engine_precision(layers, requested),
            "requested": requested,
            "int8": "explicit: QuantizeLinear/DequantizeLinear pairs of the graph" if passes["quantize_nodes"] else None,
            "quantize_nodes": passes["quantize_nodes"],
            "float": _floats(config),
            "fp16": config.fp16,
            "strongly_typed": True,
            "builder_flags": sorted(flag for flag in PRECISION_FLAGS if _flag_set(trt, builder_config, flag)),
            "tf32_allowed": _flag_set(trt, builder_config, "TF32"),
        },
        "layer_precision": layers,
        "inspector_json": layers_path(plan_path).name,
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
