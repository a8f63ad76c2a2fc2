"""Run ONNX Runtime over calibration batches and stream statistics at every quantization point.

All calibrators read the one statistics file this writes, so trying another method costs no
new pass over the data.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import onnx

from qtool import __version__
from qtool.analysis.stats import DEFAULT_BINS, TensorStats
from qtool.cache import cached_stage
from qtool.data import QnliSplit, make_batches, tokenize_part
from qtool.data.split import Example
from qtool.defaults import MAX_LENGTH
from qtool.errors import QtoolError
from qtool.exporter.points import ATTENTION_LAYOUT, POOLED_LAYOUT, TOKEN_LAYOUT, QuantPoint, load_quant_points
from qtool.fileio import atomic_path, manifest_path, sha256_text
from qtool.graph import model_identity
from qtool.progress import progress_bar

log = logging.getLogger(__name__)

STATS_FORMAT = "qtool-activation-stats/1"
MAX_BINS = 1 << 20  # a histogram per point: 8 MB each at this size


@dataclass(frozen=True)
class CollectConfig:
    samples: int = 512
    batch_size: int = 32
    histogram_bins: int = DEFAULT_BINS
    threads: int | None = None
    max_length: int = MAX_LENGTH

    def validate(self) -> None:
        if self.samples < 1:
            raise QtoolError(f"--samples must be at least 1, got {self.samples}")
        if self.batch_size < 1:
            raise QtoolError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 256 <= self.histogram_bins <= MAX_BINS or self.histogram_bins & (self.histogram_bins - 1):
            raise QtoolError(f"--bins must be a power of two from 256 to {MAX_BINS}, got {self.histogram_bins}")
        if self.threads is not None and self.threads < 1:
            raise QtoolError(f"--threads must be at least 1, got {self.threads}")


@dataclass
class ActivationStats:
    points: list[QuantPoint]
    stats: dict[str, TensorStats]
    manifest: dict

    def point(self, name: str) -> QuantPoint:
        for point in self.points:
            if point.name == name:
                return point
        raise QtoolError(f"no quantization point named {name!r}")

    @property
    def content_sha256(self) -> str:
        """A hash of the statistics themselves (not of the file's bytes)."""
        parts = [json.dumps(self.manifest, sort_keys=True)]
        for point in self.points:
            for key, value in sorted(self.stats[point.name].to_arrays(point.name).items()):
                parts.append(key + ":" + np.ascontiguousarray(value).tobytes().hex())
        return sha256_text(*parts)

    def save(self, path: Path) -> Path:
        arrays: dict[str, np.ndarray] = {"manifest": np.array(json.dumps(self.manifest, sort_keys=True))}
        for point in self.points:
            arrays.update(self.stats[point.name].to_arrays(point.name))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        with atomic_path(Path(path)) as tmp:
            tmp.write_bytes(buffer.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> ActivationStats:
        path = Path(path)
        if not path.is_file():
            raise QtoolError(f"statistics file {path} does not exist; run `qtool collect` first")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            manifest = json.loads(str(arrays["manifest"]))
            if manifest.get("format") != STATS_FORMAT:
                raise ValueError("unknown format")
            points = [QuantPoint.from_json(p) for p in manifest["points"]]
            stats = {p.name: TensorStats.from_arrays(arrays, p.name) for p in points}
        except QtoolError:
            raise
        except Exception as exc:
            raise QtoolError(
                f"{path} is not a qtool statistics file ({exc.__class__.__name__}); delete it and run `qtool collect`"
            ) from None
        return cls(points, stats, manifest)

    def check_model(self, model_path: Path) -> None:
        """Refuse statistics collected on another model."""
        expected = model_identity(model_path)
        recorded = self.manifest.get("model")
        if recorded != expected:
            raise QtoolError(
                f"the statistics were collected on another model ({_describe(recorded)}, not {_describe(expected)}); "
                f"run `qtool collect {model_path}` again"
            )


def _describe(identity: dict | None) -> str:
    if not identity:
        return "unknown"
    described = f"{identity.get('source_model', '?')} sha256 {str(identity.get('model_sha256', '?'))[:12]}"
    return described + (f" {identity['transform']}" if identity.get("transform") else "")


def calibration_examples(split: QnliSplit, samples: int) -> tuple[list[Example], dict[str, int]]:
    """The calibration part first; when it holds fewer than `samples`, topped up from the train part
    (data the model was fine-tuned on, never the eval part)."""
    chosen = split.parts.get("calibration", [])[:samples]
    extra = split.parts.get("train", [])[: samples - len(chosen)]
    if not chosen and not extra:
        split.part("calibration")  # the one-line error naming the empty part
    return chosen + extra, {"calibration": len(chosen), "train": len(extra)}


def _valid_elements(point: QuantPoint, value: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The elements that belong to real tokens, and (for channel layouts) the same as [N, C] rows."""
    if point.layout == TOKEN_LAYOUT:
        if value.ndim != 3 or value.shape[:2] != mask.shape:
            raise QtoolError(f"{point.name}: expected [batch, sequence, channels], got shape {value.shape}")
        rows = value[mask]
        return rows, rows
    if point.layout == ATTENTION_LAYOUT:
        if value.ndim != 4 or value.shape[-1] != mask.shape[1]:
            raise QtoolError(f"{point.name}: expected [batch, heads, sequence, sequence], got shape {value.shape}")
        valid = mask[:, None, :, None] & mask[:, None, None, :]
        return value[np.broadcast_to(valid, value.shape)], None
    if point.layout == POOLED_LAYOUT:
        return value, value.reshape(value.shape[0], -1)
    raise AssertionError(point.layout)


def _update_point(point: QuantPoint, stats: dict[str, TensorStats], outputs: dict, mask: np.ndarray) -> None:
    values, rows = _valid_elements(point, outputs[point.tensor], mask)
    stats[point.name].update(values, rows)


def _augmented_model(model: onnx.ModelProto, points: list[QuantPoint]) -> bytes:
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    for tensor in dict.fromkeys(p.tensor for p in points):
        if tensor not in existing:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    return augmented.SerializeToString()


def collect(model_path: Path, split: QnliSplit, tokenizer, config: CollectConfig = CollectConfig()) -> ActivationStats:
    import onnxruntime as ort

    from qtool.runners.ort import session_options

    config.validate()
    model, points = load_quant_points(model_path)
    examples, sources = calibration_examples(split, config.samples)
    part = tokenize_part(tokenizer, examples, config.max_length)
    batches = make_batches(part, config.batch_size)

    options = session_options(config.threads)
    session = ort.InferenceSession(_augmented_model(model, points), options, providers=["CPUExecutionProvider"])
    feed_names = [i.name for i in session.get_inputs()]
    tensors = list(dict.fromkeys(p.tensor for p in points))
    stats = {p.name: TensorStats(bins=config.histogram_bins) for p in points}

    started = time.perf_counter()

    def infer(batch) -> dict[str, np.ndarray]:
        return dict(zip(tensors, session.run(tensors, {n: batch.feeds[n] for n in feed_names}), strict=True))

    with (
        progress_bar("collect statistics", total=len(part)) as bar,
        ThreadPoolExecutor(max_workers=1) as inference,
        ThreadPoolExecutor(max_workers=config.threads or os.cpu_count() or 1) as workers,
    ):
        # The next batch runs through ONNX Runtime while this one's statistics are computed; at
        # most two batches of activations are alive at once, whatever the number of batches.
        pending = inference.submit(infer, batches[0]) if batches else None
        for index, batch in enumerate(batches):
            outputs = pending.result()
            if index + 1 < len(batches):
                pending = inference.submit(infer, batches[index + 1])
            mask = batch.feeds["attention_mask"].astype(bool)
            # NumPy releases the GIL, so the points update in parallel.
            list(workers.map(_update_point, points, repeat(stats), repeat(outputs), repeat(mask)))
            bar.advance(batch.size, status=f"{len(points)} points")
    seconds = time.perf_counter() - started

    manifest = {
        "format": STATS_FORMAT,
        "model": model_identity(model_path),
        "graph": Path(model_path).name,
        "data": split.describe(),
        "samples": len(part),
        "sample_sources": sources,
        "tokens": int(sum(b.real_tokens for b in batches)),
        "config": _result_options(asdict(config)),
        "points": [p.to_json() for p in points],
        "qtool_version": __version__,
    }
    log.info("collected statistics at %d points over %d pairs in %.1f s", len(points), len(part), seconds)
    return ActivationStats(points, stats, manifest)


def _result_options(config: dict) -> dict:
    """The collection options that change the statistics (the thread count does not)."""
    return {key: value for key, value in config.items() if key != "threads"}


def default_stats_path(model_path: Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}.stats.npz")


def collect_or_load(
    model_path: Path,
    split: QnliSplit,
    tokenizer,
    config: CollectConfig = CollectConfig(),
    stats_path: Path | None = None,
    force: bool = False,
) -> ActivationStats:
    """The statistics of `model_path`, collected once and reused while the model, data split and the
    options that change them are the same (the record `<stats>.manifest.json` holds that key)."""
    stats_path = Path(stats_path or default_stats_path(model_path))
    key = {
        "format": STATS_FORMAT,
        "model": model_identity(model_path),
        "data": split.describe(),
        "config": _result_options(asdict(config)),
    }
    collected: list[ActivationStats] = []

    def run() -> dict:
        collected.append(collect(model_path, split, tokenizer, config))
        collected[0].save(stats_path)
        return {"points": len(collected[0].points), "samples": collected[0].manifest["samples"]}

    record = manifest_path(stats_path)
    cached_stage(record, key, run, artifact=stats_path, force=force, description=f"statistics {stats_path}", stage="statistics")
    return collected[0] if collected else ActivationStats.load(stats_path)
