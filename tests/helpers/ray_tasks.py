"""Top-level functions for executor tests (Ray workers import them by module name)."""

from __future__ import annotations

import os
from pathlib import Path

from qtool.errors import QtoolError


def square(value: int) -> dict:
    return {"value": value * value, "pid": os.getpid()}


def refuse(value: int) -> dict:
    raise QtoolError(f"task {value} refused on purpose")


def die_once(marker: str, value: int) -> dict:
    """Kills its worker process the first time (the marker file does not exist yet), then succeeds."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died once")
        os._exit(1)
    return {"value": value, "pid": os.getpid()}
