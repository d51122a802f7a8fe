"""The registry bound to the signed trail: edits made to the file outside kmtui are refused.

Each test is an attack from issue 12's table, run for real: the database file is edited with
sqlite3 (as its holder would), then kmtui is asked to use what was edited, on a real token.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from kmtui.core import errors
from kmtui.core.audit.log import AuditLog
from kmtui.core.audit.seals import unbound
from kmtui.core.audit.verify import verify_database
from kmtui.core.control.operations import ApprovalInput, OpKind
from kmtui.core.keys.findings import FindingKind
from kmtui.core.models import Key, KeyState, OperatorState
from kmtui.core.registry.db import Store
from kmtui.core.token.session import Hsm
from kmtui.service import Workstation
from tests.conftest import Clock, SoftHsm, Team, sealed_edit, unpin


def file_of(team: Team) -> Path:
    return team.ws.store.path


def edit(team: Team, sql: str, params: tuple[object, ...] = ()) -> None:
    """What the holder of the file does: sqlite3 on kmtui.db, kmtui's guards dropped."""
    conn = sqlite3.connect(file_of(team), isolation_level=None)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def create(team: Team, label: str = "k") -> str:
    return team.ws.create_key(
        label=label, algorithm="AES-256", approvals=team.codes("alice", "bob")
    ).id


def changed(excinfo: pytest.ExceptionInfo[errors.RegistryChanged]) -> tuple[str, ...]:
    assert "REGISTRY CHANGED OUTSIDE KMTUI" in str(excinfo.value)
    assert excinfo.value.exit_code == 3
    return excinfo.value.subjects


def test_quorum_zero_written_into_a_policy_is_refused_before_anything_runs(team: Team) -> None:
    before = team.ws.audit.events(limit=1)[0].seq
    rules = json.dumps({"quorum": {kind: 0 for kind in ("key.create", "key.revoke")}})
    edit(team, "UPDATE policies SET rules = ? WHERE name = 'default'", (rules,))
    with pytest.raises(errors.RegistryChanged) as raised:
        team.ws.create_key(label="no-codes", algorithm="AES-256")
    assert changed(raised) == ("policy:default",)
    assert team.ws.store.keys.find(label="no-codes") == []
    written = team.ws.audit.events(after_seq=before, newest_first=False)
    assert [e.outcome for e in written if e.action == "key.create"] == ["refused"]
    assert team.ws.seals.changed[0].subject == "policy:default"  # what the status line shows


def test_an_operators_last_step_reset_to_replay_a_code_is_refused(team: Team) -> None:
    create(team)
    codes = [ApprovalInput(a.operator, a.code) for a in team.codes("alice", "bob")]
    team.ws.create_key(label="first", algorithm="AES-256", approvals=codes)
    edit(team, "UPDATE operators SET last_step = 0")
    with pytest.raises(errors.RegistryChanged) as raised:
        team.ws.create_key(label="replayed", algorithm="AES-256", approvals=codes)
    assert set(changed(raised)) == {"operator:alice", "operator:bob"}
    assert team.ws.store.keys.find(label="replayed") == []


def test_a_locked_operator_set_back_to_active_by_hand_does_not_approve(team: Team) -> None:
    for _ in range(5):
        with pytest.raises(errors.ApprovalRefused):
            team.ws.create_key(
                label="x",
                algorithm="AES-256",
                approvals=[ApprovalInput("alice", "000000"), *team.codes("bob")],
            )
    assert team.ws.operators.get("alice").state == OperatorState.LOCKED
    edit(team, "UPDATE operators SET state = 'active', failures = 0 WHERE name = 'alice'")
    with pytest.raises(errors.RegistryChanged) as raised:
        create(team, "after-unlock-by-hand")
    assert changed(raised) == ("operator:alice",)


