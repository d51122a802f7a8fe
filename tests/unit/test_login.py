"""Split-knowledge log-in on a real SoftHSM2 token: two custodians' halves or nothing.

Log-in is per process and per token, so each test here works on a token of its own, made in this
process (`init_token_in_process`), and logs out before it ends. What SoftHSM 2.6 shows of its PIN
counter: after a failed C_Login it sets CKF_USER_PIN_COUNT_LOW and clears it at the next good one;
it never sets FINAL_TRY or LOCKED (it has no lockout), and no count is visible.
"""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from kmtui.core import errors
from kmtui.core.control.pin import PinHalves, ProtectedPath
from kmtui.core.registry.db import Store
from kmtui.core.token import officer, profile, session
from kmtui.core.token.session import Hsm, on_hsm_thread
from kmtui.service import Workstation
from tests.conftest import Clock, SoftHsm, Team, init_token_in_process

COUNT_LOW = "USER_PIN_COUNT_LOW"


@dataclass
class Fresh:
    """A workstation on a token of its own whose user PIN is alice's half then bob's."""

    ws: Workstation
    pairs: tuple[tuple[str, str], tuple[str, str]]
    so_pin: str
    db: Path

    @property
    def halves(self) -> PinHalves:
        return PinHalves.of(self.pairs)


def new_token(softhsm_token: SoftHsm, user_pin: str, so_pin: str) -> Hsm:
    label = f"login-{secrets.token_hex(4)}"
    on_hsm_thread(init_token_in_process, softhsm_token.module, label, so_pin, user_pin)
    return Hsm(softhsm_token.module, token_label=label, softhsm2_conf=str(softhsm_token.conf))


@pytest.fixture
def fresh(softhsm_token: SoftHsm, tmp_path: Path) -> Iterator[Fresh]:
    pairs = (("alice", secrets.token_hex(6)), ("bob", secrets.token_hex(6)))
    so_pin = secrets.token_hex(8)
    hsm = new_token(softhsm_token, PinHalves.of(pairs).pin(), so_pin)
    store = Store.open(tmp_path / "kmtui.db")
    ws = Workstation.assemble(hsm, store, clock=Clock())
    try:
        yield Fresh(ws, pairs, so_pin, tmp_path / "kmtui.db")
    finally:
        if hsm.logged_in:
            ws.logout(reason="test finished")
        store.close()
        hsm.close()


def registry(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but the audit trail's, read with a connection of its own."""
    conn = sqlite3.connect(db)
    try:
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not r[0].startswith(("audit_", "sqlite_"))
        ]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables}
    finally:
        conn.close()


def test_a_wrong_half_is_refused_counted_by_the_token_and_changes_nothing_else(
    fresh: Fresh,
) -> None:
    ws = fresh.ws
    (alice, first), (bob, second) = fresh.pairs
    before_rows = registry(fresh.db)
    assert ws.audit.events(limit=1) == []  # a fresh registry: the trail starts here
    assert COUNT_LOW not in ws.hsm.pin_flags()
    wrong = PinHalves.of([(alice, first), (bob, "x" + second[1:])])
    with pytest.raises(errors.PinIncorrect) as info:
        ws.login(wrong)
    assert "PIN was not accepted" in info.value.message
    assert "token counted the failure" in info.value.hint
    assert first not in str(info.value) and second not in str(info.value)
    assert not ws.hsm.logged_in
    assert COUNT_LOW in ws.hsm.pin_flags()  # the token's own counter saw it
    events = ws.audit.events(newest_first=False)
    assert [(e.action, e.outcome) for e in events] == [("token.login", "failure")]
    assert events[0].params["custodians"] == [alice, bob]
    assert events[0].params["token_flags"] == [COUNT_LOW]
    assert first not in repr(events[0].params) and second not in repr(events[0].params)
    assert registry(fresh.db) == before_rows  # nothing in the registry
    ws.login(fresh.halves)
    assert ws.hsm.logged_in and COUNT_LOW not in ws.hsm.pin_flags()
    ok = ws.audit.events(limit=1, action="token.login")[0]
    assert (ok.outcome, ok.params["custodians"]) == ("success", [alice, bob])


def test_one_person_with_one_half_cannot_log_in_so_cannot_reach_the_seal_key(
    fresh: Fresh,
) -> None:
    """The attacks in issue 12 that need 'the token user PIN' (seal a seed for mallory, unseal
    every seed, re-sign the trail, unwrap a key in the clear) all start with a token session.
    alice, alone, knows her half: no way of offering it opens one."""
    ws = fresh.ws
    (alice, first), _ = fresh.pairs
    attempts = [
        lambda: ws.login(PinHalves.of([(alice, first), ("mallory", secrets.token_hex(6))])),
        lambda: ws.login(PinHalves.of([("mallory", secrets.token_hex(6)), (alice, first)])),
        lambda: ws.hsm.login(first),  # her half as the whole PIN, below kmtui's checks
        lambda: ws.hsm.login(first + first),
    ]
    for attempt in attempts:
        with pytest.raises(errors.PinIncorrect):
            attempt()
        assert not ws.hsm.logged_in
    for pairs in ([(alice, first), (alice, first)], [(alice, first), ("mallory", "")]):
        with pytest.raises(errors.UsageError):
            PinHalves.of(pairs)
    with pytest.raises(errors.NotLoggedIn):
        ws.hsm.sealing.seal(b"a seed for mallory", b"operator:mallory")


