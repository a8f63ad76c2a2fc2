"""Where independent tasks run: in this process one after another (`local`), or as Ray tasks on a
local or remote Ray cluster (`ray`).

A task is a top-level function and arguments that pickle: file paths, configurations and small
data (a data split). Each task reads its inputs from the files and writes its outputs through the
same atomic, cached stages as a local run, so local, resumed and distributed runs share one cache
and produce the same files; every node must see the artifacts folder at the same path (shared
storage). Results come back in task order.

With Ray, each task reserves `cpus_per_task` CPUs (default: all of this machine's), so tasks never
share the cores they are timed on; ONNX Runtime sessions in a task use that many threads. A task
whose worker dies is retried (`max_retries`); a task that raises fails the run with its own error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qtool.errors import QtoolError
from qtool.progress import progress_bar

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
RAY_HINT = "pip install 'qtool[ray]'"
TASK_RETRIES = 2  # attempts after a worker dies mid-task


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = EXECUTORS[0]
    address: str | None = None  # ray: a cluster address, or "auto" to join the running one; None starts one here
    cpus_per_task: int | None = None  # ray: CPUs each task reserves; None: all of this machine's

    def validate(self) -> None:
        if self.kind not in EXECUTORS:
            raise QtoolError(f"unknown --executor {self.kind!r}; choose one of {', '.join(EXECUTORS)}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise QtoolError(f"--cpus-per-task must be at least 1, got {self.cpus_per_task}")
        if self.kind == "local" and (self.address or self.cpus_per_task):
            raise QtoolError("--address and --cpus-per-task are for --executor ray")

    def task_threads(self) -> int | None:
        """Intra-op threads for ONNX Runtime inside one task (None: its default)."""
        return self.cpus_per_task if self.kind == "ray" else None


def run_tasks(
    function: Callable[..., Any],
    tasks: Sequence[tuple],
    config: ExecutorConfig,
    description: str,
    label=str,
    on_result: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """`function(*task)` for every task, results in task order, with a progress bar over tasks
    (`label(result)` is its status line). `on_result(index, result)` runs in this process as each
    task finishes (in completion order), e.g. to write it to a cache before the others are done."""
    config.validate()
    done = on_result or (lambda index, result: None)
    if config.kind == "local":
        results = []
        with progress_bar(description, total=len(tasks)) as bar:
            for index, task in enumerate(tasks):
                results.append(function(*task))
                done(index, results[-1])
                bar.advance(1, status=label(results[-1]))
        return results
    return _run_on_ray(function, tasks, config, description, label, done)


def parallelism(config: ExecutorConfig) -> int:
    """How many tasks run at once: 1 in this process; on Ray, the cluster's CPUs over the CPUs a task reserves."""
    config.validate()
    if config.kind == "local":
        return 1
    cpus = _connect(config).cluster_resources().get("CPU", 1)
    return max(1, int(cpus // _cpus_per_task(config)))


def _ray():
    try:
        import ray
    except ImportError:
        raise QtoolError(f"--executor ray needs Ray, which is not installed; {RAY_HINT}") from None
    return ray


def _connect(config: ExecutorConfig):
    """Ray, joined to the cluster at `config.address` (or a new local one) unless this process already is
    (a driver that ran tasks before, or a Ray worker whose task fans out further)."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=config.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = config.address or "a new local cluster"
            raise QtoolError(f"cannot start or join Ray at {where} ({exc}); check --address") from None
    return ray


def _cpus_per_task(config: ExecutorConfig) -> int:
    return config.cpus_per_task or os.cpu_count() or 1


def _run_on_ray(function, tasks: Sequence[tuple], config: ExecutorConfig, description: str, label, done) -> list[Any]:
    ray = _connect(config)
    cpus = _cpus_per_task(config)
    remote = ray.remote(num_cpus=cpus, max_retries=TASK_RETRIES, retry_exceptions=False)(function)
    pending = {remote.remote(*task): index for index, task in enumerate(tasks)}
    log.info("%d task(s) on Ray (%s CPUs each; cluster: %s)", len(tasks), cpus, ray.cluster_resources())
    results: list[Any] = [None] * len(tasks)
    with progress_bar(f"{description} (ray)", total=len(tasks)) as bar:
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(finished[0])
            try:
                results[index] = ray.get(finished[0])
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, QtoolError):  # the task's own one-line error
                    raise QtoolError(str(exc.cause)) from None
                raise
            except ray.exceptions.RayError as exc:  # the worker or node died more often than retried
                raise QtoolError(f"a Ray task failed after {TASK_RETRIES} retries ({type(exc).__name__}); rerun") from None
            done(index, results[index])
            bar.advance(1, status=label(results[index]))
    return results
