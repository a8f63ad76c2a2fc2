"""TensorRT backend: run an engine (.plan) behind the runner protocol, checked against its manifest.

Engines are built by `qtool.deployment.trt_build`. The exported graph takes int64 `input_ids`,
`attention_mask` and `token_type_ids` of shape [batch, sequence]; the runner binds every input with
the dtype the engine declares and casts feeds to it, which also serves an engine built from a graph
with int32 inputs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from qtool.errors import QtoolError
from qtool.fileio import manifest_path, read_json, sha256_file
from qtool.runners.base import Runner
from qtool.runners.cuda import Cuda, DeviceBuffer
from qtool.runners.device import GpuInfo, current_gpu, device_memory_used

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'qtool[trt]' on a machine with an NVIDIA GPU"
ENGINE_KIND = "tensorrt-engine"
MINIMUM_TENSORRT_MAJOR = 10

Shape = tuple[int, ...]
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]


def one_line(text: object) -> str:
    """`text` with its whitespace runs (newlines too) collapsed to single spaces."""
    return " ".join(str(text).split())


def import_tensorrt():
    """The `tensorrt` module, or a one-line error saying how to get a usable one."""
    try:
        import tensorrt
    except ModuleNotFoundError:
        raise QtoolError(f"TensorRT is not installed; {INSTALL_HINT}") from None
    except (ImportError, OSError) as exc:
        reason = one_line(exc)[:200]
        raise QtoolError(f"TensorRT is installed but cannot be loaded ({reason}); {INSTALL_HINT}") from None
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < MINIMUM_TENSORRT_MAJOR:
        raise QtoolError(
            f"TensorRT {tensorrt.__version__} is too old; qtool needs TensorRT {MINIMUM_TENSORRT_MAJOR} or newer "
            f"({INSTALL_HINT})"
        )
    return tensorrt


# The CUDA major each TensorRT wheel family is built for, and the driver it needs (NVIDIA's CUDA
# compatibility table: CUDA 12.x runs on R525 and newer, CUDA 13.x on R580 and newer).
TRT_WHEELS = {"tensorrt-cu12": 12, "tensorrt-cu13": 13, "tensorrt-cu11": 11}
DRIVER_FOR_CUDA = {11: "R450", 12: "R525", 13: "R580"}


def tensorrt_cuda_major(version: str | None = None) -> int | None:
    """The CUDA major version of the installed TensorRT wheels (tensorrt-cu12 / -cu13): the family whose
    version is `version` (the imported TensorRT's) when several are installed; None if unknown."""
    import importlib.metadata

    installed = {}
    for wheel, major in TRT_WHEELS.items():
        try:
            installed[major] = importlib.metadata.version(wheel)
        except importlib.metadata.PackageNotFoundError:
            continue
    matching = [major for major, found in installed.items() if version is None or found == version]
    return max(matching) if matching else (max(installed) if len(installed) == 1 else None)


def preflight(gpu: GpuInfo) -> dict:
    """What a TensorRT run here will use, checked before any engine is built: TensorRT and the CUDA it
    was built for, the CUDA runtime library that sees the GPU and its version, the CUDA version the
    driver supports, the GPU and its compute capability (and polygraphy's version, for its tools). A
    one-line error when something is missing or the pieces do not fit. `gpu`: `current_gpu()`."""
    import importlib.metadata

    from qtool.runners import device

    trt = import_tensorrt()
    library = device.load_cuda_runtime()
    if library is None:
        raise QtoolError(f"no CUDA runtime sees a GPU here ({device.missing_gpu_reason()})")
    versions = device.cuda_versions(library)
    trt_cuda = tensorrt_cuda_major(trt.__version__)
    driver_cuda = versions["driver_cuda"]
    if trt_cuda and driver_cuda and int(driver_cuda.split(".")[0]) < trt_cuda:
        older = min(TRT_WHEELS.values(), key=lambda major: abs(major - int(driver_cuda.split(".")[0])))
        raise QtoolError(
            f"TensorRT {trt.__version__} is built for CUDA {trt_cuda}, which needs an NVIDIA driver of "
            f"{DRIVER_FOR_CUDA[trt_cuda]} or newer, but this driver supports CUDA {driver_cuda}; update the driver, "
            f"or install the CUDA {older} build (pip install 'qtool[trt]' is CUDA 12)"
        )
    try:
        polygraphy = importlib.metadata.version("polygraphy")
    except importlib.metadata.PackageNotFoundError:
        polygraphy = None
    return {
        "tensorrt": trt.__version__,
        "tensorrt_cuda": trt_cuda,
        "cuda_runtime": versions["runtime_cuda"],
        "cuda_runtime_library": getattr(library, "_name", None),
        "driver_cuda": driver_cuda,
        "driver": gpu.driver_version,
        "gpu": gpu.describe(),
        "compute_capability": gpu.compute_capability,
        "polygraphy": polygraphy,
    }


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


_forwarding_logger: tuple[object, object] | None = None


def trt_logger(trt):
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
                self.errors = [*self.errors[-9:], one_line(message)]
            log.log(python_level, "TensorRT: %s", message)

        def last_error(self, default: str) -> str:
            return self.errors[-1] if self.errors else default

    _forwarding_logger = (trt, ForwardingLogger())
    return _forwarding_logger[1]


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


class TrtRunner(Runner):
    """Runs a serialized engine; the plan is loaded and checked against its manifest on entry."""

    name = "tensorrt"
    library = "tensorrt"

    def __init__(self, plan_path: Path) -> None:
        super().__init__()
        self.plan_path = Path(plan_path)
        self.manifest: dict | None = None
        self.device_memory_bytes: int | None = None  # the context's scratch (activation) memory, from TensorRT
        self._vram: dict[str, int | None] = {}  # cudaMemGetInfo readings around loading (see device_memory)
        self._runtime = self._engine = self._context = None
        self._cuda: Cuda | None = None
        self._stream = 0
        self._events: tuple[int, int] = (0, 0)
        self._staged: tuple[Mapping, list, list] | None = None  # feeds timed last, their pinned inputs, outputs
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
        logger = trt_logger(trt)
        logger.errors.clear()
        self._runtime = trt.Runtime(logger)
        plan = self.plan_path.read_bytes()
        self._vram = {"before": device_memory_used()}  # after the CUDA context exists: this reading makes one
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        self._vram["engine"] = device_memory_used()
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
        self._vram["context"] = device_memory_used()
        if self._context is None:
            raise QtoolError(
                f"TensorRT cannot create an execution context for {self.plan_path} "
                f"({logger.last_error('out of GPU memory?')}); free GPU memory and retry"
            )
        self._cuda = Cuda()
        self._stream = self._cuda.stream()
        self._events = (self._cuda.event(), 0)  # each kept as soon as it exists, for _deactivate
        self._events = (self._events[0], self._cuda.event())
        self._buffers = {name: DeviceBuffer(self._cuda) for name in names}
        log.info(
            "loaded %s: inputs %s, outputs %s, %d bytes of device memory",
            self.plan_path,
            self._inputs,
            self._outputs,
            self.device_memory_bytes,
        )

    def _deactivate(self) -> None:
        """Release everything, each step on its own: after a sticky CUDA error every call fails, and the
        error that ended the run (not a later one here) is what the user should see."""
        cuda = self._cuda
        steps = [buffer.free for buffer in self._buffers.values()]
        if cuda is not None:
            steps += [self._unstage, *(lambda e=e: cuda.destroy_event(e) for e in self._events),
                      lambda: cuda.destroy_stream(self._stream)]
        for step in steps:
            try:
                step()
            except QtoolError as exc:
                log.warning("releasing %s: %s", self.plan_path, exc)
        self._buffers, self._staged, self._stream, self._events = {}, None, 0, (0, 0)
        # Destroy in dependency order: context, then engine, then runtime.
        self._context = None
        self._engine = None
        self._runtime = None

    def input_names(self) -> list[str]:
        return self._inputs

    def device_memory(self) -> dict[str, int | str]:
        """Device memory of this engine, from cudaMemGetInfo readings in this process: used after
        deserializing the engine minus before (weights and the engine's own buffers), after creating
        the context minus after deserializing (activations), and now minus before (all this runner
        holds: also I/O buffers and kernels loaded lazily on the first run); with TensorRT's context
        scratch size and the engine file's size. Measure in a process of its own (`qtool bench
        --isolated`): the readings are device-wide, so another process allocating in between counts."""
        record: dict[str, int | str] = {"engine_file_bytes": self.plan_path.stat().st_size}
        if self.device_memory_bytes is not None:
            record["device_memory_bytes"] = self.device_memory_bytes
        readings = {**self._vram, "now": device_memory_used() if self._vram.get("before") is not None else None}
        if None in readings.values() or len(readings) < 4:
            return record
        record.update(
            vram_engine_bytes=readings["engine"] - readings["before"],
            vram_context_bytes=readings["context"] - readings["engine"],
            vram_total_bytes=readings["now"] - readings["before"],
            vram_method="cudaMemGetInfo differences in this process (device-wide, about 2 MiB pages)",
        )
        return record

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._unstage()  # this binding replaces the timed feeds'
        host_inputs = self.bind(feeds)  # kept alive until the stream is synchronized
        outputs = {name: np.empty(tuple(self._context.get_tensor_shape(name)), self._dtypes[name]) for name in self._outputs}
        self.enqueue()
        for name, host in outputs.items():
            self._cuda.copy_to_host(host, self._buffers[name].pointer, self._stream)
        self._cuda.synchronize(self._stream)
        del host_inputs  # only now may the copies' sources go
        return outputs

    def bind(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Set the input shapes, copy the feeds to the device and point every tensor at its buffer;
        returns the host arrays copied from (keep them until the stream is synchronized)."""
        context, cuda = self._context, self._cuda
        host_inputs = []
        for name in self._inputs:
            array = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            check_feed_shape(name, array.shape, self._profiles[name])
            if not context.set_input_shape(name, array.shape):
                raise QtoolError(f"TensorRT rejected shape {list(array.shape)} for {name}; rebuild the engine")
            pointer = self._buffers[name].at_least(array.nbytes)
            cuda.copy_to_device(pointer, array, self._stream)
            context.set_tensor_address(name, pointer)
            host_inputs.append(array)
        for name in self._outputs:
            size = int(np.prod(tuple(context.get_tensor_shape(name)))) * self._dtypes[name].itemsize
            context.set_tensor_address(name, self._buffers[name].at_least(size))
        return host_inputs

    def timed(self, feeds: Mapping[str, np.ndarray]) -> tuple[float, float | None]:
        """One inference, timed two ways: end to end by the host clock (copy the feeds in from page-locked
        host memory, run, copy the outputs back, synchronize) and the engine alone on the GPU, between
        two CUDA events recorded on the stream around `execute_async_v3`. The feeds are bound and staged
        once; timing the same feeds again reuses them."""
        if self._staged is None or self._staged[0] is not feeds:
            try:
                self._stage(feeds)
            except BaseException:
                self._unstage()
                raise
        _, inputs, outputs = self._staged
        cuda, stream = self._cuda, self._stream
        started = time.perf_counter()
        for name, host in inputs:
            cuda.copy_to_device(self._buffers[name].pointer, host, stream)
        cuda.record(self._events[0], stream)
        self.enqueue()
        cuda.record(self._events[1], stream)
        for name, host in outputs:
            cuda.copy_to_host(host, self._buffers[name].pointer, stream)
        cuda.synchronize(stream)
        host_seconds = time.perf_counter() - started
        return host_seconds, cuda.elapsed_ms(*self._events) / 1000.0

    def _stage(self, feeds: Mapping[str, np.ndarray]) -> None:
        self._unstage()
        selected = self.checked(feeds)
        self.bind(selected)
        self._cuda.synchronize(self._stream)
        self._staged = (feeds, [], [])  # filled as the pinned buffers are made, so _unstage frees them on failure
        for name in self._inputs:
            array = np.ascontiguousarray(selected[name], dtype=self._dtypes[name])
            host = self._cuda.pinned(array.shape, array.dtype)
            self._staged[1].append((name, host))
            host[...] = array
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            self._staged[2].append((name, self._cuda.pinned(shape, self._dtypes[name])))

    def _unstage(self) -> None:
        if self._staged is not None:
            for _, host in self._staged[1] + self._staged[2]:
                self._cuda.free_pinned(host)
        self._staged = None

    def enqueue(self) -> None:
        """Run the engine once on the bound buffers, asynchronously on the runner's stream."""
        if not self._context.execute_async_v3(self._stream):
            raise QtoolError(f"TensorRT failed to run {self.plan_path}; see the TensorRT errors logged above")
