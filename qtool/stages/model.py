"""The stages that make the FP32 classifier graph: fine-tune (when the model has no head) and export."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from qtool.cache import cached_stage
from qtool.data import QnliSplit
from qtool.errors import QtoolError
from qtool.fileio import manifest_path, read_json
from qtool.models.finetune import FinetuneConfig, classifier_for, finetune
from qtool.models.onnx_export import TOKENIZER_DIR, ExportConfig, export_onnx
from qtool.models.resolve import ModelSource, resolve_model


@dataclass(frozen=True)
class Exported:
    source: ModelSource  # the classifier that was exported
    graph: Path
    manifest: dict
    finetune: dict | None  # the fine-tuning manifest when the model had no head of its own


def finetune_stage(
    model: str | None, split: QnliSplit, config: FinetuneConfig, artifacts: Path, max_length: int, force: bool = False
) -> tuple[Path, dict]:
    """`qtool finetune`: the fine-tuned classifier's folder under ARTIFACTS/models/ and its manifest."""
    return finetune(resolve_model(model), split, config, Path(artifacts), max_length, force=force)


def export_stage(
    model: str | None,
    split: QnliSplit,
    artifacts: Path,
    config: ExportConfig = ExportConfig(),
    finetune_config: FinetuneConfig = FinetuneConfig(),
    output: Path | None = None,
    allow_finetune: bool = False,
    force: bool = False,
) -> Exported:
    """`qtool export`: ARTIFACTS/<model>/fp32.onnx (or `output`), reused while the source weights and
    export options are unchanged. A model without a classification head is replaced by its fine-tuned copy,
    which is trained first only with `allow_finetune`."""
    source, finetuned = classifier_for(
        model, split, finetune_config, Path(artifacts), config.max_length, allow_finetune=allow_finetune
    )
    target = Path(output or Path(artifacts) / source.slug / "fp32.onnx")
    # "inputs": exports before keyword inputs (2026-11-30) fed RoBERTa token types; they are made again.
    key = {"model_sha256": source.content_hash, "config": asdict(config), "inputs": "model_input_names"}
    force = force or not (target.parent / TOKENIZER_DIR).is_dir()  # the graph is read with its tokenizer
    manifest = cached_stage(
        manifest_path(target),
        key,
        lambda: export_onnx(source, split, target, config),
        artifact=target,
        force=force,
        stage="export",
    )
    return Exported(source, target, manifest, finetuned)


def export_manifest(graph: Path) -> dict:
    """What `export_stage` recorded about the FP32 graph at `graph` (source model, parity, versions)."""
    data = read_json(manifest_path(graph))
    if not isinstance(data, dict) or not isinstance(data.get("result"), dict):
        raise QtoolError(f"{graph} has no export record beside it; export it with `qtool export`")
    return data["result"]
