"""PyTorch eager backend: the reference point of CPU benchmarks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from qtool.runners.base import Runner


class TorchRunner(Runner):
    """A Hugging Face sequence classifier run by PyTorch in eval mode, without autograd, fed the
    token inputs `inputs_of(model)` names (`qtool.models.families.model_input_names`)."""

    name = "torch-eager"
    library = "torch"

    def __init__(self, model_dir: Path, threads: int | None = None, *, inputs_of: Callable) -> None:
        super().__init__()
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.inputs_of = inputs_of
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
        self._inputs = tuple(self.inputs_of(self.model))

    def _deactivate(self) -> None:
        self.model = None

    def input_names(self) -> list[str]:
        return list(self._inputs)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            logits = self.model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}).logits
        return {"logits": logits.numpy()}
