"""Quantization points of a BERT-family encoder, found from the ONNX graph's structure.

A quantization point is an activation tensor that a full W8A8 deployment quantizes, with a
stable readable name (`layer.3.ffn.residual_sum`), a role, and a layout that says which axes
hold tokens (so padding can be excluded) and which axis holds channels.

The walk starts at the embeddings LayerNorm (and the projection that widens it, in ELECTRA models
whose embeddings are narrower than the encoder: `embeddings.projection`) and follows each encoder
layer through its own structure: the three projections that read the hidden state, the attention-score MatMul they
feed (query at input 0, key at input 1), the context MatMul (probabilities and value), the
output projection, the residual Add and LayerNorm, then the FFN (intermediate projection,
activation, output projection, residual Add, LayerNorm). It stops when a hidden state feeds no
more projections; the pooler and classifier inputs follow (BERT's pooler, or the first dense layer
of RoBERTa's, ELECTRA's and DistilBERT's classification heads). No layer count, width or head count
is assumed, and no family: BERT, RoBERTa, DistilBERT, MPNet (whose relative position bias is added
to the attention scores) and ELECTRA give the same point names, so presets and `--keep-fp` globs
mean the same thing on each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import onnx

from qtool.errors import QtoolError
from qtool.graph import PASSTHROUGH_OPS, GraphIndex, load_model

# Roles, grouped by the tensor shape they carry.
TOKEN_LAYOUT = "tokens"  # [batch, sequence, channels]
ATTENTION_LAYOUT = "attention"  # [batch, heads, query positions, key positions]
POOLED_LAYOUT = "pooled"  # [batch, channels]

ROLES = {
    "embeddings_sum": TOKEN_LAYOUT,
    "embeddings_output": TOKEN_LAYOUT,
    "embeddings_projection": TOKEN_LAYOUT,
    "query": TOKEN_LAYOUT,
    "key": TOKEN_LAYOUT,
    "value": TOKEN_LAYOUT,
    "attention_probs": ATTENTION_LAYOUT,
    "attention_context": TOKEN_LAYOUT,
    "attention_output": TOKEN_LAYOUT,
    "residual_sum": TOKEN_LAYOUT,
    "layernorm_output": TOKEN_LAYOUT,
    "ffn_intermediate": TOKEN_LAYOUT,
    "ffn_activation": TOKEN_LAYOUT,
    "ffn_output": TOKEN_LAYOUT,
    "pooler_input": POOLED_LAYOUT,
    "classifier_input": POOLED_LAYOUT,
}

PROJECTION_OPS = {"MatMul", "Gemm"}


@dataclass(frozen=True)
class QuantPoint:
    name: str
    role: str
    layer: int | None
    tensor: str
    consumer_inputs: tuple[tuple[str, int], ...]
    matmul_input: str | None = None  # same values, reshaped, where they enter an attention MatMul

    @property
    def layout(self) -> str:
        return ROLES[self.role]

    def to_json(self) -> dict:
        data = asdict(self)
        data["consumer_inputs"] = [list(c) for c in self.consumer_inputs]
        data["layout"] = self.layout
        return data

    @classmethod
    def from_json(cls, data: dict) -> QuantPoint:
        return cls(
            name=data["name"],
            role=data["role"],
            layer=data["layer"],
            tensor=data["tensor"],
            consumer_inputs=tuple((node, int(index)) for node, index in data["consumer_inputs"]),
            matmul_input=data.get("matmul_input"),
        )


class _EncoderGraph(GraphIndex):
    """The index of an encoder graph, with the steps of the walk through its layers."""

    def projections_of(self, tensor: str) -> list[onnx.NodeProto]:
        """MatMul/Gemm nodes that read `tensor` as data and a constant as weight."""
        return [
            node
            for node, index in self.consumers[tensor]
            if node.op_type in PROJECTION_OPS and index == 0 and self.is_constant(node.input[1])
        ]

    def biased_output(self, node: onnx.NodeProto) -> str:
        """The output of `node`, or of the bias Add that directly follows it."""
        out = node.output[0]
        followers = self.consumers[out]
        if len(followers) == 1:
            follower, _ = followers[0]
            if follower.op_type == "Add" and any(self.is_constant(i) for i in follower.input if i != out):
                return follower.output[0]
        return out

    def follow_to_matmul(self, tensor: str, limit: int = 8) -> tuple[onnx.NodeProto, int, str] | None:
        """Through value-preserving ops (and scalings) to the first MatMul of two activations."""
        for _ in range(limit):
            followers = self.consumers[tensor]
            if len(followers) != 1:
                return None
            node, index = followers[0]
            if node.op_type == "MatMul" and not self.is_constant(node.input[1 - index]):
                return node, index, tensor
            if node.op_type in PASSTHROUGH_OPS or (
                node.op_type in ("Mul", "Div") and self.is_constant(node.input[1 - index])
            ):
                tensor = node.output[0]
                continue
            return None
        return None

    def follow_to_projection(self, tensor: str, limit: int = 12) -> onnx.NodeProto | None:
        """Breadth-first to the nearest MatMul/Gemm with a constant weight (through any ops)."""
        frontier, seen = [tensor], set()
        for _ in range(limit):
            following = []
            for current in frontier:
                for node, index in self.consumers[current]:
                    if node.op_type in PROJECTION_OPS and index == 0 and self.is_constant(node.input[1]):
                        return node
                    if node.name not in seen:
                        seen.add(node.name)
                        following.extend(o for o in node.output if o)
            frontier = following
        return None

    def single_consumer(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        matches = [node for node, _ in self.consumers[tensor] if node.op_type == op_type]
        return matches[0] if len(matches) == 1 else None

    def consumer_inputs(self, tensor: str) -> tuple[tuple[str, int], ...]:
        return tuple((node.name, index) for node, index in self.consumers[tensor])


def _not_bert(path_hint: str, why: str) -> QtoolError:
    return QtoolError(
        f"{path_hint} is not a BERT-family encoder graph ({why}); export one with `qtool export` (opset 17+)"
    )


def find_quant_points(model: onnx.ModelProto, path_hint: str = "the model") -> list[QuantPoint]:
    graph = _EncoderGraph(model.graph)
    layer_norms = [node for node in graph.nodes if node.op_type == "LayerNormalization"]
    if not layer_norms:
        raise _not_bert(path_hint, "no LayerNormalization node")
    points: list[QuantPoint] = []

    def add(name: str, role: str, layer: int | None, tensor: str, matmul_input: str | None = None) -> None:
        points.append(QuantPoint(name, role, layer, tensor, graph.consumer_inputs(tensor), matmul_input))

    def residual_and_layernorm(block_output: str, prefix: str, block: str) -> str:
        """Add the residual sum after a block and the LayerNorm output; return the latter."""
        residual = graph.single_consumer(block_output, "Add")
        layer_norm = residual and graph.single_consumer(residual.output[0], "LayerNormalization")
        if layer_norm is None:
            raise _not_bert(path_hint, f"layer {layer}: no residual Add and LayerNorm after {block}")
        add(f"{prefix}.residual_sum", "residual_sum", layer, residual.output[0])
        add(f"{prefix}.layernorm", "layernorm_output", layer, layer_norm.output[0])
        return layer_norm.output[0]

    embeddings_ln = layer_norms[0]
    add("embeddings.sum", "embeddings_sum", None, embeddings_ln.input[0])
    add("embeddings.output", "embeddings_output", None, embeddings_ln.output[0])
    hidden = embeddings_ln.output[0]
    projected = graph.projections_of(hidden)
    widened = graph.biased_output(projected[0]) if len(projected) == 1 else None
    if widened is not None and len(graph.projections_of(widened)) >= 3:
        # ELECTRA: embeddings narrower than the encoder, projected up to its width, then read by Q, K and V
        hidden = widened
        add("embeddings.projection", "embeddings_projection", None, hidden)

    layer = 0
    while len(projections := graph.projections_of(hidden)) >= 3:
        prefix = f"layer.{layer}"
        by_role: dict[str, tuple[str, str]] = {}
        score = context = None
        for projection in projections:
            output = graph.biased_output(projection)
            reached = graph.follow_to_matmul(output)
            if reached is None:
                continue
            matmul, index, edge = reached
            following = graph.consumers[matmul.output[0]]
            is_context = any(n.op_type in ("Transpose", "Reshape") for n, _ in following)
            if is_context and index == 1:
                by_role["value"], context = (output, edge), matmul
            elif not is_context:
                by_role["query" if index == 0 else "key"] = (output, edge)
                score = matmul
        if set(by_role) != {"query", "key", "value"} or score is None or context is None:
            raise _not_bert(path_hint, f"layer {layer}: could not match query, key and value projections")
        for role in ("query", "key", "value"):
            add(f"{prefix}.attention.{role}", role, layer, *by_role[role])
        add(f"{prefix}.attention.probs", "attention_probs", layer, context.input[0])

        out_projection = graph.follow_to_projection(context.output[0], limit=4)
        if out_projection is None:
            raise _not_bert(path_hint, f"layer {layer}: no attention output projection")
        add(f"{prefix}.attention.context", "attention_context", layer, out_projection.input[0])
        attention_out = graph.biased_output(out_projection)
        add(f"{prefix}.attention.output", "attention_output", layer, attention_out)
        attention_ln = residual_and_layernorm(attention_out, f"{prefix}.attention", "attention")

        intermediate = graph.projections_of(attention_ln)
        if len(intermediate) != 1:
            raise _not_bert(path_hint, f"layer {layer}: no FFN intermediate projection")
        intermediate_out = graph.biased_output(intermediate[0])
        add(f"{prefix}.ffn.intermediate", "ffn_intermediate", layer, intermediate_out)
        ffn_out_projection = graph.follow_to_projection(intermediate_out, limit=8)
        if ffn_out_projection is None:
            raise _not_bert(path_hint, f"layer {layer}: no FFN output projection")
        add(f"{prefix}.ffn.activation", "ffn_activation", layer, ffn_out_projection.input[0])
        ffn_out = graph.biased_output(ffn_out_projection)
        add(f"{prefix}.ffn.output", "ffn_output", layer, ffn_out)
        hidden = residual_and_layernorm(ffn_out, f"{prefix}.ffn", "the FFN")
        layer += 1

    if layer == 0:
        raise _not_bert(path_hint, "no attention layer after the embeddings")
    pooler = graph.follow_to_projection(hidden, limit=6)
    if pooler is not None:
        add("pooler.input", "pooler_input", None, pooler.input[0])
        classifier = graph.follow_to_projection(pooler.output[0], limit=4)
        if classifier is not None:
            add("classifier.input", "classifier_input", None, classifier.input[0])
    return points


def load_quant_points(path) -> tuple[onnx.ModelProto, list[QuantPoint]]:
    model = load_model(path)
    return model, find_quant_points(model, str(path))
