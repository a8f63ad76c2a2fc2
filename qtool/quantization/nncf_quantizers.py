"""OpenVINO's Neural Network Compression Framework (NNCF) on the same model and pairs, as study peers.

`nncf-ptq` is `nncf.quantize` on qtool's FP32 export (ONNX backend, `ModelType.TRANSFORMER`, the
calibration pairs qtool calibrates on). `nncf-accuracy-control` is
`nncf.quantize_with_accuracy_control` with qtool's search contract: the same budget
(`SEARCH_MAX_DROP` accuracy points below FP32), the same tuning pairs (`TuningSet`: the data's tuning
part), the same rule (its metric for a candidate is FP32's tuning accuracy less the upper bound of the
candidate's paired drop, so NNCF accepts what the search would) and QDQ graphs scored as qtool's
search scores them (ONNX Runtime optimizations off). Both write QDQ graphs meant for OpenVINO's CPU plugin; on ONNX Runtime
they run as QDQ graphs with ONNX Runtime's own fusions, which is how the study measures them.

NNCF is an optional extra (`pip install qtool[peers]`); `nncf_missing()` says why it cannot run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from qtool.analysis.collect import calibration_examples
from qtool.data import DataConfig, QnliSplit, tokenize_part
from qtool.data.batching import collate
from qtool.defaults import MAX_LENGTH, SEARCH_MAX_DROP, SEED
from qtool.deployment.evaluate import RECIPE_LEVEL, predict_logits
from qtool.errors import QtoolError
from qtool.graph import load_model, save_derived_graph
from qtool.quantization.search import SearchConfig, TuningSet
from qtool.runners.ort import OrtRunner

log = logging.getLogger(__name__)

ACCURACY_CONTROL = "nncf-accuracy-control"  # the peer that tunes on the data's tuning part
NNCF_PEERS = ("nncf-ptq", ACCURACY_CONTROL)
NNCF_SCOPE = "nncf-transformer"  # NNCF's transformer preset: MatMul/Gemm inputs and weights, some Adds
INSTALL_HINT = "pip install 'qtool[peers]'"
COMPUTE_OPS = ("MatMul", "Gemm", "Add", "Mul", "Conv")
RANKING_PAIRS = 300  # NNCF ranks quantizers on 300 validation items by default; ours are batches, so as many pairs


def nncf_missing() -> str | None:
    """Why the NNCF peers cannot run here (None when they can)."""
    if importlib.util.find_spec("nncf") is None:
        return f"NNCF is not installed ({INSTALL_HINT})"
    return None


class _ToQtoolLog(logging.Handler):
    """NNCF's records into qtool's log: warnings as warnings, the rest at debug level."""

    def emit(self, record: logging.LogRecord) -> None:
        log.log(logging.WARNING if record.levelno >= logging.WARNING else logging.DEBUG, "NNCF: %s", record.getMessage())


@contextlib.contextmanager
def _nncf_quiet():
    """NNCF logs to stdout (its logger does not propagate) and draws progress bars there; keep stdout
    for qtool's results, send its records to qtool's log and restore NumPy's global random state."""
    from nncf.common.logging.logger import nncf_logger

    handlers = list(nncf_logger.handlers)
    for handler in handlers:
        nncf_logger.removeHandler(handler)
    forward = _ToQtoolLog()
    nncf_logger.addHandler(forward)
    chatter, random_state = io.StringIO(), np.random.get_state()
    np.random.seed(SEED)  # NNCF draws its calibration subset and bias-correction samples from NumPy's global state
    try:
        with contextlib.redirect_stdout(chatter):
            yield
    except QtoolError:
        raise
    except Exception as exc:  # NNCF's own failures: one line, naming the fix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise QtoolError(f"NNCF failed ({type(exc).__name__}: {first}); run this peer without it or report the graph") from None
    finally:
        nncf_logger.removeHandler(forward)
        for handler in handlers:
            nncf_logger.addHandler(handler)
        np.random.set_state(random_state)
        if chatter.getvalue().strip():
            log.debug("NNCF printed: %s", chatter.getvalue().strip())


