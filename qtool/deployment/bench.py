"""Latency and memory of runners at fixed input shapes: one model, or several compared fairly.

Timing. Every inference is timed with `time.perf_counter` around `Runner.infer`, after a warm-up,
on one batch of fixed shape [batch, sequence] (real QNLI pairs padded to exactly the sequence
length, or random token ids). A comparison enters all runners at once and interleaves their
iterations round-robin on the same inputs, so drift in machine load hits every candidate alike.

Memory. Host memory is the process's resident set size (RSS): the peak over loading and running
(on Linux the kernel's high-water mark, reset before the run; elsewhere sampled by a background
thread every few milliseconds), and the RSS added by entering the runner (the backend library is
imported before the baseline, so its import is not counted as the model's memory). In one process
these numbers are approximate: freed memory is not always returned to the system, and when several
runners live side by side their RSS cannot be told apart exactly. `isolated=True` runs a benchmark
in a fresh `python -m qtool.deployment.bench` process, which gives each candidate a clean baseline
and peak. Device memory is what the runner reports (`device_memory_bytes` of a TensorRT engine) and,
when `pynvml` and a GPU are present, NVML's count of used device memory.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from qtool.data.batching import padded_feeds
from qtool.data.qnli import DataConfig, Example
from qtool.errors import QtoolError
from qtool.runners.base import Runner

log = logging.getLogger(__name__)

INPUT_KINDS = ("qnli", "random")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine")
RSS_SAMPLE_INTERVAL_S = 0.005
RANDOM_INPUT_SEED = 0
ISOLATED_MEMORY_ITERATIONS = 10  # a comparison's per-candidate memory run: a few iterations reach the peak
# Tokenizers report a huge sentinel (1e30) as model_max_length when the model sets no limit.
TOKENIZER_LENGTH_SENTINEL = 1_000_000
# Ops between a position table and its Gather in exported or QDQ graphs.
_PASS_THROUGH_OPS = ("DequantizeLinear", "Cast", "Identity")

RunnerFactory = Callable[[], Runner]
Feeds = dict[str, np.ndarray]


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
    inputs: str = "qnli"
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
        if self.warmup < 0:
            raise QtoolError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.iterations < 1:
            raise QtoolError(f"--iterations must be at least 1, got {self.iterations}")
        if self.duration_seconds is not None and not self.duration_seconds > 0:
            raise QtoolError(f"--duration must be more than 0 seconds, got {self.duration_seconds}")
        if self.threads is not None and self.threads < 1:
            raise QtoolError(f"--threads must be at least 1, got {self.threads}")
        if self.inputs not in INPUT_KINDS:
            raise QtoolError(f"--inputs must be one of {', '.join(INPUT_KINDS)}, got {self.inputs!r}")

    def to_record(self) -> dict:
        record = asdict(self)
        record.update(
            batch_sizes=list(self.batch_sizes),
            sequence_lengths=list(self.sequence_lengths),
            providers=list(self.providers),
        )
        return record


# -- the model's limits and files ------------------------------------------------------------------


def _table_source(name: str, producers: Mapping, initializers: Mapping) -> tuple[str, list[int]] | None:
    """(name, dims) of the constant table that tensor `name` is read from, through DQ/Cast/Identity."""
    from onnx import helper

    for _ in range(4):
        if name in initializers:
            return name, list(initializers[name].dims)
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            return (name, list(helper.get_attribute_value(value).dims)) if value is not None else None
        if node.op_type not in _PASS_THROUGH_OPS:
            return None
        name = node.input[0]
    return None


def max_positions(onnx_path: Path) -> int | None:
    """Rows of the position-embedding table: the 2-D constant feeding the position Gather, or None.

    The position Gather is the table Gather named after positions; failing names, the only table
    Gather whose indices are computed inside the graph (word and token-type ids are graph inputs).
    """
    import onnx

    from qtool.runners.ort import check_onnx_file

    model = onnx.load(str(check_onnx_file(onnx_path)), load_external_data=False)
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    graph_inputs = {tensor.name for tensor in graph.input}
    tables = []
    for node in graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.op_type != "Gather" or axis != 0:
            continue
        source = _table_source(node.input[0], producers, initializers)
        if source is not None and len(source[1]) == 2:
            tables.append((node, source))
    named = [dims for node, (name, dims) in tables if "position" in f"{node.name} {name}".lower()]
    if named:
        return int(named[0][0])
    computed = [dims for node, (_, dims) in tables if node.input[1] not in graph_inputs]
    if len(computed) == 1:
        return int(computed[0][0])
    log.debug("%s: no position-embedding table found among %d table Gathers", onnx_path, len(tables))
    return None


def tokenizer_max_length(tokenizer) -> int | None:
    """The tokenizer's `model_max_length`, unless it is the 'no limit' sentinel."""
    length = getattr(tokenizer, "model_max_length", None)
    return int(length) if isinstance(length, int) and 0 < length < TOKENIZER_LENGTH_SENTINEL else None


