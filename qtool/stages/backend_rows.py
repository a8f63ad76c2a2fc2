"""The study's candidates deployed on another CPU backend (OpenVINO), as rows beside ONNX Runtime's.

FP32, the peers meant for that backend (NNCF's) and qtool's configurations within the budget are
built there (`qtool build --backend NAME` of the same graph), scored through its runner and timed in
a process of their own, so what-to-deploy compares every runtime a user could pick. A row is named
`<configuration>@<backend>`, scored as deployed: its accuracy, metrics and latency are the
backend's, `source_accuracy` its source row's, and `deployed_changed` counts the predictions that
differ from its source graph's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from qtool.cache import recording_stage_times
from qtool.data import QnliSplit
from qtool.defaults import STUDY_BACKENDS
from qtool.deployment.backends import backend_named
from qtool.deployment.evaluate import changed_predictions, evaluate_graph, evaluation_metrics, paired_against
from qtool.errors import QtoolError
from qtool.quantization.nncf_quantizers import NNCF_PEERS
from qtool.report.advice import within_budget
from qtool.report.intervals import wilson_interval
from qtool.stages.deploy import build_stage, latency_stage

log = logging.getLogger(__name__)

PEERS_MEANT_FOR = {"openvino": NNCF_PEERS}  # the peers whose graphs are made for a backend
ROW_BACKENDS = {name: PEERS_MEANT_FOR.get(name, ()) for name in STUDY_BACKENDS}  # and those the study deploys


def row_backend_names(backends) -> tuple[str, ...] | None:
    """The backends besides ONNX Runtime in `backends` (names, or one comma-separated text); None stays None."""
    if backends is None:
        return None
    names = [name.strip() for name in (backends.split(",") if isinstance(backends, str) else backends)]
    if not any(names):
        raise QtoolError(f"--backends names no backend; give ort, or ort,{','.join(STUDY_BACKENDS)}")
    return tuple(dict.fromkeys(name for name in names if name not in ("", "ort")))


def check_row_backends(names: tuple[str, ...] | None) -> None:
    """Refuse backends the study cannot deploy on: unknown ones, or ones whose library is missing."""
    unknown = [name for name in names or () if name not in ROW_BACKENDS]
    if unknown:
        raise QtoolError(
            f"--backends {','.join(unknown)}: the study deploys on ort and {', '.join(ROW_BACKENDS)}; "
            "name those, or ort alone to leave the others out"
        )
    for name in names or ():
        backend_named(name).require_library()


def _left_out(name: str, asked: tuple[str, ...] | None) -> str | None:
    """Why the study does not deploy on backend `name`: not asked for, or (by default) not installed."""
    if asked is not None:
        return None if name in asked else f"not asked for (--backends {','.join(('ort', *asked))}; add {name} to deploy there)"
    try:
        backend_named(name).require_library()
    except QtoolError as missing:
        return missing.cli_message
    return None


def backend_rows(rows: list[dict], split: QnliSplit, config) -> tuple[list[dict], dict[str, str]]:
    """Rows of FP32 (`rows[0]`), the backends' own peers and qtool's configurations within
    `config.max_drop` on each backend of `config.backends` (None: each of ROW_BACKENDS whose library
    loads), and why a backend was left out."""
    added, skipped = [], {}
    for name, peers in ROW_BACKENDS.items():
        left_out = _left_out(name, config.backends)
        if left_out:
            skipped[f"@{name} rows"] = left_out
            continue
        chosen = [rows[0]] + [
            row for row in within_budget(rows, config.max_drop)[1:]
            if (row["configuration"] in peers if row.get("peer") else "@" not in row["configuration"])
        ]
        fp32 = evaluate_graph(Path(rows[0]["graph"]), split, config.eval, config.export.max_length, predictions=True)
        for row in chosen:
            with recording_stage_times() as times:
                try:
                    made = _deployed_on(name, row, fp32, split, config)
                except Exception as failed:  # noqa: BLE001 (one optional row must not cost the study its report)
                    log.warning("%s@%s left out: %s", row["configuration"], name, failed)
                    skipped[f"{row['configuration']}@{name}"] = f"{type(failed).__name__}: {failed}"
                    continue
            added.append(made | {"stage_times": times})
    return added, skipped


def _deployed_on(name: str, row: dict, fp32: dict, split: QnliSplit, config) -> dict:
    """`row`'s graph built for backend `name` as `qtool build` builds it, scored against its source and
    against FP32's evaluation `fp32`, and timed."""
    source = Path(row["graph"])
    artifact = Path(build_stage(source, name)["artifact"])
    max_length = config.export.max_length
    scored = evaluate_graph(artifact, split, config.eval, max_length, predictions=True)
    reference = evaluate_graph(source, split, config.eval, max_length, predictions=True)
    paired = paired_against(fp32, scored, split, config.eval).to_dict()
    deployed = {
        "configuration": f"{row['configuration']}@{name}",
        "backend": name,
        "latency": latency_stage(artifact, split, config.bench),
        "accuracy": scored["accuracy"],  # scored as deployed, so the budget and the advice weigh the backend's own
        "correct": scored["correct"],
        "accuracy_ci95": list(wilson_interval(scored["correct"], scored["examples"])),
        "metrics": evaluation_metrics(split, config.eval, scored),
        "vs_fp32": paired,
        "source_accuracy": row["accuracy"],  # the recipe's (a QDQ graph's) or the row's own on ONNX Runtime
        "deployed_accuracy": scored["accuracy"],
        "deployed_correct": scored["correct"],
        "deployed_changed": changed_predictions(scored, reference),  # against the source graph's predictions
        "deployed_kernels": scored.get("kernels") or name,  # what the backend's runtime ran, where it says
        "deployed_vs_fp32": paired,
    }
    dropped = ("search", "peer_record", "stage_times", "deployed_kernels_reason")
    return {k: v for k, v in row.items() if k not in dropped} | deployed
