"""Split-knowledge log-in from the command line: real `python -m kmtui` processes, real tokens.

`real` is a demo workstation made real: its marker and its files of PIN halves are taken away,
so nothing logs it in by itself; the test keeps the halves as the two custodians would. `kmtui
init` runs on a workstation whose token was just initialised with an initial user PIN. Prompts
are answered on a real terminal (tmux), as a custodian types them.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kmtui import config, paths
from kmtui.core.control.pin import parse_lines
from kmtui.core.token import softhsm
from kmtui.core.token.session import default_softhsm_module
from kmtui.demo import HALVES_FILE, SO_HALVES_FILE
from tests.e2e.helpers import (
    AT_CONSOLE,
    Approvers,
    Terminal,
    demo_pairs,
    kmtui,
    make_demo,
    terminal_env,
)

Pairs = list[tuple[str, str]]
KEY = "payments-db-dek"
COUNT_LOW = "USER_PIN_COUNT_LOW"
needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


@dataclass(frozen=True)
class Real:
    home: Path
    pairs: Pairs

    def halves_file(self, directory: Path, pairs: Pairs | None = None) -> str:
        path = directory / f"halves-{secrets.token_hex(4)}"
        path.write_text("".join(f"{n} {h}\n" for n, h in pairs or self.pairs), encoding="utf-8")
        return str(path)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Real:
    home = make_demo(tmp_path_factory.mktemp("real"))
    pairs = demo_pairs(home)
    for name in ("demo.json", HALVES_FILE, SO_HALVES_FILE):
        (home / "data" / name).unlink()
    return Real(home, pairs)


def run(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """A command whose stdin is not a terminal (so it can never prompt), at the console."""
    proc = kmtui(home, *args, stdin=stdin, env=AT_CONSOLE)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    return proc


def trail(home: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(home / "data" / "kmtui.db")
    try:
        rows = conn.execute("SELECT seq, action, actor, outcome, params FROM audit_events")
        return [
            {"seq": s, "action": a, "actor": w, "outcome": o, "params": json.loads(p)}
            for s, a, w, o, p in rows
        ]
    finally:
        conn.close()


def registry(home: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(home / "data" / "kmtui.db")
    try:
        names = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not r[0].startswith(("audit_", "sqlite_"))
        ]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in names}
    finally:
        conn.close()


def pin_flags(home: Path) -> list[str]:
    """The token's flags as a new process reads them (`kmtui token info` logs nothing in)."""
    proc = run(home, "token", "info", "--json")
    assert proc.returncode == 0, proc.stderr
    return [f for f in json.loads(proc.stdout)["flags"] if f.startswith("USER_PIN")]


# -- commands that only read -------------------------------------------------------------------


def test_read_only_commands_need_no_halves_and_log_nothing_in(real: Real, tmp_path: Path) -> None:
    pubkey = run(real.home, "--pin-halves-from", real.halves_file(tmp_path), "audit", "pubkey")
    assert pubkey.returncode == 0, pubkey.stderr
    pem = tmp_path / "audit.pem"
    pem.write_text(pubkey.stdout.split("fingerprint:")[0], encoding="ascii")
    copy = tmp_path / "copy.db"
    source = sqlite3.connect(real.home / "data" / "kmtui.db")
    with sqlite3.connect(copy) as target:
        source.backup(target)
    source.close()
    before = trail(real.home)
    commands = [
        ("keys", "list"),
        ("keys", "show", KEY),
        ("keys", "due"),
        ("policies", "list"),
        ("policies", "show", "default"),
        ("operators", "list"),
        ("audit", "export"),
        ("audit", "verify", "--db", str(copy), "--pubkey", str(pem)),
        ("audit", "verify"),
    ]
    results = {" ".join(c[:2]): run(real.home, *c) for c in commands}
    assert {k: p.returncode for k, p in results.items()} == dict.fromkeys(results, 0), {
        k: p.stderr for k, p in results.items() if p.returncode
    }
    assert trail(real.home) == before  # not one log-in, nor anything else
    # Control: a command that does touch the token asks for halves it cannot prompt for here.
    needs = run(real.home, "keys", "check", KEY)
    assert needs.returncode == 2 and "No PIN halves" in needs.stderr
    assert "--pin-halves-from" in needs.stderr
    assert trail(real.home) == before


