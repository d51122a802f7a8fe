"""Checkpoints signed on the token, the head mirrored on it, and the offline verifier."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmtui.core import errors
from kmtui.core.audit.anchors import Anchors, Checkpoint
from kmtui.core.audit.log import AuditLog, canonical_json
from kmtui.core.audit.seals import Seals
from kmtui.core.audit.verify import verify_database
from kmtui.core.control.pin import PinHalves
from kmtui.core.registry.db import Store
from kmtui.core.token.session import Hsm
from kmtui.service import Workstation
from tests.conftest import Clock, SoftHsm
from tests.forgery import rechain


def trail(
    hsm: Hsm, path: Path, events: int, every: int = 10, *, signed_end: bool = False
) -> tuple[Store, Anchors]:
    """A trail of `events` events, anchored as the workstation anchors it (`signed_end`: its
    last event signed, as a session end is)."""
    store = Store.open(path)
    audit = AuditLog(store)
    anchors = Anchors(store, hsm, audit, Seals(store, hsm, audit), every=every)
    for n in range(1, events + 1):
        audit.append(
            "test.event", actor=f"op{n % 3}", outcome="success", key_id=f"k{n % 7}", params={"n": n}
        )
        if n % every == 0 or n == events:
            anchors.sync()
    if signed_end:
        anchors.checkpoint("session end")
    return store, anchors


def pem_of(anchors: Anchors) -> str:
    return anchors.public_key()[0]


def token_head(hsm: Hsm, anchors: Anchors) -> tuple[int, str]:
    import json

    raw = hsm.signer.read_head(anchors.registry_id())
    assert raw is not None
    head = json.loads(raw)
    return int(head["seq"]), str(head["hash"])


def raw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')  # an attacker with the file drops the guards
    return conn


def test_a_clean_trail_verifies_offline_with_every_checkpoint(hsm: Hsm, tmp_path: Path) -> None:
    store, anchors = trail(hsm, tmp_path / "t.db", 35, every=10)
    pem, head = pem_of(anchors), token_head(hsm, anchors)
    store.close()
    report = verify_database(tmp_path / "t.db", pubkey_pem=pem, token_head=head)
    assert report.ok, report.reason
    # 35 events after the one that recorded the audit key: checkpoints at 11, 21 and 31.
    assert (report.events, report.checkpoints, report.last_checkpoint) == (36, 3, 31)
    assert report.key_source == "given" and report.token_head == "matched"


def test_the_auditors_run_also_checks_the_whole_file_with_integrity_check(
    hsm: Hsm, tmp_path: Path
) -> None:
    store, anchors = trail(hsm, tmp_path / "t.db", 12, every=10)
    pem = pem_of(anchors)
    store.close()
    report = verify_database(tmp_path / "t.db", pubkey_pem=pem, integrity=True)
    assert report.ok and report.integrity == "ok"
    assert verify_database(tmp_path / "t.db", pubkey_pem=pem).integrity == "not checked"
    conn = sqlite3.connect(tmp_path / "t.db")  # an index that no longer matches its table
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute(
        "UPDATE sqlite_master SET sql = 'CREATE INDEX audit_by_actor ON audit_events (ts, seq)' "
        "WHERE name = 'audit_by_actor'"
    )
    conn.commit()
    conn.close()
    report = verify_database(tmp_path / "t.db", pubkey_pem=pem, integrity=True)
    assert not report.ok and report.first_bad_seq is None  # the chain itself still holds
    assert "integrity check" in report.reason and "audit_by_actor" in report.integrity


def test_checkpoint_signatures_verify_with_standard_ecdsa(hsm: Hsm, tmp_path: Path) -> None:
    store, anchors = trail(hsm, tmp_path / "t.db", 12, every=10)
    checkpoint = anchors.latest()
    assert checkpoint is not None and checkpoint.seq == 11  # event 1 recorded the audit key
    key = serialization.load_pem_public_key(pem_of(anchors).encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(
        bytes.fromhex(checkpoint.signature), checkpoint.message(), ec.ECDSA(hashes.SHA256())
    )  # raises if the HSM signature were wrong
    store.close()


def test_verification_never_writes_to_the_copy(hsm: Hsm, tmp_path: Path) -> None:
    store, anchors = trail(hsm, tmp_path / "live.db", 15)
    pem = pem_of(anchors)
    store.backup(tmp_path / "copy.db")
    store.close()
    before = hashlib.sha256((tmp_path / "copy.db").read_bytes()).hexdigest()
    assert verify_database(tmp_path / "copy.db", pubkey_pem=pem).ok
    assert hashlib.sha256((tmp_path / "copy.db").read_bytes()).hexdigest() == before
    assert not (tmp_path / "copy.db-wal").exists() and not (tmp_path / "copy.db-shm").exists()


def test_a_checkpoint_re_signed_with_another_key_is_caught_with_the_given_key(
    hsm: Hsm, tmp_path: Path
) -> None:
    store, anchors = trail(hsm, tmp_path / "t.db", 20)
    pem = pem_of(anchors)
    store.close()
    attacker = ec.generate_private_key(ec.SECP256R1())
    attacker_pem = (
        attacker.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    conn = raw(tmp_path / "t.db")
    conn.execute("UPDATE audit_keys SET pem = ?", (attacker_pem,))
    from kmtui.core.audit.anchors import fingerprint_of

    for row in conn.execute("SELECT * FROM audit_checkpoints").fetchall():
        forged = Checkpoint(
            row[0], row[1], row[2], row[3], fingerprint_of(attacker_pem), row[5], ""
        )
        signature = attacker.sign(forged.message(), ec.ECDSA(hashes.SHA256())).hex()
        conn.execute(
            "UPDATE audit_checkpoints SET key_fingerprint = ?, signature = ? WHERE seq = ?",
            (forged.key_fingerprint, signature, row[0]),
        )
    conn.close()
    report = verify_database(tmp_path / "t.db", pubkey_pem=pem)
    assert not report.ok and report.first_bad_seq == 11  # the first checkpoint
    assert "not signed by the audit key" in report.reason
    # The key stored in the database travels with the data: without a key of their own, an
    # auditor is told that only the chain was checked, never that the checkpoints agree.
    chain_only = verify_database(tmp_path / "t.db")
    assert chain_only.ok and chain_only.scope == "chain only" and chain_only.key_source == ""
    assert "chain only" in chain_only.reason and "agree" not in chain_only.reason
    assert chain_only.key_record == "not checked" and chain_only.unsigned_session_ends == ()


def test_a_restored_older_database_is_refused_at_login(
    hsm: Hsm, tmp_path: Path, clock: Clock
) -> None:
    store = Store.open(tmp_path / "ws.db")
    ws = Workstation.assemble(hsm, store, clock=clock)
    ws.anchors.sync()
    ws.audit.append("test.event", actor="x", outcome="success")
    ws.anchors.sync()
    store.backup(tmp_path / "old.db")
    for n in range(3):
        ws.audit.append("test.event", actor="x", outcome="success", params={"n": n})
    ws.anchors.sync()
    store.close()
    shutil.copy(tmp_path / "old.db", tmp_path / "ws.db")
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"ws.db{suffix}").unlink(missing_ok=True)
    restored = Workstation.assemble(hsm, Store.open(tmp_path / "ws.db"), clock=clock)
    with pytest.raises(errors.AuditTampered) as info:
        # Any halves: this process is already logged in, so the token does not check them.
        restored.login(PinHalves.of([("alice", "unused-1"), ("bob", "unused-2")]))
    assert info.value.exit_code == 3
    assert "cut off or an older copy was restored" in str(info.value)
    assert not hsm.logged_in  # nothing else runs
    restored.store.close()


# -- session ends: each one signed, or a finding -------------------------------------------------


def sessions(ws: Workstation, halves: PinHalves, count: int) -> list[int]:
    """`count` token sessions through the workstation's own log-in and log-out; their ends."""
    for n in range(count):
        ws.login(halves)
        ws.audit.append("test.event", actor="x", outcome="success", params={"n": n})
        ws.logout(reason="test")
    return sorted(e.seq for e in ws.audit.events(action="token.logout"))


