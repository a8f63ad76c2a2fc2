"""GLUE QNLI from a folder of GLUE TSV files, one QNLI TSV, or the Hugging Face hub.

With the full GLUE data, `eval` is the official validation split and `calibration` is a
question-grouped slice of the training split. With only `dev.tsv` (this project's offline
machines), all three parts are carved out of the validation split by a seeded hash of the
question (`qtool.data.split`).
"""

from __future__ import annotations

import csv
import logging
import os
import socket
from pathlib import Path

from qtool.data.split import DATA_ENV, QNLI_LABELS, DataConfig, DataSplit, Example, split_one, split_train_and_eval
from qtool.errors import QtoolError

log = logging.getLogger(__name__)

LABELS = QNLI_LABELS
LABEL_IDS = {name: index for index, name in enumerate(LABELS)} | {str(i): i for i in range(len(LABELS))}
HUB_DATASET = ("nyu-mll/glue", "qnli")
HUB_ADDRESS = ("huggingface.co", 443)
HUB_PROBE_SECONDS = 3.0
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")  # the hub libraries then read their cache only
# A proxy or a mirror: the direct probe says nothing about them, so the hub libraries are left to try.
ROUTED_ENV = ("HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


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


def is_qnli_tsv(path: Path) -> bool:
    """Whether a file is a QNLI-format TSV: a header with question, sentence and label."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            header = handle.readline().rstrip("\r\n").split("\t")
    except (OSError, UnicodeDecodeError):
        return False
    return {"question", "sentence", "label"} <= {c.strip() for c in header}


def load_qnli_source(source: str, config: DataConfig) -> DataSplit:
    """QNLI from the hub (`hub`), one QNLI TSV, or a GLUE QNLI folder."""
    if source == "hub":
        train, dev = _load_from_hub()
        split = split_train_and_eval(train, dev, config, "qnli:hub")
    elif Path(source).is_file():  # one QNLI-format TSV: split like a dev.tsv, and whole as part "all"
        file = Path(source)
        split = split_one(read_glue_tsv(file), config, f"qnli:{file.resolve().parent.name}/{file.name}")
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
            split = split_train_and_eval(read_glue_tsv(train_path), dev, config, f"qnli:{folder.name}")
        else:
            split = split_one(dev, config, f"qnli:{folder.name}/dev.tsv")
    return split
