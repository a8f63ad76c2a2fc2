"""Progress display for long work, rendered on stderr so stdout stays scriptable.

Library code reports progress through `progress_bar`; it draws only on an interactive terminal
unless QTOOL_PROGRESS=1 forces it (QTOOL_PROGRESS=0 silences it everywhere).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr_console = Console(stderr=True)


def _enabled() -> bool:
    forced = os.environ.get("QTOOL_PROGRESS")
    if forced is not None:
        return forced not in ("0", "", "false", "no")
    return sys.stderr.isatty()


class ProgressTask:
    def __init__(self, progress: Progress | None, task_id: int | None):
        self._progress = progress
        self._task_id = task_id

    def advance(self, steps: float = 1, **fields: object) -> None:
        if self._progress is not None and self._task_id is not None:
            self._progress.update(self._task_id, advance=steps, **fields)


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, status: str = "") -> Iterator[ProgressTask]:
    """A bar with a free-text `status` field (loss, examples/s, ...) updated through `advance`."""
    if not _enabled():
        yield ProgressTask(None, None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=stderr_console,
        transient=False,
    )
    with progress:
        task_id = progress.add_task(description, total=total, status=status)
        yield ProgressTask(progress, task_id)
