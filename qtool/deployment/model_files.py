"""The files a benchmark reads: runners made from paths, the graph behind an engine, its tokenizer,
the longest sequence the model takes and the model's size on disk."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from qtool.deployment.backends import BACKENDS, backend_for_file
from qtool.errors import QtoolError
from qtool.fileio import manifest_path, sha256_file
from qtool.graph import load_model, position_table_rows
from qtool.runners.base import Runner

log = logging.getLogger(__name__)

ONNX_SUFFIXES = (".onnx",)
# Tokenizers report a huge sentinel (1e30) as model_max_length when the model sets no limit.
TOKENIZER_LENGTH_SENTINEL = 1_000_000

RunnerFactory = Callable[[], Runner]


def max_positions(onnx_path: Path) -> int | None:
    """Rows of the position-embedding table of the graph at `onnx_path`, or None (see `position_table_rows`)."""
    return position_table_rows(load_model(onnx_path, load_external_data=False))


def tokenizer_max_length(tokenizer) -> int | None:
    """The tokenizer's `model_max_length`, unless it is the 'no limit' sentinel."""
    length = getattr(tokenizer, "model_max_length", None)
    return int(length) if isinstance(length, int) and 0 < length < TOKENIZER_LENGTH_SENTINEL else None


def model_size_bytes(model_path: Path) -> int:
    """Bytes on disk: a .plan, an OpenVINO .xml with its .bin, or an .onnx plus the external data files
    its tensors point at."""
    import onnx

    model_path = Path(model_path)
    total = model_path.stat().st_size
    if model_path.suffix == ".xml" and model_path.with_suffix(".bin").is_file():
        return total + model_path.with_suffix(".bin").stat().st_size
    if model_path.suffix not in ONNX_SUFFIXES:
        return total
    model = onnx.load(str(model_path), load_external_data=False)
    locations = set()
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), None)
            if location:
                locations.add(location)
    for location in sorted(locations):
        data_file = model_path.parent / location
        if data_file.is_file():
            total += data_file.stat().st_size
        else:
            log.warning("%s points at external data %s, which is missing", model_path, data_file)
    return total


def _all_tensors(model) -> Iterator:
    """Every tensor of a model: initializers and constant attributes, subgraphs included."""

    def walk(graph) -> Iterator:
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    yield from walk(attribute.g)
                for subgraph in attribute.graphs:
                    yield from walk(subgraph)

    yield from walk(model.graph)


def _source_onnx(model_path: Path) -> Path | None:
    """The ONNX graph of `model_path`: itself, or the one its backend says it was built from."""
    return backend_for_file(model_path).source_graph(Path(model_path))


def artifact_key(model_path: Path) -> dict:
    """What a cached result of running `model_path` is keyed by: its bytes, and for another backend's
    artifact also those of its companion files (an OpenVINO model's weights), of its build record
    (the graph it was built from and the library's version) and how its runner runs it."""
    model_path = Path(model_path)
    key = {"graph_sha256": sha256_file(model_path)}
    if model_path.suffix in ONNX_SUFFIXES:
        return key
    backend = backend_for_file(model_path)
    if backend.run_settings is not None:
        key["run_settings"] = backend.run_settings()
    companions = [model_path.with_suffix(suffix) for suffix in backend.companions]
    key |= {f"{path.suffix[1:]}_sha256": sha256_file(path) for path in companions if path.is_file()}
    record = manifest_path(model_path)
    if record.is_file():
        key["build_record_sha256"] = sha256_file(record)
    return key


def tokenizer_for_model(model_path: Path, tokenizer_path: Path | None = None):
    """The tokenizer of a graph (exported beside it) or of an engine (beside the graph it was built from)."""
    from qtool.models.families import tokenizer_for
    from qtool.models.resolve import load_tokenizer

    if tokenizer_path is not None:
        if not Path(tokenizer_path).is_dir():
            raise QtoolError(f"--tokenizer {tokenizer_path} is not a folder; give a Hugging Face tokenizer folder")
        return load_tokenizer(tokenizer_path)
    onnx_path = _source_onnx(model_path)
    if onnx_path is None:
        raise QtoolError(
            f"{model_path} has no ONNX graph beside it to find the tokenizer; keep the graph it was built from "
            "(and its tokenizer folder) beside it"
        )
    return tokenizer_for(onnx_path)


def model_max_positions(model_path: Path, tokenizer=None) -> int | None:
    """The longest sequence the model takes: the smaller of its position table and the tokenizer's limit.

    Either may be unknown (None when both are). The smaller wins because some families reserve
    table rows (RoBERTa's 514 rows serve 512 tokens) and say so only through the tokenizer.
    """
    onnx_path = _source_onnx(model_path)
    limits = [
        max_positions(onnx_path) if onnx_path is not None else None,
        tokenizer_max_length(tokenizer) if tokenizer is not None else None,
    ]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def check_model_files(model_paths: Sequence[Path]) -> list[Path]:
    """The paths, each checked to be an existing file that a backend runs (and accepts)."""
    paths = [Path(path) for path in model_paths]
    for path in paths:
        if not path.is_file():
            runs = ", ".join(suffix for backend in BACKENDS.values() for suffix in backend.suffixes)
            problem = "is a folder" if path.is_dir() else "does not exist"
            raise QtoolError(f"{path} {problem}; pass a file a backend runs ({runs})")
        backend = backend_for_file(path)
        if backend.check_artifact is not None:
            backend.check_artifact(path)
    return paths
