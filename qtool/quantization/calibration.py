"""Calibration recipes and the typed calibration file they produce.

A recipe (`CalibrateConfig`: method, scope, weights, overrides, smoothing) turns the one
statistics file into a `Calibration`: a header plus one `PointScale` per quantized point. The file
is `<recipe>.calib.json`, written with sorted keys so equal calibrations are byte-identical, and
validated field by field when read (`Calibration.from_json`), so a damaged or foreign file gets a
one-line error instead of a failure deep inside a graph writer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from qtool import __version__
from qtool.analysis.collect import ActivationStats
from qtool.calibrators.base import FLAGGED_METHOD_OPTIONS, ActivationRange, ChannelGroup, option_names
from qtool.calibrators.methods import CALIBRATORS, make_calibrator
from qtool.calibrators.precision import SCOPES, check_scope, kept_in_float
from qtool.defaults import OUTLIER_RATIO, PEG_GROUPING, PEG_GROUPS, PERCENTILE
from qtool.errors import QtoolError
from qtool.exporter.grid import WEIGHT_BITS
from qtool.exporter.qdq import WEIGHT_MODES
from qtool.exporter.smooth import SmoothConfig
from qtool.fileio import read_json, sha256_text, write_json
from qtool.graph import model_identity

CALIBRATION_FORMAT = "qtool-calibration/1"  # the schema version of the file
GRID = "symmetric int8, zero point 0, scale = amax / 127"  # activations; weights per `weight_bits`


@dataclass(frozen=True)
class CalibrateConfig:
    method: str = next(iter(CALIBRATORS))
    p: float = PERCENTILE
    groups: int | str = PEG_GROUPS  # or "auto"
    permute: bool = True
    grouping: str = PEG_GROUPING
    scope: str = next(iter(SCOPES))
    weights: str = WEIGHT_MODES[0]
    weight_bits: int = WEIGHT_BITS[0]  # 7: projection weights in [-64, 63], exact on U8S8 kernels on every CPU
    keep_fp: tuple[str, ...] = ()
    mixed_precision: str | None = None
    outlier_ratio: float = OUTLIER_RATIO
    smooth: float | None = None  # SmoothQuant-style migration strength alpha, applied before calibrating
    # Options of the method that have no field here (a calibrator from outside qtool), as (name, value).
    method_options: tuple[tuple[str, Any], ...] = ()

    def validate(self) -> None:
        if self.method not in CALIBRATORS:
            raise QtoolError(f"unknown calibration method {self.method!r}; choose one of {', '.join(CALIBRATORS)}")
        check_scope(self.scope)
        if self.weights not in WEIGHT_MODES:
            raise QtoolError(f"--weights must be one of {', '.join(WEIGHT_MODES)}, got {self.weights!r}")
        if self.weight_bits not in WEIGHT_BITS or isinstance(self.weight_bits, bool):
            raise QtoolError(
                f"--weight-bits must be one of {', '.join(map(str, WEIGHT_BITS))}, got {self.weight_bits!r}"
            )
        if self.weights == "folded" and self.method != "peg":
            raise QtoolError("--weights folded folds PEG's group scales into the weights; use it with --method peg")
        if not 1 <= self.outlier_ratio < math.inf:
            raise QtoolError(f"--outlier-ratio must be a finite number of at least 1, got {self.outlier_ratio}")
        takes = option_names(CALIBRATORS[self.method])
        flagged = sorted(name for name, _ in self.method_options if name in FLAGGED_METHOD_OPTIONS)
        if flagged:
            raise QtoolError(f"{flagged[0]} has a flag of its own: pass --{flagged[0]}, not --method-option {flagged[0]}=...")
        unknown = sorted(name for name, _ in self.method_options if name not in takes)
        if unknown:
            raise QtoolError(
                f"--method-option {unknown[0]} is not an option of method {self.method} "
                f"(it takes {', '.join(takes) or 'none'})"
            )
        self.calibrator()  # validates the method's own options
        if self.smooth is not None:
            SmoothConfig(alpha=self.smooth).validate()

    def calibrator(self):
        return make_calibrator(
            self.method, p=self.p, groups=self.groups, permute=self.permute, grouping=self.grouping,
            **dict(self.method_options),
        )

    def recipe_name(self) -> str:
        parts = [self.calibrator().label(), self.scope]
        if self.smooth is not None:
            parts.append(f"smooth{self.smooth:g}")
        if self.weights != WEIGHT_MODES[0]:
            parts.append("w" + self.weights)
        if self.weight_bits != WEIGHT_BITS[0]:
            parts.append(f"w{self.weight_bits}")
        if self.mixed_precision:
            parts.append(f"mp-{self.mixed_precision}")
            if self.mixed_precision == "outliers" and self.outlier_ratio != OUTLIER_RATIO:
                parts[-1] += f"{self.outlier_ratio:g}"  # another ratio keeps other points: its own files
        if self.keep_fp:
            parts.append("keep-" + sha256_text(*self.keep_fp)[:8])
        return "-".join(parts)


# -- the file --------------------------------------------------------------------------------------
class _Invalid(ValueError):
    """A field of a calibration file that is missing or of the wrong kind."""


def _require(data: Any, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if not isinstance(data, dict) or key not in data:
        raise _Invalid(f"{where}{key} is missing")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise _Invalid(f"{where}{key} is not a {_kind_name(kind)}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _kinds(kind))


def _positive(value: float, where: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise _Invalid(f"{where} is {value}, not a positive number")
    return value


def _group_from_json(data: Any, where: str) -> ChannelGroup:
    channels = _require(data, "channels", list, where)
    if not channels or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in channels):
        raise _Invalid(f"{where}channels are not channel numbers")
    scale = _positive(float(_require(data, "scale", (int, float), where)), f"{where}scale")
    amax = float(_require(data, "amax", (int, float), where))
    if not math.isfinite(amax) or amax < 0:
        raise _Invalid(f"{where}amax is {amax}, not a range (a number >= 0)")
    return ChannelGroup(tuple(channels), amax, scale)


@dataclass(frozen=True)
class PointScale:
    """The calibrated range of one quantization point, with where it came from."""

    tensor: str
    role: str
    method: str
    params: dict
    range: ActivationRange

    @classmethod
    def from_range(cls, point, method: str, params: dict, estimated: ActivationRange) -> PointScale:
        return cls(point.tensor, point.role, method, params, estimated)

    @property
    def amax(self) -> float:
        return self.range.amax

    @property
    def scale(self) -> float:
        return self.range.scale

    @property
    def groups(self) -> tuple[ChannelGroup, ...] | None:
        return self.range.groups

    @property
    def tensor_scale(self) -> float:
        return self.range.tensor_scale

    def to_json(self) -> dict:
        return {"tensor": self.tensor, "role": self.role, "method": self.method, "params": self.params,
                **self.range.to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str) -> PointScale:
        groups = data.get("groups") if isinstance(data, dict) else None
        if groups is not None:
            if not isinstance(groups, list) or not groups:
                raise _Invalid(f"{where}groups is not a list of channel groups")
            groups = tuple(_group_from_json(g, f"{where}group {k} ") for k, g in enumerate(groups))
            channels = sorted(c for group in groups for c in group.channels)
            if channels != list(range(len(channels))):
                raise _Invalid(
                    f"{where}groups do not split channels 0-{len(channels) - 1} with each channel in exactly one group"
                )
        return cls(
            tensor=_require(data, "tensor", str, where),
            role=_require(data, "role", str, where),
            method=_require(data, "method", str, where),
            params=_require(data, "params", dict, where),
            range=ActivationRange(
                float(_require(data, "amax", (int, float), where)),
                _positive(float(_require(data, "scale", (int, float), where)), f"{where}scale"),
                groups,
            ),
        )


@dataclass(frozen=True)
class Calibration:
    """A calibration file: which points are quantized, with what ranges, for which model."""

    recipe: str
    model: dict
    statistics_sha256: str
    data: dict
    samples: int
    scope: str
    method: str
    params: dict
    weights: str
    embedding_tables_quantized: bool
    kept_in_float: tuple[str, ...]
    kept_reason: str
    total_points: int
    tensors: dict[str, PointScale]
    qtool_version: str = __version__
    grid: str = GRID
    smoothing: dict | None = None  # the migration (alpha, graph, factors) applied before calibrating
    mixed_precision: dict | None = None  # the search that chose the points kept in float
    weight_bits: int = WEIGHT_BITS[0]  # the projection weights' grid; written only when not the default
    format: str = CALIBRATION_FORMAT

    @property
    def quantized_points(self) -> int:
        return len(self.tensors)

    def without_points(self, kept: list[str], reason: str) -> Calibration:
        """This calibration with the points in `kept` left in float."""
        return replace(
            self,
            tensors={name: entry for name, entry in self.tensors.items() if name not in kept},
            kept_in_float=tuple(name for name in self.tensors if name in kept),
            kept_reason=reason,
        )

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["kept_in_float"] = list(self.kept_in_float)
        data["tensors"] = {name: entry.to_json() for name, entry in self.tensors.items()}
        data["quantized_points"] = self.quantized_points
        for optional in ("smoothing", "mixed_precision"):
            if data[optional] is None:
                del data[optional]
        if self.weight_bits == WEIGHT_BITS[0]:  # files of the default grid stay as they were
            del data["weight_bits"]
        return data

    @classmethod
    def from_json(cls, data: Any, source: str = "the calibration") -> Calibration:
        """A validated calibration, or a one-line error naming the first problem."""
        if not isinstance(data, dict) or "tensors" not in data or "format" not in data:
            raise QtoolError(f"{source} is not a qtool calibration file; write one with `qtool calibrate`")
        if data["format"] != CALIBRATION_FORMAT:
            raise QtoolError(
                f"{source} is a calibration of format {data['format']!r}; this qtool reads {CALIBRATION_FORMAT!r}: "
                "calibrate again with this version"
            )
        try:
            tensors = _require(data, "tensors", dict)
            calibration = cls(
                recipe=_require(data, "recipe", str),
                model=_require(data, "model", dict),
                statistics_sha256=_require(data, "statistics_sha256", str),
                data=_require(data, "data", dict),
                samples=_require(data, "samples", int),
                scope=_require(data, "scope", str),
                method=_require(data, "method", str),
                params=_require(data, "params", dict),
                weights=_require(data, "weights", str),
                embedding_tables_quantized=_require(data, "embedding_tables_quantized", bool),
                kept_in_float=tuple(_require(data, "kept_in_float", list)),
                kept_reason=_require(data, "kept_reason", str),
                total_points=_require(data, "total_points", int),
                tensors={name: PointScale.from_json(entry, f"point {name}: ") for name, entry in tensors.items()},
                qtool_version=_require(data, "qtool_version", str),
                grid=_require(data, "grid", str),
                smoothing=data.get("smoothing"),
                mixed_precision=data.get("mixed_precision"),
                weight_bits=data.get("weight_bits", WEIGHT_BITS[0]),
            )
            if calibration.weight_bits not in WEIGHT_BITS or isinstance(calibration.weight_bits, bool):
                raise _Invalid(f"weight_bits {calibration.weight_bits!r} is not one of {WEIGHT_BITS}")
            if calibration.scope not in SCOPES:
                raise _Invalid(f"scope {calibration.scope!r} is not one of {', '.join(SCOPES)}")
            if calibration.weights not in WEIGHT_MODES:
                raise _Invalid(f"weights {calibration.weights!r} is not one of {', '.join(WEIGHT_MODES)}")
            if "quantized_points" in data and data["quantized_points"] != len(tensors):
                raise _Invalid(f"quantized_points says {data['quantized_points']} but {len(tensors)} points are listed")
        except _Invalid as problem:
            raise QtoolError(f"{source} is a damaged calibration file ({problem}); calibrate again") from None
        return calibration

    def check_model(self, model_path: Path, source: str = "the calibration") -> None:
        """Refuse a calibration made for another model than the graph at `model_path`."""
        if self.model != model_identity(model_path):
            raise QtoolError(
                f"{source} was calibrated for {self.model.get('source_model')} "
                f"(sha256 {str(self.model.get('model_sha256'))[:12]}), not for {model_path}; "
                "calibrate this model with `qtool calibrate`"
            )


def calibrate(stats: ActivationStats, config: CalibrateConfig) -> Calibration:
    """The calibration of `config` from the statistics: a range for every point the recipe quantizes."""
    config.validate()
    calibrator = config.calibrator()
    scope = check_scope(config.scope)
    kept, reason = kept_in_float(stats, config.keep_fp, config.mixed_precision, config.outlier_ratio)
    tensors = {
        point.name: PointScale.from_range(
            point, calibrator.name, calibrator.params(), calibrator.estimate(point, stats.stats[point.name])
        )
        for point in stats.points
        if point.role in scope.roles and point.name not in kept
    }
    return Calibration(
        recipe=config.recipe_name(),
        model=stats.manifest["model"],
        statistics_sha256=stats.content_sha256,
        data=stats.manifest["data"],
        samples=stats.manifest["samples"],
        scope=config.scope,
        method=calibrator.name,
        params=calibrator.params(),
        weights=config.weights,
        weight_bits=config.weight_bits,
        embedding_tables_quantized=scope.embedding_tables,
        kept_in_float=tuple(kept),
        kept_reason=reason,
        total_points=len(stats.points),
        tensors=tensors,
    )


def load_calibration(path: Path, model_path: Path | None = None) -> Calibration:
    """A calibration file, validated and, given `model_path`, checked to belong to that model."""
    calibration = Calibration.from_json(read_json(path), str(path))
    if model_path is not None:
        calibration.check_model(model_path, str(path))
    return calibration


def write_calibration(calibration: Calibration, path: Path) -> Path:
    return write_json(path, calibration.to_json())


def calibration_paths(folder: Path, recipe: str) -> tuple[Path, Path]:
    """Where a recipe's calibration file and QDQ graph live in `folder`."""
    return Path(folder) / f"{recipe}.calib.json", Path(folder) / f"{recipe}.qdq.onnx"
