"""PyTorch eager backend: the reference point of CPU benchmarks."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from qtool.runners.base import Runner


class TorchRunner(Runner):
    """A Hugging Face sequence classifier run by PyTorch in eval mode, without autograd.

    The model needs its main input (`input_ids`); every other feed that names a parameter of its
    `forward` (`attention_mask`, `token_type_ids`, ...) is passed on as well.
    """

    name = "torch-eager"

    def __init__(self, model_dir: Path, threads: int | None = None) -> None:
        super().__init__()
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.model = None
        self._parameters: frozenset[str] = frozenset()

    def _activate(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.model_dir, attn_implementation="eager"
        ).eval()
        self._parameters = frozenset(inspect.signature(self.model.forward).parameters)

    def _deactivate(self) -> None:
        self.model = None

    def input_names(self) -> list[str]:
        return [self.model.main_input_name]

    def _select(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: value for name, value in feeds.items() if name in self._parameters}

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            logits = self.model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}).logits
        return {"logits": logits.numpy()}
