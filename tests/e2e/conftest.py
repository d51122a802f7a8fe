"""Fixtures of the end-to-end tests (real processes; helpers in tests/e2e/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.helpers import make_demo


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo workstation made by the same code `kmtui demo` runs, in a separate process."""
    return make_demo(tmp_path_factory.mktemp("kmtui-home"))
