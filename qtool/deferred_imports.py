"""Libraries imported only when something uses them: the command line defers numpy and onnx, so
`qtool --help` and usage errors answer at once, and an isolated benchmark process defers onnx, which
a runtime does not need. `onnx` imports `ml_dtypes`, whose extension alone takes about 0.6 s to load.

A deferred module is a stand-in in `sys.modules` that imports the real module on the first
attribute read and then holds its attributes, so `import onnx` at the top of a qtool module costs
nothing until a function uses `onnx.<name>`. (`importlib.util.LazyLoader` cannot do this on Python
3.11: re-importing the module reads `__spec__`, which loads it.)

The command line's stand-ins live only until a command starts (`load_deferred`, numpy before
onnx): a numpy stand-in loaded as a side effect of another import (onnxruntime's or onnx's import of
numpy reading the stand-in's `__path__`) leaves `numpy._core` without members that the next importer
needs, and `import scipy.linalg` (NNCF's first import) then fails. A benchmark process keeps its onnx
stand-in for the whole call: numpy is real there, and onnx loads whole on its first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

DEFERRED = ("numpy", "onnx")  # in the order they load: onnx imports numpy


class DeferredModule(types.ModuleType):
    def __getattr__(self, name: str):
        real = _load(self)
        return getattr(real, name)


def _load(stand_in: DeferredModule) -> types.ModuleType:
    if sys.modules.get(stand_in.__name__) is stand_in:
        del sys.modules[stand_in.__name__]
    real = importlib.import_module(stand_in.__name__)
    stand_in.__dict__.update(real.__dict__)
    return real


def defer_imports(names: tuple[str, ...] = DEFERRED) -> None:
    """Put a stand-in for each of `names` not yet imported (and installed) into `sys.modules`."""
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        stand_in = DeferredModule(name)
        stand_in.__spec__ = spec
        sys.modules[name] = stand_in


def load_deferred(names: tuple[str, ...] = DEFERRED) -> None:
    """Load the real module behind each stand-in still in place, before a command imports anything."""
    for name in names:
        module = sys.modules.get(name)
        if isinstance(module, DeferredModule):
            _load(module)
