"""Export a Hugging Face sequence classifier to FP32 ONNX and prove it matches PyTorch.

The TorchScript-based exporter is used on purpose: it names nodes after the module path
(`/bert/encoder/layer.3/output/LayerNorm/...`), and later stages name quantization points by it.
Attention is exported in its eager form, so the score and context MatMuls are explicit nodes.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qtool import __version__
from qtool.data import QnliSplit, make_batches, tokenize_part
from qtool.data.batching import Batch
from qtool.data.labels import is_generic, label_of_output, output_names
from qtool.defaults import MAX_LENGTH
from qtool.errors import QtoolError
from qtool.fileio import atomic_dir, atomic_path, sha256_file
from qtool.graph import METADATA_PREFIX
from qtool.models.families import model_input_names
from qtool.models.resolve import (
    ModelSource,
    check_family,
    is_classifier,
    load_classifier,
    load_config,
    load_tokenizer,
)

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    parity_tolerance: float = 1e-4
    parity_batch_size: int = 8
    max_length: int = MAX_LENGTH

    def validate(self) -> None:
        if self.opset < 17:
            raise QtoolError(f"--opset must be 17 or newer (LayerNormalization), got {self.opset}")


def parity_batches(tokenizer, split: QnliSplit, config: ExportConfig) -> list[Batch]:
    """Real eval batches of several lengths: the shortest, a middle and the longest, plus one single pair."""
    part = tokenize_part(tokenizer, split.part("eval"), config.max_length)
    batches = make_batches(part, config.parity_batch_size)
    chosen = [batches[0], batches[len(batches) // 2], batches[-1]]
    single = make_batches(part, 1)
    chosen.append(single[len(single) // 3])
    return chosen


def _torch_logits(model, batch: Batch, names: tuple[str, ...]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(**{name: torch.from_numpy(batch.feeds[name]) for name in names}).logits.numpy()


def _export_graph(model, example: Batch, names: tuple[str, ...], path: Path, opset: int) -> None:
    """Trace `model` with its token inputs passed by keyword, so each lands in its own parameter."""
    import torch

    dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
    dynamic["logits"] = {0: "batch"}
    kwargs = {name: torch.from_numpy(example.feeds[name]) for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (),
            str(path),
            kwargs=kwargs,
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def export_onnx(
    source: ModelSource,
    split: QnliSplit,
    output: Path,
    config: ExportConfig = ExportConfig(),
) -> dict:
    """Write `output` (FP32 ONNX) and its tokenizer beside it; return the export record (parity, versions)."""
    import onnx
    import torch

    from qtool.runners import OrtRunner

    config.validate()
    model_config = load_config(source)
    check_family(model_config, source.name, config.max_length)
    if not is_classifier(model_config):
        raise QtoolError(
            f"{source.name} has no classification head; fine-tune it first "
            f"(qtool finetune --model {source.spec}) and export the folder it prints"
        )
    labels = output_names(getattr(model_config, "id2label", None), model_config.num_labels)
    if label_of_output(labels, split.labels, source.name).tolist() == list(range(len(labels))) and is_generic(labels):
        labels = list(split.labels)  # a head with generic names reads the data's labels in their order
    tokenizer = load_tokenizer(source.path)
    model = load_classifier(source.path, attn_implementation="eager").eval()
    names = model_input_names(model, tokenizer)
    batches = parity_batches(tokenizer, split, config)
    output = Path(output)

    with atomic_path(output) as tmp:
        try:
            _export_graph(model, batches[-1], names, tmp, config.opset)
        except (RuntimeError, ValueError) as exc:
            if "opset" not in str(exc).lower():
                raise
            raise QtoolError(
                f"PyTorch cannot export opset {config.opset} ({str(exc).splitlines()[0]}); pass a lower --opset"
            ) from None
        graph = onnx.load(str(tmp))
        onnx.checker.check_model(graph, full_check=True)
        metadata = {
            "source_model": source.name,
            "model_sha256": source.content_hash,
            "labels": json.dumps(labels),
            "tokenizer": TOKENIZER_DIR,
            "precision": "fp32",
            "version": __version__,
        }
        for key, value in metadata.items():
            graph.metadata_props.add(key=METADATA_PREFIX + key, value=value)
        onnx.save(graph, str(tmp))

        max_diff, shapes = 0.0, []
        with OrtRunner(tmp, optimization_level="disable") as runner:
            for batch in batches:
                onnx_logits = runner.infer(batch.feeds)["logits"]
                diff = float(np.max(np.abs(onnx_logits - _torch_logits(model, batch, names))))
                max_diff = max(max_diff, diff)
                shapes.append(list(batch.feeds["input_ids"].shape))
        if max_diff > config.parity_tolerance:
            raise QtoolError(
                f"exported graph differs from PyTorch by {max_diff:.2e} (> {config.parity_tolerance:g}); "
                "the model uses an operation the exporter does not trace faithfully"
            )
        with atomic_dir(output.parent / TOKENIZER_DIR) as tokenizer_tmp:
            tokenizer.save_pretrained(tokenizer_tmp)

    manifest = {
        "onnx": output.name,
        "onnx_sha256": sha256_file(output),
        "source_model": source.name,
        "source_path": str(source.path),
        "model_sha256": source.content_hash,
        "opset": config.opset,
        "family": model_config.model_type,
        "inputs": list(names),
        "labels": labels,
        "parity": {
            "max_abs_logit_diff": max_diff,
            "tolerance": config.parity_tolerance,
            "batch_shapes": shapes,
            "data_split": split.describe(),
        },
        "config": asdict(config),
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "qtool_version": __version__,
    }
    log.info("exported %s (max |logit diff| vs torch %.2e over %s)", output, max_diff, shapes)
    return manifest