def model_size_bytes(model_path: Path) -> int:
    """Bytes on disk: a .plan, or an .onnx plus the external data files its tensors point at."""
    import onnx

    model_path = Path(model_path)
    total = model_path.stat().st_size
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


# -- runners from paths ----------------------------------------------------------------------------


def runner_factory(
    model_path: Path, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)
) -> RunnerFactory:
    """A picklable factory of the runner for `model_path`: `.onnx` → ONNX Runtime, `.plan` → TensorRT."""
    model_path = Path(model_path)
    if model_path.suffix in ONNX_SUFFIXES:
        from qtool.runners.ort import OrtRunner

        # Without spinning, a session that waits its turn does not steal cores from the one being timed.
        return functools.partial(OrtRunner, model_path, providers=tuple(providers), threads=threads, spinning=False)
    if model_path.suffix in ENGINE_SUFFIXES:
        from qtool.runners.trt import TrtRunner

        if threads is not None:
            log.info("--threads does not apply to the TensorRT engine %s", model_path)
        return functools.partial(TrtRunner, model_path)
    raise QtoolError(
        f"{model_path} is neither an ONNX graph ({', '.join(ONNX_SUFFIXES)}) nor a TensorRT engine "
        f"({', '.join(ENGINE_SUFFIXES)}); pass one of those"
    )


def _source_onnx(model_path: Path) -> Path | None:
    """The ONNX graph of `model_path`: itself, or the one a .plan's manifest says it was built from."""
    model_path = Path(model_path)
    if model_path.suffix in ONNX_SUFFIXES:
        return model_path
    from qtool.runners.trt import read_plan_manifest

    manifest = read_plan_manifest(model_path)
    if manifest is None or not manifest.get("onnx"):
        return None
    onnx_path = model_path.parent / manifest["onnx"]
    return onnx_path if onnx_path.is_file() else None


def tokenizer_for_model(model_path: Path, tokenizer_path: Path | None = None):
    """The tokenizer of a graph (exported beside it) or of an engine (beside the graph it was built from)."""
    from qtool.models.resolve import load_tokenizer
    from qtool.deployment.evaluate import tokenizer_for

    if tokenizer_path is not None:
        if not Path(tokenizer_path).is_dir():
            raise QtoolError(f"--tokenizer {tokenizer_path} is not a folder; give a Hugging Face tokenizer folder")
        return load_tokenizer(tokenizer_path)
    onnx_path = _source_onnx(model_path)
    if onnx_path is None:
        raise QtoolError(f"{model_path} has no ONNX graph beside it to find the tokenizer; pass --tokenizer FOLDER")
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


# -- inputs ----------------------------------------------------------------------------------------


def benchmark_inputs(
    tokenizer, examples: Sequence[Example], batch: int, seq_len: int, kind: str = "qnli"
) -> dict[str, np.ndarray]:
    """One batch of int64 `input_ids`, `attention_mask`, `token_type_ids`, each exactly [batch, seq_len].

    "qnli": consecutive (question, sentence) pairs from `examples` (cycled when fewer than `batch`),
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
    if kind != "qnli":
        raise QtoolError(f"--inputs must be one of {', '.join(INPUT_KINDS)}, got {kind!r}")
    if not examples:
        raise QtoolError("no QNLI pairs to benchmark with; check --data or use --inputs random")
    special = tokenizer.num_special_tokens_to_add(pair=True)
    if seq_len <= special:
        raise QtoolError(
            f"--seq-len {seq_len} leaves no room for QNLI text (the tokenizer adds {special} special tokens); "
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


# -- memory ----------------------------------------------------------------------------------------


KERNEL_PEAK = "kernel high-water mark"
SAMPLED_PEAK = f"sampled every {RSS_SAMPLE_INTERVAL_S * 1e3:g} ms"


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_kernel_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark of this process to its current RSS (Linux 4.0+)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _kernel_peak_rss_bytes() is not None


def _kernel_peak_rss_bytes() -> int | None:
    """VmHWM of /proc/self/status: the highest RSS since the last reset, or None off Linux."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return None


