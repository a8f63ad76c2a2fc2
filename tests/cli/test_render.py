"""Tables stay readable in 80 columns and when piped: essential columns, names never split, never '…'."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from qtool.cli import render


@pytest.fixture
def screen(monkeypatch):
    def make(width: int) -> io.StringIO:
        buffer = io.StringIO()
        monkeypatch.setattr(render, "stdout", Console(file=buffer, width=width, color_system=None))
        return buffer

    return make


def _latency(p50: float) -> dict:
    keys = ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")
    return {**{k: p50 * (1 + i / 10) for i, k in enumerate(keys)}, "throughput_per_s": 1000 / p50}


def _comparison() -> dict:
    candidates = [
        {"name": name, "latency": _latency(p50), "memory": {"rss_runner_added_bytes": 91 << 20},
         "model_bytes": 87 << 20, "speedup": 12.34 / p50}
        for name, p50 in (("fp32.onnx", 12.34), ("percentile-99.99-gemm-inputs.qdq.ort.onnx", 5.67))
    ]
    return {"config": {"inputs": "qnli", "threads": 2}, "results": [{"batch": 8, "sequence_length": 128, "candidates": candidates}]}


def test_bench_table_fits_80_columns_without_cut_cells(screen):
    out = screen(80)
    render.bench_tables(_comparison(), compare=True, wide=False)
    text = out.getvalue()
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    for cell in ("13.57", "6.24", "2.18x", "p50 ms", "p99 ms", "seq/s", "speedup vs first", "8x128"):
        assert cell in text
    # a name too long for the table is a key in it and whole below it, never split, so it can be copied
    assert "[1] percentile-99.99-gemm-inputs.qdq.ort.onnx" in text.splitlines()
    assert "mean ms" not in text  # not essential: --wide shows it


def test_wide_shows_every_column_at_full_width(screen):
    out = screen(80)
    render.bench_tables(_comparison(), compare=True, wide=True)
    text = out.getvalue()
    assert "…" not in text
    header = next(line for line in text.splitlines() if "p50 ms" in line)
    for column in render.LATENCY_COLUMNS:
        assert column.name in header
    assert "percentile-99.99-gemm-inputs.qdq.ort.onnx" in text  # one unfolded cell


def test_analysis_tables_fit_80_columns(screen):
    out = screen(80)
    point = {
        "name": "layer.11.attention.residual_sum", "kurtosis": 1234.5, "top_energy_share": 0.4567, "absmax": 221.7,
        "percentile": 12.5, "absmax_over_percentile": 17.7,
        "outlier_channels": [{"channel": c, "absmax": 200.0 + c} for c in (99, 12, 300, 301, 302)],
    }
    layer = {
        "layer": "layer.11", "max_kurtosis": 1234.5, "max_kurtosis_point": point["name"], "max_top_energy_share": 0.4,
        "max_top_energy_point": point["name"], "residual_outlier_channels": [99, 12, 300],
    }
    document = {
        "model": {"source_model": "m"}, "points": [point], "layers": [layer], "definitions": {},
        "samples": 8, "sample_sources": {}, "data": {"name": "d"},
    }
    render.analysis_tables(document, {"json": "/tmp/a/analysis.json"}, top=None, wide=False)
    text = out.getvalue()
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    assert "1234.5" in text and "45.7" in text and "17.7" in text and "+1" in text


def test_fields_keep_a_long_path_on_one_line(screen):
    out = screen(60)
    path = "/home/user/artifacts/all-MiniLM-L6-v2-qnli-313f28e416/peg-k3-all.qdq.ort.onnx"
    render.print_fields("built", [("graph", path), ("kernels", "u8s8")])
    assert any(line.endswith(path) for line in out.getvalue().splitlines())
