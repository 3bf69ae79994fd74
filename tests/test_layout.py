"""The package's wings import one way (issue "The house in wings"): every import of every module,
lazy ones inside functions included, parsed from the source; no cycle between wings, no Lightning or
torchmetrics in the engine and the metrics, and the engine on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_cam"
WINGS = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
TOP_MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))
ALLOWED = {  # wing -> the wings and top-level modules it may import (the README's Layout)
    "engine": set(),
    "metrics": {"engine"},
    "report": set(),
    "writers": {"report"},
    "auditing": {"engine", "metrics", "report", "batches"},
    "monitor": {"engine", "metrics", "auditing", "report", "writers", "batches"},
    "demo": {"monitor"},
}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def room_of(module: str) -> str | None:
    """The wing or top-level module of ``lightning_cam`` that ``module`` names (``None`` for the package itself)."""
    parts = module.split(".")
    if parts[0] != "lightning_cam" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in WINGS or parts[1] in TOP_MODULES else None


def wing_imports(wing: str) -> tuple[set[str], set[str]]:
    """(the other rooms ``wing`` imports, the outside packages it imports) over all its modules."""
    rooms, outside = set(), set()
    for path in (PACKAGE / wing).rglob("*.py"):
        for module in imported_modules(path):
            room = room_of(module)
            if room is not None and room != wing:
                rooms.add(room)
            elif not module.startswith("lightning_cam"):
                outside.add(module.split(".")[0])
    return rooms, outside


def test_the_package_is_laid_out_in_the_wings_the_readme_names() -> None:
    assert set(WINGS) == set(ALLOWED)
    extra = set(TOP_MODULES) - {"__init__", "__main__", "cli"}
    assert len(extra) <= 2, extra
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    for room in [*WINGS, *extra]:
        assert f"{room}/" in layout or f"{room}.py" in layout, room


@pytest.mark.parametrize("wing", sorted(ALLOWED))
def test_each_wing_imports_only_what_its_docstring_allows(wing: str) -> None:
    rooms, _ = wing_imports(wing)
    assert rooms <= ALLOWED[wing], f"{wing} imports {sorted(rooms - ALLOWED[wing])}"


def test_no_cycle_between_wings() -> None:
    edges = {wing: wing_imports(wing)[0] & set(WINGS) for wing in WINGS}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in edges[start]
        )

    assert not [wing for wing in WINGS if reaches(wing, wing, {wing})]


@pytest.mark.parametrize("room", ["engine", "metrics", "batches", "targets"])
def test_no_lightning_or_torchmetrics_where_any_module_is_explained(room: str) -> None:
    paths = list((PACKAGE / room).rglob("*.py")) if room in WINGS else [PACKAGE / f"{room}.py"]
    outside = {module.split(".")[0] for path in paths for module in imported_modules(path)}
    assert not outside & {"lightning", "pytorch_lightning", "torchmetrics"}, room


def test_the_checker_sees_a_lazy_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text(
        "def f():\n    from lightning_cam.monitor.check import run_check\n    import lightning\n"
    )
    assert {room_of(name) for name in imported_modules(module)} >= {"monitor"}
    assert "lightning" in imported_modules(module)
