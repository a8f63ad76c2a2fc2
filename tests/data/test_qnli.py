from __future__ import annotations

import re

import numpy as np
import pytest

from qtool.data import DataConfig, load_qnli, make_batches, tokenize_part
from qtool.data.qnli import read_glue_tsv
from qtool.data.split import question_position
from qtool.errors import QtoolError
from tests.helpers.models import write_glue_tsv


def _questions(rows):
    return {r.text for r in rows}


def test_split_is_deterministic_and_question_grouped(tiny_data):
    first = load_qnli(DataConfig(source=str(tiny_data)))
    second = load_qnli(DataConfig(source=str(tiny_data)))
    assert first.parts == second.parts
    assert first.fingerprint == second.fingerprint
    assert sum(first.sizes.values()) == 240
    assert first.describe()["sizes"] == first.sizes


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_no_first_text_is_in_two_parts_and_the_tuning_part_is_carved_apart(tmp_path, seed):
    write_glue_tsv(tmp_path / "one" / "dev.tsv", rows=600, seed=seed, questions=200)
    one = load_qnli(DataConfig(source=str(tmp_path / "one"), seed=seed))
    write_glue_tsv(tmp_path / "two" / "dev.tsv", rows=300, seed=seed + 1, questions=100)
    write_glue_tsv(tmp_path / "two" / "train.tsv", rows=600, seed=seed + 2, questions=200)
    two = load_qnli(DataConfig(source=str(tmp_path / "two"), seed=seed))
    for split in (one, two):
        assert all(split.parts[p] for p in ("train", "tuning", "calibration", "eval")), split.sizes
        parts = {p: _questions(rows) for p, rows in split.parts.items()}
        for first in parts:
            for second in parts:
                assert first == second or not parts[first] & parts[second], (first, second)
    assert 0.10 < one.sizes["tuning"] / 600 < 0.20 and "train/tuning/calibration/eval=0.5/0.15/0.05/0.3" in one.name
    assert two.sizes["train"] + two.sizes["calibration"] == 600  # the train file keeps every row
    assert two.sizes["tuning"] + two.sizes["eval"] == 300 and "0.2 tuning slice" in two.name


def test_tuning_rows_whose_first_text_was_trained_on_are_left_out(tmp_path):
    write_glue_tsv(tmp_path / "dev.tsv", rows=200, seed=1, questions=60)
    write_glue_tsv(tmp_path / "train.tsv", rows=200, seed=1, questions=60)  # the same questions
    split = load_qnli(DataConfig(source=str(tmp_path)))
    assert split.parts["tuning"] == [] and split.sizes["eval"] > 0


