"""The kmtui process: no core dumps, no same-user debugger and no same-user memory reader, from
start to exit (issue 12, item 7). Root may still attach: root is out of scope."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ATTACKER = Path(__file__).with_name("attach_child.py")
YAMA = Path("/proc/sys/kernel/yama/ptrace_scope")


def test_hardening_leaves_the_process_undumpable_with_no_core_limit_to_raise() -> None:
    code = (
        "import ctypes, json, resource; from kmtui import process; process.harden(); "
        "print(json.dumps([ctypes.CDLL(None).prctl(3, 0, 0, 0, 0), "  # PR_GET_DUMPABLE
        "resource.getrlimit(resource.RLIMIT_CORE)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == [0, [0, 0]]


def test_a_running_kmtui_cannot_be_attached_to_or_read_by_another_process_of_its_user(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    os.mkfifo(home / "config" / "config.toml")  # kmtui blocks opening it: it is running
    proc = subprocess.run(
        [sys.executable, str(ATTACKER), str(home)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    plain, hardened = report["plain"], report["kmtui"]
    if plain["ptrace_attach"] != "ok" or plain["mem"] != "ok":
        yama = (
            f"kernel.yama.ptrace_scope={YAMA.read_text().strip()}" if YAMA.exists() else "no Yama"
        )
        pytest.skip(
            f"here a same-user attach is refused even to an unhardened process ({plain}; {yama}; "
            "seccomp or a container may forbid ptrace): the test would prove nothing"
        )
    assert hardened["ptrace_attach"] == "EPERM"
    assert hardened["mem"] == "EACCES"
    assert hardened["environ"] == "EACCES"
    assert hardened["core_limit"] == ["0", "0"]
    if report["uid"] != 0:  # an undumpable process's /proc files belong to root
        assert hardened["status_owner"] == 0 != plain["status_owner"]
