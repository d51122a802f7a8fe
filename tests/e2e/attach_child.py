"""The same-user attacker of tests/e2e/test_process.py: start a real kmtui and, for comparison,
a plain Python process, then try to attach to each and read its memory and environment.

It first gives up every capability (root in CI holds them, and with CAP_SYS_PTRACE and others
may read any process: root is out of scope), so it is just another process of the same user.
Both targets are its own children, which Yama's ptrace_scope=1 allows. Usage: attach_child.py
HOME; the kmtui target blocks opening HOME's config.toml, a FIFO the test made. Prints one JSON
object.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CAP_SETPCAP = 8
PR_CAPBSET_DROP = 24
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
CAPABILITY_V3 = 0x20080522
LIBC = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_capabilities() -> bool:
    """Hold no capability, now or in the children (bounding set emptied): an ordinary process
    of this user. Root keeps its uid and loses CAP_SYS_PTRACE and the rest."""
    header, data = _CapHeader(CAPABILITY_V3, 0), (_CapData * 2)()
    if LIBC.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    if not any(d.effective or d.permitted or d.inheritable for d in data):
        return False
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in [c for c in range(last + 1) if c != CAP_SETPCAP] + [CAP_SETPCAP]:
        if LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"PR_CAPBSET_DROP {cap}")
    if LIBC.capset(ctypes.byref(header), (_CapData * 2)()) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    return True


def _error(call: Any) -> str:
    try:
        call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def _read(path: str) -> None:
    with open(path, "rb") as fh:
        fh.read(1)


def _attach(pid: int) -> None:
    if LIBC.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    os.waitpid(pid, 0)  # it stops on attach; let it go again
    LIBC.ptrace(PTRACE_DETACH, pid, None, None)


def attempts(pid: int) -> dict[str, Any]:
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    core = next(line for line in limits if line.startswith("Max core file size"))
    return {
        "ptrace_attach": _error(lambda: _attach(pid)),
        "mem": _error(lambda: os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY))),
        "environ": _error(lambda: _read(f"/proc/{pid}/environ")),
        "core_limit": core.split()[4:6],
        "status_owner": os.stat(f"/proc/{pid}/status").st_uid,
    }


def main() -> None:
    home = Path(sys.argv[1])
    fifo = home / "config" / "config.toml"
    dropped = drop_capabilities()
    kmtui = subprocess.Popen(
        [sys.executable, "-m", "kmtui", "--home", str(home), "token", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    plain = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    writer = -1
    try:
        deadline = time.monotonic() + 60
        while writer < 0:  # the FIFO opens for writing once kmtui has it open for reading
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                if kmtui.poll() is not None:
                    raise RuntimeError(f"kmtui exited first: {kmtui.communicate()[1]!r}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError("kmtui never opened its config file") from None
                time.sleep(0.05)
        report = {
            "dropped_capabilities": dropped,
            "uid": os.getuid(),
            "kmtui": attempts(kmtui.pid),
            "plain": attempts(plain.pid),
        }
    finally:
        for child in (kmtui, plain):
            child.kill()
            child.wait()
        if writer >= 0:
            os.close(writer)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
