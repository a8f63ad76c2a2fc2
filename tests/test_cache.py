"""The one cached-stage helper: reuse on the same key and artifact, run again on anything else."""

from __future__ import annotations

import json

import pytest

from qtool import cache
from qtool.cache import cached_stage, read_record, recording_stage_times, timed_stage


def _stage(artifact, calls):
    def run():
        calls.append(1)
        artifact.write_text(f"made {len(calls)}")
        return {"made": len(calls)}

    return run


def test_same_key_and_artifact_reuse_the_result(tmp_path):
    artifact, record, calls = tmp_path / "out.txt", tmp_path / "out.txt.manifest.json", []
    assert cached_stage(record, {"a": 1}, _stage(artifact, calls), artifact=artifact) == {"made": 1}
    assert cached_stage(record, {"a": 1}, _stage(artifact, calls), artifact=artifact) == {"made": 1}
    assert len(calls) == 1
    assert read_record(record, {"a": 1})["result"] == {"made": 1}
    assert read_record(record, {"a": 2}) is None


@pytest.mark.parametrize("change", ["key", "artifact", "missing artifact", "corrupt record", "force"])
def test_anything_else_runs_the_stage_again(tmp_path, change):
    artifact, record, calls = tmp_path / "out.txt", tmp_path / "out.txt.manifest.json", []
    cached_stage(record, {"a": 1}, _stage(artifact, calls), artifact=artifact)
    key, force = {"a": 1}, False
    if change == "key":
        key = {"a": 2}
    elif change == "artifact":
        artifact.write_text("edited by hand")
    elif change == "missing artifact":
        artifact.unlink()
    elif change == "corrupt record":
        record.write_text("{not json")
    else:
        force = True
    assert cached_stage(record, key, _stage(artifact, calls), artifact=artifact, force=force) == {"made": 2}
    assert json.loads(record.read_text())["key"] == key


def test_a_record_without_an_artifact_holds_the_result_alone(tmp_path):
    record, calls = tmp_path / "result.json", []
    for _ in range(2):
        assert cached_stage(record, "k", lambda: calls.append(1) or {"n": len(calls)}) == {"n": 1}
    assert json.loads(record.read_text()) == {"key": "k", "result": {"n": 1}}


def test_a_failed_run_keeps_the_previous_record_and_artifact(tmp_path):
    artifact, record, calls = tmp_path / "out.txt", tmp_path / "out.txt.manifest.json", []
    cached_stage(record, {"a": 1}, _stage(artifact, calls), artifact=artifact)

    def failing():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_stage(record, {"a": 2}, failing, artifact=artifact)
    assert cached_stage(record, {"a": 1}, _stage(artifact, calls), artifact=artifact) == {"made": 1}
    assert len(calls) == 1


def test_named_stages_record_their_time_once_and_nested_time_apart(tmp_path, monkeypatch):
    """Inside a recording, each named stage adds its own seconds (a nested stage's are not counted twice);
    a reused record reports what it took when it was computed, and nothing is recorded outside one."""
    clock = iter([0.0, 1.0, 1.0, 4.0, 4.0, 7.0, 7.0, 10.0, 10.0, 11.0, 50.0, 50.5, 60.0, 60.0])
    monkeypatch.setattr(cache.time, "perf_counter", lambda: next(clock))

    def outer() -> dict:
        cached_stage(tmp_path / "inner.json", {"k": 1}, lambda: {"inner": True}, stage="inner")
        return {"outer": True}

    with recording_stage_times() as times:
        with timed_stage("outer block"):
            cached_stage(tmp_path / "outer.json", {"k": 2}, outer, stage="outer")
    assert [(t["stage"], t["seconds"], t["reused"]) for t in times] == [
        ("inner", 3.0, False),
        ("outer", 6.0, False),  # 9 s less the inner stage's 3 s
        ("outer block", 2.0, False),  # 11 s less the outer stage's 9 s
    ]
    assert json.loads((tmp_path / "inner.json").read_text())["seconds"] == 3.0
    with recording_stage_times() as again:
        cached_stage(tmp_path / "inner.json", {"k": 1}, lambda: pytest.fail("reused"), stage="inner")
    assert again[0]["reused"] and again[0]["computed_seconds"] == 3.0 and again[0]["seconds"] == 0.5
    cached_stage(tmp_path / "inner.json", {"k": 1}, lambda: pytest.fail("reused"), stage="inner")  # no recording