def test_a_role_changed_by_hand_is_refused(team: Team) -> None:
    edit(team, "UPDATE operators SET role = 'officer' WHERE name = 'alice'")
    with pytest.raises(errors.RegistryChanged) as raised:
        create(team)
    assert changed(raised) == ("operator:alice",)


def test_a_compromised_key_set_back_to_active_is_refused(team: Team) -> None:
    key_id = create(team)
    prepared = team.ws.prepare(OpKind.KEY_REVOKE, key_id, reason="key-compromise")
    team.ws.run(prepared, team.codes("alice", "bob"))
    edit(team, "UPDATE keys SET state = 'active' WHERE id = ?", (key_id,))
    edit(team, "UPDATE key_versions SET state = 'active' WHERE key_id = ?", (key_id,))
    assert team.ws.get_key(key_id).state == KeyState.ACTIVE  # the listing reads the file...
    with pytest.raises(errors.RegistryChanged) as raised:  # ...but nothing uses it
        team.ws.run(team.ws.prepare(OpKind.KEY_ROTATE, key_id), team.codes("alice", "bob"))
    assert changed(raised) == (f"key:{key_id}",)


def test_an_acknowledgement_inserted_by_hand_hides_no_finding(team: Team) -> None:
    key_id = create(team)
    team.ws.hsm.objects.destroy(team.ws.get_key(key_id).versions[0].cka_id)
    report = team.ws.reconciler.run()
    (missing,) = [f for f in report.findings if f.kind == FindingKind.MISSING]
    edit(
        team,
        "INSERT INTO reconcile_acks VALUES (?, 'looks fine', 1, '2026-01-01T00:00:00Z')",
        (missing.ident,),
    )
    report = team.ws.reconciler.run()
    assert missing.ident in {f.ident for f in report.findings}  # still shown
    assert [f.label for f in report.findings if f.kind == FindingKind.REGISTRY] == [
        f"ack:{missing.ident}"
    ]


def test_an_older_once_valid_copy_of_one_row_is_refused(team: Team) -> None:
    key_id = create(team)
    old = sqlite3.connect(file_of(team))
    row = old.execute("SELECT * FROM keys WHERE id = ?", (key_id,)).fetchone()
    versions = old.execute("SELECT * FROM key_versions WHERE key_id = ?", (key_id,)).fetchall()
    seal = old.execute("SELECT * FROM seals WHERE subject = ?", (f"key:{key_id}",)).fetchone()
    old.close()
    prepared = team.ws.prepare(OpKind.KEY_REVOKE, key_id, reason="key-compromise")
    team.ws.run(prepared, team.codes("alice", "bob"))
    # Put back the key as it was before the revoke: its row, its versions and its (valid) seal.
    edit(team, "DELETE FROM key_versions WHERE key_id = ?", (key_id,))
    edit(team, "DELETE FROM keys WHERE id = ?", (key_id,))
    marks = ", ".join("?" * len(row))
    edit(team, f"INSERT INTO keys VALUES ({marks})", tuple(row))
    for version in versions:
        edit(team, f"INSERT INTO key_versions VALUES ({', '.join('?' * len(version))})", version)
    edit(team, "UPDATE seals SET seq = ?, mac = ? WHERE subject = ?", (seal[1], seal[2], seal[0]))
    assert team.ws.get_key(key_id).state == KeyState.ACTIVE
    with pytest.raises(errors.RegistryChanged) as raised:
        team.ws.run(team.ws.prepare(OpKind.KEY_ROTATE, key_id), team.codes("alice", "bob"))
    assert changed(raised) == (f"key:{key_id}",)
    assert "an older copy" in str(raised.value)
    conn = sqlite3.connect(file_of(team))  # and a copy shows it without the token
    try:
        assert [p.subject for p in unbound(conn)[1]] == [f"key:{key_id}"]
    finally:
        conn.close()


