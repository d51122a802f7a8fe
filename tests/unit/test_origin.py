"""Where the operator sits, from crafted /proc, utmp and logind trees (tests/origin_tree.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kmtui.core.control import origin
from kmtui.core.control.origin import Roots, Signal
from tests.origin_tree import DEAD_PROCESS, USER_PROCESS, Tree, pts, utmp_record, vt

ME = 4242
UID = 1000
NO_ENV: dict[str, str] = {}


def detect(tree: Tree, environ: dict[str, str] | None = None) -> origin.Origin:
    given = NO_ENV if environ is None else environ
    return origin.detect(tree.roots, pid=ME, uid=UID, environ=given)


def verdicts(found: origin.Origin) -> dict[str, str]:
    return {s.name: s.verdict for s in found.signals}


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path).process(1, "systemd", 0, exe="/usr/lib/systemd/systemd")


def over_ssh(tree: Tree, *, exe: str = "/usr/sbin/sshd", comm: str = "sshd") -> Tree:
    """init -> sshd (listener) -> sshd: user@pts/0 -> bash -> kmtui, as OpenSSH 9.2 runs it."""
    return (
        tree.process(700, comm, 1, exe=exe)
        .process(800, comm, 700)  # the user's own sshd: its exe is unreadable to the user
        .process(900, "bash", 800, tty_nr=pts(0), exe="/usr/bin/bash")
        .process(ME, "python3", 900, tty_nr=pts(0), exe="/usr/bin/python3.11")
    )


# -- the parsers, on crafted input -------------------------------------------------------------


def test_stat_fields_are_read_after_the_last_parenthesis_of_the_command_name() -> None:
    line = "4242 (evil) S 1 (x) S 99) R 900 4242 4242 34816 -1 4194560 0 0\n"
    parsed = origin.parse_stat(line)
    assert (parsed.comm, parsed.ppid, parsed.tty_nr) == ("evil) S 1 (x) S 99", 900, 34816)
    with pytest.raises(ValueError):
        origin.parse_stat("no parentheses here")


@pytest.mark.parametrize(
    ("tty_nr", "name"),
    [(0, ""), (pts(0), "pts/0"), (pts(7), "pts/7"), (pts(300), "pts/300"), (vt(1), "tty1")],
)
def test_controlling_tty_numbers_name_the_line_utmp_records(tty_nr: int, name: str) -> None:
    assert origin.tty_name(tty_nr) == name


def test_utmp_records_built_with_struct_parse_back_field_by_field() -> None:
    data = utmp_record(USER_PROCESS, 812, "pts/3", "alice", "203.0.113.9") + utmp_record(
        DEAD_PROCESS, 0, "tty1", "", ""
    )
    first, second = origin.parse_utmp(data)
    assert (first.kind, first.pid, first.line, first.user, first.host) == (
        USER_PROCESS,
        812,
        "pts/3",
        "alice",
        "203.0.113.9",
    )
    assert first.remote and not second.remote
    assert not origin.UtmpEntry(USER_PROCESS, 1, "pts/1", "a", ":0").remote  # local X display
    with pytest.raises(ValueError, match="whole"):
        origin.parse_utmp(data[:-1])


def test_a_logind_record_without_its_remote_flag_is_not_believed() -> None:
    assert origin.parse_session("# private\nUID=0\nREMOTE=1\nREMOTE_HOST=h\n")["REMOTE"] == "1"
    with pytest.raises(ValueError, match="REMOTE"):
        origin.parse_session("UID=0\nTYPE=tty\n")


# -- the attack in the issue: env -u SSH_CONNECTION -u SSH_TTY -u SSH_CLIENT over SSH ---------


def test_ssh_with_its_variables_removed_is_still_ssh_from_the_sshd_ancestor(tree: Tree) -> None:
    found = detect(over_ssh(tree))  # no SSH_* variable at all
    assert found.via == "ssh"
    assert str(found.signals[0]) == "ancestry=remote(sshd 800)"
    assert verdicts(found)["env"] == "none"


@pytest.mark.parametrize(
    ("exe", "comm"),
    [
        ("/usr/sbin/sshd", "sshd"),
        ("/usr/lib/openssh/sshd-session", "sshd-session"),  # OpenSSH 9.8 and later
        ("/usr/sbin/sshd", "renamed"),  # exe decides where comm does not
        ("/usr/sbin/dropbear", "dropbear"),
    ],
)
def test_every_ssh_server_above_the_process_counts(tree: Tree, exe: str, comm: str) -> None:
    assert detect(over_ssh(tree, exe=exe, comm=comm)).via == "ssh"


def test_a_detached_process_is_still_in_its_remote_logind_session(tree: Tree) -> None:
    """setsid and a double fork cut the ancestry; the audit session id stays with the process."""
    tree.process(ME, "python3", 1, sessionid=7).session(
        "7", uid=UID, remote=True, host="203.0.113.9", SERVICE="sshd"
    )
    found = detect(tree)
    assert found.via == "ssh"
    assert verdicts(found) == {
        "ancestry": "none",
        "logind": "remote",
        "utmp": "none",
        "env": "none",
    }
    assert "logind=remote(7 sshd 203.0.113.9)" in found.compact


def test_the_session_scope_of_the_cgroup_finds_the_session_without_audit(tree: Tree) -> None:
    tree.process(ME, "python3", 1, cgroup="/user.slice/user-1000.slice/session-c4.scope")
    tree.session("c4", uid=UID, remote=True, host="h")
    assert verdicts(detect(tree))["logind"] == "remote"


def test_the_controlling_ttys_utmp_host_says_remote(tree: Tree) -> None:
    tree.process(900, "bash", 1).process(ME, "python3", 900, tty_nr=pts(2))
    tree.utmp(utmp_record(USER_PROCESS, 900, "pts/2", "alice", "203.0.113.9"))
    found = detect(tree)
    assert found.via == "ssh"
    assert "utmp=remote(pts/2 203.0.113.9)" in found.compact


def test_a_stale_utmp_record_of_a_dead_login_is_ignored(tree: Tree) -> None:
    tree.process(ME, "python3", 1, tty_nr=pts(2))
    tree.utmp(utmp_record(USER_PROCESS, 31337, "pts/2", "alice", "203.0.113.9"))  # no such pid
    assert detect(tree).via == "console"


def test_the_environment_alone_is_enough_to_say_ssh(tree: Tree) -> None:
    tree.process(ME, "python3", 1)
    found = detect(tree, {"SSH_CONNECTION": "203.0.113.9 5000 10.0.0.1 22"})
    assert (found.via, verdicts(found)["env"]) == ("ssh", "remote")


# -- the console ------------------------------------------------------------------------------


def test_a_virtual_console_login_is_the_console(tree: Tree) -> None:
    tree.process(600, "login", 1).process(ME, "python3", 600, tty_nr=vt(1), sessionid=3)
    tree.session("3", uid=UID, remote=False, TYPE="tty", SEAT="seat0")
    tree.utmp(utmp_record(USER_PROCESS, 600, "tty1", "alice"))
    found = detect(tree)
    assert found.via == "console"
    assert verdicts(found) == {
        "ancestry": "none",
        "logind": "local",
        "utmp": "local",
        "env": "none",
    }


def test_a_process_tied_to_no_login_is_ssh_while_its_user_is_logged_in_remotely(
    tree: Tree,
) -> None:
    """`systemd-run --user --pty kmtui` from an SSH login: no sshd above, no session, a pty
    without a utmp record; the user's remote session gives it away."""
    tree.process(500, "systemd", 1).process(ME, "python3", 500, tty_nr=pts(5))
    tree.session("9", uid=UID, remote=True, host="203.0.113.9")
    tree.session("10", uid=UID + 1, remote=False)
    found = detect(tree)
    assert (found.via, verdicts(found)["logind"]) == ("ssh", "user-remote")