# -- --pin-halves-from --------------------------------------------------------------------------


def last_login(home: Path) -> dict[str, Any]:
    return [e for e in trail(home) if e["action"] == "token.login"][-1]


def test_halves_from_one_file_from_one_file_each_or_from_stdin(real: Real, tmp_path: Path) -> None:
    (alice, first), (bob, second) = real.pairs
    one_each = [real.halves_file(tmp_path, [pair]) for pair in real.pairs]
    lines = f"# {alice} holds the first half\n{alice} {first}\n{bob} {second}\n"
    ways = {
        "one file": ("--pin-halves-from", real.halves_file(tmp_path)),
        "a file each": ("--pin-halves-from", one_each[0], "--pin-halves-from", one_each[1]),
        "stdin": ("--pin-halves-from", "-"),
    }
    for way, options in ways.items():
        proc = run(real.home, *options, "keys", "check", KEY, stdin=lines)
        assert proc.returncode == 0, (way, proc.stderr)
        login = last_login(real.home)
        assert (login["outcome"], login["params"]["custodians"]) == ("success", [alice, bob])
        assert first not in proc.stderr + proc.stdout and second not in proc.stderr + proc.stdout


def test_halves_and_approvals_cannot_both_come_from_stdin(real: Real) -> None:
    proc = run(
        real.home,
        "--pin-halves-from",
        "-",
        "keys",
        "rotate",
        KEY,
        "--approvals-from",
        "-",
        stdin="alice 12345678\nbob 12345678\n",
    )
    assert proc.returncode == 2 and "Only one of" in proc.stderr


def test_a_wrong_half_is_refused_counted_by_the_token_and_nothing_else_changes(
    real: Real, tmp_path: Path
) -> None:
    (alice, first), (bob, second) = real.pairs
    assert COUNT_LOW not in pin_flags(real.home)
    rows, seq = registry(real.home), trail(real.home)[-1]["seq"]
    wrong = real.halves_file(tmp_path, [(alice, first), (bob, second[::-1])])
    proc = run(real.home, "--pin-halves-from", wrong, "keys", "check", KEY)
    assert proc.returncode == 1
    assert "PIN was not accepted" in proc.stderr and "counted the failure" in proc.stderr
    assert second[::-1] not in proc.stderr
    assert COUNT_LOW in pin_flags(real.home)  # the token's own counter
    new = [e for e in trail(real.home) if e["seq"] > seq]
    assert [(e["action"], e["outcome"]) for e in new] == [("token.login", "failure")]
    assert new[0]["params"]["custodians"] == [alice, bob]
    assert new[0]["params"]["token_flags"] == [COUNT_LOW]
    assert registry(real.home) == rows
    right = run(real.home, "--pin-halves-from", real.halves_file(tmp_path), "keys", "check", KEY)
    assert right.returncode == 0, right.stderr
    assert COUNT_LOW not in pin_flags(real.home)  # cleared by the good log-in


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda p: [p[0], (p[0][0].upper(), p[1][1])], "two different custodians"),
        (lambda p: [p[0], (p[1][0], "")], "not `NAME HALF`"),
        (lambda p: [p[0], (p[1][0], p[1][1][:7])], "at least 8"),
        (lambda p: [p[0]], "1 PIN halves were given"),
        (lambda p: [*p, ("carol", "third-half")], "3 PIN halves were given"),
    ],
    ids=["same person twice", "empty half", "short half", "one half", "three halves"],
)
def test_bad_halves_are_refused_before_the_token_is_asked(
    real: Real, tmp_path: Path, change: Any, words: str
) -> None:
    before = trail(real.home)
    halves = real.halves_file(tmp_path, change(real.pairs))
    proc = run(real.home, "--pin-halves-from", halves, "keys", "check", KEY)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert all(half not in proc.stderr for _, half in real.pairs)
    assert trail(real.home) == before
    assert COUNT_LOW not in pin_flags(real.home)  # the token was never asked


