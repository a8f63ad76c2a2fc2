"""Accuracy of any runner on a tokenized data part."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtool.cache import cached_stage
from qtool.data import QnliSplit, make_batches, tokenize_part
from qtool.data.batching import Batch
from qtool.data.labels import label_of_output
from qtool.data.split import EVAL_PARTS
from qtool.data.tables import primary_metric
from qtool.defaults import MAX_LENGTH
from qtool.deployment.backends import backend_for_file, runner_factory
from qtool.deployment.metrics import PairedDrop, classification_metrics, paired_drop
from qtool.deployment.model_files import artifact_key, tokenizer_for_model
from qtool.errors import QtoolError
from qtool.graph import graph_metadata, is_recipe_graph
from qtool.models.families import tokenizer_for
from qtool.progress import ProgressTask, progress_bar
from qtool.runners.base import Runner
from qtool.runners.ort import OrtRunner, check_onnx_file, cpu_summary

log = logging.getLogger(__name__)

RECIPE_LEVEL = "disable"  # ONNX Runtime's optimizations for a recipe's accuracy: none (see `scoring_level`)


@dataclass(frozen=True)
class EvalConfig:
    part: str = "eval"
    batch_size: int = 32
    limit: int | None = None
    threads: int | None = None

    def validate(self) -> None:
        if self.part not in EVAL_PARTS:
            raise QtoolError(f"--part must be one of {', '.join(EVAL_PARTS)}, got {self.part!r}")
        if self.batch_size < 1:
            raise QtoolError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise QtoolError(f"--limit must be at least 1, got {self.limit}")
        if self.threads is not None and self.threads < 1:
            raise QtoolError(f"--threads must be at least 1, got {self.threads}")


def scoring_level(model_path: Path) -> str:
    """The ONNX Runtime optimization level a graph is scored at. A QDQ graph as qtool wrote it runs
    with optimizations off: its recipe accuracy, computed as the QDQ semantics (and the NumPy
    reference) say, so it does not depend on which integer kernels a CPU fuses and how they round.
    Every other graph (FP32, a runtime graph, a peer) runs as it is deployed, with all of them."""
    return RECIPE_LEVEL if is_recipe_graph(graph_metadata(model_path)) else "all"


def recorded_metadata(model_path: Path) -> dict[str, str]:
    """qtool's metadata of an ONNX graph, or of the graph another backend's artifact was built from (a
    TensorRT engine's or OpenVINO model's build record keeps it; one without a record has none)."""
    if Path(model_path).suffix == ".onnx":
        return graph_metadata(model_path)
    return backend_for_file(Path(model_path)).metadata(Path(model_path))


def logit_to_label(model_path: Path, labels: tuple[str, ...]) -> np.ndarray:
    """The index into the data's `labels` of each logit column, from the labels recorded in the graph or
    in an engine's build manifest (a model qtool did not export is read in the data's order)."""
    recorded = recorded_metadata(model_path).get("labels")
    if recorded is None:
        return np.arange(len(labels), dtype=np.int64)
    return label_of_output(json.loads(recorded), labels, str(model_path))


def predict_logits(
    runner: Runner,
    batches: Sequence[Batch],
    size: int,
    extra_feeds: Mapping[str, np.ndarray] | None = None,
    description: str | None = None,
) -> np.ndarray:
    """Logits of `runner` (already entered) for `size` examples, in example order, batch by batch.

    `extra_feeds` go with every batch (the mixed-precision search's switches); a progress bar
    with the rate is drawn when `description` is given.
    """
    logits = None
    started = time.perf_counter()
    shown = progress_bar(description, total=size) if description else contextlib.nullcontext(ProgressTask(None, None))
    with shown as bar:
        done = 0
        for batch in batches:
            output = runner.infer({**batch.feeds, **(extra_feeds or {})})["logits"]
            if logits is None:
                logits = np.zeros((size, output.shape[-1]), dtype=np.float32)
            logits[batch.indices] = output
            done += batch.size
            bar.advance(batch.size, status=f"{done / (time.perf_counter() - started):.0f} ex/s")
    return logits if logits is not None else np.zeros((0, 0), dtype=np.float32)


def evaluate(
    runner: Runner,
    tokenizer,
    split: QnliSplit,
    config: EvalConfig = EvalConfig(),
    label_of_logit: np.ndarray | None = None,
    max_length: int = MAX_LENGTH,
    description: str = "eval",
) -> dict:
    """Accuracy of `runner` (already entered) on a part of `split`."""
    config.validate()
    examples = split.part(config.part)
    if config.limit:
        examples = examples[: config.limit]
    part = tokenize_part(tokenizer, examples, max_length)
    mapping = label_of_logit if label_of_logit is not None else np.arange(len(split.labels))
    started = time.perf_counter()
    logits = predict_logits(runner, make_batches(part, config.batch_size), len(part), description=description)
    seconds = time.perf_counter() - started
    if logits.shape[-1] != len(mapping):
        raise QtoolError(
            f"the classifier has {logits.shape[-1]} outputs and the data {len(mapping)} labels "
            f"({', '.join(split.labels)}); give data with the model's labels (--label-column)"
        )
    predictions = mapping[logits.argmax(-1)]
    correct = int((predictions == part.labels).sum())
    result = {
        "accuracy": correct / len(part),
        "correct": correct,
        "examples": len(part),
        "seconds": round(seconds, 3),
        "examples_per_second": round(len(part) / seconds, 1),
        "data_part": config.part,
        "data_split": split.describe(),
        "predictions": predictions.tolist(),  # label index per example, in the part's order
    }
    log.info("%s: accuracy %.4f on %d examples", description, result["accuracy"], len(part))
    return result


def evaluation_metrics(split: QnliSplit, config: EvalConfig, evaluation: dict) -> dict:
    """Macro-F1, F1 and MCC with intervals of an evaluation with `predictions` (of `split`'s part as
    `config` takes it); computed where they are reported, as their bootstrap costs a fraction of a second."""
    examples = split.part(config.part)[: config.limit or None]
    metrics = classification_metrics([e.label for e in examples], evaluation["predictions"], len(split.labels))
    primary = primary_metric(split.task)
    if primary != "accuracy" and primary not in metrics:  # F1 of a GLUE task is its two labels'
        primary = "macro_f1"
    metrics["primary_metric"] = primary
    return metrics | ({"f1_positive_label": split.labels[1]} if "f1" in metrics else {})


def paired_against(reference: dict, candidate: dict, split: QnliSplit, config: EvalConfig) -> PairedDrop:
    """How far `candidate` is below `reference`: two evaluations with `predictions` of `split`'s part as
    `config` takes it, paired example by example."""
    labels = np.array([e.label for e in split.part(config.part)[: config.limit or None]])
    return paired_drop(np.array(reference["predictions"]) == labels, np.array(candidate["predictions"]) == labels)


def changed_predictions(first: dict, second: dict) -> int:
    """How many examples two evaluations with `predictions` (of the same part) predict differently."""
    return sum(a != b for a, b in zip(first["predictions"], second["predictions"], strict=True))


def evaluate_artifact(
    model_path: Path, split: QnliSplit, config: EvalConfig, max_length: int,
    providers: Sequence[str] = ("CPUExecutionProvider",), tokenizer_path: Path | None = None,
) -> dict:
    """Accuracy of a graph or another backend's artifact (an OpenVINO model, a TensorRT engine) through
    the runner that benchmarks it, with each example's predicted label index; not cached."""
    labels = logit_to_label(model_path, split.labels)  # an engine's from its build manifest
    with runner_factory(model_path, config.threads, providers)() as runner:
        result = evaluate(
            runner, tokenizer_for_model(model_path, tokenizer_path), split, config, labels, max_length,
            description=f"eval {Path(model_path).name}",
        )
        kernels = runner.kernels()
    return {"model": str(model_path), **result} | ({"kernels": kernels} if kernels else {})


def evaluate_graph(
    model_path: Path,
    split: QnliSplit,
    config: EvalConfig = EvalConfig(),
    max_length: int = MAX_LENGTH,
    use_cache: bool = True,
    tokenizer_path: Path | None = None,
    predictions: bool = False,
) -> dict:
    """Accuracy of an ONNX graph through ONNX Runtime on the CPU at its `scoring_level` (another backend's
    artifact through its own runner), cached beside it as `<model>.eval-<part>.json`, keyed by its
    content, the data split and the options; with `predictions`, also each example's predicted label index."""
    model_path = Path(model_path)
    graph = model_path.suffix == ".onnx"
    if graph:
        check_onnx_file(model_path)
    level = scoring_level(model_path) if graph else None

    def run() -> dict:
        if not graph:
            return evaluate_artifact(model_path, split, config, max_length, tokenizer_path=tokenizer_path)
        with OrtRunner(model_path, threads=config.threads, optimization_level=level) as runner:
            result = evaluate(
                runner,
                tokenizer_for(model_path, tokenizer_path),
                split,
                config,
                logit_to_label(model_path, split.labels),
                max_length,
                description=f"eval {model_path.name}",
            )
        return {"model": str(model_path), "optimization_level": level, **result}

    def shown(result: dict) -> dict:
        return result if predictions else {k: v for k, v in result.items() if k != "predictions"}

    if not use_cache:
        return shown(run())
    key = {
        **artifact_key(model_path),
        "data": split.describe(),
        "part": config.part,
        "limit": config.limit,
        "max_length": max_length,
        "optimization_level": level,
        "predictions": True,  # records before predictions were kept are scored again
    }
    if level != RECIPE_LEVEL:  # fused kernels round (integer ones may saturate) as this CPU's do
        key["cpu"] = cpu_summary()
    if not graph:
        key["records"] = "kernels"  # records before the runner named its kernels are scored again
    record = model_path.with_name(model_path.name + f".eval-{config.part}.json")
    stage = "score QDQ graph" if level == RECIPE_LEVEL else "score deployed graph"
    result = cached_stage(record, key, run, description=f"the evaluation of {model_path}", stage=stage)
    return {**shown(result), "model": str(model_path)}
