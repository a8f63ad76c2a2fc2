"""SmoothQuant-style migration of activation range into weights, as an ONNX graph transform.

SmoothQuant (Xiao et al., 2023) divides an activation X per input channel j by

    s_j = max|X_j| ** alpha / max|W_j,:| ** (1 - alpha)

and multiplies the matching weight rows by s_j, so that X' W' = (X / s)(diag(s) W) = X W. Here
X is a LayerNorm output (the embeddings LayerNorm and each layer's attention and FFN LayerNorms),
the division is folded into that LayerNorm (gamma' = gamma / s, beta' = beta / s) and max|W_j,:|
is taken over every projection that reads X (the Q, K and V weights together, or the FFN
intermediate weight).

BERT is post-LN, so X also feeds the residual Add of the next sublayer (and the last one the
pooler). Those consumers must keep reading X: they are rewired to read `Mul(X', s)`, one Mul per
smoothed tensor (`<point>/Unsmooth`). Shape-only consumers (Shape, Size) keep X'. The LayerNorm
output keeps its tensor name, so quantization points and statistics keep their names.

What counts as a projection of X: a MatMul that reads X as input 0 and, as input 1, a 2-D
initializer of [channels, out] that no other node reads (and that is not a graph input, which a
caller could override). A Gemm with transA = 0 and such a weight is handled too, scaling the rows
of B, or its columns when transB = 1. Any other consumer (a MatMul with a shared or computed
weight, a Gather of token 0 feeding the pooler, ...) keeps reading X through the Mul. A point is
smoothed only when X comes from a LayerNormalization over the last axis whose scale (and bias, when
present) are constants, when X is not a graph output and when at least one projection reads it. So
the encoder's last LayerNorm, which feeds only the pooler's Gather (then Gemm), is left as it is.

The exporter's graphs use the single LayerNormalization op (opset 17); decomposed LayerNorms
(ReduceMean/Sub/Pow/...) do not occur in them and are not supported. torch.onnx deduplicates equal
initializers, so in a randomly initialised model the LayerNorm scales are `Identity` outputs of one
shared initializer; such a scale (or bias) gets a private initializer under the LayerNorm's own input
name and the Identity is removed. Only the initializers and nodes this transform orphans are pruned.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from qtool.defaults import SMOOTH_ALPHA
from qtool.errors import QtoolError
from qtool.exporter.points import QuantPoint, find_quant_points
from qtool.graph import GraphIndex, attribute

log = logging.getLogger(__name__)

SMOOTHABLE_ROLES = ("embeddings_output", "layernorm_output")
FACTOR_MIN, FACTOR_MAX = 1e-5, 1e5


@dataclass(frozen=True)
class SmoothConfig:
    alpha: float = SMOOTH_ALPHA
    roles: tuple = SMOOTHABLE_ROLES

    def validate(self) -> None:
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
            raise QtoolError(
                f"smoothing alpha must be between 0 and 1 (how much of the activation range moves into the "
                f"weights), got {alpha}"
            )
        unknown = [role for role in self.roles if role not in SMOOTHABLE_ROLES]
        if unknown or not self.roles:
            raise QtoolError(
                f"smoothing roles must be among {', '.join(SMOOTHABLE_ROLES)} (LayerNorm outputs), got {list(self.roles)}"
            )


# -- where smoothing applies -----------------------------------------------------------------------
@dataclass
class _Projection:
    node: onnx.NodeProto
    weight: str  # a private initializer
    axis: int  # the weight axis that indexes X's channels


@dataclass
class _Site:
    point: QuantPoint
    layer_norm: onnx.NodeProto
    channels: int
    dtype: np.dtype
    projections: list[_Projection]
    others: list[tuple[onnx.NodeProto, int]]  # consumers that must keep reading the unsmoothed X


def _projection(index: GraphIndex, node: onnx.NodeProto, slot: int, channels: int) -> _Projection | None:
    if slot != 0 or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    weight = node.input[1]
    if not index.private_initializer(weight):
        return None
    init = index.initializers[weight]
    if len(init.dims) != 2 or not np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type), np.floating):
        return None
    if node.op_type == "MatMul":
        axis = 0
    elif attribute(node, "transA", 0):
        return None
    else:
        axis = 1 if attribute(node, "transB", 0) else 0
    return _Projection(node, weight, axis) if init.dims[axis] == channels else None


def _site(index: GraphIndex, point: QuantPoint) -> _Site | None:
    """How `point` can be smoothed, or None when it cannot (see the module docstring)."""
    tensor = point.tensor
    layer_norm = index.producer.get(tensor)
    if layer_norm is None or layer_norm.op_type != "LayerNormalization" or layer_norm.output[0] != tensor:
        return None
    if attribute(layer_norm, "axis", -1) != -1 or tensor in index.graph_outputs or tensor in index.subgraph_uses:
        return None
    gamma = index.constant_value(layer_norm.input[1])
    if gamma is None or gamma.ndim != 1 or not np.issubdtype(gamma.dtype, np.floating):
        return None
    if len(layer_norm.input) > 2 and layer_norm.input[2]:
        beta = index.constant_value(layer_norm.input[2])
        if beta is None or beta.shape != gamma.shape:
            return None
    channels = gamma.shape[0]
    projections, others = [], []
    for node, slot in index.value_consumers(tensor):
        projection = _projection(index, node, slot, channels)
        if projection is not None:
            projections.append(projection)
        else:
            others.append((node, slot))
    if not projections:
        return None
    return _Site(point, layer_norm, channels, gamma.dtype, projections, others)


def _sites(index: GraphIndex, points: Iterable[QuantPoint], roles: Iterable[str]) -> list[_Site]:
    roles = set(roles)
    found = [_site(index, point) for point in points if point.role in roles]
    return [site for site in found if site is not None]


# -- factors ---------------------------------------------------------------------------------------
def _factors(activation_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    activation_max = np.asarray(activation_max, dtype=np.float64)
    weight_max = np.asarray(weight_max, dtype=np.float64)
    valid = (activation_max > 0) & (weight_max > 0) & np.isfinite(activation_max) & np.isfinite(weight_max)
    factors = np.ones_like(activation_max)
    factors[valid] = activation_max[valid] ** alpha / weight_max[valid] ** (1.0 - alpha)
    return np.clip(factors, FACTOR_MIN, FACTOR_MAX).astype(np.float32)


def _stats_table(stats) -> Mapping:
    """Accept an ActivationStats (its `.stats`) or a plain mapping of point name -> TensorStats."""
    return stats.stats if hasattr(stats, "stats") else stats


def smoothing_factors(
    model: onnx.ModelProto,
    points: list[QuantPoint],
    stats,
    alpha: float,
    roles: tuple = SMOOTHABLE_ROLES,
) -> dict[str, np.ndarray]:
    """Per-channel factors s (float32) for every smoothable point of `roles`, by point name.

    `stats` is an ActivationStats collected on `model` (or a mapping of point name -> TensorStats);
    its per-channel max |x| is the activation side. Channels whose activation or weight maximum is 0
    get s = 1; s is clamped to [1e-5, 1e5].
    """
    SmoothConfig(alpha, tuple(roles)).validate()
    table = _stats_table(stats)
    index = GraphIndex(model.graph)
    factors: dict[str, np.ndarray] = {}
    for site in _sites(index, points, roles):
        name = site.point.name
        tensor_stats = table.get(name)
        if tensor_stats is None:
            raise QtoolError(f"the statistics have no point {name!r}; run `qtool collect` on this model again")
        activation_max = tensor_stats.channel_absmax
        if activation_max is None or np.shape(activation_max) != (site.channels,):
            raise QtoolError(
                f"the statistics of {name} have no per-channel maxima for its {site.channels} channels; "
                "run `qtool collect` on this model again"
            )
        weight_max = np.zeros(site.channels, dtype=np.float64)
        for projection in site.projections:
            weight = onnx.numpy_helper.to_array(index.initializers[projection.weight]).astype(np.float64)
            np.maximum(weight_max, np.abs(weight).max(axis=1 - projection.axis), out=weight_max)
        factors[name] = _factors(activation_max, weight_max, alpha)
    return factors


# -- the rewrite -----------------------------------------------------------------------------------
def apply_smoothing(
    model: onnx.ModelProto, points: list[QuantPoint], factors: Mapping[str, Iterable[float]]
) -> onnx.ModelProto:
    """A new model with `factors` (point name -> s) migrated into the LayerNorms and projections."""
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    graph = smoothed.graph
    index = GraphIndex(graph)
    by_name = {point.name: point for point in points}
    unknown = [name for name in factors if name not in by_name]
    if unknown:
        raise QtoolError(f"no quantization points named {unknown} in this model")
    sites = {site.point.name: site for site in _sites(index, [by_name[n] for n in factors], SMOOTHABLE_ROLES)}

    # Nodes are keyed by their first output (node names are optional in ONNX).
    removed: set[str] = set()  # Identity/Constant nodes that only fed a parameter now made private
    orphaned: set[str] = set()  # initializers that may no longer be read
    inserted: dict[str, list[onnx.NodeProto]] = defaultdict(list)  # LayerNorm output -> nodes after it
    new_initializers: list[onnx.TensorProto] = []

    def set_parameter(layer_norm: onnx.NodeProto, slot: int, value: np.ndarray) -> None:
        name = layer_norm.input[slot]
        if index.private_initializer(name):
            index.initializers[name].CopyFrom(onnx.numpy_helper.from_array(value, name))
            return
        producer = index.producer.get(name)
        if (
            producer is not None
            and producer.op_type in ("Identity", "Constant")
            and index.use_count(name) == 1
            and name not in index.graph_outputs
            and name not in index.subgraph_uses
        ):
            # A deduplicated parameter: give this LayerNorm its own initializer under the same name.
            removed.add(producer.output[0])
            orphaned.update(i for i in producer.input if i)
            new_initializers.append(onnx.numpy_helper.from_array(value, name))
            return
        private = index.unique_name(f"{name}/smoothed")
        new_initializers.append(onnx.numpy_helper.from_array(value, private))
        layer_norm.input[slot] = private
        orphaned.add(name)

    for name, values in factors.items():
        site = sites.get(name)
        if site is None:
            raise QtoolError(f"{name} cannot be smoothed (no LayerNorm with constant parameters feeding a projection)")
        s = np.asarray(values, dtype=np.float64)
        if s.shape != (site.channels,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise QtoolError(
                f"{name}: expected {site.channels} positive finite smoothing factors, got {s.size} "
                f"(smallest {s.min() if s.size else math.nan:g})"
            )
        layer_norm = site.layer_norm
        for slot in (1, 2):
            if slot < len(layer_norm.input) and layer_norm.input[slot]:
                value = index.constant_value(layer_norm.input[slot]).astype(np.float64)
                set_parameter(layer_norm, slot, (value / s).astype(site.dtype))
        for projection in site.projections:
            init = index.initializers[projection.weight]
            weight = onnx.numpy_helper.to_array(init)
            shape = (-1, 1) if projection.axis == 0 else (1, -1)
            scaled = (weight.astype(np.float64) * s.reshape(shape)).astype(weight.dtype)
            init.CopyFrom(onnx.numpy_helper.from_array(scaled, projection.weight))
        if site.others:
            factor_name = index.unique_name(f"{name}/smooth_factors")
            new_initializers.append(onnx.numpy_helper.from_array(s.astype(site.dtype), factor_name))
            unsmoothed = index.unique_name(f"{name}/Unsmooth_output_0")
            inserted[site.point.tensor].append(
                onnx.helper.make_node(
                    "Mul", [site.point.tensor, factor_name], [unsmoothed], name=index.unique_name(f"{name}/Unsmooth")
                )
            )
            for node, slot in site.others:
                node.input[slot] = unsmoothed

    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        first = node.output[0] if node.output else None
        if first in removed:
            continue
        ordered.append(node)
        ordered.extend(inserted.get(first, []))
    still_read = {name for node in ordered for name in node.input if name} | index.subgraph_uses
    kept = [
        init
        for init in graph.initializer
        if init.name not in orphaned or init.name in still_read or init.name in index.graph_inputs
    ]
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_initializers)
    return smoothed


def _check_stats_points(points: list[QuantPoint], stats, roles: Iterable[str]) -> None:
    recorded = {point.name: point.tensor for point in getattr(stats, "points", [])}
    for point in points:
        if point.role in roles and point.name in recorded and recorded[point.name] != point.tensor:
            raise QtoolError(
                f"the statistics were collected on another graph ({point.name} reads {recorded[point.name]} there, "
                f"{point.tensor} here); run `qtool collect` on this model"
            )


def smooth_model(
    model: onnx.ModelProto, stats, config: SmoothConfig = SmoothConfig()
) -> tuple[onnx.ModelProto, dict[str, list[float]]]:
    """Smooth every eligible LayerNorm output of `config.roles`; return the new model and the factors.

    `model` is not modified. The factors (point name -> s per channel) are plain floats for a JSON record.
    """
    config.validate()
    points = find_quant_points(model)
    _check_stats_points(points, stats, config.roles)
    factors = smoothing_factors(model, points, stats, config.alpha, config.roles)
    smoothed = apply_smoothing(model, points, factors)
    onnx.checker.check_model(smoothed, full_check=True)
    log.info(
        "smoothed %d LayerNorm outputs (alpha %g; largest factor %.3g)",
        len(factors),
        config.alpha,
        max((float(s.max()) for s in factors.values()), default=math.nan),
    )
    return smoothed, {name: [float(v) for v in s] for name, s in factors.items()}