def test_an_operator_inserted_by_hand_never_approves(team: Team) -> None:
    """`mallory` with a seed copied from alice's row (the token would even unseal it for
    `alice` only): no seal, so never believed."""
    edit(
        team,
        "INSERT INTO operators (name, role, state, enrolled_at, sealed_seed, last_step, "
        "failures, seed_fingerprint) SELECT 'mallory', role, 'active', enrolled_at, "
        "sealed_seed, 0, 0, 'x' FROM operators WHERE name = 'alice'",
    )
    with pytest.raises(errors.RegistryChanged) as raised:
        team.ws.create_key(
            label="k",
            algorithm="AES-256",
            approvals=[*team.codes("alice"), ApprovalInput("mallory", "123456")],
        )
    assert changed(raised) == ("operator:mallory",)
    assert "not sealed" in str(raised.value)


def test_a_deleted_policy_is_missed_not_replaced_by_the_shipped_one(team: Team) -> None:
    stricter = {**team.ws.get_policy("default").rules, "destroy_wait_days": 30}
    prepared = team.ws.prepare_policy_change("default", stricter)
    team.ws.run(prepared, team.codes("alice", "bob"))
    edit(team, "DELETE FROM policies WHERE name = 'default'")
    edit(team, "DELETE FROM seals WHERE subject = 'policy:default'")
    team.ws.policies.ensure_defaults()  # what the next start does: the shipped one comes back
    with pytest.raises(errors.RegistryChanged) as raised:
        create(team)
    assert changed(raised) == ("policy:default",)


def test_every_changed_row_is_named_by_the_full_check(team: Team) -> None:
    key_id = create(team)
    assert team.ws.seals.check_all() == []
    edit(team, "UPDATE keys SET exportable = 1 WHERE id = ?", (key_id,))
    edit(team, "UPDATE operators SET role = 'officer' WHERE name = 'bob'")
    edit(team, "UPDATE meta SET value = 'ffffffffffffffff' WHERE key = 'registry_id'")
    problems = {p.subject for p in team.ws.seals.check_all()}
    # A new registry id breaks every seal: each one names the id it was made for.
    assert {f"key:{key_id}", "operator:bob", "registry", "policy:default"} <= problems


def test_kmtui_own_writes_keep_every_seal_true(team: Team) -> None:
    key_id = create(team)
    for kind in (OpKind.KEY_SUSPEND, OpKind.KEY_RESUME, OpKind.KEY_ROTATE):
        team.ws.run(team.ws.prepare(kind, key_id), team.codes("alice", "bob"))
    prepared = team.ws.prepare_operator(OpKind.OPERATOR_LOCK, "carol")
    team.ws.run_operator(prepared, team.codes("alice", "bob"))
    sealed_edit(team.ws, f"key:{key_id}", "UPDATE keys SET notes = 'n' WHERE id = ?", (key_id,))
    assert team.ws.seals.check_all() == []
    report = team.ws.reconciler.run()  # the suite's token holds other tests' keys: not clean
    assert [f for f in report.findings if f.kind == FindingKind.REGISTRY] == []


def test_a_new_registry_is_sealed_once_at_its_first_use(
    hsm: Hsm, tmp_path: Path, clock: Clock
) -> None:
    unpin(hsm)
    store = Store.open(tmp_path / "kmtui.db")
    try:
        ws = Workstation.assemble(hsm, store, clock=clock)
        team = Team(ws, clock, {})
        team.enroll("alice", "custodian")
        team.enroll("bob", "custodian")
        started = ws.audit.events(action="registry.sealed")
        assert len(started) == 1 and started[0].params["subject"] == "registry"
        create(team)
        assert len(ws.audit.events(action="registry.sealed")) == 1  # never again
    finally:
        store.close()


