"""Matplotlib without a display, and PNG files written atomically with no timestamp in them."""

from __future__ import annotations

from pathlib import Path

from qtool.fileio import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> Path:
    """Write `figure` as a PNG at `path` (atomically) and close it."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=130, bbox_inches="tight", metadata={"Software": None})
    pyplot().close(figure)
    return path
