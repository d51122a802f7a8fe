"""After real work on a demo workstation, no PIN, no PIN half and no TOTP seed is left anywhere
kmtui writes.

A demo workstation is driven through key and operator operations by real `python -m kmtui`
processes (including a wrong PIN half given with --pin-halves-from, a trusted KEK made by the
security officer with the SO halves, a refused approval and an internal error). Then the database,
its -wal and -shm files, the log files (crash.log), every other file kmtui keeps in the home and
the captured stdout and stderr of every command are searched for the token PINs, each half of
them, and every operator seed as base32, as raw bytes, as hex and as base64. The demo's own
stand-ins for the custodians and the operators' phones (demo-pin-halves, demo-so-pin-halves,
demo-operators.json) are the only files allowed to hold them, and the otpauth URI may appear only
in the enrolment's own stdout.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
import pytest

from kmtui.core.control.pin import PinHalves, parse_lines
from kmtui.demo import HALVES_FILE, SO_HALVES_FILE
from tests.e2e.helpers import AT_CONSOLE, Approvers, base_of, demo_seeds, kmtui

DEMO_STAND_INS = (HALVES_FILE, SO_HALVES_FILE, "demo-operators.json")
WRONG_HALF = "wrong-half-5f3a9c"


def forms(seed_b32: str) -> dict[str, bytes]:
    """Every spelling of one TOTP seed worth looking for."""
    raw = base64.b32decode(seed_b32)
    return {
        "base32": seed_b32.encode(),
        "base32 (lower case)": seed_b32.lower().encode(),
        "raw bytes": raw,
        "hex": raw.hex().encode(),
        "hex (upper case)": raw.hex().upper().encode(),
        "base64": base64.b64encode(raw).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(raw).rstrip(b"="),
    }


@dataclass
class Session:
    """A driven demo workstation: its secrets and every command's captured output."""

    home: Path
    secrets: dict[str, bytes] = field(default_factory=dict)  # what -> bytes
    dave: dict[str, bytes] = field(default_factory=dict)  # dave's seed, shown once at enrolment
    uri: str = ""
    runs: list[tuple[str, subprocess.CompletedProcess[str]]] = field(default_factory=list)

    def run(
        self, what: str, *args: str, stdin: str | None = None, home: Path | None = None, **env: str
    ) -> None:
        proc = kmtui(home or self.home, *args, stdin=stdin, env={**AT_CONSOLE, **env})
        self.runs.append((what, proc))

    def found(self, data: bytes, *, dave: bool = True) -> list[str]:
        wanted = {**self.secrets, **(self.dave if dave else {})}
        return [what for what, needle in wanted.items() if needle in data]


