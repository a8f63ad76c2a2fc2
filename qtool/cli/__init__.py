"""The `qtool` command line: each command parses its options, calls one API function and renders
the result."""

from qtool.deferred_imports import defer_imports

defer_imports()

from qtool.cli.app import app, main  # noqa: E402  (after the deferred imports are in place)

__all__ = ["app", "main"]
