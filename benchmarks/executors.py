"""`qtool reproduce` with the local executor and with Ray on this machine, timed, and their files compared.

    python benchmarks/executors.py --data ../shared/data/QNLI --models-from artifacts \\
        -c max-all -c percentile-99.99-all -c peg-k4-all -c max-all-mp-paper

Each run starts from an empty artifacts folder, except for the fine-tuned models copied from
`--models-from` (so neither run fine-tunes): export, statistics, the FP32 evaluation and then the
configurations, which are what the executor spreads. The Ray run starts a local cluster with
`--cpus-per-task` CPUs per task (default 1: as many worker processes at once as this machine has
cores). It prints the wall times, whether accuracies, calibration files and QDQ graphs are
identical, and the size of what each task receives (its pickled arguments).

    python benchmarks/executors.py --data ../shared/data/QNLI \
        --search artifacts/<model>/fp32.onnx [--tune-samples N --sensitivity-samples M]

times the mixed-precision search alone (`qtool calibrate --method auto --no-eval`, statistics beside
the graph, each run into an empty output folder so its cache starts empty) with both executors, and
checks that both choose the same set with the same curve and pruning and write the same calibration.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(kind: str, args, scratch: Path) -> tuple[float, dict, Path]:
    artifacts = scratch / kind
    shutil.copytree(args.models_from / "models", artifacts / "models")
    command = [sys.executable, "-m", "qtool.cli.app", "reproduce", "--data", args.data, "--artifacts", str(artifacts)]
    command += [item for name in args.config for item in ("-c", name)] + ["--json", "--executor", kind]
    if kind == "ray":
        command += ["--cpus-per-task", str(args.cpus_per_task)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "QTOOL_PROGRESS": "0"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{kind} run failed: {done.stderr.strip().splitlines()[-1]}")
    return seconds, json.loads(done.stdout), artifacts


def _search(kind: str, args, scratch: Path) -> tuple[float, dict, Path]:
    out = scratch / f"search-{kind}"
    command = [sys.executable, "-m", "qtool.cli.app", "calibrate", str(args.search), "--method", "auto"]
    command += ["--no-eval", "--json", "--data", args.data, "--out", str(out)]
    for option in ("tune_samples", "sensitivity_samples"):
        if getattr(args, option) is not None:
            command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    if kind == "ray":
        command += ["--executor", "ray", "--cpus-per-task", str(args.cpus_per_task)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "QTOOL_PROGRESS": "0"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{kind} search failed: {done.stderr.strip().splitlines()[-1]}")
    summary = json.loads(done.stdout)
    return seconds, json.loads(Path(summary["search"]["record"]).read_text()), out


def _compare_searches(args) -> None:
    with tempfile.TemporaryDirectory(prefix="qtool-search-executors-") as scratch:
        runs = {kind: _search(kind, args, Path(scratch)) for kind in ("local", "ray")}
        records = {kind: run[1] for kind, run in runs.items()}
        same = {key: records["ray"][key] == records["local"][key] for key in ("chosen", "curve", "pruning")}
        same["calibration"] = _files_in(runs["ray"][2], "*.calib.json") == _files_in(runs["local"][2], "*.calib.json")
    from qtool.runners.ort import cpu_summary

    print(f"CPUs: {os.cpu_count()} x {cpu_summary()}; search on {args.search}; Ray: {args.cpus_per_task} CPU(s) per task")
    for kind, (seconds, record, _) in runs.items():
        print(f"{kind}: {seconds:.0f} s wall ({record['seconds']:.0f} s in the search, {record['evaluations']} evaluations)")
    print(f"identical: {json.dumps(same)}")


def _files_in(folder: Path, pattern: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob(pattern))}


def _files(artifacts: Path, pattern: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(artifacts.glob(f"*/{pattern}"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--models-from", type=Path, help="an artifacts folder with models/ (reproduce)")
    parser.add_argument("-c", "--config", action="append", help="a configuration of the study (reproduce)")
    parser.add_argument("--search", type=Path, help="an exported FP32 graph: time the search instead")
    parser.add_argument("--tune-samples", type=int)
    parser.add_argument("--sensitivity-samples", type=int)
    parser.add_argument("--cpus-per-task", type=int, default=1)
    args = parser.parse_args()
    if args.search is not None:
        return _compare_searches(args)
    if args.models_from is None or not args.config:
        parser.error("reproduce needs --models-from and -c (or give --search GRAPH)")

    from qtool.data import DataConfig, load_qnli

    with tempfile.TemporaryDirectory(prefix="qtool-executors-") as scratch:
        runs = {kind: _run(kind, args, Path(scratch)) for kind in ("local", "ray")}
        correct = {kind: [(r["configuration"], r["correct"]) for r in run[1]["results"]] for kind, run in runs.items()}
        same = {
            "accuracies": correct["ray"] == correct["local"],
            **{
                pattern: _files(runs["ray"][2], pattern) == _files(runs["local"][2], pattern)
                for pattern in ("*.calib.json", "*.qdq.onnx")
            },
        }
    split_bytes = len(pickle.dumps(load_qnli(DataConfig(source=args.data))))
    from qtool.runners.ort import cpu_summary

    print(f"CPUs: {os.cpu_count()} x {cpu_summary()}; configurations: {', '.join(args.config)}; Ray: {args.cpus_per_task} CPU(s) per task")
    for kind, (seconds, _, _) in runs.items():
        print(f"{kind}: {seconds:.0f} s wall")
    print(f"identical: {json.dumps(same)}")
    print(f"each task receives file paths, its configuration and the data split ({split_bytes / 1e6:.2f} MB pickled)")


if __name__ == "__main__":
    main()
