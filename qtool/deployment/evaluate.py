"""Accuracy of any runner on a tokenized QNLI part."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtool.data import LABELS, QnliSplit, make_batches, tokenize_part
from qtool.errors import QtoolError
from qtool.models.resolve import load_tokenizer
from qtool.progress import progress_bar
from qtool.runners.base import Runner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    part: str = "eval"
    batch_size: int = 32
    limit: int | None = None
    threads: int | None = None

    def validate(self) -> None:
        if self.batch_size < 1:
            raise QtoolError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise QtoolError(f"--limit must be at least 1, got {self.limit}")


def onnx_metadata(model_path: Path) -> dict[str, str]:
    import onnx

    from qtool.exporter import read_qtool_metadata

    return read_qtool_metadata(onnx.load(str(model_path), load_external_data=False))


def tokenizer_for(model_path: Path, tokenizer_path: Path | None = None):
    """The tokenizer exported beside the graph, unless one is given explicitly."""
    if tokenizer_path is None:
        relative = onnx_metadata(model_path).get("tokenizer")
        if relative is None:
            raise QtoolError(f"{model_path} was not exported by qtool; pass --tokenizer FOLDER")
        tokenizer_path = Path(model_path).parent / relative
    if not Path(tokenizer_path).is_dir():
        raise QtoolError(f"tokenizer folder {tokenizer_path} is missing; re-export the model or pass --tokenizer")
    return load_tokenizer(tokenizer_path)


def logit_to_label(model_path: Path) -> np.ndarray:
    names = json.loads(onnx_metadata(model_path).get("labels", json.dumps(list(LABELS))))
    return np.array([LABELS.index(name) for name in names], dtype=np.int64)


def evaluate(
    runner: Runner,
    tokenizer,
    split: QnliSplit,
    config: EvalConfig = EvalConfig(),
    label_of_logit: np.ndarray | None = None,
    max_length: int = 128,
    description: str = "eval",
) -> dict:
    """Accuracy of `runner` (already entered) on a part of `split`."""
    config.validate()
    examples = split.part(config.part)
    if config.limit:
        examples = examples[: config.limit]
    part = tokenize_part(tokenizer, examples, max_length)
    batches = make_batches(part, config.batch_size)
    mapping = label_of_logit if label_of_logit is not None else np.arange(len(LABELS))
    correct = 0
    started = time.perf_counter()
    with progress_bar(description, total=len(part)) as bar:
        done = 0
        for batch in batches:
            logits = runner.infer(batch.feeds)["logits"]
            correct += int((mapping[logits.argmax(-1)] == batch.labels).sum())
            done += batch.size
            bar.advance(batch.size, status=f"{done / (time.perf_counter() - started):.0f} ex/s")
    seconds = time.perf_counter() - started
    result = {
        "accuracy": correct / len(part),
        "correct": correct,
        "examples": len(part),
        "seconds": round(seconds, 3),
        "examples_per_second": round(len(part) / seconds, 1),
        "data_part": config.part,
        "data_split": split.describe(),
    }
    log.info("%s: accuracy %.4f on %d examples", description, result["accuracy"], len(part))
    return result


def evaluate_graph(
    model_path: Path,
    split: QnliSplit,
    config: EvalConfig = EvalConfig(),
    max_length: int = 128,
    use_cache: bool = True,
    tokenizer_path: Path | None = None,
) -> dict:
    """Accuracy of an ONNX graph through ONNX Runtime on the CPU, cached beside the graph.

    The cache entry is keyed by the graph's sha256, the data split and the evaluation options, so
    a changed graph or split is evaluated again.
    """
    from qtool.fileio import read_json, sha256_file, write_json
    from qtool.runners.ort import OrtRunner, check_onnx_file

    check_onnx_file(model_path)
    key = {
        "graph_sha256": sha256_file(model_path),
        "data": split.describe(),
        "part": config.part,
        "limit": config.limit,
        "max_length": max_length,
    }
    cache = Path(model_path).with_name(Path(model_path).name + f".eval-{config.part}.json")
    if use_cache and cache.is_file():
        cached = read_json(cache)
        if cached.get("key") == key:
            log.info("reusing the evaluation of %s", model_path)
            return cached["result"]
    with OrtRunner(model_path, threads=config.threads) as runner:
        result = evaluate(
            runner,
            tokenizer_for(model_path, tokenizer_path),
            split,
            config,
            logit_to_label(model_path),
            max_length,
            description=f"eval {Path(model_path).name}",
        )
    result = {"model": str(model_path), **result}
    if use_cache:
        write_json(cache, {"key": key, "result": result})
    return result
