"""The layout of docs/architecture.md holds: imports run down the chain, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lc"
FOUNDATION = {"lc.config", "lc.worldcover", "lc.raster", "lc.metrics", "lc.figures"}
CHAIN = ("sentinel2", "synth", "sources", "learning", "tracking", "mapping", "reporting", "cli")
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if ".venv" not in p.parts)


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``lc`` module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lc.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lc":
            found |= {f"{node.module}.{a.name}" if node.module == "lc" else node.module for a in node.names}
    return found


def _stage(module: str) -> int | None:
    """The position of a module's subpackage in the chain; None for the foundation."""
    parts = module.split(".")
    return CHAIN.index(parts[1]) if len(parts) > 1 and parts[1] in CHAIN else None


def test_every_module_belongs_to_the_foundation_or_a_stage():
    strays = [_name(p) for p in _modules() if _name(p) != "lc" and _name(p) not in FOUNDATION and _stage(_name(p)) is None]
    assert not strays, f"modules outside the layout of docs/architecture.md: {strays}"


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_imports_run_down_the_chain(path):
    module, stage = _name(path), _stage(_name(path))
    for imported in _imports(path):
        target = _stage(imported)
        if stage is None:
            assert target is None, f"{module} is foundation but imports the stage module {imported}"
        else:
            assert target is None or target <= stage, f"{module} ({CHAIN[stage]}) imports {imported} from further down"


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{_name(path)} has grown past {MAX_LINES} lines: split it"
