"""CPU latency of every way qtool can deploy a classifier, in one run on this machine.

Candidates, timed interleaved on the same real QNLI inputs (qtool.deployment.bench.compare):
PyTorch eager FP32, ONNX Runtime FP32, qtool's static W8A8 graph (max calibration) with scope
gemm (TensorRT's placement) as written for TensorRT and rewritten for ONNX Runtime's CPU kernels
(`qtool build --backend ort`), the same with scope gemm-inputs (Q/DQ only on the edges into
MatMul/Gemm, residual path in float) rewritten for ONNX Runtime, scope all (every point) and PEG
with K = 4 range-optimal groups at every point in its scaled and gathered layouts and with folded
weights (one GEMM per projection), all rewritten for ONNX Runtime, and the study's peers: ONNX Runtime's quantize_static (QDQ, U8 activations, S8
per-channel weights, MinMax on the same calibration pairs), quantize_dynamic, the transformer
optimizer alone and before quantize_dynamic, and NNCF's nncf.quantize (when qtool[peers] is
installed), each written as `qtool reproduce` writes its peers. With OpenVINO installed (qtool[peers]),
also on OpenVINO's CPU plugin as `qtool build --backend openvino` converts them: the FP32 graph,
NNCF's graph (where NNCF means it to run) and qtool's gemm-inputs and folded PEG QDQ graphs, these
also converted as written (without the OpenVINO graph's pass that moves Q/DQ pairs to the GEMMs).

Models: the classifier whose FP32 graph is given (named by its model folder) and a BERT-base-shaped model
(12 layers, 768 wide, 12 heads, random weights built here; --skip-bert-base leaves it out). Usage:

    python benchmarks/runtime_cpu.py artifacts/<model>/fp32.onnx --data ../shared/data/QNLI \\
        --batch 1 --batch 8 --iterations 30 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

CALIBRATION_PAIRS = 128
PEG_GROUPS = 4  # range-optimal groups, scope all, in both PEG layouts
ON_OPENVINO = " on OpenVINO)"  # the candidates run as OpenVINO models
# Idle OpenMP threads of PyTorch must sleep, not spin, while the other candidates run.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _peer_graphs(fp32: Path, folder: Path, tokenizer, split) -> dict[str, Path]:
    """The study's peers as `qtool reproduce` writes them: ONNX Runtime's quantizers and transformer
    optimizer, and NNCF's post-training quantization when `qtool[peers]` is installed."""
    from qtool.quantization.nncf_quantizers import nncf_missing, quantize_with_nncf
    from qtool.quantization.ort_quantizers import quantize_with_ort

    graphs = {}
    for name in ("ort-static-minmax", "ort-dynamic", "ort-optimizer-fp32", "ort-optimizer-dynamic"):
        graphs[name] = folder / f"{name}.onnx"
        quantize_with_ort(name, fp32, graphs[name], split, tokenizer, CALIBRATION_PAIRS)
    if nncf_missing():
        print(f"nncf-ptq left out: {nncf_missing()}")
    else:
        graphs["nncf-ptq (QDQ for OpenVINO, on ORT)"] = folder / "nncf-ptq.onnx"
        quantize_with_nncf("nncf-ptq", fp32, graphs["nncf-ptq (QDQ for OpenVINO, on ORT)"], split, tokenizer, CALIBRATION_PAIRS)
    return graphs


