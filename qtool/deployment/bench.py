"""Latency and memory of runners at fixed input shapes: one model, or several compared fairly.

Timing. Every inference is timed by `Runner.timed` (`time.perf_counter` around `infer`; a TensorRT
engine end to end from page-locked memory, and on the GPU alone between CUDA events, as
`latency.device`), after a warm-up, on one batch of fixed shape [batch, sequence] (texts or pairs of
--data's eval part padded to exactly the sequence length, or random token ids). A comparison enters all runners at once and interleaves their
iterations round-robin on the same inputs, so drift in machine load hits every candidate alike.

Memory (`qtool.deployment.memory`). Host memory is the process's resident set size (RSS): the peak
over loading and running, and the RSS added by entering the runner (the backend library is
imported before the baseline, so its import is not counted as the model's memory). In one process
these numbers are approximate: freed memory is not always returned to the system, and when several
runners live side by side their RSS cannot be told apart exactly. `isolated=True` runs a benchmark
in a fresh process (`qtool.deployment.isolated`), which gives each candidate a clean baseline and
peak. Device memory is what the runner reports and, with `pynvml` and a GPU, NVML's count.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from qtool.data.batching import padded_feeds
from qtool.data.split import DataConfig, Example
from qtool.deployment.backends import runner_factory
from qtool.deployment.isolated import run_isolated
from qtool.deployment.memory import PeakRss, import_backend, nvml_change, nvml_memory, runner_device_memory
from qtool.deployment.model_files import (
    RunnerFactory,
    check_model_files,
    model_max_positions,
    model_size_bytes,
    tokenizer_for_model,
)
from qtool.errors import QtoolError
from qtool.runners.base import Runner
from qtool.runners.ort import adopt_saturation, u8s8_saturates

log = logging.getLogger(__name__)

INPUT_KINDS = ("data", "random")  # "qnli", the old name of "data", is still taken
RANDOM_INPUT_SEED = 0
ISOLATED_MEMORY_ITERATIONS = 10  # a comparison's per-candidate memory run: a few iterations reach the peak

Feeds = dict[str, "np.ndarray"]


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """What is measured. With `duration_seconds`, each shape runs for that long instead of `iterations`.

    `threads` is used where runners are made from paths (`runner_factory`, `bench_model`); None
    keeps ONNX Runtime's default (all cores).
    """

    batch_sizes: tuple[int, ...] = (1,)
    sequence_lengths: tuple[int, ...] = (128,)
    warmup: int = 10
    iterations: int = 100
    duration_seconds: float | None = None
    threads: int | None = None
    inputs: str = "data"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def validate(self, max_positions: int | None = None) -> None:
        """Fail on impossible settings; `max_positions` is the model's position-table size when known."""
        if not self.batch_sizes:
            raise QtoolError("--batch needs at least one batch size")
        for batch in self.batch_sizes:
            if batch < 1:
                raise QtoolError(f"--batch must be at least 1, got {batch}")
        if not self.sequence_lengths:
            raise QtoolError("--seq-len needs at least one sequence length")
        for length in self.sequence_lengths:
            if length < 2:
                raise QtoolError(f"--seq-len must be at least 2 (room for [CLS] and [SEP]), got {length}")
            if max_positions is not None and length > max_positions:
                raise QtoolError(
                    f"--seq-len {length} exceeds the model's {max_positions} positions; use at most {max_positions}"
                )
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise QtoolError(f"--warmup must be a whole number of runs, 0 or more, got {self.warmup!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise QtoolError(f"--iterations must be a whole number of runs, at least 1, got {self.iterations!r}")
        if self.duration_seconds is not None and not self.duration_seconds > 0:
            raise QtoolError(f"--duration must be more than 0 seconds, got {self.duration_seconds}")
        if self.threads is not None and self.threads < 1:
            raise QtoolError(f"--threads must be at least 1, got {self.threads}")
        if self.inputs == "qnli":
            object.__setattr__(self, "inputs", "data")
        if self.inputs not in INPUT_KINDS:
            raise QtoolError(f"--inputs must be one of {', '.join(INPUT_KINDS)}, got {self.inputs!r}")

    def to_record(self) -> dict:
        listed = ("batch_sizes", "sequence_lengths", "providers")
        return asdict(self) | {name: list(getattr(self, name)) for name in listed}


# -- inputs ----------------------------------------------------------------------------------------


def benchmark_inputs(
    tokenizer, examples: Sequence[Example], batch: int, seq_len: int, kind: str = "data"
) -> dict[str, np.ndarray]:
    """One batch of int64 `input_ids`, `attention_mask`, `token_type_ids`, each exactly [batch, seq_len].

    "data": consecutive texts or pairs from `examples` (cycled when fewer than `batch`),
    truncated and padded to `seq_len`. "random": uniform token ids with a full attention mask.
    """
    if batch < 1 or seq_len < 2:
        raise QtoolError(f"benchmark inputs need batch >= 1 and sequence length >= 2, got {batch}x{seq_len}")
    if kind == "random":
        rng = np.random.default_rng(RANDOM_INPUT_SEED)
        input_ids = rng.integers(0, tokenizer.vocab_size, size=(batch, seq_len), dtype=np.int64)
        feeds = {
            "input_ids": input_ids,
            "attention_mask": np.ones((batch, seq_len), dtype=np.int64),
            "token_type_ids": np.zeros((batch, seq_len), dtype=np.int64),
        }
        return feeds
    if kind not in ("data", "qnli"):
        raise QtoolError(f"--inputs must be one of {', '.join(INPUT_KINDS)}, got {kind!r}")
    if not examples:
        raise QtoolError("no texts to benchmark with; check --data or use --inputs random")
    special = tokenizer.num_special_tokens_to_add(pair=examples[0].pair is not None)
    if seq_len <= special:
        raise QtoolError(
            f"--seq-len {seq_len} leaves no room for text (the tokenizer adds {special} special tokens); "
            f"use at least {special + 1} or --inputs random"
        )
    pairs = [examples[index % len(examples)] for index in range(batch)]
    (padded,) = padded_feeds(tokenizer, pairs, batch, seq_len)
    feeds = {name: np.ascontiguousarray(array) for name, array in padded.items()}
    for name, array in feeds.items():
        if array.shape != (batch, seq_len):  # the tokenizer ignores max_length it cannot honour
            raise QtoolError(f"tokenized {name} has shape {list(array.shape)}, expected [{batch}, {seq_len}]")
    return feeds


# -- statistics ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one batch in milliseconds; throughput in sequences per second."""

    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    throughput_per_s: float
    iterations: int

    @classmethod
    def from_seconds(cls, latencies_s: Sequence[float], batch: int) -> LatencyStats:
        if len(latencies_s) == 0:
            raise ValueError("no latencies to summarize")
        ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        mean = float(ms.mean())
        return cls(
            mean_ms=mean,
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            std_ms=float(ms.std()),
            throughput_per_s=batch / (mean / 1e3) if mean > 0 else float("inf"),
            iterations=len(ms),
        )


def summarize(latencies_s: Sequence[float], batch: int) -> dict:
    """mean/p50/p90/p99/min/max/std in ms, throughput (sequences/s = batch / mean latency), iterations."""
    return asdict(LatencyStats.from_seconds(latencies_s, batch))


# -- the runner measured ---------------------------------------------------------------------------


def _timing_stats(timings: Sequence[tuple[float, float | None]], batch: int) -> dict:
    """`summarize` of the host times; with `device` the same of the device's own (a TensorRT engine's
    time between CUDA events) where the runner measured them."""
    stats = summarize([host for host, _ in timings], batch)
    device = [seconds for _, seconds in timings]
    return stats | ({"device": summarize(device, batch)} if device and None not in device else {})


def _describe(runner: Runner) -> dict:
    path = getattr(runner, "model_path", None) or getattr(runner, "plan_path", None)  # or a serialized graph: no file
    return {"runner": runner.name, "model": str(path) if isinstance(path, str | Path) else None, "model_bytes": None}


def _with_model_bytes(result: dict) -> dict:
    """The model's size on disk, read here (not in an isolated child, which then needs no onnx)."""
    path = Path(result["model"]) if result.get("model") else None
    result["model_bytes"] = model_size_bytes(path) if path is not None and path.is_file() else None
    return result


# -- timing ----------------------------------------------------------------------------------------


def _feeds_shape(feeds: Mapping[str, np.ndarray]) -> tuple[int, int]:
    first = feeds["input_ids"] if "input_ids" in feeds else next(iter(feeds.values()))
    batch, *rest = first.shape
    return int(batch), int(rest[0]) if rest else 1


def _rounds(config: BenchConfig) -> Iterator[int]:
    """Iteration numbers: `iterations` of them, or as many as fit in `duration_seconds` (at least one)."""
    if config.duration_seconds is None:
        yield from range(config.iterations)
        return
    deadline = time.perf_counter() + config.duration_seconds
    count = 0
    while count == 0 or time.perf_counter() < deadline:
        yield count
        count += 1


def run_benchmark(
    make_runner: RunnerFactory,
    feeds: Mapping[str, np.ndarray],
    config: BenchConfig = BenchConfig(),
    *,
    isolated: bool = False,
) -> dict:
    """Latency statistics, host and device memory and model size of one runner on `feeds`.

    The runner is created and entered here. With `isolated=True` the whole run happens in a fresh
    process (needs a picklable `make_runner`, e.g. `runner_factory(path)`), so its baseline and
    peak RSS belong to this runner alone.
    """
    measured = _run_isolated(make_runner, feeds, config) if isolated else _measure(make_runner, feeds, config)
    return _with_model_bytes(measured)


def _measure(make_runner: RunnerFactory, feeds: Mapping[str, np.ndarray], config: BenchConfig) -> dict:
    batch, seq_len = _feeds_shape(feeds)
    runner = make_runner()
    import_backend(runner)
    nvml_before = nvml_memory()
    with PeakRss() as peak:
        baseline = peak.now()
        with runner:
            loaded = peak.now()
            for _ in range(config.warmup):
                runner.infer(feeds)
            timings = [runner.timed(feeds) for _ in _rounds(config)]
            device = {**runner_device_memory(runner), **nvml_change(nvml_before, nvml_memory())}
    stats = _timing_stats(timings, batch)
    memory = {
        "scope": "in-process",
        "rss_baseline_bytes": baseline,
        "rss_runner_added_bytes": loaded - baseline,
        "rss_peak_bytes": peak.peak_bytes,
        "rss_peak_added_bytes": peak.peak_bytes - baseline,
        "rss_peak_method": peak.method,
        **device,
    }
    log.info(
        "%s batch %d x %d: p50 %.2f ms, %.1f sequences/s over %d iterations",
        runner.name,
        batch,
        seq_len,
        stats["p50_ms"],
        stats["throughput_per_s"],
        stats["iterations"],
    )
    return {
        **_describe(runner),
        "batch": batch,
        "sequence_length": seq_len,
        "warmup": config.warmup,
        "latency": stats,
        "memory": memory,
    }


def _isolated_benchmark(make_runner: RunnerFactory, feeds: Feeds, config: BenchConfig, saturates: bool | None) -> dict:
    """run_benchmark's measurement as the fresh process of `run_isolated` runs it, given the parent's
    probe of this CPU (so an ONNX Runtime runner's kernel check needs no onnx here)."""
    adopt_saturation(saturates)
    result = _measure(make_runner, feeds, config)
    result["memory"]["scope"] = "isolated process"
    return result


def _run_isolated(make_runner: RunnerFactory, feeds: Mapping[str, np.ndarray], config: BenchConfig) -> dict:
    try:
        pickle.dumps(make_runner)
    except Exception as exc:
        raise TypeError(
            f"isolated benchmarks need a picklable runner factory such as runner_factory(path), got {make_runner!r}"
        ) from exc
    return run_isolated(_isolated_benchmark, make_runner, dict(feeds), config, u8s8_saturates())


def _in_shared_process(record: dict, loaded: int) -> dict:
    """A runner's device memory when `loaded` runners share the process: its total (now minus before it
    loaded) would count every runner loaded after it, so only the per-load differences are kept."""
    if loaded > 1 and "vram_total_bytes" in record:
        record = {k: v for k, v in record.items() if k != "vram_total_bytes"}
        record["vram_total"] = "in a process of its own only (--isolated)"
    return record


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


def compare(
    candidates: Sequence[tuple[str, RunnerFactory]],
    feeds: Mapping[str, np.ndarray],
    config: BenchConfig = BenchConfig(),
    *,
    isolated_memory: bool = False,
) -> dict:
    """Interleaved latency of several runners on the same `feeds`, with ratios to the first.

    All runners are entered at once; every warm-up and timed round runs each candidate once, in the
    order given. `speedup` is first p50 / candidate p50 and `latency_ratio` its inverse. In-process
    memory is per candidate only for the RSS its entry added; `isolated_memory=True` also measures
    each candidate alone in a fresh process (a short run at the same shape).
    """
    if not candidates:
        raise QtoolError("nothing to compare; pass at least one model")
    names = [name for name, _ in candidates]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise QtoolError(f"candidate names must be unique, {', '.join(repeated)} repeats")
    batch, seq_len = _feeds_shape(feeds)
    nvml_before = nvml_memory()
    with PeakRss() as peak, contextlib.ExitStack() as stack:
        runners: list[tuple[str, Runner]] = []
        added: dict[str, int] = {}
        for name, make_runner in candidates:
            runner = make_runner()
            import_backend(runner)
            before = peak.now()
            runners.append((name, stack.enter_context(runner)))
            added[name] = peak.now() - before
        for _ in range(config.warmup):
            for _, runner in runners:
                runner.infer(feeds)
        timings: dict[str, list] = {name: [] for name in names}
        for _ in _rounds(config):
            for name, runner in runners:
                timings[name].append(runner.timed(feeds))
        device = {name: _in_shared_process(runner_device_memory(runner), len(runners)) for name, runner in runners}
        nvml_loaded = nvml_change(nvml_before, nvml_memory())
    described = {name: _with_model_bytes(_describe(runner)) for name, runner in runners}  # outside the peak

    results = []
    first_p50 = None
    for name in names:
        stats = _timing_stats(timings[name], batch)
        first_p50 = stats["p50_ms"] if first_p50 is None else first_p50
        is_first = name == names[0]
        results.append(
            {
                "name": name,
                **described[name],
                "latency": stats,
                "latency_ratio": 1.0 if is_first else _ratio(stats["p50_ms"], first_p50),
                "speedup": 1.0 if is_first else _ratio(first_p50, stats["p50_ms"]),
                "memory": {"scope": "in-process, shared", "rss_runner_added_bytes": added[name], **device[name]},
            }
        )
        log.info("%s batch %d x %d: p50 %.2f ms (x%.2f)", name, batch, seq_len, stats["p50_ms"], results[-1]["speedup"])
    if isolated_memory:
        memory_config = replace(
            config,
            warmup=min(config.warmup, 1),
            iterations=min(config.iterations, ISOLATED_MEMORY_ITERATIONS),
            duration_seconds=None,
        )
        for result, (_, make_runner) in zip(results, candidates, strict=True):
            result["isolated_memory"] = _run_isolated(make_runner, feeds, memory_config)["memory"]
    process_memory = {
        "scope": "in-process, all candidates loaded",
        "rss_peak_bytes": peak.peak_bytes,
        "rss_peak_method": peak.method,
        **nvml_loaded,
    }
    return {
        "batch": batch,
        "sequence_length": seq_len,
        "warmup": config.warmup,
        "order": "interleaved round-robin",
        "baseline": names[0],
        "candidates": results,
        "process_memory": process_memory,
    }


# -- whole benchmarks from paths -------------------------------------------------------------------


def _inputs_for(
    tokenizer, config: BenchConfig, data_config: DataConfig | None
) -> tuple[Callable[[int, int], Feeds], dict]:
    """A function (batch, seq_len) -> feeds, and what the result records about the inputs."""
    if config.inputs == "random":
        record = {"kind": "random", "seed": RANDOM_INPUT_SEED}
        return lambda batch, length: benchmark_inputs(tokenizer, [], batch, length, "random"), record
    from qtool.data import load_qnli

    split = load_qnli(data_config or DataConfig())
    examples = split.part("eval")
    record = {"kind": "data", "data_part": "eval", "data_split": split.describe()}
    return lambda batch, length: benchmark_inputs(tokenizer, examples, batch, length, "data"), record


def _prepare(
    model_paths: Sequence[Path], config: BenchConfig, data_config: DataConfig | None, tokenizer_path: Path | None
):
    paths = check_model_files(model_paths)
    config.validate()
    tokenizer = tokenizer_for_model(paths[0], tokenizer_path)
    limits = [positions for path in paths if (positions := model_max_positions(path, tokenizer)) is not None]
    config.validate(min(limits) if limits else None)
    make_feeds, inputs = _inputs_for(tokenizer, config, data_config)
    return paths, make_feeds, inputs


def _shapes(config: BenchConfig) -> list[tuple[int, int]]:
    return [(batch, length) for batch in config.batch_sizes for length in config.sequence_lengths]


def bench_model(
    model_path: Path,
    config: BenchConfig = BenchConfig(),
    data_config: DataConfig | None = None,
    tokenizer_path: Path | None = None,
    isolated: bool = False,
) -> dict:
    """`qtool bench MODEL`: run_benchmark at every (batch, sequence length) of `config`."""
    paths, make_feeds, inputs = _prepare([model_path], config, data_config, tokenizer_path)
    make_runner = runner_factory(paths[0], config.threads, config.providers)
    results = [run_benchmark(make_runner, make_feeds(b, s), config, isolated=isolated) for b, s in _shapes(config)]
    return {"model": str(paths[0]), "config": config.to_record(), "inputs": inputs, "results": results}


def _names(paths: Sequence[Path]) -> list[str]:
    """File names (paths where different files share a name); the same file again gets '#2', '#3', ..."""
    files_by_name: dict[str, set[Path]] = {}
    for path in paths:
        files_by_name.setdefault(path.name, set()).add(path.resolve())
    names = [path.name if len(files_by_name[path.name]) == 1 else str(path) for path in paths]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique


def bench_compare(
    model_paths: Sequence[Path],
    config: BenchConfig = BenchConfig(),
    data_config: DataConfig | None = None,
    tokenizer_path: Path | None = None,
    isolated_memory: bool = False,
) -> dict:
    """`qtool bench --compare A B ...`: interleaved comparison at every shape; the first is the baseline.

    Candidates are named by file name (see `_names`); the same file twice measures the noise floor.
    Inputs come from the first model's tokenizer.
    """
    if len(model_paths) < 2:
        raise QtoolError("--compare needs at least two models")
    paths, make_feeds, inputs = _prepare(model_paths, config, data_config, tokenizer_path)
    candidates = [
        (name, runner_factory(path, config.threads, config.providers))
        for name, path in zip(_names(paths), paths, strict=True)
    ]
    results = [
        compare(candidates, make_feeds(b, s), config, isolated_memory=isolated_memory) for b, s in _shapes(config)
    ]
    return {"models": [str(path) for path in paths], "config": config.to_record(), "inputs": inputs, "results": results}
