"""QNLI loading, deterministic splits, tokenization and length-bucketed batches."""

from qtool.data.batching import Batch, TokenizedPart, make_batches, tokenize_part
from qtool.data.qnli import LABELS, DataConfig, Example, QnliSplit, load_qnli

__all__ = [
    "LABELS",
    "Batch",
    "DataConfig",
    "Example",
    "QnliSplit",
    "TokenizedPart",
    "load_qnli",
    "make_batches",
    "tokenize_part",
]
