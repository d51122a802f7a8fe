"""The domain core stands without the UI toolkit."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import kmtui.core


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
