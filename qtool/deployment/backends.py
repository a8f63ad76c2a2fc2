"""Deployment backends as plug-ins: one `Backend` object per target, registered in `BACKENDS`.

A backend names itself, the file suffixes its runner runs, its build options (a dataclass with
defaults and `validate()`), how it builds an artifact from a graph, how it makes a runner for an
artifact, and the library the build needs. `qtool build`, `qtool bench`, the accuracy of an engine
and the memory probe all read the registry, so a backend written outside qtool
(`qtool.register_backend`) runs through the API and the CLI like the built-in ones.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from qtool import __version__
from qtool.cache import cached_stage
from qtool.defaults import ORT_INT8_KERNELS
from qtool.deployment.trt_build import TrtBuildConfig, build_engine
from qtool.errors import QtoolError
from qtool.exporter.openvino_graph import VERSION as OPENVINO_GRAPH_VERSION
from qtool.exporter.openvino_graph import openvino_graph
from qtool.exporter.ort_cpu import REWRITE_VERSION as ORT_REWRITE_VERSION
from qtool.exporter.ort_cpu import rewrite_file_for_ort_cpu
from qtool.exporter.ort_fused import check_fused
from qtool.exporter.weight_codes import u8s8_exact_everywhere
from qtool.fileio import distinct_output, manifest_path, read_json, sha256_file
from qtool.graph import PEG_LAYOUT_KEY, graph_metadata, load_model
from qtool.runners.base import Runner
from qtool.runners.ort import INT8_KERNELS, cpu_summary, int8_kernels_for_this_cpu

log = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1  # bytes: the largest ONNX graph that serializes as one message


def _flag(name: str) -> str:
    """An option as the command line spells it (`QtoolError` gives the API's spelling too)."""
    return f"--{name.replace('_', '-')}"


def _itself(path: Path) -> Path | None:
    return Path(path)


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str  # one line for `--help` and errors
    suffixes: tuple[str, ...]  # the files its runner runs; `build` writes the first
    runner: Callable[..., Runner]  # runner(path, threads=None, providers=(...)) -> Runner; top-level, so it pickles
    build: Callable[[Path, Path | None, Any], dict]  # (graph, output or None, options) -> report with "artifact"
    options: type = field(default=type(None))  # frozen dataclass of build options; NoneType: none
    library: str | None = None  # the module `build` needs, imported first for a one-line error
    install: str = ""  # how to get `library`
    source_graph: Callable[[Path], Path | None] = _itself  # the ONNX graph an artifact was built from
    check_graph: Callable[[Path], None] | None = None  # refuse a graph it cannot build, before building
    check_artifact: Callable[[Path], None] | None = None  # refuse a file of its suffix that it cannot run
    metadata: Callable[[Path], dict] = graph_metadata  # qtool's metadata of the graph an artifact was built from
    companions: tuple[str, ...] = ()  # suffixes of the files beside an artifact that are part of it (weights)
    run_settings: Callable[[], dict] | None = None  # how its runner runs an artifact, in the key of cached results

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.options)) if self.options is not type(None) else ()

    def make_options(self, **given):
        """The backend's options with the `given` ones (None: the default) replaced, checked."""
        unknown = sorted(set(given) - set(self.option_names()))
        if unknown:
            takes = ", ".join(_flag(name) for name in self.option_names()) or "no options"
            raise QtoolError(
                f"{', '.join(map(_flag, unknown))} is not an option of backend {self.name} (it takes {takes})"
            )
        if self.options is type(None):
            return None
        options = self.options(**{k: v for k, v in given.items() if v is not None})
        if hasattr(options, "validate"):
            options.validate()
        return options

    def require_library(self) -> None:
        if self.library is None:
            return
        try:
            importlib.import_module(self.library)
        except ImportError:
            raise QtoolError(f"backend {self.name} needs {self.library}: {self.install}") from None


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add `backend` to the registry (replacing one of the same name)."""
    if not isinstance(backend, Backend) or not backend.name or not backend.suffixes:
        raise QtoolError("a backend is a qtool.deployment.backends.Backend with a name and file suffixes")
    taken = {s: b.name for b in BACKENDS.values() if b.name != backend.name for s in b.suffixes}
    clash = [s for s in backend.suffixes if s in taken]
    if clash:
        raise QtoolError(f"backend {backend.name}: suffix {clash[0]} is already backend {taken[clash[0]]}'s")
    BACKENDS[backend.name] = backend
    return backend


def backend_named(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise QtoolError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None


def backend_for_file(path: Path) -> Backend:
    """The backend whose runner runs `path`, by its suffix."""
    for backend in BACKENDS.values():
        if Path(path).suffix in backend.suffixes:
            return backend
    known = "; ".join(f"{', '.join(b.suffixes)} ({b.name}: {b.summary})" for b in BACKENDS.values())
    raise QtoolError(f"{path} is not a file any backend runs: {known}")


def runner_factory(
    model_path: Path, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)
):
    """A picklable factory of the runner for `model_path`, from the backend of its suffix."""
    backend = backend_for_file(model_path)
    return functools.partial(backend.runner, Path(model_path), threads=threads, providers=tuple(providers))


# -- ONNX Runtime --------------------------------------------------------------------------------
@dataclass(frozen=True)
class OrtBuildOptions:
    int8_kernels: str = ORT_INT8_KERNELS  # auto: the fastest exact integer kernels for this CPU and graph

    def validate(self) -> None:
        if self.int8_kernels != "auto" and self.int8_kernels not in INT8_KERNELS:
            raise QtoolError(
                f"--int8-kernels must be auto or one of {', '.join(INT8_KERNELS)}, got {self.int8_kernels!r}"
            )


def resolve_int8_kernels(choice: str, graph: Path | None = None) -> tuple[str, str]:
    """`--int8-kernels`: u8s8 or u8u8 as given, or for `auto` the fastest exact one for this CPU and
    `graph`: U8S8 where it does not saturate, or where every GEMM weight is within 7 bits; and why."""
    OrtBuildOptions(choice).validate()
    if choice == "auto":
        kernels, why = int8_kernels_for_this_cpu()
        if kernels == "u8u8" and graph is not None and u8s8_exact_everywhere(load_model(graph)):
            return "u8s8", (
                "every GEMM weight is within 7 bits ([-64, 63]), so U8S8 kernels cannot saturate although "
                f"they add pairs of products in 16 bits on this CPU, {cpu_summary()}"
            )
        return kernels, why
    return choice, "as asked"


def build_ort(graph: Path, output: Path | None = None, options: OrtBuildOptions | None = None) -> dict:
    """The ONNX Runtime CPU graph `<graph stem>.ort.onnx`, rebuilt only when the graph or the kernel
    choice changed; the report says which integer kernels it is for and why, and what ONNX Runtime
    fused in it."""
    import onnxruntime

    graph = Path(graph)
    graph_metadata(graph)  # a one-line error for a missing, empty or corrupt graph
    target = distinct_output(Path(output or graph.with_name(f"{graph.stem}.ort.onnx")), graph)
    kernels, why = resolve_int8_kernels((options or OrtBuildOptions()).int8_kernels, graph)

    def run() -> dict:
        rewrite_file_for_ort_cpu(graph, target, kernels=kernels)
        report = {"backend": "ort", "graph": str(target), "scope": graph_metadata(graph).get("scope")}
        return report | {"int8_kernels": kernels, "int8_kernels_reason": why, **check_fused(target)}

    key = {
        "source_sha256": sha256_file(graph),
        "qtool": __version__,
        "rewrite": ORT_REWRITE_VERSION,
        "int8_kernels": kernels,
        "onnxruntime": onnxruntime.__version__,
    }
    report = cached_stage(manifest_path(target), key, run, artifact=target, stage="build ONNX Runtime graph")
    # where it is now, not where it was built; why the kernels, as this CPU says now
    return {**report, "int8_kernels_reason": why, "graph": str(target), "model": str(target), "artifact": str(target)}


def ort_runner(path: Path, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Runner:
    from qtool.runners.ort import OrtRunner

    # Without spinning, a session that waits its turn does not steal cores from the one being timed.
    return OrtRunner(path, providers=tuple(providers), threads=threads, spinning=False)


# -- TensorRT ------------------------------------------------------------------------------------
def build_trt(graph: Path, output: Path | None = None, options: TrtBuildConfig | None = None) -> dict:
    """A TensorRT engine `<graph>.plan` with its build manifest (needs TensorRT and an NVIDIA GPU); the
    graph was checked by the backend's `check_graph` (`check_trt_graph`) first."""
    target = distinct_output(Path(output or Path(graph).with_suffix(".plan")), graph)
    built = build_engine(graph, target, options or TrtBuildConfig())
    return {"backend": "trt", "engine": str(target), **built, "artifact": str(target)}


