"""Labelled texts from where users keep them: one file (TSV, CSV, JSONL, Parquet), a GLUE task folder,
a `datasets` dataset saved to disk (`save_to_disk`), or one on the hub (`hub:NAME[:CONFIG]`).

Columns are named with `--text-columns A[,B]` and `--label-column L`, else taken from the task (a
GLUE folder) or the usual names (question/sentence, sentence1/sentence2, premise/hypothesis,
question1/question2, text, sentence; label). Labels become names: a `datasets` ClassLabel's, a GLUE
task's, `0 .. N-1` for whole numbers (a label is its index), else the sorted distinct texts. Every
bad row is a one-line error naming the file, the line (or row) and the fix.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from qtool.data.split import Example
from qtool.errors import QtoolError

USUAL_TEXT_COLUMNS = (
    ("question", "sentence"),
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
    ("text",),
    ("sentence",),
)
LABEL_COLUMN = "label"
DELIMITERS = {".tsv": "\t", ".csv": ","}
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
FILE_SUFFIXES = (*DELIMITERS, *JSON_SUFFIXES, *PARQUET_SUFFIXES)


@dataclass(frozen=True)
class GlueTask:
    """A GLUE classification task as its TSV folder lays it out."""

    name: str
    folder: str  # the folder name GLUE's download uses
    eval_file: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...]  # names by index; whole-number labels in the TSV are indices
    primary_metric: str  # accuracy, f1 or mcc
    header: tuple[str, ...] | None = None  # column names of a TSV without a header row


GLUE_TASKS = {
    task.name: task
    for task in (
        GlueTask("cola", "CoLA", "dev.tsv", ("sentence",), "label", ("unacceptable", "acceptable"), "mcc",
                 header=("source", "label", "original_label", "sentence")),
        GlueTask("sst2", "SST-2", "dev.tsv", ("sentence",), "label", ("negative", "positive"), "accuracy"),
        GlueTask("mrpc", "MRPC", "dev.tsv", ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent"), "f1"),
        GlueTask("qqp", "QQP", "dev.tsv", ("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate"), "f1"),
        GlueTask("mnli", "MNLI", "dev_matched.tsv", ("sentence1", "sentence2"), "gold_label",
                 ("entailment", "neutral", "contradiction"), "accuracy"),
        GlueTask("qnli", "QNLI", "dev.tsv", ("question", "sentence"), "label", ("entailment", "not_entailment"), "accuracy"),
        GlueTask("rte", "RTE", "dev.tsv", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), "accuracy"),
        GlueTask("wnli", "WNLI", "dev.tsv", ("sentence1", "sentence2"), "label", ("not_entailment", "entailment"), "accuracy"),
    )
}


@dataclass
class Table:
    """The rows of one file or dataset split: each with where it came from, for errors."""

    where: str
    columns: list[str]
    rows: list[tuple[str, dict]] = field(default_factory=list)  # (file:line or split row N, record)
    class_labels: dict[str, tuple[str, ...]] = field(default_factory=dict)  # ClassLabel names by column


def primary_metric(task: str | None) -> str:
    """The metric a task is judged by: GLUE's for a GLUE task (accuracy, f1 or mcc), else accuracy."""
    return GLUE_TASKS[task].primary_metric if task in GLUE_TASKS else "accuracy"


def glue_task_named(name: str) -> GlueTask:
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise QtoolError(f"unknown --task {name!r}; GLUE classification tasks: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def glue_task_of_folder(folder: Path) -> GlueTask | None:
    """The GLUE task a folder is named after (SST-2, MNLI, ...), if any."""
    key = folder.resolve().name.lower().replace("-", "")
    return GLUE_TASKS.get(key)


def _delimited(path: Path, delimiter: str, header: tuple[str, ...] | None, literal_quotes: bool = False) -> Table:
    """A CSV (quoted as spreadsheets and pandas write it) or a TSV. A TSV keeps quotes as text, as GLUE's
    do (always so for a GLUE task's files, `literal_quotes`), unless it is quoted the way pandas and
    `csv.writer` quote a tab-separated file: then reading it with that quoting and writing the rows back
    gives the file again, byte for byte (a text that merely starts with a quote does not)."""
    quoted = delimiter != "\t" or (not literal_quotes and header is None and _written_quoted(path, delimiter))
    return _parsed(path, delimiter, header, csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)


def _written_quoted(path: Path, delimiter: str) -> bool:
    """Whether the file holds a quoted field and is exactly what `csv.writer` writes for its rows."""
    try:
        text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    except (OSError, UnicodeDecodeError):
        return False
    if '"' not in text:
        return False
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL))
    except csv.Error:
        return False
    written = io.StringIO()
    csv.writer(written, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, lineterminator="\n").writerows(rows)
    return written.getvalue().rstrip("\n") == text.rstrip("\n")


