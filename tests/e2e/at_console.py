"""`python -m kmtui` at the stand-in console of tests/origin_tree.py, so that end-to-end tests
of what a policy keeps to the console pass wherever the suite runs, over SSH too.
tests/e2e/test_origin_ssh.py checks the real signals against a real sshd."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from kmtui import cli
    from kmtui.core.control import origin
    from tests.origin_tree import console

    with tempfile.TemporaryDirectory() as tmp:
        origin.ROOTS = console(Path(tmp), os.getpid())
        return cli.main()


if __name__ == "__main__":
    raise SystemExit(main())
