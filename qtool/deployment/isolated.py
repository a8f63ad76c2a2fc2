"""Run one function call in a fresh `python -m qtool.deployment.isolated` process.

A plain subprocess (not multiprocessing) never re-imports the caller's main module, so scripts
without a `__main__` guard work too. The call and its outcome go through pickle files; the child
gets this process's sys.path as PYTHONPATH, so qtool and functions or classes defined outside the
package (tests) import there. A benchmark measured this way has a clean baseline and peak memory.
The child imports onnx only if the call uses it: a runtime does not, and onnx's import (about 0.6 s
and its memory) would otherwise be in every timed process.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtool.errors import QtoolError

log = logging.getLogger(__name__)


def run_isolated(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` in a fresh process; its QtoolError is raised here again, any other failure as
    RuntimeError with the child's traceback. `function` and `args` must be picklable (TypeError)."""
    try:
        job = pickle.dumps((function, args))
    except Exception as exc:
        raise TypeError(f"an isolated run needs a picklable function and arguments: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="qtool-isolated-") as folder:
        job_path, result_path = Path(folder) / "job.pickle", Path(folder) / "result.pickle"
        job_path.write_bytes(job)
        log.debug("running %s in a fresh process", getattr(function, "__qualname__", function))
        completed = subprocess.run(
            # -P: the child's path is the parent's, without the working folder in front of it (which
            # could hold another qtool than the one running here)
            [sys.executable, "-P", "-m", "qtool.deployment.isolated", str(job_path), str(result_path)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry)},
            stdin=subprocess.DEVNULL,
            stdout=2,  # whatever a backend prints goes to stderr, never into this process's stdout (--json)
            check=False,
        )
        if not result_path.is_file():
            raise QtoolError(
                f"the isolated benchmark process died (exit code {completed.returncode}: out of memory, or a "
                "crash in the backend); rerun without isolation to see the error"
            )
        outcome, value = pickle.loads(result_path.read_bytes())
    if outcome == "user-error":
        raise QtoolError(value)
    if outcome == "crash":
        raise RuntimeError(f"the isolated benchmark failed:\n{value}")
    return value


def _child_main(job_path: Path, result_path: Path) -> None:
    """The child's side of `run_isolated`: make the call here, write ('ok', result) or an error."""
    function, args = pickle.loads(Path(job_path).read_bytes())
    try:
        outcome = ("ok", function(*args))
    except QtoolError as exc:
        outcome = ("user-error", exc.cli_message)
    except Exception:
        outcome = ("crash", traceback.format_exc())
    Path(result_path).write_bytes(pickle.dumps(outcome))


if __name__ == "__main__":  # the child: python -m qtool.deployment.isolated JOB RESULT
    from qtool.deferred_imports import defer_imports

    defer_imports(("onnx",))  # a runtime needs no onnx; it loads here only if the call reads onnx.<name>
    from qtool.deployment.isolated import _child_main as child_main  # the package's copy, not __main__'s

    child_main(Path(sys.argv[1]), Path(sys.argv[2]))
