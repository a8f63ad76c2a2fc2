"""Range estimation, kept apart from the quantization grid and the precision policy.

The collector observes activations once and keeps their statistics (`TensorStats`); a calibrator
only turns one point's statistics into a range. The grid (symmetric INT8, zero point 0) turns a
range into a scale; the precision policy (scope and overrides) decides which points are
quantized at all.

A calibrator declares its options as a frozen dataclass (`Calibrator.options`) whose fields carry
their help and bounds (`method_option`); `make_calibrator` converts and checks every given value
against them, the CLI's `--method-option NAME=VALUE` and configuration files take their names from
them, and `qtool.calibration_methods()` lists them.
"""

from __future__ import annotations

import math
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from qtool.analysis.stats import TensorStats
from qtool.errors import QtoolError
from qtool.exporter.grid import ActivationRange, ChannelGroup
from qtool.exporter.points import QuantPoint

__all__ = ["ActivationRange", "Calibrator", "ChannelGroup", "NoOptions", "method_option"]  # the range type lives with the grid

FLAGGED_METHOD_OPTIONS = ("p", "groups", "grouping", "permute")  # options of qtool's methods with a flag of their own


def method_option(
    default: Any,
    help: str,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
    choices: tuple[str, ...] = (),
) -> Any:
    """A field of a calibrator's options dataclass: its default, help and bounds. `above` is an
    exclusive lower bound, `at_least` and `at_most` inclusive ones; `choices` lists the texts a
    field takes (beside numbers, for a numeric field, e.g. a group count or `auto`)."""
    bounds = {"above": above, "at_least": at_least, "at_most": at_most, "choices": tuple(choices)}
    return field(default=default, metadata={"help": help, **bounds})


@dataclass(frozen=True)
class NoOptions:
    """The options of a calibrator that takes none."""


def option_names(calibrator: type) -> tuple[str, ...]:
    """The keyword options a calibrator class takes."""
    return tuple(f.name for f in fields(calibrator.options))


def _flag(name: str) -> str:
    return f"--{name}" if name in FLAGGED_METHOD_OPTIONS else f"--method-option {name}"


NO_BOUNDS = {"above": None, "at_least": None, "at_most": None, "choices": ()}


def _kinds(options: type) -> dict[str, set]:
    """Each field's accepted types (bool, int, float, str), from its resolved annotation, None aside."""
    hints = typing.get_type_hints(options)
    kinds = {}
    for option in fields(options):
        hint = hints.get(option.name, str)
        members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kinds[option.name] = {m for m in members if m is not type(None)} & {bool, int, float, str} or {str}
    return kinds


def _bounds_text(meta: dict) -> str:
    low = f"({meta['above']:g}" if meta["above"] is not None else f"[{meta['at_least']:g}" if meta["at_least"] is not None else ""
    high = f"{meta['at_most']:g}]" if meta["at_most"] is not None else ""
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f"more than {meta['above']:g}" if meta["above"] is not None else f"at least {meta['at_least']:g}"
    return f"at most {meta['at_most']:g}" if high else ""


def _converted(option: Field, kinds: set, value: Any) -> Any:
    """`value` (from the API, a TOML file, or text from the command line) as the field's type."""
    meta, flag = {**NO_BOUNDS, **option.metadata}, _flag(option.name)
    if isinstance(value, str) and value.strip() in meta["choices"]:
        return value.strip()
    if kinds == {bool}:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise QtoolError(f"{flag} takes true or false, got {value!r}")
    if str in kinds and not kinds & {int, float}:
        if meta["choices"]:
            raise QtoolError(f"{flag} must be one of {', '.join(meta['choices'])}, got {value!r}")
        return str(value)
    whole = float not in kinds
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (whole and (number != int(number) or str(value).strip() not in (str(int(number)), f"{int(number)}.0"))):
        accepted = "a whole number" if whole else "a number"
        others = f" or {', '.join(meta['choices'])}" if meta["choices"] else ""
        raise QtoolError(f"{flag} must be {accepted}{others}, got {value!r}")
    number = int(number) if whole else number
    outside = (
        (meta["above"] is not None and not number > meta["above"])
        or (meta["at_least"] is not None and number < meta["at_least"])
        or (meta["at_most"] is not None and number > meta["at_most"])
    )
    if outside:
        others = f" (or {', '.join(meta['choices'])})" if meta["choices"] else ""
        raise QtoolError(f"{flag} must be {_bounds_text(meta)}{others}, got {value!r}")
    return number


def checked_options(method: str, options: type, given: dict[str, Any]) -> Any:
    """`options` (a calibrator's dataclass) from the given values, each converted and checked against
    its field's type and bounds; None values take the field's default."""
    known = {f.name: f for f in fields(options)}
    unknown = sorted(name for name in given if name not in known)
    if unknown:
        raise QtoolError(
            f"{_flag(unknown[0])} is not an option of method {method} (it takes {', '.join(known) or 'none'})"
        )
    kinds = _kinds(options)
    return options(**{name: _converted(known[name], kinds[name], v) for name, v in given.items() if v is not None})


def describe_options(options: type) -> dict[str, dict]:
    """Each option's default, help and bounds, as `qtool.calibration_methods()` lists them."""
    described = {}
    for option in fields(options):
        meta = option.metadata
        bounds = _bounds_text({**NO_BOUNDS, **meta})
        default = option.default if option.default is not MISSING else None
        described[option.name] = {
            "default": default,
            "help": meta.get("help", ""),
            **({"bounds": bounds} if bounds else {}),
            **({"choices": list(meta["choices"])} if meta.get("choices") else {}),
        }
    return described


class Calibrator(ABC):
    """Turns the statistics of one quantization point into a range. The constructor takes the
    fields of `options` as keywords (values already checked by `make_calibrator`)."""

    name: str
    options: type = NoOptions

    @abstractmethod
    def params(self) -> dict: ...

    @abstractmethod
    def estimate(self, point: QuantPoint, stats: TensorStats) -> ActivationRange: ...

    def label(self) -> str:
        values = "-".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.params().values())
        return f"{self.name}-{values}" if values else self.name
