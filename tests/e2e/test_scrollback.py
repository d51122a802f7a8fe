"""Components shown on a real terminal (tmux) leave nothing in its scrollback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import Approvers, make_demo

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
GROUPS = re.compile(r"\b[0-9A-F]{4}(?: [0-9A-F]{4}){7,}\b")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=False).stdout


def test_each_component_is_cleared_from_screen_and_scrollback(tmp_path: Path) -> None:
    home = make_demo(tmp_path / "base")
    approvals = tmp_path / "approvals"
    codes = Approvers(home).codes("alice", "carol")
    approvals.write_text("".join(f"{n} {c}\n" for n, c in codes.items()))
    session = f"kmtui-scrollback-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k not in ("KMTUI_HOME", "SOFTHSM2_CONF")}
    command = (
        f"{sys.executable} -m kmtui --home {home} keys components-create --label zmk "
        f"--custodians alice,bob,carol --approvals-from {approvals}; sleep 30"
    )
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", command],
        check=True,
        env=env,
    )
    try:
        seen: list[str] = []
        for _ in range(3):
            deadline = time.monotonic() + 60
            while "press Enter when only you" not in tmux("capture-pane", "-p", "-t", session):
                assert time.monotonic() < deadline, tmux("capture-pane", "-p", "-t", session)
                time.sleep(0.2)
            tmux("send-keys", "-t", session, "Enter")
            deadline = time.monotonic() + 30
            while not (shown := GROUPS.findall(tmux("capture-pane", "-p", "-t", session))):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            seen.append(shown[0])
            tmux("send-keys", "-t", session, "Enter")
            time.sleep(0.5)
        deadline = time.monotonic() + 60
        while "components-create: done" not in tmux("capture-pane", "-p", "-t", session):
            assert time.monotonic() < deadline, tmux("capture-pane", "-p", "-t", session)
            time.sleep(0.2)
        history = tmux("capture-pane", "-p", "-t", session, "-S", "-")
    finally:
        tmux("kill-session", "-t", session)
    assert len(set(seen)) == 3  # three different components were shown, one at a time
    for component in seen:
        assert component not in history
    assert not GROUPS.findall(history)