def check_trt_graph(graph: Path) -> None:
    if graph_metadata(graph).get(PEG_LAYOUT_KEY, "gathered") not in ("gathered", "folded"):
        raise QtoolError(
            f"{graph} writes PEG groups with per-channel activation scales, which TensorRT does not take; "
            "write the TensorRT graph with `qtool quantize FP32.onnx CALIB.json --peg-layout gathered`, "
            "or calibrate with --weights folded"
        )


def trt_runner(path: Path, threads: int | None = None, providers: Sequence[str] = ()) -> Runner:
    from qtool.runners.trt import TrtRunner

    if threads is not None:
        log.info("--threads does not apply to the TensorRT engine %s", path)
    return TrtRunner(path)


def plan_source_graph(path: Path) -> Path | None:
    """The ONNX graph a .plan's build manifest says it was built from, if it is still beside it."""
    from qtool.runners.trt import read_plan_manifest

    manifest = read_plan_manifest(path)
    if manifest is None or not manifest.get("onnx"):
        return None
    onnx_path = Path(path).parent / manifest["onnx"]
    return onnx_path if onnx_path.is_file() else None


def check_plan(path: Path) -> None:
    from qtool.runners.trt import read_plan_manifest

    if read_plan_manifest(path) is None:
        raise QtoolError(
            f"{path} is not a TensorRT engine built by qtool (no build manifest beside it); "
            "build one with `qtool build MODEL.qdq.onnx --backend trt`"
        )