@pytest.fixture
def three_sessions(
    hsm: Hsm, softhsm_token: SoftHsm, tmp_path: Path, clock: Clock
) -> tuple[Path, str, list[int]]:
    """A registry whose trail holds three whole sessions; its path, audit key and session ends."""
    store = Store.open(tmp_path / "ws.db")
    ws = Workstation.assemble(hsm, store, clock=clock)
    pem = ws.anchors.public_key()[0]
    ends = sessions(ws, softhsm_token.halves, 3)
    store.close()
    return tmp_path / "ws.db", pem, ends


def test_every_session_end_has_its_own_signed_checkpoint(
    three_sessions: tuple[Path, str, list[int]],
) -> None:
    path, pem, ends = three_sessions
    report = verify_database(path, pubkey_pem=pem)
    assert report.ok, report.reason
    assert (report.session_ends, report.unsigned_session_ends) == (3, ())
    assert report.checkpoints >= 3 and report.last_checkpoint == ends[-1]
    assert report.scope == "chain + signed checkpoints" and report.key_record == "matches"
    assert "every one of 3 session ends has its own" in report.reason


def test_a_deleted_session_checkpoint_is_found_though_a_later_one_survives(
    three_sessions: tuple[Path, str, list[int]],
) -> None:
    path, pem, ends = three_sessions
    conn = raw(path)
    conn.execute("DELETE FROM audit_checkpoints WHERE seq = ?", (ends[1],))
    conn.close()
    report = verify_database(path, pubkey_pem=pem)
    assert not report.ok and report.first_bad_seq == ends[1]
    assert report.unsigned_session_ends == (ends[1],)
    assert f"the session that ended at event {ends[1]} has no signed checkpoint" in report.reason


