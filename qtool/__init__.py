"""qtool: post-training INT8 quantization of BERT-family classifiers, measured end to end.

The functions of `qtool.api` are available here (`qtool.calibrate(...)`), imported on first use so
that `import qtool` and `qtool --help` stay fast.
"""

__version__ = "0.1.0"

API = (
    "finetune", "export", "collect", "analyze", "calibrate", "calibration_methods", "register_calibrator",
    "quantize", "export_scales", "evaluate", "build", "backends", "register_backend", "bench", "reproduce",
)


def __getattr__(name: str):
    if name in API or name in ("QtoolError", "DataConfig"):
        from qtool import api

        return getattr(api, name)
    raise AttributeError(f"module 'qtool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API, "QtoolError", "DataConfig"])
