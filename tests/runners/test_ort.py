"""The ONNX Runtime runner's one-line errors for files it cannot run, without a traceback chain."""

from __future__ import annotations

import pytest

from qtool.errors import QtoolError
from qtool.runners.ort import OrtRunner


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist; export a model first"),
        ("folder", "is a folder; give the path of an ONNX file"),
        (b"", "is not a readable ONNX model|is empty or not an ONNX model"),
        (b"\x08\x07not a protobuf at all \xff\xfe", "is not a readable ONNX model|is empty or not an ONNX model"),
    ],
    ids=["missing", "folder", "empty", "corrupt"],
)
def test_a_file_onnx_runtime_cannot_run_gets_the_graph_files_one_line_error(tmp_path, content, expected):
    path = tmp_path / "graph.onnx"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(QtoolError, match=expected) as raised:
        with OrtRunner(path):
            pass
    assert "\n" not in str(raised.value) and _no_chained_traceback(raised.value)


def test_a_graph_onnx_runtime_refuses_names_the_reason(tmp_path, tiny_onnx):
    import onnx

    model = onnx.load(str(tiny_onnx))
    model.graph.node[0].op_type = "NoSuchOperator"
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(QtoolError, match=f"ONNX Runtime cannot load {broken}: ") as raised:
        with OrtRunner(broken):
            pass
    assert "\n" not in str(raised.value) and _no_chained_traceback(raised.value)


def _no_chained_traceback(error: BaseException) -> bool:
    return error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
