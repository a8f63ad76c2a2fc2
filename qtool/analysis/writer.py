"""Write the outlier analysis as JSON, CSV and figures."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from qtool.analysis.collect import ActivationStats
from qtool.analysis.outliers import OutlierConfig, layer_summary, point_reports
from qtool.analysis.plots import write_figures
from qtool.fileio import write_json, write_text

CSV_COLUMNS = (
    "name",
    "role",
    "layer",
    "elements",
    "channels",
    "mean",
    "std",
    "absmax",
    "kurtosis",
    "top_energy_share",
    "percentile",
    "absmax_over_percentile",
    "outlier_channels",
)


def analysis_document(stats: ActivationStats, config: OutlierConfig) -> dict:
    reports = point_reports(stats, config)
    manifest = stats.manifest
    return {
        "model": manifest["model"],
        "data": manifest["data"],
        "samples": manifest["samples"],
        "sample_sources": manifest["sample_sources"],
        "definitions": config.definitions(),
        "config": {"sigma": config.sigma, "top_fraction": config.top_fraction, "percentile": config.percentile},
        "layers": layer_summary(reports),
        "points": reports,
    }


def _csv_text(reports: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for report in reports:
        row = dict(report)
        row["outlier_channels"] = " ".join(f"{c['channel']}:{c['absmax']:.3g}" for c in report["outlier_channels"])
        writer.writerow(row)
    return buffer.getvalue()


def write_analysis(stats: ActivationStats, document: dict, folder: Path, figures: bool = True) -> dict[str, str]:
    folder = Path(folder)
    paths = {"json": str(write_json(folder / "analysis.json", document))}
    paths["csv"] = str(write_text(folder / "analysis.csv", _csv_text(document["points"])))
    if figures:
        label = document["model"].get("source_model") or "model"
        paths.update(write_figures(stats, document["points"], folder, label))
    return paths