def _parsed(path: Path, delimiter: str, header: tuple[str, ...] | None, quoting: int) -> Table:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
            columns = list(header) if header else [c.strip() for c in next(reader, [])]
            if not columns:
                raise QtoolError(f"{path} is empty; expected a header row naming the columns, then one row per example")
            other = "\t" if delimiter == "," else ","
            if len(columns) == 1 and other in columns[0]:
                kind = "tab" if other == "\t" else "comma"
                raise QtoolError(f"{path}: the header is one column {columns[0]!r}; the file looks {kind}-separated, "
                                 f"so name it {'.tsv' if other == chr(9) else '.csv'}")
            table = Table(str(path), columns)
            ended = reader.line_num  # the physical line a record starts after (a quoted text may span lines)
            for record in reader:
                line, ended = ended + 1, reader.line_num
                if not any(value.strip() for value in record):
                    continue
                if len(record) != len(columns):
                    raise QtoolError(
                        f"{path}:{line}: {len(record)} fields where the header has {len(columns)} (a different "
                        "delimiter or an unquoted one in a text?); fix or remove that line"
                    )
                table.rows.append((f"{path}:{line}", dict(zip(columns, record, strict=True))))
    except UnicodeDecodeError:
        raise QtoolError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except csv.Error as error:
        raise QtoolError(f"{path}: {error}; check its quoting") from None
    return table


def _json_lines(path: Path) -> Table:
    table = Table(str(path), [])
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise QtoolError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    if text.lstrip().startswith("["):  # one JSON array of objects
        try:
            records = [(f"{path} item {i + 1}", r) for i, r in enumerate(json.loads(text))]
        except json.JSONDecodeError as exc:
            raise QtoolError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix that line") from None
    else:
        records = []
        for line, raw in enumerate(text.splitlines(), start=1):
            if raw.strip():
                try:
                    records.append((f"{path}:{line}", json.loads(raw)))
                except json.JSONDecodeError as exc:
                    raise QtoolError(f"{path}:{line}: not valid JSON ({exc.msg}); one object per line") from None
    for where, record in records:
        if not isinstance(record, dict):
            raise QtoolError(f"{where}: expected an object with named fields, got {type(record).__name__}")
        table.columns.extend(c for c in record if c not in table.columns)
        table.rows.append((where, record))
    return table


def _parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        data = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged or foreign file
        raise QtoolError(f"{path} is not a readable Parquet file ({exc.__class__.__name__}); check the file") from None
    table = Table(str(path), list(data.column_names))
    table.rows = [(f"{path} row {i + 1}", record) for i, record in enumerate(data.to_pylist())]
    return table


def read_file(path: Path, header: tuple[str, ...] | None = None, literal_quotes: bool = False) -> Table:
    """A table from one file; `literal_quotes`: a TSV's quotes are text (GLUE's files)."""
    suffix = path.suffix.lower()
    if suffix in DELIMITERS:
        table = _delimited(path, DELIMITERS[suffix], header, literal_quotes)
    elif suffix in JSON_SUFFIXES:
        table = _json_lines(path)
    elif suffix in PARQUET_SUFFIXES:
        table = _parquet(path)
    else:
        raise QtoolError(f"--data {path}: unknown file type {suffix or '(none)'}; use {', '.join(FILE_SUFFIXES)}")
    if not table.rows:
        raise QtoolError(f"{path} has no rows")
    return table


def read_dataset_split(dataset, where: str) -> Table:
    """The rows of a `datasets.Dataset`, with its ClassLabel names when its label column has them."""
    table = Table(where, list(dataset.column_names))
    table.rows = [(f"{where} row {i + 1}", record) for i, record in enumerate(dataset)]
    for column, feature in dataset.features.items():
        if getattr(feature, "names", None):
            table.class_labels[column] = tuple(str(n) for n in feature.names)
    return table


