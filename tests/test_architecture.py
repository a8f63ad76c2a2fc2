"""The shape of the package: layers, module sizes, thin commands, every option still there."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from qtool.cli import app

PACKAGE = Path(__file__).resolve().parent.parent / "qtool"
MAX_MODULE_LINES = 500
MAX_COMMAND_LINES = 40

# Every command and option of the CLI before the layering (commit b13a2cf); options may be added, never lost.
OPTIONS_BEFORE = {
    "": ["--verbose", "--version", "-v"],
    "analyze": ["--batch-size", "--data", "--figures", "--force", "--json", "--no-figures", "--out", "--samples",
                "--seed", "--sigma", "--stats", "--threads", "--top", "-b", "-d", "-o", "ARG:model_path"],
    "bench": ["--batch", "--compare", "--data", "--duration", "--eval", "--inputs", "--isolated", "--iterations",
              "--json", "--limit", "--provider", "--seed", "--seq-len", "--threads", "--warmup", "-d", "ARG:models"],
    "build": ["--backend", "--batch", "--fp16", "--json", "--optimization-level", "--output", "--sequence",
              "--timing-cache", "--workspace-mib", "-o", "ARG:model_path"],
    "calibrate": ["--base-method", "--batch-size", "--data", "--eval", "--groups", "--json", "--keep-fp", "--limit",
                  "--max-drop", "--method", "--mixed-precision", "--no-eval", "--no-permute", "--out",
                  "--outlier-ratio", "--p", "--permute", "--samples", "--scope", "--seed", "--sensitivity-samples",
                  "--smooth", "--stats", "--threads", "--tune-samples", "--weights", "-b", "-d", "-k", "-o",
                  "ARG:model_path"],
    "collect": ["--batch-size", "--bins", "--data", "--force", "--json", "--samples", "--seed", "--stats",
                "--threads", "-b", "-d", "ARG:model_path"],
    "eval": ["--batch-size", "--data", "--json", "--limit", "--part", "--seed", "--threads", "--tokenizer", "-b",
             "-d", "ARG:model_path"],
    "export": ["--artifacts", "--data", "--json", "--model", "--opset", "--output", "--seed", "-d", "-m", "-o"],
    "export-scales": ["--format", "--model", "--output", "--trt-version", "-f", "-m", "-o", "ARG:calibration"],
    "finetune": ["--artifacts", "--batch-size", "--data", "--epochs", "--force", "--json", "--lr", "--max-steps",
                 "--model", "--seed", "--warmup-ratio", "-b", "-d", "-m"],
    "quantize": ["--output", "-o", "ARG:model_path", "ARG:calibration"],
    "reproduce": ["--artifacts", "--config", "--config-file", "--data", "--json", "--limit", "--max-drop", "--model",
                  "--samples", "--seed", "-c", "-d", "-m"],
}


def _options(command) -> set[str]:
    names = {o for p in command.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}
    return names | {f"ARG:{p.name}" for p in command.params if p.param_type_name == "argument"}


def test_every_command_and_option_of_before_still_exists():
    group = typer.main.get_command(app)
    assert set(OPTIONS_BEFORE) - {""} <= set(group.commands)
    assert set(OPTIONS_BEFORE[""]) <= _options(group)
    for name, expected in OPTIONS_BEFORE.items():
        if name:
            missing = set(expected) - _options(group.commands[name])
            assert not missing, f"qtool {name} lost {sorted(missing)}"


def test_no_module_is_over_500_lines():
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long


def test_cli_commands_are_thin():
    tree = ast.parse((PACKAGE / "cli" / "app.py").read_text(encoding="utf-8"))
    commands = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "command" for d in node.decorator_list)
    ]
    assert len(commands) == len(OPTIONS_BEFORE) - 1
    sizes = {node.name: node.end_lineno - node.lineno + 1 for node in commands}
    assert max(sizes.values()) <= MAX_COMMAND_LINES, sizes


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is not installed (pip install -e '.[dev]')")
def test_imports_point_down_the_layers_and_form_no_cycles():
    tool = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    completed = subprocess.run([tool, "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:]
