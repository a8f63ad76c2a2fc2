from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qtool.cli import app
from qtool.defaults import DEPLOY_MAX_DROP
from qtool.report.advice import PER_TOOL_COMPARED, fastest_per_tool, within_budget
from tests.helpers.cpu import X86_WITH_VNNI_HERE

runner = CliRunner()


def _registered_commands() -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)


COMMANDS = _registered_commands()


def _run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:], result.stderr
    text = errors[0]
    for fragment in fragments:
        assert fragment in text


def test_top_level_help_lists_commands():
    result = _run("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help(command):
    import typer.main

    click_command = typer.main.get_command(app).commands[command]
    assert click_command.help
    options = [param for param in click_command.params if param.param_type_name == "option"]
    assert options  # typer's parameters are not click.Option instances: count them, so this check runs
    for param in options:
        assert param.help, f"{command} {param.opts} has no help"
    assert _run(command, "--help").exit_code == 0


def test_help_paragraphs_reflow_and_keep_brackets():
    result = runner.invoke(app, ["build", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "pip install 'qtool[trt]'" in result.stdout  # not eaten as Rich markup
    assert "ort: rewrites the TensorRT-style QDQ graph into the graph ONNX Runtime's CPU kernels run fastest (same" in (
        result.stdout
    )  # one paragraph, wrapped by the terminal rather than at the docstring's line breaks


def test_missing_model_is_a_one_line_error(tiny_data, tmp_path):
    result = _run("export", "--model", tmp_path / "nope", "--data", tiny_data, "--artifacts", tmp_path / "a")
    _one_line_error(result, "does not exist")
    assert not (tmp_path / "a").exists()


def test_data_folder_without_dev_tsv(tmp_path):
    result = _run("export", "--data", tmp_path, "--artifacts", tmp_path / "a")
    _one_line_error(result, "no dev.tsv")


def test_malformed_tsv_row_names_the_line(tmp_path, tiny_classifier):
    (tmp_path / "dev.tsv").write_text("index\tquestion\tsentence\tlabel\n0\tq?\ts.\tentailment\n1\tbad\n")
    result = _run("export", "--model", tiny_classifier, "--data", tmp_path, "-o", tmp_path / "m.onnx")
    _one_line_error(result, "dev.tsv:3", "malformed row")
    assert not (tmp_path / "m.onnx").exists()


def test_corrupt_onnx_given_to_eval(tmp_path, tiny_data):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf graph" * 10)
    _one_line_error(_run("eval", bad, "--data", tiny_data), "not a readable ONNX model")
    _one_line_error(_run("eval", tmp_path / "missing.onnx", "--data", tiny_data), "does not exist")


def test_empty_or_corrupt_graphs_are_one_line_errors_in_every_reader(tmp_path, tiny_data):
    empty, corrupt, folder = tmp_path / "empty.onnx", tmp_path / "corrupt.onnx", tmp_path / "folder.onnx"
    empty.write_bytes(b"")
    corrupt.write_bytes(b"\x08\x07this is not a protobuf graph" * 10)
    folder.mkdir()
    _one_line_error(_run("build", empty, "-o", tmp_path / "b.onnx"), "empty or not an ONNX model")
    _one_line_error(_run("bench", corrupt, "--data", tiny_data), "not a readable ONNX model")
    _one_line_error(_run("eval", folder, "--data", tiny_data), "is a folder")
    assert not (tmp_path / "b.onnx").exists()


def test_outputs_that_are_inputs_folders_or_unwritable_are_refused(tmp_path, tiny_onnx):
    graph = tmp_path / "fp32.onnx"
    graph.write_bytes(tiny_onnx.read_bytes())
    before = graph.read_bytes()
    _one_line_error(_run("build", graph, "-o", graph), "also an input")
    _one_line_error(_run("collect", graph, "--stats", graph), "also an input")
    assert graph.read_bytes() == before
    (tmp_path / "out").mkdir()
    _one_line_error(_run("build", graph, "-o", tmp_path / "out"), "is a folder")
    (tmp_path / "a-file").write_text("x")
    _one_line_error(_run("build", graph, "-o", tmp_path / "a-file" / "x.onnx"), "cannot write")


def test_version_needs_no_command():
    result = _run("--version")
    assert result.exit_code == 0 and result.stdout.strip()


def test_out_of_range_options(tmp_path, tiny_data, tiny_encoder):
    _one_line_error(
        _run("finetune", "--model", tiny_encoder, "--data", tiny_data, "--epochs", "0", "--artifacts", tmp_path),
        "--epochs",
    )
    _one_line_error(
        _run("finetune", "--model", tiny_encoder, "--data", tiny_data, "--lr", "5", "--artifacts", tmp_path), "--lr"
    )
    _one_line_error(
        _run("finetune", "--model", tiny_encoder, "--data", tiny_data, "--epochs", "nan", "--artifacts", tmp_path),
        "--epochs",
    )


def test_console_script_error_has_no_traceback(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "qtool.cli", "eval", str(tmp_path / "none.onnx"), "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("error:")


def test_finetune_export_eval_chain_on_a_tiny_encoder(tmp_path, tiny_data, tiny_encoder):
    artifacts = tmp_path / "artifacts"
    result = _run(
        "finetune", "--model", tiny_encoder, "--data", tiny_data, "--max-steps", "3", "--artifacts", artifacts, "--json"
    )
    assert result.exit_code == 0, result.output
    tuned = json.loads(result.stdout)
    assert 0.0 <= tuned["eval_accuracy"] <= 1.0
    again = json.loads(
        _run(
            "finetune",
            "--model",
            tiny_encoder,
            "--data",
            tiny_data,
            "--max-steps",
            "3",
            "--artifacts",
            artifacts,
            "--json",
        ).stdout
    )
    assert again == tuned

    result = _run("export", "--model", tuned["model_dir"], "--data", tiny_data, "--artifacts", artifacts, "--json")
    assert result.exit_code == 0, result.output
    onnx_path = json.loads(result.stdout)["onnx"]

    result = _run("eval", onnx_path, "--data", tiny_data, "--json")
    assert result.exit_code == 0, result.output
    evaluation = json.loads(result.stdout)
    assert {"accuracy", "examples", "model", "data_split"} <= set(evaluation)
    assert evaluation["examples"] == tuned["eval_examples"]
    assert evaluation["accuracy"] == pytest.approx(tuned["eval_accuracy"], abs=1.5 / evaluation["examples"])


QUICK_TIMING = ("--warmup", "1", "--iterations", "5")  # each latency: 5 timed runs after 1 (the study's: 30 after 5)


def test_reproduce_on_a_tiny_classifier(tmp_path, tiny_data, tiny_classifier):
    artifacts = tmp_path / "artifacts"
    extra = tmp_path / "extra.toml"
    extra.write_text('[configurations.peg-k3-gemm-mine]\nmethod = "peg"\ngroups = 3\nscope = "gemm"\n')
    args = [
        "reproduce",
        "--model",
        tiny_classifier,
        "--data",
        tiny_data,
        "--artifacts",
        artifacts,
        "-c",
        "fp32",
        "-c",
        "max-all",
        "-c",
        "peg-k2-all",
        "-c",
        "entropy-all",
        "-c",
        "mse-all",
        "-c",
        "ort-static-percentile",
        "-c",
        "ort-dynamic",
        "-c",
        "nncf-ptq",
        "-c",
        "peg-k3-gemm-mine",
        "-c",
        "max-all-smooth0.5",
        "-c",
        "max-all-mp-auto0.5",
        "--config-file",
        extra,
        "--samples",
        "16",
        *QUICK_TIMING,
        "--json",
    ]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    results = [r for r in summary["results"] if "backend" not in r]  # the ONNX Runtime rows; then OpenVINO's
    assert [r["configuration"] for r in results] == [
        "fp32",
        "max-all",
        "peg-k2-all",
        "entropy-all",
        "mse-all",
        "ort-static-percentile",
        "ort-dynamic",
        "nncf-ptq",
        "peg-k3-gemm-mine",
        "max-all-smooth0.5",
        "max-all-mp-auto0.5",
    ]
    nncf = results[7]
    assert nncf["peer"] and nncf["peer_record"]["quantized_ops"] > 0 and nncf["params"]["calibration_pairs"] == 16
    assert nncf["deployed_kernels"] == results[6]["deployed_kernels"] == "u8s8"  # int8 weights
    assert results[-3]["scope"] == "gemm" and results[-3]["params"]["groups"] == 3
    assert results[-2]["smoothing"] == 0.5 and results[1]["smoothing"] is None
    searched = results[-1]
    assert (
        searched["search"]["evaluations"] > 0
        and searched["quantized_points"] + len(searched["kept_in_float"]) == searched["total_points"]
    )
    assert searched["search"]["curve"][0]["float_points"] == 0 and "search_max-all-mp-auto0.5" in summary["figures"]
    assert results[5]["params"]["calibration_pairs"] == 16
    assert all(r["latency"]["p50_ms"] > 0 for r in results)
    assert {r["latency"]["memory_scope"] for r in results} == {"isolated process"}  # one process each
    advice = summary["recommendation"]
    assert advice["repeats"] == 3 and advice["candidates"] >= 1 and "interleaved" in report_text(artifacts)
    assert all(r["latency"]["peak_rss_mb"] >= r["latency"]["runner_rss_mb"] > 0 for r in results)
    assert (artifacts / "report" / "report.html").read_text().count("data:image/png;base64") >= 4
    for row in results:
        low, high = row["accuracy_ci95"]
        assert low <= row["accuracy"] <= high
    report = (artifacts / "report" / "report.md").read_text()
    assert "peg-k2-all" in report and summary["data_split"]["fingerprint"] in report
    calibrated = [r for r in results if "calibration" in r]  # the recipe and its deployed graph
    assert len(calibrated) == 7 and all(0 <= r["deployed_accuracy"] <= 1 for r in calibrated)
    assert not any("deployed_accuracy" in r for r in results if "calibration" not in r)
    for row in calibrated:  # the deployed graph against its QDQ graph, prediction by prediction
        assert 0 <= row["deployed_changed"] <= row["examples"] and row["deployed_kernels"] in ("u8s8", "u8u8")
        assert abs(row["deployed_correct"] - row["correct"]) <= row["deployed_changed"]
        assert row["deployed_changed"] <= 0.01 * row["examples"] + 1, row["configuration"]  # this tiny model
    assert "| deployed changed | kernels |" in report and "## Stage times" in report
    assert "| entropy-all | entropy |" in report and "| mse-all | mse |" in report  # calibration times
    assert "## Other metrics" in report and all("mcc_ci95" in r["metrics"] for r in results)
    stages = summary["stage_times"]["stages"]
    assert {"export", "statistics", "calibration", "score QDQ graph", "score deployed graph"} <= set(stages)
    assert {"mixed-precision search", "peer quantization", "time deployed graph", "migration"} <= set(stages)
    assert 0 < sum(s["seconds"] for s in stages.values()) <= summary["stage_times"]["wall_seconds"] + 1
    assert summary["environment"]["cpu"] in report
    assert summary["timing"] == {"warmup": 1, "iterations": 5} and "p50 of 5 timed runs after 1 warm-up run." in report
    assert "Deployed % is the ONNX Runtime CPU graph" in report
    migration = report.split("## Migrating activation range into the weights")[1].split("##")[0]
    assert "| max-all | all |" in migration and "| 0.5 |" in migration
    assert "## Automatic mixed precision" in report
    assert "| nncf-ptq | its QDQ graph, meant for OpenVINO" in report.split("## Peers")[1]
    assert json.loads((artifacts / "report" / "results.json").read_text()) == summary
    on_openvino = {r["configuration"]: r for r in summary["results"] if r.get("backend") == "openvino"}
    assert "fp32@openvino" in on_openvino and all(name.endswith("@openvino") for name in on_openvino)
    within = {r["configuration"] for r in within_budget(results, DEPLOY_MAX_DROP)} - {"ort-static-percentile", "ort-dynamic"}
    assert set(on_openvino) == {f"{name}@openvino" for name in within}  # FP32, NNCF's graph, qtool's rows in budget
    for name, row in on_openvino.items():
        source = next(r for r in results if r["configuration"] == name.removesuffix("@openvino"))
        assert row["latency"]["graph"].endswith(".ov.xml") and row["latency"]["p50_ms"] > 0 and row["graph"] == source["graph"]
        assert 0 <= row["deployed_changed"] <= row["examples"], name  # against the source graph, same pairs
        assert row["deployed_kernels"].startswith("openvino: "), name  # how many GEMMs ran in int8, and how
        if X86_WITH_VNNI_HERE:  # OpenVINO's INT8 is near the QDQ graph where measured: x86 with VNNI
            assert row["deployed_changed"] <= 0.05 * row["examples"] + 1, name
        assert f"| {name} |" in report
    if "nncf-ptq@openvino" in on_openvino:
        assert "| nncf-ptq@openvino | its QDQ graph on OpenVINO's CPU plugin" in report.split("## Peers")[1]
    compared = summary["tool_comparison"]  # each tool's fastest two in budget per backend, interleaved at b1 and b8
    picks = compared["picks"]
    assert compared["batches"] == ["1", "8"] and picks[0]["configuration"] == "fp32"
    expected = fastest_per_tool(summary["results"], DEPLOY_MAX_DROP, per_backend=PER_TOOL_COMPARED)
    assert [p["configuration"] for p in picks[1:]] == [r["configuration"] for r in expected]
    assert max(Counter((p["tool"], p["backend"]) for p in picks[1:]).values()) <= PER_TOOL_COMPARED
    assert all(p["p50_ms"][b] > 0 and p["spread"][b] >= 0 for p in picks for b in ("1", "8"))
    for batch, verdict in compared["verdicts"].items():
        assert verdict is None or verdict["verdict"] in ("ahead", "level", "behind"), batch
    assert set(compared["verdicts_by_backend"]) == {p["backend"] for p in picks[1:]}
    assert "## Each tool at its fastest" in report and "| tool | backend | configuration |" in report
    rerun = json.loads(_run(*args).stdout)
    searched_again = next(r for r in rerun["results"] if r["configuration"] == "max-all-mp-auto0.5")
    assert searched_again["search"]["evaluations"] == 0  # every search evaluation came from the cache
    assert all(entry["reused"] for row in rerun["results"] for entry in row["stage_times"] if "score" in entry["stage"])
    for row in rerun["results"] + summary["results"]:
        for volatile in ("seconds", "evaluations", "reused_evaluations"):
            row.get("search", {}).pop(volatile, None)
        row.pop("stage_times")
    for new, old in zip(rerun["results"], summary["results"], strict=True):
        assert new == old, {k: (new[k], old.get(k)) for k in new if new[k] != old.get(k)}
    # The commands run the same stages and name their files as reproduce did: nothing is made again.
    fp32 = Path(summary["results"][0]["graph"])
    records = {p: p.read_bytes() for p in fp32.parent.glob("*.manifest.json")}
    assert fp32.with_name("max-all.qdq.ort.onnx") in {p.with_name(p.name.removesuffix(".manifest.json")) for p in records}
    built = json.loads(_run("build", fp32.with_name("max-all.qdq.onnx"), "--json").stdout)
    assert built["graph"] == str(fp32.with_name("max-all.qdq.ort.onnx"))
    exported = _run("export", "--model", tiny_classifier, "--data", tiny_data, "--artifacts", artifacts, "--json")
    assert json.loads(exported.stdout)["onnx"] == str(fp32)
    calibrated = _run("calibrate", fp32, "--data", tiny_data, "--samples", "16", "--no-eval", "--json")
    assert json.loads(calibrated.stdout)["qdq_graph"] == str(fp32.with_name("max-all.qdq.onnx"))
    assert {p: p.read_bytes() for p in fp32.parent.glob("*.manifest.json")} == records
    # The searches checked on tuning rows from another file: only the search runs again, and says where they came from.
    from tests.helpers.models import write_glue_tsv

    write_glue_tsv(tmp_path / "tune.tsv", rows=60, seed=7)
    tuned = _run("reproduce", "--model", tiny_classifier, "--data", tiny_data, "--artifacts", artifacts, "--samples", "16",
                 "-c", "max-all-mp-auto0.5", "--tune-data", tmp_path / "tune.tsv", *QUICK_TIMING, "--json")
    search = next(r for r in json.loads(tuned.stdout)["results"] if "search" in r)["search"]
    assert search["tuning"]["tune_data"]["rows"] == 60 and search["evaluations"] > 0
    assert "--tune-data" in report_text(artifacts) and "tune.tsv" in report_text(artifacts)
    unknown = _run("reproduce", "--model", tiny_classifier, "--data", tiny_data, "--artifacts", artifacts, "-c", "nope")
    _one_line_error(unknown, "unknown configuration")
    _one_line_error(_run("reproduce", "--data", tiny_data, "--artifacts", artifacts, "--backends", "ort,tpu"), "--backends tpu")
    alone = json.loads(_run(*args[:-1], "-c", "fp32", "--backends", "ort", "--json").stdout)  # every stage cached
    assert not any("@" in r["configuration"] for r in alone["results"])
    assert alone["skipped"]["@openvino rows"] == "not asked for (--backends ort; add openvino to deploy there)"
    _one_line_error(_run("reproduce", "--data", tiny_data, "--artifacts", artifacts, "--backends", " "), "names no backend")
    _one_line_error(_run("reproduce", "--data", tiny_data, "--artifacts", artifacts, "--iterations", "0"), "--iterations must be")
    extra.write_text('[configurations.bad]\nmethod = "peg"\ngruops = 3\n')
    bad = _run(
        "reproduce", "--model", tiny_classifier, "--data", tiny_data, "--artifacts", artifacts, "--config-file", extra
    )
    _one_line_error(bad, "unknown keys")
    for text, words in [
        ('[configurations."../escape"]\nmethod = "max"\n', "names files"),
        ('[configurations.x]\nkeep_fp = 5\n', "wrong type"),
        ("[configurations]\nfoo = 3\n", "not a table"),
    ]:
        extra.write_text(text)
        _one_line_error(_run("reproduce", "--data", tiny_data, "--artifacts", artifacts, "--config-file", extra), words)


def report_text(artifacts: Path) -> str:
    return (artifacts / "report" / "report.md").read_text()


def test_options_and_the_graph_are_checked_before_any_data_is_loaded(tmp_path):
    no_data = ["--data", str(tmp_path / "no-such-folder")]
    _one_line_error(_run("calibrate", tmp_path / "m.onnx", "--method", "kmeans", *no_data), "unknown calibration method")
    _one_line_error(_run("calibrate", tmp_path / "m.onnx", "--max-drop", "1", *no_data), "need --method auto")
    _one_line_error(_run("calibrate", tmp_path / "m.onnx", *no_data), "does not exist")
    _one_line_error(_run("collect", tmp_path / "m.onnx", "--bins", "100", *no_data), "--bins")
    _one_line_error(_run("collect", tmp_path / "m.onnx", *no_data), "does not exist")


def test_eval_part_all_scores_every_row_of_a_file_or_folder(tiny_onnx, tmp_path):
    from tests.helpers.models import write_glue_tsv

    file = write_glue_tsv(tmp_path / "external" / "my-test.tsv", rows=37, seed=11)
    scored = json.loads(_run("eval", tiny_onnx, "--data", file, "--part", "all", "--json").stdout)
    assert scored["examples"] == 37 and scored["data_part"] == "all" and "my-test.tsv" in scored["data_split"]["name"]
    folder = write_glue_tsv(tmp_path / "folder" / "dev.tsv", rows=29, seed=12).parent
    assert json.loads(_run("eval", tiny_onnx, "--data", folder, "--part", "all", "--json").stdout)["examples"] == 29
    benched = _run("bench", tiny_onnx, "--eval", "--part", "all", "--data", file, "--iterations", "2", "--json")
    assert json.loads(benched.stdout)["accuracy"][str(tiny_onnx)]["examples"] == 37
    broken = tmp_path / "broken.tsv"
    broken.write_text(file.read_text() + "38\tonly a question\n")
    _one_line_error(_run("eval", tiny_onnx, "--data", broken, "--part", "all"), "broken.tsv")
    _one_line_error(_run("eval", tiny_onnx, "--data", file, "--part", "everything"), "--part")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["calibrate"], ["Missing argument", "qtool calibrate --help"]),
        (["calibrate", "x.onnx", "--bogus"], ["No such option: --bogus", "qtool calibrate --help"]),
        (["bogus"], ["No such command", "qtool --help"]),
        (["calibrate", "x.onnx", "--p", "abc"], ["--p", "qtool calibrate --help"]),
    ],
)
def test_usage_errors_are_one_line(args, fragments):
    result = _run(*args)
    _one_line_error(result, *fragments)
    assert "╭" not in result.output


def test_no_arguments_show_the_help():
    result = _run()
    assert result.exit_code == 0 and "calibrate" in result.stdout


def test_method_options_belong_to_their_method(tiny_onnx, session_data):
    _one_line_error(_run("calibrate", tiny_onnx, "--method", "max", "--p", "99"), "--p is an option of --method percentile")
    _one_line_error(_run("calibrate", tiny_onnx, "--method", "bogus"), "max, percentile, peg, entropy, mse, auto")


def test_calibrate_prints_accuracy_in_percent_and_quantize_has_json(tmp_path, tiny_onnx, session_data):
    result = _run("calibrate", tiny_onnx, "--method", "max", "--data", session_data, "--limit", 32, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert " %" in next(line for line in result.stdout.splitlines() if "QDQ accuracy" in line)
    result = _run("quantize", tiny_onnx, tmp_path / "max-all.calib.json", "-o", tmp_path / "again.qdq.onnx", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["qdq_graph"] == str(tmp_path / "again.qdq.onnx")
    assert (tmp_path / "again.qdq.onnx").read_bytes() == (tmp_path / "max-all.qdq.onnx").read_bytes()


@pytest.mark.parametrize("args", [["--help"], ["calibrate", "--help"], ["build", "--help"], ["calibrate"]])
def test_help_and_usage_errors_load_no_heavy_library(args):
    """`qtool --help` answers at once: onnx (ml_dtypes), numpy, torch, transformers and onnxruntime stay unloaded."""
    code = (
        "import sys\n"
        f"sys.argv = ['qtool', *{args!r}]\n"
        "from qtool.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "from qtool.deferred_imports import DeferredModule\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'ml_dtypes') if m in sys.modules]\n"
        "heavy += [m for m in ('onnx', 'numpy') if not isinstance(sys.modules.get(m), DeferredModule)]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in done.stderr, done.stderr[-2000:]


def test_a_command_run_with_its_libraries_deferred_writes_what_an_imported_one_does(tmp_path, tiny_onnx, session_data):
    """The console script defers numpy and onnx until first use; torch, onnxruntime and the
    tokenizer then load them under the stand-ins, and the calibration files are the same bytes."""
    here, there = tmp_path / "in-process", tmp_path / "console-script"
    args = ["calibrate", str(tiny_onnx), "--method", "max", "--data", str(session_data), "--limit", "32", "--out"]
    assert _run(*args, here).exit_code == 0
    done = subprocess.run(
        [sys.executable, "-m", "qtool.cli", *args, str(there)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    written = sorted(p.name for p in here.iterdir())
    assert written == sorted(p.name for p in there.iterdir()) and "max-all.calib.json" in written
    for name in ("max-all.calib.json", "max-all.qdq.onnx"):
        assert (here / name).read_bytes() == (there / name).read_bytes(), name


def test_a_deferred_module_loads_on_first_use():
    code = (
        "import sys\nfrom qtool.deferred_imports import DeferredModule, defer_imports\n"
        "sys.modules.pop('colorsys', None)\ndefer_imports(('colorsys',))\nimport colorsys\n"
        "assert isinstance(colorsys, DeferredModule) and 'rgb_to_hsv' not in vars(colorsys)\n"
        "assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)\n"
        "assert not isinstance(sys.modules['colorsys'], DeferredModule)\nprint('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_command_runs_with_its_libraries_loaded_in_their_usual_order(tmp_path):
    """Stand-ins end when a command starts: onnxruntime imported under a numpy stand-in left numpy's
    core half-visible and `import scipy.linalg` (NNCF's first import) failed."""
    code = (
        "import sys\n"
        f"sys.argv = ['qtool', 'eval', {str(tmp_path / 'missing.onnx')!r}]\n"
        "from qtool.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert exit.code == 2, exit.code\n"
        "from qtool.deferred_imports import DeferredModule\n"
        "assert not any(isinstance(sys.modules.get(m), DeferredModule) for m in ('onnx', 'numpy'))\n"
        "import onnxruntime\nimport scipy.linalg\nprint('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
