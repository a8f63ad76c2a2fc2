"""GLUE QNLI from a folder of GLUE TSV files or from the Hugging Face hub, split into parts.

Parts: `train` (fine-tuning), `calibration` (activation statistics) and `eval` (accuracy).
With the full GLUE data, `eval` is the official validation split and `calibration` is a
question-grouped slice of the training split. With only `dev.tsv` (this project's offline
machines), all three parts are carved out of the validation split by a seeded hash of the
question, so no question appears in two parts; every report says which case it was.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from qtool.defaults import MAX_LENGTH, SEED
from qtool.errors import QtoolError
from qtool.fileio import sha256_text

log = logging.getLogger(__name__)

LABELS = ("entailment", "not_entailment")
LABEL_IDS = {name: index for index, name in enumerate(LABELS)} | {str(i): i for i in range(len(LABELS))}
PARTS = ("train", "calibration", "eval")
ALL = "all"  # every row of the evaluation file (dev.tsv, a given TSV, or the hub's validation split), in order
EVAL_PARTS = (*PARTS, ALL)
HUB_DATASET = ("nyu-mll/glue", "qnli")
DATA_ENV = "QTOOL_DATA"
HUB_ADDRESS = ("huggingface.co", 443)
HUB_PROBE_SECONDS = 3.0
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")  # the hub libraries then read their cache only
# A proxy or a mirror: the direct probe says nothing about them, so the hub libraries are left to try.
ROUTED_ENV = ("HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True)
class Example:
    question: str
    sentence: str
    label: int


@dataclass(frozen=True)
class DataConfig:
    """Where QNLI comes from and how it is split. `source`: a GLUE TSV folder, one QNLI-format TSV
    file (split like a dev.tsv), or `hub`."""

    source: str | None = None
    seed: int = SEED
    train_fraction: float = 0.65
    calibration_fraction: float = 0.05
    train_calibration_fraction: float = 0.01
    max_length: int = MAX_LENGTH

    def resolved_source(self) -> str:
        return self.source or os.environ.get(DATA_ENV) or "hub"


@dataclass
class QnliSplit:
    name: str
    parts: dict[str, list[Example]]
    fingerprints: dict[str, str] = field(default_factory=dict)
    all_rows: list[Example] = field(default_factory=list, repr=False)  # the evaluation file whole (part "all")

    def __post_init__(self) -> None:
        self.fingerprints = {part: _fingerprint(rows) for part, rows in self.parts.items()}

    @property
    def fingerprint(self) -> str:
        return sha256_text(self.name, *(f"{p}={self.fingerprints[p]}" for p in PARTS))[:16]

    @property
    def sizes(self) -> dict[str, int]:
        return {part: len(rows) for part, rows in self.parts.items()}

    def part(self, name: str) -> list[Example]:
        if name not in self.parts and name != ALL:
            raise QtoolError(f"unknown data part {name!r}; choose one of {', '.join(EVAL_PARTS)}")
        rows = self.all_rows if name == ALL else self.parts[name]
        if not rows:
            raise QtoolError(f"the {name} part of {self.name} is empty; check --data")
        return rows

    def describe(self) -> dict:
        """What every output records about the data it came from."""
        return {"name": self.name, "sizes": self.sizes, "fingerprint": self.fingerprint}


def _fingerprint(rows: list[Example]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.question}\t{row.sentence}\t{row.label}\n".encode())
    return digest.hexdigest()[:16]


def question_position(question: str, seed: int) -> float:
    """A seeded, uniform position in [0, 1) for a question; equal questions land together."""
    digest = hashlib.sha256(f"{seed}\x00{question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def read_glue_tsv(path: Path) -> list[Example]:
    """Read a labelled GLUE QNLI TSV (`index, question, sentence, label`); labels by name or as
    GLUE's integers (entailment = 0, not_entailment = 1)."""
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise QtoolError(f"{path} does not exist; point --data at a folder with GLUE QNLI TSV files") from None
    rows: list[Example] = []
    with handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader)
        except StopIteration:
            raise QtoolError(f"{path} is empty; expected a GLUE QNLI TSV with a header row") from None
        except UnicodeDecodeError:
            raise QtoolError(f"{path} is not UTF-8 text; expected a GLUE QNLI TSV") from None
        columns = [c.strip() for c in header]
        needed = ("question", "sentence", "label")
        if not all(c in columns for c in needed):
            raise QtoolError(
                f"{path}: header {columns} lacks {', '.join(c for c in needed if c not in columns)}; "
                "expected GLUE columns index, question, sentence, label"
            )
        q_at, s_at, l_at = (columns.index(c) for c in needed)
        try:
            for line_number, record in enumerate(reader, start=2):
                if not any(field.strip() for field in record):
                    continue  # a blank line (often the last one)
                if len(record) != len(columns):
                    raise QtoolError(
                        f"{path}:{line_number}: malformed row with {len(record)} fields, expected "
                        f"{len(columns)}; fix or remove that line"
                    )
                label = record[l_at].strip()
                if label not in LABEL_IDS:
                    raise QtoolError(
                        f"{path}:{line_number}: unknown label {label!r}, expected one of {', '.join(LABELS)} (or 0, 1)"
                    )
                rows.append(Example(record[q_at], record[s_at], LABEL_IDS[label]))
        except UnicodeDecodeError:
            raise QtoolError(f"{path} is not UTF-8 text; expected a GLUE QNLI TSV") from None
    if not rows:
        raise QtoolError(f"{path} has a header but no rows")
    return rows


