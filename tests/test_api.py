"""`import qtool`: typed results, rules checked once in the API, and a calibrator plugged in from outside."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

import qtool
from qtool.analysis.collect import ActivationStats
from qtool.calibrators.base import ActivationRange, Calibrator, method_option
from qtool.calibrators.methods import CALIBRATORS
from qtool.cli import app


class HalfMaxCalibrator(Calibrator):
    """A calibrator written outside qtool: half of each point's max |x|."""

    name = "halfmax"

    def params(self) -> dict:
        return {}

    def estimate(self, point, stats) -> ActivationRange:
        return ActivationRange(stats.absmax / 2)


@pytest.fixture
def halfmax():
    qtool.register_calibrator(HalfMaxCalibrator)
    yield HalfMaxCalibrator.name
    CALIBRATORS.pop(HalfMaxCalibrator.name)


@pytest.fixture
def graph(tmp_path, tiny_onnx):
    folder = tmp_path / "model"
    shutil.copytree(tiny_onnx.parent, folder)
    return folder / tiny_onnx.name


def test_a_calibrator_registered_from_outside_runs_through_the_api_and_the_cli(halfmax, graph, session_data):
    assert halfmax in qtool.calibration_methods()
    made = qtool.calibrate(graph, method=halfmax, data=session_data, limit=32)
    assert isinstance(made, qtool.api.Calibrated) and made.recipe == "halfmax-all"
    assert made.qdq_graph.is_file() and 0 <= made.qdq_accuracy <= 1
    collected = ActivationStats.load(qtool.collect(graph, data=session_data).stats)
    tensors = json.loads(made.calibration.read_text())["tensors"]
    point = next(p for p in collected.points if p.name in tensors)
    assert tensors[point.name]["amax"] == pytest.approx(collected.stats[point.name].absmax / 2)
    result = CliRunner().invoke(
        app, ["calibrate", str(graph), "--method", halfmax, "--data", str(session_data), "--limit", "32", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == made.to_dict()


def test_results_are_typed_and_their_dict_is_the_json(graph, session_data):
    evaluation = qtool.evaluate(graph, data=session_data, limit=40)
    assert isinstance(evaluation, qtool.api.Evaluation)
    assert evaluation.examples == 40 and evaluation.accuracy == evaluation.correct / 40
    assert evaluation.to_dict()["accuracy"] == evaluation.accuracy
    metrics = evaluation.details["metrics"]
    assert {"macro_f1", "mcc", "f1"} <= set(metrics) and metrics["f1_positive_label"] == "not_entailment"
    result = CliRunner().invoke(app, ["eval", str(graph), "--data", str(session_data), "--limit", "40", "--json"])
    assert json.loads(result.stdout)["accuracy"] == evaluation.accuracy


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"method": "max", "p": 99.0}, "p is an option of method percentile, not of max"),
        ({"method": "percentile", "groups": 3}, "groups is an option of method peg, not of percentile"),
        ({"method": "bogus"}, "choose one of max, percentile, peg, entropy, mse, auto"),
        ({"method": "max", "max_drop": 1.0}, "need method auto"),
        ({"method": "auto", "keep_fp": ["layer.0.*"]}, "chooses the points kept in float itself"),
        ({"method": "auto", "base_method": "peg", "weights": "folded"}, "folded weights cannot"),
    ],
)
def test_rules_are_checked_in_the_api_before_any_work(graph, options, fragment):
    with pytest.raises(qtool.QtoolError, match=fragment.replace("(", r"\(")):
        qtool.calibrate(graph, data="/nonexistent/folder", **options)


def test_register_calibrator_refuses_what_is_not_a_calibrator():
    with pytest.raises(qtool.QtoolError, match="subclass of qtool.calibrators.base.Calibrator"):
        qtool.register_calibrator(object)


def test_analyze_reads_the_statistics_collect_wrote_instead_of_collecting_again(graph, session_data):
    collected = qtool.collect(graph, data=session_data, samples=32)
    before = collected.stats.stat().st_mtime_ns
    qtool.analyze(graph, data=session_data, figures=False)
    assert collected.stats.stat().st_mtime_ns == before
    assert ActivationStats.load(collected.stats).manifest["samples"] == 32
    qtool.analyze(graph, data=session_data, samples=48, figures=False)  # asked for: collected again
    assert ActivationStats.load(collected.stats).manifest["samples"] == 48


