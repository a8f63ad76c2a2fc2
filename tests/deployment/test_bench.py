"""Benchmarks: config checks, inputs at the exact shape, statistics against NumPy, runs and fair comparisons.

No test asserts a speed: timings only have to exist and be counted right.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qtool.data import DataConfig, load_qnli
from qtool.deployment import memory
from qtool.deployment.backends import runner_factory
from qtool.deployment.bench import (
    BenchConfig,
    bench_compare,
    bench_model,
    benchmark_inputs,
    compare,
    run_benchmark,
    summarize,
)
from qtool.deployment.model_files import max_positions, model_size_bytes, tokenizer_for_model
from qtool.errors import QtoolError, api_spelling
from qtool.runners.base import Runner
from qtool.runners.ort import OrtRunner

QUICK = BenchConfig(warmup=2, iterations=5, sequence_lengths=(16,))
LATENCY_KEYS = {"mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms", "throughput_per_s", "iterations"}


class RecordingRunner(Runner):
    """A fake backend that appends its name to a shared list on every inference."""

    def __init__(self, name: str, calls: list[str]) -> None:
        super().__init__()
        self.name = name
        self.calls = calls

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def input_names(self) -> list[str]:
        return ["input_ids"]

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(self.name)
        return {"logits": np.zeros((feeds["input_ids"].shape[0], 2), dtype=np.float32)}


@pytest.fixture(scope="module")
def tokenizer(tiny_onnx):
    return tokenizer_for_model(tiny_onnx)


@pytest.fixture(scope="module")
def eval_pairs(session_data):
    return load_qnli(DataConfig(source=str(session_data))).part("eval")


@pytest.fixture(scope="module")
def feeds(tokenizer, eval_pairs):
    return benchmark_inputs(tokenizer, eval_pairs, 2, 16, "qnli")


def test_default_config_is_valid_and_frozen():
    config = BenchConfig()
    config.validate(max_positions=512)
    assert (config.batch_sizes, config.sequence_lengths, config.inputs) == ((1,), (128,), "data")
    legacy = BenchConfig(inputs="qnli")
    legacy.validate()
    assert legacy.inputs == "data"  # the old name of the same inputs
    with pytest.raises(AttributeError):
        config.warmup = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "positions", "option"),
    [
        ({"batch_sizes": (0,)}, None, "--batch"),
        ({"batch_sizes": (1, -2)}, None, "--batch"),
        ({"sequence_lengths": (1,)}, None, "--seq-len"),
        ({"sequence_lengths": (128, 513)}, 512, "--seq-len 513 exceeds the model's 512 positions"),
        ({"iterations": 0}, None, "--iterations"),
        ({"warmup": -1}, None, "--warmup"),
        ({"iterations": 2.5}, None, "--iterations must be a whole number"),
        ({"warmup": True}, None, "--warmup must be a whole number"),
        ({"duration_seconds": 0.0}, None, "--duration"),
        ({"threads": 0}, None, "--threads"),
        ({"inputs": "squad"}, None, "--inputs"),
    ],
)
def test_config_validation_names_the_option_on_one_line(changes, positions, option):
    with pytest.raises(QtoolError, match=api_spelling(option)) as caught:
        replace(BenchConfig(), **changes).validate(positions)
    assert "\n" not in str(caught.value)


def test_max_positions_comes_from_the_position_table(tiny_onnx, tiny_classifier):
    expected = json.loads((tiny_classifier / "config.json").read_text())["max_position_embeddings"]
    assert max_positions(tiny_onnx) == expected


def test_max_positions_follows_a_dequantized_table_without_names(tmp_path):
    from onnx import TensorProto, helper, numpy_helper, save

    rows, width = 40, 4
    tables = [
        numpy_helper.from_array(np.zeros((100, width), np.float32), "table_a"),
        numpy_helper.from_array(np.zeros((rows, width), np.int8), "table_b"),
        numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
        numpy_helper.from_array(np.array([0, 1, 2], np.int64), "range"),
    ]
    nodes = [
        helper.make_node("Gather", ["table_a", "ids"], ["a"], name="n0"),
        helper.make_node("DequantizeLinear", ["table_b", "scale"], ["b_float"], name="n1"),
        helper.make_node("Identity", ["range"], ["computed_ids"], name="n2"),
        helper.make_node("Gather", ["b_float", "computed_ids"], ["b"], name="n3"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("a", "b")],
        tables,
    )
    path = tmp_path / "unnamed.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert max_positions(path) == rows


def test_a_sequence_longer_than_the_model_fails_before_loading_anything(tiny_onnx, session_data):
    too_long = replace(QUICK, sequence_lengths=(max_positions(tiny_onnx) + 1,))
    with pytest.raises(QtoolError, match=r"sequence_lengths=\d+ exceeds the model.s"):
        bench_model(tiny_onnx, too_long, DataConfig(source=str(session_data)))


def test_qnli_inputs_have_the_exact_shape_and_real_tokens(tokenizer, eval_pairs):
    feeds = benchmark_inputs(tokenizer, eval_pairs, 3, 24, "qnli")
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    for array in feeds.values():
        assert array.shape == (3, 24) and array.dtype == np.int64
    assert (feeds["input_ids"][:, 0] == tokenizer.cls_token_id).all()
    for row, pair in enumerate(eval_pairs[:3]):  # consecutive pairs, in order
        ids = tokenizer(pair.text, pair.pair, truncation=True, max_length=24)["input_ids"]
        assert feeds["input_ids"][row, : len(ids)].tolist() == ids
        assert feeds["attention_mask"][row].sum() == len(ids)


def test_qnli_inputs_cycle_through_few_pairs_and_reject_too_short_sequences(tokenizer, eval_pairs):
    feeds = benchmark_inputs(tokenizer, eval_pairs[:2], 5, 16, "qnli")
    assert feeds["input_ids"].shape == (5, 16)
    assert (feeds["input_ids"][0] == feeds["input_ids"][2]).all()
    with pytest.raises(QtoolError, match=api_spelling("--seq-len 3 leaves no room")):
        benchmark_inputs(tokenizer, eval_pairs, 1, 3, "qnli")


def test_random_inputs_are_token_ids_with_a_full_mask(tokenizer):
    feeds = benchmark_inputs(tokenizer, [], 4, 32, "random")
    assert all(array.shape == (4, 32) and array.dtype == np.int64 for array in feeds.values())
    assert feeds["attention_mask"].all()
    assert 0 <= feeds["input_ids"].min() and feeds["input_ids"].max() < tokenizer.vocab_size


def test_summarize_matches_numpy():
    latencies = [0.010, 0.012, 0.011, 0.030, 0.009, 0.010, 0.015, 0.013, 0.011, 0.050]
    stats = summarize(latencies, batch=8)
    ms = np.array(latencies) * 1e3
    assert set(stats) == LATENCY_KEYS
    for key, quantile in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99)):
        assert stats[key] == pytest.approx(np.percentile(ms, quantile))
    assert stats["mean_ms"] == pytest.approx(ms.mean())
    assert stats["std_ms"] == pytest.approx(ms.std())
    assert (stats["min_ms"], stats["max_ms"]) == pytest.approx((9.0, 50.0))
    assert stats["throughput_per_s"] == pytest.approx(8 / np.mean(latencies))
    assert stats["iterations"] == len(latencies)


def test_model_size_counts_external_data(tiny_onnx, tmp_path):
    import onnx

    assert model_size_bytes(tiny_onnx) == tiny_onnx.stat().st_size
    external = tmp_path / "external.onnx"
    onnx.save(onnx.load(str(tiny_onnx)), str(external), save_as_external_data=True, location="weights.bin")
    total = external.stat().st_size + (tmp_path / "weights.bin").stat().st_size
    assert model_size_bytes(external) == total


def test_runner_factory_picks_the_backend_by_suffix(tmp_path):
    assert runner_factory(Path("model.onnx"), threads=1)().name == "onnxruntime"
    assert runner_factory(Path("engine.plan"))().name == "tensorrt"  # built lazily: no GPU needed here
    with pytest.raises(QtoolError, match="not a file any backend runs"):
        runner_factory(Path("model.bin"))


def test_run_benchmark_reports_latency_memory_and_size(tiny_onnx, feeds):
    result = run_benchmark(runner_factory(tiny_onnx, threads=1), feeds, QUICK)
    assert (result["runner"], result["batch"], result["sequence_length"]) == ("onnxruntime", 2, 16)
    assert result["model_bytes"] == tiny_onnx.stat().st_size
    assert set(result["latency"]) == LATENCY_KEYS
    assert result["latency"]["iterations"] == QUICK.iterations
    memory = result["memory"]
    assert memory["rss_peak_bytes"] >= memory["rss_baseline_bytes"] > 0
    assert "rss_runner_added_bytes" in memory and "device_memory_bytes" not in memory


def test_peak_rss_falls_back_to_sampling_off_linux(monkeypatch):
    monkeypatch.setattr(memory, "_reset_kernel_peak_rss", lambda: False)
    calls: list[str] = []
    result = run_benchmark(lambda: RecordingRunner("a", calls), {"input_ids": np.zeros((1, 4), np.int64)}, QUICK)
    assert result["memory"]["rss_peak_method"].startswith("sampled every")
    assert result["memory"]["rss_peak_bytes"] >= result["memory"]["rss_baseline_bytes"] > 0


def test_a_runner_reporting_device_memory_has_it_in_the_result():
    class DeviceRunner(RecordingRunner):
        device_memory_bytes = 12345  # as TrtRunner exposes after loading an engine

    feeds = {"input_ids": np.zeros((1, 4), np.int64)}
    result = run_benchmark(lambda: DeviceRunner("gpu", []), feeds, QUICK)
    assert result["memory"]["device_memory_bytes"] == 12345
    both = compare(
        [("cpu", lambda: RecordingRunner("cpu", [])), ("gpu", lambda: DeviceRunner("gpu", []))], feeds, QUICK
    )
    assert [("device_memory_bytes" in c["memory"]) for c in both["candidates"]] == [False, True]


def test_duration_mode_runs_at_least_once():
    calls: list[str] = []
    config = BenchConfig(warmup=0, duration_seconds=0.02)
    result = run_benchmark(lambda: RecordingRunner("a", calls), {"input_ids": np.zeros((1, 4), np.int64)}, config)
    assert result["latency"]["iterations"] == len(calls) >= 1


def test_isolated_run_measures_a_fresh_process(tiny_onnx, feeds):
    result = run_benchmark(runner_factory(tiny_onnx, threads=1), feeds, replace(QUICK, iterations=3), isolated=True)
    assert result["memory"]["scope"] == "isolated process"
    assert result["memory"]["rss_peak_bytes"] >= result["memory"]["rss_baseline_bytes"] > 0
    assert result["latency"]["iterations"] == 3
    with pytest.raises(TypeError, match="picklable"):
        run_benchmark(lambda: OrtRunner(tiny_onnx), feeds, QUICK, isolated=True)


def test_isolated_run_reports_user_errors_from_the_child(tmp_path, feeds):
    with pytest.raises(QtoolError, match="missing.onnx does not exist"):
        run_benchmark(runner_factory(tmp_path / "missing.onnx"), feeds, QUICK, isolated=True)


def test_compare_interleaves_round_robin_on_the_same_inputs():
    calls: list[str] = []
    candidates = [("A", lambda: RecordingRunner("A", calls)), ("B", lambda: RecordingRunner("B", calls))]
    result = compare(candidates, {"input_ids": np.zeros((2, 8), np.int64)}, BenchConfig(warmup=2, iterations=3))
    assert calls == ["A", "B"] * 5
    assert [c["name"] for c in result["candidates"]] == ["A", "B"]
    assert all(c["latency"]["iterations"] == 3 for c in result["candidates"])


def test_compare_the_same_model_twice(tiny_onnx, feeds):
    candidates = [("first", runner_factory(tiny_onnx, 1)), ("again", runner_factory(tiny_onnx, 1))]
    result = compare(candidates, feeds, QUICK)
    first, again = result["candidates"]
    assert first["latency_ratio"] == 1.0 and first["speedup"] == 1.0
    assert again["speedup"] > 0 and again["latency_ratio"] == pytest.approx(1 / again["speedup"])
    assert {"latency", "memory", "model_bytes", "runner"} <= set(again)
    assert result["baseline"] == "first" and result["process_memory"]["rss_peak_bytes"] > 0
    with pytest.raises(QtoolError, match="unique"):
        compare([candidates[0], candidates[0]], feeds, QUICK)


def test_bench_from_paths_sweeps_every_shape(tiny_onnx, session_data):
    config = replace(QUICK, batch_sizes=(1, 2), sequence_lengths=(8, 16), iterations=2, warmup=1, threads=1)
    single = bench_model(tiny_onnx, config, DataConfig(source=str(session_data)))
    shapes = [(r["batch"], r["sequence_length"]) for r in single["results"]]
    assert shapes == [(1, 8), (1, 16), (2, 8), (2, 16)]
    assert single["inputs"]["kind"] == "data" and single["config"]["batch_sizes"] == [1, 2]
    pair = bench_compare([tiny_onnx, tiny_onnx], replace(config, batch_sizes=(1,), inputs="random"))
    assert [c["name"] for c in pair["results"][0]["candidates"]] == ["fp32.onnx", "fp32.onnx#2"]
    assert pair["inputs"]["kind"] == "random"


def test_an_artifacts_cache_key_follows_its_weights_file_and_build_record(tmp_path):
    from qtool.deployment.model_files import artifact_key

    model, weights = tmp_path / "m.ov.xml", tmp_path / "m.ov.bin"
    model.write_text("<net/>")
    weights.write_bytes(b"\x00" * 8)
    first = artifact_key(model)
    weights.write_bytes(b"\x01" * 8)  # same topology, other weights
    second = artifact_key(model)
    assert first["graph_sha256"] == second["graph_sha256"] and first != second
    (tmp_path / "m.ov.xml.manifest.json").write_text("{}")
    assert "build_record_sha256" in artifact_key(model)
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"onnx")
    assert list(artifact_key(graph)) == ["graph_sha256"]  # an ONNX graph's key is what it always was
