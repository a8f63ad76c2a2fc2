"""The README's quick starts run as written, on a tiny model and a tiny GLUE folder in their place."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qtool import api as qtool_api
from qtool.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
MODEL, DATA = "./my-classifier", "./data/QNLI"


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Each fenced code block of a Markdown text as (language, body), fences paired in order."""
    blocks, language, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, body = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(body) + "\n"))
                language = None
        elif language is not None:
            body.append(line)
    return blocks


def _blocks(language: str) -> list[str]:
    return [body for lang, body in fenced_blocks(README.read_text()) if lang == language]


def _quick_start(language: str) -> str:
    block = next(b for b in _blocks(language) if MODEL in b)
    assert DATA in block
    return block


def test_readme_is_short_and_links_to_docs_that_exist():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(((?:docs/)?[\w.-]+\.md)\)", text)
    assert links and all((README.parent / link).is_file() for link in links)


def test_readme_cli_quick_start_runs(tmp_path, tiny_classifier, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for line in _quick_start("bash").splitlines():
        words = shlex.split(line, comments=True)
        assert words[0] == "qtool"
        words = [str(tiny_classifier) if w == MODEL else str(tiny_data) if w == DATA else w for w in words[1:]]
        result = runner.invoke(app, words)
        assert result.exit_code == 0, f"{line}\n{result.output}"
    assert (tmp_path / "work" / "percentile-99.99-all.qdq.ort.onnx").is_file()


def test_readme_own_csv_quick_start_runs(tmp_path, embedded_tokenizer, monkeypatch):
    """The three lines for a user's own classifier on their own CSV, on a tiny 5-label classifier."""
    from tests.data.test_tables import STARS, review_rows, write_csv
    from tests.helpers.models import build_bert_classifier

    model = build_bert_classifier(tmp_path / "five", embedded_tokenizer, layers=1, hidden=32, heads=4, labels=STARS)
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "reviews.csv", review_rows(120))
    block = next(b for b in _blocks("bash") if "reviews.csv" in b)
    for line in block.splitlines():
        words = [str(model) if w == MODEL else w for w in shlex.split(line, comments=True)[1:]]
        result = CliRunner().invoke(app, words)
        assert result.exit_code == 0, f"{line}\n{result.output}"
    assert (tmp_path / "mine" / "percentile-99.99-all.qdq.ort.onnx").is_file()


def test_readme_python_quick_start_runs(tmp_path, tiny_classifier, tiny_data, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QTOOL_ARTIFACTS", str(tmp_path / "artifacts"))
    code = _quick_start("python").replace(MODEL, str(tiny_classifier)).replace(DATA, str(tiny_data))
    exec(compile(code, str(README), "exec"), {})
    printed = capsys.readouterr().out.split()
    assert len(printed) == 3 and all(0.0 <= float(value) <= 1.0 for value in printed)


@pytest.mark.parametrize("name", ["finetune", "export", "collect", "analyze", "calibrate", "evaluate", "build",
                                  "bench", "reproduce", "quantize", "register_calibrator"])
def test_the_api_is_importable_from_the_package(name):
    import qtool

    assert callable(getattr(qtool, name))


def _documented_commands() -> list[tuple[str, list[str]]]:
    """Every `qtool ...` line of a code block in the README and docs/, as words."""
    found = []
    for page in [README, *sorted((README.parent / "docs").glob("*.md"))]:
        for block in (b for lang, b in fenced_blocks(page.read_text()) if lang in ("", "bash", "sh", "console")):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line.strip(), comments=True)
                if words[:1] == ["qtool"]:
                    found.append((f"{page.name}: {line.strip()[:60]}", words[1:]))
    return found


@pytest.mark.parametrize("where, words", _documented_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_documented_command_parses(where, words):
    """The command and every option a documented line uses exist (`--help` stops before running)."""
    result = CliRunner().invoke(app, [*words, "--help"])
    assert result.exit_code == 0, f"{where}\n{result.output}"


def test_the_calibration_page_blocks_run_on_a_tiny_model(tmp_path, tiny_onnx, session_data, monkeypatch):
    """docs/calibration.md's blocks as written, with the tiny model as FP32.onnx and its max-all
    calibration as CALIB.json; optional [--flags] left out."""
    import shutil

    from qtool.data import DataConfig, load_qnli
    from qtool.data.batching import padded_feeds
    from qtool.models.families import tokenizer_for
    from qtool.quantization.ort_quantizers import calibration_reader

    shutil.copytree(tiny_onnx.parent, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QTOOL_DATA", str(session_data))
    made = qtool_api.calibrate(tiny_onnx.name, method="max", evaluate=False)
    names = {"FP32.onnx": tiny_onnx.name, "CALIB.json": made.calibration.name}
    blocks = fenced_blocks((README.parent / "docs" / "calibration.md").read_text())
    assert blocks
    for language, block in blocks:
        if language == "python":
            split = load_qnli(DataConfig(source=str(session_data)))
            feeds = padded_feeds(tokenizer_for(tmp_path / tiny_onnx.name), split.part("calibration")[:16], 8, 32)
            code = block.replace('"FP32.onnx"', f'"{tiny_onnx.name}"')
            exec(compile(code, "docs/calibration.md", "exec"), {"reader": calibration_reader(feeds)})
            assert (tmp_path / "ort.qdq.onnx").is_file()
            continue
        for line in block.splitlines():
            words = [names.get(w, w) for w in shlex.split(re.sub(r"\[[^\]]*\]", "", line), comments=True)]
            if words[:1] == ["qtool"]:
                result = CliRunner().invoke(app, [*words[1:], "--limit", "16"] if "calibrate" in words else words[1:])
                assert result.exit_code == 0, f"{line}\n{result.output}"
    assert (tmp_path / "max-all.calib.cache").is_file() and (tmp_path / "max-all.ort-overrides.json").is_file()


def test_the_docs_speak_of_the_product_and_dated_changes_not_of_sessions():
    pages = [README, README.parent / "CHANGELOG.md", *sorted((README.parent / "docs").glob("*.md"))]
    pattern = re.compile(r"\b(this|previous|last|next|(first|second|third|fourth|fifth|sixth|seventh|eighth)) session\b", re.I)
    found = [f"{page.name}: {m.group(0)}" for page in pages for m in pattern.finditer(page.read_text())]
    assert not found


def test_top_level_help_gives_the_order_of_commands_for_your_own_model():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "Your own model, in order: export" in text and "analyze, calibrate, build, bench" in text
