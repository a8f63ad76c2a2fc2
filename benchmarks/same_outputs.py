"""Show that a change kept qtool's behaviour: the same calibration files and QDQ graphs, byte for byte,
from this working tree and from an earlier revision, and the same accuracies in two study runs.

    python benchmarks/same_outputs.py graphs FP32.onnx --before REV [--after REV] --data ../shared/data/QNLI
    python benchmarks/same_outputs.py results OLD/report/results.json NEW/report/results.json

`graphs` checks out REV (and --after, else it uses this working tree) in a temporary git worktree, copies the FP32 graph and its tokenizer into
one scratch folder per side, and runs `qtool calibrate` there for each recipe (statistics are
collected on each side, so collection is compared too): max-all, peg-k4-all and the
mixed-precision search max-all-mp-auto0.5 by default. It prints one line per file with both sha256
and exits 1 if any differs; for a file that differs it says where (the JSON fields, or whether an
ONNX graph's nodes and weights or only its metadata differ). `results` compares the accuracy of every configuration two
`qtool reproduce` runs share, and exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPES = {
    "max-all": ["--method", "max"],
    "peg-k4-all": ["--method", "peg", "--groups", "4"],
    "max-all-mp-auto0.5": ["--method", "auto", "--max-drop", "0.5"],
}
REPOSITORY = Path(__file__).resolve().parent.parent


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _side(code: Path, fp32: Path, folder: Path, data: str, recipes: list[str]) -> dict[str, str]:
    """Calibrate every recipe with the qtool at `code` in `folder`; sha256 of each file written."""
    folder.mkdir(parents=True)
    shutil.copy2(fp32, folder / fp32.name)
    shutil.copytree(fp32.parent / "tokenizer", folder / "tokenizer")
    env = {**os.environ, "PYTHONPATH": str(code), "QTOOL_PROGRESS": "0"}
    hashes = {}
    for recipe in recipes:
        command = [sys.executable, "-m", "qtool.cli", "calibrate", str(folder / fp32.name), "--data", data]
        subprocess.run([*command, *RECIPES[recipe], "--no-eval", "--json"], env=env, cwd=code, check=True,
                       stdout=subprocess.DEVNULL)
        for suffix in (".calib.json", ".qdq.onnx"):
            hashes[recipe + suffix] = _sha256(folder / f"{recipe}{suffix}")
    return hashes


def _worktree(revision: str, folder: Path) -> Path:
    subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "add", "--detach", str(folder), revision],
                   check=True, capture_output=True)
    return folder


def compare_graphs(fp32: Path, before: str, after: str | None, data: str, recipes: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="qtool-same-") as scratch:
        trees = [_worktree(before, Path(scratch) / "before")]
        try:
            if after is not None:
                trees.append(_worktree(after, Path(scratch) / "after"))
            old = _side(trees[0], fp32, Path(scratch) / "old", data, recipes)
            new = _side(trees[-1] if after else REPOSITORY, fp32, Path(scratch) / "new", data, recipes)
        finally:
            for tree in trees:
                subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "remove", "--force", str(tree)], check=False)
        differ = 0
        for name in old:
            same = old[name] == new[name]
            differ += not same
            print(f"{'same' if same else 'DIFFERENT'}  {name}  {before[:12]} {old[name][:16]}  "
                  f"{(after or 'now')[:12]} {new[name][:16]}")
            if not same:
                print(f"    {_difference(Path(scratch) / 'old' / name, Path(scratch) / 'new' / name)}")
    print(f"{len(old) - differ} of {len(old)} files byte-identical")
    return 1 if differ else 0


def _differing_fields(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        fields = []
        for key in sorted(set(old) | set(new)):
            fields += _differing_fields(old.get(key), new.get(key), f"{prefix}{key}.")
        return fields
    return [] if old == new else [prefix.rstrip(".") or "(the document)"]


def _difference(old: Path, new: Path) -> str:
    """Where two files that are not byte-identical differ: JSON fields, or an ONNX graph's nodes and
    weights apart from its metadata."""
    if old.suffix == ".json":
        return "fields that differ: " + ", ".join(_differing_fields(*(json.loads(p.read_text()) for p in (old, new))))
    import onnx

    models = [onnx.load(str(p)) for p in (old, new)]
    graph_same = models[0].graph.SerializeToString() == models[1].graph.SerializeToString()
    metadata = [{m.key: m.value for m in model.metadata_props} for model in models]
    return (f"nodes and weights {'identical' if graph_same else 'DIFFERENT'}; metadata that differs: "
            + (", ".join(_differing_fields(*metadata)) or "none"))


def compare_results(old_path: Path, new_path: Path) -> int:
    old = {r["configuration"]: r for r in json.loads(old_path.read_text())["results"]}
    new = {r["configuration"]: r for r in json.loads(new_path.read_text())["results"]}
    differ = 0
    for name in [n for n in old if n in new]:
        same = (old[name]["correct"], old[name]["examples"]) == (new[name]["correct"], new[name]["examples"])
        differ += not same
        print(f"{'same' if same else 'DIFFERENT'}  {name}  {old[name]['accuracy']:.4f}  {new[name]['accuracy']:.4f}")
    only = sorted(set(old) ^ set(new))
    print(f"{len(set(old) & set(new)) - differ} of {len(set(old) & set(new))} accuracies equal" +
          (f"; in one run only: {', '.join(only)}" if only else ""))
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    graphs = commands.add_parser("graphs", help="calibration files and QDQ graphs, this tree against --before")
    graphs.add_argument("fp32", type=Path, help="FP32 graph written by `qtool export` (its tokenizer beside it)")
    graphs.add_argument("--before", required=True, help="git revision to compare with")
    graphs.add_argument("--after", help="git revision to compare (default: this working tree)")
    graphs.add_argument("--data", required=True, help="GLUE QNLI folder, as for qtool --data")
    graphs.add_argument("--recipe", action="append", choices=sorted(RECIPES), help="default: all")
    results = commands.add_parser("results", help="accuracies of two results.json files")
    results.add_argument("old", type=Path)
    results.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.command == "graphs":
        data = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
        return compare_graphs(args.fp32.resolve(), args.before, args.after, data, args.recipe or list(RECIPES))
    return compare_results(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