def quantized_ops(model: onnx.ModelProto) -> dict[str, list[str]]:
    """`quantized`: compute nodes (MatMul, Gemm, Add, Mul, Conv) reading a DequantizeLinear output;
    `float_gemms`: MatMul/Gemm nodes reading none; `float_weight_gemms`: those of them that read a
    weight (an initializer), the projections a quantizer would quantize and left in float."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weights = {initializer.name for initializer in model.graph.initializer}
    found: dict[str, list[str]] = {"quantized": [], "float_gemms": [], "float_weight_gemms": []}
    for node in model.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        if any(name in dequantized for name in node.input):
            found["quantized"].append(node.name)
        elif node.op_type in ("MatMul", "Gemm"):
            found["float_gemms"].append(node.name)
            if any(name in weights for name in node.input):
                found["float_weight_gemms"].append(node.name)
    return found


def _graph_inputs(fp32: Path) -> set[str]:
    return {value.name for value in load_model(fp32, load_external_data=False).graph.input}


def _calibration_items(fp32: Path, split: QnliSplit, tokenizer, samples: int, max_length: int) -> tuple[list, int]:
    """One pair per item at its own length: NNCF collects its statistics item by item."""
    examples, _ = calibration_examples(split, samples)
    part = tokenize_part(tokenizer, examples, max_length)
    inputs = _graph_inputs(fp32)
    batches = (collate(part, np.array([index])) for index in range(len(part)))
    return [{name: array for name, array in batch.feeds.items() if name in inputs} for batch in batches], len(part)


class _Validation:
    """NNCF's `validation_fn` on qtool's tuning pairs, each item a batch: FP32's accuracy on the pairs given
    less the one-sided upper bound of the model's paired drop below FP32 there (at most 1, below 0 when the
    bound exceeds FP32's accuracy; FP32's own accuracy for FP32), so NNCF's drop is the bound the search judges by; per batch, plain accuracy."""

    def __init__(self, tuning: TuningSet, config: SearchConfig):
        self.tuning, self.threads, self.confidence = tuning, config.threads, config.confidence
        self.calls, self.seconds = 0, 0.0
        self._model, self._runner = None, None  # NNCF scores one model item by item: one session for them

    def _session(self, model: onnx.ModelProto) -> OrtRunner:
        if model is not self._model:
            self.close()
            runner = OrtRunner(model.SerializeToString(), threads=self.threads, optimization_level=RECIPE_LEVEL)
            self._model, self._runner = model, runner.__enter__()
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            self._runner.__exit__(None, None, None)
        self._model, self._runner = None, None

    def __call__(self, model: onnx.ModelProto, batches) -> tuple[float, list[float]]:
        started = time.perf_counter()
        batches = list(batches)
        size = sum(batch.size for batch in batches)
        order = np.concatenate([batch.indices for batch in batches])
        logits = predict_logits(self._session(model), [_local(batch, order) for batch in batches], size)
        right = self.tuning.right(logits, order)
        bound = self.tuning.against_fp32(logits, order).upper(self.confidence) / 100
        per_batch, start = [], 0
        for batch in batches:
            per_batch.append(float(right[start : start + batch.size].mean()))
            start += batch.size
        self.calls += 1
        self.seconds += time.perf_counter() - started
        return float(self.tuning.fp32_right[order].mean()) - bound, per_batch


def _local(batch, order: np.ndarray):
    """`batch` with its indices renumbered into positions of `order` (NNCF validates subsets of batches)."""
    position = {int(index): place for place, index in enumerate(order)}
    return replace(batch, indices=np.array([position[int(i)] for i in batch.indices], dtype=np.int64))


def quantize_with_nncf(
    name: str,
    fp32: Path,
    output: Path,
    split: QnliSplit,
    tokenizer,
    samples: int,
    max_length: int = MAX_LENGTH,
    max_drop: float = SEARCH_MAX_DROP,
    threads: int | None = None,
    tune_data: DataConfig | str | None = None,
) -> dict:
    """Write `output` with NNCF's `name` peer; return what it used, how long it took and what it quantized."""
    if name not in NNCF_PEERS:
        raise QtoolError(f"unknown NNCF peer {name!r}; choose one of {', '.join(NNCF_PEERS)}")
    missing = nncf_missing()
    if missing:
        raise QtoolError(f"cannot run {name}: {missing}")
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    items, used = _calibration_items(fp32, split, tokenizer, samples, max_length)
    model = load_model(fp32)
    common = {
        "model_type": nncf.ModelType.TRANSFORMER,
        "subset_size": len(items),
        "preset": nncf.QuantizationPreset.MIXED,
    }
    record: dict = {"method": name, "calibration_pairs": used, "scope": NNCF_SCOPE, "nncf": nncf.__version__}
    started = time.perf_counter()
    with _nncf_quiet():
        if name == "nncf-ptq":
            quantized = nncf.quantize(model, nncf.Dataset(items), **common)
        else:
            config = SearchConfig(max_drop=max_drop, threads=threads, max_length=max_length, tune_data=tune_data)
            tuning = TuningSet(fp32, split, tokenizer, config)
            validation = _Validation(tuning, config)
            try:
                quantized = nncf.quantize_with_accuracy_control(
                    model,
                    calibration_dataset=nncf.Dataset(items),
                    validation_dataset=nncf.Dataset(tuning.batches),
                    validation_fn=validation,
                    max_drop=max_drop / 100,
                    drop_type=nncf.DropType.ABSOLUTE,
                    advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                        ranking_subset_size=math.ceil(RANKING_PAIRS / config.batch_size)
                    ),
                    **common,
                )
            finally:
                validation.close()
            record |= {
                "max_drop": max_drop,
                "tuning_pairs": tuning.size,
                "tuning_sources": tuning.sources,
                **({"tune_data": tuning.tune_data} if tuning.tune_data else {}),
                "evaluations": validation.calls,
                "evaluation_seconds": round(validation.seconds, 1),
            }
    seconds = time.perf_counter() - started
    if name == ACCURACY_CONTROL:
        with OrtRunner(quantized.SerializeToString(), threads=threads, optimization_level=RECIPE_LEVEL) as runner:
            logits = predict_logits(runner, tuning.batches, tuning.size)
        paired = tuning.against_fp32(logits)
        record |= {
            "tuning_fp32_accuracy": tuning.fp32_accuracy,
            "tuning_accuracy": tuning.accuracy(logits),
            "tuning_drop": round(paired.drop, 4),
            "tuning_paired": paired.to_dict(config.confidence),
            "within_budget": paired.upper(config.confidence) <= max_drop + 1e-9,
        }
    found = quantized_ops(quantized)
    record |= {
        "seconds": round(seconds, 1),
        "quantized_ops": len(found["quantized"]),
        "float_gemms": found["float_gemms"],
        "kept_in_float": found["float_weight_gemms"],
    }
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(load_model(fp32, load_external_data=False).metadata_props)
    save_derived_graph(quantized, fp32, output, {"precision": f"int8-{name}", "recipe": name})
    log.info(
        "%s written in %.1f s: %d quantized ops, %d weight GEMMs left in float",
        output, record["seconds"], record["quantized_ops"], len(record["kept_in_float"]),
    )
    return record