class PeakRss:
    """The peak RSS of this process over a `with` block, and its RSS at any moment (`now()`).

    On Linux the kernel's high-water mark is reset on entry and read on exit: exact, and no extra
    thread competes with the runner. Elsewhere a background thread samples RSS every few
    milliseconds (`method` says which), which can miss spikes shorter than the interval.
    """

    def __init__(self, interval_s: float = RSS_SAMPLE_INTERVAL_S) -> None:
        import psutil

        self.interval_s = interval_s
        self.peak_bytes = 0
        self.method = SAMPLED_PEAK
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def now(self) -> int:
        rss = int(self._process.memory_info().rss)
        self.peak_bytes = max(self.peak_bytes, rss)
        return rss

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.now()

    def __enter__(self) -> PeakRss:
        if _reset_kernel_peak_rss():
            self.method = KERNEL_PEAK
        else:
            self._thread = threading.Thread(target=self._sample_until_stopped, name="rss-sampler", daemon=True)
            self._thread.start()
        self.now()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.now()
        if self.method == KERNEL_PEAK:
            # max() as well: the kernel batches per-thread RSS counters, so a sample can exceed VmHWM slightly.
            self.peak_bytes = max(self.peak_bytes, _kernel_peak_rss_bytes() or 0)


def nvml_memory() -> dict[str, int] | None:
    """Used device memory from NVML (all visible GPUs, and this process's share when NVML can see it)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver, no GPU
        log.debug("NVML unavailable: %s", exc)
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return None
        device_used = 0
        process_used = None
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            device_used += int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
            with contextlib.suppress(Exception):
                for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if process.pid == os.getpid() and process.usedGpuMemory:
                        process_used = (process_used or 0) + int(process.usedGpuMemory)
        result = {"nvml_device_used_bytes": device_used}
        if process_used is not None:  # absent in containers whose PIDs NVML cannot map
            result["nvml_process_used_bytes"] = process_used
        return result
    except Exception as exc:
        log.debug("NVML query failed: %s", exc)
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


_BACKEND_MODULES = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}


def _import_backend(runner: Runner) -> None:
    """Import the runner's library before the RSS baseline, so its import is not counted as the model's."""
    module = _BACKEND_MODULES.get(runner.name)
    if module is not None:
        with contextlib.suppress(Exception):  # the runner reports a missing library itself on entry
            importlib.import_module(module)


def _runner_file(runner: Runner) -> Path | None:
    path = getattr(runner, "model_path", None) or getattr(runner, "plan_path", None)
    return Path(path) if path is not None else None


def _runner_device_memory(runner: Runner) -> dict[str, int]:
    """The device memory a runner reports for itself (a TensorRT engine's activation memory)."""
    reported = getattr(runner, "device_memory_bytes", None)
    return {"device_memory_bytes": int(reported)} if reported is not None else {}


def _nvml_change(before: dict | None, now: dict | None) -> dict[str, int]:
    """NVML readings taken with the runner(s) loaded, and the device memory added since `before`."""
    if now is None:
        return {}
    record = dict(now)
    if before is not None:
        record["nvml_device_added_bytes"] = now["nvml_device_used_bytes"] - before["nvml_device_used_bytes"]
    return record


def _describe(runner: Runner) -> dict:
    path = _runner_file(runner)
    return {
        "runner": runner.name,
        "model": str(path) if path is not None else None,
        "model_bytes": model_size_bytes(path) if path is not None and path.is_file() else None,
    }


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
    if isolated:
        return _run_isolated(make_runner, feeds, config)
    batch, seq_len = _feeds_shape(feeds)
    runner = make_runner()
    _import_backend(runner)
    nvml_before = nvml_memory()
    with PeakRss() as peak:
        baseline = peak.now()
        with runner:
            loaded = peak.now()
            for _ in range(config.warmup):
                runner.infer(feeds)
            latencies = []
            for _ in _rounds(config):
                started = time.perf_counter()
                runner.infer(feeds)
                latencies.append(time.perf_counter() - started)
            device = {**_runner_device_memory(runner), **_nvml_change(nvml_before, nvml_memory())}
    stats = summarize(latencies, batch)
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


def _run_isolated(make_runner: RunnerFactory, feeds: Mapping[str, np.ndarray], config: BenchConfig) -> dict:
    """run_benchmark in a fresh `python -m qtool.deployment.bench` process; job and result go through files.

    A plain subprocess (not multiprocessing) never re-imports the caller's main module, so scripts
    without a `__main__` guard work too. The child gets this process's sys.path as PYTHONPATH, so
    qtool and factories of classes defined outside the package (tests) import there.
    """
    try:
        job = pickle.dumps((make_runner, dict(feeds), config))
    except Exception as exc:
        raise TypeError(
            f"isolated benchmarks need a picklable runner factory such as runner_factory(path), got {make_runner!r}"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="qtool-bench-") as folder:
        job_path, result_path = Path(folder) / "job.pickle", Path(folder) / "result.pickle"
        job_path.write_bytes(job)
        log.debug("running an isolated benchmark in a fresh process")
        completed = subprocess.run(
            [sys.executable, "-m", "qtool.deployment.bench", str(job_path), str(result_path)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry)},
            stdin=subprocess.DEVNULL,
            stdout=2,  # whatever a backend prints goes to stderr, never into this process's stdout (--json)
            check=False,
        )
        if not result_path.is_file():
            raise QtoolError(
                f"the isolated benchmark process died (exit code {completed.returncode}: out of memory, or a "
                "crash in the backend); rerun without isolation to see the error"
            )
        outcome, value = pickle.loads(result_path.read_bytes())
    if outcome == "user-error":
        raise QtoolError(value)
    if outcome == "crash":
        raise RuntimeError(f"the isolated benchmark failed:\n{value}")
    return value