def test_a_copy_of_the_database_put_back_with_a_new_registry_id_is_refused_at_log_in(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    create(team, "before")
    copy = tmp_path / "older.db"
    team.ws.store.backup(copy)
    team.ws.logout()  # the session ends: the head on the token moves past the copy
    halves = softhsm_token.halves
    team.ws.login(halves)
    conn = sqlite3.connect(copy, isolation_level=None)
    conn.execute("UPDATE meta SET value = 'aaaaaaaaaaaaaaaa' WHERE key = 'registry_id'")
    conn.close()
    store = Store.open(copy)
    try:
        other = Workstation.assemble(team.ws.hsm, store)
        with pytest.raises(errors.AuditTampered, match=r"no head for its registry id|serves"):
            other.login(halves)
    finally:
        store.close()


def test_an_intent_forged_into_the_file_is_never_finished_by_reconciliation(
    team: Team, softhsm_token: SoftHsm
) -> None:
    """The red team's attack: the file's holder deletes a revoked key's rows and seal, then
    appends a correctly chained `key.create` intent naming its token object; reconciliation
    after the next log-in must not bring the key back (it did, active and sealed). Now the
    log-in itself refuses: the intent carries no seal from the token."""
    key_id = create(team, "revoked-one")
    prepared = team.ws.prepare(OpKind.KEY_REVOKE, key_id, reason="key-compromise")
    team.ws.run(prepared, team.codes("alice", "bob"))
    key = team.ws.get_key(key_id)
    team.ws.logout()  # the session ends: the token's head vouches for the trail as it is
    edit(team, "DELETE FROM key_versions WHERE key_id = ?", (key_id,))
    edit(team, "DELETE FROM keys WHERE id = ?", (key_id,))
    edit(team, "DELETE FROM seals WHERE subject = ?", (f"key:{key_id}",))
    forged = forge_intent(team, key, digest="0" * 64, approvers=["alice", "bob"])
    with pytest.raises(
        errors.AuditTampered, match=rf"AUDIT TRAIL FORGED: .*key.create at {forged}"
    ):
        team.ws.login(softhsm_token.halves)
    assert not team.ws.hsm.logged_in
    assert team.ws.store.keys.get(key_id) is None  # not back, and certainly not active
    assert head_seq(team, softhsm_token) < forged  # the token's head never covered it


def test_a_two_person_session_forged_into_the_file_is_refused_at_the_next_log_in(
    team: Team, softhsm_token: SoftHsm
) -> None:
    """Red team round three: between sessions the file's holder appends a correctly chained
    log-in by alice and bob, their approvals and a successful export (no log-out, so no
    session end lacks its checkpoint). The next log-in anchored them and every verify passed;
    now the log-in refuses, and offline verification never sees them signed."""
    key_id = create(team, "exported-one")
    pem = team.ws.anchors.public_key()[0]
    team.ws.logout()
    forger = Store.open(file_of(team))
    try:
        log = AuditLog(forger)
        log.append("token.login", actor="console", outcome="success", params={"via": "console"})
        for who in ("alice", "bob"):
            log.append("approval.granted", actor=who, outcome="success", key_id=key_id)
        export = log.append(
            "key.export",
            actor="alice+bob",
            outcome="success",
            key_id=key_id,
            params={"out": "/media/usb/k.key"},
        )
    finally:
        forger.close()
    with pytest.raises(errors.AuditTampered, match=r"AUDIT TRAIL FORGED: 4 event\(s\)"):
        team.ws.login(softhsm_token.halves)
    assert head_seq(team, softhsm_token) < export.seq - 3
    report = verify_database(file_of(team), pubkey_pem=pem)
    assert report.unsigned_events >= 4 and report.last_checkpoint < export.seq - 3


def head_seq(team: Team, token: SoftHsm) -> int:
    """The seq of the head the token keeps for this registry (logging in to read it if need be)."""
    raw = token_head_raw(team, token)
    return int(json.loads(raw)["seq"]) if raw else 0


def token_head_raw(team: Team, token: SoftHsm) -> str:
    hsm = team.ws.hsm
    was_in = hsm.logged_in
    if not was_in:
        hsm.login(token.halves.pin())
    try:
        raw = hsm.signer.read_head(team.ws.anchors.registry_id())
    finally:
        if not was_in:
            hsm.logout()
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")


def forge_intent(team: Team, key: Key, **params: object) -> int:
    """A correctly chained `key.create` intent for `key` appended by the file's holder."""
    forger = Store.open(file_of(team))  # kmtui's own chaining code stands in for the forger's
    try:
        event = AuditLog(forger).append(
            "key.create",
            actor="alice+bob",
            outcome="intent",
            key_id=key.id,
            params={
                "label": key.label,
                "algorithm": key.algorithm,
                "purpose": key.purpose,
                "policy": key.policy,
                "exportable": False,
                "trusted": False,
                "cka_id": key.versions[0].cka_id.hex(),
                **params,
            },
        )
    finally:
        forger.close()
    return event.seq


def revoked_key(team: Team) -> str:
    key_id = create(team, "revoked-two")
    prepared = team.ws.prepare(OpKind.KEY_REVOKE, key_id, reason="key-compromise")
    team.ws.run(prepared, team.codes("alice", "bob"))
    return key_id


def delete_key_rows(team: Team, key_id: str) -> None:
    edit(team, "DELETE FROM key_versions WHERE key_id = ?", (key_id,))
    edit(team, "DELETE FROM keys WHERE id = ?", (key_id,))


def test_an_intent_forged_during_a_live_session_is_never_anchored_nor_finished(
    team: Team, softhsm_token: SoftHsm
) -> None:
    """Round two of the red team: an intent appended while kmtui runs was mirrored on the token
    by the session's next sync. Now the sync refuses to cover it, and reconciliation (which
    settles intents before its own sync) closes it untrusted without acting on it."""
    key_id = revoked_key(team)
    forged = forge_intent(team, team.ws.get_key(key_id))
    with pytest.raises(
        errors.AuditTampered, match=rf"AUDIT TRAIL FORGED: .*key.create at {forged}"
    ):
        team.ws.anchors.sync()  # what the session's next operation or log-out does
    assert head_seq(team, softhsm_token) < forged
    delete_key_rows(team, key_id)
    with pytest.raises(errors.AuditTampered, match="AUDIT TRAIL FORGED"):
        team.ws.reconciler.run()
    assert team.ws.store.keys.get(key_id) is None
    closing = team.ws.audit.events(action="key.create", key_id=key_id, limit=1)[0]
    assert closing.params["intent"] == forged and closing.params["error"] == "Unsealed"


def test_a_finished_intent_listed_again_as_open_is_not_finished_twice(team: Team) -> None:
    """Round two: a genuine (sealed) create intent put back into the kept table of open intents,
    the key's rows deleted: reconciliation reads the trail, sees it closed, and does nothing."""
    key_id = revoked_key(team)
    intent = team.ws.audit.events(action="key.create", key_id=key_id, limit=2)[-1]
    assert intent.outcome == "intent"
    delete_key_rows(team, key_id)
    edit(team, "INSERT INTO audit_open_intents (seq) VALUES (?)", (intent.seq,))
    report = team.ws.reconciler.run()
    assert not [c for c in report.completed if c["key_id"] == key_id]
    assert team.ws.store.keys.get(key_id) is None
    assert f"intent:{intent.seq}" in {f.label for f in report.findings}


def test_a_trigger_planted_in_the_file_stops_kmtui_from_opening_it(team: Team) -> None:
    """Round two: a trigger that silently drops some of kmtui's audit events (RAISE(IGNORE))."""
    edit(
        team,
        "CREATE TRIGGER zz_quiet BEFORE INSERT ON audit_events WHEN NEW.action = 'x' "
        "BEGIN SELECT RAISE(IGNORE); END",
    )
    with pytest.raises(errors.DatabaseCorrupt, match="triggers kmtui did not write: zz_quiet"):
        Store.open(file_of(team)).close()
    with pytest.raises(errors.DatabaseCorrupt, match="zz_quiet"):
        team.ws.store.check(full=True)  # the TUI's background check of an open store
