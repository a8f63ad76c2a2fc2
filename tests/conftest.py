"""Shared fixtures: synthetic GLUE TSVs, tiny BERT classifiers built in code, the shared QNLI data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_QNLI = Path(os.environ.get("QTOOL_DATA", REPO.parent / "shared" / "data" / "QNLI"))

os.environ.setdefault("QTOOL_PROGRESS", "0")

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


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    folder = tmp_path / "qnli"
    write_glue_tsv(folder / "dev.tsv", rows=240)
    return folder


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from qtool.models.resolve import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(None).path)


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
) -> Path:
    """Save a randomly initialised BERT (with or without a 2-way head) and the tokenizer to `folder`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden,
        max_position_embeddings=512,
        num_labels=2,
        id2label={0: "entailment", 1: "not_entailment"},
        label2id={"entailment": 0, "not_entailment": 1},
    )
    model = (BertForSequenceClassification if head else BertModel)(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, embedded_tokenizer) -> Path:
    return build_bert_classifier(tmp_path_factory.mktemp("tiny-bert"), embedded_tokenizer, layers=2, hidden=32, heads=4)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory, embedded_tokenizer) -> Path:
    """A headless tiny BERT, as a pretrained encoder that needs fine-tuning."""
    return build_bert_classifier(
        tmp_path_factory.mktemp("tiny-encoder"), embedded_tokenizer, layers=2, hidden=32, heads=4, head=False
    )


@pytest.fixture(scope="session")
def shared_qnli() -> Path:
    if not (SHARED_QNLI / "dev.tsv").is_file():
        pytest.skip(f"shared QNLI data not found at {SHARED_QNLI}")
    return SHARED_QNLI


@pytest.fixture(scope="session")
def session_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("qnli-session")
    write_glue_tsv(folder / "dev.tsv", rows=400, seed=7)
    return folder


def export_tiny(folder: Path, data: Path, out: Path) -> Path:
    from qtool.data import DataConfig, load_qnli
    from qtool.exporter import export_onnx
    from qtool.models import resolve_model

    export_onnx(resolve_model(str(folder)), load_qnli(DataConfig(source=str(data))), out)
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_classifier, session_data) -> Path:
    return export_tiny(tiny_classifier, session_data, tmp_path_factory.mktemp("tiny-onnx") / "fp32.onnx")
