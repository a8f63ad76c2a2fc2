"""PyTorch eager backend: the reference point of CPU benchmarks."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from qtool.errors import QtoolError
from qtool.runners.base import Runner

# What QNLI pairs are tokenized into; a model takes the ones its forward() accepts.
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_input_names(model, tokenizer=None) -> tuple[str, ...]:
    """The token inputs a transformers `model` takes, by keyword, in its forward() order.

    `token_type_ids` only when the model has a segment table to read them with (RoBERTa's holds one
    row, DistilBERT and MPNet have none) and the tokenizer, when given, produces them.
    """
    accepted = list(inspect.signature(model.forward).parameters)
    names = [name for name in TOKEN_INPUTS if name in accepted]
    segments = getattr(model.config, "type_vocab_size", 0) or 0
    produced = getattr(tokenizer, "model_input_names", TOKEN_INPUTS) if tokenizer is not None else TOKEN_INPUTS
    if "token_type_ids" in names and (segments < 2 or "token_type_ids" not in produced):
        names.remove("token_type_ids")
    if "input_ids" not in names:
        raise QtoolError(f"{type(model).__name__}.forward takes no input_ids by keyword; qtool feeds BERT-family models")
    return tuple(sorted(names, key=accepted.index))


class TorchRunner(Runner):
    """A Hugging Face sequence classifier run by PyTorch in eval mode, without autograd, fed the
    token inputs it takes (`model_input_names`)."""

    name = "torch-eager"
    library = "torch"

    def __init__(self, model_dir: Path, threads: int | None = None) -> None:
        super().__init__()
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.model = None
        self._inputs: tuple[str, ...] = ()

    def _activate(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.model_dir, attn_implementation="eager"
        ).eval()
        self._inputs = model_input_names(self.model)

    def _deactivate(self) -> None:
        self.model = None

    def input_names(self) -> list[str]:
        return list(self._inputs)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            logits = self.model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}).logits
        return {"logits": logits.numpy()}
