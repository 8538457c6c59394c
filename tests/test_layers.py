"""The package's layers: which sub-package may import which (read from the source, not run).

structures (the shared types) imports nothing of instembed; targets only structures; data,
models, losses, cluster and metrics only themselves and the neutral modules below them; the
engine builds on all of those; commands and the CLI sit on top. No command imports the
training loop for a helper.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "instembed"

NEUTRAL = {"structures", "targets"}
ALLOWED = {
    "structures": set(),
    "targets": {"structures"},
    "data": {"data", "structures", "targets"},
    "detection": {"detection", "structures"},
    "models": {"models", "structures", "detection"},
    "losses": {"losses", "structures", "targets", "detection"},
    "cluster": {"cluster", "structures", "detection"},
    "metrics": {"metrics", "structures"},
    "engine": {"engine", "data", "models", "losses", "cluster", "metrics", *NEUTRAL},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[str]:
    """Every ``instembed.*`` module imported anywhere in the file (top level or in functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("instembed.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("instembed."):
                found.append(node.module)
            elif node.module == "instembed":  # sub-modules only (not e.g. __version__)
                found += [
                    f"instembed.{a.name}"
                    for a in node.names
                    if (SRC / a.name).is_dir() or (SRC / f"{a.name}.py").is_file()
                ]
    return found


MODULES = sorted(p for p in SRC.rglob("*.py") if _layer(p) in ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_module_imports_only_its_layer_and_below(path):
    layer = _layer(path)
    bad = [m for m in _imports(path) if m.split(".")[1] not in ALLOWED[layer]]
    assert not bad, f"{path.relative_to(SRC)} ({layer}) imports {bad}"


def test_commands_do_not_import_the_training_loop_for_helpers():
    for path in sorted((SRC / "commands").glob("*.py")):
        if path.stem == "train":
            continue
        assert "instembed.engine.trainer" not in _imports(path), path.name


def test_the_checker_sees_real_violations(tmp_path):
    # the rule above would catch a back-arrow written inside a function
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from instembed.losses.spatial import x\n")
    assert _imports(bad) == ["instembed.losses.spatial"]


def test_no_module_is_over_600_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, long
