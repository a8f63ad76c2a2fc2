"""`--data`: which reader a source needs, and the split it gives.

QNLI in GLUE's layout (a folder with dev.tsv, a QNLI TSV, `hub`) keeps its reader and its split
names, so the study's files stay the same. Any other source goes through `qtool.data.tables`: a GLUE
task folder (told by `--task` or by its name), one file, a dataset saved with `save_to_disk`, or
`hub:NAME[:CONFIG]`; a source with a train and a validation split is split as a full GLUE folder is,
one file or split is carved into parts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from qtool.data.qnli import OFFLINE_ENV, ROUTED_ENV, hub_reachable, is_qnli_tsv, load_qnli_source
from qtool.data.split import DataConfig, DataSplit, Example, fingerprint_of, split_one, split_train_and_eval
from qtool.data.tables import (
    GLUE_TASKS,
    GlueTask,
    examples_of,
    glue_task_named,
    glue_task_of_folder,
    read_dataset_split,
    read_file,
)
from qtool.errors import QtoolError

log = logging.getLogger(__name__)

HUB_PREFIX = "hub:"
TRAIN_SPLITS = ("train",)
EVAL_SPLITS = ("validation", "validation_matched", "dev", "valid", "val")


def _custom(config: DataConfig) -> bool:
    return bool(config.text_columns or config.label_column or config.splits or (config.task and config.task != "qnli"))


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _dataset_split(dataset, config: DataConfig, where: str, task: GlueTask | None) -> DataSplit:
    """A split of a `datasets` Dataset or DatasetDict: its train and validation splits (or the ones
    --split names), or one split carved into parts."""
    if not hasattr(dataset, "keys"):  # one Dataset
        (rows,), labels = examples_of([read_dataset_split(dataset, where)], config.text_columns, config.label_column, task)
        return split_one(rows, config, where, labels=labels, task=task.name if task else None)
    names = list(dataset.keys())
    if config.splits:
        missing = [s for s in config.splits if s not in names]
        if missing:
            raise QtoolError(f"{where} has no split {missing[0]!r} (splits: {', '.join(names)}); fix --split")
        chosen = list(config.splits)
    else:
        train = next((s for s in TRAIN_SPLITS if s in names), None)
        evaluation = next((s for s in EVAL_SPLITS if s in names), None)
        chosen = [s for s in (train, evaluation) if s] or names[:1]
    tables = [read_dataset_split(dataset[s], f"{where}[{s}]") for s in chosen]
    parts, labels = examples_of(tables, config.text_columns, config.label_column, task)
    described = {"labels": labels, "task": task.name if task else None}
    if len(parts) == 2:
        return split_train_and_eval(parts[0], parts[1], config, f"{where}[{chosen[0]}/{chosen[1]}]", **described)
    return split_one(parts[0], config, f"{where}[{chosen[0]}]", **described)


def _from_hub(name: str, config: DataConfig, task: GlueTask | None) -> DataSplit:
    dataset_name, _, dataset_config = name.partition(":")
    if task is None and dataset_name in ("glue", "nyu-mll/glue") and dataset_config in GLUE_TASKS:
        task = GLUE_TASKS[dataset_config]  # its label names and primary metric
    if not any(os.environ.get(v) for v in OFFLINE_ENV + ROUTED_ENV) and not hub_reachable():
        raise QtoolError(
            f"--data {HUB_PREFIX}{name}: the Hugging Face hub cannot be reached from here; pass a file or a folder "
            "saved with datasets' save_to_disk (or set HF_HUB_OFFLINE=1 to read a cached copy)"
        )
    try:
        import datasets

        dataset = datasets.load_dataset(dataset_name, dataset_config or None)
    except Exception as exc:  # network, auth, a missing config: the same to the user
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise QtoolError(
            f"could not load {name} from the Hugging Face hub ({exc.__class__.__name__}: {first}); check the name, "
            "and give a config as hub:NAME:CONFIG where the dataset has several"
        ) from None
    return _dataset_split(dataset, config, f"{HUB_PREFIX}{name}", task)


def _from_folder(folder: Path, config: DataConfig, task: GlueTask | None) -> DataSplit:
    if _is_saved_dataset(folder):
        import datasets

        try:
            dataset = datasets.load_from_disk(str(folder))
        except Exception as exc:  # a damaged or foreign folder
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise QtoolError(f"--data {folder} could not be read as a saved dataset ({first}); save it again") from None
        return _dataset_split(dataset, config, folder.name, task)
    task = task or glue_task_of_folder(folder)
    if task is None:
        raise QtoolError(
            f"--data {folder} has no dev.tsv in GLUE layout, no GLUE task name (pass --task) and no dataset saved with "
            "datasets' save_to_disk; give such a folder or one file (TSV, CSV, JSONL, Parquet)"
        )
    evaluation = folder / task.eval_file
    if not evaluation.is_file():
        raise QtoolError(f"--data {folder} has no {task.eval_file}; a GLUE {task.folder} folder holds it (and train.tsv)")
    files = [folder / "train.tsv", evaluation] if (folder / "train.tsv").is_file() else [evaluation]
    tables = [read_file(f, task.header, literal_quotes=True) for f in files]
    parts, labels = examples_of(tables, config.text_columns, config.label_column, task)
    described = {"labels": labels, "task": task.name}
    if len(parts) == 2:
        return split_train_and_eval(parts[0], parts[1], config, f"{task.name}:{folder.name}", **described)
    return split_one(parts[0], config, f"{task.name}:{folder.name}/{task.eval_file}", **described)


def load_data(config: DataConfig = DataConfig()) -> DataSplit:
    """The split `config` names (see the module docstring)."""
    config.validate()
    source = config.resolved_source()
    task = glue_task_named(config.task) if config.task else None
    path = Path(source)
    qnli_layout = source == "hub" or (path.is_file() and is_qnli_tsv(path) and path.suffix.lower() == ".tsv") or (
        path.is_dir() and (path / "dev.tsv").is_file() and glue_task_of_folder(path) in (None, glue_task_named("qnli"))
    )
    if config.splits and not (source.startswith(HUB_PREFIX) or (path.is_dir() and _is_saved_dataset(path))):
        raise QtoolError(f"--split names the splits of a datasets dataset (hub:NAME or save_to_disk); {source} has none")
    if source == "hub" and _custom(config):  # no --data: GLUE from the hub, the task's or QNLI
        source = f"{HUB_PREFIX}nyu-mll/glue:{task.name if task else 'qnli'}"
    if qnli_layout and not _custom(config):
        split = load_qnli_source(source, config)
    elif source.startswith(HUB_PREFIX):
        split = _from_hub(source[len(HUB_PREFIX):], config, task)
    elif path.is_dir():
        split = _from_folder(path, config, task)
    elif path.is_file():
        table = read_file(path, task.header if task else None)
        (rows,), labels = examples_of([table], config.text_columns, config.label_column, task)
        label = f"{task.name if task else 'data'}:{path.resolve().parent.name}/{path.name}"
        split = split_one(rows, config, label, labels=labels, task=task.name if task else None)
    else:
        raise QtoolError(
            f"--data {source} does not exist; give a file (TSV, CSV, JSONL, Parquet), a GLUE folder, a dataset "
            f"saved with save_to_disk, or {HUB_PREFIX}NAME[:CONFIG]"
        )
    log.info("data %s: %s (fingerprint %s)", split.name, split.sizes, split.fingerprint)
    return split


def tuning_rows(split: DataSplit, source: DataConfig | str) -> tuple[list[Example], dict]:
    """`--tune-data`: the rows of another source (a folder's or dataset's validation split) as tuning pairs,
    labelled by name as `split` labels its rows, less those whose first text is in `split`'s train,
    calibration or eval part; and what was taken (its name, rows, rows left out, fingerprint)."""
    config = source if isinstance(source, DataConfig) else DataConfig(source=str(source))
    try:
        given = load_data(config)
    except QtoolError as error:  # its messages name --data
        raise QtoolError(error.cli_message.replace("--data ", "--tune-data ", 1)) from None
    where = f"--tune-data {config.resolved_source()}"
    if given.pairs != split.pairs:
        kinds = ("single texts", "pairs")
        raise QtoolError(f"{where} holds {kinds[given.pairs]} but --data {kinds[split.pairs]}; give tuning rows like the data's")
    index = {name: i for i, name in enumerate(split.labels)}
    unknown = sorted({given.labels[row.label] for row in given.all_rows} - set(index))
    if unknown:
        raise QtoolError(
            f"{where} has label(s) {', '.join(unknown[:5])} that --data does not ({', '.join(split.labels)}); "
            "give tuning rows with the data's labels (or name the label column with --label-column)"
        )
    held = {row.text for part in ("train", "calibration", "eval") for row in split.parts.get(part, [])}
    rows = [Example(r.text, r.pair, index[given.labels[r.label]]) for r in given.all_rows if r.text not in held]
    if not rows:
        raise QtoolError(f"every row of {where} shares its first text with the train, calibration or eval part; "
                         "give tuning rows the model was not fine-tuned, calibrated or evaluated on")
    left_out = len(given.all_rows) - len(rows)
    if left_out:
        log.info("%s: %d of %d rows share a first text with train, calibration or eval and are left out",
                 where, left_out, len(given.all_rows))
    taken = {"name": given.name, "rows": len(given.all_rows), "left_out": left_out, "fingerprint": fingerprint_of(rows)}
    return rows, taken