def _isolated_main(job_path: Path, result_path: Path) -> None:
    """The child's side of `_run_isolated`: read the job, run it here, write ('ok', result) or an error."""
    make_runner, feeds, config = pickle.loads(Path(job_path).read_bytes())
    try:
        result = run_benchmark(make_runner, feeds, config)
        result["memory"]["scope"] = "isolated process"
        outcome = ("ok", result)
    except QtoolError as exc:
        outcome = ("user-error", str(exc))
    except Exception:
        outcome = ("crash", traceback.format_exc())
    Path(result_path).write_bytes(pickle.dumps(outcome))


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
            _import_backend(runner)
            before = peak.now()
            runners.append((name, stack.enter_context(runner)))
            added[name] = peak.now() - before
        for _ in range(config.warmup):
            for _, runner in runners:
                runner.infer(feeds)
        latencies: dict[str, list[float]] = {name: [] for name in names}
        for _ in _rounds(config):
            for name, runner in runners:
                started = time.perf_counter()
                runner.infer(feeds)
                latencies[name].append(time.perf_counter() - started)
        device = {name: _runner_device_memory(runner) for name, runner in runners}
        nvml_loaded = _nvml_change(nvml_before, nvml_memory())
    described = {name: _describe(runner) for name, runner in runners}  # reads the files: outside the peak

    results = []
    first_p50 = None
    for name in names:
        stats = summarize(latencies[name], batch)
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
            result["isolated_memory"] = run_benchmark(make_runner, feeds, memory_config, isolated=True)["memory"]
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
    record = {"kind": "qnli", "data_part": "eval", "data_split": split.describe()}
    return lambda batch, length: benchmark_inputs(tokenizer, examples, batch, length, "qnli"), record


def _check_model_files(model_paths: Sequence[Path]) -> list[Path]:
    paths = [Path(path) for path in model_paths]
    for path in paths:
        if not path.is_file():
            raise QtoolError(f"{path} does not exist; pass an .onnx graph or a .plan engine")
        runner_factory(path)  # fails early on an unknown file type
        if path.suffix in ENGINE_SUFFIXES:
            from qtool.runners.trt import read_plan_manifest

            if read_plan_manifest(path) is None:
                raise QtoolError(
                    f"{path} is not a TensorRT engine built by qtool (no build manifest beside it); "
                    "build one with `qtool build MODEL.qdq.onnx --backend trt`"
                )
    return paths


def _prepare(
    model_paths: Sequence[Path], config: BenchConfig, data_config: DataConfig | None, tokenizer_path: Path | None
):
    paths = _check_model_files(model_paths)
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


if __name__ == "__main__":  # the isolated child: python -m qtool.deployment.bench JOB RESULT
    from qtool.deployment.bench import _isolated_main as isolated_main  # the package's copy, not __main__'s

    isolated_main(Path(sys.argv[1]), Path(sys.argv[2]))
