"""Fine-tune a BERT-family encoder into a classifier for the data's labels, cached by a manifest.

The fine-tuned model is saved in Hugging Face format under `artifacts/models/` with a manifest
(base model and its hash, data fingerprint, seed, hyper-parameters, eval accuracy) and reused
whenever a run asks for the same manifest.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from qtool import __version__
from qtool.cache import read_record
from qtool.data import DataSplit, QnliSplit, make_batches, tokenize_part
from qtool.data.labels import label_of_output, output_names
from qtool.defaults import MAX_LENGTH, SEED
from qtool.errors import QtoolError
from qtool.fileio import atomic_dir, sha256_text, write_json
from qtool.models.families import model_input_names
from qtool.models.resolve import (
    ModelSource,
    check_family,
    is_classifier,
    load_classifier,
    load_config,
    load_tokenizer,
)
from qtool.progress import progress_bar

log = logging.getLogger(__name__)

MANIFEST_NAME = "qtool-finetune.json"


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = SEED
    max_steps: int | None = None
    eval_batch_size: int = 64

    def validate(self) -> None:
        if not math.isfinite(self.epochs) or self.epochs <= 0:
            raise QtoolError(f"--epochs must be positive, got {self.epochs}")
        if self.batch_size < 1:
            raise QtoolError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0 < self.learning_rate < 1:
            raise QtoolError(f"--lr must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise QtoolError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps is not None and self.max_steps < 1:
            raise QtoolError(f"--max-steps must be at least 1, got {self.max_steps}")


def finetune_key(source: ModelSource, split: QnliSplit, config: FinetuneConfig, max_length: int) -> dict:
    """Everything that decides the fine-tuned weights; equal keys reuse the cached model."""
    return {
        "base_model": source.name,
        "base_model_sha256": source.content_hash,
        "data": split.describe(),
        "max_length": max_length,
        "hyper_parameters": asdict(config),
    }


def finetuned_dir(artifacts: Path, source: ModelSource, key: dict) -> Path:
    digest = sha256_text(repr(sorted(key.items())))[:10]
    return Path(artifacts) / "models" / f"{source.slug}-qnli-{digest}"


def cached_finetune(directory: Path, key: dict) -> dict | None:
    """The manifest of the fine-tuned model in `directory` when it was trained with `key`."""
    return read_record(directory / MANIFEST_NAME, key)


def _label_config(labels: tuple[str, ...]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: index for index, name in enumerate(labels)},
        "problem_type": "single_label_classification",  # a checkpoint's regression or multi-label loss does not carry over
    }


def head_outputs(model_config, split: DataSplit, where: str) -> np.ndarray | None:
    """For a classifier, the data label of each of its outputs (a one-line error when its labels are
    not the data's: qtool never replaces a trained head); None for a model without a head."""
    if not is_classifier(model_config):
        return None
    outputs = output_names(getattr(model_config, "id2label", None), model_config.num_labels)
    fix = "qtool does not replace a trained head: pass its base encoder (no classification head) to fine-tune it, or data with its labels"
    return label_of_output(outputs, split.labels, where, fix)


def _torch_batches(batches, names: tuple[str, ...]):
    import torch

    for batch in batches:
        yield {name: torch.from_numpy(batch.feeds[name]) for name in names}, torch.from_numpy(batch.labels)


def _accuracy(model, part, batch_size: int, names: tuple[str, ...]) -> float:
    import torch

    correct = 0
    model.eval()
    with torch.inference_mode():
        for feeds, labels in _torch_batches(make_batches(part, batch_size), names):
            correct += int((model(**feeds).logits.argmax(-1) == labels).sum())
    return correct / len(part)


def finetune(
    source: ModelSource,
    split: QnliSplit,
    config: FinetuneConfig,
    artifacts: Path,
    max_length: int = MAX_LENGTH,
    force: bool = False,
) -> tuple[Path, dict]:
    """Fine-tune (or reuse) a classifier for the data's labels; return its folder and manifest."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    config.validate()
    key = finetune_key(source, split, config, max_length)
    directory = finetuned_dir(artifacts, source, key)
    if not force and (cached := cached_finetune(directory, key)):
        log.info("reusing fine-tuned model %s (eval accuracy %.4f)", directory, cached["eval_accuracy"])
        return directory, cached

    model_config = load_config(source)
    check_family(model_config, source.name, max_length)
    outputs = head_outputs(model_config, split, source.name)
    if outputs is not None:
        log.warning("%s already has a classification head for these labels; fine-tuning it further", source.name)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    tokenizer = load_tokenizer(source.path)
    labelled = {} if outputs is not None else _label_config(split.labels)
    model = load_classifier(source.path, attn_implementation="eager", ignore_mismatched_sizes=True, **labelled)
    inputs = model_input_names(model, tokenizer)
    train = tokenize_part(tokenizer, split.part("train"), max_length)
    evaluation = tokenize_part(tokenizer, split.part("eval"), max_length)
    if outputs is not None:  # the data's label indices as the head's outputs
        output_of = np.argsort(outputs)
        train, evaluation = (replace(p, labels=output_of[p.labels]) for p in (train, evaluation))

    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = config.max_steps or math.ceil(steps_per_epoch * config.epochs)
    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": config.weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)

    started = time.perf_counter()
    step, seen, smoothed_loss = 0, 0, None
    model.train()
    with progress_bar(f"fine-tune {source.name}", total=total_steps) as bar:
        epoch = 0
        while step < total_steps:
            for feeds, labels in _torch_batches(
                make_batches(train, config.batch_size, shuffle_seed=config.seed + epoch), inputs
            ):
                loss = model(**feeds, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                seen += len(labels)
                smoothed_loss = loss.item() if smoothed_loss is None else 0.95 * smoothed_loss + 0.05 * loss.item()
                rate = seen / (time.perf_counter() - started)
                bar.advance(1, status=f"epoch {epoch + 1} loss {smoothed_loss:.4f} {rate:.0f} ex/s")
                if step >= total_steps:
                    break
            epoch += 1
    train_seconds = time.perf_counter() - started
    accuracy = _accuracy(model, evaluation, config.eval_batch_size, inputs)
    log.info("fine-tuned %d steps in %.0f s; eval accuracy %.4f", step, train_seconds, accuracy)

    manifest = {
        "key": key,
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "eval_accuracy": accuracy,
        "eval_examples": len(evaluation),
        "qtool_version": __version__,
    }
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MANIFEST_NAME, manifest)
    return directory, manifest


def classifier_for(
    spec: str | None,
    split: QnliSplit,
    config: FinetuneConfig,
    artifacts: Path,
    max_length: int = MAX_LENGTH,
    allow_finetune: bool = True,
) -> tuple[ModelSource, dict | None]:
    """The classifier for `--model`: the model itself if it has a head for the data's labels, else its
    fine-tuned copy."""
    from qtool.models.resolve import resolve_model

    source = resolve_model(spec)
    model_config = load_config(source)
    check_family(model_config, source.name, max_length)
    if head_outputs(model_config, split, source.name) is not None:
        return source, None
    key = finetune_key(source, split, config, max_length)
    directory = finetuned_dir(artifacts, source, key)
    manifest = cached_finetune(directory, key)
    if manifest is None:
        if not allow_finetune:
            raise QtoolError(
                f"{source.name} has no classification head, and no fine-tuned copy with the default settings is under "
                f"{Path(artifacts) / 'models'}; run `qtool finetune --model {source.spec}` with the same --data, "
                "or pass as --model the folder that `qtool finetune` printed"
            )
        directory, manifest = finetune(source, split, config, artifacts, max_length)
    return resolve_model(str(directory)), manifest
