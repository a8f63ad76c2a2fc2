"""The options that say where the data is and how to read it, shared by every command that reads data."""

from __future__ import annotations

from typing import Annotated

import typer

Data = Annotated[
    str | None,
    typer.Option(
        "--data",
        "-d",
        help="Labelled texts or pairs: one file (.tsv, .csv, .jsonl, .parquet), a GLUE task folder (QNLI, SST-2, "
        "MNLI, ...: dev.tsv, optional train.tsv), a folder saved with datasets' save_to_disk, hub:NAME[:CONFIG], "
        "or 'hub' (GLUE QNLI). Default: $QTOOL_DATA, else the hub's GLUE QNLI.",
    ),
]
TextColumns = Annotated[
    str | None,
    typer.Option(
        "--text-columns",
        help="The column of the text, or FIRST,SECOND for pairs. Default: the task's, else question,sentence / "
        "sentence1,sentence2 / premise,hypothesis / question1,question2 / text / sentence, the first present.",
    ),
]
LabelColumn = Annotated[str | None, typer.Option("--label-column", help="The column of the label. Default: the task's, else label.")]
Task = Annotated[
    str | None,
    typer.Option(
        "--task",
        help="The GLUE task of a folder whose name does not tell it (cola, sst2, mrpc, qqp, mnli, qnli, rte, wnli): "
        "its files, columns, label names and primary metric.",
    ),
]
Split = Annotated[
    str | None,
    typer.Option("--split", help="A dataset's TRAIN,VALIDATION split names (or one split to carve into parts). "
                 "Default: train and validation where they exist."),
]
TuneData = Annotated[
    str | None,
    typer.Option(
        "--tune-data",
        help="Where the search (--method auto, the study's auto rows) checks its budget instead of the data's tuning "
        "part: a file or source as --data takes, read with the same --text-columns/--label-column/--task (a folder's "
        "validation split); rows whose first text is in --data's train, calibration or eval part are left out.",
    ),
]
