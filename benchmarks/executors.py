"""`qtool reproduce` with the local executor and with Ray on this machine, timed, and their files compared.

    python benchmarks/executors.py --data ../shared/data/QNLI --models-from artifacts \\
        -c max-all -c percentile-99.99-all -c peg-k4-all -c max-all-mp-paper

Each run starts from an empty artifacts folder, except for the fine-tuned models copied from
`--models-from` (so neither run fine-tunes): export, statistics, the FP32 evaluation and then the
configurations, which are what the executor spreads. The Ray run starts a local cluster with
`--cpus-per-task` CPUs per task (default 1: as many worker processes at once as this machine has
cores). It prints the wall times, whether accuracies, calibration files and QDQ graphs are
identical, and the size of what each task receives (its pickled arguments).
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


def _files(artifacts: Path, pattern: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(artifacts.glob(f"*/{pattern}"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--models-from", type=Path, required=True, help="an artifacts folder with models/")
    parser.add_argument("-c", "--config", action="append", required=True)
    parser.add_argument("--cpus-per-task", type=int, default=1)
    args = parser.parse_args()

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
    print(f"CPUs: {os.cpu_count()}; configurations: {', '.join(args.config)}; Ray: {args.cpus_per_task} CPU(s) per task")
    for kind, (seconds, _, _) in runs.items():
        print(f"{kind}: {seconds:.0f} s wall")
    print(f"identical: {json.dumps(same)}")
    print(f"each task receives file paths, its configuration and the data split ({split_bytes / 1e6:.2f} MB pickled)")


if __name__ == "__main__":
    main()
