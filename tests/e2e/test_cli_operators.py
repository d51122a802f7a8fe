"""The people who approve, through real `python -m kmtui` processes on a demo workstation.

The demo ships alice and bob (custodians) and carol (officer); this file enrols dave, confirms him
with a code computed from his otpauth URI, and locks and unlocks him with two other operators.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest

from tests.e2e.helpers import (
    AT_CONSOLE,
    STEP,
    Approvers,
    base_of,
    code_at,
    demo_seeds,
    kmtui,
)

pytestmark = pytest.mark.slow  # a demo workstation of its own, ~10 operator steps of approvals


def run(
    home: Path, *args: str, code: int = 0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """One command at the console; its exit code, and never a traceback or an internal error."""
    proc = kmtui(home, *args, stdin=stdin, env=AT_CONSOLE)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}: {proc.stderr}"
    return proc


def operators(home: Path) -> dict[str, dict[str, Any]]:
    listing = json.loads(run(home, "operators", "list", "--json").stdout)
    return {o["operator"]: o for o in listing}


def current_codes(seed: str, before: float, after: float) -> set[str]:
    """The codes an authenticator showed at some moment between `before` and `after`."""
    return {code_at(seed, int(t // STEP)) for t in (before, after)}


@pytest.fixture(scope="module")
def approvers(demo_home: Path) -> Iterator[Approvers]:
    crew = Approvers(demo_home)
    yield crew
    print(f"\nwaited {crew.waited:.1f} s for new TOTP steps")  # shown with -s


@dataclass(frozen=True)
class Enrolled:
    proc: subprocess.CompletedProcess[str]
    data: dict[str, Any]
    listed: dict[str, Any]  # dave in `operators list --json` right after the enrolment


@pytest.fixture(scope="module")
def enrolled(
    demo_home: Path, approvers: Approvers, tmp_path_factory: pytest.TempPathFactory
) -> Enrolled:
    approvals = approvers.file(tmp_path_factory.mktemp("approvals"), "alice", "bob")
    proc = run(
        demo_home,
        "operators",
        "enroll",
        "dave",
        "--role",
        "custodian",
        "--json",
        "--approvals-from",
        approvals,
    )
    return Enrolled(proc, json.loads(proc.stdout), operators(demo_home)["dave"])


@pytest.fixture(scope="module")
def confirmed(
    demo_home: Path, approvers: Approvers, enrolled: Enrolled
) -> subprocess.CompletedProcess[str]:
    """dave proves his authenticator: one code computed from the URI he was shown."""
    totp = pyotp.parse_uri(enrolled.data["otpauth_uri"])
    assert isinstance(totp, pyotp.TOTP)
    assert (totp.digits, totp.interval, totp.digest().name) == (6, STEP, "sha1")
    approvers.add("dave", totp.secret)
    code = approvers.codes("dave")["dave"]
    return run(demo_home, "operators", "confirm", "dave", "--code-from", "-", stdin=code + "\n")


def test_operators_list_json_shows_the_demo_operators(demo_home: Path) -> None:
    listed = operators(demo_home)
    assert {"alice", "bob", "carol"} <= listed.keys()
    expected = {"alice": "custodian", "bob": "custodian", "carol": "officer"}
    for name, role in expected.items():
        entry = listed[name]
        assert entry.keys() >= {"operator", "role", "state", "enrolled_at", "failures"}
        assert (entry["role"], entry["state"], entry["failures"]) == (role, "active", 0)
        assert entry["enrolled_at"]


def test_enroll_json_prints_the_otpauth_uri_and_the_operator_is_pending(
    enrolled: Enrolled,
) -> None:
    data = enrolled.data
    assert (data["operator"], data["role"], data["state"]) == ("dave", "custodian", "pending")
    uri = urlparse(data["otpauth_uri"])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert uri.path in ("/kmtui:dave", "/kmtui%3Adave")
    query = parse_qs(uri.query)
    assert query["issuer"] == ["kmtui"]
    assert len(query["secret"][0]) == 32  # 160 bits in base32
    assert (enrolled.listed["state"], enrolled.listed["role"]) == ("pending", "custodian")


def test_confirm_with_a_code_from_the_uri_makes_the_operator_active(
    demo_home: Path, confirmed: subprocess.CompletedProcess[str]
) -> None:
    assert "operator dave is active" in confirmed.stdout
    assert operators(demo_home)["dave"]["state"] == "active"


def test_lock_and_unlock_need_two_other_operators_and_the_subject_is_refused(
    demo_home: Path,
    approvers: Approvers,
    confirmed: subprocess.CompletedProcess[str],
    tmp_path: Path,
) -> None:
    by_self = tmp_path / "self.txt"
    by_self.write_text(
        f"dave {approvers.stale('dave')}\nalice {approvers.stale('alice')}\n", encoding="utf-8"
    )
    refused = run(demo_home, "operators", "lock", "dave", "--approvals-from", str(by_self), code=1)
    assert "dave (may not approve this operation)" in refused.stderr
    assert operators(demo_home)["dave"]["state"] == "active"

    locked = run(
        demo_home,
        "operators",
        "lock",
        "dave",
        "--json",
        "--approvals-from",
        approvers.file(tmp_path, "alice", "carol"),
    )
    assert json.loads(locked.stdout)["state"] == "locked"
    assert operators(demo_home)["dave"]["state"] == "locked"

    by_self.write_text(
        f"dave {approvers.stale('dave')}\nbob {approvers.stale('bob')}\n", encoding="utf-8"
    )
    refused = run(
        demo_home, "operators", "unlock", "dave", "--approvals-from", str(by_self), code=1
    )
    assert "dave (may not approve this operation)" in refused.stderr
    assert operators(demo_home)["dave"]["state"] == "locked"

    unlocked = run(
        demo_home,
        "operators",
        "unlock",
        "dave",
        "--json",
        "--approvals-from",
        approvers.file(tmp_path, "bob", "carol"),
    )
    assert json.loads(unlocked.stdout)["state"] == "active"
    assert operators(demo_home)["dave"]["state"] == "active"


def test_demo_codes_is_refused_outside_a_demo_home_with_exit_2(tmp_path: Path) -> None:
    for args in (("demo", "codes"), ("demo", "codes", "--json"), ("--demo", "demo", "codes")):
        proc = run(tmp_path, *args, code=2)
        assert proc.stdout == ""
        assert "demo" in proc.stderr.lower()
    assert not (tmp_path / "data" / "demo").exists()  # asking made no demo either


def test_demo_codes_text_is_loudly_labelled_demo(demo_home: Path) -> None:
    seeds = demo_seeds(demo_home)
    before = time.time()
    proc = run(base_of(demo_home), "--demo", "demo", "codes")
    after = time.time()
    first, *rows = proc.stdout.splitlines()
    assert first.startswith("DEMO ONLY")
    assert len(rows) == len(seeds)
    for row in rows:
        name, _role, code = row.split()
        assert code in current_codes(seeds[name], before, after)


def test_demo_codes_json_gives_each_demo_operator_their_current_code(demo_home: Path) -> None:
    seeds = demo_seeds(demo_home)
    before = time.time()
    listing = json.loads(run(base_of(demo_home), "--demo", "demo", "codes", "--json").stdout)
    after = time.time()
    assert {e["operator"] for e in listing} == set(seeds)
    for entry in listing:
        assert entry.keys() == {"operator", "code", "role"}
        assert entry["code"] in current_codes(seeds[entry["operator"]], before, after)


def test_a_name_starting_with_a_dash_is_refused_with_exit_2(demo_home: Path) -> None:
    proc = run(demo_home, "operators", "enroll", "-x", "--role", "custodian", code=2)
    assert "-x" not in operators(demo_home)
    assert "usage:" in proc.stderr


@pytest.mark.parametrize(
    "name", ["-x", "123456", "bad\x1bname", "tab\tname"], ids=["dash", "digits", "esc", "tab"]
)
def test_an_invalid_operator_name_is_refused_with_exit_2(demo_home: Path, name: str) -> None:
    # After `--`, so argparse passes even "-x" on as the name; no approvals are given or needed.
    enroll = ("operators", "enroll", "--role", "custodian", "--", name)
    proc = run(demo_home, *enroll, code=2)
    assert "not a valid operator name" in proc.stderr
    assert "\x1b" not in proc.stderr and "\x1b" not in proc.stdout
    assert name not in operators(demo_home)


def test_an_invalid_operator_name_spends_no_approval(
    demo_home: Path, approvers: Approvers, tmp_path: Path
) -> None:
    approvals = approvers.file(tmp_path, "alice", "bob")
    enroll = ("operators", "enroll", "--role", "officer", "--approvals-from", approvals, "--")
    refused = run(demo_home, *enroll, "123456", code=2)
    assert "not a valid operator name" in refused.stderr
    # The very same codes still count: the refusal came before anyone's code was checked.
    run(demo_home, *enroll, "erin")
    assert operators(demo_home)["erin"]["state"] == "pending"
