"""The architecture, checked: imports run one way (edge -> engine -> dify_io -> core), and
the pure core does no I/O (docs/architecture.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.gateway_process import ROOT

# Higher layers may import lower ones, never the other way round.
LAYERS = ("edge", "engine", "dify_io", "core")
# What a pure module may never import: networking, the clock, the web framework, greenlets.
IO_MODULES = {"flask", "werkzeug", "gevent", "greenlet", "requests", "urllib3", "socket", "time", "ssl", "select",
              "http", "asyncio", "threading", "subprocess"}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_roots(path: Path) -> set[str]:
    """The top-level names of every module `path` imports, at any depth (type-checking blocks too)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", modules("core"), ids=lambda path: str(path.relative_to(ROOT)))
def test_the_core_is_pure(path):
    assert not imported_roots(path) & IO_MODULES


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_run_one_way(layer):
    higher = set(LAYERS[:LAYERS.index(layer)])
    for path in modules(layer):
        assert not imported_roots(path) & higher, f"{path.relative_to(ROOT)} imports a higher layer"


def test_the_checks_see_forbidden_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import time\nfrom gevent.queue import Queue\nfrom engine.answer import Answer\n"
                      "if False:\n    import socket\n")
    assert imported_roots(sample) == {"time", "gevent", "engine", "socket"}


def test_only_the_edge_uses_flask():
    for layer in LAYERS[1:]:
        for path in modules(layer):
            assert "flask" not in imported_roots(path), path.relative_to(ROOT)


def test_blueprints_hold_only_http_handling():
    """The answering blueprints parse, call the engine and render: no Dify I/O, no planning."""
    for name in ("chat", "completions"):
        imported = _imported_modules(ROOT / "edge" / f"{name}.py")
        assert not any(module.startswith(("dify_io", "core.response.pipeline", "core.response.stages",
                                          "core.request.memory_modes", "core.request.files")) for module in imported)


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
