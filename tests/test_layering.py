"""The dependency direction between the project's packages, checked on the source (AST), so it cannot rot.

    pipeline.common            imports nothing else from the project (the bottom layer)
    splat                      pipeline.common
    panst3r                    pipeline.common
    uplift                     pipeline.common, splat (it rasterises Gaussians)
    pipeline (the rest)        anything: it orchestrates

Every import counts: module level, inside functions, relative ones (resolved against the file's package), and
dynamic ones written as a literal (`importlib.import_module("x.y")`, or a string constant naming a project
module, as in a lazy-import table). Nothing in the layered packages may import `tests` or `bench` either.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("pipeline", "splat", "uplift", "panst3r", "tests", "bench")  # top-level names that are ours

# layer -> the project layers it may import (its own layer is always allowed)
ALLOWED: dict[str, set[str]] = {
    "pipeline.common": set(),
    "splat": {"pipeline.common"},
    "panst3r": {"pipeline.common"},
    "uplift": {"pipeline.common", "splat"},
}
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def layer_of(module: str) -> str:
    """The layer a dotted module name belongs to: 'pipeline.common', 'splat', ..., or 'pipeline' for the rest."""
    if module == "pipeline.common" or module.startswith("pipeline.common."):
        return "pipeline.common"
    return module.split(".")[0]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str, root: Path) -> bool:
    p = root.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, dotted target) of every project import in `path`; `from a import b` yields 'a.b'."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level - 1 > len(base) - 1:
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found += [(node.lineno, mod if a.name == "*" else f"{mod}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and _DOTTED.fullmatch(node.value) and node.value.split(".")[0] in PROJECT \
                and _is_module(node.value, root):
            found.append((node.lineno, node.value))  # a lazy import table entry, e.g. ("panst3r.model", "X")
    return sorted((line, t) for line, t in set(found) if t.split(".")[0] in PROJECT)


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for layer, allowed in ALLOWED.items():
        for path in sorted(root.joinpath(*layer.split(".")).rglob("*.py")):
            for line, target in imports_of(path, root):
                dep = layer_of(target)
                if dep != layer and dep not in allowed:
                    rel = path.relative_to(root)
                    out.append(f"{rel}:{line}: {layer} imports {target} (allowed: {sorted(allowed) or 'nothing'})")
    return out


def test_layers_import_only_downwards():
    bad = violations()
    assert not bad, "layering violated (see tests/test_layering.py for the allowed matrix):\n" + "\n".join(bad)


def test_every_layer_has_sources():
    """A renamed or moved package must not make the check above pass vacuously."""
    for layer in ALLOWED:
        files = list(ROOT.joinpath(*layer.split(".")).rglob("*.py"))
        assert len(files) >= 3, f"{layer}: {len(files)} source files found under {ROOT}"
    assert any(imports_of(p) for p in ROOT.joinpath("uplift").rglob("*.py"))  # the scan sees real imports


@pytest.mark.parametrize("src,want", [
    ("from pipeline.scene import Scene\n", ["pipeline.scene.Scene"]),
    ("def f():\n    from pipeline import config\n", ["pipeline.config"]),
    ("from ... import splat\n", None),  # beyond the top level: an error, checked below
    ("from .. import run\n", ["pipeline.run"]),
    ("from . import io\n", ["pipeline.common.io"]),
    ("import importlib\nimportlib.import_module('uplift.ludvig')\n", ["uplift.ludvig"]),
    ("X = {'a': ('panst3r.model', 'PanSt3R')}\n", ["panst3r.model"]),
    ('"""Uses pipeline.scene only in prose."""\nimport numpy\n', []),
])
def test_scanner_sees_every_import_form(tmp_path, src, want):
    """The scanner on a planted file in a copy of the layout: function-level, relative and dynamic imports."""
    for pkg in ("pipeline", "pipeline/common", "uplift", "panst3r/model"):
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "uplift" / "ludvig.py").write_text("")
    f = tmp_path / "pipeline" / "common" / "planted.py"
    f.write_text(src)
    if want is None:
        with pytest.raises(AssertionError, match="planted.py:1: relative import beyond"):
            imports_of(f, tmp_path)
        return
    assert [t for _, t in imports_of(f, tmp_path)] == want


def test_planted_violation_is_reported_with_file_and_line(tmp_path):
    (tmp_path / "splat").mkdir()
    (tmp_path / "splat" / "__init__.py").write_text("from pipeline.common.io import InputError\n")
    (tmp_path / "splat" / "train.py").write_text(
        "import torch\n\n\ndef f(scene):\n    from pipeline.scene import Scene\n")
    (tmp_path / "pipeline" / "common").mkdir(parents=True)
    (tmp_path / "pipeline" / "common" / "io.py").write_text("import splat\n")
    assert violations(tmp_path) == [
        "pipeline/common/io.py:1: pipeline.common imports splat (allowed: nothing)",
        "splat/train.py:5: splat imports pipeline.scene.Scene (allowed: ['pipeline.common'])",
    ]
