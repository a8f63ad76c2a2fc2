"""The one cached-stage helper: a stage's result is reused when its content key matches.

A stage writes a record, a JSON file holding `{"key": ..., "result": ...}` and, when the stage
also writes a file (`artifact`), that file's sha256. The key holds everything the result depends
on (content hashes of the inputs, the options that change it), never paths, so a rerun, a resumed
run and a run from another folder reuse the same files; callers re-point paths in the result.
A record that is missing, unreadable, or keyed otherwise, or an artifact that changed since, means
the stage runs again. A record is written only after its stage succeeded, with the sha256 of the
artifact it saw written; a stage that fails or is interrupted leaves the previous record and
artifact as they were (an artifact that changed anyway no longer matches its record's hash).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtool.fileio import sha256_file, write_json

log = logging.getLogger(__name__)


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
) -> Any:
    """`run()`'s result, or the recorded one when `record` holds `key` (and `artifact` is unchanged).

    `run` writes `artifact` itself (atomically) and returns a JSON-serialisable result.
    """
    record = Path(record)
    artifact = Path(artifact) if artifact is not None else None
    data = None if force else read_record(record, key)
    if _fresh(data, artifact):
        log.info("reusing %s", description or artifact or record)
        return data["result"]
    result = run()
    entry = {"key": key, "result": result}
    if artifact is not None and artifact.is_file():
        entry["artifact_sha256"] = _artifact_hash(artifact)
    write_json(record, entry)
    return result
