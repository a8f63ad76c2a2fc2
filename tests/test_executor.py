"""The executor seam: local and Ray runs of the same tasks, and of the study, give the same files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qtool.cli import app
from qtool.errors import QtoolError
from qtool.executor import ExecutorConfig, run_tasks
from tests.helpers.ray_tasks import die_once, refuse, square

ray = pytest.importorskip("ray")
runner = CliRunner()


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray cluster on this machine for the module (2 CPUs: one task at a time by default)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_runs_tasks_in_order_retries_a_dead_worker_and_passes_errors_on(local_ray, tmp_path):
    tasks = [(value,) for value in range(5)]
    local = run_tasks(square, tasks, ExecutorConfig(), "squares")
    distributed = run_tasks(square, tasks, ExecutorConfig(kind="ray", cpus_per_task=1), "squares")
    assert [r["value"] for r in distributed] == [r["value"] for r in local] == [0, 1, 4, 9, 16]
    assert {r["pid"] for r in distributed}.isdisjoint({r["pid"] for r in local})  # really elsewhere
    # A worker killed mid-task: the task runs again on another worker and the run completes.
    marker = tmp_path / "died"
    assert run_tasks(die_once, [(str(marker), 7)], ExecutorConfig(kind="ray"), "dying")[0]["value"] == 7
    assert marker.read_text() == "died once"
    with pytest.raises(QtoolError, match="^task 3 refused on purpose$"):
        run_tasks(refuse, [(3,)], ExecutorConfig(kind="ray"), "refusing")


def test_ray_missing_is_a_one_line_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_ray)
    with pytest.raises(QtoolError, match=r"pip install 'qtool\[ray\]'"):
        run_tasks(square, [(1,)], ExecutorConfig(kind="ray"), "squares")


def _files(artifacts: Path, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(artifacts.glob(f"*/{pattern}"))}


def test_reproduce_on_ray_gives_the_local_files(local_ray, tmp_path, tiny_data, tiny_classifier, monkeypatch):
    """Accuracies, calibration files (search included) and QDQ graphs of a Ray run equal a local run's."""
    from qtool.stages import backend_rows

    monkeypatch.setattr(backend_rows, "ROW_BACKENDS", {})  # OpenVINO's rows run in the driver either way
    common = ["reproduce", "--model", str(tiny_classifier), "--data", str(tiny_data), "--samples", "16", "--iterations", "5", "--json"]
    configurations = ["-c", "max-all", "-c", "peg-k2-all", "-c", "ort-dynamic", "-c", "max-all-mp-auto0.5"]
    results = {}
    for kind in ("local", "ray"):
        artifacts = tmp_path / kind
        done = runner.invoke(app, [*common, *configurations, "--artifacts", str(artifacts), "--executor", kind])
        assert done.exit_code == 0, done.output
        results[kind] = json.loads(done.stdout)
    accuracies = {
        kind: [(r["configuration"], r["correct"]) for r in result["results"]] for kind, result in results.items()
    }
    assert accuracies["ray"] == accuracies["local"] and len(accuracies["local"]) == 5
    searched = {kind: result["results"][-1]["search"] for kind, result in results.items()}
    assert (
        searched["ray"]["chosen"] == searched["local"]["chosen"]
        and searched["ray"]["curve"] == searched["local"]["curve"]
    )
    for pattern in ("*.calib.json", "*.qdq.onnx"):
        local, distributed = _files(tmp_path / "local", pattern), _files(tmp_path / "ray", pattern)
        assert local and distributed == local, pattern
    # The study's search fanned its own evaluations out (their tasks read the calibration written beside its cache).
    base = "*.search-cache.base.json"
    assert _files(tmp_path / "ray", base) and not _files(tmp_path / "local", base)


def test_search_on_ray_chooses_the_local_set_with_the_local_curve(local_ray, scaled_model, relabelled, tmp_path):
    """Sensitivities in chunks of points, the curve and pruning in speculative batches 2 wide (2 CPUs, 1 per
    task): the same choice, curve and pruning as the local search, and one cache file serves both."""
    from qtool.quantization.calibration import CalibrateConfig, calibrate
    from qtool.quantization.search import SearchConfig, search_precision

    document = calibrate(scaled_model["stats"], CalibrateConfig(method="max"))
    split, tokenizer = relabelled
    config = SearchConfig(max_drop=3.0, tune_samples=120, sensitivity_samples=48, batch_size=16)
    args = (scaled_model["graph"], scaled_model["stats"], document, split, tokenizer, config)
    on_ray = ExecutorConfig(kind="ray", cpus_per_task=1)
    local = search_precision(*args, tmp_path / "local.json")
    distributed = search_precision(*args, tmp_path / "ray.json", on_ray)
    for key in ("chosen", "curve", "pruning", "sensitivity", "tuning_accuracy", "within_budget"):
        assert distributed[key] == local[key], key
    assert local["chosen"] and any(p["within"] for p in local["pruning"])  # a pruning that changes the set
    assert distributed["evaluations"] >= local["evaluations"] > 0
    assert not list(tmp_path.glob("*.tmp"))  # every write atomic, nothing half-written left
    assert search_precision(*args, tmp_path / "ray.json")["evaluations"] == 0  # local reuses Ray's cache
    again = search_precision(*args, tmp_path / "local.json", on_ray)  # Ray reuses the local cache
    assert again["evaluations"] == distributed["evaluations"] - local["evaluations"]
    assert again["chosen"] == local["chosen"] and again["curve"] == local["curve"]


def test_calibrate_auto_on_ray_writes_the_local_files(local_ray, scaled_model, session_data, tmp_path):
    stats = scaled_model["stats"].save(tmp_path / "stats.npz")
    args = ["calibrate", str(scaled_model["graph"]), "--method", "auto", "--max-drop", "5", "--tune-samples", "60",
            "--sensitivity-samples", "24", "--no-eval", "--json", "--data", str(session_data), "--stats", str(stats)]
    for kind, extra in (("local", []), ("ray", ["--executor", "ray", "--cpus-per-task", "1"])):
        done = runner.invoke(app, [*args, "--out", str(tmp_path / kind), *extra])
        assert done.exit_code == 0, done.output
    for name in ("max-all-mp-auto5.calib.json", "max-all-mp-auto5.qdq.onnx"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    refused = runner.invoke(app, [*args[:2], "--executor", "ray", "--no-eval", "--data", str(session_data)])
    assert refused.exit_code == 2 and "--method auto" in refused.stderr
