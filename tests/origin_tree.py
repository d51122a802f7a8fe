"""Crafted /proc, /run/utmp and logind trees for kmtui.core.control.origin (its Roots point here).

Also the stand-in console for tests of operations a policy keeps to the console: the suite may
itself run over SSH (a VM reached by ssh), where kmtui rightly refuses them.
tests/e2e/test_origin_ssh.py checks the real signals against a real sshd.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from kmtui.core.control import origin

USER_PROCESS, DEAD_PROCESS = 7, 8


def stat_line(pid: int, comm: str, ppid: int, tty_nr: int = 0) -> str:
    """A /proc/<pid>/stat line as the kernel writes it (the fields kmtui reads, then zeros)."""
    return f"{pid} ({comm}) S {ppid} {pid} {pid} {tty_nr} -1 4194560" + " 0" * 44 + "\n"


def pts(n: int) -> int:
    """The tty_nr of /dev/pts/n (Unix98 pty slave, major 136)."""
    return (136 << 8) | (n & 0xFF) | ((n & ~0xFF) << 12)


def vt(n: int) -> int:
    """The tty_nr of /dev/tty<n> (a virtual console, major 4)."""
    return (4 << 8) | n


def utmp_record(kind: int, pid: int, line: str, user: str, host: str = "") -> bytes:
    """One glibc struct utmp (384 bytes), built field by field."""
    return struct.pack(
        "<hxxi32s4s32s256shhi2i4i20x",
        kind,
        pid,
        line.encode(),
        line[-4:].encode(),
        user.encode(),
        host.encode(),
        0,
        0,
        0,
        1_700_000_000,
        0,
        0,
        0,
        0,
        0,
    )


@dataclass
class Tree:
    """A machine as kmtui's origin signals see it, under one temp dir."""

    base: Path
    processes: dict[int, tuple[str, int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (self.base / "proc").mkdir(parents=True, exist_ok=True)
        (self.base / "run").mkdir(exist_ok=True)

    @property
    def roots(self) -> origin.Roots:
        return origin.Roots(proc=self.base / "proc", run=self.base / "run")

    def process(
        self,
        pid: int,
        comm: str,
        ppid: int,
        *,
        tty_nr: int = 0,
        exe: str = "",
        sessionid: int | None = None,
        cgroup: str = "",
    ) -> Tree:
        where = self.base / "proc" / str(pid)
        where.mkdir(exist_ok=True)
        (where / "stat").write_text(stat_line(pid, comm, ppid, tty_nr))
        if exe:
            (where / "exe").symlink_to(exe)
        if sessionid is not None:
            (where / "sessionid").write_text(str(sessionid))
        if cgroup:
            (where / "cgroup").write_text(f"0::{cgroup}\n")
        return self

    def utmp(self, *records: bytes) -> Tree:
        (self.base / "run" / "utmp").write_bytes(b"".join(records))
        return self

    def session(self, ident: str, *, uid: int, remote: bool, host: str = "", **more: str) -> Tree:
        """A logind session record, as /run/systemd/sessions/<id> holds it (plus its .ref FIFO
        name as a plain file: kmtui must never open those)."""
        directory = self.base / "run" / "systemd" / "sessions"
        directory.mkdir(parents=True, exist_ok=True)
        lines = [
            "# This is private data. Do not parse.",
            f"UID={uid}",
            f"REMOTE={int(remote)}",
            *([f"REMOTE_HOST={host}"] if host else []),
            *(f"{k}={v}" for k, v in more.items()),
        ]
        (directory / ident).write_text("\n".join(lines) + "\n")
        (directory / f"{ident}.ref").write_text("")
        return self

    def logind(self) -> Tree:
        """logind runs here, with no session recorded yet."""
        (self.base / "run" / "systemd" / "sessions").mkdir(parents=True, exist_ok=True)
        return self


def console(base: Path, pid: int) -> origin.Roots:
    """A stand-in console for process `pid`: a child of init, no sshd, no SSH login anywhere."""
    return Tree(base).process(1, "init", 0).process(pid, "python3", 1).roots
