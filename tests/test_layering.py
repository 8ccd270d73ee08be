"""The stage packages keep their layering: a lower stage never imports a higher one.

Every `import` in the package (module level and inside functions) is checked against LAYERS, the
stages each stage may import (its own package always). `passes/` is installed as `dfq_onnx.passes`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_STAGES = ("core", "backends", "synth", "corrections", "sensitivity", "allocation", "report")
LAYERS: dict[str, set[str]] = {
    "core": set(),
    "backends": {"core"},
    **{s: {"core", "backends"} for s in ("synth", "corrections", "allocation", "report")},
    "sensitivity": {"core", "backends", "corrections"},   # candidates scored with their bias correction
    "models": {"core"},
    "passes": {*_STAGES},
    "pipeline": {*_STAGES, "passes"},
    "api": {*_STAGES, "passes", "pipeline"},
    "commands": {*_STAGES, "passes", "pipeline", "api", "models"},
    "cli": {*_STAGES, "passes", "pipeline", "api", "commands"},
}


def stage_of(module: str) -> str | None:
    """'dfq_onnx.sensitivity.probe' -> 'sensitivity'; 'dfq_onnx' itself (lazy public names) -> None."""
    parts = module.split(".")
    if parts[0] != "dfq_onnx" or len(parts) < 2:
        return None
    return parts[1]


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `source`, relative imports resolved from `module`."""
    out = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] if base == "dfq_onnx" else [base]
            out += [(node.lineno, n) for n in names]
    return out


def violations(source: str, module: str) -> list[str]:
    here = stage_of(module)
    if here is None or here not in LAYERS:
        return [f"{module}: not in a stage package or a known entry point"] if here else []
    bad = []
    for line, target in imported_modules(source, module):
        there = stage_of(target)
        if there is None or there == here:
            continue
        if there not in LAYERS[here]:
            bad.append(f"{module}:{line} imports {target} ({here} may import {sorted(LAYERS[here])})")
    return bad


def package_modules():
    for path in sorted((ROOT / "dfq_onnx").rglob("*.py")):
        rel = path.relative_to(ROOT / "dfq_onnx").with_suffix("")
        yield path, ".".join(("dfq_onnx", *rel.parts)).removesuffix(".__init__")
    for path in sorted((ROOT / "passes").glob("*.py")):
        yield path, f"dfq_onnx.passes.{path.stem}".removesuffix(".__init__")
    for path in sorted((ROOT / "models").glob("*.py")):
        yield path, f"dfq_onnx.models.{path.stem}".removesuffix(".__init__")


def test_every_module_respects_the_layering():
    bad = [v for path, mod in package_modules() for v in violations(path.read_text(), mod)]
    assert not bad, "\n".join(bad)


def test_every_module_lives_in_a_stage_or_is_an_entry_point():
    entry = {"dfq_onnx", "dfq_onnx.api", "dfq_onnx.cli", "dfq_onnx.pipeline"}
    loose = [mod for path, mod in package_modules()
             if mod.count(".") == 1 and mod not in entry and stage_of(mod) not in LAYERS]
    assert not loose, loose


def test_each_stage_says_what_it_owns():
    for stage in (*_STAGES, "commands"):
        doc = ast.get_docstring(ast.parse((ROOT / "dfq_onnx" / stage / "__init__.py").read_text()))
        assert doc and "May import" in doc, stage


@pytest.mark.parametrize("module, source", [
    ("dfq_onnx.core.state", "from dfq_onnx.sensitivity.probe import Evaluator\n"),
    ("dfq_onnx.sensitivity.probe", "def f():\n    from dfq_onnx.passes.emit_qdq import EmitQDQ\n"),
    ("dfq_onnx.synth.runner", "from ..allocation import ilp\n"),
    ("dfq_onnx.backends.qdq", "from dfq_onnx import pipeline\n"),
])
def test_a_wrong_import_is_caught(module, source):
    assert violations(source, module)


def test_allowed_imports_pass():
    assert not violations("from dfq_onnx.core import ir\nfrom . import search\n", "dfq_onnx.synth.runner")
    assert not violations("from ..core.errors import DfqError\n", "dfq_onnx.sensitivity.table")
