"""A function run in a fresh process: its result comes back, and the child runs the parent's qtool."""

from __future__ import annotations

import os

import pytest

from qtool.deployment.isolated import run_isolated
from qtool.errors import QtoolError


def test_the_result_comes_from_another_process():
    assert run_isolated(os.getpid) != os.getpid()


def test_a_qtool_in_the_working_folder_is_not_the_one_the_child_imports(tmp_path, monkeypatch):
    other = tmp_path / "qtool"
    other.mkdir()
    (other / "__init__.py").write_text('raise ImportError("another qtool than the running one")\n')
    monkeypatch.chdir(tmp_path)
    assert run_isolated(os.getcwd) == str(tmp_path)


def test_a_user_error_in_the_child_is_raised_again_as_it_was():
    with pytest.raises(QtoolError, match="does not exist"):
        run_isolated(_missing_model)


def _missing_model():
    raise QtoolError("x.ov.xml does not exist; build it with `qtool build GRAPH --backend openvino`")
