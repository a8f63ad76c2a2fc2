"""A user's own classifier and data: any number of labels in the checkpoint's own order, single texts
or pairs, from a CSV, a JSONL file or a saved dataset, through the whole study."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qtool
from qtool.data import DataConfig
from tests.data.test_tables import STARS, nli_rows, review_rows, write_csv, write_jsonl
from tests.helpers.models import build_bert_classifier

EVERY_CALIBRATOR = ("fp32", "max-all", "percentile-99.99-all", "peg-k2-all", "entropy-all", "mse-all")
NLI_ORDER = ("neutral", "contradiction", "entailment")  # the checkpoint's outputs, not alphabetical


@pytest.fixture(scope="module")
def five_star(tmp_path_factory, embedded_tokenizer):
    folder = tmp_path_factory.mktemp("five-star")
    return build_bert_classifier(folder, embedded_tokenizer, layers=2, hidden=32, heads=4, seed=1, labels=STARS)


@pytest.fixture(scope="module")
def three_way(tmp_path_factory, embedded_tokenizer):
    """A 3-label pair classifier whose outputs are centred on the test pairs, so its predictions vary."""
    import torch
    from transformers import BertForSequenceClassification

    folder = tmp_path_factory.mktemp("three-way")
    build_bert_classifier(folder, embedded_tokenizer, layers=2, hidden=32, heads=4, seed=2, labels=NLI_ORDER)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    rows = nli_rows(240)
    encoded = embedded_tokenizer([r["premise"] for r in rows], [r["hypothesis"] for r in rows], padding=True,
                                 return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits
        model.classifier.bias.sub_(logits.mean(0))
    model.save_pretrained(folder)
    return folder


def _study(model, data, tmp_path, configurations=EVERY_CALIBRATOR, backends=None) -> dict:
    study = qtool.reproduce(
        str(model), data=data, configurations=configurations, artifacts=tmp_path / "artifacts", samples=32, limit=48,
        backends=backends, warmup=1, iterations=5,
    )
    report = study.report.read_text()
    assert "Other metrics" in report and "macro-F1" in report and "MCC" in report
    rows = {row["configuration"]: row for row in study.rows if "backend" not in row}
    assert set(rows) == set(configurations)
    on_openvino = [row for row in study.rows if row.get("backend") == "openvino"]  # within the budget, these labels
    assert ("fp32@openvino" in {row["configuration"] for row in on_openvino}) == (backends is None)
    for row in on_openvino:
        assert row["configuration"].removesuffix("@openvino") in rows and row["deployed_changed"] <= row["examples"]
        assert {"macro_f1", "mcc"} <= set(row["metrics"]) and row["latency"]["p50_ms"] > 0
    for name, row in rows.items():
        assert 0 <= row["accuracy"] <= 1 and row["examples"] == 48
        assert {"macro_f1", "mcc"} <= set(row["metrics"]) and len(row["metrics"]["macro_f1_ci95"]) == 2, name
        if name != "fp32":
            assert row["deployed_changed"] is not None and row["latency"]["p50_ms"] > 0
    return study.details


def test_five_labels_from_a_csv_through_the_study(five_star, tmp_path):
    data = DataConfig(source=write_csv(tmp_path / "reviews.csv", review_rows(240)), text_columns=("review",),
                      label_column="stars")
    details = _study(five_star, data, tmp_path)
    assert details["data_split"]["labels"] == sorted(STARS)


def test_three_labels_of_pairs_from_jsonl_and_a_saved_dataset(three_way, tmp_path):
    rows = nli_rows(240)
    details = _study(three_way, write_jsonl(tmp_path / "nli.jsonl", rows), tmp_path / "jsonl")
    assert details["data_split"]["labels"] == ["contradiction", "entailment", "neutral"]
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))  # the same rows, read another way
    saved = _study(three_way, str(tmp_path / "saved"), tmp_path / "saved-run", EVERY_CALIBRATOR[:3], ["ort"])
    assert saved["data_split"]["labels"] == details["data_split"]["labels"]
    assert saved["data_split"]["sizes"] == details["data_split"]["sizes"]


def test_qtool_eval_predicts_what_transformers_predicts_in_another_label_order(three_way, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    from qtool.data import load_data, tokenize_part
    from qtool.deployment.evaluate import EvalConfig, evaluate_graph
    from qtool.models.resolve import load_tokenizer

    source = write_jsonl(tmp_path / "nli.jsonl", nli_rows(120))
    graph = qtool.export(str(three_way), data=source, output=tmp_path / "fp32.onnx").graph
    split = load_data(DataConfig(source=source))
    ours = evaluate_graph(graph, split, EvalConfig(part="all"), use_cache=False, predictions=True)["predictions"]
    model = AutoModelForSequenceClassification.from_pretrained(three_way).eval()
    tokenizer = load_tokenizer(three_way)
    part = tokenize_part(tokenizer, split.part("all"))
    encoded = tokenizer([e.text for e in split.part("all")], [e.pair for e in split.part("all")], padding=True,
                        return_tensors="pt")
    with torch.no_grad():
        outputs = model(**encoded).logits.argmax(-1).numpy()
    theirs = [split.labels.index(model.config.id2label[int(i)]) for i in outputs]
    assert ours == theirs and len(set(theirs)) > 1 and len(part) == 120


def test_a_checkpoint_with_other_labels_is_refused_naming_both_sets(five_star, tmp_path):
    source = write_jsonl(tmp_path / "nli.jsonl", nli_rows(60))
    with pytest.raises(qtool.QtoolError) as caught:
        qtool.export(str(five_star), data=source, output=tmp_path / "fp32.onnx")
    message = str(caught.value)
    assert "already classifies into 5 labels (great, okay, terrible, good, bad)" in message
    assert "the data has 3 (contradiction, entailment, neutral)" in message
    assert not (tmp_path / "fp32.onnx").exists()


def test_the_same_chain_from_the_command_line(five_star, tmp_path):
    from typer.testing import CliRunner

    from qtool.cli import app

    source = write_csv(tmp_path / "reviews.csv", review_rows(120))
    common = ["--data", source, "--text-columns", "review", "--label-column", "stars"]
    exported = CliRunner().invoke(app, ["export", "--model", str(five_star), "-o", str(tmp_path / "m.onnx"), *common])
    assert exported.exit_code == 0, exported.output
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "m.onnx"), *common, "--limit", "30", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["examples"] == 30 and np.isfinite(json.loads(result.stdout)["accuracy"])


def test_finetune_gives_a_headless_encoder_the_data_labels(tmp_path, embedded_tokenizer):
    from transformers import AutoConfig

    encoder = build_bert_classifier(tmp_path / "encoder", embedded_tokenizer, layers=1, hidden=32, heads=4, head=False)
    data = DataConfig(source=write_csv(tmp_path / "reviews.csv", review_rows(120)), text_columns=("review",),
                      label_column="stars")
    made = qtool.finetune(str(encoder), data=data, max_steps=2, artifacts=tmp_path / "artifacts")
    config = AutoConfig.from_pretrained(made.folder)
    assert config.num_labels == 5 and list(config.id2label.values()) == sorted(STARS)
