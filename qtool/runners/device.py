"""Which GPU this process runs on, for engine manifests and compatibility checks.

The CUDA runtime library (`libcudart`) gives the compute capability and PCI bus id of the CUDA
device; NVML (`pynvml`, from `nvidia-ml-py`) then names that exact board by bus id, which stays
right when CUDA and NVML number devices differently. Without NVML the name is unknown and only the
compute capability is recorded.

The runtime library is looked for where pip puts it first (`nvidia-cuda-runtime-cu12` installs
`site-packages/nvidia/cuda_runtime/lib/libcudart.so.12`; the CUDA 13 wheels
`site-packages/nvidia/cu13/lib/libcudart.so.13`), then under `CUDA_HOME`/`CUDA_PATH`, then where
the system loader finds it. Each is tried until one sees a device (a CUDA 13 runtime on a driver
too old for it fails, and CUDA 12's may then work); that one is loaded globally, and the TensorRT
runner makes its CUDA calls through it (`qtool.runners.cuda`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# cudaDeviceAttr values from the CUDA runtime's driver_types.h.
_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


@dataclass(frozen=True)
class GpuInfo:
    compute_capability: str
    name: str | None = None
    driver_version: str | None = None

    def describe(self) -> str:
        if self.name:
            return f"{self.name} (compute capability {self.compute_capability})"
        return f"a GPU of compute capability {self.compute_capability}"

    def to_manifest(self) -> dict:
        return asdict(self)

    @classmethod
    def from_manifest(cls, recorded: Mapping | None) -> GpuInfo | None:
        if not recorded or not recorded.get("compute_capability"):
            return None
        return cls(
            compute_capability=str(recorded["compute_capability"]),
            name=recorded.get("name"),
            driver_version=recorded.get("driver_version"),
        )


CUDA_RUNTIME_HINT = (
    "install the CUDA runtime with `pip install nvidia-cuda-runtime-cu12` (or the CUDA toolkit, with CUDA_HOME set)"
)


def cuda_runtime_candidates(roots: Iterable[str | Path] | None = None) -> list[Path]:
    """The CUDA runtime libraries on this machine, best first: pip's NVIDIA wheels under each of
    `roots` (default: `sys.path`), then CUDA_HOME / CUDA_PATH, newest version first within each."""
    found: list[Path] = []
    for root in (sys.path if roots is None else roots):
        nvidia = Path(root or ".") / "nvidia"
        if nvidia.is_dir():
            libraries = [*nvidia.glob("cuda_runtime/lib/libcudart.so*"), *nvidia.glob("cu[0-9]*/lib/libcudart.so*")]
            found += sorted(libraries, key=lambda p: p.name, reverse=True)
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if home := os.environ.get(variable):
            found += sorted(Path(home).glob("lib*/libcudart.so*"), key=lambda p: p.name, reverse=True)
    return list(dict.fromkeys(path for path in found if path.is_file()))


# cudaError_t values a user can act on (driver_types.h).
_STATUS_HINTS = {
    35: "the NVIDIA driver is older than this CUDA runtime needs: update the driver, or use the runtime of "
    "an older CUDA (`pip install 'qtool[trt]'` installs CUDA 12's)",
    100: "no CUDA device",
    3: "CUDA cannot start (check the driver with `nvidia-smi`)",
}


def status_text(library, status: int) -> str:
    """`cudaGetErrorString` of `status`, with a hint for the statuses a user can act on."""
    try:
        function = library.cudaGetErrorString
        if hasattr(function, "restype"):  # a ctypes function returns int unless told
            function.restype = ctypes.c_char_p
        text = (function(status) or b"").decode(errors="replace")
    except (AttributeError, TypeError):
        text = ""
    hint = _STATUS_HINTS.get(status)
    return "; ".join(part for part in (f"{text or 'CUDA error'} ({status})", hint) if part)


def probe_cuda_runtimes(device: int = 0, roots: Iterable[str | Path] | None = None) -> tuple[object | None, list[str]]:
    """The first CUDA runtime library (loaded globally) that sees CUDA device `device`, trying every one
    on this machine (pip's wheels for CUDA 13 and 12, CUDA_HOME, the system's); and what each tried one
    said. A newer runtime than the driver supports fails with cudaErrorInsufficientDriver, and the next
    one (an older CUDA) may then work."""
    tried: list[str] = []
    for path in [*cuda_runtime_candidates(roots), ctypes.util.find_library("cudart")]:
        if not path:
            continue
        name = Path(str(path)).name
        try:  # loaded privately to ask; only the one chosen is loaded for everyone (RTLD_GLOBAL)
            library = ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)
            count = ctypes.c_int(0)
            status = library.cudaGetDeviceCount(ctypes.byref(count))
        except (OSError, AttributeError) as exc:
            log.debug("cannot use %s: %s", path, exc)
            tried.append(f"{name} does not load as a CUDA runtime")
            continue
        if status == 0 and count.value > device:
            log.debug("CUDA runtime: %s", path)
            return ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL), tried
        tried.append(f"{name}: {status_text(library, status) if status else f'{count.value} device(s)'}")
    return None, tried


def load_cuda_runtime(roots: Iterable[str | Path] | None = None):
    """The CUDA runtime library that sees a GPU, loaded (globally); None when none does."""
    return probe_cuda_runtimes(0, roots)[0]


def cuda_versions(library) -> dict[str, str | None]:
    """The CUDA version the driver supports and the runtime's own (cudaDriverGetVersion,
    cudaRuntimeGetVersion: 12040 is "12.4")."""
    versions: dict[str, str | None] = {}
    for key, call in (("driver_cuda", "cudaDriverGetVersion"), ("runtime_cuda", "cudaRuntimeGetVersion")):
        value = ctypes.c_int(0)
        try:
            ok = getattr(library, call)(ctypes.byref(value)) == 0 and value.value > 0
        except (AttributeError, TypeError):
            ok = False
        versions[key] = f"{value.value // 1000}.{value.value % 1000 // 10}" if ok else None
    return versions


def _cuda_device(device: int) -> tuple[str, str | None] | None:
    """(compute capability, PCI bus id) of CUDA device `device`, or None when there is none."""
    cudart = load_cuda_runtime()
    if cudart is None:
        log.debug("no CUDA runtime library sees a GPU: %s", CUDA_RUNTIME_HINT)
        return None
    count = ctypes.c_int(0)
    status = cudart.cudaGetDeviceCount(ctypes.byref(count))
    if status != 0 or count.value <= device:
        log.debug("no CUDA device %d (cudaGetDeviceCount status %d, %d devices)", device, status, count.value)
        return None
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    if cudart.cudaDeviceGetAttribute(ctypes.byref(major), _ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device) or (
        cudart.cudaDeviceGetAttribute(ctypes.byref(minor), _ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
    ):
        return None
    bus = ctypes.create_string_buffer(64)
    bus_id = bus.value.decode() if cudart.cudaDeviceGetPCIBusId(bus, len(bus), device) == 0 else None
    return f"{major.value}.{minor.value}", bus_id


def _nvml_name_and_driver(bus_id: str) -> tuple[str | None, str | None]:
    try:
        import pynvml
    except ImportError:
        log.debug("pynvml is not installed; the GPU name is not recorded")
        return None, None
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
            name, driver = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        log.debug("NVML cannot describe GPU %s: %s", bus_id, exc)
        return None, None
    as_text = [value.decode() if isinstance(value, bytes) else str(value) for value in (name, driver)]
    return as_text[0], as_text[1]


def current_gpu(device: int = 0) -> GpuInfo | None:
    """The CUDA device TensorRT will use, or None when no CUDA GPU is visible to this process."""
    found = _cuda_device(device)
    if found is None:
        return None
    compute_capability, bus_id = found
    name, driver = _nvml_name_and_driver(bus_id) if bus_id else (None, None)
    return GpuInfo(compute_capability=compute_capability, name=name, driver_version=driver)


def device_memory_used() -> int | None:
    """Bytes in use on the current CUDA device (cudaMemGetInfo: total - free), None without CUDA.

    The count is device-wide (other processes' allocations count too) and moves in pages of about
    2 MiB; the first call in a process creates its CUDA context, which the reading then includes.
    Differences between two readings in one process are that process's allocations in between."""
    cudart = load_cuda_runtime()
    if cudart is None:
        return None
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    status = cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
    if status != 0:
        log.debug("cudaMemGetInfo failed with status %d", status)
        return None
    return int(total.value - free.value)


def missing_gpu_reason() -> str:
    """Why `current_gpu` found nothing, in words a user can act on: what each CUDA runtime said."""
    found, tried = probe_cuda_runtimes()
    if found is not None:
        return "a CUDA runtime sees a GPU, but its compute capability could not be read (check `nvidia-smi`)"
    if not tried:
        return f"no CUDA runtime library was found; {CUDA_RUNTIME_HINT}"
    return "; ".join(tried)