def _qtool_graphs(fp32: Path, folder: Path, split, tokenizer) -> dict[str, Path]:
    from qtool.analysis import CollectConfig, collect_or_load
    from qtool.deployment.backends import build_ort
    from qtool.exporter.qdq import PEG_LAYOUTS
    from qtool.quantization.calibration import CalibrateConfig, calibrate
    from qtool.quantization.graphs import write_calibrated_graph

    def ort_graph(qdq: Path, target: Path) -> Path:  # with the kernels `auto` picks on this CPU
        return Path(build_ort(qdq, target)["graph"])

    stats = collect_or_load(
        fp32, split, tokenizer, CollectConfig(samples=CALIBRATION_PAIRS), stats_path=folder / f"{fp32.stem}.stats.npz"
    )
    graphs = {}
    for scope in ("gemm", "gemm-inputs", "all"):
        document = calibrate(stats, CalibrateConfig(method="max", scope=scope))
        qdq = write_calibrated_graph(fp32, document, folder / f"qtool-max-{scope}.qdq.onnx")
        if scope == "gemm":
            graphs[f"qtool-w8a8-{scope} (QDQ graph)"] = qdq
        graphs[f"qtool-w8a8-{scope} (ONNX Runtime graph)"] = ort_graph(qdq, folder / f"qtool-max-{scope}.ort.onnx")
        if scope == "gemm-inputs":
            graphs[f"qtool-w8a8-{scope} (QDQ{ON_OPENVINO}"] = qdq
    peg = calibrate(stats, CalibrateConfig(method="peg", groups=PEG_GROUPS, scope="all"))
    for layout in PEG_LAYOUTS:
        qdq = write_calibrated_graph(fp32, peg, folder / f"qtool-{peg.recipe}-{layout}.qdq.onnx", layout)
        graphs[f"qtool-{peg.recipe} {layout} (ONNX Runtime graph)"] = ort_graph(qdq, folder / f"qtool-{peg.recipe}-{layout}.ort.onnx")
    folded = calibrate(stats, CalibrateConfig(method="peg", groups=PEG_GROUPS, scope="all", weights="folded"))
    qdq = write_calibrated_graph(fp32, folded, folder / f"qtool-{folded.recipe}.qdq.onnx")
    graphs[f"qtool-{folded.recipe} (ONNX Runtime graph)"] = ort_graph(qdq, folder / f"qtool-{folded.recipe}.ort.onnx")
    graphs[f"qtool-{folded.recipe} (QDQ{ON_OPENVINO}"] = qdq
    return graphs


def _on_openvino(graphs: dict[str, Path], folder: Path) -> dict[str, Path]:
    """The graphs marked for OpenVINO as `qtool build --backend openvino` converts them (FP32 and NNCF's
    graph beside them), or none of them when OpenVINO is not installed."""
    from qtool.deployment.backends import backend_named

    try:
        backend_named("openvino").require_library()
    except Exception as missing:  # noqa: BLE001 (any reason OpenVINO cannot load)
        print(f"OpenVINO candidates left out: {missing}")
        return {name: path for name, path in graphs.items() if ON_OPENVINO not in name}
    build = backend_named("openvino").build
    chosen = {"openvino-fp32": graphs["ort-fp32"]}
    chosen |= {name.replace(" (QDQ for OpenVINO, on ORT)", f" (QDQ{ON_OPENVINO}"): path
               for name, path in graphs.items() if name.startswith("nncf-")}
    chosen |= {name: path for name, path in graphs.items() if ON_OPENVINO in name}
    converted = {name: Path(build(path, folder / f"{path.stem}.ov.xml")["model"]) for name, path in chosen.items()}
    converted |= _as_written_on_openvino({name: path for name, path in chosen.items() if name.startswith("qtool-")}, folder)
    return {name: path for name, path in graphs.items() if ON_OPENVINO not in name} | converted


def _as_written_on_openvino(graphs: dict[str, Path], folder: Path) -> dict[str, Path]:
    """qtool's QDQ graphs converted as written, without the OpenVINO graph's pass
    (qtool/exporter/openvino_graph.py), to time what the pass gains in the same run."""
    import openvino as ov

    written = {}
    for name, path in graphs.items():
        target = folder / f"{path.stem}.as-written.ov.xml"
        ov.save_model(ov.convert_model(str(path)), str(target), compress_to_fp16=False)
        written[name.replace(ON_OPENVINO, f", as written{ON_OPENVINO}")] = target
    return written


def _bert_base_shape(folder: Path, tokenizer_dir: Path, split) -> tuple[Path, Path]:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from qtool.models import resolve_model
    from qtool.models.onnx_export import export_onnx

    torch.manual_seed(0)
    config = BertConfig(
        num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_labels=2
    )
    model_dir = folder / "bert-base-shape"
    BertForSequenceClassification(config).eval().save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(model_dir)
    fp32 = folder / "bert-base-shape-onnx" / "fp32.onnx"
    export_onnx(resolve_model(str(model_dir)), split, fp32)
    return model_dir, fp32


def _candidates(model_dir: Path, fp32: Path, folder: Path, split, tokenizer, threads: int | None):
    from qtool.deployment.backends import runner_factory
    from qtool.models.families import model_input_names
    from qtool.runners.torch_eager import TorchRunner

    graphs = {"ort-fp32": fp32}
    graphs |= _qtool_graphs(fp32, folder, split, tokenizer)
    graphs |= _peer_graphs(fp32, folder, tokenizer, split)
    graphs = _on_openvino(graphs, folder)
    candidates = [("torch-eager-fp32", lambda: TorchRunner(model_dir, threads, inputs_of=model_input_names))]
    candidates += [(name, runner_factory(path, threads)) for name, path in graphs.items()]
    return candidates, graphs


