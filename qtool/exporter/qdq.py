"""Write a QDQ graph: QuantizeLinear/DequantizeLinear pairs at the calibrated points and weights.

Activations are quantized per tensor (symmetric INT8, zero point 0); weights per output channel
or per tensor. A per-embedding-group (PEG) range has one scale per group of channels; its QDQ graph
comes in two layouts that compute the same quantized values (`PEG_LAYOUTS`):

- `scaled` (default; what ONNX Runtime runs fast). Each channel's value is divided by its group's
  scale and quantized with scale 1, so the codes are those of the per-group quantizers:

      X --Div(s_c)--> Q(1) --> codes --DQ(1)--> Mul(s_c) --> X_q        (non-GEMM readers)
      MatMul(X, W)  becomes  MatMul(DQ(codes, s_b), W with the rows outside group b zeroed)
                             + Sum_{k != b} MatMul(DQ(Gather(codes, group k), s_k), W[group k, :])

  where b is the largest group, so only the few channels of the other groups are gathered. Each
  partial product is an ordinary integer GEMM with a per-tensor activation scale. (ONNX's per-axis
  QuantizeLinear would say the same in one node, but ONNX Runtime's CPU kernel for a per-axis
  scale on the last axis is about 20 times slower than Div + QuantizeLinear.)
- `gathered` (per-tensor activation scales only, as TensorRT requires):

      X --Gather(channels of group k)--> Q(s_k) -> DQ(s_k) --> X_k            for k = 1..K
      MatMul(X, W)  becomes  Sum_k MatMul(X_k, W[channels of group k, :])      (split GEMM)
      any other consumer reads  Gather(Concat(X_1..X_K), inverse permutation)  (X rebuilt)

Both split GEMMs add partial products of the groups, which equals the GEMM of the fake-quantized
X. K = 1 is plain per-tensor quantization.

With `folded` weights (a weight policy, not a layout: its values differ) every projection that reads a
PEG point is one GEMM. The codes are the `scaled` layout's, and the group scales move into the weight
before it is quantized per output channel:

    MatMul(X, W)  becomes  MatMul(DQ(codes, 1), DQ(Q(diag(s_c) W)))

so the activation codes, groups and scales are PEG's, and only the weight's rounding differs: the
rows of channels with a large group scale set each output channel's weight scale. Every activation
scale is per tensor (1 for the codes), so the graph is also one TensorRT can take.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from qtool.defaults import PEG_LAYOUT
from qtool.exporter.grid import ActivationRange, ChannelGroup, quantize, weight_scales
from qtool.exporter.points import PROJECTION_OPS, QuantPoint
from qtool.graph import GraphIndex, attribute, live_nodes

log = logging.getLogger(__name__)

WEIGHT_MODES = ("per-channel", "per-tensor", "folded")  # folded: per channel, PEG group scales folded in
PEG_LAYOUTS = ("scaled", "gathered")


@dataclass(frozen=True)
class QdqPlan:
    """What to quantize: activation scales per point (groups for PEG) and the weight policy."""

    activations: dict[str, ActivationRange]  # point name -> its range (one scale, or PEG channel groups)
    weights: str | None = "per-channel"  # None: weights stay float
    weight_bits: int = 8  # the grid of GEMM weights (7: exact on U8S8 kernels everywhere); tables keep 8
    embedding_tables: bool = False
    points: list[QuantPoint] = field(default_factory=list)
    # With switches, every quantized point also gets a boolean scalar graph input (`switch_input`)
    # and a Where node that passes either its dequantized or its float value, so one session can
    # evaluate any subset of the points quantized (the mixed-precision search).
    switches: bool = False
    # Only the MatMul/Gemm readers of a point read its quantized value; other readers (a residual
    # Add) keep the float tensor. A point with no MatMul/Gemm reader is quantized for all readers.
    gemm_edges_only: bool = False
    # How PEG points are written (see the module docstring); with switches always `gathered`.
    peg_layout: str = PEG_LAYOUT


def switch_input(point_name: str) -> str:
    return f"quantize:{point_name}"


class _Writer:
    def __init__(self, model: onnx.ModelProto, plan: QdqPlan):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.graph = self.model.graph
        self.plan = plan
        self.index = GraphIndex(self.graph)  # the input graph: nodes are only replaced in `run`'s assembly
        self.initializers = self.index.initializers
        self.new_initializers: list[onnx.TensorProto] = []
        self.after: dict[str, list[onnx.NodeProto]] = {}  # nodes to insert after the producer of a tensor
        self.replaced_nodes: dict[str, list[onnx.NodeProto]] = {}  # node name -> its replacement nodes
        self.rewire: dict[tuple[str, int], str] = {}  # (node name, input index) -> new input tensor
        self.quantized_weights: dict[str, tuple[np.ndarray, np.ndarray, int | None]] = {}
        self.switch_inputs: dict[str, onnx.ValueInfoProto] = {}

    # -- helpers ------------------------------------------------------------------------------
    def constant(self, name: str, array: np.ndarray) -> str:
        self.new_initializers.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def qdq_pair(self, prefix: str, source: str, scale: float, point: str) -> tuple[list[onnx.NodeProto], str]:
        scale_name = self.constant(f"{prefix}/scale", np.array(scale, dtype=np.float32))
        zero_name = self.constant(f"{prefix}/zero_point", np.array(0, dtype=np.int8))
        quantized, dequantized = f"{prefix}/quantized", f"{prefix}/dequantized"
        nodes = [
            onnx.helper.make_node(
                "QuantizeLinear", [source, scale_name, zero_name], [quantized], name=f"{prefix}/QuantizeLinear"
            ),
            onnx.helper.make_node(
                "DequantizeLinear", [quantized, scale_name, zero_name], [dequantized], name=f"{prefix}/DequantizeLinear"
            ),
        ]
        if self.plan.switches:
            switch = switch_input(point)
            if switch not in self.switch_inputs:
                self.switch_inputs[switch] = onnx.helper.make_tensor_value_info(switch, onnx.TensorProto.BOOL, [])
            selected = f"{prefix}/selected"
            nodes.append(onnx.helper.make_node("Where", [switch, dequantized, source], [selected], name=f"{prefix}/Switch"))
            return nodes, selected
        return nodes, dequantized

    # -- weights ------------------------------------------------------------------------------
    def weight_axis(self, node: onnx.NodeProto) -> int | None:
        if self.plan.weights == "per-tensor":
            return None
        if node.op_type == "Gemm":
            return 0 if attribute(node, "transB", 0) else 1
        if node.op_type == "Gather":
            return 1
        return 1  # MatMul weight [in, out]: output channels on the last axis

    def quantize_weight(self, node: onnx.NodeProto, index: int) -> None:
        name = node.input[index]
        if name not in self.initializers:
            log.debug("weight %s of %s is not an initializer; left in float", name, node.name)
            return
        weight = onnx.numpy_helper.to_array(self.initializers[name]).astype(np.float32)
        axis = self.weight_axis(node)
        bits = self.plan.weight_bits if node.op_type in ("MatMul", "Gemm") else 8
        scales = weight_scales(weight, axis, bits)
        quantized = quantize(weight, scales, axis, bits)
        self.quantized_weights[name] = (quantized, scales, axis)
        dequantized = self.dequantized_weight(name, quantized, scales, axis)
        self.rewire[(node.name, index)] = dequantized

    def dequantized_weight(self, prefix: str, quantized: np.ndarray, scales: np.ndarray, axis: int | None) -> str:
        """Int8 initializer + DequantizeLinear (per channel along `axis`, or per tensor); returns its output."""
        per_tensor = axis is None
        q_name = self.constant(f"{prefix}/int8", quantized)
        s_name = self.constant(f"{prefix}/scale", scales.reshape(()) if per_tensor else scales)
        z_name = self.constant(f"{prefix}/zero_point", np.zeros(() if per_tensor else scales.shape, np.int8))
        dequantized = f"{prefix}/dequantized"
        self.after.setdefault("", []).append(
            onnx.helper.make_node(
                "DequantizeLinear",
                [q_name, s_name, z_name],
                [dequantized],
                name=f"{prefix}/DequantizeLinear",
                **({} if per_tensor else {"axis": axis}),
            )
        )
        return dequantized

    def weight_slice(self, node: onnx.NodeProto, rows: np.ndarray, prefix: str, keep_shape: bool = False) -> str:
        """The rows of a MatMul weight that one PEG group multiplies (dequantized if weights are
        quantized); with `keep_shape`, the whole weight with every other row zero."""

        def taken(weight: np.ndarray) -> np.ndarray:
            if not keep_shape:
                return weight[rows]
            kept = np.zeros_like(weight)
            kept[rows] = weight[rows]
            return kept

        name = node.input[1]
        if name in self.quantized_weights:
            quantized, scales, axis = self.quantized_weights[name]
            return self.dequantized_weight(f"{prefix}/weight", taken(quantized), scales, axis)
        return self.constant(f"{prefix}/weight", taken(onnx.numpy_helper.to_array(self.initializers[name])))

    # -- activations ---------------------------------------------------------------------------
    def readers(self, tensor: str) -> list[tuple[onnx.NodeProto, int]]:
        """The inputs that read the quantized value of `tensor` (shape reads never do)."""
        readers = self.index.value_consumers(tensor)
        if self.plan.gemm_edges_only:
            gemm_readers = [(n, i) for n, i in readers if n.op_type in PROJECTION_OPS]
            if gemm_readers:
                return gemm_readers
            log.debug("%s feeds no MatMul/Gemm directly; all its readers get the quantized value", tensor)
        return readers

    def quantize_point(self, point: QuantPoint, spec: ActivationRange) -> None:
        groups = spec.groups
        if not groups or len(groups) == 1:
            scale = spec.tensor_scale
            # Per-tensor Q/DQ goes where the values enter the attention MatMul (after the head
            # reshape), so that ONNX Runtime and TensorRT see DequantizeLinear feeding the MatMul.
            tensor = point.matmul_input or point.tensor
            consumers = self.readers(tensor)
            nodes, dequantized = self.qdq_pair(point.name, tensor, scale, point.name)
            self.after.setdefault(tensor, []).extend(nodes)
            for node, index in consumers:
                self.rewire[(node.name, index)] = dequantized
            return
        if self.plan.weights == "folded" or (self.plan.peg_layout == "scaled" and not self.plan.switches):
            self.scale_groups(point, groups, self.readers(point.tensor))
        else:
            self.quantize_groups(point, groups, self.readers(point.tensor))

    def scale_groups(self, point: QuantPoint, groups: Sequence[ChannelGroup], consumers) -> None:
        """The `scaled` PEG layout: one code tensor at scale 1 after dividing each channel by its scale."""
        members = [np.asarray(group.channels, dtype=np.int64) for group in groups]
        scales = np.empty(sum(m.size for m in members), dtype=np.float32)
        for channels, group in zip(members, groups, strict=True):
            scales[channels] = np.float32(group.scale)
        name = point.name
        channel_scales = self.constant(f"{name}/channel_scales", scales)
        unit = self.constant(f"{name}/unit_scale", np.array(1.0, dtype=np.float32))
        zero = self.constant(f"{name}/zero_point", np.array(0, dtype=np.int8))
        divided, codes = f"{name}/divided", f"{name}/quantized"
        nodes = [
            onnx.helper.make_node("Div", [point.tensor, channel_scales], [divided], name=f"{name}/DivideByScale"),
            onnx.helper.make_node("QuantizeLinear", [divided, unit, zero], [codes], name=f"{name}/QuantizeLinear"),
        ]
        bulk = max(range(len(members)), key=lambda k: (members[k].size, -k))
        group_inputs: list[str] = []  # the dequantized codes each group's partial GEMM reads
        rebuilt = None
        for node, index in consumers:
            if not self.is_projection(node, index):
                if rebuilt is None:
                    unscaled, rebuilt = f"{name}/unit_dequantized", f"{name}/dequantized"
                    nodes.append(
                        onnx.helper.make_node(
                            "DequantizeLinear", [codes, unit, zero], [unscaled], name=f"{name}/DequantizeLinear"
                        )
                    )
                    nodes.append(
                        onnx.helper.make_node("Mul", [unscaled, channel_scales], [rebuilt], name=f"{name}/MultiplyByScale")
                    )
                self.rewire[(node.name, index)] = rebuilt
                continue
            if self.plan.weights == "folded":
                self.folded_projection(node, codes, unit, zero, scales)
                continue
            if not group_inputs:
                for k, (channels, group) in enumerate(zip(members, groups, strict=True)):
                    prefix = f"{name}/group{k}"
                    source = codes
                    if k != bulk:
                        source = f"{prefix}/quantized"
                        indices = self.constant(f"{prefix}/channels", channels)
                        nodes.append(
                            onnx.helper.make_node("Gather", [codes, indices], [source], name=f"{prefix}/Gather", axis=-1)
                        )
                    scale = self.constant(f"{prefix}/scale", np.array(group.scale, dtype=np.float32))
                    dequantized = f"{prefix}/dequantized"
                    nodes.append(
                        onnx.helper.make_node(
                            "DequantizeLinear", [source, scale, zero], [dequantized], name=f"{prefix}/DequantizeLinear"
                        )
                    )
                    group_inputs.append(dequantized)
            self.split_projection(node, point, list(zip(members, group_inputs, strict=True)), whole=bulk)
        self.after.setdefault(point.tensor, []).extend(nodes)

    def quantize_groups(self, point: QuantPoint, groups: Sequence[ChannelGroup], consumers) -> None:
        nodes: list[onnx.NodeProto] = []
        parts: list[tuple[np.ndarray, str]] = []
        for k, group in enumerate(groups):
            channels = np.asarray(group.channels, dtype=np.int64)
            prefix = f"{point.name}/group{k}"
            indices = self.constant(f"{prefix}/channels", channels)
            sliced = f"{prefix}/input"
            nodes.append(
                onnx.helper.make_node("Gather", [point.tensor, indices], [sliced], name=f"{prefix}/Gather", axis=-1)
            )
            pair, dequantized = self.qdq_pair(prefix, sliced, group.scale, point.name)
            nodes.extend(pair)
            parts.append((channels, dequantized))
        rebuilt = None
        for node, index in consumers:
            if self.is_projection(node, index):
                self.split_projection(node, point, parts)
                continue
            if rebuilt is None:
                order = np.concatenate([c for c, _ in parts])
                inverse = self.constant(f"{point.name}/inverse_permutation", np.argsort(order).astype(np.int64))
                concat = f"{point.name}/groups_concat"
                rebuilt = f"{point.name}/dequantized"
                nodes.append(
                    onnx.helper.make_node("Concat", [d for _, d in parts], [concat], name=f"{point.name}/Concat", axis=-1)
                )
                nodes.append(
                    onnx.helper.make_node("Gather", [concat, inverse], [rebuilt], name=f"{point.name}/Unpermute", axis=-1)
                )
            self.rewire[(node.name, index)] = rebuilt
        self.after.setdefault(point.tensor, []).extend(nodes)

    def folded_projection(self, node: onnx.NodeProto, codes: str, unit: str, zero: str, scales: np.ndarray) -> None:
        """MatMul(X, W) as one GEMM of the PEG codes and W with each row multiplied by its channel's
        group scale, quantized per output channel."""
        prefix = f"{node.name}/folded"
        weight = onnx.numpy_helper.to_array(self.initializers[node.input[1]]).astype(np.float32)
        folded = scales[:, None] * weight
        bits = self.plan.weight_bits
        weight_scale = weight_scales(folded, 1, bits)
        dequantized_weight = self.dequantized_weight(
            f"{prefix}/weight", quantize(folded, weight_scale, 1, bits), weight_scale, 1
        )
        dequantized = f"{prefix}/codes_dequantized"
        self.replaced_nodes[node.name] = [
            onnx.helper.make_node("DequantizeLinear", [codes, unit, zero], [dequantized], name=f"{prefix}/DequantizeLinear"),
            onnx.helper.make_node("MatMul", [dequantized, dequantized_weight], [node.output[0]], name=f"{prefix}/MatMul"),
        ]

    def is_projection(self, node: onnx.NodeProto, index: int) -> bool:
        return node.op_type == "MatMul" and index == 0 and node.input[1] in self.initializers

    def split_projection(self, node: onnx.NodeProto, point: QuantPoint, parts, whole: int | None = None) -> None:
        """MatMul(X, W) as the sum of one MatMul per channel group; group `whole` reads all of X
        (the other channels' rows of its weight are zero)."""
        replacement = []
        partials = []
        for k, (channels, dequantized) in enumerate(parts):
            prefix = f"{node.name}/group{k}"
            weight = self.weight_slice(node, channels, prefix, keep_shape=k == whole)
            partial = f"{prefix}/partial"
            replacement.append(onnx.helper.make_node("MatMul", [dequantized, weight], [partial], name=f"{prefix}/MatMul"))
            partials.append(partial)
        replacement.append(onnx.helper.make_node("Sum", partials, [node.output[0]], name=f"{node.name}/SumOfGroups"))
        self.replaced_nodes[node.name] = replacement

    # -- assembly ------------------------------------------------------------------------------
    def run(self) -> onnx.ModelProto:
        by_name = {p.name: p for p in self.plan.points}
        if self.plan.weights:
            for node in self.graph.node:
                if node.op_type in ("MatMul", "Gemm") and node.input[1] in self.initializers:
                    self.quantize_weight(node, 1)
                elif self.plan.embedding_tables and node.op_type == "Gather" and node.input[0] in self.initializers:
                    if self.initializers[node.input[0]].data_type == onnx.TensorProto.FLOAT:
                        self.quantize_weight(node, 0)
        unknown = set(self.plan.activations) - set(by_name)
        if unknown:
            raise ValueError(f"no quantization points named {sorted(unknown)}")
        for point in self.plan.points:  # graph order, whatever order the plan lists them in
            if point.name in self.plan.activations:
                self.quantize_point(point, self.plan.activations[point.name])

        ordered: list[onnx.NodeProto] = list(self.after.pop("", []))
        for node in self.graph.node:
            for replacement in self.replaced_nodes.get(node.name, [node]):
                for index in range(len(replacement.input)):
                    if (new := self.rewire.get((replacement.name, index))) is not None:
                        replacement.input[index] = new
                ordered.append(replacement)
            for output in node.output:
                ordered.extend(self.after.get(output, []))
        ordered = live_nodes(ordered, {o.name for o in self.graph.output})
        used = {name for node in ordered for name in node.input}
        kept_initializers = [i for i in self.graph.initializer if i.name in used]
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept_initializers + [i for i in self.new_initializers if i.name in used])
        self.graph.input.extend(self.switch_inputs.values())
        return self.model


def write_qdq_model(model: onnx.ModelProto, plan: QdqPlan) -> onnx.ModelProto:
    """A new model with the plan's Q/DQ nodes; the input model is not changed."""
    if plan.weights not in (None, *WEIGHT_MODES):
        raise ValueError(f"weights must be one of {WEIGHT_MODES} or None")
    if plan.peg_layout not in PEG_LAYOUTS:
        raise ValueError(f"peg_layout must be one of {PEG_LAYOUTS}")
    if plan.weights == "folded" and plan.switches:
        raise ValueError("folded weights cannot be switched back to float point by point")
    result = _Writer(model, plan).run()
    onnx.checker.check_model(result)
    return result
