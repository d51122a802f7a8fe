"""Where the operator sits: console or SSH, decided from what the user cannot edit.

Four signals, recorded with every event. Each says `remote`, `local`, `user-remote` (this process
belongs to no login of its own while the same user has a remote one open), `none` (the mechanism
is absent here: no utmp file, no logind) or `unknown` (present, but unreadable or malformed):

- ancestry: an sshd among the process's ancestors, from /proc/<pid>/stat (ppid) and the program
  name (exe where it can be read, comm otherwise: only sshd names sshd's processes, and a user's
  own processes can only make themselves look remote, never hide the sshd above them);
- logind: the login session (the kernel's audit session id, or the session scope of the cgroup)
  and its REMOTE flag, from /run/systemd/sessions;
- utmp: the controlling tty's entry in /run/utmp and its host;
- env: SSH_CONNECTION, SSH_CLIENT, SSH_TTY (remote when set; their absence proves nothing).

The decision fails safe: anything remote or unknown means ssh; then positive local evidence (a
local logind session, a local utmp entry for the tty) means console; a process tied to no login
while its user has a remote one open means ssh. With no evidence at all (a container without
utmp or logind) it is console, and the event shows every signal as `none`.

This stops mistakes and `env -u SSH_CONNECTION`, not a determined user of the same account, who
can run kmtui's code changed: the boundary is the OS (README, "Where the operator sits").
"""

from __future__ import annotations

import os
import pwd
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from kmtui.core.safetext import clean

REMOTE, LOCAL, USER_REMOTE, NONE, UNKNOWN = "remote", "local", "user-remote", "none", "unknown"
SSH, CONSOLE = "ssh", "console"
SSHD_NAMES = frozenset({"sshd", "sshd-session", "sshd-auth", "dropbear"})
SSH_VARIABLES = ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY")
UNSET_SESSION = 4294967295  # the audit session id of a process no login started
MAX_ANCESTORS = 256
# glibc's struct utmp on Linux (x86-64 and arm64), 384 bytes: ut_type, ut_pid, ut_line, (ut_id),
# ut_user, ut_host, then exit status, session, time, address and padding.
UTMP = struct.Struct("<h2xi32s4x32s256s52x")
USER_PROCESS = 7
LOCAL_DISPLAY = re.compile(r":\d+(\.\d+)?")  # xterm records a local X display (":0") as host


@dataclass(frozen=True)
class Roots:
    """Where the signals are read; tests point these at a crafted tree."""

    proc: Path = Path("/proc")
    run: Path = Path("/run")

    @property
    def utmp(self) -> Path:
        return self.run / "utmp"

    @property
    def sessions(self) -> Path:
        return self.run / "systemd" / "sessions"


ROOTS = Roots()


@dataclass(frozen=True)
class Signal:
    """One signal's verdict and what it was decided from."""

    name: str
    verdict: str
    detail: str = ""

    def __str__(self) -> str:
        detail = f"({clean(self.detail, 80)})" if self.detail else ""
        return f"{self.name}={self.verdict}{detail}"


@dataclass(frozen=True)
class Origin:
    via: str
    signals: tuple[Signal, ...]

    @property
    def compact(self) -> str:
        """The signals as the audit trail records them, e.g. `ancestry=remote(sshd 812) ...`."""
        return " ".join(map(str, self.signals))


# -- /proc ------------------------------------------------------------------------------------