def test_a_session_end_written_but_never_signed_is_a_finding(
    hsm: Hsm, softhsm_token: SoftHsm, tmp_path: Path, clock: Clock
) -> None:
    """kmtui stopped between writing a session's end and signing it; later sessions went on."""
    store = Store.open(tmp_path / "ws.db")
    ws = Workstation.assemble(hsm, store, clock=clock)
    pem = ws.anchors.public_key()[0]
    ws.anchors.sync()  # the token holds this registry's head, as after any log-in
    ws.audit.append("token.login", actor="x", outcome="success")
    cut = ws.audit.append("token.logout", actor="x", outcome="success", params={"reason": "x"})
    sessions(ws, softhsm_token.halves, 1)  # a later session signs its own end, after `cut`
    store.close()
    report = verify_database(tmp_path / "ws.db", pubkey_pem=pem)
    assert not report.ok and report.unsigned_session_ends == (cut.seq,)
    assert "stopped between writing a session's end and signing it" in report.reason


def test_two_sessions_ending_at_once_each_sign_their_own_end(hsm: Hsm, tmp_path: Path) -> None:
    store, anchors = trail(hsm, tmp_path / "t.db", 3)
    audit = AuditLog(store)  # another kmtui process's log, sealed as kmtui seals its events
    Seals(store, hsm, audit)
    first = audit.append("token.logout", actor="a", outcome="success")
    second = audit.append("token.logout", actor="b", outcome="success")
    signed = [anchors.checkpoint("session end", at=e.seq) for e in (first, second)]
    assert [c.seq if c else 0 for c in signed] == [first.seq, second.seq]
    again = anchors.checkpoint("again", at=first.seq)  # signed once: the first one stays
    assert again is not None and again.reason == "session end"
    pem = pem_of(anchors)
    store.close()
    report = verify_database(tmp_path / "t.db", pubkey_pem=pem)
    assert report.ok and report.session_ends == 2, report.reason


def test_a_key_given_with_no_checkpoint_to_check_fails(hsm: Hsm, tmp_path: Path) -> None:
    store, anchors = trail(hsm, tmp_path / "t.db", 5, every=10)  # never reached an interval
    pem = pem_of(anchors)
    store.close()
    report = verify_database(tmp_path / "t.db", pubkey_pem=pem)
    assert not report.ok and report.checkpoints == 0 and report.first_bad_seq == 1
    assert "no signed checkpoint" in report.reason
    assert verify_database(tmp_path / "t.db").ok  # the chain itself holds


def test_events_after_the_last_checkpoint_are_reported_as_held_by_the_chain_only(
    hsm: Hsm, tmp_path: Path
) -> None:
    store, anchors = trail(hsm, tmp_path / "t.db", 14, every=10)
    pem = pem_of(anchors)
    store.close()
    report = verify_database(tmp_path / "t.db", pubkey_pem=pem)
    # Event 1 recorded the audit key: 14 more, a checkpoint at 11, events 12-15 after it.
    assert report.ok and (report.last_checkpoint, report.unsigned_events) == (11, 4)
    assert "events 12-15 come after the last signed checkpoint" in report.reason


def test_the_token_key_is_trusted_and_the_database_record_is_compared_with_it(
    hsm: Hsm, tmp_path: Path
) -> None:
    store, anchors = trail(hsm, tmp_path / "t.db", 12, signed_end=True)
    pem = pem_of(anchors)
    store.close()
    report = verify_database(tmp_path / "t.db", token_pubkey_pem=pem)
    assert report.ok and report.key_source == "token" and report.key_record == "matches"
    other = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    mixed = verify_database(tmp_path / "t.db", pubkey_pem=other, token_pubkey_pem=pem)
    assert not mixed.ok and "is not this token's audit key" in mixed.reason
    conn = raw(tmp_path / "t.db")
    conn.execute("UPDATE audit_keys SET pem = ?", (other,))  # the record, not the signatures
    conn.close()
    replaced = verify_database(tmp_path / "t.db", token_pubkey_pem=pem)
    assert not replaced.ok and "the record was replaced" in replaced.key_record


# -- the property test: one mutation, always detected -----------------------------------------

MUTATIONS = [
    "modify",
    "delete",
    "insert",
    "duplicate",
    "swap",
    "renumber",
    "rechain",
    "truncate",
    "rollback",
]