@needs_tmux
def test_prompted_halves_are_typed_hidden_on_a_terminal(real: Real) -> None:
    (alice, first), (bob, second) = real.pairs
    command = [sys.executable, "-m", "kmtui", "--home", str(real.home), "keys", "check", KEY]
    term = Terminal("halves", command, terminal_env())
    try:
        term.wait_for("First half, holder's name:")
        term.type(alice)
        term.wait_for(f"{alice}: your first half (hidden):")
        term.type(first)
        term.wait_for("Second half, holder's name:")
        term.type(bob)
        term.wait_for(f"{bob}: your second half (hidden):")
        term.type(second)
        assert term.exit_code() == 0
        shown = term.screen()
    finally:
        term.close()
    assert "check: done" in shown
    assert first not in shown and second not in shown
    login = last_login(real.home)
    assert (login["outcome"], login["params"]["custodians"]) == ("success", [alice, bob])


def test_with_protected_path_configured_no_halves_are_read(real: Real, tmp_path: Path) -> None:
    home = tmp_path / "pad"
    p = paths.under(home).ensure()
    token = config.load(real.home / "config" / "config.toml").token
    text = (real.home / "config" / "config.toml").read_text(encoding="utf-8")
    p.config_file.write_text(
        text.replace("[token]\n", '[token]\nlogin = "protected-path"\n'), encoding="utf-8"
    )
    assert config.load(p.config_file).token.login == "protected-path" and token.login == "split"
    shutil.copy(real.home / "data" / "kmtui.db", p.database)
    given = run(home, "--pin-halves-from", real.halves_file(tmp_path), "keys", "check", KEY)
    assert given.returncode == 2 and "is not used here" in given.stderr
    pad = run(home, "keys", "check", KEY)
    assert pad.returncode == 1, pad.stderr
    assert "authenticate at the token" in pad.stderr
    assert "no protected authentication path" in pad.stderr  # SoftHSM has none: said plainly
    assert last_login(home)["params"]["login"] == "protected-path"


# -- the SO halves ---------------------------------------------------------------------------------


def test_a_trusted_kek_needs_both_so_halves(demo_home: Path, tmp_path: Path) -> None:
    approvers = Approvers(demo_home)
    so_file = demo_home / "data" / SO_HALVES_FILE
    (carol, so_first), (bob, so_second) = parse_lines(so_file.read_text(encoding="utf-8"))
    wrong = tmp_path / "so-wrong"
    wrong.write_text(f"{carol} {so_first}\n{bob} wrong-{so_second}\n", encoding="utf-8")
    right = tmp_path / "so-right"
    right.write_text(f"{carol} {so_first}\n{bob} {so_second}\n", encoding="utf-8")
    create = ("keys", "create", "--algorithm", "AES-256", "--purpose", "wrap", "--trusted")
    refused = run(
        demo_home,
        *create,
        "--label",
        "so-kek-wrong",
        "--so-pin-halves-from",
        str(wrong),
        "--approvals-from",
        approvers.file(tmp_path, "alice", "bob"),
    )
    assert refused.returncode == 1 and "Check the SO PIN halves" in refused.stderr
    assert run(demo_home, "keys", "show", "so-kek-wrong").returncode == 2  # nothing registered
    made = run(
        demo_home,
        *create,
        "--label",
        "so-kek",
        "--so-pin-halves-from",
        str(right),
        "--approvals-from",
        approvers.file(tmp_path, "alice", "bob"),
    )
    assert made.returncode == 0, made.stderr
    event = [e for e in trail(demo_home) if e["action"] == "key.create"][-1]
    assert (event["outcome"], event["params"]["so_custodians"]) == ("success", [carol, bob])


# -- kmtui init ------------------------------------------------------------------------------------

_PROBE = r"""
import json, sys
import pkcs11
req = json.loads(sys.stdin.read())
token = pkcs11.lib(req["module"]).get_token(token_label=req["label"])
for pin in req["pins"]:
    try:
        with token.open(user_pin=pin):
            print("accepted")
    except pkcs11.exceptions.PinIncorrect:
        print("refused")
"""


@dataclass(frozen=True)
class Blank:
    """A workstation whose token was just initialised (user PIN `initial`): no operators yet."""

    home: Path
    initial: str
    conf: Path

    def accepts(self, *pins: str) -> list[bool]:
        """Which PINs the token accepts, asked by a process of its own (the PINs on stdin)."""
        request = {"module": default_softhsm_module(), "label": "ceremony-01", "pins": pins}
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env={**terminal_env(), "SOFTHSM2_CONF": str(self.conf)},
            timeout=60,
            check=True,
        )
        return [line == "accepted" for line in proc.stdout.split()]

    def terminal(self, *args: str) -> Terminal:
        command = [sys.executable, "-m", "kmtui", "--home", str(self.home), "init", *args]
        return Terminal("init", command, terminal_env())