def _read(path: str) -> bytes:
    """One small kernel or runtime file, read in one call (this runs for every event)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ProcStat:
    comm: str
    ppid: int
    tty_nr: int


def parse_stat(text: str) -> ProcStat:
    """/proc/<pid>/stat; comm may hold spaces and parentheses, so the fields follow the last ')'."""
    head, closing, tail = text.rpartition(")")
    if not closing or "(" not in head:
        raise ValueError("not a /proc/<pid>/stat line")
    fields = tail.split()  # state ppid pgrp session tty_nr ...
    return ProcStat(head.split("(", 1)[1], int(fields[1]), int(fields[4]))


def tty_name(tty_nr: int) -> str:
    """The controlling tty as utmp names it (`pts/3`, `tty1`); "" for none."""
    if tty_nr == 0:
        return ""
    major = (tty_nr >> 8) & 0xFFF
    minor = (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:  # Unix98 pty slaves
        return f"pts/{(major - 136) * 256 + minor}"
    if major == 4:
        return f"tty{minor}" if minor < 64 else f"ttyS{minor - 64}"
    return f"{major}:{minor}"


def _program(roots: Roots, pid: int, comm: str) -> str:
    """The name sshd would show: exe's file name where readable (not for another user's
    process), else comm. Either one naming sshd counts."""
    try:
        exe = os.readlink(f"{roots.proc}/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return comm
    name = exe.rpartition("/")[2]
    return name if name in SSHD_NAMES else comm


def ancestry(roots: Roots, pid: int) -> Signal:
    """An sshd above this process. A chain that ends early (a parent of another user hidden by
    hidepid, or gone) proves nothing either way; one that cannot be read at all is unknown."""
    seen: set[int] = set()
    current = pid
    while current > 0:
        if current in seen or len(seen) >= MAX_ANCESTORS:
            return Signal("ancestry", UNKNOWN, f"loop at {current}")
        seen.add(current)
        try:
            stat = parse_stat(_read(f"{roots.proc}/{current}/stat").decode())
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            if current == pid:
                return Signal("ancestry", UNKNOWN, "own /proc entry unreadable")
            return Signal("ancestry", NONE, f"ends at {current}")
        except (OSError, ValueError, IndexError, UnicodeDecodeError):
            return Signal("ancestry", UNKNOWN, f"bad stat of {current}")
        name = _program(roots, current, stat.comm)
        if name in SSHD_NAMES:
            return Signal("ancestry", REMOTE, f"{name} {current}")
        current = stat.ppid
    return Signal("ancestry", NONE)


# -- logind ------------------------------------------------------------------------------------


def parse_session(text: str) -> dict[str, str]:
    """A logind session record (KEY=VALUE lines); one without REMOTE is not believed."""
    record = {}
    for line in text.splitlines():
        key, equals, value = line.partition("=")
        if equals and not line.startswith("#"):
            record[key.strip()] = value.strip()
    if record.get("REMOTE") not in ("0", "1"):
        raise ValueError("a session record without REMOTE")
    return record


def _session_ids(roots: Roots, pid: int) -> set[str]:
    """The process's session: its audit session id (fixed at log-in, inherited, not settable by
    the user) and the session scope of its cgroup (where logind runs without audit)."""
    ids = set()
    try:
        audit = int(_read(f"{roots.proc}/{pid}/sessionid"))
    except FileNotFoundError:  # a kernel without audit
        audit = UNSET_SESSION
    if audit != UNSET_SESSION:
        ids.add(str(audit))
    try:
        cgroup = _read(f"{roots.proc}/{pid}/cgroup").decode()
    except FileNotFoundError:
        cgroup = ""
    ids.update(re.findall(r"/session-([A-Za-z0-9]+)\.scope\b", cgroup))
    return ids


def _sessions(directory: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Every session logind records (the *.ref FIFOs beside them are never opened)."""
    for entry in sorted(directory.iterdir()):
        if "." not in entry.name and entry.is_file():
            yield entry.name, parse_session(_read(str(entry)).decode())


def _described(ident: str, record: Mapping[str, str]) -> str:
    parts = [ident, record.get("SERVICE", ""), record.get("REMOTE_HOST", "")]
    return " ".join(p for p in parts if p)


def logind(roots: Roots, pid: int, uid: int) -> Signal:
    """The process's logind session and its REMOTE flag; if it has none, the user's others."""
    if not os.path.isdir(roots.sessions):
        return Signal("logind", NONE)
    try:
        ids = _session_ids(roots, pid)
        own = []
        for ident in sorted(ids):
            path = f"{roots.sessions}/{ident}"
            if os.path.isfile(path):
                own.append((ident, parse_session(_read(path).decode())))
        for ident, record in own:
            if record["REMOTE"] == "1":
                return Signal("logind", REMOTE, _described(ident, record))
        if own:
            ident, record = own[0]
            return Signal("logind", LOCAL, _described(ident, record))
        for ident, record in _sessions(roots.sessions):
            if record.get("UID") == str(uid) and record["REMOTE"] == "1":
                return Signal("logind", USER_REMOTE, _described(ident, record))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return Signal("logind", UNKNOWN, type(exc).__name__)
    return Signal("logind", NONE, f"session {' '.join(sorted(ids))} not in logind" if ids else "")