def test_a_remote_login_of_the_same_user_elsewhere_leaves_the_console_at_the_console(
    tree: Tree,
) -> None:
    tree.process(ME, "python3", 1, tty_nr=vt(2), sessionid=3)
    tree.session("3", uid=UID, remote=False).session("9", uid=UID, remote=True, host="h")
    assert detect(tree).via == "console"


def test_utmp_alone_names_a_remote_login_of_the_same_user(tree: Tree) -> None:
    me = origin._user_name(os.getuid())
    tree.process(900, "bash", 1).process(ME, "python3", 1)  # no tty, no logind here
    tree.utmp(utmp_record(USER_PROCESS, 900, "pts/1", me, "203.0.113.9"))
    found = origin.detect(tree.roots, pid=ME, uid=os.getuid(), environ=NO_ENV)
    assert (found.via, verdicts(found)["utmp"]) == ("ssh", "user-remote")


def test_with_no_signal_present_at_all_it_is_the_console_and_says_so(tree: Tree) -> None:
    """A container: no utmp file, no logind, no sshd in sight. Nothing says remote, nothing
    says local; the event records every signal as none."""
    tree.process(ME, "python3", 1)
    found = detect(tree)
    assert found.via == "console"
    assert found.compact == "ancestry=none logind=none utmp=none env=none"


