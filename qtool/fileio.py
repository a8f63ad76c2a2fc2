"""Atomic writes, stable JSON and content hashes shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    if target.is_dir():
        from qtool.errors import QtoolError

        raise QtoolError(f"{target} is a folder; give the path of a file to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        from qtool.errors import QtoolError

        raise QtoolError(
            f"cannot write {target} ({exc.strerror or exc}); choose a path in a folder you can write to"
        ) from None
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; it replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def dumps_stable(data: Any) -> str:
    """JSON text that is byte-identical for equal data: sorted keys, fixed indentation, newline."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_text(path: Path, text: str) -> Path:
    """Write UTF-8 text atomically (a temporary file renamed into place)."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, dumps_stable(data))


def distinct_output(target: Path, *inputs: Path | None) -> Path:
    """`target`, refused when it is one of the files a command reads (writing it would destroy that input)."""
    from qtool.errors import QtoolError

    target = Path(target)
    for source in inputs:
        if source is not None and target.resolve() == Path(source).resolve():
            raise QtoolError(f"the output {target} is also an input of this command; write to another file")
    return target


def read_json(path: Path) -> Any:
    from qtool.errors import QtoolError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QtoolError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QtoolError(
            f"{path} is not valid JSON ({exc.__class__.__name__}); delete it and rerun the step that wrote it"
        ) from None


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def manifest_path(artifact: Path) -> Path:
    """Where the manifest of a file artifact lives: `<artifact>.manifest.json` beside it."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".manifest.json")
