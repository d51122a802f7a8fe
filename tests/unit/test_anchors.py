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
from kmtui.core.audit.anchors import Anchors, Checkpoint, verify_database
from kmtui.core.audit.log import GENESIS_HASH, AuditLog, canonical_json, event_hash
from kmtui.core.control.pin import PinHalves
from kmtui.core.registry.db import Store
from kmtui.core.token.session import Hsm
from kmtui.service import Workstation
from tests.conftest import Clock


def trail(hsm: Hsm, path: Path, events: int, every: int = 10) -> tuple[Store, Anchors]:
    """A trail of `events` events, anchored as the workstation anchors it."""
    store = Store.open(path)
    audit = AuditLog(store)
    anchors = Anchors(store, hsm, audit, every=every)
    for n in range(1, events + 1):
        audit.append(
            "test.event", actor=f"op{n % 3}", outcome="success", key_id=f"k{n % 7}", params={"n": n}
        )
        if n % every == 0 or n == events:
            anchors.sync()
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
    assert (report.events, report.checkpoints, report.last_checkpoint) == (35, 3, 30)
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
    assert checkpoint is not None and checkpoint.seq == 10
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
    assert not report.ok and report.first_bad_seq == 10
    assert "not signed by the audit key" in report.reason
    # Trusting the key stored in the database is weaker, and the report says where it came from.
    assert verify_database(tmp_path / "t.db").key_source == "database"


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


def _rechain(conn: sqlite3.Connection, start: int = 1) -> None:
    """Recompute every hash from `start` on, as an attacker who knows the format would."""
    prev = (
        GENESIS_HASH
        if start == 1
        else conn.execute("SELECT hash FROM audit_events WHERE seq = ?", (start - 1,)).fetchone()[0]
    )
    rows = conn.execute(
        "SELECT seq, ts, actor, action, key_id, params, outcome FROM audit_events "
        "WHERE seq >= ? ORDER BY seq",
        (start,),
    ).fetchall()
    import json

    for seq, ts, actor, action, key_id, params, outcome in rows:
        digest = event_hash(
            seq=seq,
            ts=ts,
            actor=actor,
            action=action,
            key_id=key_id,
            params=json.loads(params),
            outcome=outcome,
            prev_hash=prev,
        )
        conn.execute(
            "UPDATE audit_events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq)
        )
        prev = digest


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
        _rechain(conn, pick)
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
        _rechain(conn, pick)
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
    store, anchors = trail(hsm, path, events, every=10)
    pem = pem_of(anchors)
    if kind == "rollback":
        cut = data.draw(st.integers(1, events), label="older")
        older = path.with_name("older.db")
        store.backup(older)  # the copy as it is now; then the trail goes on without it
        for n in range(cut):
            store.conn.execute("SELECT 1")
            AuditLog(store).append("test.later", actor="x", outcome="success", params={"n": n})
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
