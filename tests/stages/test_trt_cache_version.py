"""Calibration caches (`export-scales --format trt-cache`) are for TensorRT 10 and older only."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qtool.cli import app
from qtool.errors import QtoolError
from qtool.quantization import scale_formats
from qtool.stages.calibrate import check_trt_cache_version

runner = CliRunner()


@pytest.mark.parametrize("version", ["10.14.1", "10.0.1.6", "8.6.1"])
def test_tensorrt_10_and_older_take_a_cache(version):
    check_trt_cache_version(version)


@pytest.mark.parametrize("version", ["11.0", "11.4.0.106", "12.1.0"])
def test_tensorrt_11_and_newer_are_refused_on_one_line(version):
    with pytest.raises(QtoolError) as raised:
        check_trt_cache_version(version)
    message = raised.value.cli_message
    assert "\n" not in message and f"TensorRT {version} reads no calibration cache" in message
    assert "qtool build GRAPH --backend trt" in message and "--trt-version 10.x" in message


def test_cli_refuses_a_cache_for_tensorrt_11_before_reading_anything(tmp_path, monkeypatch):
    out = tmp_path / "x.calib.cache"
    result = runner.invoke(
        app, ["export-scales", str(tmp_path / "missing.json"), "-f", "trt-cache", "--trt-version", "11.1", "-o", str(out)]
    )
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "TensorRT 11.1 reads no calibration cache" in result.stderr and not out.exists()
    # an installed TensorRT 11 is refused the same way when no --trt-version is given
    monkeypatch.setattr(scale_formats, "default_trt_version", lambda: "11.4.0")
    result = runner.invoke(app, ["export-scales", str(tmp_path / "missing.json"), "-f", "trt-cache", "-o", str(out)])
    assert result.exit_code == 2 and "TensorRT 11.4.0 reads no calibration cache" in result.stderr
    help_text = runner.invoke(app, ["export-scales", "--help"], env={"COLUMNS": "200"}).stdout
    assert "TensorRT 10 and older only" in " ".join(help_text.split())
