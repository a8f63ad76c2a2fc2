"""The one runner protocol: a context manager with `infer(feeds) -> outputs`.

Backends implement `_activate`, `_infer` and `_deactivate`; input checks live here once.
Expensive objects (sessions, engines) are built lazily in `_activate`, on entry.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from qtool.errors import QtoolError


class Runner(ABC):
    name: str = "runner"
    library: str | None = None  # the module it runs on, imported before a memory baseline

    def __init__(self) -> None:
        self.is_active = False

    def __enter__(self) -> Runner:
        self._activate()
        self.is_active = True
        return self

    def __exit__(self, *exc_info) -> None:
        self.is_active = False
        self._deactivate()

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def input_names(self) -> list[str]: ...

    @abstractmethod
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._infer(self.checked(feeds))

    def checked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's inputs of `feeds`, in its order; the runner must be entered and every input given."""
        if not self.is_active:
            raise RuntimeError(f"{self.name}: use the runner as a context manager before infer()")
        expected = self.input_names()
        missing = [name for name in expected if name not in feeds]
        if missing:
            raise QtoolError(f"{self.name}: missing inputs {missing}; the model expects {expected}")
        return self._select(feeds)

    def timed(self, feeds: Mapping[str, np.ndarray]) -> tuple[float, float | None]:
        """One inference on `feeds`, timed: seconds by the host clock around `infer`, and seconds on the
        device alone where the backend measures them (None here)."""
        started = time.perf_counter()
        self.infer(feeds)
        return time.perf_counter() - started, None

    def kernels(self) -> str | None:
        """Which kernels ran the model's GEMMs, as the runtime reports them after an inference (None:
        this runtime does not say)."""
        return None

    def _select(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feeds `_infer` gets: the model's inputs, in its order."""
        return {name: feeds[name] for name in self.input_names()}
