"""A calibration recipe: method, scope, weights and overrides, turned into a calibration file and a
QDQ graph. All methods read the one statistics file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from qtool import __version__
from qtool.analysis.collect import ActivationStats, model_identity
from qtool.calibrators.methods import CALIBRATORS, make_calibrator
from qtool.calibrators.precision import (
    DEFAULT_OUTLIER_RATIO,
    SCOPES_WITH_EMBEDDING_WEIGHTS,
    check_scope,
    kept_in_float,
)
from qtool.errors import QtoolError
from qtool.exporter.onnx_export import save_derived_graph
from qtool.exporter.points import load_quant_points
from qtool.exporter.qdq import WEIGHT_MODES, QdqPlan, write_qdq_model
from qtool.fileio import read_json, sha256_text, write_json

log = logging.getLogger(__name__)

CALIBRATION_FORMAT = "qtool-calibration/1"


@dataclass(frozen=True)
class CalibrateConfig:
    method: str = "max"
    p: float = 99.99
    groups: int = 4
    permute: bool = True
    scope: str = "all"
    weights: str = "per-channel"
    keep_fp: tuple[str, ...] = ()
    mixed_precision: str | None = None
    outlier_ratio: float = DEFAULT_OUTLIER_RATIO

    def validate(self) -> None:
        if self.method not in CALIBRATORS:
            raise QtoolError(f"unknown calibration method {self.method!r}; choose one of {', '.join(CALIBRATORS)}")
        check_scope(self.scope)
        if self.weights not in WEIGHT_MODES:
            raise QtoolError(f"--weights must be one of {', '.join(WEIGHT_MODES)}, got {self.weights!r}")
        self.calibrator()  # validates the method's own options

    def calibrator(self):
        return make_calibrator(self.method, p=self.p, groups=self.groups, permute=self.permute)

    def recipe_name(self) -> str:
        parts = [self.calibrator().label(), self.scope]
        if self.weights != "per-channel":
            parts.append("w" + self.weights)
        if self.mixed_precision:
            parts.append(f"mp-{self.mixed_precision}")
        if self.keep_fp:
            parts.append("keep-" + sha256_text(*self.keep_fp)[:8])
        return "-".join(parts)


def calibrate(stats: ActivationStats, config: CalibrateConfig) -> dict:
    """The calibration document: header plus one entry per quantized point."""
    config.validate()
    calibrator = config.calibrator()
    roles = check_scope(config.scope)
    kept, reason = kept_in_float(stats, config.keep_fp, config.mixed_precision, config.outlier_ratio)
    tensors = {}
    for point in stats.points:
        if point.role not in roles or point.name in kept:
            continue
        estimated = calibrator.estimate(point, stats.stats[point.name])
        tensors[point.name] = {
            "tensor": point.tensor,
            "role": point.role,
            "method": calibrator.name,
            "params": calibrator.params(),
            **estimated.to_json(),
        }
    return {
        "format": CALIBRATION_FORMAT,
        "recipe": config.recipe_name(),
        "model": stats.manifest["model"],
        "statistics_sha256": stats.content_sha256,
        "data": stats.manifest["data"],
        "samples": stats.manifest["samples"],
        "scope": config.scope,
        "method": calibrator.name,
        "params": calibrator.params(),
        "weights": config.weights,
        "embedding_tables_quantized": config.scope in SCOPES_WITH_EMBEDDING_WEIGHTS,
        "grid": "symmetric int8, zero point 0, scale = amax / 127",
        "kept_in_float": kept,
        "kept_reason": reason,
        "quantized_points": len(tensors),
        "total_points": len(stats.points),
        "tensors": tensors,
        "qtool_version": __version__,
    }


def load_calibration(path: Path, model_path: Path) -> dict:
    document = read_json(path)
    if not isinstance(document, dict) or document.get("format") != CALIBRATION_FORMAT:
        raise QtoolError(f"{path} is not a qtool calibration file; write one with `qtool calibrate`")
    expected = model_identity(model_path)
    if document.get("model") != expected:
        raise QtoolError(
            f"{path} was calibrated for {document.get('model', {}).get('source_model')} "
            f"(sha256 {str(document.get('model', {}).get('model_sha256'))[:12]}), not for {model_path}; "
            "calibrate this model with `qtool calibrate`"
        )
    return document


def write_calibrated_graph(model_path: Path, document: dict, output: Path) -> Path:
    """The QDQ graph of `document` applied to the FP32 graph at `model_path`."""
    if document["model"] != model_identity(model_path):
        raise QtoolError(f"the calibration is for another model than {model_path}; calibrate this model")
    model, points = load_quant_points(model_path)
    missing = sorted(set(document["tensors"]) - {p.name for p in points})
    if missing:
        raise QtoolError(f"the calibration names points that {model_path} does not have ({', '.join(missing[:3])})")
    activations = {}
    for name, entry in document["tensors"].items():
        activations[name] = {"scale": entry["scale"], "groups": entry.get("groups")}
    plan = QdqPlan(
        activations=activations,
        weights=document["weights"],
        embedding_tables=document["embedding_tables_quantized"],
        points=points,
    )
    qdq = write_qdq_model(model, plan)
    metadata = {"precision": "int8-qdq", "recipe": document["recipe"], "scope": document["scope"]}
    return save_derived_graph(qdq, model_path, output, metadata)


def write_calibration(document: dict, path: Path) -> Path:
    return write_json(path, document)


def calibration_paths(folder: Path, recipe: str) -> tuple[Path, Path]:
    return Path(folder) / f"{recipe}.calib.json", Path(folder) / f"{recipe}.qdq.onnx"
