"""Automatic mixed precision: a small set of points kept in float within an accuracy budget.

1. Sensitivity, from the statistics and from short evaluations. The statistics give each point's
   expected signal-to-quantization-noise ratio at its calibrated per-tensor scale (rounding noise
   inside the range, clipping error outside it; for PEG the whole tensor's scale, an approximation). The short evaluations quantize one point at a time (weights
   quantized everywhere, every other activation in float) and measure the KL divergence of the
   classifier's output from FP32's on the first tuning pairs (128 by default). One ONNX Runtime session serves
   all of them: the QDQ graph is written with a boolean switch per point (`QdqPlan.switches`).
2. Search. Points are ranked by measured sensitivity (the statistics break ties). A set is within
   budget when the one-sided upper bound (at `confidence`, 90 % by default) of its paired accuracy
   drop below FP32 on the tuning pairs is at most `max_drop`: the drop counts the pairs FP32 got
   right and the candidate wrong (losses) less the reverse (gains), and its variance comes from all
   of them, so a candidate with many balanced flips is refused where one with few flips at the same
   accuracy passes. The real QDQ graph with the n most sensitive points in float is evaluated for
   n = 0, 1, 2, 4, 8, ... until a set is within budget, then n is bisected down to the smallest n
   within budget (the budget is close to monotone in n; `curve_extra` more n show the curve's shape).
   Then each chosen point, least sensitive first, is quantized again if the set without it is still
   within the same bound and moves no more tuning predictions from FP32's than the set that met the
   budget first, so pruning cannot spend more than the bound allows. Every evaluation is cached by
   the set of points it keeps in float. If no n meets the budget (weight quantization alone may cost
   more), the n with the lowest bound is kept and the result says the budget was not met.

On another executor than `local` (`qtool.quantization.search_evaluations`), the one-point
evaluations run as tasks over chunks of points, and the curve's and pruning's evaluations run as
many at once as the executor runs tasks: speculatively, then trimmed to what the sequential search
evaluates in order, so the chosen set, the curve and the pruning are the same as in this process.

The tuning pairs are the split's tuning part: pairs the model was not fine-tuned on, apart from the
calibration and eval parts (`qtool.data.split`), so the bound is checked where FP32 is as often wrong
as it will be in use, and the eval accuracy of the result stays an honest, held-out figure.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from qtool.analysis.collect import ActivationStats
from qtool.analysis.stats import TensorStats
from qtool.cache import read_record
from qtool.data import QnliSplit, make_batches
from qtool.deployment.evaluate import logit_to_label, predict_logits
from qtool.deployment.metrics import PairedDrop, paired_drop
from qtool.errors import QtoolError
from qtool.executor import ExecutorConfig
from qtool.exporter.grid import INT8_MAX
from qtool.fileio import dumps_stable, sha256_text, write_json
from qtool.progress import ProgressTask, progress_bar
from qtool.quantization.calibration import Calibration
from qtool.quantization.search_evaluations import (
    AsTasks,
    InProcess,
    SearchConfig,
    tuning_examples,
    tuning_part,
    with_tuning_rows,
)
from qtool.runners.ort import OrtRunner

log = logging.getLogger(__name__)

SEARCH_FORMAT = "qtool-precision-search/3"  # 2: QDQ graphs scored with optimizations off; 3: the tuning part, flips


def expected_sqnr_db(stats: TensorStats, scale: float) -> float:
    """Signal-to-quantization-noise ratio (dB) of symmetric INT8 at `scale`, from the |x| histogram:
    uniform rounding noise inside the range, squared overshoot outside it."""
    signal = stats.variance + stats.mean**2
    if not stats.count or signal <= 0:
        return math.inf
    width = stats.histogram_range / stats.bins
    centres = (np.arange(stats.bins) + 0.5) * width
    limit = scale * INT8_MAX
    error = np.where(centres <= limit, scale * scale / 12.0, (centres - limit) ** 2)
    noise = float((error * stats.histogram).sum() / stats.count)
    return 10.0 * math.log10(signal / noise) if noise > 0 else math.inf


class TuningSet:
    """Tokenized tuning pairs (the split's tuning part), their labels and FP32 logits: what the search and
    the accuracy-controlled peers tune on."""

    def __init__(self, model_path: Path, split: QnliSplit, tokenizer, config: SearchConfig):
        chosen = tuning_examples(split, config)  # read once (--tune-data is a file) for both parts
        part, taken = tuning_part(split, tokenizer, config, sensitivity=False, chosen=chosen)
        self.sources, self.tune_data = taken.sources, taken.tune_data
        self.labels = part.labels
        self.label_of_logit = logit_to_label(model_path, split.labels)
        self.batches = make_batches(part, config.batch_size)
        sensitivity, _ = tuning_part(split, tokenizer, config, sensitivity=True, chosen=chosen)
        self.sensitivity_batches = make_batches(sensitivity, config.batch_size)
        self.size, self.sensitivity_size = len(part), len(sensitivity)
        with OrtRunner(model_path, threads=config.threads) as fp32:
            self.fp32_logits = predict_logits(fp32, self.batches, self.size)
            self.fp32_sensitivity_logits = predict_logits(fp32, self.sensitivity_batches, self.sensitivity_size)
        self.fp32_right = self.right(self.fp32_logits)
        self.fp32_accuracy = float(self.fp32_right.mean())

    def right(self, logits: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
        """Whether each pair (of the tuning pairs, or those at `order`) is predicted right."""
        labels = self.labels if order is None else self.labels[order]
        return self.label_of_logit[logits.argmax(-1)] == labels

    def accuracy(self, logits: np.ndarray) -> float:
        return float(self.right(logits).mean())

    def against_fp32(self, logits: np.ndarray, order: np.ndarray | None = None) -> PairedDrop:
        """The paired drop of `logits` (of the tuning pairs, or those at `order`) below FP32's."""
        reference = self.fp32_right if order is None else self.fp32_right[order]
        return paired_drop(reference, self.right(logits, order))


def _kl_divergence(reference: np.ndarray, candidate: np.ndarray) -> float:
    def log_softmax(x):
        x = x.astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = log_softmax(reference), log_softmax(candidate)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


class _Cache:
    """Evaluations keyed by what they depend on; a changed model, calibration or tuning set starts afresh."""

    def __init__(self, path: Path | None, key: dict):
        self.path, self.key = path, key
        self.entries: dict[str, dict] = {}
        self.reused = 0
        cached = read_record(path, key) if path is not None else None
        if cached is not None and isinstance(cached.get("entries"), dict):
            self.entries = cached["entries"]

    def get(self, kind: str, names: list[str]) -> dict | None:
        entry = self.entries.get(self._id(kind, names))
        if entry is not None:
            self.reused += 1
        return entry

    def put(self, kind: str, names: list[str], value: dict) -> dict:
        self.entries[self._id(kind, names)] = value
        if self.path is not None:
            write_json(self.path, {"key": self.key, "entries": self.entries})
        return value

    @staticmethod
    def _id(kind: str, names: list[str]) -> str:
        return f"{kind}:{sha256_text(*sorted(names))[:16]}"


class _Evaluator:
    """The search's evaluations of one calibration on the tuning set, each cached by what it keeps in float
    and computed by `backend` (in this process, or as executor tasks) when the cache does not hold it."""

    def __init__(self, tuning: TuningSet, config: SearchConfig, cache: _Cache, backend: InProcess | AsTasks):
        self.tuning, self.config, self.cache, self.backend = tuning, config, cache, backend
        self.width = backend.width  # evaluations at once
        self.evaluations = 0

    def alone(self, names: list[str]) -> dict[str, dict]:
        """Output divergence from FP32 with only one point quantized (weights quantized everywhere), per point."""
        results = {name: self.cache.get("alone", [name]) for name in names}
        reference = self.tuning.fp32_sensitivity_logits

        def done(name: str, logits: np.ndarray) -> None:
            flips = float((logits.argmax(-1) != reference.argmax(-1)).mean())
            kl = _kl_divergence(reference, logits)
            results[name] = self.cache.put("alone", [name], {"kl": kl, "flips": flips})
            self.evaluations += 1

        self.backend.one_point([name for name, result in results.items() if result is None], done)
        return results

    def kept(self, sets: list[list[str]]) -> list[dict]:
        """Tuning accuracy of the QDQ graph with the points of each set in float."""
        results = [self.cache.get("kept", kept) for kept in sets]
        missing = [index for index, result in enumerate(results) if result is None]
        tuning = self.tuning

        def done(position: int, logits: np.ndarray) -> None:
            index = missing[position]
            paired = tuning.against_fp32(logits)
            results[index] = self.cache.put(
                "kept",
                sets[index],
                {
                    "accuracy": tuning.accuracy(logits),
                    "losses": paired.losses,
                    "gains": paired.gains,
                    "flips": float((logits.argmax(-1) != tuning.fp32_logits.argmax(-1)).mean()),
                },
            )
            self.evaluations += 1

        self.backend.candidates([sets[index] for index in missing], done)
        return [judged(result, tuning.size, self.config) for result in results]


def judged(result: dict, pairs: int, config: SearchConfig) -> dict:
    """A candidate's result (its `losses` and `gains` against FP32 on `pairs` tuning pairs) with its drop in
    points, the drop's one-sided upper bound at `config.confidence` and whether that bound is within budget."""
    paired = PairedDrop(result["losses"], result["gains"], pairs)
    upper = paired.upper(config.confidence)
    return {**result, "drop": round(paired.drop, 6), "upper": round(upper, 6), "within": upper <= config.max_drop}


def _cache_key(calibration: Calibration, split: QnliSplit, config: SearchConfig, tune_data: dict | None) -> dict:
    recorded = calibration.to_json()
    fields = ("recipe", "scope", "tensors", "weights", "embedding_tables_quantized", "smoothing")
    return {
        "format": SEARCH_FORMAT,
        "model": calibration.model,  # prepared_model checks it is the graph's identity
        "calibration": sha256_text(dumps_stable({key: recorded.get(key) for key in fields})),
        "data": split.describe(),
        "tune_samples": config.tune_samples,
        "sensitivity_samples": config.sensitivity_samples,
        "batch_size": config.batch_size,
        "max_length": config.max_length,
        **({"tune_data": tune_data["fingerprint"]} if tune_data else {}),
    }


def _ranked_by_sensitivity(evaluator: _Evaluator, stats: ActivationStats, calibration: Calibration) -> list[dict]:
    """Every point's sensitivity, most sensitive first (measured KL; expected SQNR breaks ties)."""
    names = list(calibration.tensors)
    measured = evaluator.alone(names)
    sensitivity = []
    for name in names:
        sqnr = expected_sqnr_db(stats.stats[name], calibration.tensors[name].scale)
        sensitivity.append({"name": name, **measured[name], "expected_sqnr_db": round(sqnr, 3)})
    position = {name: index for index, name in enumerate(names)}
    return sorted(sensitivity, key=lambda s: (-s["kl"], s["expected_sqnr_db"], position[s["name"]]))


def _half_width(result: dict, pairs: int) -> float:
    return round(PairedDrop(result["losses"], result["gains"], pairs).half_width(), 4)


Evaluate = Callable[[list[list[str]]], list[dict]]  # sets kept in float -> their results, with "within"
NO_BAR = ProgressTask(None, None)


def _galloping(count: int) -> list[int]:
    """0, 1, 2, 4, 8, ... below `count`, then `count`."""
    sizes, n = [0], 1
    while n < count:
        sizes.append(n)
        n *= 2
    return sizes + [count] if count else sizes


def _bisection(low: int, high: int, levels: int) -> list[int]:
    """The midpoints the next `levels` steps of a bisection between `low` and `high` may evaluate."""
    if levels == 0 or high - low <= 1:
        return []
    mid = (low + high) // 2
    return [mid, *_bisection(low, mid, levels - 1), *_bisection(mid, high, levels - 1)]


def prefix_curve(
    evaluate: Evaluate, order: list[str], curve_extra: int, width: int = 1, bar: ProgressTask = NO_BAR
) -> tuple[list[dict], int | None]:
    """The curve over the n first points of `order` in float, by n, and the smallest n found within budget
    (None when no n is): n = 0, 1, 2, 4, ... up to every point until one is within budget, a bisection
    between the last n outside it and that n, then `curve_extra` n past the n found. With `width` > 1 up to
    `width` evaluations run at once, speculatively (the next n of the sequence, the next levels of the
    bisection), and only what the sequential search (`width` 1) evaluates is recorded."""
    measured: dict[int, dict] = {}
    curve: dict[int, dict] = {}

    def measure(sizes: list[int]) -> None:
        new = [k for k in dict.fromkeys(sizes) if k not in measured]
        if new:
            measured.update(zip(new, evaluate([order[:k] for k in new]), strict=True))

    def record(k: int) -> bool:
        curve[k] = {"float_points": k, **measured[k]}
        bar.advance(1, status=f"{k} in float: {100 * measured[k]['accuracy']:.2f}")
        return measured[k]["within"]

    sequence, low, high = _galloping(len(order)), None, None
    while sequence and high is None:
        batch, sequence = sequence[:width], sequence[width:]
        measure(batch)
        for k in batch:
            if record(k):
                high = k
                break
            low = k
    if high is None:
        return [curve[k] for k in sorted(curve)], None
    levels = max(1, (width + 1).bit_length() - 1)  # 2**levels - 1 evaluations at most
    while low is not None and high - low > 1:
        measure(_bisection(low, high, levels))
        for _ in range(levels):
            if high - low <= 1:
                break
            mid = (low + high) // 2
            high, low = (mid, low) if record(mid) else (high, mid)
    extra = [k for k in range(high + 1, min(len(order), high + curve_extra) + 1) if k not in curve]
    for start in range(0, len(extra), width):
        measure(extra[start : start + width])
    for k in extra:
        record(k)
    return [curve[k] for k in sorted(curve)], high


def pruned(
    evaluate: Evaluate, chosen: list[str], final: dict, width: int = 1, bar: ProgressTask = NO_BAR
) -> tuple[list[str], dict, list[dict]]:
    """Each point of `chosen` (its result `final`), last first, quantized again while the budget holds without
    it and no more tuning predictions differ from FP32's than with `final` (its flip rate): the set left, its
    result and every trial (`accepted` says which changed the set). With `width` > 1 the next `width` points
    are tried at once against the current set, as if each failed; when one is accepted, the set changes and
    the trials after it in its batch are dropped, so the trials recorded are the sequential search's."""
    trials: list[dict] = []
    waiting = list(reversed(chosen))
    flip_limit = final["flips"]
    while waiting:
        batch = waiting[:width]
        candidates = [[n for n in chosen if n != name] for name in batch]
        for name, trial, point in zip(batch, candidates, evaluate(candidates), strict=True):
            waiting.remove(name)
            accepted = point["within"] and point["flips"] <= flip_limit
            trials.append({"quantized_again": name, "float_points": len(trial), **point, "accepted": accepted})
            if accepted:
                chosen, final = trial, point
            bar.advance(1, status=f"{len(chosen)} in float")
            if accepted:
                break
    return chosen, final, trials


def _choose(evaluator: _Evaluator, order: list[str]) -> dict:
    """The curve over the n most sensitive points in float, then greedy pruning of the smallest set in budget."""
    config = evaluator.config
    with progress_bar("search", total=None) as bar:
        curve, first_within = prefix_curve(evaluator.kept, order, config.curve_extra, evaluator.width, bar)
        pruning = []
        if first_within is not None:
            first = next(c for c in curve if c["float_points"] == first_within)
            chosen, final, pruning = pruned(evaluator.kept, order[:first_within], first, evaluator.width, bar)
        else:
            final = min(curve, key=lambda c: (c["upper"], c["float_points"]))
            chosen = order[: final["float_points"]]
            log.warning(
                "no set of points kept in float is within %g points of FP32 on the tuning pairs at %g %% confidence "
                "(the weights stay INT8 in every candidate); keeping the %d most sensitive, the lowest bound among the n tried",
                config.max_drop,
                100 * config.confidence,
                len(chosen),
            )
    return {
        "chosen": [n for n in order if n in chosen],
        "within_budget": first_within is not None,
        "tuning_accuracy": final["accuracy"],
        "tuning_drop": final["drop"],
        "tuning_paired": {key: final[key] for key in ("losses", "gains", "drop", "upper")}
        | {"confidence": config.confidence, "half_width_95": _half_width(final, evaluator.tuning.size)},
        "curve": curve,
        "pruning": pruning,
    }


def search_precision(
    model_path: Path,
    stats: ActivationStats,
    calibration: Calibration,
    split: QnliSplit,
    tokenizer,
    config: SearchConfig = SearchConfig(),
    cache_path: Path | None = None,
    executor: ExecutorConfig = ExecutorConfig(),
) -> dict:
    """Search the points of `calibration` (nothing kept in float yet) to keep in float; its evaluations
    run in this process, or as tasks of `executor` (which then load the tokenizer exported beside the
    graph and read the inputs beside `cache_path`)."""
    config.validate()
    executor.validate()
    if calibration.kept_in_float:
        raise QtoolError("the automatic search starts from a calibration with no point kept in float; drop --keep-fp")
    started = time.perf_counter()
    tuning = TuningSet(model_path, split, tokenizer, config)
    cache = _Cache(cache_path, _cache_key(calibration, split, config, tuning.tune_data))
    if executor.kind == "local":
        batches = (tuning.batches, tuning.size), (tuning.sensitivity_batches, tuning.sensitivity_size)
        backend: InProcess | AsTasks = InProcess(model_path, calibration, *batches, config.threads)
    else:
        backend = AsTasks(model_path, calibration, *with_tuning_rows(split, config), executor, cache_path)
    evaluator = _Evaluator(tuning, config, cache, backend)
    ranked = _ranked_by_sensitivity(evaluator, stats, calibration)
    chosen = _choose(evaluator, [s["name"] for s in ranked])
    return {
        "format": SEARCH_FORMAT,
        "max_drop": config.max_drop,
        "config": asdict(config),
        "tuning": {
            "pairs": tuning.size,
            "sources": tuning.sources,
            "sensitivity_pairs": tuning.sensitivity_size,
            "fp32_accuracy": tuning.fp32_accuracy,
            **({"tune_data": tuning.tune_data} if tuning.tune_data else {}),
        },
        **{key: chosen[key] for key in ("chosen", "within_budget", "tuning_accuracy", "tuning_drop", "tuning_paired")},
        "sensitivity": ranked,
        "curve": chosen["curve"],
        "pruning": chosen["pruning"],
        "evaluations": evaluator.evaluations,
        "reused_evaluations": cache.reused,
        "seconds": round(time.perf_counter() - started, 1),
    }


SUMMARY_KEYS = (
    "max_drop",
    "tuning",
    "chosen",
    "within_budget",
    "tuning_accuracy",
    "tuning_drop",
    "tuning_paired",
    "curve",
    "evaluations",
    "reused_evaluations",
    "seconds",
)


def search_summary(search: dict, figure: Path) -> dict:
    """What command summaries and the study report carry of a search record, with its curve figure."""
    return {key: search[key] for key in SUMMARY_KEYS} | {"figure": str(figure)}


def auto_recipe_name(base_recipe: str, max_drop: float) -> str:
    return f"{base_recipe}-mp-auto{max_drop:g}"


def auto_calibrate(
    model_path: Path,
    stats: ActivationStats,
    base: Calibration,
    split: QnliSplit,
    tokenizer,
    config: SearchConfig,
    folder: Path,
    executor: ExecutorConfig = ExecutorConfig(),
) -> tuple[Calibration, dict]:
    """The calibration `base` with the searched points kept in float, and the full search record
    (written to `<recipe>.search.json` in `folder`, with timings)."""
    recipe = auto_recipe_name(base.recipe, config.max_drop)
    folder = Path(folder)
    cache_path = folder / f"{recipe}.search-cache.json"
    search = search_precision(model_path, stats, base, split, tokenizer, config, cache_path, executor)
    tuning = search["tuning"]
    origin = "from --tune-data, " if tuning.get("tune_data") else ""
    reason = (
        f"automatic search: the most sensitive points, pruned greedily, with the drop below FP32 on {tuning['pairs']} "
        f"tuning pairs ({origin}never fine-tuning, calibration or eval pairs) within {config.max_drop:g} points at "
        f"{100 * config.confidence:g} % confidence"
        if search["within_budget"]
        else f"automatic search: no set met {config.max_drop:g} points of FP32 at {100 * config.confidence:g} % "
        f"confidence on {tuning['pairs']} tuning pairs; the most sensitive points up to the lowest bound found"
    )
    mixed_precision = {
        "search": SEARCH_FORMAT,
        "max_drop": config.max_drop,
        "confidence": config.confidence,
        "tuning_pairs": tuning["pairs"],
        "tuning_sources": tuning["sources"],
        "record": f"{recipe}.search.json",
    }
    calibration = replace(base.without_points(search["chosen"], reason), recipe=recipe, mixed_precision=mixed_precision)
    search = {"recipe": recipe, "model": base.model, "data": split.describe(), **search}
    write_json(folder / f"{recipe}.search.json", search)
    return calibration, search
