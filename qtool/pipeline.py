"""`qtool reproduce`: the study as a chain of cached stages.

Today's chain: fine-tune (when the model has no QNLI head), export FP32 ONNX, evaluate it.
Every stage writes files that the next reads, so a rerun reuses what is already there.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qtool import __version__
from qtool.data import QnliSplit
from qtool.exporter import ExportConfig, export_onnx
from qtool.fileio import manifest_path, read_json, sha256_file, write_json
from qtool.models.finetune import FinetuneConfig, classifier_for
from qtool.models.resolve import ModelSource, load_tokenizer
from qtool.runtime import OrtRunner
from qtool.runtime.evaluate import EvalConfig, evaluate, logit_to_label

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReproduceConfig:
    seed: int = 0
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def cached_export(source: ModelSource, target: Path, config: ExportConfig) -> dict | None:
    manifest_file = manifest_path(target)
    if not (target.is_file() and manifest_file.is_file()):
        return None
    manifest = read_json(manifest_file)
    fresh = (
        manifest.get("model_sha256") == source.content_hash
        and manifest.get("config") == asdict(config)
        and manifest.get("onnx_sha256") == sha256_file(target)
    )
    return manifest if fresh else None


def run_reproduce(model: str | None, split: QnliSplit, config: ReproduceConfig, artifacts: Path) -> dict:
    finetune_config = FinetuneConfig(**{**asdict(config.finetune), "seed": config.seed})
    source, finetune_manifest = classifier_for(
        model, split, finetune_config, artifacts, config.export.max_length, allow_finetune=True
    )
    fp32 = Path(artifacts) / source.slug / "fp32.onnx"
    export_manifest = cached_export(source, fp32, config.export)
    if export_manifest is None:
        export_manifest = export_onnx(source, split, fp32, config.export)
    else:
        log.info("reusing %s", fp32)

    with OrtRunner(fp32, threads=config.eval.threads) as runner:
        fp32_result = evaluate(
            runner,
            load_tokenizer(source.path),
            split,
            config.eval,
            logit_to_label(fp32),
            config.export.max_length,
            description="eval fp32",
        )
    result = {
        "model": source.name,
        "model_sha256": source.content_hash,
        "data_split": split.describe(),
        "finetune": finetune_manifest,
        "export_parity": export_manifest["parity"]["max_abs_logit_diff"],
        "results": [{"configuration": "fp32", "graph": str(fp32), "scope": "none (FP32)", **fp32_result}],
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "qtool_version": __version__,
    }
    write_json(Path(artifacts) / "report" / "results.json", result)
    return result
