"""Study figures: accuracy by method, against PEG groups and percentile, and against latency."""

from __future__ import annotations

from pathlib import Path

from qtool.plotting import pyplot, save_figure


def _rows(result: dict, method: str) -> list[dict]:
    return [
        r
        for r in result["results"]
        if r.get("method") == method
        and "backend" not in r  # a row deployed on another backend repeats its source's recipe
        and r["scope"] == "all"
        and not r.get("kept_in_float")
        and r.get("smoothing") is None
        and (method != "peg" or isinstance(r["params"]["groups"], int))  # `auto` has no one K to plot at
    ]


def _fp32_line(axis, result: dict) -> None:
    fp32 = result["results"][0]["accuracy"]
    axis.axhline(100 * fp32, color="black", linestyle="--", label=f"FP32 {100 * fp32:.2f} %")


def accuracy_by_configuration(result: dict, path: Path) -> Path:
    plt = pyplot()
    rows = result["results"]
    figure, axis = plt.subplots(figsize=(10, 5))
    accuracies = [100 * r["accuracy"] for r in rows]
    errors = [
        [100 * (r["accuracy"] - r["accuracy_ci95"][0]) for r in rows],
        [100 * (r["accuracy_ci95"][1] - r["accuracy"]) for r in rows],
    ]
    axis.bar(range(len(rows)), accuracies, yerr=errors, capsize=3, color="tab:blue")
    axis.set_xticks(range(len(rows)), [r["configuration"] for r in rows], rotation=60, ha="right", fontsize=8)
    axis.set_ylabel("eval accuracy % (95 % CI)")
    axis.set_ylim(40, 100)
    axis.axhline(50, color="grey", linestyle=":", label="chance")
    _fp32_line(axis, result)
    axis.set_title(f"Accuracy by configuration: {result['model']}")
    axis.legend()
    return save_figure(figure, path)


def _peg_curve(row: dict) -> str:
    folded = ", folded weights" if row.get("weights") == "folded" else ""
    return f"{row['params'].get('grouping', 'equal')} groups{folded}"


def _series(rows: list[dict], method: str) -> dict[str, list[dict]]:
    """Rows by curve: PEG by grouping and weights (one group is the same either way, so K = 1 joins every curve)."""
    if method != "peg":
        return {method: rows}
    curves = sorted({_peg_curve(r) for r in rows if r["params"]["groups"] != 1})
    return {
        curve: [r for r in rows if _peg_curve(r) == curve or r["params"]["groups"] == 1]
        for curve in curves or ["equal groups"]
    }


def accuracy_by_parameter(result: dict, method: str, key: str, label: str, path: Path) -> Path | None:
    rows = sorted(_rows(result, method), key=lambda r: r["params"][key])
    if not rows:
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, series in _series(rows, method).items():
        # Percentiles crowd near 100: plot how much of the distribution is clipped, 100 - p, on a log axis.
        xs = [100 - r["params"][key] if method == "percentile" else r["params"][key] for r in series]
        axis.errorbar(
            xs,
            [100 * r["accuracy"] for r in series],
            marker="o",
            yerr=[
                [100 * (r["accuracy"] - r["accuracy_ci95"][0]) for r in series],
                [100 * (r["accuracy_ci95"][1] - r["accuracy"]) for r in series],
            ],
            capsize=3,
            label=name,
        )
    if method == "percentile":
        axis.set_xscale("log")
        label = "100 - percentile p (share of |x| above the range, %)"
    _fp32_line(axis, result)
    axis.set_xlabel(label)
    axis.set_ylabel("eval accuracy %")
    axis.set_title(f"{method}: accuracy against {label} ({result['model']})", fontsize=9)
    axis.legend()
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def pareto_front(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on both latency and accuracy, fastest first."""
    front: list[dict] = []
    for row in sorted(rows, key=lambda r: (r["latency"]["p50_ms"], -r["accuracy"])):
        if not front or row["accuracy"] > front[-1]["accuracy"]:
            front.append(row)
    return front


def accuracy_against_latency(result: dict, path: Path) -> Path | None:
    """Every configuration as a point; the Pareto front (nothing both faster and more accurate) drawn
    as a line and labelled, the others left unlabelled so the labels stay legible."""
    rows = [r for r in result["results"] if r.get("latency")]
    if not rows:
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    front = pareto_front(rows)
    others = [r for r in rows if r not in front]
    axis.scatter(
        [r["latency"]["p50_ms"] for r in others], [100 * r["accuracy"] for r in others], color="silver", label="other"
    )
    xs, ys = [r["latency"]["p50_ms"] for r in front], [100 * r["accuracy"] for r in front]
    axis.plot(xs, ys, drawstyle="steps-post", color="tab:blue", alpha=0.5)
    axis.scatter(xs, ys, color="tab:blue", zorder=3, label="Pareto front")
    for index, row in enumerate(front):  # labels alternate above and below the line
        offset = (4, 6) if index % 2 == 0 else (4, -12)
        axis.annotate(row["configuration"], (xs[index], ys[index]), xytext=offset, textcoords="offset points", fontsize=7)
    axis.legend(loc="lower right")
    axis.set_xlabel(
        f"p50 latency ms (ONNX Runtime CPU; NAME@BACKEND on that backend; batch {rows[0]['latency']['batch']} x "
        f"{rows[0]['latency']['sequence_length']})"
    )
    axis.set_ylabel("eval accuracy %")
    axis.set_title(f"Accuracy against latency: {result['model']}")
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def write_study_figures(result: dict, folder: Path) -> dict[str, str]:
    folder = Path(folder)
    figures = {
        "accuracy_by_configuration": accuracy_by_configuration(result, folder / "accuracy_by_configuration.png"),
        "accuracy_vs_peg_groups": accuracy_by_parameter(
            result, "peg", "groups", "PEG groups K", folder / "accuracy_vs_peg_groups.png"
        ),
        "accuracy_vs_percentile": accuracy_by_parameter(
            result, "percentile", "p", "percentile p", folder / "accuracy_vs_percentile.png"
        ),
        "accuracy_vs_latency": accuracy_against_latency(result, folder / "accuracy_vs_latency.png"),
    }
    return {name: str(path) for name, path in figures.items() if path is not None}


def precision_search_curve(search: dict, path: Path, title: str) -> Path:
    """Tuning accuracy against the number of points kept in float (most sensitive first), and the
    set the search settled on after pruning."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.5))
    curve = search["curve"]
    axis.plot(
        [c["float_points"] for c in curve],
        [100 * c["accuracy"] for c in curve],
        marker="o",
        label="the n most sensitive points in float",
    )
    fp32 = 100 * search["tuning"]["fp32_accuracy"]
    axis.axhline(fp32, color="black", linestyle="--", label=f"FP32 {fp32:.2f} %")
    bound = search.get("tuning_paired", {}).get("confidence")
    rule = f" (accepted by the drop's {100 * bound:g} % bound, not this line)" if bound else ""
    axis.axhline(
        fp32 - search["max_drop"], color="grey", linestyle=":", label=f"budget: -{search['max_drop']:g} points{rule}"
    )
    axis.scatter(
        [len(search["chosen"])],
        [100 * search["tuning_accuracy"]],
        color="crimson",
        zorder=3,
        label=f"chosen: {len(search['chosen'])} points in float",
    )
    axis.set_xlabel("activation points kept in float")
    axis.set_ylabel(f"accuracy % on {search['tuning']['pairs']} tuning pairs")
    axis.set_title(title, fontsize=9)
    axis.legend()
    axis.grid(alpha=0.3)
    return save_figure(figure, path)
