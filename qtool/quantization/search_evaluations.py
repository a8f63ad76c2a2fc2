"""The mixed-precision search's evaluations: logits of candidate QDQ graphs on the tuning pairs,
computed in this process or as executor tasks (`qtool.executor`: local or Ray).

- In this process (`InProcess`, the local executor): one ONNX Runtime session with a boolean switch
  per point serves every one-point evaluation; each candidate graph is written and scored in turn.
- As tasks (`AsTasks`): a task receives file paths and configurations only (the FP32 graph, the
  calibration the search starts from, written beside the search cache, the data split, the points
  to evaluate and the `SearchConfig`), tokenizes the tuning pairs itself with the tokenizer exported
  beside the graph, and returns logits. One-point evaluations go in chunks of points (one switched
  session per chunk); each candidate graph is a task of its own.

Either way the driver turns logits into results (it holds FP32's) and writes them through the
search cache, so a local, a resumed and a distributed search share one cache file with one writer.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from qtool.data import DataConfig, QnliSplit, TokenizedPart, make_batches, tokenize_part, tuning_rows
from qtool.defaults import MAX_LENGTH, SEARCH_CONFIDENCE, SEARCH_MAX_DROP, SEARCH_POINTS_PER_TASK
from qtool.deployment.evaluate import RECIPE_LEVEL, predict_logits
from qtool.errors import QtoolError
from qtool.executor import ExecutorConfig, parallelism, run_tasks
from qtool.exporter.qdq import switch_input
from qtool.models.families import tokenizer_for
from qtool.progress import progress_bar
from qtool.quantization.calibration import Calibration, load_calibration, write_calibration
from qtool.quantization.graphs import prepared_model, qdq_model
from qtool.runners.ort import OrtRunner

log = logging.getLogger(__name__)

Batches = tuple[list, int]  # tokenized batches and the number of pairs in them
OnePointDone = Callable[[str, "np.ndarray"], None]
CandidateDone = Callable[[int, "np.ndarray"], None]


@dataclass(frozen=True)
class SearchConfig:
    max_drop: float = SEARCH_MAX_DROP  # accuracy points below FP32 on the tuning pairs
    confidence: float = SEARCH_CONFIDENCE  # one-sided, that the drop is within max_drop
    tune_samples: int = 1000
    sensitivity_samples: int = 128
    curve_extra: int = 1  # evaluations past the first set within budget, to show the curve's shape
    batch_size: int = 32
    threads: int | None = None
    max_length: int = MAX_LENGTH
    tune_data: DataConfig | str | None = None  # tuning pairs from elsewhere; None: the split's tuning part

    def __post_init__(self) -> None:
        if self.tune_data is not None and not isinstance(self.tune_data, str | DataConfig):
            object.__setattr__(self, "tune_data", os.fspath(self.tune_data))

    def validate(self) -> None:
        if not 0 <= self.max_drop <= 100:
            raise QtoolError(f"--max-drop must be in [0, 100] accuracy points, got {self.max_drop:g}")
        if not 0.5 <= self.confidence < 1:
            raise QtoolError(f"--confidence must be in [0.5, 1), got {self.confidence:g}")
        if self.tune_samples < 1:
            raise QtoolError(f"--tune-samples must be at least 1, got {self.tune_samples}")
        if self.sensitivity_samples < 1:
            raise QtoolError(f"--sensitivity-samples must be at least 1, got {self.sensitivity_samples}")
        if self.batch_size < 1:
            raise QtoolError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class TuningExamples:
    """The pairs the search checks its budget on, how many came from where, and with `--tune-data` what
    was taken from it (name, rows, rows left out, fingerprint)."""

    examples: list
    sources: dict[str, int]
    tune_data: dict | None = None


def tuning_examples(split: QnliSplit, config: SearchConfig | None = None) -> TuningExamples:
    """The split's tuning part (or `config.tune_data`'s rows), or a one-line error when there are none."""
    if config is not None and config.tune_data is not None:
        rows, taken = tuning_rows(split, config.tune_data)
        return TuningExamples(rows, {"tune-data": len(rows)}, taken)
    examples = split.parts.get("tuning", [])
    if not examples:
        raise QtoolError(
            f"the data has no tuning part ({split.name}: {split.sizes}), and the search checks its budget on "
            "examples the model was not fine-tuned on; give --data with more rows (a few hundred at least) "
            "or tuning rows with --tune-data"
        )
    return TuningExamples(examples, {"tuning": len(examples)})


def with_tuning_rows(split: QnliSplit, config: SearchConfig) -> tuple[QnliSplit, SearchConfig]:
    """The split with `config.tune_data`'s rows as its tuning part and the config without it, so that
    tasks on other machines get the rows the driver read (not a path to read again)."""
    if config.tune_data is None:
        return split, config
    rows = tuning_examples(split, config).examples
    tuned = type(split)(split.name, {**split.parts, "tuning": rows}, all_rows=split.all_rows, labels=split.labels,
                        task=split.task)
    return tuned, replace(config, tune_data=None)


def tuning_part(
    split: QnliSplit, tokenizer, config: SearchConfig, sensitivity: bool, chosen: TuningExamples | None = None
) -> tuple[TokenizedPart, TuningExamples]:
    """The tuning pairs tokenized (at most `tune_samples`; with `sensitivity`, their first
    `sensitivity_samples`, which the one-point evaluations use) and where they came from; `chosen`:
    `tuning_examples` already read."""
    chosen = chosen or tuning_examples(split, config)
    examples = chosen.examples[: config.tune_samples]
    chosen = replace(chosen, sources={next(iter(chosen.sources)): len(examples)})
    if sensitivity:
        examples = examples[: config.sensitivity_samples]
    return tokenize_part(tokenizer, examples, config.max_length), chosen


def switched_runner(prepared, calibration: Calibration, threads: int | None) -> OrtRunner:
    """A runner (not entered) of the QDQ graph with a boolean switch per point."""
    model = qdq_model(prepared, calibration, switches=True).SerializeToString()
    return OrtRunner(model, threads=threads, optimization_level=RECIPE_LEVEL)


def one_point_logits(runner: OrtRunner, calibration: Calibration, name: str, batches: Batches) -> np.ndarray:
    """Logits with only `name` quantized (weights quantized everywhere), on an entered `switched_runner`."""
    switches = {switch_input(n): np.array(n == name) for n in calibration.tensors}
    return predict_logits(runner, batches[0], batches[1], switches)


def candidate_logits(
    prepared, calibration: Calibration, kept: list[str], batches: Batches, threads: int | None
) -> np.ndarray:
    """Logits of the real QDQ graph with the points in `kept` in float (scored with optimizations off)."""
    candidate = calibration.without_points(kept, "search candidate")
    model = qdq_model(prepared, candidate).SerializeToString()
    with OrtRunner(model, threads=threads, optimization_level=RECIPE_LEVEL) as runner:
        return predict_logits(runner, batches[0], batches[1])


class InProcess:
    """Evaluations in this process, one after another (the local executor: today's sequential search)."""

    width = 1  # evaluations at once

    def __init__(self, model_path: Path, calibration: Calibration, tuning: Batches, sensitivity: Batches, threads):
        self.prepared = prepared_model(model_path, calibration)  # loaded (and smoothed) once for every candidate
        self.calibration, self.tuning, self.sensitivity, self.threads = calibration, tuning, sensitivity, threads

    def one_point(self, names: list[str], done: OnePointDone) -> None:
        if not names:
            return
        with (
            progress_bar("sensitivity", total=len(names)) as bar,
            switched_runner(self.prepared, self.calibration, self.threads) as runner,
        ):
            for name in names:
                done(name, one_point_logits(runner, self.calibration, name, self.sensitivity))
                bar.advance(1, status=name)

    def candidates(self, sets: list[list[str]], done: CandidateDone) -> None:
        for index, kept in enumerate(sets):
            done(index, candidate_logits(self.prepared, self.calibration, kept, self.tuning, self.threads))


@dataclass(frozen=True)
class SearchInputs:
    """What every search task receives: files and configurations, nothing built."""

    model_path: Path
    calibration_file: Path  # the calibration the search starts from
    split: QnliSplit
    config: SearchConfig

    def load(self, sensitivity: bool) -> tuple[Calibration, Batches]:
        calibration = load_calibration(self.calibration_file, self.model_path)
        part, _ = tuning_part(self.split, tokenizer_for(self.model_path), self.config, sensitivity)
        return calibration, (make_batches(part, self.config.batch_size), len(part))


def one_point_task(inputs: SearchInputs, names: list[str]) -> dict[str, np.ndarray]:
    """A task: the one-point logits of each point in `names` (a chunk), on the sensitivity pairs."""
    calibration, batches = inputs.load(sensitivity=True)
    prepared = prepared_model(inputs.model_path, calibration)
    with switched_runner(prepared, calibration, inputs.config.threads) as runner:
        return {name: one_point_logits(runner, calibration, name, batches) for name in names}


def candidate_task(inputs: SearchInputs, kept: list[str]) -> np.ndarray:
    """A task: the tuning logits of the QDQ graph with the points in `kept` in float."""
    calibration, batches = inputs.load(sensitivity=False)
    return candidate_logits(prepared_model(inputs.model_path, calibration), calibration, kept, batches,
                            inputs.config.threads)


def chunks(names: Sequence[str], width: int, most: int = SEARCH_POINTS_PER_TASK) -> list[list[str]]:
    """`names` in contiguous chunks of at most `most`, their count a multiple of `width` (whole rounds)."""
    count = min(width * math.ceil(len(names) / (width * most)), len(names))
    size, larger = divmod(len(names), count) if count else (0, 0)
    starts = [index * size + min(index, larger) for index in range(count + 1)]
    return [list(names[start:end]) for start, end in zip(starts, starts[1:], strict=False)]


class AsTasks:
    """Evaluations as executor tasks, as many at once as the executor runs (`width`)."""

    def __init__(self, model_path: Path, calibration: Calibration, split: QnliSplit, config: SearchConfig,
                 executor: ExecutorConfig, cache_path: Path | None):
        if cache_path is None:
            raise QtoolError("a search on another executor needs a cache file on storage every node sees")
        calibration.check_model(model_path)
        calibration_file = write_calibration(calibration, Path(cache_path).with_suffix(".base.json"))
        tasks_config = replace(config, threads=config.threads or executor.task_threads())
        self.inputs = SearchInputs(Path(model_path), calibration_file, split, tasks_config)
        self.executor, self.width = executor, parallelism(executor)
        log.info("search evaluations on %s, %d at once", executor.kind, self.width)

    def one_point(self, names: list[str], done: OnePointDone) -> None:
        parts = chunks(names, self.width)

        def finished(index: int, result: dict[str, np.ndarray]) -> None:
            for name in parts[index]:
                done(name, result[name])

        tasks = [(self.inputs, part) for part in parts]
        run_tasks(one_point_task, tasks, self.executor, "sensitivity", label=lambda r: f"{len(r)} points",
                  on_result=finished)

    def candidates(self, sets: list[list[str]], done: CandidateDone) -> None:
        tasks = [(self.inputs, kept) for kept in sets]
        run_tasks(candidate_task, tasks, self.executor, "search candidates", label=lambda r: f"{len(r)} pairs",
                  on_result=done)