@pytest.fixture
def blank(tmp_path: Path) -> Iterator[Blank]:
    p = paths.under(tmp_path / "home").ensure()
    conf = softhsm.write_conf(p.data_dir / "softhsm")
    initial = "initial-" + secrets.token_hex(4)
    module = default_softhsm_module()
    softhsm.init_token(module, conf, "ceremony-01", secrets.token_hex(8), initial)
    config.write(
        p.config_file,
        config.TokenConfig(module=module, label="ceremony-01", softhsm2_conf=str(conf)),
    )
    assert p.home is not None
    yield Blank(p.home, initial, conf)


def start_init(blank: Blank) -> Terminal:
    term = blank.terminal()
    term.wait_for("is set now from two halves")
    term.wait_for("initial user PIN (from its initialisation):")
    term.type(blank.initial)
    return term


def choose(term: Terminal, position: str, name: str, half: str, again: str | None = None) -> None:
    term.wait_for(f"{position.capitalize()} half, holder's name:")
    term.type(name)
    term.wait_for(f"{name}: choose your {position} half (hidden):")
    term.type(half)
    if again is not None:
        term.wait_for(f"{name}: type your {position} half again:")
        term.type(again)


def token_events(home: Path) -> list[tuple[str, str]]:
    path = home / "data" / "kmtui.db"
    if not path.exists():
        return []
    return [(e["action"], e["outcome"]) for e in trail(home) if e["action"].startswith("token.")]


@needs_tmux
def test_init_sets_the_pin_from_two_confirmed_halves_then_logs_in_with_them(blank: Blank) -> None:
    term = start_init(blank)
    try:
        choose(term, "first", "alice", "alice-half-1", "alice-half-1")
        choose(term, "second", "bob", "bob-half-22", "bob-half-22")
        term.wait_for("Operator name:")  # logged in with the halves, enrolment begins
        term.interrupt()
        assert term.exit_code() == 130
        shown = term.screen()
    finally:
        term.close()
    assert "alice holds the first half, bob the second" in shown
    assert "alice-half-1" not in shown and "bob-half-22" not in shown and blank.initial not in shown
    assert blank.accepts(blank.initial, "alice-half-1bob-half-22") == [False, True]
    events = [e for e in trail(blank.home) if e["action"].startswith("token.")]
    assert [(e["action"], e["outcome"]) for e in events][:2] == [
        ("token.set-pin", "success"),
        ("token.login", "success"),
    ]
    assert (
        events[0]["params"]["custodians"] == events[1]["params"]["custodians"] == ["alice", "bob"]
    )
    assert events[0]["actor"] == "init"
    later = run(  # the next command: the two custodians' halves, as scripts give them
        blank.home,
        "--pin-halves-from",
        "-",
        "audit",
        "pubkey",
        stdin="alice alice-half-1\nbob bob-half-22\n",
    )
    assert later.returncode == 0, later.stderr


@needs_tmux
@pytest.mark.parametrize(
    ("second", "words"),
    [
        (("bob", "bob-half-22", "bob-half-23"), "bob's two entries of the second half differ"),
        (("ALICE", "bob-half-22", "bob-half-22"), "two different custodians"),
        (("bob", "alice-half-1", "alice-half-1"), "The two halves are the same"),
        (("bob", "short", None), "The second half (bob) is 5 characters"),
    ],
    ids=["mismatched confirmation", "same person twice", "equal halves", "short half"],
)
def test_init_refuses_bad_halves_and_changes_nothing(
    blank: Blank, second: tuple[str, str, str | None], words: str
) -> None:
    term = start_init(blank)
    try:
        choose(term, "first", "alice", "alice-half-1", "alice-half-1")
        choose(term, "second", *second)
        assert term.exit_code() == 2
        shown = term.screen()
    finally:
        term.close()
    assert words in shown
    assert "Nothing was" in shown
    assert blank.accepts(blank.initial) == [True]  # the PIN the token was initialised with
    assert token_events(blank.home) == []
