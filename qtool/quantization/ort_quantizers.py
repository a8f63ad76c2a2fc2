"""ONNX Runtime's own quantizers and transformer optimizer on the same model and calibration pairs,
as study peers.

`ort-optimizer-fp32` is the FP32 graph after ONNX Runtime's transformer optimizer (`optimize_model`,
model type `bert`: fused Attention, SkipLayerNormalization, BiasGelu where its patterns match) and
`ort-optimizer-dynamic` that graph through `quantize_dynamic`: the classic ONNX Runtime BERT recipe
for CPUs. qtool reads the heads and width from the graph (`attention_shape`) and passes them, as
ONNX Runtime's documentation asks: its own detection fails on exports that reshape with -1 heads,
and without them it fuses no Attention.

`quantize_static` keeps every intermediate output of a calibration pass in memory before it
builds histograms, and concatenates batches, so its inputs are padded to one length and its
histogram methods (Percentile, Entropy) see at most `HISTOGRAM_PAIRS` pairs; MinMax streams and
sees them all. The report states the pairs each peer used.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import time
from pathlib import Path

import onnx

from qtool.analysis.collect import calibration_examples
from qtool.data import QnliSplit
from qtool.data.batching import padded_feeds
from qtool.defaults import MAX_LENGTH
from qtool.errors import QtoolError
from qtool.fileio import atomic_path
from qtool.graph import GraphIndex, load_model, save_derived_graph

log = logging.getLogger(__name__)

PEERS = {  # name -> (transformer optimizer first, quantizer: a CalibrationMethod name, "dynamic", or None)
    "ort-static-minmax": (False, "MinMax"),
    "ort-static-percentile": (False, "Percentile"),
    "ort-static-entropy": (False, "Entropy"),
    "ort-dynamic": (False, "dynamic"),
    "ort-optimizer-fp32": (True, None),
    "ort-optimizer-dynamic": (True, "dynamic"),
}
HISTOGRAM_PAIRS = 128
OPTIMIZER_FORMAT = "heads-from-graph"  # the transformer optimizer is told the heads and width (`attention_shape`)
PEER_SCOPE = "ort-matmul"  # ONNX Runtime defaults: MatMul/Gemm inputs (U8) and weights (S8 per channel)


def attention_shape(model: onnx.ModelProto) -> tuple[int, int]:
    """(heads, hidden width) of the encoder's self-attention, read from the graph: the head size is the
    last entry of the shape a projection output is reshaped to ([batch, sequence, -1, head size]) and
    the width is that projection's output size. (0, 0) when no such reshape is found, which leaves
    ONNX Runtime's optimizer to detect them (it cannot when the export reshapes with -1 heads)."""
    index = GraphIndex(model.graph)
    for node in index.nodes:
        if node.op_type != "Reshape":
            continue
        shape = index.producer.get(node.input[1])
        parts = [index.constant_value(name) for name in shape.input] if shape is not None and shape.op_type == "Concat" else []
        head = parts[-1] if len(parts) == 4 and parts[-1] is not None and parts[-1].size == 1 else None
        source = index.producer.get(node.input[0])
        if source is not None and source.op_type == "Add":  # the projection's bias
            producers = [index.producer.get(i) for i in source.input]
            source = next((p for p in producers if p is not None and p.op_type == "MatMul"), None)
        weight = None
        if head is not None and source is not None and source.op_type == "MatMul":
            weight = next((index.constant_value(i) for i in source.input if index.is_constant(i)), None)
        if weight is not None and weight.ndim == 2 and int(head.item()) > 0 and weight.shape[1] % int(head.item()) == 0:
            return weight.shape[1] // int(head.item()), int(weight.shape[1])
    return 0, 0


def _copy_metadata(fp32: Path, written: Path, extra: dict[str, str]) -> None:
    """Give the peer graph qtool's metadata (labels, tokenizer) so every qtool command reads it."""
    model = onnx.load(str(written))
    del model.metadata_props[:]
    model.metadata_props.extend(onnx.load(str(fp32), load_external_data=False).metadata_props)
    save_derived_graph(model, fp32, written, extra)


def calibration_reader(batches: list[dict]):
    """An ONNX Runtime `CalibrationDataReader` that hands out `batches` (feed dicts) once."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self):
            return next(self._batches, None)

    return Reader()


def quantize_with_ort(
    name: str, fp32: Path, output: Path, split: QnliSplit, tokenizer, samples: int, max_length: int = MAX_LENGTH
) -> dict:
    """Write `output` with ONNX Runtime's quantizer `name`; return what it used."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.transformers.optimizer import optimize_model

    if name not in PEERS:
        raise QtoolError(f"unknown peer {name!r}; choose one of {', '.join(PEERS)}")
    optimize, method = PEERS[name]
    used, started = 0, time.perf_counter()
    with atomic_path(output) as tmp, tempfile.TemporaryDirectory(prefix="qtool-peer-") as scratch:
        source = fp32
        if optimize:
            source = Path(scratch) / "optimized.onnx"
            heads, hidden = attention_shape(load_model(fp32, load_external_data=False))
            optimizer = optimize_model(str(fp32), model_type="bert", num_heads=heads, hidden_size=hidden)
            optimizer.save_model_to_file(str(source))
            if method is None:
                shutil.copyfile(source, tmp)
        if method == "dynamic":
            # The optimizer's com.microsoft ops leave some tensors without an inferred type: they are float.
            extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if optimize else {}
            quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True, extra_options=extra)
        elif method is not None:
            pairs = samples if method == "MinMax" else min(samples, HISTOGRAM_PAIRS)
            examples, _ = calibration_examples(split, pairs)
            inputs = {value.name for value in load_model(fp32, load_external_data=False).graph.input}
            batches = [
                {name: array for name, array in feeds.items() if name in inputs}
                for feeds in padded_feeds(tokenizer, examples, 16, max_length)
            ]
            used = len(examples)

            chatter = io.StringIO()  # quantize_static prints progress with print(); keep stdout for results
            with contextlib.redirect_stdout(chatter):
                quantize_static(
                    str(fp32),
                    str(tmp),
                    calibration_reader(batches),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method),
                    op_types_to_quantize=["MatMul", "Gemm"],
                    extra_options={"CalibTensorRangeSymmetric": False},
                    calibration_providers=["CPUExecutionProvider"],
                    use_external_data_format=False,
                )
            log.debug("onnxruntime quantize_static said: %s", chatter.getvalue().strip())
        _copy_metadata(fp32, tmp, {"precision": f"int8-{name}", "recipe": name})
    log.info("%s written with %s calibration pairs", output, used)
    seconds = round(time.perf_counter() - started, 1)
    return {"method": name, "calibration_pairs": used, "scope": PEER_SCOPE if method else "none", "seconds": seconds}
