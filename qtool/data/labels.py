"""Which of the data's labels each output of a classifier stands for.

A checkpoint names its outputs in `id2label`; the data names its labels (`DataSplit.labels`). They
are matched by name (case, spaces and hyphens aside), so a checkpoint trained elsewhere with its own
label order is read right. Outputs with generic names (`LABEL_0`, `0`) and data whose labels are
whole numbers are matched by index. Anything else is a one-line error naming both sets.
"""

from __future__ import annotations

import re

import numpy as np

from qtool.errors import QtoolError

GENERIC = re.compile(r"^(label_)?\d+$")


def normalized(name: object) -> str:
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


def output_names(id2label: dict | None, count: int) -> list[str]:
    """The checkpoint's name of each output, in output order (generic `label_i` where it has none)."""
    names = {int(k): normalized(v) for k, v in (id2label or {}).items()}
    return [names.get(i, f"label_{i}") for i in range(count)]


def is_generic(names) -> bool:
    return all(GENERIC.match(normalized(n)) for n in names)


def label_of_output(
    outputs: list[str],
    labels: tuple[str, ...],
    where: str,
    fix: str = "give data with the model's labels (--label-column), or a model trained for these",
) -> np.ndarray:
    """The index into `labels` of each output of the classifier `where`; `fix` ends the error."""
    wanted = [normalized(n) for n in labels]
    given = [normalized(n) for n in outputs]
    if sorted(given) == sorted(wanted) and len(set(given)) == len(given):
        return np.array([wanted.index(n) for n in given], dtype=np.int64)
    if len(given) == len(wanted) and (is_generic(given) or is_generic(wanted)):
        return np.arange(len(given), dtype=np.int64)
    raise QtoolError(
        f"{where} already classifies into {len(given)} label{'' if len(given) == 1 else 's'} ({', '.join(outputs)}) "
        f"and the data has {len(wanted)} ({', '.join(labels)}); {fix}"
    )
