"""Shared fixtures: synthetic GLUE TSVs, tiny BERT classifiers built in code, the shared QNLI data.

The builders live in `tests/helpers/models.py`; import them from there, never from this file."""

from __future__ import annotations

import os
from pathlib import Path


def _share_the_cpus_between_workers() -> None:
    """Under pytest-xdist (`make test`: a worker per CPU, at most 4), each worker keeps its own share of
    the CPUs, before any library starts a thread pool, so that ONNX Runtime's pools (sized by the CPUs
    a process may use) do not spin against each other's on the same cores."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    index = int(worker.removeprefix("gw")) % count
    os.sched_setaffinity(0, cpus[index::count] if count <= len(cpus) else [cpus[index % len(cpus)]])


_share_the_cpus_between_workers()

import pytest  # noqa: E402 (after the CPUs are shared out)

from tests.helpers.cpu import cpu_branch  # noqa: E402, F401 (a fixture for every test)
from tests.helpers.models import (  # noqa: E402
    build_bert_classifier,
    export_tiny,
    outlier_classifier,
    relabel_by_fp32,
    write_glue_tsv,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_QNLI = Path(os.environ.get("QTOOL_DATA", REPO.parent / "shared" / "data" / "QNLI"))


os.environ.setdefault("QTOOL_PROGRESS", "0")
# OpenVINO's model conversion and NNCF send usage telemetry unless CI is "true" (openvino_telemetry's
# `disable_in_ci`); a test run sends nothing, and offline each conversion would wait about a second on it.
# (CI also makes pytest print whole assertion diffs and transformers' logger propagate to the root.)
os.environ["CI"] = "true"


def pytest_report_header(config) -> list[str]:
    """The CPU and the integer kernels `--int8-kernels auto` picks on it: several tests assert per CPU."""
    import onnxruntime

    from tests.helpers.cpu import CPU, HERE

    return [f"cpu: {CPU}", f"onnxruntime {onnxruntime.__version__} int8 kernels: {HERE[0]} ({HERE[1]})"]


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    folder = tmp_path / "qnli"
    write_glue_tsv(folder / "dev.tsv", rows=240)
    return folder


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from qtool.models.resolve import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(None).path)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, embedded_tokenizer) -> Path:
    return build_bert_classifier(tmp_path_factory.mktemp("tiny-bert"), embedded_tokenizer, layers=2, hidden=32, heads=4)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory, embedded_tokenizer) -> Path:
    """A headless tiny BERT, as a pretrained encoder that needs fine-tuning."""
    return build_bert_classifier(
        tmp_path_factory.mktemp("tiny-encoder"), embedded_tokenizer, layers=2, hidden=32, heads=4, head=False
    )


@pytest.fixture(scope="session")
def shared_qnli() -> Path:
    if not (SHARED_QNLI / "dev.tsv").is_file():
        pytest.skip(f"shared QNLI data not found at {SHARED_QNLI}")
    return SHARED_QNLI


@pytest.fixture(scope="session")
def session_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("qnli-session")
    write_glue_tsv(folder / "dev.tsv", rows=400, seed=7)
    return folder


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_classifier, session_data) -> Path:
    return export_tiny(tiny_classifier, session_data, tmp_path_factory.mktemp("tiny-onnx") / "fp32.onnx")


@pytest.fixture(scope="session")
def scaled_model(tmp_path_factory, embedded_tokenizer, session_data):
    """Weights large enough that quantization visibly changes the logits, and an outlier channel."""
    return outlier_classifier(
        tmp_path_factory, embedded_tokenizer, session_data, weight_scale=8.0, outlier=30.0, seed=3, name="scaled"
    )


@pytest.fixture(scope="session")
def relabelled(scaled_model):
    """The scaled model's split relabelled by FP32's predictions (FP32 scores 100 %), and its tokenizer."""
    from qtool.models.resolve import load_tokenizer

    tokenizer = load_tokenizer(scaled_model["graph"].parent / "tokenizer")
    return relabel_by_fp32(scaled_model["graph"], scaled_model["split"], tokenizer), tokenizer
