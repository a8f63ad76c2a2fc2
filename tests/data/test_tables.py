"""Data from where users keep it: files, GLUE task folders and saved datasets, with any labels."""

from __future__ import annotations

import json

import pytest

from qtool.data import DataConfig, load_data
from qtool.errors import QtoolError

WORDS = "red green blue small large quick slow bright dark warm cold soft loud quiet old new".split()
STARS = ("great", "okay", "terrible", "good", "bad")  # not alphabetical


def review_rows(count: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    return [
        {"id": i, "review": " ".join(rng.choices(WORDS, k=rng.randint(2, 9))) + f" {i}", "stars": rng.choice(STARS)}
        for i in range(count)
    ]


def nli_rows(count: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    premises = [" ".join(rng.choices(WORDS, k=6)) + f" p{i}" for i in range(count // 2)]
    labels = ("neutral", "contradiction", "entailment")
    return [
        {"premise": rng.choice(premises), "hypothesis": " ".join(rng.choices(WORDS, k=4)), "label": rng.choice(labels)}
        for _ in range(count)
    ]


def write_csv(path, rows) -> str:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_a_csv_of_single_texts_with_named_columns(tmp_path):
    source = write_csv(tmp_path / "reviews.csv", review_rows(200))
    config = DataConfig(source=source, text_columns=("review",), label_column="stars")
    split = load_data(config)
    assert split.labels == tuple(sorted(STARS)) and not split.pairs and split.task is None
    assert sum(split.sizes.values()) == 200 and load_data(config).fingerprint == split.fingerprint
    texts = {p: {e.text for e in split.parts[p]} for p in ("train", "calibration", "eval")}
    assert not texts["train"] & texts["eval"] and not texts["calibration"] & texts["eval"]
    assert split.describe()["labels"] == sorted(STARS) and split.name.startswith("data:")


def test_jsonl_pairs_parquet_and_a_saved_dataset_read_the_usual_columns(tmp_path):
    rows = nli_rows(150)
    from_jsonl = load_data(DataConfig(source=write_jsonl(tmp_path / "nli.jsonl", rows)))
    assert from_jsonl.pairs and from_jsonl.labels == ("contradiction", "entailment", "neutral")
    import datasets

    dataset = datasets.Dataset.from_list(rows)
    dataset.to_parquet(str(tmp_path / "nli.parquet"))
    from_parquet = load_data(DataConfig(source=str(tmp_path / "nli.parquet")))
    assert from_parquet.parts == from_jsonl.parts and from_parquet.labels == from_jsonl.labels
    labelled = dataset.cast_column("label", datasets.ClassLabel(names=["neutral", "contradiction", "entailment"]))
    datasets.DatasetDict({"train": labelled.select(range(100)), "validation": labelled.select(range(100, 150))}).save_to_disk(
        str(tmp_path / "saved")
    )
    saved = load_data(DataConfig(source=str(tmp_path / "saved")))
    assert saved.labels == ("neutral", "contradiction", "entailment")  # the ClassLabel's order
    assert saved.sizes["eval"] + saved.sizes["tuning"] <= 50 and "tuning slice) as eval" in saved.name
    one = load_data(DataConfig(source=str(tmp_path / "saved"), splits=("validation",)))
    assert sum(one.sizes.values()) == 50


def test_whole_number_labels_are_indices_and_a_glue_folder_tells_its_task(tmp_path):
    rows = [{"text": f"some words {i}", "label": i % 3} for i in range(60)]
    assert load_data(DataConfig(source=write_csv(tmp_path / "n.csv", rows))).labels == ("0", "1", "2")
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"a fine film {i}\t{i % 2}\n" for i in range(40)))
    split = load_data(DataConfig(source=str(folder)))
    assert split.task == "sst2" and split.labels == ("negative", "positive") and not split.pairs


@pytest.mark.parametrize(
    ("content", "options", "message"),
    [
        ("review,stars\nnice,good\n", {"text_columns": ("review",), "label_column": "rating"},
         "no column 'rating' (columns: review, stars); pass --label-column"),
        ("review,stars\nnice,good\n", {}, "no usual text columns among review, stars; name them with --text-columns"),
        ("review,stars\nnice,good\n ,bad\n", {"text_columns": ("review",), "label_column": "stars"},
         "bad.csv:3: empty text in column 'review'; fill or remove that row"),
        ("text,label\nnice,0.5\n", {}, "bad.csv:2: label column 'label' holds the number 0.5; a classifier needs class labels"),
        ("text,label\nnice,1\nfine\t0\n", {}, "bad.csv:3: 1 fields where the header has 2"),
        ("text\tlabel\nnice\t1\n", {}, "the file looks tab-separated, so name it .tsv"),
    ],
)
def test_bad_data_is_one_line_naming_file_line_and_fix(tmp_path, content, options, message):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(QtoolError) as caught:
        load_data(DataConfig(source=str(path), **options))
    assert message in caught.value.cli_message and "\n" not in caught.value.cli_message


def test_an_unknown_label_of_a_task_names_the_task_labels(tmp_path):
    folder = tmp_path / "RTE"
    folder.mkdir()
    (folder / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tmaybe\n")
    with pytest.raises(QtoolError, match=r"unknown label\(s\) maybe; the labels are entailment, not_entailment"):
        load_data(DataConfig(source=str(folder)))


def test_labels_read_from_the_named_class_column_and_as_the_data_gives_them(tmp_path):
    import datasets

    rows = [{"text": f"a question {i}", "coarse": i % 2, "fine": i % 4} for i in range(40)]
    features = datasets.Features({"text": datasets.Value("string"), "coarse": datasets.ClassLabel(names=["no", "yes"]),
                                  "fine": datasets.ClassLabel(names=["a", "b", "c", "d"])})
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "saved"))
    split = load_data(DataConfig(source=tmp_path / "saved", label_column="coarse"))  # a Path is fine
    assert split.labels == ("no", "yes")
    mixed = [{"text": f"t {i}", "label": ("1", "2", "unsure")[i % 3]} for i in range(30)]
    assert load_data(DataConfig(source=write_csv(tmp_path / "m.csv", mixed))).labels == ("1", "2", "unsure")
    assert load_data(DataConfig(source=write_csv(tmp_path / "c.csv", review_rows(40)), text_columns="review",
                                label_column="stars")).labels == tuple(sorted(STARS))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"text": f"t {i}", "label": 1 + i % 5} for i in range(40)], "whole-number labels run 1 .. 5"),
        ([{"text": f"t {i}", "label": -1} for i in range(40)], "marks an unlabelled row"),
        ([{"text": f"t {i}", "label": f"free text {i}"} for i in range(60)], "like a text column"),
    ],
)
def test_labels_that_are_not_classes_are_refused_in_one_line(tmp_path, rows, message):
    with pytest.raises(QtoolError, match=message):
        load_data(DataConfig(source=write_csv(tmp_path / "bad.csv", rows)))


