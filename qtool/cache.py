"""The one cached-stage helper: a stage's result is reused when its content key matches.

A stage writes a record, a JSON file holding `{"key": ..., "result": ...}` and, when the stage
also writes a file (`artifact`), that file's sha256. The key holds everything the result depends
on (content hashes of the inputs, the options that change it), never paths, so a rerun, a resumed
run and a run from another folder reuse the same files; callers re-point paths in the result.
A record that is missing, unreadable, or keyed otherwise, or an artifact that changed since, means
the stage runs again. A record is written only after its stage succeeded, with the sha256 of the
artifact it saw written; a stage that fails or is interrupted leaves the previous record and
artifact as they were (an artifact that changed anyway no longer matches its record's hash).

A stage named with `stage=` also keeps its wall time in the record, and inside
`recording_stage_times()` every named stage (and every `timed_stage` block) adds an entry to the
recording: its seconds in this run, excluding named stages nested in it, and for a reused record the
seconds it took when it was computed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from qtool.fileio import sha256_file, write_json

log = logging.getLogger(__name__)

_recording: ContextVar[list[dict] | None] = ContextVar("qtool_stage_times", default=None)
_open_stages: ContextVar[tuple[list[float], ...]] = ContextVar("qtool_open_stages", default=())


@contextmanager
def recording_stage_times() -> Iterator[list[dict]]:
    """Collect the named stages that run inside the block: `{"stage", "seconds", "reused",
    "computed_seconds"}` each, `seconds` being this run's wall time less that of stages nested in it."""
    entries: list[dict] = []
    token, open_token = _recording.set(entries), _open_stages.set(())
    try:
        yield entries
    finally:
        _recording.reset(token)
        _open_stages.reset(open_token)


def _note(stage: str, seconds: float, reused: bool, computed_seconds: float | None) -> None:
    entries = _recording.get()
    if entries is not None:
        seconds = round(seconds, 3)
        entries.append({"stage": stage, "seconds": seconds, "reused": reused, "computed_seconds": computed_seconds})


@contextmanager
def timed_stage(stage: str) -> Iterator[None]:
    """Time the block as `stage` in the current recording (nothing outside one), less the named stages
    nested in it."""
    nested = [0.0]
    parents = _open_stages.get()
    token = _open_stages.set((*parents, nested))
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        _open_stages.reset(token)
        if parents:
            parents[-1][0] += elapsed
        _note(stage, elapsed - nested[0], False, round(elapsed - nested[0], 3))


def read_record(record: Path, key: Any) -> dict | None:
    """The record at `record` if it exists, is readable JSON and holds exactly `key`; else None."""
    record = Path(record)
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        log.debug("%s is unreadable; the stage runs again", record)
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    return data


def _artifact_hash(artifact: Path) -> str | None:
    return sha256_file(artifact) if artifact.is_file() else None


def _fresh(data: dict | None, artifact: Path | None) -> bool:
    if data is None:
        return False
    if artifact is None:
        return True
    return artifact.is_file() and data.get("artifact_sha256") == _artifact_hash(artifact)


def cached_stage(
    record: Path,
    key: Any,
    run: Callable[[], Any],
    *,
    artifact: Path | None = None,
    force: bool = False,
    description: str | None = None,
    stage: str | None = None,
) -> Any:
    """`run()`'s result, or the recorded one when `record` holds `key` (and `artifact` is unchanged).

    `run` writes `artifact` itself (atomically) and returns a JSON-serialisable result. A `stage`
    name times it (see the module docstring).
    """
    started = time.perf_counter()
    record = Path(record)
    artifact = Path(artifact) if artifact is not None else None
    data = None if force else read_record(record, key)
    if _fresh(data, artifact):
        log.info("reusing %s", description or artifact or record)
        if stage:
            _note(stage, time.perf_counter() - started, True, data.get("seconds"))
        return data["result"]
    with timed_stage(stage) if stage else nullcontext():
        result = run()
    entry = {"key": key, "result": result}
    if stage:
        entry["seconds"] = round(time.perf_counter() - started, 3)
    if artifact is not None and artifact.is_file():
        entry["artifact_sha256"] = _artifact_hash(artifact)
    write_json(record, entry)
    return result