def _optimized_graph_ops(graphs: dict[str, Path]) -> dict[str, dict]:
    """What ONNX Runtime's CPU optimizations left in each graph: integer kernels and Q/DQ nodes."""
    from qtool.exporter.ort_fused import check_fused

    report = {}
    for name, path in graphs.items():
        if path.suffix != ".onnx":
            continue
        fused = check_fused(path)
        report[name] = {
            key: fused[key] for key in ("integer_ops", "quantize_linear", "dequantize_linear", "float_matmuls")
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fp32", type=Path, help="FP32 graph of the default classifier (qtool export)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 8)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip-bert-base", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the full results here")
    args = parser.parse_args()

    import transformers

    from qtool.data import DataConfig, load_qnli
    from qtool.deployment.bench import BenchConfig, benchmark_inputs, compare
    from qtool.models.families import tokenizer_for
    from qtool.stages.model import export_manifest

    split = load_qnli(DataConfig(source=args.data))
    tokenizer = tokenizer_for(args.fp32)
    model_dir = Path(export_manifest(args.fp32)["source_path"])
    batches = args.batch or [1, 8]
    config = BenchConfig(warmup=args.warmup, iterations=args.iterations, threads=args.threads)
    from qtool.runners.ort import cpu_description
    from qtool.stages.deploy import deployment_environment

    environment = {
        **cpu_description(),
        **deployment_environment(args.threads),  # "cpu": the one-line summary; "int8_kernels": the ONNX Runtime graphs' below
        "transformers": transformers.__version__,
    }
    results = {
        "environment": environment,
        "config": {
            "batches": batches,
            "sequence_length": args.seq_len,
            "warmup": args.warmup,
            "iterations": args.iterations,
            "threads": args.threads,
            "calibration_pairs": CALIBRATION_PAIRS,
        },
        "models": {},
        "optimized_graph_ops": {},
    }
    with tempfile.TemporaryDirectory(prefix="qtool-bench-") as scratch:
        scratch = Path(scratch)
        models = {model_dir.name: (model_dir, args.fp32, scratch / "default")}
        if not args.skip_bert_base:
            base_dir, base_fp32 = _bert_base_shape(scratch, args.fp32.parent / "tokenizer", split)
            models["BERT-base shape (random weights)"] = (base_dir, base_fp32, scratch / "base")
        for label, (directory, fp32, folder) in models.items():
            folder.mkdir(parents=True, exist_ok=True)
            candidates, graphs = _candidates(directory, fp32, folder, split, tokenizer, args.threads)
            results["optimized_graph_ops"][label] = _optimized_graph_ops(graphs)
            rows = []
            for batch in batches:
                feeds = benchmark_inputs(tokenizer, split.part("eval"), batch, args.seq_len)
                outcome = compare(candidates, feeds, config)
                ort_fp32 = next(c for c in outcome["candidates"] if c["name"] == "ort-fp32")["latency"]["p50_ms"]
                for candidate in outcome["candidates"]:
                    latency = candidate["latency"]
                    rows.append(
                        {
                            "batch": batch,
                            "name": candidate["name"],
                            "p50_ms": latency["p50_ms"],
                            "mean_ms": latency["mean_ms"],
                            "speedup": candidate["speedup"],
                            "vs_ort_fp32": ort_fp32 / latency["p50_ms"],
                        }
                    )
            results["models"][label] = rows

    print(
        f"CPU {environment['cpu']}, qtool's ONNX Runtime graphs: {environment['int8_kernels']}; {args.threads} threads, "
        f"onnxruntime {environment['onnxruntime']}, openvino {environment['openvino']}, torch {environment['torch']}; sequence {args.seq_len}, "
        f"{args.iterations} interleaved iterations after {args.warmup} warm-up; speedup = baseline p50 / p50"
    )
    for label, rows in results["models"].items():
        print(
            f"\n{label}\n\n| candidate | batch | p50 ms | mean ms | speedup vs torch eager | speedup vs ORT FP32 |\n"
            "| --- | --- | --- | --- | --- | --- |"
        )
        for row in rows:
            print(
                f"| {row['name']} | {row['batch']} | {row['p50_ms']:.1f} | {row['mean_ms']:.1f} | "
                f"{row['speedup']:.2f}x | {row['vs_ort_fp32']:.2f}x |"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