def test_a_headerless_cola_file_with_its_task_and_split_only_for_datasets(tmp_path):
    path = tmp_path / "cola-dev.tsv"
    path.write_text("".join(f"src\t{i % 2}\t\tthe sentence number {i}\n" for i in range(40)))
    split = load_data(DataConfig(source=str(path), task="cola"))
    assert split.labels == ("unacceptable", "acceptable") and split.task == "cola"
    with pytest.raises(QtoolError, match="split names the splits of a datasets dataset"):
        load_data(DataConfig(source=str(path), task="cola", splits=("train",)))


def test_quoted_texts_spanning_lines_keep_their_physical_line_numbers(tmp_path):
    """A text quoted over three lines: the bad row after it is named by the line it is on in an editor."""
    file = tmp_path / "reviews.csv"
    file.write_text('review,label\n"first line\nsecond line\nthird line",good\nfine,bad\nbroken,bad,extra\n')
    with pytest.raises(QtoolError) as raised:
        load_data(DataConfig(source=str(file)))
    assert raised.value.cli_message.startswith(f"{file}:6: 3 fields where the header has 2")


def test_a_tsv_quoted_as_pandas_writes_it_and_a_glue_style_one_with_literal_quotes(tmp_path):
    """pandas' to_csv(sep="\\t") quotes a text holding a tab, a newline or a quote; a GLUE-style TSV keeps quotes
    as text. Both read as their writer meant."""
    import csv
    import random

    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=5)) + f" {i}" for i in range(40)]
    texts[3], texts[7] = 'he said "hi"\tand left', "two\nlines"
    quoted = tmp_path / "quoted.tsv"
    with open(quoted, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["text", "label"])
        writer.writerows([text, "good" if i % 2 else "bad"] for i, text in enumerate(texts))
    rows = load_data(DataConfig(source=str(quoted))).all_rows
    assert [row.text for row in rows] == texts

    literal = tmp_path / "literal.tsv"
    lines = ["text\tlabel"] + [f'{"the " + chr(34) + "best" + chr(34) + " one" if i == 2 else t}\t{"good" if i % 2 else "bad"}'
                               for i, t in enumerate(texts[:3] + texts[8:20])]
    literal.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_data(DataConfig(source=str(literal))).all_rows[2].text == 'the "best" one'


def test_a_tsv_whose_texts_start_or_end_with_quotes_keeps_them(tmp_path):
    """A text that is a whole quotation, or starts with one, is not CSV quoting: nothing is stripped or merged
    (the file is not what csv.writer would write for any rows)."""
    texts = ['"Yes."', '"The Matrix" is great', '"oops', 'next row"'] + [f"plain text {i}" for i in range(20)]
    file = tmp_path / "quotes.tsv"
    file.write_text("text\tlabel\n" + "".join(f"{t}\t{'good' if i % 2 else 'bad'}\n" for i, t in enumerate(texts)))
    assert [row.text for row in load_data(DataConfig(source=str(file))).all_rows] == texts
    glue = tmp_path / "SST-2"
    glue.mkdir()
    lines = ['"he said ""hi"""\t1'] + [f"{t}\t{i % 2}" for i, t in enumerate(texts[4:])]
    (glue / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")
    assert load_data(DataConfig(source=str(glue))).all_rows[0].text == '"he said ""hi"""'  # GLUE's quotes are text
    (tmp_path / "mine.tsv").write_text((glue / "dev.tsv").read_text())
    assert load_data(DataConfig(source=str(tmp_path / "mine.tsv"))).all_rows[0].text == 'he said "hi"'  # csv.writer's
