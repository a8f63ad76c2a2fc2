"""The symmetric INT8 grid (zero point 0, TensorRT's convention): amax maps to 127.

Weights may use a narrower grid of `bits` (7: amax maps to 63, codes in [-64, 63]), still stored as
int8: products of uint8 activations with such weights never overflow the 16-bit pair sums of
ONNX Runtime's U8S8 kernels on x86 CPUs without VNNI (255 x 64 x 2 < 32768)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT8_MAX = 127
WEIGHT_BITS = (8, 7)  # weight grids: the first is the default
AMAX_FLOOR = 1e-12  # an all-zero tensor still gets a positive scale


def scale_for(amax: float) -> float:
    """The float32 scale of an activation range `amax`."""
    return float(np.float32(max(amax, AMAX_FLOOR) / INT8_MAX))


@dataclass(frozen=True)
class ChannelGroup:
    """One channel group of a per-embedding-group range: its channels, range and scale."""

    channels: tuple[int, ...]
    amax: float
    scale: float | None = None  # None: the grid's scale of `amax`

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "amax", float(self.amax))
        object.__setattr__(self, "scale", scale_for(self.amax) if self.scale is None else float(self.scale))

    def to_json(self) -> dict:
        return {"amax": self.amax, "scale": self.scale, "channels": list(self.channels)}


@dataclass(frozen=True)
class ActivationRange:
    """A calibrated symmetric range, the one type from the calibrator that estimates it through the
    calibration file to the graph writer: one `amax` and its scale, or one per channel group (PEG)."""

    amax: float
    scale: float | None = None  # None: the grid's scale of `amax`
    groups: tuple[ChannelGroup, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "amax", float(self.amax))
        object.__setattr__(self, "scale", scale_for(self.amax) if self.scale is None else float(self.scale))
        if self.groups is not None:
            object.__setattr__(self, "groups", tuple(self.groups))

    @property
    def tensor_scale(self) -> float:
        """The one per-tensor scale: the scale, or the only group's scale of a PEG range with K = 1."""
        return self.groups[0].scale if self.groups else self.scale

    def to_json(self) -> dict:
        data = {"amax": self.amax, "scale": self.scale}
        if self.groups is not None:
            data["groups"] = [group.to_json() for group in self.groups]
        return data


def grid_max(bits: int = 8) -> int:
    """The largest code of a symmetric grid of `bits` bits: 127 for 8, 63 for 7."""
    if bits not in WEIGHT_BITS:
        raise ValueError(f"bits must be one of {WEIGHT_BITS}, got {bits!r}")
    return 2 ** (bits - 1) - 1


def weight_scales(weight: np.ndarray, axis: int | None, bits: int = 8) -> np.ndarray:
    """Float32 scales of a weight on a grid of `bits` bits: one per index of `axis` (per channel), or
    one (axis None)."""
    if axis is None:
        amax = np.abs(weight).max()
    else:
        other = tuple(i for i in range(weight.ndim) if i != axis)
        amax = np.abs(weight).max(axis=other)
    return (np.maximum(amax, AMAX_FLOOR) / grid_max(bits)).astype(np.float32)


def quantize(weight: np.ndarray, scales: np.ndarray, axis: int | None, bits: int = 8) -> np.ndarray:
    """Int8 codes of `weight` on `scales` (along `axis`, or one scale), rounded half to even, within
    the grid of `bits` bits."""
    if axis is not None:
        shape = [1] * weight.ndim
        shape[axis] = -1
        scales = scales.reshape(shape)
    top = grid_max(bits)
    return np.clip(np.rint(weight / scales), -top - 1, top).astype(np.int8)