def _mutate(kind: str, conn: sqlite3.Connection, n: int, data: Any) -> None:
    pick = data.draw(st.integers(1, n), label="row")
    if kind == "modify":
        column = data.draw(
            st.sampled_from(["ts", "actor", "action", "key_id", "params", "outcome"]),
            label="column",
        )
        value = canonical_json({"n": -1}) if column == "params" else "tampered"
        conn.execute(f"UPDATE audit_events SET {column} = ? WHERE seq = ?", (value, pick))
    elif kind == "delete":
        conn.execute("DELETE FROM audit_events WHERE seq = ?", (pick,))
    elif kind in ("insert", "duplicate"):
        conn.execute("UPDATE audit_events SET seq = seq + 100000 WHERE seq >= ?", (pick,))
        conn.execute("UPDATE audit_events SET seq = seq - 99999 WHERE seq >= 100000")
        source = pick + 1 if kind == "duplicate" else None
        row = (
            conn.execute("SELECT * FROM audit_events WHERE seq = ?", (source,)).fetchone()
            if source
            else None
        )
        values = (
            list(row)
            if row
            else [
                pick,
                "2026-01-01T00:00:00.000000Z",
                "mallory",
                "key.destroy",
                "",
                "{}",
                "success",
                "",
                "",
            ]
        )
        values[0] = pick
        conn.execute("INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        rechain(conn, pick)
    elif kind == "swap":
        other = data.draw(st.integers(1, n).filter(lambda x: x != pick), label="other")
        a = conn.execute(
            "SELECT actor, action, params FROM audit_events WHERE seq = ?", (pick,)
        ).fetchone()
        b = conn.execute(
            "SELECT actor, action, params FROM audit_events WHERE seq = ?", (other,)
        ).fetchone()
        conn.execute(
            "UPDATE audit_events SET actor = ?, action = ?, params = ? WHERE seq = ?", (*b, pick)
        )
        conn.execute(
            "UPDATE audit_events SET actor = ?, action = ?, params = ? WHERE seq = ?", (*a, other)
        )
    elif kind == "renumber":
        conn.execute("UPDATE audit_events SET seq = seq + 1000")
    elif kind == "rechain":
        conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = ?", (pick,))
        rechain(conn, pick)
    elif kind == "truncate":
        conn.execute("DELETE FROM audit_events WHERE seq > ?", (n - pick,))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@pytest.mark.slow
@given(events=st.integers(1, 500), kind=st.sampled_from(MUTATIONS), data=st.data())
def test_every_mutation_is_detected(
    hsm: Hsm, tmp_path_factory: pytest.TempPathFactory, events: int, kind: str, data: Any
) -> None:
    if kind == "swap" and events < 2:
        kind = "modify"
    path = tmp_path_factory.mktemp("trail") / "t.db"
    store, anchors = trail(hsm, path, events, every=10, signed_end=True)
    pem = pem_of(anchors)
    if kind == "rollback":
        cut = data.draw(st.integers(1, events), label="older")
        older = path.with_name("older.db")
        store.backup(older)  # the copy as it is now; then the trail goes on without it
        later = AuditLog(store)  # the workstation's own log goes on, sealed as kmtui seals
        Seals(store, hsm, later)
        for n in range(cut):
            store.conn.execute("SELECT 1")
            later.append("test.later", actor="x", outcome="success", params={"n": n})
        anchors.sync()
        head = token_head(hsm, anchors)
        store.close()
        report = verify_database(older, pubkey_pem=pem, token_head=head)
        assert not report.ok, (kind, report)
        return
    head = token_head(hsm, anchors)
    store.close()
    conn = raw(path)
    _mutate(kind, conn, events, data)
    conn.close()
    report = verify_database(path, pubkey_pem=pem, token_head=head)
    assert not report.ok, (kind, events, report)


def test_a_copy_verified_with_its_wal_file_beside_it_sees_what_the_wal_holds(
    hsm: Hsm, tmp_path: Path
) -> None:
    """An event changed in the -wal file (not yet checkpointed) is what `audit export` shows:
    verifying the copy without it said OK (the red team's finding)."""
    store, anchors = trail(hsm, tmp_path / "t.db", 12)
    pem = pem_of(anchors)
    store.close()
    holder = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    holder.execute("PRAGMA wal_autocheckpoint = 0")
    for (name,) in holder.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        holder.execute(f'DROP TRIGGER "{name}"')
    holder.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 5")
    assert (tmp_path / "t.db-wal").stat().st_size > 0
    report = verify_database(tmp_path / "t.db", pubkey_pem=pem)
    holder.close()
    assert not report.ok and report.first_bad_seq == 5
