"""The `qtool` command line: each command parses its options, calls one stage and renders the result."""

from qtool.cli.app import app, main

__all__ = ["app", "main"]
