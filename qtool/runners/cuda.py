"""The CUDA runtime calls the TensorRT runner makes: device buffers, copies, a stream and events.

They go through the one CUDA runtime library `qtool.runners.device` found to see the GPU, by ctypes,
so qtool never depends on another package finding its own copy of libcudart (polygraphy, for one,
does not look in the CUDA 13 wheels' folder). Every call that fails is a one-line `QtoolError`
naming the call and CUDA's error text.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from qtool.errors import QtoolError
from qtool.runners import device

HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2  # cudaMemcpyKind


class Cuda:
    """One process's CUDA runtime: `library` (a loaded libcudart, or a stand-in with its functions)."""

    def __init__(self, library=None) -> None:
        self.library = library if library is not None else device.load_cuda_runtime()
        if self.library is None:
            raise QtoolError(f"no CUDA runtime sees a GPU here ({device.missing_gpu_reason()})")

    def call(self, name: str, *arguments) -> None:
        try:
            status = getattr(self.library, name)(*arguments)
        except AttributeError:
            raise QtoolError(f"the CUDA runtime library has no {name}; install a CUDA 12 or 13 runtime") from None
        if status:
            raise QtoolError(f"CUDA {name} failed: {device.status_text(self.library, status)}")

    def _handle(self, name: str, *arguments) -> int:
        handle = ctypes.c_void_p(0)
        self.call(name, ctypes.byref(handle), *arguments)
        return int(handle.value or 0)

    def malloc(self, nbytes: int) -> int:
        return self._handle("cudaMalloc", ctypes.c_size_t(max(nbytes, 1)))

    def free(self, pointer: int) -> None:
        if pointer:
            self.call("cudaFree", ctypes.c_void_p(pointer))

    def pinned(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A host array in page-locked memory (cudaMallocHost), for copies the device can start at once;
        release it with `free_pinned`."""
        dtype = np.dtype(dtype)
        size = int(np.prod(shape)) * dtype.itemsize
        pointer = self._handle("cudaMallocHost", ctypes.c_size_t(max(size, 1)))
        memory = (ctypes.c_uint8 * max(size, 1)).from_address(pointer)
        return np.frombuffer(memory, dtype=np.uint8)[:size].view(dtype).reshape(shape)

    def free_pinned(self, array: np.ndarray) -> None:
        self.call("cudaFreeHost", ctypes.c_void_p(array.ctypes.data))

    def stream(self) -> int:
        return self._handle("cudaStreamCreate")

    def destroy_stream(self, stream: int) -> None:
        if stream:
            self.call("cudaStreamDestroy", ctypes.c_void_p(stream))

    def synchronize(self, stream: int) -> None:
        self.call("cudaStreamSynchronize", ctypes.c_void_p(stream))

    def copy_to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        """Copy the contiguous `array` to `pointer` (keep `array` alive until the stream is synchronized)."""
        self.call("cudaMemcpyAsync", ctypes.c_void_p(pointer), ctypes.c_void_p(array.ctypes.data),
                  ctypes.c_size_t(array.nbytes), ctypes.c_int(HOST_TO_DEVICE), ctypes.c_void_p(stream))

    def copy_to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        self.call("cudaMemcpyAsync", ctypes.c_void_p(array.ctypes.data), ctypes.c_void_p(pointer),
                  ctypes.c_size_t(array.nbytes), ctypes.c_int(DEVICE_TO_HOST), ctypes.c_void_p(stream))

    def event(self) -> int:
        return self._handle("cudaEventCreate")

    def record(self, event: int, stream: int) -> None:
        self.call("cudaEventRecord", ctypes.c_void_p(event), ctypes.c_void_p(stream))

    def elapsed_ms(self, start: int, end: int) -> float:
        """Milliseconds between two recorded events (waits for `end`)."""
        self.call("cudaEventSynchronize", ctypes.c_void_p(end))
        milliseconds = ctypes.c_float(0.0)
        self.call("cudaEventElapsedTime", ctypes.byref(milliseconds), ctypes.c_void_p(start), ctypes.c_void_p(end))
        return float(milliseconds.value)

    def destroy_event(self, event: int) -> None:
        if event:
            self.call("cudaEventDestroy", ctypes.c_void_p(event))


@dataclass
class DeviceBuffer:
    """Device memory that grows to the largest size asked of it."""

    cuda: Cuda
    pointer: int = 0
    capacity: int = 0

    def at_least(self, nbytes: int) -> int:
        """The buffer's address, reallocated when `nbytes` exceed its capacity."""
        if nbytes > self.capacity:
            self.free()
            self.pointer, self.capacity = self.cuda.malloc(nbytes), max(nbytes, 1)
        return self.pointer

    def free(self) -> None:
        self.cuda.free(self.pointer)
        self.pointer, self.capacity = 0, 0
