"""A calibration recipe: method, scope, weights and overrides, turned into a calibration file and a
QDQ graph. All methods read the one statistics file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx

from qtool import __version__
from qtool.analysis.collect import ActivationStats, model_identity
from qtool.calibrators.methods import CALIBRATORS, make_calibrator
from qtool.calibrators.precision import (
    DEFAULT_OUTLIER_RATIO,
    check_scope,
    kept_in_float,
)
from qtool.errors import QtoolError
from qtool.exporter.onnx_export import save_derived_graph
from qtool.exporter.points import QuantPoint, find_quant_points, load_quant_points
from qtool.exporter.qdq import WEIGHT_MODES, QdqPlan, write_qdq_model
from qtool.exporter.smooth import SmoothConfig, apply_smoothing, smooth_model
from qtool.fileio import manifest_path, read_json, sha256_file, sha256_text, write_json

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
    smooth: float | None = None  # SmoothQuant-style migration strength alpha, applied before calibrating

    def validate(self) -> None:
        if self.method not in CALIBRATORS:
            raise QtoolError(f"unknown calibration method {self.method!r}; choose one of {', '.join(CALIBRATORS)}")
        check_scope(self.scope)
        if self.weights not in WEIGHT_MODES:
            raise QtoolError(f"--weights must be one of {', '.join(WEIGHT_MODES)}, got {self.weights!r}")
        self.calibrator()  # validates the method's own options
        if self.smooth is not None:
            SmoothConfig(alpha=self.smooth).validate()

    def calibrator(self):
        return make_calibrator(self.method, p=self.p, groups=self.groups, permute=self.permute)

    def recipe_name(self) -> str:
        parts = [self.calibrator().label(), self.scope]
        if self.smooth is not None:
            parts.append(f"smooth{self.smooth:g}")
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
    roles = check_scope(config.scope).roles
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
        "embedding_tables_quantized": check_scope(config.scope).embedding_tables,
        "grid": "symmetric int8, zero point 0, scale = amax / 127",
        "kept_in_float": kept,
        "kept_reason": reason,
        "quantized_points": len(tensors),
        "total_points": len(stats.points),
        "tensors": tensors,
        "qtool_version": __version__,
    }


def smoothed_graph(model_path: Path, stats: ActivationStats, alpha: float) -> tuple[Path, dict[str, list[float]]]:
    """The FP32 graph with activation range migrated into the weights (`alpha`), written once beside
    it as `<stem>.smooth<alpha>.onnx`, and the factors. Its identity names the transform, so
    statistics of the plain graph are never taken for it."""
    model_path = Path(model_path)
    stats.check_model(model_path)
    target = model_path.with_name(f"{model_path.stem}.smooth{alpha:g}.onnx")
    record = manifest_path(target)
    key = {"source_sha256": sha256_file(model_path), "statistics_sha256": stats.content_sha256, "alpha": alpha}
    transform = f"smooth alpha={alpha!r} statistics={stats.content_sha256[:16]}"
    if (
        target.is_file()
        and record.is_file()
        and (cached := read_json(record)).get("key") == key
        and model_identity(target).get("transform") == transform
    ):
        return target, cached["factors"]
    record.unlink(missing_ok=True)  # never a record beside a graph it does not describe
    model, _ = load_quant_points(model_path)
    smoothed, factors = smooth_model(model, stats, SmoothConfig(alpha=alpha))
    save_derived_graph(smoothed, model_path, target, {"precision": "fp32", "transform": transform})
    write_json(record, {"key": key, "factors": factors})
    log.info("wrote %s (%d LayerNorm outputs smoothed)", target, len(factors))
    return target, factors


def calibrate_model(
    model_path: Path, stats: ActivationStats, config: CalibrateConfig, collect_stats
) -> tuple[dict, ActivationStats]:
    """`calibrate`, with the migration first when `config.smooth` is set: the smoothed graph's
    statistics come from `collect_stats(graph_path)` (cached), and the document records the factors
    so that the QDQ graph can be rebuilt from the FP32 graph. Returns the document and the
    statistics it was calibrated on."""
    if config.smooth is None:
        return calibrate(stats, config), stats
    config.validate()
    graph, factors = smoothed_graph(model_path, stats, config.smooth)
    smoothed_stats = collect_stats(graph)
    document = calibrate(smoothed_stats, config)
    document["model"] = model_identity(model_path)
    document["smoothing"] = {
        "alpha": config.smooth,
        "graph": graph.name,
        "fp32_statistics_sha256": stats.content_sha256,
        "factors": factors,
    }
    return document, smoothed_stats


def check_calibration(document: object, source: str = "the calibration") -> dict:
    """`document` if it is a qtool calibration document, else a one-line error."""
    if (
        not isinstance(document, dict)
        or document.get("format") != CALIBRATION_FORMAT
        or not isinstance(document.get("tensors"), dict)
    ):
        raise QtoolError(f"{source} is not a qtool calibration file; write one with `qtool calibrate`")
    return document


def load_calibration(path: Path, model_path: Path | None = None) -> dict:
    """A calibration file, checked to be one and, given `model_path`, to belong to that model."""
    document = check_calibration(read_json(path), str(path))
    if model_path is None:
        return document
    expected = model_identity(model_path)
    if document.get("model") != expected:
        raise QtoolError(
            f"{path} was calibrated for {document.get('model', {}).get('source_model')} "
            f"(sha256 {str(document.get('model', {}).get('model_sha256'))[:12]}), not for {model_path}; "
            "calibrate this model with `qtool calibrate`"
        )
    return document


def prepared_model(model_path: Path, document: dict) -> tuple[onnx.ModelProto, list[QuantPoint]]:
    """The FP32 graph at `model_path` as `document`'s QDQ graph is written on (smoothed when the
    document records factors) and its quantization points; checked to be the calibrated model."""
    if document["model"] != model_identity(model_path):
        raise QtoolError(f"the calibration is for another model than {model_path}; calibrate this model")
    model, points = load_quant_points(model_path)
    if document.get("smoothing"):
        try:
            factors = {name: [float(v) for v in values] for name, values in document["smoothing"]["factors"].items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise QtoolError("the calibration's smoothing record has no valid factors; calibrate again") from None
        model = apply_smoothing(model, points, factors)
        points = find_quant_points(model)
    return model, points


def qdq_model(prepared: tuple[onnx.ModelProto, list[QuantPoint]], document: dict, switches: bool = False):
    """The QDQ model of `document` on a `prepared_model` (which stays unchanged, so one preparation
    serves many documents of the same calibration)."""
    model, points = prepared
    missing = sorted(set(document["tensors"]) - {p.name for p in points})
    if missing:
        raise QtoolError(f"the calibration names points that the model does not have ({', '.join(missing[:3])})")
    activations = {}
    for name, entry in document["tensors"].items():
        activations[name] = {"scale": entry["scale"], "groups": entry.get("groups")}
    plan = QdqPlan(
        activations=activations,
        weights=document["weights"],
        embedding_tables=document["embedding_tables_quantized"],
        points=points,
        switches=switches,
        gemm_edges_only=check_scope(document["scope"]).gemm_edges_only,
    )
    return write_qdq_model(model, plan)


def calibrated_model(model_path: Path, document: dict, switches: bool = False):
    """The QDQ model of `document` applied to the FP32 graph at `model_path` (in memory)."""
    return qdq_model(prepared_model(model_path, document), document, switches)


def write_calibrated_graph(model_path: Path, document: dict, output: Path) -> Path:
    """The QDQ graph of `document` applied to the FP32 graph at `model_path`."""
    qdq = calibrated_model(model_path, document)
    metadata = {"precision": "int8-qdq", "recipe": document["recipe"], "scope": document["scope"]}
    if document.get("smoothing"):
        metadata["smoothing_alpha"] = f"{document['smoothing']['alpha']:g}"
    return save_derived_graph(qdq, model_path, output, metadata)


def write_calibration(document: dict, path: Path) -> Path:
    return write_json(path, document)


def calibration_paths(folder: Path, recipe: str) -> tuple[Path, Path]:
    return Path(folder) / f"{recipe}.calib.json", Path(folder) / f"{recipe}.qdq.onnx"
