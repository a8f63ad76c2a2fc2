"""Graphs of a calibration: the smoothed FP32 graph it was calibrated on, and its QDQ graph."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from qtool.analysis.collect import ActivationStats
from qtool.cache import cached_stage
from qtool.calibrators.precision import check_scope
from qtool.defaults import PEG_LAYOUT
from qtool.errors import QtoolError
from qtool.exporter.points import QuantPoint, find_quant_points, load_quant_points
from qtool.exporter.qdq import QdqPlan, write_qdq_model
from qtool.exporter.smooth import SmoothConfig, apply_smoothing, smooth_model
from qtool.fileio import manifest_path, sha256_file
from qtool.graph import PEG_LAYOUT_KEY, QDQ_PRECISION, model_identity, save_derived_graph
from qtool.quantization.calibration import Calibration

log = logging.getLogger(__name__)

Prepared = tuple["onnx.ModelProto", list[QuantPoint]]


def smoothed_graph(model_path: Path, stats: ActivationStats, alpha: float) -> tuple[Path, dict[str, list[float]]]:
    """The FP32 graph with activation range migrated into the weights (`alpha`), written once beside
    it as `<stem>.smooth<alpha>.onnx`, and the factors. Its identity names the transform, so
    statistics of the plain graph are never taken for it."""
    model_path = Path(model_path)
    stats.check_model(model_path)
    target = model_path.with_name(f"{model_path.stem}.smooth{alpha:g}.onnx")
    key = {"source_sha256": sha256_file(model_path), "statistics_sha256": stats.content_sha256, "alpha": alpha}

    def smooth() -> dict[str, list[float]]:
        model, _ = load_quant_points(model_path)
        smoothed, factors = smooth_model(model, stats, SmoothConfig(alpha=alpha))
        transform = f"smooth alpha={alpha!r} statistics={stats.content_sha256[:16]}"
        save_derived_graph(smoothed, model_path, target, {"precision": "fp32", "transform": transform})
        log.info("wrote %s (%d LayerNorm outputs smoothed)", target, len(factors))
        return factors

    return target, cached_stage(manifest_path(target), key, smooth, artifact=target, stage="migration")


def prepared_model(model_path: Path, calibration: Calibration) -> Prepared:
    """The FP32 graph at `model_path` as the calibration's QDQ graph is written on (smoothed when the
    calibration records factors) and its quantization points; checked to be the calibrated model."""
    if calibration.model != model_identity(model_path):
        raise QtoolError(f"the calibration is for another model than {model_path}; calibrate this model")
    model, points = load_quant_points(model_path)
    if calibration.smoothing:
        try:
            factors = {name: [float(v) for v in values] for name, values in calibration.smoothing["factors"].items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise QtoolError("the calibration's smoothing record has no valid factors; calibrate again") from None
        model = apply_smoothing(model, points, factors)
        points = find_quant_points(model)
    return model, points


def qdq_model(
    prepared: Prepared, calibration: Calibration, switches: bool = False, peg_layout: str = PEG_LAYOUT
) -> onnx.ModelProto:
    """The QDQ model of `calibration` on a `prepared_model` (which stays unchanged, so one preparation
    serves many calibrations of the same model); PEG ranges in `peg_layout` (see `qtool.exporter.qdq`)."""
    model, points = prepared
    missing = sorted(set(calibration.tensors) - {p.name for p in points})
    if missing:
        raise QtoolError(f"the calibration names points that the model does not have ({', '.join(missing[:3])})")
    plan = QdqPlan(
        activations={name: entry.range for name, entry in calibration.tensors.items()},
        weights=calibration.weights,
        weight_bits=calibration.weight_bits,
        embedding_tables=calibration.embedding_tables_quantized,
        points=points,
        switches=switches,
        peg_layout=peg_layout,
        gemm_edges_only=check_scope(calibration.scope).gemm_edges_only,
    )
    return write_qdq_model(model, plan)


def calibrated_model(
    model_path: Path, calibration: Calibration, switches: bool = False, peg_layout: str = PEG_LAYOUT
) -> onnx.ModelProto:
    """The QDQ model of `calibration` applied to the FP32 graph at `model_path` (in memory)."""
    return qdq_model(prepared_model(model_path, calibration), calibration, switches, peg_layout)


def has_channel_groups(calibration: Calibration) -> bool:
    return any(entry.groups and len(entry.groups) > 1 for entry in calibration.tensors.values())


def write_calibrated_graph(model_path: Path, calibration: Calibration, output: Path, peg_layout: str = PEG_LAYOUT) -> Path:
    """Write the QDQ graph of `calibration` applied to the FP32 graph at `model_path`."""
    qdq = calibrated_model(model_path, calibration, peg_layout=peg_layout)
    metadata = {"precision": QDQ_PRECISION, "recipe": calibration.recipe, "scope": calibration.scope}
    if has_channel_groups(calibration):
        metadata[PEG_LAYOUT_KEY] = "folded" if calibration.weights == "folded" else peg_layout
    if calibration.smoothing:
        metadata["smoothing_alpha"] = f"{calibration.smoothing['alpha']:g}"
    return save_derived_graph(qdq, model_path, output, metadata)
