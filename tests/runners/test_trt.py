"""TensorRT runner: feed shapes, plan manifests and compatibility run everywhere; engines need a GPU.

Without a GPU, the runner (and the build that makes its plans) runs against the fake TensorRT and polygraphy
in `tests.helpers.fake_tensorrt`. Tests marked `gpu`/`tensorrt` build and run real engines and skip cleanly
where TensorRT or a CUDA device is absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from qtool.data.batching import INPUT_NAMES
from qtool.deployment.trt_build import TrtBuildConfig, build_engine
from qtool.errors import QtoolError
from qtool.fileio import manifest_path, sha256_file, write_json
from qtool.runners import device
from qtool.runners.device import GpuInfo
from qtool.runners.trt import (
    TrtRunner,
    check_feed_shape,
    check_plan_compatibility,
    import_tensorrt,
    read_plan_manifest,
)
from tests.helpers.fake_tensorrt import (
    BUILD_GPU,
    FAKE_DEVICE_MEMORY,
    TRT_VERSION,
    FakeCudart,
    engine_manifest,
    fake_installer,
    fake_tensorrt,
    skip_without_tensorrt_gpu,
    write_tiny_graph,
)

# --- feed shapes ----------------------------------------------------------------------------------


def test_feed_shapes_must_lie_inside_the_profile():
    profile = ((1, 1), (1, 128), (32, 128))
    check_feed_shape("input_ids", (32, 128), profile)
    check_feed_shape("input_ids", (1, 1), profile)
    for shape in [(33, 10), (2, 129), (0, 5), (4,)]:
        with pytest.raises(QtoolError, match=r"input_ids has shape .* engine accepts \[1, 1\] to \[32, 128\]"):
            check_feed_shape("input_ids", shape, profile)


# --- TensorRT missing or unusable -----------------------------------------------------------------


@pytest.fixture
def tiny_graph(tmp_path: Path) -> Path:
    return write_tiny_graph(tmp_path / "model" / "int8.qdq.onnx")


def test_missing_tensorrt_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(QtoolError, match=r"^TensorRT is not installed; pip install 'qtool\[trt\]'"):
        import_tensorrt()


def test_broken_tensorrt_install_is_one_line(monkeypatch):
    class BrokenLibraries:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorrt":
                raise ImportError("libnvinfer.so.10: cannot open shared object file:\nNo such file or directory")

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(sys, "meta_path", [BrokenLibraries(), *sys.meta_path])
    with pytest.raises(QtoolError) as raised:
        import_tensorrt()
    assert "cannot be loaded (libnvinfer.so.10" in str(raised.value) and "\n" not in str(raised.value)


def test_old_tensorrt_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version="8.6.1"))
    with pytest.raises(QtoolError, match="TensorRT 8.6.1 is too old; qtool needs TensorRT 10"):
        import_tensorrt()


def test_build_and_run_without_tensorrt_fail_cleanly(monkeypatch, tiny_graph, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    plan = tmp_path / "engine.plan"
    with pytest.raises(QtoolError, match="TensorRT is not installed"):
        build_engine(tiny_graph, plan)
    assert not plan.exists() and not manifest_path(plan).exists()
    plan.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(QtoolError, match="TensorRT is not installed"), TrtRunner(plan):
        pass


# --- plan files, manifests and compatibility ------------------------------------------------------


def test_compatible_plan_passes_without_warnings():
    assert check_plan_compatibility(engine_manifest(), TRT_VERSION, BUILD_GPU) == []


def test_other_tensorrt_version_names_both():
    with pytest.raises(QtoolError) as raised:
        check_plan_compatibility(engine_manifest(), "10.3.0", BUILD_GPU)
    message = str(raised.value)
    assert "int8.plan was built with TensorRT 10.16.1.11 but this machine has TensorRT 10.3.0" in message
    assert "rebuild" in message and "\n" not in message


def test_other_gpu_architecture_names_both():
    here = GpuInfo(compute_capability="7.5", name="Tesla T4")
    with pytest.raises(QtoolError) as raised:
        check_plan_compatibility(engine_manifest(), TRT_VERSION, here)
    message = str(raised.value)
    assert "NVIDIA A10 (compute capability 8.6)" in message and "Tesla T4 (compute capability 7.5)" in message


def test_same_architecture_other_board_only_warns():
    here = GpuInfo(compute_capability="8.6", name="NVIDIA RTX A4000")
    (warning,) = check_plan_compatibility(engine_manifest(), TRT_VERSION, here)
    assert "NVIDIA A10" in warning and "NVIDIA RTX A4000" in warning


def test_no_gpu_here_or_unrecorded_facts():
    with pytest.raises(QtoolError, match=r"needs a CUDA GPU \(NVIDIA A10 \(compute capability 8.6\)\) but none"):
        check_plan_compatibility(engine_manifest(), TRT_VERSION, None)
    warnings = check_plan_compatibility(engine_manifest(tensorrt_version=None, gpu=None), TRT_VERSION, BUILD_GPU)
    assert len(warnings) == 2


def test_plan_files_that_are_not_engines(tmp_path, tiny_graph):
    with pytest.raises(QtoolError, match="does not exist; build the engine first"):
        read_plan_manifest(tmp_path / "missing.plan")
    with pytest.raises(QtoolError, match="is not a TensorRT engine but an ONNX model"):
        read_plan_manifest(tiny_graph)
    empty = tmp_path / "empty.plan"
    empty.touch()
    with pytest.raises(QtoolError, match=r"is not a TensorRT engine \(the file is empty\)"):
        read_plan_manifest(empty)
    foreign = tmp_path / "model.bin"
    foreign.write_bytes(b"\x08\x07 not an engine")
    write_json(manifest_path(foreign), {"onnx": "model.bin", "opset": 17})
    with pytest.raises(QtoolError, match=r"model.bin is not a TensorRT engine \(its manifest"):
        read_plan_manifest(foreign)


def test_plan_manifest_is_read_and_tied_to_the_plan(tmp_path):
    plan = tmp_path / "int8.plan"
    plan.write_bytes(b"engine bytes")
    assert read_plan_manifest(plan) is None
    write_json(manifest_path(plan), engine_manifest(plan_sha256=sha256_file(plan)))
    assert read_plan_manifest(plan)["tensorrt_version"] == TRT_VERSION
    plan.write_bytes(b"another engine")
    with pytest.raises(QtoolError, match="changed after its manifest"):
        read_plan_manifest(plan)


def test_gpu_info_round_trips_through_manifests():
    assert GpuInfo.from_manifest(BUILD_GPU.to_manifest()) == BUILD_GPU
    assert GpuInfo.from_manifest(None) is None and GpuInfo.from_manifest({"name": "x"}) is None
    assert GpuInfo("9.0").describe() == "a GPU of compute capability 9.0"


def test_no_cuda_runtime_means_no_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "polygraphy", None)
    assert device.current_gpu() is None


# --- running against the fake TensorRT ------------------------------------------------------------


@pytest.fixture
def use_fake(monkeypatch):
    """Install a fake TensorRT (and polygraphy) and a fixed current GPU; returns a function to swap TRT."""
    return fake_installer(monkeypatch)


def test_runner_binds_casts_and_frees_buffers(use_fake, tiny_graph, tmp_path):
    use_fake()
    plan = tmp_path / "int8.plan"
    build_engine(tiny_graph, plan, TrtBuildConfig(batch=(1, 2, 4), sequence=(1, 8, 16)))
    rng = np.random.default_rng(0)
    with TrtRunner(plan) as runner:
        assert runner.input_names() == list(INPUT_NAMES) and runner.device_memory_bytes == 12345
        assert runner.manifest["plan_sha256"] == sha256_file(plan)
        for batch, sequence in [(1, 1), (4, 16), (3, 7), (4, 16)]:
            feeds = {name: rng.integers(0, 50, (batch, sequence)).astype(np.int32) for name in INPUT_NAMES}
            logits = runner.infer(feeds)["logits"]
            assert logits.shape == (batch, 2) and logits.dtype == np.float32
            np.testing.assert_array_equal(logits[:, 0], feeds["input_ids"].sum(axis=1))
            np.testing.assert_array_equal(logits[:, 1], feeds["attention_mask"].sum(axis=1))
        too_long = {name: np.ones((1, 17), np.int64) for name in INPUT_NAMES}
        with pytest.raises(QtoolError, match=r"input_ids has shape \[1, 17\] but the engine accepts"):
            runner.infer(too_long)
    assert FAKE_DEVICE_MEMORY == {}


def test_runner_refuses_random_bytes(use_fake, tmp_path):
    use_fake()
    plan = tmp_path / "random.plan"
    plan.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(QtoolError) as raised, TrtRunner(plan):
        pass
    message = str(raised.value)
    assert message.startswith(f"{plan} is not a TensorRT engine") and "magicTagRead" in message
    assert FAKE_DEVICE_MEMORY == {}


def test_runner_refuses_plans_from_another_tensorrt_or_gpu(use_fake, tiny_graph, tmp_path):
    use_fake()
    plan = tmp_path / "int8.plan"
    build_engine(tiny_graph, plan)
    use_fake(fake_tensorrt(version="10.3.0.26"))
    with pytest.raises(QtoolError, match="built with TensorRT 10.16.1.11 but this machine has TensorRT 10.3.0.26"):
        with TrtRunner(plan):
            pass
    use_fake(gpu=GpuInfo(compute_capability="8.9", name="NVIDIA L4"))
    with pytest.raises(QtoolError, match=r"built for NVIDIA A10 .* this machine has NVIDIA L4"), TrtRunner(plan):
        pass


def test_a_failing_cuda_call_is_one_line_and_frees_what_was_taken(use_fake, tiny_graph, tmp_path):
    use_fake()
    plan = tmp_path / "int8.plan"
    build_engine(tiny_graph, plan)
    feeds = {name: np.ones((2, 8), np.int64) for name in INPUT_NAMES}
    for call, status, words in [("cudaMalloc", 2, "CUDA cudaMalloc failed: out of memory (2)"),
                                ("cudaStreamSynchronize", 999, "CUDA cudaStreamSynchronize failed: unknown error")]:
        use_fake(cudart=FakeCudart(fail={call: status}))
        with pytest.raises(QtoolError) as raised, TrtRunner(plan) as runner:
            runner.infer(feeds)
        assert raised.value.cli_message.startswith(words) and "\n" not in raised.value.cli_message
        assert FAKE_DEVICE_MEMORY == {}
    use_fake(cudart=FakeCudart())
    with TrtRunner(plan) as runner:  # the same engine with a working runtime
        assert runner.infer(feeds)["logits"][:, 0].tolist() == [8.0, 8.0]


# --- real engines: need TensorRT and a CUDA GPU ---------------------------------------------------


@pytest.mark.gpu
@pytest.mark.tensorrt
@skip_without_tensorrt_gpu
def test_gpu_runner_refuses_a_plan_for_another_tensorrt(tiny_onnx, tmp_path):
    plan = tmp_path / "fp32.plan"
    manifest = build_engine(tiny_onnx, plan, TrtBuildConfig(batch=(1, 1, 2), sequence=(1, 16, 16)))
    write_json(manifest_path(plan), {**manifest, "tensorrt_version": "10.0.0.0"})
    expected = f"built with TensorRT 10.0.0.0 but this machine has TensorRT {manifest['tensorrt_version']}"
    with pytest.raises(QtoolError, match=expected), TrtRunner(plan):
        pass


def test_an_engine_reads_its_logits_in_the_label_order_of_the_graph_it_was_built_from(use_fake, tmp_path):
    """A checkpoint whose labels are in another order than the data's: the engine's build manifest keeps
    the graph's labels, so its logits are mapped by name as the graph's are (they were read in identity
    order)."""
    import json

    import onnx

    from qtool.deployment.evaluate import logit_to_label

    use_fake()
    graph = write_tiny_graph(tmp_path / "model.onnx")
    model = onnx.load(str(graph))
    for prop in model.metadata_props:
        if prop.key == "qtool.labels":
            prop.value = json.dumps(["not_entailment", "entailment"])
    onnx.save(model, str(graph))
    plan = tmp_path / "model.plan"
    build_engine(graph, plan)
    assert logit_to_label(plan, ("entailment", "not_entailment")).tolist() == [1, 0]
    assert logit_to_label(graph, ("entailment", "not_entailment")).tolist() == [1, 0]


def test_timing_is_end_to_end_from_pinned_memory_and_gpu_only_between_events(use_fake, tiny_graph, tmp_path):
    """`timed`: the feeds staged once in page-locked memory, then per call copies in, the engine between two
    CUDA events, copies out, one synchronize; the benchmark keeps both times (`latency.device`)."""
    from qtool.deployment.bench import BenchConfig, run_benchmark
    from tests.helpers.fake_tensorrt import FAKE_PINNED_MEMORY

    use_fake()
    plan = tmp_path / "int8.plan"
    build_engine(tiny_graph, plan)
    feeds = {name: np.full((2, 8), 3, np.int64) for name in INPUT_NAMES}
    with TrtRunner(plan) as runner:
        host, device_seconds = runner.timed(feeds)
        assert host > 0 and device_seconds == pytest.approx(0.0005)  # the fake's events are 0.5 ms apart
        assert len(FAKE_PINNED_MEMORY) == len(INPUT_NAMES) + 1  # inputs and logits, staged once
        staged = runner._staged
        runner.timed(feeds)
        assert runner._staged is staged and staged[2][0][1][:, 0].tolist() == [24.0, 24.0]  # logits copied back
        assert runner.infer(feeds)["logits"][:, 1].tolist() == [24.0, 24.0] and FAKE_PINNED_MEMORY == {}
    assert FAKE_DEVICE_MEMORY == {} and FAKE_PINNED_MEMORY == {}

    result = run_benchmark(lambda: TrtRunner(plan), feeds, BenchConfig(warmup=2, iterations=5))
    assert result["latency"]["iterations"] == 5 and result["latency"]["device"]["p50_ms"] == pytest.approx(0.5)