# -- fail safe: what cannot be read does not make a session local ------------------------------


def test_a_process_whose_own_proc_entry_cannot_be_read_is_ssh(tree: Tree) -> None:
    found = detect(tree)  # no /proc/4242 in this tree
    assert (found.via, verdicts(found)["ancestry"]) == ("ssh", "unknown")


def test_a_malformed_utmp_file_is_ssh(tree: Tree) -> None:
    tree.process(ME, "python3", 1)
    (tree.base / "run" / "utmp").write_bytes(b"\0" * 383)
    assert (detect(tree).via, verdicts(detect(tree))["utmp"]) == ("ssh", "unknown")


@pytest.mark.parametrize(
    "record", ["UID=1000\nTYPE=tty\n", "REMOTE=maybe\n", "\udcff".encode(errors="surrogateescape")]
)
def test_a_session_record_that_cannot_be_believed_is_ssh(tree: Tree, record: str | bytes) -> None:
    tree.process(ME, "python3", 1, sessionid=5).logind()
    path = tree.base / "run" / "systemd" / "sessions" / "5"
    path.write_bytes(record if isinstance(record, bytes) else record.encode())
    assert (detect(tree).via, verdicts(detect(tree))["logind"]) == ("ssh", "unknown")


def test_a_garbled_audit_session_id_is_ssh(tree: Tree) -> None:
    tree.process(ME, "python3", 1).logind()
    (tree.base / "proc" / str(ME) / "sessionid").write_text("seven")
    assert detect(tree).via == "ssh"


def test_an_ancestry_that_loops_is_ssh(tree: Tree) -> None:
    tree.process(ME, "python3", 900).process(900, "bash", ME)
    assert verdicts(detect(tree))["ancestry"] == "unknown"


def test_an_ancestry_hidden_by_hidepid_proves_nothing_either_way(tree: Tree) -> None:
    """hidepid hides another user's processes (login, sshd's privileged half): that is no
    evidence of SSH, and the other signals decide."""
    tree.process(ME, "python3", 650, tty_nr=vt(1), sessionid=3).session("3", uid=UID, remote=False)
    found = detect(tree)
    assert (found.via, str(found.signals[0])) == ("console", "ancestry=none(ends at 650)")


def test_logind_fifos_beside_the_records_are_never_opened(tree: Tree) -> None:
    """/run/systemd/sessions/<id>.ref are FIFOs: opening one to read would hang kmtui."""
    tree.process(ME, "python3", 1).logind()
    os.mkfifo(tree.base / "run" / "systemd" / "sessions" / "8.ref")
    result: list[origin.Origin] = []
    worker = threading.Thread(target=lambda: result.append(detect(tree)), daemon=True)
    worker.start()
    worker.join(10)
    assert result and result[0].via == "console"


# -- what the events record --------------------------------------------------------------------


def test_every_event_context_keeps_via_tty_user_and_adds_the_signals(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    over_ssh(tree)
    monkeypatch.setattr(origin, "ROOTS", tree.roots)
    monkeypatch.setattr(os, "getpid", lambda: ME)
    context = origin.session_context()
    assert set(context) == {"via", "tty", "user", "signals"}
    assert context["via"] == "ssh"
    assert context["signals"].startswith("ancestry=remote(sshd 800) ")


def test_signals_render_compactly_and_neutralise_control_characters() -> None:
    shown = str(Signal("utmp", "remote", "pts/1 \x1b[31mevil"))
    assert shown.startswith("utmp=remote(pts/1 ") and "\x1b" not in shown
    assert Roots().utmp == Path("/run/utmp")
