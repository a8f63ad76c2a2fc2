"""Tokenization with the model's own tokenizer and batches with dynamic padding.

Evaluation batches are sorted by length so that no batch carries more padding than it must;
training batches are drawn from length buckets in a seeded order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qtool.data.split import Example
from qtool.defaults import MAX_LENGTH

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TokenizedPart:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: np.ndarray
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))


@dataclass(frozen=True)
class Batch:
    feeds: dict[str, np.ndarray]
    labels: np.ndarray
    indices: np.ndarray

    @property
    def size(self) -> int:
        return len(self.labels)

    @property
    def real_tokens(self) -> int:
        return int(self.feeds["attention_mask"].sum())


def _texts(examples: Sequence[Example]) -> tuple[list[str], ...]:
    """The first texts, and the second ones for a pair task: the tokenizer's positional arguments."""
    first = [e.text for e in examples]
    return (first,) if all(e.pair is None for e in examples) else (first, [e.pair or "" for e in examples])


def tokenize_part(tokenizer, examples: Sequence[Example], max_length: int = MAX_LENGTH) -> TokenizedPart:
    encoded = tokenizer(
        *_texts(examples),
        truncation=True,
        max_length=max_length,
        return_token_type_ids=True,
        return_attention_mask=False,
    )
    return TokenizedPart(
        input_ids=encoded["input_ids"],
        token_type_ids=encoded["token_type_ids"],
        labels=np.array([e.label for e in examples], dtype=np.int64),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )


def collate(part: TokenizedPart, indices: np.ndarray) -> Batch:
    width = max(len(part.input_ids[i]) for i in indices)
    input_ids = np.full((len(indices), width), part.pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((len(indices), width), dtype=np.int64)
    attention_mask = np.zeros((len(indices), width), dtype=np.int64)
    for row, index in enumerate(indices):
        length = len(part.input_ids[index])
        input_ids[row, :length] = part.input_ids[index]
        token_type_ids[row, :length] = part.token_type_ids[index]
        attention_mask[row, :length] = 1
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    return Batch(feeds=feeds, labels=part.labels[indices], indices=np.asarray(indices, dtype=np.int64))


def make_batches(
    part: TokenizedPart,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    bucket_batches: int = 50,
) -> list[Batch]:
    """Sorted-by-length batches; with `shuffle_seed`, shuffled within buckets of similar length."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    lengths = part.lengths
    if shuffle_seed is None:
        order = np.argsort(lengths, kind="stable")
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        return [collate(part, chunk) for chunk in chunks]
    rng = np.random.default_rng(shuffle_seed)
    shuffled = rng.permutation(len(part))
    bucket = batch_size * bucket_batches
    chunks = []
    for start in range(0, len(shuffled), bucket):
        members = shuffled[start : start + bucket]
        members = members[np.argsort(lengths[members], kind="stable")]
        chunks.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
    rng.shuffle(chunks)
    return [collate(part, chunk) for chunk in chunks]


def padded_feeds(tokenizer, examples: Sequence[Example], batch_size: int, length: int) -> list[dict[str, np.ndarray]]:
    """Batches padded to one fixed `length`, for tools that need every batch to have the same shape
    (ONNX Runtime's calibrators concatenate batches)."""
    batches = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        encoded = tokenizer(
            *_texts(chunk),
            truncation=True,
            max_length=length,
            padding="max_length",
            return_token_type_ids=True,
            return_tensors="np",
        )
        batches.append({name: encoded[name].astype(np.int64) for name in INPUT_NAMES})
    return batches
