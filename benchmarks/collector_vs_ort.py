"""Time and peak memory of qtool's statistics collector against ONNX Runtime's percentile calibrator.

Both run on the same FP32 graph and the same calibration pairs, each in its own subprocess so
that peak resident memory (ru_maxrss) belongs to one method only. Usage:

    python benchmarks/collector_vs_ort.py artifacts/<model>/fp32.onnx --data ../shared/data/QNLI --samples 512
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The activation-producing ops; the mask arithmetic (Where, Cast, ...) yields constant tensors on
# which ORT's histogram fails ("Too many bins for data range").
ORT_BATCHES_PER_CALL = 2
ORT_OP_TYPES = ["MatMul", "Add", "Mul", "Div", "Erf", "LayerNormalization", "Softmax", "Gemm", "Tanh"]


def _padded_batches(model_path: Path, data: str, samples: int, batch_size: int) -> list[dict]:
    """The same calibration pairs, padded to 128 tokens: ORT's calibrator concatenates batches, so
    every batch must have one shape (the usual `padding="max_length"` data reader)."""
    from qtool.analysis.collect import calibration_examples
    from qtool.data import DataConfig, load_qnli
    from qtool.data.batching import padded_feeds
    from qtool.models.families import tokenizer_for

    split = load_qnli(DataConfig(source=data))
    examples, _ = calibration_examples(split, samples)
    return padded_feeds(tokenizer_for(model_path), examples, batch_size, 128)


def run_qtool(model_path: Path, data: str, samples: int, batch_size: int) -> dict:
    from qtool.analysis import CollectConfig, collect
    from qtool.data import DataConfig, load_qnli
    from qtool.models.families import tokenizer_for

    split = load_qnli(DataConfig(source=data))
    tokenizer = tokenizer_for(model_path)
    started = time.perf_counter()
    stats = collect(model_path, split, tokenizer, CollectConfig(samples=samples, batch_size=batch_size))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tensors": len(stats.points)}


def run_ort(model_path: Path, data: str, samples: int, batch_size: int) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    batches = _padded_batches(model_path, data, samples, batch_size)

    class Reader(CalibrationDataReader):
        def __init__(self, chunk):
            self._iter = iter(chunk)

        def get_next(self):
            return next(self._iter, None)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        calibrator = create_calibrator(
            str(model_path),
            augmented_model_path=str(Path(folder) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Percentile,
            op_types_to_calibrate=ORT_OP_TYPES,
            extra_options={"symmetric": True, "percentile": 99.99, "num_bins": 2048},
        )
        # ORT keeps every output of a collect_data call in memory; feeding it a few batches per call
        # (its histograms merge across calls) keeps memory bounded, as its documentation suggests.
        for start in range(0, len(batches), ORT_BATCHES_PER_CALL):
            calibrator.collect_data(Reader(batches[start : start + ORT_BATCHES_PER_CALL]))
        ranges = calibrator.compute_data()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tensors": len(ranges.data)}


def _child(method: str, model: str, data: str, samples: int, batch_size: int) -> None:
    runner = {"qtool": run_qtool, "ort": run_ort}[method]
    result = runner(Path(model), data, samples, batch_size)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="FP32 ONNX graph written by qtool export")
    parser.add_argument("--data", required=True)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--child", choices=["qtool", "ort"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.model, args.data, args.samples, args.batch_size)
        return
    import onnxruntime

    results = {}
    for method in ("qtool", "ort"):
        completed = subprocess.run(
            [
                sys.executable,
                __file__,
                args.model,
                "--data",
                args.data,
                "--samples",
                str(args.samples),
                "--batch-size",
                str(args.batch_size),
                "--child",
                method,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[method] = json.loads(completed.stdout.strip().splitlines()[-1])
    q, o = results["qtool"], results["ort"]
    from qtool.runners.ort import cpu_summary

    print(
        f"CPU: {cpu_summary()}, onnxruntime {onnxruntime.__version__}, "
        f"{args.samples} pairs, batch {args.batch_size}"
    )
    print("| method | tensors | time (s) | peak RSS (MB) |")
    print("| --- | --- | --- | --- |")
    print(
        f"| qtool collect (moments, channels, histogram) | {q['tensors']} | {q['seconds']:.1f} | {q['peak_rss_mb']:.0f} |"
    )
    print(
        f"| ORT percentile calibrator (2048 bins, batches padded to 128, {ORT_BATCHES_PER_CALL} batches per collect_data call) | {o['tensors']} | {o['seconds']:.1f} | {o['peak_rss_mb']:.0f} |"
    )
    print(
        f"time ratio qtool/ORT: {q['seconds'] / o['seconds']:.2f}; "
        f"memory ratio: {q['peak_rss_mb'] / o['peak_rss_mb']:.2f}"
    )


if __name__ == "__main__":
    main()
