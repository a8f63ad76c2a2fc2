"""The one cached-stage helper: reuse on the same key and artifact, run again on anything else."""

from __future__ import annotations

import json

import pytest

from qtool.cache import cached_stage, read_record


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