@pytest.fixture(scope="module")
def session(demo_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    data = demo_home / "data"
    s = Session(demo_home)
    for what, name in (("token PIN", HALVES_FILE), ("SO PIN", SO_HALVES_FILE)):
        pairs = parse_lines((data / name).read_text(encoding="utf-8"))
        s.secrets[what] = PinHalves.of(pairs).pin().encode()
        for position, (holder, half) in zip(("first", "second"), pairs, strict=True):
            s.secrets[f"the {what}'s {position} half ({holder})"] = half.encode()
    s.secrets["a wrong half typed"] = WRONG_HALF.encode()
    first_pair = parse_lines((data / HALVES_FILE).read_text(encoding="utf-8"))[0]
    for name, seed in demo_seeds(demo_home).items():
        s.secrets.update({f"{name}'s seed as {k}": v for k, v in forms(seed).items()})

    # A reader held open keeps the -wal and -shm files in place (the last connection to close
    # would checkpoint and delete them), so they are scanned with whatever the commands wrote.
    reader = sqlite3.connect(f"file:{data / 'kmtui.db'}?mode=ro", uri=True)
    reader.execute("SELECT count(*) FROM keys").fetchall()

    tmp = tmp_path_factory.mktemp("inputs")
    crew = Approvers(demo_home)

    def approvals(*names: str) -> str:
        return crew.file(tmp, *names)

    s.run("keys list", "keys", "list", "--json")
    s.run("demo codes", "--demo", "demo", "codes", "--json", home=base_of(demo_home))
    create = ("keys", "create", "--label", "scan-dek", "--algorithm", "AES-256", "--json")
    s.run("keys create", *create, "--approvals-from", approvals("alice", "bob"))
    s.run(
        "keys rotate", "keys", "rotate", "scan-dek", "--approvals-from", approvals("bob", "carol")
    )
    s.run("keys check", "keys", "check", "scan-dek")
    wrong = tmp / "wrong-approval.txt"
    wrong.write_text(f"alice {crew.stale('alice')}\nbob {crew.stale('bob')}\n", encoding="utf-8")
    s.run(
        "refused approval", "keys", "schedule-destroy", "scan-dek", "--approvals-from", str(wrong)
    )
    halves_file = tmp / "wrong-half"
    halves_file.write_text(f"{' '.join(first_pair)}\nbob {WRONG_HALF}\n", encoding="utf-8")
    s.run("wrong half", "--pin-halves-from", str(halves_file), "keys", "check", "scan-dek")
    trusted = ("keys", "create", "--label", "scan-kek", "--algorithm", "AES-256", "--trusted")
    s.run(
        "trusted KEK (SO halves)",
        *trusted,
        "--purpose",
        "wrap",
        "--approvals-from",
        approvals("alice", "bob"),
    )
    enroll = ("operators", "enroll", "dave", "--role", "custodian", "--json")
    s.run("operators enroll", *enroll, "--approvals-from", approvals("alice", "carol"))
    s.uri = json.loads(s.runs[-1][1].stdout)["otpauth_uri"]
    dave_seed = pyotp.parse_uri(s.uri).secret
    s.dave = {f"dave's seed as {k}": v for k, v in forms(dave_seed).items()}
    crew.add("dave", dave_seed)
    code = crew.codes("dave")["dave"]
    s.run("operators confirm", "operators", "confirm", "dave", "--code-from", "-", stdin=code)
    s.run("operators list", "operators", "list", "--json")
    s.run("audit export", "audit", "export")
    s.run("audit verify", "audit", "verify")
    # Last, an internal error: a key state kmtui does not know, written behind its back. Its
    # frames go to crash.log in the log dir under --home.
    writer = sqlite3.connect(data / "kmtui.db")
    with writer:
        writer.execute("UPDATE keys SET state = 'no-such-state' WHERE label = 'scan-dek'")
    writer.close()
    s.run("internal error", "keys", "list")
    yield s
    reader.close()


def test_every_command_did_what_the_scan_assumes(session: Session) -> None:
    """The scan means something only if the operations ran (and failed) as planned."""
    codes = {what: proc.returncode for what, proc in session.runs}
    assert codes == {
        "keys list": 0,
        "demo codes": 0,
        "keys create": 0,
        "keys rotate": 0,
        "keys check": 0,
        "refused approval": 1,
        "wrong half": 1,
        "trusted KEK (SO halves)": 0,
        "operators enroll": 0,
        "operators confirm": 0,
        "operators list": 0,
        "audit export": 0,
        "audit verify": 0,
        "internal error": 1,
    }, {what: proc.stderr[-300:] for what, proc in session.runs if proc.returncode}
    assert session.uri.startswith("otpauth://totp/")
    wrong = dict(session.runs)["wrong half"]
    assert "PIN was not accepted" in wrong.stderr
    crashed = dict(session.runs)["internal error"]
    assert "internal error" in crashed.stderr and "Traceback" not in crashed.stderr


def test_the_database_and_its_wal_and_shm_files_hold_no_pin_and_no_seed(session: Session) -> None:
    db = session.home / "data" / "kmtui.db"
    files = [db, db.with_name("kmtui.db-wal"), db.with_name("kmtui.db-shm")]
    assert all(f.is_file() for f in files), [f.name for f in files if not f.is_file()]
    assert b"scan-dek" in files[1].read_bytes()  # the WAL holds the commands' writes
    found = {f.name: session.found(f.read_bytes()) for f in files}
    assert found == {f.name: [] for f in files}


def test_the_log_files_and_crash_log_hold_no_pin_and_no_seed(session: Session) -> None:
    logs = [p for p in (session.home / "log").rglob("*") if p.is_file()]
    assert session.home / "log" / "crash.log" in logs  # the internal error left its frames
    found = {p.name: session.found(p.read_bytes()) for p in logs}
    assert found == {p.name: [] for p in logs}


def test_no_other_file_kmtui_keeps_in_the_home_holds_a_pin_or_a_seed(session: Session) -> None:
    token_store = session.home / "data" / "softhsm"  # SoftHSM2's own files
    files = [
        p
        for p in session.home.rglob("*")
        if p.is_file() and p.name not in DEMO_STAND_INS and not p.is_relative_to(token_store)
    ]
    assert session.home / "config" / "config.toml" in files
    found = {str(p.relative_to(session.home)): session.found(p.read_bytes()) for p in files}
    assert {k: v for k, v in found.items() if v} == {}


def test_no_command_printed_a_pin_or_a_seed(session: Session) -> None:
    found = {}
    for what, proc in session.runs:
        # dave's own seed is in the URI his enrolment shows him, once; nowhere else.
        out = session.found(proc.stdout.encode(), dave=what != "operators enroll")
        err = session.found(proc.stderr.encode())
        if out or err:
            found[what] = {"stdout": out, "stderr": err}
    assert found == {}


def test_the_otpauth_uri_appears_only_in_the_enroll_commands_stdout(session: Session) -> None:
    uri = session.uri.encode()
    places = [
        f"{what} {stream}"
        for what, proc in session.runs
        for stream, text in (("stdout", proc.stdout), ("stderr", proc.stderr))
        if uri in text.encode()
    ]
    places += [
        str(p.relative_to(session.home))
        for p in session.home.rglob("*")
        if p.is_file() and uri in p.read_bytes()
    ]
    assert places == ["operators enroll stdout"]


def test_the_trail_names_who_entered_the_halves_and_never_a_half(session: Session) -> None:
    db = sqlite3.connect(session.home / "data" / "kmtui.db")
    rows = db.execute(
        "SELECT action, outcome, params FROM audit_events WHERE actor IN ('cli', 'alice+bob')"
    ).fetchall()
    db.close()
    logins = [(o, json.loads(p)) for a, o, p in rows if a == "token.login"]
    assert ("failure", ["alice", "bob"]) in [(o, p.get("custodians")) for o, p in logins]
    assert all(p["custodians"] == ["alice", "bob"] for o, p in logins if o == "success")
    made = [json.loads(p) for a, o, p in rows if a == "key.create" and o == "success"]
    assert [p["so_custodians"] for p in made if "so_custodians" in p] == [["carol", "bob"]]
