"""ONNX graph plumbing shared by every layer: loading, an index of one graph, attributes, pruning,
the position table and qtool's metadata.

`GraphIndex` maps each tensor to the node that produces it and the (node, input index) pairs
that read it, and knows the graph's initializers, constants, inputs and outputs. It is a snapshot:
build a new one after changing the node list (its `unique_name`, `add_initializer` and
`replace_node` keep it usable for the edits they make).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx

from qtool.errors import QtoolError
from qtool.fileio import atomic_path, sha256_file

log = logging.getLogger(__name__)

METADATA_PREFIX = "qtool."

# Ops that move or reshape values without changing them (a quantization scale passes through).
PASSTHROUGH_OPS = frozenset(
    {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast", "Flatten", "Gather", "Slice"}
)
# Ops whose output holds exactly the values of their first input, rearranged.
SAME_VALUE_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
# Ops that read only the shape of their input, never its values.
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
# Ops between an embedding table and its Gather in exported or QDQ graphs.
TABLE_PASSTHROUGH_OPS = frozenset({"DequantizeLinear", "Cast", "Identity"})


# -- files -----------------------------------------------------------------------------------------
def load_model(path: Path, *, load_external_data: bool = True) -> onnx.ModelProto:
    """The ONNX model at `path`, or a one-line error for a missing or unreadable file."""
    path = Path(path)
    if path.is_dir():
        raise QtoolError(f"{path} is a folder; give the path of an ONNX file")
    if not path.is_file():
        raise QtoolError(f"{path} does not exist; export a model first with `qtool export`")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:
        raise QtoolError(f"{path} is not a readable ONNX model ({exc.__class__.__name__}); re-export it") from None
    if not model.ir_version or not model.graph.node:
        raise QtoolError(f"{path} is empty or not an ONNX model (no IR version or no nodes); re-export it")
    return model


# -- nodes -----------------------------------------------------------------------------------------
def attribute(node: onnx.NodeProto, name: str, default):
    """The value of the node's attribute `name`, or `default` when it has none."""
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else onnx.helper.get_attribute_value(found)


def set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    for index, existing in enumerate(node.attribute):
        if existing.name == name:
            del node.attribute[index]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def subgraph_reads(node: onnx.NodeProto) -> Iterator[str]:
    """Names read inside the subgraphs (If/Loop/Scan bodies) of `node`, which may refer to outer tensors."""
    for value in node.attribute:
        graphs = [value.g] if value.type == onnx.AttributeProto.GRAPH else list(value.graphs)
        for graph in graphs:
            for inner in graph.node:
                yield from (name for name in inner.input if name)
                yield from subgraph_reads(inner)


