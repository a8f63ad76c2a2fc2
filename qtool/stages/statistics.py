"""The stages that read activations: collect statistics once, and measure the outliers in them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from qtool import __version__
from qtool.analysis.collect import ActivationStats, CollectConfig, collect_or_load, default_stats_path
from qtool.analysis.outliers import OutlierConfig
from qtool.analysis.writer import analysis_document, write_analysis
from qtool.cache import cached_stage, read_record
from qtool.data import QnliSplit
from qtool.errors import QtoolError
from qtool.fileio import distinct_output, sha256_file
from qtool.models.families import tokenizer_for
from qtool.runners.ort import check_onnx_file


def collect_stage(
    model_path: Path,
    split: QnliSplit,
    config: CollectConfig = CollectConfig(),
    stats_path: Path | None = None,
    force: bool = False,
) -> tuple[ActivationStats, Path]:
    """`qtool collect`: statistics at every quantization point, cached in `<graph>.stats.npz`."""
    check_onnx_file(model_path)
    target = distinct_output(Path(stats_path or default_stats_path(model_path)), model_path)
    return collect_or_load(model_path, split, tokenizer_for(model_path), config, target, force=force), target


def statistics_for(
    model_path: Path,
    split: QnliSplit | None,
    config: CollectConfig = CollectConfig(),
    stats_path: Path | None = None,
    force: bool = False,
) -> ActivationStats:
    """Statistics of `model_path` on `split`: a given file (refused if it belongs to another model or
    data split, when `split` is given), or the cached file beside the graph, collected when missing or
    stale (which needs `split`)."""
    if stats_path is None:
        return collect_stage(model_path, split, config, force=force)[0]
    collected = ActivationStats.load(stats_path)
    collected.check_model(model_path)
    if split is not None and collected.manifest["data"] != split.describe():
        raise QtoolError(f"{stats_path} was collected on another data split; run `qtool collect {model_path}` again")
    return collected


def analyze_stage(
    stats: ActivationStats, config: OutlierConfig, folder: Path, figures: bool = True
) -> tuple[dict, dict[str, str]]:
    """`qtool analyze`: the outlier document and the files written (analysis.json, .csv, figures)."""
    config.validate()
    document = analysis_document(stats, config)
    return document, write_analysis(stats, document, folder, figures=figures)


def cached_analysis(
    stats: ActivationStats, stats_path: Path, config: OutlierConfig, folder: Path
) -> tuple[dict, dict[str, str]]:
    """`analyze_stage` of `stats` (read from `stats_path`), cached by that file, `config` and qtool's
    version: a rerun reads analysis.json instead of drawing the figures again (it draws them when a
    file is missing). The paths are `folder`'s, wherever the cache was written."""
    folder = Path(folder)
    record = folder / "analysis.record.json"
    key = {"statistics_sha256": sha256_file(stats_path), "config": asdict(config), "qtool": __version__}

    def located(paths: dict[str, str]) -> dict[str, str]:
        return {name: str(folder / Path(path).name) for name, path in paths.items()}

    recorded = read_record(record, key)
    missing = recorded is not None and not all(Path(p).is_file() for p in located(recorded["result"]).values())
    paths = cached_stage(
        record, key, lambda: analyze_stage(stats, config, folder)[1], artifact=folder / "analysis.json",
        force=missing, description="the outlier analysis", stage="analysis",
    )
    return json.loads((folder / "analysis.json").read_text(encoding="utf-8")), located(paths)