def _split_by_question(rows: list[Example], seed: int, cuts: dict[str, float]) -> dict[str, list[Example]]:
    """Assign each row to the first part whose cumulative cut exceeds its question's position."""
    parts: dict[str, list[Example]] = {name: [] for name in cuts}
    bounds = []
    total = 0.0
    for name, fraction in cuts.items():
        total += fraction
        bounds.append((total, name))
    for row in rows:
        position = question_position(row.question, seed)
        part = next((name for bound, name in bounds if position < bound), bounds[-1][1])
        parts[part].append(row)
    return parts


def _from_dev_only(rows: list[Example], config: DataConfig, label: str) -> QnliSplit:
    eval_fraction = 1.0 - config.train_fraction - config.calibration_fraction
    if eval_fraction <= 0:
        raise QtoolError("train and calibration fractions must leave room for an eval part")
    parts = _split_by_question(
        rows,
        config.seed,
        {"train": config.train_fraction, "calibration": config.calibration_fraction, "eval": eval_fraction},
    )
    name = (
        f"qnli:{label} question-grouped split seed={config.seed} "
        f"train/calibration/eval={config.train_fraction:g}/{config.calibration_fraction:g}/{eval_fraction:g}"
    )
    return QnliSplit(name=name, parts={p: parts[p] for p in PARTS}, all_rows=rows)


def _from_train_and_dev(train: list[Example], dev: list[Example], config: DataConfig, origin: str) -> QnliSplit:
    held = _split_by_question(
        train,
        config.seed,
        {"calibration": config.train_calibration_fraction, "train": 1.0 - config.train_calibration_fraction},
    )
    name = (
        f"qnli:{origin} train (minus a question-grouped {config.train_calibration_fraction:g} calibration "
        f"slice, seed={config.seed}) / validation as eval"
    )
    parts = {"train": held["train"], "calibration": held["calibration"], "eval": dev}
    return QnliSplit(name=name, parts=parts, all_rows=dev)


def hub_reachable(address: tuple[str, int] = HUB_ADDRESS, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether a connection to the hub opens within `timeout` (the hub libraries would otherwise retry
    for about half a minute before failing)."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def _load_from_hub() -> tuple[list[Example], list[Example]]:
    if not any(os.environ.get(name) for name in OFFLINE_ENV + ROUTED_ENV) and not hub_reachable():
        raise QtoolError(
            f"no --data was given and {DATA_ENV} is not set, so qtool looked for {'/'.join(HUB_DATASET)} on the "
            f"Hugging Face hub, and {HUB_ADDRESS[0]} cannot be reached from here; pass --data with a GLUE QNLI "
            "folder or a QNLI TSV file (or set HF_HUB_OFFLINE=1 to read a cached copy)"
        )
    try:
        import datasets

        loaded = datasets.load_dataset(*HUB_DATASET)
    except Exception as exc:  # network, auth or cache problems all mean the same to the user
        raise QtoolError(
            f"could not load {'/'.join(HUB_DATASET)} from the Hugging Face hub ({exc.__class__.__name__}); "
            f"pass --data FOLDER (or set {DATA_ENV}) with GLUE QNLI TSV files"
        ) from None

    def convert(split) -> list[Example]:
        return [Example(r["question"], r["sentence"], int(r["label"])) for r in split]

    return convert(loaded["train"]), convert(loaded["validation"])


def load_qnli(config: DataConfig = DataConfig()) -> QnliSplit:
    source = config.resolved_source()
    if source == "hub":
        train, dev = _load_from_hub()
        split = _from_train_and_dev(train, dev, config, "hub")
    elif Path(source).is_file():  # one QNLI-format TSV: split like a dev.tsv, and whole as part "all"
        file = Path(source)
        split = _from_dev_only(read_glue_tsv(file), config, f"{file.resolve().parent.name}/{file.name}")
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise QtoolError(
                f"--data {folder} does not exist; give a QNLI TSV file or a folder with GLUE QNLI dev.tsv (and train.tsv)"
            )
        dev_path = folder / "dev.tsv"
        if not dev_path.is_file():
            raise QtoolError(f"--data {folder} has no dev.tsv; give a folder in GLUE TSV layout (train.tsv, dev.tsv)")
        dev = read_glue_tsv(dev_path)
        train_path = folder / "train.tsv"
        if train_path.is_file():
            split = _from_train_and_dev(read_glue_tsv(train_path), dev, config, folder.name)
        else:
            split = _from_dev_only(dev, config, f"{folder.name}/dev.tsv")
    log.info("data %s: %s (fingerprint %s)", split.name, split.sizes, split.fingerprint)
    return split