# -- utmp --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UtmpEntry:
    kind: int
    pid: int
    line: str
    user: str
    host: str

    @property
    def remote(self) -> bool:
        return bool(self.host) and not LOCAL_DISPLAY.fullmatch(self.host)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_utmp(data: bytes) -> list[UtmpEntry]:
    """Every record of a utmp file; a file that is not whole records is not believed."""
    if len(data) % UTMP.size:
        raise ValueError(f"utmp is {len(data)} bytes, not whole {UTMP.size}-byte records")
    return [
        UtmpEntry(kind, pid, _text(line), _text(user), _text(host))
        for kind, pid, line, user, host in UTMP.iter_unpack(data)
    ]


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def utmp(roots: Roots, tty: str, uid: int) -> Signal:
    """The controlling tty's log-in and its host; without one, the user's remote log-ins. Only
    records whose process still runs count (a crash leaves stale ones)."""
    try:
        entries = parse_utmp(roots.utmp.read_bytes())
    except FileNotFoundError:
        return Signal("utmp", NONE)
    except (OSError, ValueError) as exc:
        return Signal("utmp", UNKNOWN, type(exc).__name__)
    live = [
        e
        for e in entries
        if e.kind == USER_PROCESS and e.pid > 0 and os.path.exists(f"{roots.proc}/{e.pid}")
    ]
    mine = [e for e in live if tty and e.line == tty]
    for entry in mine:
        if entry.remote:
            return Signal("utmp", REMOTE, f"{tty} {entry.host}")
    if mine:
        return Signal("utmp", LOCAL, tty)
    remote = [e for e in live if e.remote]
    user = _user_name(uid) if remote else ""
    for entry in remote:
        if user and entry.user == user:
            return Signal("utmp", USER_REMOTE, f"{entry.line} {entry.host}")
    return Signal("utmp", NONE, f"no entry for {tty}" if tty else "no tty")


# -- the environment and the decision ----------------------------------------------------------


def environment(environ: Mapping[str, str]) -> Signal:
    present = [name for name in SSH_VARIABLES if environ.get(name)]
    return Signal("env", REMOTE, "+".join(present)) if present else Signal("env", NONE)


def decide(signals: tuple[Signal, ...]) -> str:
    """Fail safe: remote or unreadable -> ssh; local evidence -> console; a process tied to no
    log-in while its user is logged in remotely -> ssh; no evidence at all -> console."""
    verdicts = {s.verdict for s in signals}
    if verdicts & {REMOTE, UNKNOWN}:
        return SSH
    if LOCAL in verdicts:
        return CONSOLE
    return SSH if USER_REMOTE in verdicts else CONSOLE


def detect(
    roots: Roots | None = None,
    *,
    pid: int | None = None,
    uid: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Origin:
    """Read every signal and decide; the defaults are this process, its user and /proc, /run."""
    roots = roots or ROOTS
    pid = os.getpid() if pid is None else pid
    uid = os.getuid() if uid is None else uid
    try:
        stat = parse_stat(_read(f"{roots.proc}/{pid}/stat").decode())
        tty = tty_name(stat.tty_nr)
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        tty = ""  # the ancestry signal reports the unreadable entry as unknown
    signals = (
        ancestry(roots, pid),
        logind(roots, pid, uid),
        utmp(roots, tty, uid),
        environment(os.environ if environ is None else environ),
    )
    return Origin(decide(signals), signals)


def session_context() -> dict[str, str]:
    """SSH or the local console (and the signals that decided it), the tty and the OS user."""
    origin = detect()
    try:
        tty = os.ttyname(0)
    except OSError:
        tty = ""
    return {
        "via": origin.via,
        "tty": tty,
        "user": os.environ.get("USER", ""),
        "signals": origin.compact,
    }