def test_the_initial_pin_is_replaced_by_the_two_halves_and_the_trail_names_their_holders(
    softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    initial = secrets.token_hex(8)
    hsm = new_token(softhsm_token, initial, secrets.token_hex(8))
    store = Store.open(tmp_path / "kmtui.db")
    ws = Workstation.assemble(hsm, store, clock=Clock())
    halves = PinHalves.of([("alice", "alice-half-1"), ("bob", "bob-half-22")])
    try:
        assert not ws.user_pin_set()
        with pytest.raises(errors.PinIncorrect, match="did not accept the initial user PIN"):
            ws.set_user_pin("not-the-initial", halves)
        assert not ws.user_pin_set()
        ws.set_user_pin(initial, halves)
        assert ws.user_pin_set()
        with pytest.raises(errors.PinIncorrect):
            hsm.login(initial)
        ws.login(halves)
        assert hsm.logged_in
        set_pin = [e for e in ws.audit.events(newest_first=False) if e.action == "token.set-pin"]
        assert [(e.outcome, e.params["custodians"]) for e in set_pin] == [
            ("failure", ["alice", "bob"]),
            ("success", ["alice", "bob"]),
        ]
        dump = "".join(repr(e.params) for e in ws.audit.events(limit=100))
        assert "alice-half-1" not in dump and "bob-half-22" not in dump and initial not in dump
    finally:
        if hsm.logged_in:
            ws.logout(reason="test finished")
        store.close()
        hsm.close()


def test_equal_halves_are_refused_as_a_new_pin_and_nothing_changes(fresh: Fresh) -> None:
    ws = fresh.ws
    before = ws.audit.events(limit=1)
    same = PinHalves.of([("alice", "same-half-1"), ("bob", "same-half-1")])
    with pytest.raises(errors.UsageError, match="the same"):
        ws.set_user_pin(fresh.halves.pin(), same)
    assert ws.audit.events(limit=1) == before
    ws.login(fresh.halves)  # the PIN is still the two halves
    assert ws.hsm.logged_in


def test_the_protected_path_is_refused_clearly_by_a_token_without_one(fresh: Fresh) -> None:
    ws = fresh.ws
    with pytest.raises(errors.HsmError, match="no protected authentication path") as info:
        ws.login(ProtectedPath())
    assert "split" in info.value.hint
    assert not ws.hsm.logged_in
    failed = ws.audit.events(limit=1)[0]
    assert (failed.action, failed.outcome) == ("token.login", "failure")
    assert failed.params["login"] == "protected-path" and "custodians" not in failed.params


def test_the_so_pin_reaches_the_officer_child_on_stdin_never_argv_or_environment(
    team: Team, softhsm_token: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    run = subprocess.run

    def watched(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append({"argv": list(args), **kwargs})
        return run(args, **kwargs)

    monkeypatch.setattr(officer.subprocess, "run", watched)
    prepared = team.ws.prepare_create(
        label="so-made-kek", algorithm="AES-256", purpose="wrap", trusted=True
    )
    team.ws.run(prepared, team.codes("alice", "bob"), so_login=softhsm_token.so_halves)
    (call,) = seen
    so_pin = softhsm_token.so_pin
    halves = [half for _, half in softhsm_token.so_pairs]
    outside = " ".join(call["argv"]) + " ".join(f"{k}={v}" for k, v in call["env"].items())
    assert all(secret not in outside for secret in (so_pin, *halves))
    assert so_pin in call["input"]
    made = team.ws.audit.events(limit=1, action="key.create")[0]
    assert made.params["so_custodians"] == ["carol", "bob"] and so_pin not in repr(made.params)


def test_a_protected_path_so_log_in_on_a_token_without_one_creates_nothing(team: Team) -> None:
    before = team.ws.store.keys.count()
    prepared = team.ws.prepare_create(
        label="pad-kek", algorithm="AES-256", purpose="wrap", trusted=True
    )
    with pytest.raises(errors.HsmError, match="ArgumentsBad"):
        team.ws.run(prepared, team.codes("alice", "bob"), so_login=ProtectedPath())
    assert team.ws.store.keys.count() == before
    assert team.ws.hsm.objects.find(bytes.fromhex(prepared.operation.params["cka_id"])) is None


def test_the_token_profile_is_in_the_trail_from_the_first_log_in_and_again_when_it_changes(
    fresh: Fresh,
) -> None:
    ws = fresh.ws
    ws.login(fresh.halves)
    recorded = ws.audit.events(action="token.profile")
    assert len(recorded) == 1
    assert recorded[0].params["profile"] == ws.hsm.profile.as_dict()
    assert recorded[0].params["token"] == ws.hsm.found_label
    ws.logout(reason="again")
    ws.login(fresh.halves)
    assert len(ws.audit.events(action="token.profile")) == 1  # the same token, the same profile
    ws.logout(reason="the module was upgraded")
    key = (ws.hsm.module, ws.hsm.found_serial, ws.hsm.found_label)
    session._PROFILES[key] = replace(session._PROFILES[key], gcm=False)  # what a new probe finds
    ws.login(fresh.halves)
    newest = ws.audit.events(action="token.profile")
    assert len(newest) == 2 and newest[0].params["profile"]["sealing"] == profile.SEAL_CBC_HMAC
    assert ws.audit.verify().ok
