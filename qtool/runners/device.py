"""Which GPU this process runs on, for engine manifests and compatibility checks.

The CUDA runtime (the library TensorRT itself uses, loaded through polygraphy's wrapper) gives the
compute capability and PCI bus id of the CUDA device; NVML (`pynvml`, from `nvidia-ml-py`) then
names that exact board by bus id, which stays right when CUDA and NVML number devices differently.
Without NVML the name is unknown and only the compute capability is recorded.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass

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


def _cuda_device(device: int) -> tuple[str, str | None] | None:
    """(compute capability, PCI bus id) of CUDA device `device`, or None when there is none."""
    try:
        from polygraphy import cuda

        cudart = cuda.wrapper().handle
    except Exception as exc:  # polygraphy missing, or no CUDA runtime library to load
        log.debug("CUDA runtime unavailable: %s", exc)
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
