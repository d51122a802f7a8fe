"""One direction only: the core stands without the UI toolkit, the UI reads through the facade."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import kmtui.core
import kmtui.ui


def test_kmtui_core_imports_no_textual_or_rich() -> None:
    modules = [m.name for m in pkgutil.walk_packages(kmtui.core.__path__, "kmtui.core.")]
    modules.append("kmtui.service")
    assert "kmtui.core.token.session" in modules and "kmtui.core.control.policy" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


UI_MAY_NOT_IMPORT = ("kmtui.core.registry", "kmtui.core.token")
"""The UI reads through the workstation facade: it holds no SQL and never drives the token."""


def imported_by(path: Path, package: str) -> set[str]:
    """Every dotted name a file imports (`from a import b` is a.b), even in functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_kmtui_ui_imports_neither_the_registry_nor_the_token() -> None:
    ui = Path(kmtui.ui.__path__[0])
    files = sorted(ui.rglob("*.py"))
    assert ui / "app.py" in files and ui / "widgets" / "status_line.py" in files
    bad = sorted(
        f"{path.relative_to(ui.parent)}: {name}"
        for path in files
        for name in imported_by(path, ".".join(path.relative_to(ui.parent.parent).parent.parts))
        if any(f"{name}.".startswith(f"{room}.") for room in UI_MAY_NOT_IMPORT)
    )
    assert bad == []
