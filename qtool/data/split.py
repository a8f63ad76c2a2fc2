"""Labelled texts or pairs, split into parts deterministically and grouped by their first text.

Parts: `train` (fine-tuning), `tuning` (the mixed-precision search's accuracy checks: pairs the model
was not fine-tuned on), `calibration` (activation statistics) and `eval` (accuracy). With a train and
a validation split (a full GLUE folder, a dataset with both), `calibration` is a grouped slice of the
train split, `tuning` a grouped slice of the validation split (a checkpoint from elsewhere was likely
fine-tuned on train) and `eval` the rest of it. With one file or split, all four parts are carved out
of it by a seeded hash of the first text (a QNLI question, an SST-2 sentence), so no first text
appears in two parts; every record says which case it was.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from qtool.defaults import MAX_LENGTH, SEED
from qtool.errors import QtoolError
from qtool.fileio import sha256_text

PARTS = ("train", "tuning", "calibration", "eval")
ALL = "all"  # every row of the evaluation file or split, in order
EVAL_PARTS = (*PARTS, ALL)
QNLI_LABELS = ("entailment", "not_entailment")
DATA_ENV = "QTOOL_DATA"  # --data when it is not given


@dataclass(frozen=True)
class Example:
    text: str
    pair: str | None  # the second text of a pair task; None for a single text
    label: int  # index into the split's `labels`


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from, which columns hold the texts and the label, and how it is split.
    `source`: a GLUE folder, one file (TSV, CSV, JSONL, Parquet), a `datasets` folder saved to disk,
    `hub:NAME[:CONFIG]`, or `hub` (GLUE QNLI from the hub)."""

    source: str | None = None
    seed: int = SEED
    train_fraction: float = 0.5
    tuning_fraction: float = 0.15  # of one file or split; the eval part keeps its pairs
    calibration_fraction: float = 0.05
    train_calibration_fraction: float = 0.01
    validation_tuning_fraction: float = 0.2  # with a validation split: its slice for tuning
    max_length: int = MAX_LENGTH
    text_columns: tuple[str, ...] | None = None  # one or two; None: the task's, or the usual names
    label_column: str | None = None  # None: the task's, or `label`
    task: str | None = None  # a GLUE task name; None: told by the folder name, else none
    splits: tuple[str, ...] | None = None  # a dataset's train and validation split names (or one)

    def __post_init__(self) -> None:
        """A path as text, and one name (or FIRST,SECOND) for the column and split tuples."""
        if self.source is not None:
            object.__setattr__(self, "source", os.fspath(self.source))
        for name in ("text_columns", "splits"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, tuple(v.strip() for v in value.split(",") if v.strip()))
            elif value is not None:
                object.__setattr__(self, name, tuple(value))

    def resolved_source(self) -> str:
        return self.source or os.environ.get(DATA_ENV) or "hub"

    def validate(self) -> None:
        if self.text_columns is not None and not 1 <= len(self.text_columns) <= 2:
            raise QtoolError(f"--text-columns takes one or two column names, got {', '.join(self.text_columns)}")
        if self.splits is not None and not 1 <= len(self.splits) <= 2:
            raise QtoolError(f"--split takes a train and a validation split name (or one), got {', '.join(self.splits)}")


@dataclass
class DataSplit:
    name: str
    parts: dict[str, list[Example]]
    fingerprints: dict[str, str] = field(default_factory=dict)
    all_rows: list[Example] = field(default_factory=list, repr=False)  # the evaluation file whole (part "all")
    labels: tuple[str, ...] = QNLI_LABELS  # label names by index, as the examples' `label` counts them
    task: str | None = "qnli"  # a GLUE task (its primary metric), or None

    def __post_init__(self) -> None:
        self.fingerprints = {part: fingerprint_of(rows) for part, rows in self.parts.items()}

    @property
    def fingerprint(self) -> str:
        return sha256_text(self.name, *(f"{p}={self.fingerprints[p]}" for p in PARTS))[:16]

    @property
    def sizes(self) -> dict[str, int]:
        return {part: len(rows) for part, rows in self.parts.items()}

    @property
    def pairs(self) -> bool:
        """Whether the examples are pairs of texts (else single texts)."""
        return any(row.pair is not None for rows in self.parts.values() for row in rows[:1])

    def part(self, name: str) -> list[Example]:
        if name not in self.parts and name != ALL:
            raise QtoolError(f"unknown data part {name!r}; choose one of {', '.join(EVAL_PARTS)}")
        rows = self.all_rows if name == ALL else self.parts[name]
        if not rows:
            raise QtoolError(f"the {name} part of {self.name} is empty; check --data")
        return rows

    def describe(self) -> dict:
        """What every output records about the data it came from."""
        described = {"name": self.name, "sizes": self.sizes, "fingerprint": self.fingerprint}
        if self.labels != QNLI_LABELS or self.task != "qnli":
            described |= {"labels": list(self.labels), "task": self.task}
        return described


