from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from qtool.analysis.stats import TensorStats
from qtool.cli import app
from qtool.data import make_batches, tokenize_part
from qtool.errors import QtoolError, api_spelling
from qtool.exporter.qdq import switch_input
from qtool.quantization.calibration import CalibrateConfig, calibrate
from qtool.quantization.graphs import calibrated_model
from qtool.quantization.search import SearchConfig, expected_sqnr_db, search_precision
from tests.helpers.models import write_glue_tsv

runner = CliRunner()


def _session(model, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _logits(session, batch, extra=None):
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in batch.feeds.items() if k in names} | (extra or {})
    return session.run(["logits"], feeds)[0]


@pytest.mark.parametrize("scope", ["all", "gemm-inputs"])
def test_switches_select_exactly_the_quantized_points(scaled_model, relabelled, scope):
    split, tokenizer = relabelled
    document = calibrate(scaled_model["stats"], CalibrateConfig(method="max", scope=scope))
    names = list(document.tensors)
    switched = _session(calibrated_model(scaled_model["graph"], document, switches=True))
    batch = make_batches(tokenize_part(tokenizer, split.parts["eval"][:12], 128), 12)[0]
    rng = np.random.default_rng(0)
    subsets = [set(), set(names), {names[3]}] + [set(rng.choice(names, size=len(names) // 2, replace=False))]
    for on in subsets:
        kept = [n for n in names if n not in on]
        plain = _session(calibrated_model(scaled_model["graph"], document.without_points(kept, "test")))
        switches = {switch_input(n): np.array(n in on) for n in names}
        np.testing.assert_array_equal(_logits(switched, batch, switches), _logits(plain, batch))


def test_expected_sqnr_matches_measured_quantization_noise():
    rng = np.random.default_rng(1)
    values = rng.standard_normal(200_000).astype(np.float32)
    stats = TensorStats()
    stats.update(values)
    for scale in (stats.absmax / 127, stats.percentile(99.0) / 127):
        quantized = np.clip(np.rint(values / scale), -127, 127) * scale
        measured = 10 * np.log10(np.mean(values.astype(np.float64) ** 2) / np.mean((values - quantized) ** 2))
        assert expected_sqnr_db(stats, scale) == pytest.approx(measured, abs=0.3)


def test_search_keeps_the_outlier_points_and_meets_the_budget(scaled_model, relabelled, tmp_path):
    split, tokenizer = relabelled
    document = calibrate(scaled_model["stats"], CalibrateConfig(method="max"))
    config = SearchConfig(max_drop=12.0, tune_samples=120, sensitivity_samples=48, batch_size=16)
    cache = tmp_path / "search-cache.json"
    result = search_precision(scaled_model["graph"], scaled_model["stats"], document, split, tokenizer, config, cache)

    tuning = split.parts["tuning"]
    assert result["tuning"] == {"pairs": len(tuning), "sources": {"tuning": len(tuning)}, "sensitivity_pairs": 48,
                                "fp32_accuracy": 1.0}
    assert result["curve"][0]["float_points"] == 0 and result["curve"][0]["drop"] > 0  # quantization hurts
    sizes = [c["float_points"] for c in result["curve"]]
    assert sizes == sorted(sizes) and result["within_budget"]
    assert result["tuning_paired"]["upper"] <= config.max_drop
    assert result["tuning_paired"]["upper"] > result["tuning_drop"] >= 0  # losses only: FP32 is always right
    # The outlier channel of layer 0's FFN output makes a point it flows through the most sensitive.
    assert result["sensitivity"][0]["name"] in {"layer.0.ffn.output", "layer.0.ffn.residual_sum"}
    # Every point left in float was tried quantized again and broke the budget or added flips.
    failed = {p["quantized_again"] for p in result["pruning"] if not p["accepted"]}
    limit = next(c for c in result["curve"] if c["within"])["flips"]
    for trial in result["pruning"]:
        assert trial["accepted"] == (trial["within"] and trial["flips"] <= limit)
    assert set(result["chosen"]) <= failed
    assert len(result["chosen"]) < len(document.tensors)

    # The chosen graph, built for real and scored as a recipe (optimizations off), gives the reported tuning accuracy.
    chosen = document.without_points(result["chosen"], "test")
    session = _session(calibrated_model(scaled_model["graph"], chosen), ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    part = tokenize_part(tokenizer, tuning, 128)
    correct = sum(int((_logits(session, b).argmax(-1) == b.labels).sum()) for b in make_batches(part, 16))
    assert correct / len(part) == pytest.approx(result["tuning_accuracy"])

    again = search_precision(scaled_model["graph"], scaled_model["stats"], document, split, tokenizer, config, cache)
    assert again["evaluations"] == 0 and again["reused_evaluations"] > 0
    assert again["chosen"] == result["chosen"] and again["curve"] == result["curve"]
    fresh = search_precision(scaled_model["graph"], scaled_model["stats"], document, split, tokenizer, config)
    # No cache file: every evaluation runs again, as in the first run (which started from an empty cache).
    assert (fresh["evaluations"], fresh["reused_evaluations"]) == (result["evaluations"], result["reused_evaluations"])
    for key in ("chosen", "curve", "sensitivity", "pruning", "tuning_accuracy"):
        assert fresh[key] == result[key], key


def test_search_without_a_set_in_budget_keeps_the_lowest_bound_and_says_so(caplog):
    """No n within budget: every n of the galloping sequence is measured, no pruning, and the set with the
    lowest upper bound (fewest points among equals) is kept."""
    from types import SimpleNamespace

    from qtool.quantization.search import _choose, judged

    config = SearchConfig(max_drop=0.5)
    losses = {0: 300, 1: 120, 2: 40, 4: 12, 8: 9, 9: 9}  # 9 points: the sequence is 0, 1, 2, 4, 8, 9

    def kept(sets):
        return [judged({"accuracy": 0.9, "losses": losses[len(s)], "gains": 0, "flips": 0.01}, 1000, config)
                for s in sets]

    evaluator = SimpleNamespace(config=config, kept=kept, width=1, tuning=SimpleNamespace(size=1000))
    result = _choose(evaluator, ORDER)
    assert not result["within_budget"] and result["pruning"] == []
    assert [c["float_points"] for c in result["curve"]] == [0, 1, 2, 4, 8, 9]
    assert result["chosen"] == ORDER[:8] and result["tuning_paired"]["losses"] == 9
    assert "no set of points kept in float is within 0.5 points" in caplog.text


def test_search_refuses_a_calibration_with_points_already_in_float(scaled_model, relabelled):
    split, tokenizer = relabelled
    document = calibrate(scaled_model["stats"], CalibrateConfig(mixed_precision="paper"))
    with pytest.raises(QtoolError, match=api_spelling("drop --keep-fp")):
        search_precision(scaled_model["graph"], scaled_model["stats"], document, split, tokenizer)
    with pytest.raises(QtoolError, match=api_spelling("--max-drop")):
        SearchConfig(max_drop=-1).validate()


def test_calibrate_auto_cli_writes_calibration_record_and_curve(scaled_model, session_data, tmp_path):
    graph = scaled_model["graph"]
    stats = scaled_model["stats"].save(tmp_path / "stats.npz")
    common = ["--data", str(session_data), "--stats", str(stats), "--out", str(tmp_path)]
    args = ["calibrate", str(graph), "--method", "auto", "--max-drop", "5", "--tune-samples", "60"]
    args += ["--sensitivity-samples", "24", "--no-eval", "--json", *common]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    recipe = summary["recipe"]
    assert recipe == "max-all-mp-auto5"
    assert set(summary["kept_in_float"]) == set(summary["search"]["chosen"])
    document = json.loads((tmp_path / f"{recipe}.calib.json").read_text())
    assert document["kept_in_float"] == summary["kept_in_float"]
    assert document["mixed_precision"]["max_drop"] == 5 and "seconds" not in json.dumps(document)
    assert (tmp_path / f"{recipe}.qdq.onnx").is_file() and (tmp_path / f"{recipe}.search.png").is_file()
    record = json.loads((tmp_path / f"{recipe}.search.json").read_text())
    assert set(record["chosen"]) == set(summary["kept_in_float"])
    first = (tmp_path / f"{recipe}.calib.json").read_bytes()
    assert runner.invoke(app, args).exit_code == 0
    assert (tmp_path / f"{recipe}.calib.json").read_bytes() == first

    combined = runner.invoke(
        app, [*args, "--smooth", "0.5", "--base-method", "peg", "--groups", "2", "--scope", "gemm"]
    )
    assert combined.exit_code == 0, combined.output
    combined_summary = json.loads(combined.stdout)
    assert combined_summary["recipe"] == "peg-k2-gemm-smooth0.5-mp-auto5"
    assert combined_summary["smoothing"]["alpha"] == 0.5 and combined_summary["scope"] == "gemm"

    # The terminal form, with the eval part: the chosen set's tuning drop and bound, its eval drop and interval.
    shown = runner.invoke(app, [*[a for a in args if a not in ("--no-eval", "--json")], "--confidence", "0.8"])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.stdout.split())
    assert "drop bound: one-sided 80 %" in text and "lost / won" in text
    assert "on the eval part:" in text and "(paired 95 %)" in text and "-point budget" in text
    bad = runner.invoke(app, ["calibrate", str(graph), "--max-drop", "1", "--no-eval", *common])
    assert bad.exit_code == 2 and "need --method auto" in bad.stderr
    bad = runner.invoke(app, ["calibrate", str(graph), "--confidence", "0.95", "--no-eval", *common])
    assert bad.exit_code == 2 and "--confidence" in bad.stderr and "need --method auto" in bad.stderr
    bad = runner.invoke(app, [*args, "--confidence", "1.5"])
    assert bad.exit_code == 2 and "--confidence must be in [0.5, 1)" in bad.stderr
    bad = runner.invoke(app, ["calibrate", str(graph), "--method", "auto", "--max-drop", "-2", "--no-eval", *common])
    assert bad.exit_code == 2 and "--max-drop must be in" in bad.stderr


def test_tuning_accuracy_reads_logits_in_the_graph_label_order():
    from qtool.quantization.search import TuningSet

    tuning = TuningSet.__new__(TuningSet)
    tuning.labels = np.array([0, 1, 1])
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    tuning.label_of_logit = np.array([0, 1])
    assert tuning.accuracy(logits) == 1.0
    tuning.label_of_logit = np.array([1, 0])  # a checkpoint whose first logit is label 1
    assert tuning.accuracy(logits) == 0.0


def _profile(accuracies: dict[int, float], needed: set[str], max_drop: float = 1.0):
    """A fake evaluation: a prefix of n points scores `accuracies[n]`; a pruning trial holds unless it
    drops a point of `needed`. Records the sets it was asked for, batch by batch."""
    calls: list[list[list[str]]] = []

    def evaluate(sets: list[list[str]]) -> list[dict]:
        calls.append(sets)
        points = []
        for kept in sets:
            if len(kept) in accuracies and kept == ORDER[: len(kept)]:
                accuracy = accuracies[len(kept)]
            else:
                accuracy = 1.0 if needed <= set(kept) else 0.5
            drop = round(100 * (1.0 - accuracy), 6)
            points.append({"accuracy": accuracy, "drop": drop, "within": drop <= max_drop, "flips": 1.0 - accuracy})
        return points

    return evaluate, calls


ORDER = [f"p{i}" for i in range(9)]


@pytest.mark.parametrize(
    ("accuracies", "needed"),
    [
        ({n: 0.9 + 0.02 * n for n in range(10)}, {"p0", "p2", "p4"}),  # within at n = 5, p1 and p3 prunable
        ({n: 0.5 for n in range(10)}, set()),  # never within: every n
        ({0: 0.995} | {n: 0.5 for n in range(1, 10)}, set()),  # within at once: no pruning
        ({n: 0.9 + 0.0125 * n for n in range(10)}, set(ORDER[:8])),  # within at n = 8: the curve ends early
    ],
)
def test_speculative_batches_record_exactly_the_sequential_curve_and_pruning(accuracies, needed):
    from qtool.quantization.search import prefix_curve, pruned

    def search(width: int):
        evaluate, calls = _profile(accuracies, needed)
        curve, first = prefix_curve(evaluate, ORDER, curve_extra=2, width=width)
        result = (curve, first, None)
        if first is not None:
            found = next(c for c in curve if c["float_points"] == first)
            result = (curve, first, pruned(evaluate, ORDER[:first], found, width=width))
        return result, calls

    sequential, sequential_calls = search(1)
    assert all(len(sets) == 1 for sets in sequential_calls)
    asked_in_order = [sets[0] for sets in sequential_calls]
    for width in (2, 3, 4, 7, 20):
        speculative, calls = search(width)
        assert speculative == sequential, width
        assert all(1 <= len(sets) <= width for sets in calls) and len(calls) <= len(sequential_calls)
        asked = [kept for sets in calls for kept in sets]
        assert all(kept in asked for kept in asked_in_order)  # speculation may ask a set earlier, never skip one


def test_pruning_keeps_a_point_whose_quantization_adds_flips_within_the_budget():
    """A trial within the accuracy budget that moves more tuning predictions away from FP32's than the
    set that met the budget first is not accepted; one that moves no more is."""
    from qtool.quantization.search import pruned

    results = {
        ("p0", "p1"): {"accuracy": 0.95, "drop": 0.5, "within": True, "flips": 0.03},
        ("p0",): {"accuracy": 0.95, "drop": 0.5, "within": True, "flips": 0.05},  # p1 quantized: more flips
        ("p1",): {"accuracy": 0.95, "drop": 0.5, "within": True, "flips": 0.02},  # p0 quantized: fewer
    }

    def evaluate(sets):
        return [results[tuple(kept)] for kept in sets]

    chosen, final, trials = pruned(evaluate, ["p0", "p1"], results[("p0", "p1")])
    assert chosen == ["p1"] and final == results[("p1",)]
    assert [(t["quantized_again"], t["accepted"]) for t in trials] == [("p1", False), ("p0", True)]


def test_search_as_tasks_on_a_fake_executor_matches_the_local_search(scaled_model, relabelled, tmp_path, monkeypatch):
    """The task path (chunks of points, speculative batches 3 wide, results arriving out of order) without Ray:
    the same choice, curve and pruning as in this process, and the two share one cache file."""
    from qtool.executor import ExecutorConfig
    from qtool.quantization import search_evaluations

    def run_backwards(function, tasks, config, description, label=str, on_result=None):
        results = [function(*task) for task in tasks]
        for index in reversed(range(len(tasks))):
            on_result(index, results[index])
        return results

    monkeypatch.setattr(search_evaluations, "parallelism", lambda config: 3)
    monkeypatch.setattr(search_evaluations, "run_tasks", run_backwards)
    split, tokenizer = relabelled
    document = calibrate(scaled_model["stats"], CalibrateConfig(method="max"))
    config = SearchConfig(max_drop=3.0, tune_samples=120, sensitivity_samples=48, batch_size=16)
    fake = ExecutorConfig(kind="ray")
    args = (scaled_model["graph"], scaled_model["stats"], document, split, tokenizer, config)
    local = search_precision(*args, tmp_path / "local.json")
    tasks = search_precision(*args, tmp_path / "tasks.json", fake)
    for key in ("chosen", "curve", "pruning", "sensitivity", "tuning_accuracy", "within_budget"):
        assert tasks[key] == local[key], key
    assert local["pruning"] and any(p["accepted"] for p in local["pruning"])  # pruning that changes the set
    assert tasks["evaluations"] >= local["evaluations"]
    assert (tmp_path / "tasks.base.json").is_file()  # the calibration the tasks read
    # One cache: the local search reuses the task search's file entirely, the task search the local one's.
    assert search_precision(*args, tmp_path / "tasks.json")["evaluations"] == 0
    again = search_precision(*args, tmp_path / "local.json", fake)
    assert again["evaluations"] == tasks["evaluations"] - local["evaluations"]  # only what speculation adds
    assert again["curve"] == local["curve"] and again["pruning"] == local["pruning"]


@pytest.mark.parametrize("seed", range(6))
def test_pruning_never_ends_outside_the_bound(seed):
    """Random losses and gains for every set (a fake evaluation judged by the search's rule): whatever the
    curve and the pruning do, a search that says it met the budget ends on a set whose bound is within it."""
    from qtool.quantization.search import judged, prefix_curve, pruned

    config = SearchConfig(max_drop=0.5, confidence=0.9)
    rng = np.random.default_rng(seed)
    drawn: dict[tuple, dict] = {}

    def evaluate(sets):
        results = []
        for kept in sets:
            if tuple(kept) not in drawn:
                scale = 30 / (1 + len(kept))  # fewer flips with more points in float, noisily
                losses, gains = int(rng.poisson(scale)), int(rng.poisson(scale / 3))
                drawn[tuple(kept)] = {"accuracy": 0.9, "losses": losses, "gains": gains, "flips": (losses + gains) / 800}
            results.append(judged(drawn[tuple(kept)], 800, config))
        return results

    curve, first = prefix_curve(evaluate, ORDER, curve_extra=1)
    if first is None:
        assert all(not c["within"] for c in curve)
        return
    start = next(c for c in curve if c["float_points"] == first)
    chosen, final, trials = pruned(evaluate, ORDER[:first], start)
    assert final["upper"] <= config.max_drop and final["flips"] <= start["flips"]
    assert judged(drawn[tuple(chosen)], 800, config).items() <= final.items()
    assert all(t["upper"] <= config.max_drop for t in trials if t["accepted"])


def test_a_search_without_a_tuning_part_is_one_line(scaled_model, relabelled, tmp_path, tiny_onnx):
    split, tokenizer = relabelled
    document = calibrate(scaled_model["stats"], CalibrateConfig(method="max"))
    empty = type(split)(split.name, {**split.parts, "tuning": []})
    with pytest.raises(QtoolError, match="no tuning part .*give (--)?data with more rows") as error:
        search_precision(scaled_model["graph"], scaled_model["stats"], document, empty, tokenizer)
    assert "\n" not in str(error.value)
    data = tmp_path / "few.tsv"
    seed = next(s for s in range(500) if _tuning_empty(data, s))  # a small file whose hash leaves tuning empty
    _tuning_empty(data, seed)
    result = runner.invoke(app, ["calibrate", str(tiny_onnx), "--method", "auto", "--data", str(data), "--no-eval",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "no tuning part" in result.stderr
    assert "Traceback" not in result.output and "no tuning part" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    # The fix the message names: tuning rows from another file, recorded as such.
    write_glue_tsv(tmp_path / "tune.tsv", rows=40, seed=seed + 1, questions=30)
    given = runner.invoke(app, ["calibrate", str(tiny_onnx), "--method", "auto", "--data", str(data), "--no-eval",
                                "--tune-data", str(tmp_path / "tune.tsv"), "--max-drop", "100", "--tune-samples", "30",
                                "--sensitivity-samples", "8", "--out", str(tmp_path / "out"), "--json"])
    assert given.exit_code == 0, given.output
    tuning = json.loads((tmp_path / "out" / f"{json.loads(given.stdout)['recipe']}.search.json").read_text())["tuning"]
    assert tuning["sources"] == {"tune-data": 30} and tuning["pairs"] == 30
    assert tuning["tune_data"]["rows"] == 40 and "tune.tsv" in tuning["tune_data"]["name"]
    refused = runner.invoke(app, ["calibrate", str(tiny_onnx), "--method", "max", "--data", str(data), "--no-eval",
                                  "--tune-data", str(tmp_path / "tune.tsv"), "--out", str(tmp_path / "out")])
    assert refused.exit_code == 2 and "--tune-data need --method auto" in " ".join(refused.stderr.split())


def _tuning_empty(path, seed) -> bool:
    from qtool.data import DataConfig, load_data

    write_glue_tsv(path, rows=24, seed=seed, questions=8)
    sizes = load_data(DataConfig(source=str(path))).sizes
    return sizes["tuning"] == 0 and all(sizes[p] for p in ("train", "calibration", "eval"))


def test_tasks_elsewhere_get_the_tune_data_rows_the_driver_read(tmp_path):
    """A Ray task must not read --tune-data again (another machine, a relative path, a file since edited):
    the driver hands over a split whose tuning part is those rows, and a config without the path."""
    from qtool.data import DataConfig, load_data
    from qtool.quantization.search_evaluations import tuning_examples, with_tuning_rows

    write_glue_tsv(tmp_path / "dev.tsv", rows=200, seed=4, questions=60)
    write_glue_tsv(tmp_path / "tune.tsv", rows=30, seed=5, questions=20)
    split = load_data(DataConfig(source=str(tmp_path / "dev.tsv")))
    config = SearchConfig(tune_data=str(tmp_path / "tune.tsv"))
    tuned, plain = with_tuning_rows(split, config)
    assert plain.tune_data is None and tuned.parts["tuning"] == tuning_examples(split, config).examples
    (tmp_path / "tune.tsv").unlink()
    assert tuning_examples(tuned, plain).examples == tuned.parts["tuning"]  # nothing read again
    assert with_tuning_rows(split, SearchConfig()) == (split, SearchConfig())
