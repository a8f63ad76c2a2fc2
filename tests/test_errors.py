"""One error type: the CLI prints the message as written, `str()` spells options as the API takes them."""

from __future__ import annotations

import pytest

from qtool.errors import QtoolError, api_spelling


@pytest.mark.parametrize(
    "cli, api",
    [
        ("--max-drop must be in [0, 100), got 200", "max_drop must be in [0, 100), got 200"),
        ("pass --data FOLDER (or set QTOOL_DATA)", "pass data=FOLDER (or set QTOOL_DATA)"),
        ("--no-eval skips it; --lr 5 and --seq-len 64", "evaluate=False skips it; learning_rate=5 and sequence_lengths=64"),
        ("--no-permute keeps the order", "permute=False keeps the order"),
        ("run `qtool build G --backend ort --int8-kernels u8u8` here", "run `qtool build G --backend ort --int8-kernels u8u8` here"),
        ("--p is an option of --method percentile", "p is an option of method percentile"),
    ],
)
def test_options_are_spelled_for_the_api_outside_backticks(cli, api):
    error = QtoolError(cli)
    assert error.cli_message == cli and str(error) == api == api_spelling(cli)


def test_the_cli_prints_the_command_line_spelling(tmp_path):
    from typer.testing import CliRunner

    from qtool.cli import app

    result = CliRunner().invoke(app, ["eval", str(tmp_path / "x.onnx"), "--limit", "0"])
    assert result.exit_code == 2 and "--limit must be at least 1" in result.stderr