def test_tune_data_rows_are_labelled_by_name_and_never_share_a_first_text(tmp_path):
    """--tune-data: another file's rows, its label names mapped onto the data's (here reversed in a CSV),
    less those whose first text is in train, calibration or eval; what was taken is recorded."""
    from qtool.data import tuning_rows

    write_glue_tsv(tmp_path / "dev.tsv", rows=300, seed=3, questions=100)
    split = load_qnli(DataConfig(source=str(tmp_path / "dev.tsv")))
    held = {row.text for p in ("train", "calibration", "eval") for row in split.parts[p]}
    shared = sorted(held)[:5]
    lines = ["question,sentence,label"] + [f"{q},some sentence {i}.,entailment" for i, q in enumerate(shared)]
    lines += [f"new question {i}?,another sentence {i}.,{('not_entailment', 'entailment')[i % 2]}" for i in range(12)]
    (tmp_path / "tune.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows, taken = tuning_rows(split, str(tmp_path / "tune.csv"))
    assert [r.text for r in rows] == [f"new question {i}?" for i in range(12)]
    assert [split.labels[r.label] for r in rows] == [("not_entailment", "entailment")[i % 2] for i in range(12)]
    assert taken["rows"] == 17 and taken["left_out"] == 5 and "tune.csv" in taken["name"] and taken["fingerprint"]

    (tmp_path / "other.csv").write_text("question,sentence,label\nq?,s.,contradiction\n", encoding="utf-8")
    (tmp_path / "single.csv").write_text("text,label\nhello,entailment\n", encoding="utf-8")
    (tmp_path / "held.csv").write_text("\n".join(lines[:6]) + "\n", encoding="utf-8")
    for name, message in [("other.csv", "label.s. contradiction that --data does not"),
                          ("single.csv", "holds single texts but --data pairs"),
                          ("held.csv", "every row of --tune-data .* shares its first text"),
                          ("missing.tsv", "^--tune-data .*missing.tsv does not exist")]:
        with pytest.raises(QtoolError) as error:
            tuning_rows(split, str(tmp_path / name))
        assert re.search(message, error.value.cli_message), error.value.cli_message
        assert "\n" not in error.value.cli_message


def test_split_changes_with_seed(tiny_data):
    assert (
        load_qnli(DataConfig(source=str(tiny_data), seed=0)).fingerprint
        != load_qnli(DataConfig(source=str(tiny_data), seed=1)).fingerprint
    )


def test_question_position_is_uniform_enough():
    positions = np.array([question_position(f"question {i}", 0) for i in range(5000)])
    assert positions.min() >= 0 and positions.max() < 1
    assert abs(np.mean(positions < 0.65) - 0.65) < 0.03


def test_shared_dev_split_sizes_and_disjointness(shared_qnli):
    split = load_qnli(DataConfig(source=str(shared_qnli)))
    sizes = split.sizes
    assert sum(sizes.values()) == 5463
    assert 0.45 < sizes["train"] / 5463 < 0.55
    assert 0.12 < sizes["tuning"] / 5463 < 0.18
    assert 0.03 < sizes["calibration"] / 5463 < 0.07
    assert 0.25 < sizes["eval"] / 5463 < 0.35
    parts = [_questions(split.parts[p]) for p in ("train", "tuning", "calibration", "eval")]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == 4100
    assert "question-grouped" in split.name


def test_train_and_dev_layout_uses_validation_as_eval(tmp_path):
    write_glue_tsv(tmp_path / "dev.tsv", rows=50, seed=1)
    write_glue_tsv(tmp_path / "train.tsv", rows=400, seed=2)
    split = load_qnli(DataConfig(source=str(tmp_path), train_calibration_fraction=0.1))
    assert split.sizes["eval"] + split.sizes["tuning"] == 50
    assert split.sizes["train"] + split.sizes["calibration"] == 400
    assert not _questions(split.parts["train"]) & _questions(split.parts["calibration"])


@pytest.mark.parametrize(
    "content, message",
    [
        ("index\tquestion\tsentence\tlabel\n0\tq?\ts.\tentailment\n1\tq?\tbroken row\n", "malformed row"),
        ("index\tquestion\tsentence\tlabel\n0\tq?\ts.\tmaybe\n", "unknown label"),
        ("index\tquestion\tlabel\n0\tq?\tentailment\n", "lacks sentence"),
        ("", "is empty"),
    ],
)
def test_bad_tsv_is_a_user_error(tmp_path, content, message):
    (tmp_path / "dev.tsv").write_text(content, encoding="utf-8")
    with pytest.raises(QtoolError, match=message):
        load_qnli(DataConfig(source=str(tmp_path)))


def test_integer_labels_and_a_byte_order_mark_are_read(tmp_path):
    named = "index\tquestion\tsentence\tlabel\n0\tq?\ts.\tentailment\n1\tr?\tt.\tnot_entailment\n"
    (tmp_path / "named.tsv").write_text(named, encoding="utf-8")
    (tmp_path / "numbered.tsv").write_text(
        "\ufeff" + named.replace("\tnot_entailment", "\t1").replace("\tentailment", "\t0"), encoding="utf-8"
    )
    assert read_glue_tsv(tmp_path / "named.tsv") == read_glue_tsv(tmp_path / "numbered.tsv")
    assert [row.label for row in read_glue_tsv(tmp_path / "numbered.tsv")] == [0, 1]


def test_blank_lines_are_skipped(tmp_path):
    rows = "index\tquestion\tsentence\tlabel\n0\tq?\ts.\tentailment\n\n1\tr?\tt.\tnot_entailment\n\n"
    (tmp_path / "blank.tsv").write_text(rows, encoding="utf-8")
    assert [row.label for row in read_glue_tsv(tmp_path / "blank.tsv")] == [0, 1]


def test_missing_dev_tsv(tmp_path):
    with pytest.raises(QtoolError, match="no dev.tsv"):
        load_qnli(DataConfig(source=str(tmp_path)))


def test_eval_batches_are_length_sorted_with_minimal_padding(tiny_data, embedded_tokenizer):
    split = load_qnli(DataConfig(source=str(tiny_data)))
    part = tokenize_part(embedded_tokenizer, split.parts["eval"], max_length=24)
    batches = make_batches(part, 8)
    seen = np.concatenate([b.indices for b in batches])
    assert sorted(seen.tolist()) == list(range(len(part)))
    widths = [b.feeds["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths)
    lengths = part.lengths
    for batch in batches:
        assert batch.feeds["input_ids"].shape[1] == lengths[batch.indices].max() <= 24
        mask = batch.feeds["attention_mask"]
        assert (mask.sum(1) == lengths[batch.indices]).all()
        assert (batch.feeds["input_ids"][mask == 0] == part.pad_token_id).all()
        assert set(batch.feeds) == {"input_ids", "attention_mask", "token_type_ids"}
        assert all(v.dtype == np.int64 for v in batch.feeds.values())


def test_training_batches_are_seeded_and_cover_everything(tiny_data, embedded_tokenizer):
    split = load_qnli(DataConfig(source=str(tiny_data)))
    part = tokenize_part(embedded_tokenizer, split.parts["train"])
    first = [b.indices.tolist() for b in make_batches(part, 8, shuffle_seed=3, bucket_batches=2)]
    again = [b.indices.tolist() for b in make_batches(part, 8, shuffle_seed=3, bucket_batches=2)]
    other = [b.indices.tolist() for b in make_batches(part, 8, shuffle_seed=4, bucket_batches=2)]
    assert first == again and first != other
    assert sorted(i for b in first for i in b) == list(range(len(part)))


def test_atomic_writes_leave_nothing_behind_on_failure(tmp_path):
    import os

    from qtool.fileio import atomic_path

    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole"
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~_current_umask()


def _current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_dev_file_splits_like_its_folder_wherever_it_is_named_from(tmp_path, monkeypatch):
    from qtool.data import DataConfig, load_qnli

    file = write_glue_tsv(tmp_path / "QNLI" / "dev.tsv", rows=120)
    by_folder = load_qnli(DataConfig(source=str(file.parent)))
    monkeypatch.chdir(file.parent)
    for source in (str(file), "dev.tsv"):
        split = load_qnli(DataConfig(source=source))
        assert split.fingerprint == by_folder.fingerprint and split.name == by_folder.name
        assert len(split.part("all")) == 120


def test_without_data_and_without_the_hub_the_error_comes_at_once(monkeypatch):
    import qtool.data.qnli as qnli

    for name in (qnli.DATA_ENV, *qnli.OFFLINE_ENV, *qnli.ROUTED_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(qnli, "hub_reachable", lambda: False)
    with pytest.raises(QtoolError) as caught:
        load_qnli(DataConfig())
    message = caught.value.cli_message
    assert "cannot be reached" in message and "pass --data" in message and "HF_HUB_OFFLINE=1" in message


def test_the_hub_probe_answers_false_for_a_closed_port():
    import socket

    from qtool.data.qnli import hub_reachable

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        assert hub_reachable(("127.0.0.1", port), timeout=1.0) is False


def test_behind_a_proxy_or_a_mirror_the_hub_libraries_are_left_to_try(monkeypatch):
    import qtool.data.qnli as qnli

    monkeypatch.delenv(qnli.DATA_ENV, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setattr(qnli, "hub_reachable", lambda: pytest.fail("probed although a proxy is set"))

    class FakeDatasets:
        @staticmethod
        def load_dataset(*args):
            return {"train": [], "validation": []}

    monkeypatch.setitem(__import__("sys").modules, "datasets", FakeDatasets)
    assert qnli._load_from_hub() == ([], [])
