"""The typed calibration file: an exact round trip, and one-line errors for damaged or foreign files."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qtool.cli import app
from qtool.errors import QtoolError
from qtool.fileio import dumps_stable
from qtool.quantization.calibration import (
    CALIBRATION_FORMAT,
    CalibrateConfig,
    Calibration,
    calibrate,
    load_calibration,
    write_calibration,
)


@pytest.mark.parametrize(
    "config",
    [CalibrateConfig(), CalibrateConfig(method="peg", groups=3), CalibrateConfig(weight_bits=7)],
    ids=["max", "peg", "seven-bit"],
)
def test_round_trip_is_exact(scaled_model, tmp_path, config):
    calibration = calibrate(scaled_model["stats"], config)
    path = write_calibration(calibration, tmp_path / "c.calib.json")
    loaded = load_calibration(path, scaled_model["graph"])
    assert loaded == calibration
    assert dumps_stable(loaded.to_json()) == path.read_text()
    assert json.loads(path.read_text())["quantized_points"] == len(calibration.tensors)
    # the default grid is not written, so files of 8-bit weights stay as they were before the option
    assert json.loads(path.read_text()).get("weight_bits") == (7 if config.weight_bits == 7 else None)


def _damaged(document: dict, change: str) -> dict:
    point = next(iter(document["tensors"]))
    if change == "negative scale":
        document["tensors"][point]["scale"] = -1.0
    elif change == "missing tensors":
        del document["tensors"]
    elif change == "scope":
        document["scope"] = "everything"
    elif change == "groups":
        document["tensors"][point]["groups"] = [{"amax": 1.0, "scale": 0.1, "channels": ["x"]}]
    elif change in ("duplicate channel", "negative amax"):
        tensors = [t for t in document["tensors"].values() if t.get("groups") and len(t["groups"]) > 1]
        groups = tensors[0]["groups"]
        if change == "negative amax":
            groups[0]["amax"] = -1.0
        else:
            groups[0]["channels"].append(groups[1]["channels"][0])  # one channel in two groups
    elif change == "count":
        document["quantized_points"] += 1
    elif change == "newer format":
        document["format"] = "qtool-calibration/2"
    elif change == "weight bits":
        document["weight_bits"] = 4
    return document


@pytest.mark.parametrize(
    "change, words",
    [
        ("negative scale", "not a positive number"),
        ("missing tensors", "not a qtool calibration file"),
        ("scope", "scope 'everything'"),
        ("groups", "channels are not channel numbers"),
        ("duplicate channel", "each channel in exactly one group"),
        ("negative amax", "not a range"),
        ("count", "quantized_points says"),
        ("newer format", "qtool-calibration/2"),
        ("weight bits", "weight_bits 4"),
    ],
)
def test_damaged_files_are_refused_on_one_line(scaled_model, tmp_path, change, words):
    config = CalibrateConfig(method="peg", groups=3) if change in ("duplicate channel", "negative amax") else CalibrateConfig()
    path = write_calibration(calibrate(scaled_model["stats"], config), tmp_path / "c.calib.json")
    path.write_text(json.dumps(_damaged(json.loads(path.read_text()), change)))
    with pytest.raises(QtoolError, match="") as raised:
        load_calibration(path)
    assert words in str(raised.value) and "\n" not in str(raised.value)
    out = tmp_path / "never.qdq.onnx"
    result = CliRunner().invoke(app, ["quantize", str(scaled_model["graph"]), str(path), "-o", str(out)])
    assert result.exit_code == 2 and words in result.stderr and not out.exists()


def test_format_is_the_schema_version():
    assert Calibration.__dataclass_fields__["format"].default == CALIBRATION_FORMAT == "qtool-calibration/1"
