"""Where benchmark results go (issue 11, item 3): an untracked folder unless asked otherwise.

Nothing here runs a benchmark: the command lines are parsed in process and one tiny result
is written, so a quick run can never again rewrite committed reports or delete pictures.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import common

ROOT = Path(__file__).resolve().parent.parent
SUITE_FILES = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name not in ("__init__.py", "common.py"))


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(common.ENV, raising=False)  # also restores whatever a test sets


def test_default_is_untracked_bench_results(no_env):
    assert common.results_dir() == ROOT / "bench-results"
    assert common.result_path("x").parent == ROOT / "bench-results"
    if shutil.which("git") and (ROOT / ".git").exists():
        probe = "bench-results/2core-x-2026-01-01-e2e.json"
        assert subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT).returncode == 0, "bench-results/ must be in .gitignore"
        assert subprocess.run(["git", "check-ignore", "-q", "benchmarks/results/x.json"], cwd=ROOT).returncode == 1


def test_results_option_and_env_are_honoured(no_env, tmp_path, monkeypatch):
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit):  # parsed, then stops at the unknown suite: nothing runs
        main(["--only", "no-such-suite", "--results", str(tmp_path / "mine")])
    assert common.results_dir() == tmp_path / "mine"
    path = common.finish("unit-test", {"x": 1}, "# md\n")
    assert path.parent == tmp_path / "mine" and path.exists() and path.with_suffix(".md").exists()
    monkeypatch.setenv(common.ENV, "relative-dir")
    monkeypatch.chdir(tmp_path)
    assert common.results_dir() == tmp_path / "relative-dir"


def test_committing_is_the_explicit_option(no_env, monkeypatch):
    monkeypatch.chdir(ROOT)
    common.add_results_option(p := __import__("argparse").ArgumentParser())
    p.parse_args(["--results", "benchmarks/results"])
    assert common.results_dir() == common.COMMITTED_RESULTS


@pytest.mark.parametrize("path", SUITE_FILES, ids=lambda p: p.stem)
def test_every_suite_honours_the_results_folder(path):
    """Each suite's command line takes --results, and no suite names a results folder itself."""
    src = path.read_text()
    tree = ast.parse(src)
    if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
        assert "add_results_option(" in src, f"{path.name}: main() must call add_results_option(parser)"
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}  # docstrings may name folders
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in ("RESULTS", "COMMITTED_RESULTS"):
            pytest.fail(f"{path.name}:{node.lineno}: use results_dir() (honours --results), not {node.id}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs and "benchmarks/results" in node.value:
            pytest.fail(f"{path.name}:{node.lineno}: a hard-coded results folder; use results_dir()")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) and node.right.value == "results":
            pytest.fail(f"{path.name}:{node.lineno}: a path to a results folder of its own; use results_dir()")
