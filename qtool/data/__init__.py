"""Labelled texts or pairs from files, GLUE folders or datasets; deterministic splits, tokenization and
length-bucketed batches."""

from qtool.data.batching import Batch, TokenizedPart, make_batches, tokenize_part
from qtool.data.qnli import LABELS
from qtool.data.sources import load_data, tuning_rows
from qtool.data.split import DataConfig, DataSplit, Example, QnliSplit

load_qnli = load_data  # the name from when QNLI was the only data

__all__ = [
    "LABELS",
    "Batch",
    "DataConfig",
    "DataSplit",
    "Example",
    "QnliSplit",
    "TokenizedPart",
    "load_data",
    "load_qnli",
    "make_batches",
    "tokenize_part",
    "tuning_rows",
]