QnliSplit = DataSplit  # the name the QNLI-only code used


def fingerprint_of(rows: list[Example]) -> str:
    """A short digest of rows: their texts and labels, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.text}\t{'' if row.pair is None else row.pair}\t{row.label}\n".encode())
    return digest.hexdigest()[:16]


def question_position(question: str, seed: int) -> float:
    """A seeded, uniform position in [0, 1) for a first text; equal texts land together."""
    digest = hashlib.sha256(f"{seed}\x00{question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _split_by_first_text(rows: list[Example], seed: int, cuts: dict[str, float]) -> dict[str, list[Example]]:
    """Assign each row to the first part whose cumulative cut exceeds its first text's position."""
    parts: dict[str, list[Example]] = {name: [] for name in cuts}
    bounds = []
    total = 0.0
    for name, fraction in cuts.items():
        total += fraction
        bounds.append((total, name))
    for row in rows:
        position = question_position(row.text, seed)
        part = next((name for bound, name in bounds if position < bound), bounds[-1][1])
        parts[part].append(row)
    return parts


def split_one(rows: list[Example], config: DataConfig, label: str, **described) -> DataSplit:
    """Train, calibration and eval parts carved out of one set of rows, grouped by first text;
    `label` names the source as `qnli:QNLI/dev.tsv` does."""
    cuts = {"train": config.train_fraction, "tuning": config.tuning_fraction, "calibration": config.calibration_fraction}
    eval_fraction = 1.0 - sum(cuts.values())
    if eval_fraction <= 0 or min(cuts.values()) < 0:
        raise QtoolError("train, tuning and calibration fractions must be at least 0 and leave room for an eval part")
    parts = _split_by_first_text(rows, config.seed, cuts | {"eval": eval_fraction})
    grouped = "question-grouped" if label.startswith("qnli:") else "first-text-grouped"
    fractions = "/".join(f"{f:g}" for f in (*cuts.values(), eval_fraction))
    name = f"{label} {grouped} split seed={config.seed} train/tuning/calibration/eval={fractions}"
    return DataSplit(name=name, parts={p: parts[p] for p in PARTS}, all_rows=rows, **described)


def split_train_and_eval(
    train: list[Example], evaluation: list[Example], config: DataConfig, origin: str, **described
) -> DataSplit:
    """The train rows minus a grouped calibration slice as train, the validation rows minus a grouped
    tuning slice as eval; tuning rows whose first text is also in train are left out."""
    held = _split_by_first_text(
        train,
        config.seed,
        {"calibration": config.train_calibration_fraction, "train": 1.0 - config.train_calibration_fraction},
    )
    fraction = config.validation_tuning_fraction
    if not 0 <= fraction < 1:
        raise QtoolError(f"the validation tuning fraction must be in [0, 1), got {fraction:g}")
    validation = _split_by_first_text(evaluation, config.seed, {"tuning": fraction, "eval": 1.0 - fraction})
    seen = {row.text for row in train}
    tuning = [row for row in validation["tuning"] if row.text not in seen]
    grouped = "question-grouped" if origin.startswith("qnli:") else "first-text-grouped"
    name = (
        f"{origin} train (minus a {grouped} {config.train_calibration_fraction:g} calibration slice) / validation "
        f"(minus a {grouped} {fraction:g} tuning slice) as eval, seed={config.seed}"
    )
    parts = {"train": held["train"], "tuning": tuning, "calibration": held["calibration"], "eval": validation["eval"]}
    return DataSplit(name=name, parts=parts, all_rows=evaluation, **described)
