"""The precision policy: which quantization points and weights a recipe quantizes.

Scopes:
- `all`: the study's global W8A8. Every projection weight and embedding table, and every
  quantization point: embeddings, Q/K/V, attention probabilities and context, dense outputs,
  residual sums (LayerNorm inputs), LayerNorm outputs, the FFN intermediate and activation,
  pooler and classifier inputs.
- `gemm`: the usual TensorRT placement. Projection weights, and the inputs of every MatMul/Gemm
  and residual Add; residual sums, the GELU input and the embedding sum stay in float.
- `gemm-inputs`: quantize_dynamic's placement with static scales. Projection weights and the
  values entering a MatMul/Gemm (attention matmuls included), quantized on those edges only: a
  LayerNorm output feeds its projections quantized and its residual Add in float, the dense
  outputs that feed only a residual Add stay in float, so the residual stream is never quantized.
  (ONNX Runtime's quantize_static quantizes the same tensors but feeds the residual Add the
  dequantized value.) A point with no MatMul/Gemm reader, the last LayerNorm output read by the
  pooler's token Gather, is quantized for its readers as in `gemm`.

Overrides keep points in higher precision (float here): glob patterns over point names, or a
preset: `paper` (the FFN output, the residual sum after it and the LayerNorm that follows, in
every layer, after Bondarenko et al. 2021) or `outliers` (the points whose max |x| stands at
least `outlier_ratio` times above their 99.99th percentile, measured by `qtool analyze`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from qtool.analysis.outliers import OutlierConfig, point_reports
from qtool.defaults import OUTLIER_RATIO
from qtool.errors import QtoolError
from qtool.exporter.points import ROLES, QuantPoint


@dataclass(frozen=True)
class Scope:
    roles: frozenset[str]
    embedding_tables: bool = False  # quantize the embedding tables read by Gather
    gemm_edges_only: bool = False  # Q/DQ only where a value enters a MatMul/Gemm


SCOPES: dict[str, Scope] = {
    "all": Scope(frozenset(ROLES), embedding_tables=True),
    "gemm": Scope(frozenset(ROLES) - {"embeddings_sum", "residual_sum", "ffn_intermediate"}),
    "gemm-inputs": Scope(
        frozenset(ROLES) - {"embeddings_sum", "residual_sum", "ffn_intermediate", "attention_output", "ffn_output"},
        gemm_edges_only=True,
    ),
}
PAPER_PATTERNS = ("layer.*.ffn.output", "layer.*.ffn.residual_sum", "layer.*.ffn.layernorm")
MIXED_PRECISION_PRESETS = ("paper", "outliers")


def check_scope(scope: str) -> Scope:
    if scope not in SCOPES:
        raise QtoolError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    return SCOPES[scope]


def match_patterns(points: Iterable[QuantPoint], patterns: Iterable[str]) -> list[str]:
    names = [p.name for p in points]
    kept: list[str] = []
    for pattern in patterns:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            examples = ", ".join(names[:3] + names[-2:])
            raise QtoolError(
                f"--keep-fp {pattern!r} matches no quantization point; names look like {examples} "
                "(see `qtool analyze --json` for all)"
            )
        kept.extend(n for n in matched if n not in kept)
    return kept


def outlier_points(stats, ratio: float = OUTLIER_RATIO) -> list[str]:
    if ratio <= 1:
        raise QtoolError(f"--outlier-ratio must be above 1, got {ratio:g}")
    reports = point_reports(stats, OutlierConfig())
    return [r["name"] for r in reports if (r["absmax_over_percentile"] or 0) >= ratio]


def kept_in_float(stats, patterns: Iterable[str], preset: str | None, outlier_ratio: float) -> tuple[list[str], str]:
    """Names of the points kept in higher precision, and a sentence that says why."""
    patterns = list(patterns)
    reasons = []
    kept = match_patterns(stats.points, patterns) if patterns else []
    if patterns:
        reasons.append(f"--keep-fp {' '.join(patterns)}")
    if preset == "paper":
        kept += [n for n in match_patterns(stats.points, PAPER_PATTERNS) if n not in kept]
        reasons.append("preset paper: " + ", ".join(PAPER_PATTERNS))
    elif preset == "outliers":
        kept += [n for n in outlier_points(stats, outlier_ratio) if n not in kept]
        reasons.append(f"preset outliers: max|x| >= {outlier_ratio:g} x p99.99")
    elif preset is not None:
        raise QtoolError(f"unknown --mixed-precision preset {preset!r}; choose {', '.join(MIXED_PRECISION_PRESETS)}")
    return kept, "; ".join(reasons)
