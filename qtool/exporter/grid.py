"""The symmetric INT8 grid (zero point 0, TensorRT's convention): amax maps to 127."""

from __future__ import annotations

import numpy as np

INT8_MAX = 127
AMAX_FLOOR = 1e-12  # an all-zero tensor still gets a positive scale


def scale_for(amax: float) -> float:
    """The float32 scale of an activation range `amax`."""
    return float(np.float32(max(amax, AMAX_FLOOR) / INT8_MAX))


def weight_scales(weight: np.ndarray, axis: int | None) -> np.ndarray:
    """Float32 scales of a weight: one per index of `axis` (per channel), or one (axis None)."""
    if axis is None:
        amax = np.abs(weight).max()
    else:
        other = tuple(i for i in range(weight.ndim) if i != axis)
        amax = np.abs(weight).max(axis=other)
    return (np.maximum(amax, AMAX_FLOOR) / INT8_MAX).astype(np.float32)


def quantize(weight: np.ndarray, scales: np.ndarray, axis: int | None) -> np.ndarray:
    """Int8 codes of `weight` on `scales` (along `axis`, or one scale), rounded half to even."""
    if axis is not None:
        shape = [1] * weight.ndim
        shape[axis] = -1
        scales = scales.reshape(shape)
    return np.clip(np.rint(weight / scales), -128, 127).astype(np.int8)