def live_nodes(nodes: Iterable[onnx.NodeProto], outputs: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes (in their order) that `outputs` depend on."""
    needed = set(outputs)
    kept = []
    for node in reversed(list(nodes)):
        if any(output in needed for output in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    return kept[::-1]


def prune_dead_nodes(model: onnx.ModelProto) -> None:
    """Drop the nodes no graph output depends on, then the initializers nothing reads any more."""
    graph = model.graph
    outputs = {output.name for output in graph.output}
    kept = live_nodes(graph.node, outputs)
    needed = outputs | {name for node in kept for name in node.input if name}
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def tensor_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every tensor whose shape onnx's shape inference finds (raises what onnx raises)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}


# -- the index -------------------------------------------------------------------------------------
class GraphIndex:
    """Producers, consumers, initializers, constants and names of one graph (see the module docstring)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.nodes = list(graph.node)
        self.initializers = {init.name: init for init in graph.initializer}
        self.graph_inputs = {value.name for value in graph.input}
        self.graph_outputs = {value.name for value in graph.output}
        self.producer = {out: node for node in self.nodes for out in node.output if out}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        self.subgraph_uses: set[str] = set()
        for node in self.nodes:
            for index, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((node, index))
            self.subgraph_uses.update(subgraph_reads(node))
        self.constants = set(self.initializers)
        self.constants |= {out for node in self.nodes if node.op_type == "Constant" for out in node.output}
        self._taken = {node.name for node in self.nodes}
        self._taken |= {name for node in self.nodes for name in (*node.input, *node.output)}
        self._taken |= set(self.initializers)
        self._taken |= {v.name for v in (*graph.input, *graph.output, *graph.value_info)}

    # -- reading -----------------------------------------------------------------------------------
    def value_consumers(self, tensor: str) -> list[tuple[onnx.NodeProto, int]]:
        """The (node, input index) pairs that read the values of `tensor` (shape reads left out)."""
        return [(node, index) for node, index in self.consumers.get(tensor, ()) if node.op_type not in SHAPE_ONLY_OPS]

    def use_count(self, tensor: str) -> int:
        """How many node inputs read `tensor` (subgraphs not counted: see `subgraph_uses`)."""
        return len(self.consumers.get(tensor, ()))

    def is_constant(self, tensor: str) -> bool:
        """An initializer, a Constant output, or a pass-through op of constants (a transposed weight)."""
        if tensor in self.constants:
            return True
        node = self.producer.get(tensor)
        return (
            node is not None and node.op_type in PASSTHROUGH_OPS and all(self.is_constant(i) for i in node.input if i)
        )

    def array(self, name: str) -> np.ndarray | None:
        """The value of initializer `name`, or None when `name` is not one."""
        initializer = self.initializers.get(name)
        return None if initializer is None else onnx.numpy_helper.to_array(initializer)

    def constant_value(self, name: str, depth: int = 8) -> np.ndarray | None:
        """The value of an initializer (not a graph input), a Constant node, or an Identity chain ending in one."""
        if name in self.initializers:
            return None if name in self.graph_inputs else self.array(name)
        node = self.producer.get(name)
        if node is None or depth == 0:
            return None
        if node.op_type == "Identity":
            return self.constant_value(node.input[0], depth - 1)
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            return onnx.numpy_helper.to_array(value.t) if value is not None else None
        return None

    def constant_source(self, name: str) -> str | None:
        """The initializer behind `name`, following Identity nodes (exporters share equal biases that way)."""
        while name not in self.initializers:
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity":
                return None
            name = node.input[0]
        return name

    def private_initializer(self, name: str) -> bool:
        """An initializer that exactly one node input reads and that no caller can override."""
        return (
            name in self.initializers
            and name not in self.graph_inputs
            and name not in self.graph_outputs
            and name not in self.subgraph_uses
            and self.use_count(name) == 1
        )

    # -- editing -----------------------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`, ...: a name no node, tensor or value of the graph has yet."""
        name, counter = base, 1
        while name in self._taken:
            name, counter = f"{base}_{counter}", counter + 1
        self._taken.add(name)
        return name

    def add_initializer(self, base: str, array: np.ndarray) -> str:
        """Append `array` as a new initializer under a unique name built from `base`; return the name."""
        name = self.unique_name(base)
        self.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        self.initializers[name] = self.graph.initializer[-1]
        return name

    def replace_node(self, node: onnx.NodeProto, replacement: list[onnx.NodeProto]) -> None:
        """Put `replacement` where `node` is in the graph (found by its first output: tensor names are unique)."""
        nodes = self.graph.node
        index = next(i for i, candidate in enumerate(nodes) if candidate.output[0] == node.output[0])
        del nodes[index]
        for offset, new_node in enumerate(replacement):
            nodes.insert(index + offset, new_node)


# -- the position table ----------------------------------------------------------------------------
def _table_source(index: GraphIndex, name: str) -> tuple[str, list[int]] | None:
    """(name, dims) of the constant table that tensor `name` is read from, through DQ/Cast/Identity."""
    for _ in range(4):
        if name in index.initializers:
            return name, list(index.initializers[name].dims)
        node = index.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            return (name, list(onnx.helper.get_attribute_value(value).dims)) if value is not None else None
        if node.op_type not in TABLE_PASSTHROUGH_OPS:
            return None
        name = node.input[0]
    return None


def position_table_rows(model: onnx.ModelProto) -> int | None:
    """Rows of the position-embedding table: the 2-D constant feeding the position Gather, or None.

    The position Gather is the table Gather named after positions; failing names, the only table
    Gather whose indices are computed inside the graph (word and token-type ids are graph inputs).
    """
    index = GraphIndex(model.graph)
    tables = []
    for node in index.nodes:
        if node.op_type != "Gather" or attribute(node, "axis", 0) != 0:
            continue
        source = _table_source(index, node.input[0])
        if source is not None and len(source[1]) == 2:
            tables.append((node, source))
    named = [dims for node, (name, dims) in tables if "position" in f"{node.name} {name}".lower()]
    if named:
        return int(named[0][0])
    computed = [dims for node, (_, dims) in tables if node.input[1] not in index.graph_inputs]
    if len(computed) == 1:
        return int(computed[0][0])
    log.debug("no position-embedding table found among %d table Gathers", len(tables))
    return None


# -- qtool's metadata ------------------------------------------------------------------------------
def read_qtool_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The `qtool.*` metadata entries of a model, without the prefix."""
    return {p.key[len(METADATA_PREFIX) :]: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}


def onnx_opset(model: onnx.ModelProto) -> int:
    """The model's version of the default ONNX operator set (0 when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def graph_metadata(model_path: Path) -> dict[str, str]:
    """The `qtool.*` metadata of the ONNX file at `model_path` (its weights are not read)."""
    return read_qtool_metadata(load_model(model_path, load_external_data=False))


QDQ_PRECISION = "int8-qdq"  # the `precision` metadata of qtool's QDQ graphs (and of their runtime graphs)
RUNTIME_KEY = "runtime"  # metadata of a runtime graph: the runtime it was rewritten for
OLD_RUNTIME_KEY = "runtime_form"  # the same, in runtime graphs written before December 2026
PEG_LAYOUT_KEY = "peg_form"  # metadata of a QDQ graph: its PEG layout (the key keeps its first name, so graphs stay byte-identical)


def is_recipe_graph(metadata: dict[str, str]) -> bool:
    """A QDQ graph as qtool wrote it from a calibration (not a runtime graph rewritten from one)."""
    return metadata.get("precision") == QDQ_PRECISION and not {RUNTIME_KEY, OLD_RUNTIME_KEY} & metadata.keys()


def save_derived_graph(model: onnx.ModelProto, source: Path, output: Path, metadata: dict[str, str]) -> Path:
    """Write a graph derived from `source` (QDQ, rewritten, peer) atomically, with its qtool metadata
    updated and the tokenizer path re-pointed so that it resolves from the output's folder."""
    entries = read_qtool_metadata(model) | metadata
    if "tokenizer" in entries:
        tokenizer_folder = Path(source).resolve().parent / entries["tokenizer"]
        entries["tokenizer"] = os.path.relpath(tokenizer_folder, Path(output).resolve().parent)
    del model.metadata_props[:]
    for key, value in entries.items():
        model.metadata_props.add(key=METADATA_PREFIX + key, value=value)
    with atomic_path(Path(output)) as tmp:
        tmp.write_bytes(model.SerializeToString())
    return Path(output)


def model_identity(model_path: Path) -> dict:
    """What identifies the model a statistics file belongs to: the source weights' hash, or the graph's."""
    metadata = graph_metadata(model_path)
    if "model_sha256" not in metadata:
        return {"source_model": Path(model_path).name, "model_sha256": sha256_file(model_path)}
    identity = {"source_model": metadata.get("source_model"), "model_sha256": metadata["model_sha256"]}
    if "transform" in metadata:  # a float graph rewritten from the export (smoothed): other activations
        identity["transform"] = metadata["transform"]
    return identity
