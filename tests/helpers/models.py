"""Builders shared by the tests: synthetic GLUE TSVs and tiny BERT classifiers made in code."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = (
    "river city king war music school paper light energy cell water law army music court church "
    "island trade film season color metal engine star ocean theory language bridge forest"
).split()


def write_glue_tsv(path: Path, rows: int, seed: int = 0, questions: int | None = None) -> Path:
    """A GLUE-layout QNLI TSV of synthetic pairs; several pairs share each question."""
    rng = random.Random(seed)
    questions = questions or max(1, rows * 3 // 4)
    pool = [f"what {' '.join(rng.choices(WORDS, k=rng.randint(2, 6)))} number {i}?" for i in range(questions)]
    lines = ["index\tquestion\tsentence\tlabel"]
    for index in range(rows):
        sentence = " ".join(rng.choices(WORDS, k=rng.randint(3, 30))) + "."
        label = rng.choice(("entailment", "not_entailment"))
        lines.append(f"{index}\t{rng.choice(pool)}\t{sentence}\t{label}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_bert_classifier(
    folder: Path,
    tokenizer,
    *,
    layers: int,
    hidden: int,
    heads: int,
    intermediate: int | None = None,
    seed: int = 0,
    head: bool = True,
    positions: int = 512,
    labels: tuple[str, ...] = ("entailment", "not_entailment"),
) -> Path:
    """Save a randomly initialised BERT (with or without a head for `labels`, in that output order)
    and the tokenizer to `folder`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden,
        max_position_embeddings=positions,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: index for index, name in enumerate(labels)},
    )
    model = (BertForSequenceClassification if head else BertModel)(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def export_tiny(folder: Path, data: Path, out: Path) -> Path:
    from qtool.data import DataConfig, load_qnli
    from qtool.models import resolve_model
    from qtool.models.onnx_export import export_onnx

    export_onnx(resolve_model(str(folder)), load_qnli(DataConfig(source=str(data))), out)
    return out


SCALED_HIDDEN = 32


def outlier_classifier(
    tmp_path_factory, tokenizer, data: Path, *, weight_scale: float, outlier: float, seed: int, name: str
) -> dict:
    """A tiny classifier with its projection weights multiplied by `weight_scale`, an outlier channel
    (5) of size `outlier` in layer 0's FFN output, and a decision centred on the data so that both
    classes are predicted; exported, with statistics over 40 calibration pairs."""
    import numpy as np
    import torch
    from transformers import BertForSequenceClassification

    from qtool.analysis import CollectConfig, collect
    from qtool.data import DataConfig, load_qnli
    from qtool.models.resolve import load_tokenizer

    folder = build_bert_classifier(
        tmp_path_factory.mktemp(name), tokenizer, layers=2, hidden=SCALED_HIDDEN, heads=4, seed=seed
    )
    model = BertForSequenceClassification.from_pretrained(folder)
    split = load_qnli(DataConfig(source=str(data)))
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if parameter_name.endswith("weight") and "LayerNorm" not in parameter_name:
                parameter.mul_(weight_scale)
        model.bert.encoder.layer[0].output.dense.bias[5] = outlier
        examples = split.parts["train"][:200]
        encoded = tokenizer(
            [e.text for e in examples], [e.pair for e in examples], padding=True, return_tensors="pt"
        )
        logits = model(**encoded).logits
        model.classifier.bias[1] -= torch.median(logits[:, 1] - logits[:, 0])
    model.save_pretrained(folder)
    graph = export_tiny(folder, data, tmp_path_factory.mktemp(f"{name}-onnx") / "fp32.onnx")
    stats = collect(graph, split, load_tokenizer(graph.parent / "tokenizer"), CollectConfig(samples=40, batch_size=8))
    state = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()}
    return {"graph": graph, "stats": stats, "split": split, "model": model, "state": state}


FAMILIES = ("bert", "roberta", "distilbert", "mpnet", "electra")


def build_family_classifier(
    folder: Path, tokenizer, family: str, *, num_labels: int = 2, seed: int = 0, head: bool = True
) -> Path:
    """A randomly initialised two-layer, 40-wide, 4-head sequence classifier of `family` (ELECTRA with a
    24-wide embedding projected up to 40, as ELECTRA-small's 128 -> 256), saved with `tokenizer`;
    without `head`, its encoder alone."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        ElectraConfig,
        ElectraForSequenceClassification,
        MPNetConfig,
        MPNetForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    labels = ("entailment", "not_entailment", "neutral")[:num_labels]
    common = {
        "vocab_size": tokenizer.vocab_size,
        "num_labels": num_labels,
        "id2label": dict(enumerate(labels)),
        "label2id": {label: index for index, label in enumerate(labels)},
    }
    bert_like = {"hidden_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 80}
    configs = {
        "bert": (BertForSequenceClassification, BertConfig(**bert_like, **common)),
        "roberta": (
            RobertaForSequenceClassification,
            RobertaConfig(**bert_like, max_position_embeddings=514, type_vocab_size=1, pad_token_id=0, **common),
        ),
        "distilbert": (
            DistilBertForSequenceClassification,
            DistilBertConfig(dim=40, n_layers=2, n_heads=4, hidden_dim=80, **common),
        ),
        "mpnet": (MPNetForSequenceClassification, MPNetConfig(**bert_like, **common)),
        "electra": (ElectraForSequenceClassification, ElectraConfig(embedding_size=24, **bert_like, **common)),
    }
    model_class, config = configs[family]
    torch.manual_seed(seed)
    model = model_class(config).eval()
    (model if head else model.base_model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def relabel_by_fp32(graph: Path, split, tokenizer):
    """`split` with every label replaced by the FP32 graph's prediction, so FP32 scores 100 % and any
    accuracy drop counts flips caused by quantization."""
    import numpy as np
    import onnxruntime as ort

    from qtool.data import Example, QnliSplit, make_batches, tokenize_part

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    parts = {}
    for name, examples in split.parts.items():
        part = tokenize_part(tokenizer, examples, 128)
        predicted = np.zeros(len(part), dtype=np.int64)
        for batch in make_batches(part, 16):
            feeds = {k: v for k, v in batch.feeds.items() if k in names}
            predicted[batch.indices] = session.run(["logits"], feeds)[0].argmax(-1)
        parts[name] = [Example(e.text, e.pair, int(p)) for e, p in zip(examples, predicted, strict=True)]
    return QnliSplit("relabelled", parts)