def chosen_columns(table: Table, text_columns, label_column, task: GlueTask | None) -> tuple[tuple[str, ...], str]:
    """The text columns and the label column to read, checked against the table's."""
    task_label = task.label_column if task and task.label_column in table.columns else None
    label = label_column or task_label or LABEL_COLUMN
    if text_columns:
        texts = tuple(text_columns)
    elif task and all(name in table.columns for name in task.text_columns):
        texts = task.text_columns
    else:
        texts = next((names for names in USUAL_TEXT_COLUMNS if all(n in table.columns for n in names)), ())
        if not texts:
            raise QtoolError(
                f"{table.where}: no usual text columns among {', '.join(table.columns)}; name them with "
                "--text-columns TEXT or --text-columns FIRST,SECOND"
            )
    for name, flag in [*((t, "--text-columns") for t in texts), (label, "--label-column")]:
        if name not in table.columns:
            raise QtoolError(f"{table.where}: no column {name!r} (columns: {', '.join(table.columns)}); pass {flag}")
    return texts, label


def _label_value(value, where: str, column: str) -> int | str:
    """A whole number (an index) or a name; anything else is an error naming the row."""
    if value is None:
        raise QtoolError(f"{where}: no value in label column {column!r}; fill or remove that row")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text:
        raise QtoolError(f"{where}: empty label in column {column!r}; fill or remove that row")
    try:
        number = float(text)
    except ValueError:
        return text  # a name
    if math.isfinite(number) and number == int(number):
        return int(number)
    raise QtoolError(
        f"{where}: label column {column!r} holds the number {text}; a classifier needs class labels "
        "(names, or whole numbers 0 .. N-1): pass --label-column with the class column"
    )


def _text_value(value, where: str, column: str) -> str:
    text = "" if value is None else str(value)
    if not text.strip():
        raise QtoolError(f"{where}: empty text in column {column!r}; fill or remove that row")
    return text


MAX_LABELS = 1000  # more distinct labels than this (or than half the rows) is a text column


def label_names_of(values: list[int | str], declared: tuple[str, ...] | None, where: str) -> tuple[str, ...]:
    """The label names by index: the declared ones (a task's, a ClassLabel's), `0 .. N-1` for whole
    numbers, else the sorted distinct names."""
    numbers = [v for v in values if isinstance(v, int)]
    distinct = {str(v) for v in values}
    if not declared and len(distinct) > min(MAX_LABELS, max(20, len(values) // 2)):
        raise QtoolError(
            f"{where}: the label column has {len(distinct)} distinct values in {len(values)} rows, like a text "
            "column; name the class column with --label-column"
        )
    if declared:
        unknown = sorted({str(v) for v in values if (isinstance(v, int) and not 0 <= v < len(declared))
                          or (isinstance(v, str) and v not in declared)})
        if unknown:
            shown = ", ".join(u.replace("\n", " ")[:40] for u in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise QtoolError(
                f"{where}: unknown label(s) {shown}; the labels are {', '.join(declared)} (or 0 .. {len(declared) - 1})"
            )
        return declared
    if numbers and len(numbers) == len(values):
        if min(numbers) > 0:
            raise QtoolError(
                f"{where}: whole-number labels run {min(numbers)} .. {max(numbers)}, but a whole-number label is "
                "a class index 0 .. N-1; shift them to start at 0, or give the classes names"
            )
        return tuple(str(i) for i in range(max(numbers) + 1))
    return tuple(sorted(distinct))


def examples_of(
    tables: list[Table], text_columns=None, label_column=None, task: GlueTask | None = None
) -> tuple[list[list[Example]], tuple[str, ...]]:
    """Each table's rows as examples, and the label names they share."""
    read: list[list[tuple[str, str | None, int | str]]] = []
    values: list[int | str] = []
    for table in tables:
        texts, label = chosen_columns(table, text_columns, label_column, task)
        rows = []
        for where, record in table.rows:
            first = _text_value(record.get(texts[0]), where, texts[0])
            second = _text_value(record.get(texts[1]), where, texts[1]) if len(texts) == 2 else None
            value = _label_value(record.get(label), where, label)
            if isinstance(value, int) and value < 0:
                raise QtoolError(
                    f"{where}: label {value} in column {label!r} marks an unlabelled row (a test split?); "
                    "give labelled data (--split names a dataset's labelled splits)"
                )
            rows.append((first, second, value))
            values.append(value)
        read.append(rows)
    class_labels = next((t.class_labels[label] for t in tables if label in t.class_labels), None)
    declared = task.labels if task else class_labels
    if not declared and any(isinstance(v, int) for v in values) and any(isinstance(v, str) for v in values):
        values = [str(v) for v in values]  # whole numbers among names: all are names
        read = [[(a, b, str(v)) for a, b, v in rows] for rows in read]
    names = label_names_of(values, declared, tables[0].where)
    index = {name: i for i, name in enumerate(names)}
    return [[Example(a, b, v if isinstance(v, int) else index[v]) for a, b, v in rows] for rows in read], names