def plan_metadata(path: Path) -> dict:
    from qtool.runners.trt import read_plan_manifest

    return dict((read_plan_manifest(path) or {}).get("onnx_metadata") or {})


# -- OpenVINO ------------------------------------------------------------------------------------
def build_openvino(graph: Path, output: Path | None = None, options: None = None) -> dict:
    """The OpenVINO model `<graph stem>.ov.xml` (and `.bin`) of an ONNX graph, weights kept in float32
    (OpenVINO would store them in FP16 by default), rebuilt only when the graph or OpenVINO changed."""
    from qtool.runners.openvino import import_openvino

    ov = import_openvino()
    graph = Path(graph)
    metadata = graph_metadata(graph)  # a one-line error for a missing, empty or corrupt graph
    target = distinct_output(Path(output or graph.with_name(f"{graph.stem}.ov.xml")), graph)
    if target.suffix != ".xml":
        raise QtoolError(f"an OpenVINO model is an .xml file (with its .bin beside it), got {target}; name it *.xml")

    def run() -> dict:
        rewritten, passes = openvino_graph(load_model(graph))
        _save_openvino(ov, rewritten, graph, target)
        source = os.path.relpath(graph.resolve(), target.resolve().parent)  # found again wherever both move
        return {"backend": "openvino", "source": source, "onnx_metadata": metadata, "openvino": ov.__version__,
                "graph_passes": {name: len(changed) for name, changed in passes.items()}}

    key = {"source_sha256": sha256_file(graph), "qtool": __version__, "openvino": ov.__version__,
           "graph_passes": OPENVINO_GRAPH_VERSION}
    weights = target.with_suffix(".bin")
    report = cached_stage(manifest_path(target), key, run, artifact=target, force=not weights.is_file(),
                          stage="build OpenVINO model")
    return {**report, "graph": str(target), "model": str(target), "artifact": str(target)}


def _save_openvino(ov, model, graph: Path, target: Path) -> None:
    """Convert an in-memory ONNX graph and save it as the OpenVINO model `target` (through a temporary
    file when it is too large for one protobuf message, as a graph whose weights live beside it can be;
    saved before that file goes, as the converted model may still read its weights from it)."""
    with tempfile.TemporaryDirectory(prefix="qtool-openvino-") as folder:
        if model.ByteSize() < PROTOBUF_LIMIT:
            source = io.BytesIO(model.SerializeToString())
        else:
            import onnx

            source = str(Path(folder) / graph.name)
            onnx.save(model, source, save_as_external_data=True, location=f"{graph.name}.data")
        ov.save_model(ov.convert_model(source), str(target), compress_to_fp16=False)


def openvino_run_settings() -> dict:
    from qtool.runners.openvino import compile_properties

    return compile_properties()


def openvino_runner(path: Path, threads: int | None = None, providers: Sequence[str] = ()) -> Runner:
    from qtool.runners.openvino import OpenVinoRunner

    return OpenVinoRunner(path, threads=threads)


def _openvino_build(path: Path) -> dict:
    """What `build_openvino` recorded beside an OpenVINO model (nothing for a model it did not build)."""
    record = manifest_path(Path(path))
    return ((read_json(record) if record.is_file() else None) or {}).get("result") or {}


def openvino_metadata(path: Path) -> dict:
    """The metadata of the graph an OpenVINO model was built from, as its build record kept it."""
    return dict(_openvino_build(path).get("onnx_metadata") or {})


def openvino_source(path: Path) -> Path | None:
    """The ONNX graph an OpenVINO model was built from, if its build record names one that still exists."""
    source = _openvino_build(path).get("source")
    found = Path(path).parent / source if source else None
    return found if found is not None and found.is_file() else None


register_backend(
    Backend(
        name="ort", summary="ONNX Runtime CPU graph", suffixes=(".onnx",), runner=ort_runner, build=build_ort,
        options=OrtBuildOptions, library="onnxruntime", install="pip install onnxruntime",
    )
)
register_backend(
    Backend(
        name="trt", summary="TensorRT engine", suffixes=(".plan", ".engine"), runner=trt_runner, build=build_trt,
        options=TrtBuildConfig, library="tensorrt", install="pip install 'qtool[trt]' on a machine with an NVIDIA GPU",
        source_graph=plan_source_graph, check_graph=check_trt_graph, check_artifact=check_plan, metadata=plan_metadata,
    )
)
register_backend(
    Backend(
        name="openvino", summary="OpenVINO CPU model", suffixes=(".xml",), companions=(".bin",), runner=openvino_runner,
        build=build_openvino, library="openvino", install="pip install 'qtool[peers]' (or pip install openvino)",
        metadata=openvino_metadata, source_graph=openvino_source, run_settings=openvino_run_settings,
    )
)