def _copy_runner(path, threads=None, providers=()):
    from qtool.runners.ort import OrtRunner

    return OrtRunner(path, threads=threads)


def _copy_build(graph, output, options):
    target = output or graph.with_suffix(".copy")
    target.write_bytes(graph.read_bytes())
    return {"backend": "copy", "artifact": str(target), "label": options.label}


@pytest.fixture
def copy_backend():
    from dataclasses import dataclass

    from qtool.deployment.backends import BACKENDS, Backend

    @dataclass(frozen=True)
    class CopyOptions:
        label: str = "plain"

    backend = Backend(
        name="copy", summary="the graph as it is, under another suffix", suffixes=(".copy",),
        runner=_copy_runner, build=_copy_build, options=CopyOptions,
    )
    qtool.register_backend(backend)
    yield backend
    BACKENDS.pop(backend.name)


def test_a_backend_registered_from_outside_builds_benches_and_evaluates(copy_backend, graph, session_data):
    assert qtool.backends()["copy"] == ("label",)
    built = qtool.build(graph, "copy", label="mine")
    assert built.artifact == graph.with_suffix(".copy") and built.details["label"] == "mine"
    with pytest.raises(qtool.QtoolError, match="fp16 is not an option of backend copy"):
        qtool.build(graph, "copy", fp16=True)
    bench = qtool.bench([built.artifact], iterations=2, warmup=1, with_eval=True, data=session_data, limit=24)
    assert bench.runs[0]["results"][0]["latency"]["p50_ms"] > 0
    assert bench.details["accuracy"][str(built.artifact)]["examples"] == 24
    scored = qtool.evaluate(built.artifact, data=session_data, limit=24)
    assert scored.details["model"] == str(built.artifact)
    assert scored.correct == qtool.evaluate(graph, data=session_data, limit=24).correct
    assert scored.correct == bench.details["accuracy"][str(built.artifact)]["correct"]
    cli = CliRunner()
    result = cli.invoke(app, ["build", str(graph), "--backend", "copy", "-o", str(graph.with_name("b.copy")), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["artifact"] == str(graph.with_name("b.copy"))
    result = cli.invoke(
        app, ["bench", str(graph.with_name("b.copy")), "--iterations", "2", "--warmup", "1", "--data", str(session_data)]
    )
    assert result.exit_code == 0, result.output
    result = cli.invoke(app, ["build", str(graph), "--backend", "copy", "-o", str(graph.with_name("c.copy"))])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["build", "(copy)", "artifact", str(graph.with_name("c.copy")), "label", "plain"]
    result = cli.invoke(app, ["build", str(graph), "--backend", "copy", "--int8-kernels", "u8u8"])
    assert result.exit_code == 2 and "is not an option of backend copy" in result.stderr


@pytest.mark.parametrize("length", [64, 256])
def test_max_length_runs_through_the_whole_chain(tmp_path, tiny_classifier, tiny_data, length):
    exported = qtool.export(tiny_classifier, data=tiny_data, max_length=length, output=tmp_path / "fp32.onnx")
    assert exported.details["config"]["max_length"] == length
    collected = qtool.collect(exported.graph, data=tiny_data, max_length=length, samples=32)
    assert ActivationStats.load(collected.stats).manifest["config"]["max_length"] == length
    made = qtool.calibrate(exported.graph, method="percentile", data=tiny_data, max_length=length, limit=24)
    assert json.loads(made.calibration.read_text())["statistics_sha256"]
    built = qtool.build(made.qdq_graph)
    evaluation = qtool.evaluate(built.artifact, data=tiny_data, max_length=length, limit=24)
    assert evaluation.examples == 24


def test_a_max_length_beyond_the_model_positions_is_one_line(tmp_path, embedded_tokenizer, tiny_data):
    from tests.helpers.models import build_bert_classifier

    short = build_bert_classifier(tmp_path / "short", embedded_tokenizer, layers=1, hidden=16, heads=2, positions=96)
    graph = qtool.export(short, data=tiny_data, max_length=64, output=tmp_path / "fp32.onnx").graph
    with pytest.raises(qtool.QtoolError, match="takes at most 96 tokens"):
        qtool.export(short, data=tiny_data, max_length=256, output=tmp_path / "long.onnx")
    with pytest.raises(qtool.QtoolError, match="max_length=256 exceeds the 96 positions"):
        qtool.evaluate(graph, data=tiny_data, max_length=256)
    result = CliRunner().invoke(app, ["collect", str(graph), "--data", str(tiny_data), "--max-length", "256"])
    assert result.exit_code == 2 and "--max-length 256 exceeds the 96 positions" in result.stderr
    assert not (tmp_path / "fp32.stats.npz").exists()  # refused before anything was collected
    with pytest.raises(qtool.QtoolError, match="at least 8"):
        qtool.evaluate(graph, data=tiny_data, max_length=4)


@dataclass(frozen=True)
class FractionOptions:
    fraction: float = method_option(1.0, "the share of max |x| kept in range", above=0, at_most=1)
    rounds: int = method_option(1, "a whole-number option, to check its conversion", at_least=1)


class FractionCalibrator(Calibrator):
    """A calibrator from outside qtool with options of its own: a fraction of each point's max |x|."""

    name = "fraction"
    options = FractionOptions

    def __init__(self, fraction: float = 1.0, rounds: int = 1):
        self.fraction = fraction
        assert isinstance(rounds, int)  # converted from the command line's text by the declaration

    def params(self) -> dict:
        return {"fraction": self.fraction}

    def estimate(self, point, stats) -> ActivationRange:
        return ActivationRange(stats.absmax * self.fraction)


@pytest.fixture
def fraction():
    qtool.register_calibrator(FractionCalibrator)
    yield FractionCalibrator.name
    CALIBRATORS.pop(FractionCalibrator.name)


def test_a_plugged_in_calibrator_takes_its_own_options_through_api_cli_and_config_file(
    fraction, graph, session_data, tmp_path
):
    made = qtool.calibrate(graph, method=fraction, method_options={"fraction": 0.25}, data=session_data, limit=16)
    assert made.recipe == "fraction-0.25-all" and made.details["params"] == {"fraction": 0.25}
    cli = CliRunner()
    args = ["calibrate", str(graph), "--method", fraction, "--data", str(session_data), "--limit", "16"]
    result = cli.invoke(app, [*args, "--method-option", "fraction=0.25", "--method-option", "rounds=2", "--json"])
    assert result.exit_code == 0, result.output
    declared = qtool.calibration_methods(options=True)[fraction]
    assert declared["fraction"] == {"default": 1.0, "help": "the share of max |x| kept in range", "bounds": "in (0, 1]"}
    assert qtool.calibration_methods(options=True)["peg"]["groups"]["choices"] == ["auto"]
    assert json.loads(result.stdout)["calibration"] == str(made.calibration)
    for bad, message in (
        (["--method-option", "alpha=2"], "--method-option alpha is not an option of method fraction (it takes fraction, rounds)"),
        (["--method-option", "fraction=3"], "--method-option fraction must be in (0, 1], got 3"),
        (["--method-option", "fraction=half"], "--method-option fraction must be a number, got 'half'"),
        (["--method-option", "rounds=1.5"], "--method-option rounds must be a whole number, got 1.5"),
        (["--method-option", "fraction"], "--method-option takes NAME=VALUE"),
        (["--method-option", "p=99"], "p has a flag of its own: pass --p, not --method-option p=..."),
    ):
        result = cli.invoke(app, [*args, *bad])
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    from qtool.stages.study import load_configuration_file

    toml = tmp_path / "extra.toml"
    toml.write_text('[configurations.quarter]\nmethod = "fraction"\nmethod_options = { fraction = 0.25 }\n')
    ((name, config),) = load_configuration_file(toml)
    assert name == "quarter" and config.recipe_name() == "fraction-0.25-all"
