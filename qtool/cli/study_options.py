"""The options of `qtool reproduce` alone: which configurations run, the deploy budget, the backends
the study deploys on and how long it times each graph."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from qtool.defaults import DEPLOY_MAX_DROP, STUDY_BACKENDS, STUDY_ITERATIONS, STUDY_WARMUP

Configurations = Annotated[
    list[str] | None,
    typer.Option(
        "--config",
        "-c",
        help="Run only this configuration (repeatable), e.g. fp32, max-all, peg-k4-all; 'all' adds the extended "
        "rows to the default set, 'extended' runs only them. Default: the default set and the peers.",
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config-file", help=escape("TOML file with more configurations: [configurations.NAME] method = ..., groups = ...")
    ),
]
DeployMaxDrop = Annotated[
    float | None,
    typer.Option(help="Budget of the 'what to deploy' advice, in points of the task's primary metric (accuracy; "
                 f"F1 for MRPC and QQP, MCC for CoLA). Default: {DEPLOY_MAX_DROP:g}."),
]
Backends = Annotated[
    str | None,
    typer.Option(
        "--backends",
        help=f"CPU backends the study deploys on, comma-separated: ort (always) and {', '.join(STUDY_BACKENDS)} "
        "(adds NAME@BACKEND rows: FP32, the peers meant for it and qtool's configurations within the budget, "
        "built, scored and timed there). --backends ort leaves the others out. Default: ort and every other one "
        "whose library is installed.",
    ),
]
StudyWarmup = Annotated[
    int | None, typer.Option("--warmup", help=f"Untimed runs before each latency measurement. Default: {STUDY_WARMUP}.")
]
StudyIterations = Annotated[
    int | None,
    typer.Option("--iterations", help=f"Timed runs of each latency measurement (fewer: a quicker, noisier run). "
                 f"Default: {STUDY_ITERATIONS}."),
]
