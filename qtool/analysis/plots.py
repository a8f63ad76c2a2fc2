"""PNG figures of the outlier statistics, sized for a slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qtool.analysis.collect import ActivationStats
from qtool.plotting import pyplot, save_figure

RESIDUAL_ROLES = ("embeddings_sum", "residual_sum")


def _by_role(reports: list[dict], key: str) -> dict[str, tuple[list[int], list[float]]]:
    series: dict[str, tuple[list[int], list[float]]] = {}
    for report in reports:
        if report["layer"] is None or report[key] is None:
            continue
        label = report["name"].split(".", 2)[2]
        xs, ys = series.setdefault(label, ([], []))
        xs.append(report["layer"])
        ys.append(report[key])
    return series


def _style(index: int) -> dict:
    colors = pyplot().get_cmap("tab10").colors
    return {"color": colors[index % 10], "linestyle": ("-", "--")[index // 10 % 2]}


def kurtosis_by_layer(reports: list[dict], path: Path, title: str) -> Path:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(9, 5))
    for index, (label, (xs, ys)) in enumerate(sorted(_by_role(reports, "kurtosis").items())):
        axis.plot(xs, ys, marker="o", label=label, **_style(index))
    axis.axhline(3.0, color="grey", linestyle=":", label="normal (3)")
    axis.set_yscale("log")
    axis.set_xlabel("encoder layer")
    axis.set_ylabel("Pearson kurtosis (log scale)")
    axis.set_title(title)
    axis.legend(fontsize=7, ncol=2)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def energy_by_layer(reports: list[dict], path: Path, title: str) -> Path:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(9, 5))
    for index, (label, (xs, ys)) in enumerate(sorted(_by_role(reports, "top_energy_share").items())):
        axis.plot(xs, [100 * y for y in ys], marker="o", label=label, **_style(index))
    axis.set_xlabel("encoder layer")
    axis.set_ylabel("energy in the top 1 % of channels (%)")
    axis.set_ylim(0, 100)
    axis.set_title(title)
    axis.legend(fontsize=7, ncol=2)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def residual_heatmap(stats: ActivationStats, path: Path, title: str) -> Path:
    plt = pyplot()
    points = [p for p in stats.points if p.role in RESIDUAL_ROLES]
    # The residual stream's width; ELECTRA's narrower embedding sum (before its projection) is left out.
    width = stats.stats[points[-1].name].channel_absmax.size
    points = [p for p in points if stats.stats[p.name].channel_absmax.size == width]
    matrix = np.stack([stats.stats[p.name].channel_absmax for p in points])
    figure, axis = plt.subplots(figsize=(11, 0.35 * len(points) + 2))
    image = axis.imshow(np.log10(np.maximum(matrix, 1e-3)), aspect="auto", cmap="magma", interpolation="nearest")
    axis.set_yticks(range(len(points)), [p.name for p in points], fontsize=7)
    axis.set_xlabel("hidden channel")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, label="log10 max |x| of the channel")
    return save_figure(figure, path)


def residual_histogram(stats: ActivationStats, report: dict, path: Path, title: str) -> Path:
    """|x| histogram of one residual sum, with its outlier channels marked at their max |x|."""
    plt = pyplot()
    tensor = stats.stats[report["name"]]
    used = max(1, int(np.flatnonzero(tensor.histogram).max()) + 1)
    width = tensor.histogram_range / tensor.bins
    group = max(1, used // 200)
    counts = tensor.histogram[: used + (-used) % group].reshape(-1, group).sum(1)
    edges = np.arange(counts.size + 1) * width * group
    figure, axis = plt.subplots(figsize=(9, 5))
    axis.stairs(np.where(counts > 0, counts, np.nan), edges, fill=True, alpha=0.6, label="all channels")
    axis.set_yscale("log")
    for outlier in report["outlier_channels"][:8]:
        axis.axvline(outlier["absmax"], color="crimson", linestyle="--", linewidth=1)
        axis.text(
            outlier["absmax"],
            axis.get_ylim()[1] * 0.3,
            f"ch {outlier['channel']}",
            rotation=90,
            color="crimson",
            fontsize=8,
            ha="right",
        )
    axis.axvline(report["percentile"], color="black", linestyle=":", label="p99.99 of |x|")
    axis.set_xlabel("|x|")
    axis.set_ylabel("elements (log scale)")
    axis.set_title(title)
    axis.legend()
    return save_figure(figure, path)


def write_figures(stats: ActivationStats, reports: list[dict], folder: Path, model_label: str) -> dict[str, str]:
    folder = Path(folder)
    residuals = [r for r in reports if r["role"] in RESIDUAL_ROLES and r["kurtosis"] is not None]
    heaviest = max(residuals, key=lambda r: r["kurtosis"])
    return {
        "kurtosis_by_layer": str(
            kurtosis_by_layer(reports, folder / "kurtosis_by_layer.png", f"Kurtosis by layer and role: {model_label}")
        ),
        "energy_by_layer": str(
            energy_by_layer(
                reports, folder / "top1_energy_by_layer.png", f"Top-1 % channel energy by layer: {model_label}"
            )
        ),
        "residual_heatmap": str(
            residual_heatmap(
                stats,
                folder / "residual_channel_absmax.png",
                f"Channel max |x| along the residual stream: {model_label}",
            )
        ),
        "residual_histogram": str(
            residual_histogram(
                stats,
                heaviest,
                folder / "residual_histogram.png",
                f"|x| histogram of {heaviest['name']} (kurtosis {heaviest['kurtosis']:.0f}): {model_label}",
            )
        ),
    }
