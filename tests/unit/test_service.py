"""The gate and the key lifecycle, end to end on the real token with real operators."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from kmtui.core import errors
from kmtui.core.control import origin
from kmtui.core.control.operations import ApprovalInput, OpKind
from kmtui.core.keys.findings import FindingKind
from kmtui.core.keys.queries import KeyQueries
from kmtui.core.models import KeyState, Policy, iso, utcnow
from kmtui.core.registry.db import Store
from kmtui.core.token import templates
from kmtui.core.token.session import Hsm
from kmtui.service import Workstation
from tests.conftest import Clock, SoftHsm, Team, sealed_edit
from tests.origin_tree import Tree


def create(team: Team, label: str, algorithm: str = "AES-256", **kw: Any):
    return team.ws.create_key(
        label=label, algorithm=algorithm, approvals=team.codes("alice", "bob"), **kw
    )


def run(
    team: Team, kind: OpKind, ref: str, approvers: tuple[str, ...] = ("alice", "bob"), **params: Any
) -> dict[str, Any]:
    prepared = team.ws.prepare(kind, ref, **params)
    codes = team.codes(*approvers) if prepared.quorum else []
    return team.ws.run(prepared, codes)


def test_create_writes_intent_then_outcome_and_names_both_approvers(team: Team) -> None:
    ws = team.ws
    key = create(team, "orders")
    intent, outcome = ws.audit.events(newest_first=False, key_id=key.id, action="key.create")
    assert (intent.action, intent.outcome) == ("key.create", "intent")
    assert intent.actor == "alice+bob" and intent.params["approvers"] == ["alice", "bob"]
    assert (outcome.outcome, outcome.params["intent"]) == ("success", intent.seq)
    assert outcome.params["kcv"] == key.versions[0].kcv
    assert key.versions[0].cka_id == f"kmtui:{key.id}:1".encode()
    assert ws.hsm.objects.kcv(key.versions[0].cka_id) == key.versions[0].kcv
    assert key.rotation_due_at > key.activated_at


def test_create_without_approvals_is_refused_and_audited(team: Team) -> None:
    before = len(team.ws.hsm.objects.scan())
    with pytest.raises(errors.ApprovalRefused):
        team.ws.create_key(label="alone", algorithm="AES-256", approvals=team.codes("alice"))
    assert len(team.ws.hsm.objects.scan()) == before
    refused = team.ws.audit.events(action="key.create", limit=1)[0]
    assert refused.outcome == "refused"
    assert team.ws.store.keys.count() == 0


def test_the_same_codes_cannot_approve_a_second_operation(team: Team) -> None:
    codes = team.codes("alice", "bob")
    team.ws.create_key(label="first", algorithm="AES-128", approvals=codes)
    with pytest.raises(errors.ApprovalRefused):
        team.ws.create_key(label="second", algorithm="AES-128", approvals=codes)
    assert [k.label for k in team.ws.store.keys.page()] == ["first"]


def _lab_policy(ws: Workstation) -> None:
    """A policy without dual control for create, set up directly as a test fixture."""
    ws.store.policies.add(Policy("lab", "test only", {"quorum": {"key.create": 0}}, iso(utcnow())))


def test_nothing_reaches_the_token_when_the_intent_cannot_be_recorded(
    hsm: Hsm, tmp_path: Path, clock: Clock
) -> None:
    store = Store.open(tmp_path / "locked.db", busy_timeout_ms=50)
    ws = Workstation.assemble(hsm, store, clock=clock)
    _lab_policy(ws)
    before = len(hsm.objects.scan())
    blocker = sqlite3.connect(tmp_path / "locked.db")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(errors.KmtuiError) as info:
            ws.create_key(label="never", algorithm="AES-256", policy_name="lab")
        assert isinstance(info.value, errors.AuditError | errors.DatabaseLocked)
    finally:
        blocker.rollback()
        blocker.close()
    assert len(hsm.objects.scan()) == before
    assert ws.store.keys.count() == 0
    store.close()


def test_a_token_failure_is_recorded_as_the_outcome(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(team.ws.hsm, "_mechanisms", frozenset())
    with pytest.raises(errors.MechanismNotSupported):
        create(team, "ec", "EC-P384")
    last = team.ws.audit.events(limit=1)[0]
    assert (last.action, last.outcome) == ("key.create", "failure")
    assert last.params["error"] == "MechanismNotSupported"
    assert team.ws.store.keys.count() == 0


def test_a_key_that_reads_back_wrong_is_registered_as_quarantined(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = team.ws.hsm.objects.read_attributes

    def tampered(obj: Any, attrs: list[Attribute]) -> dict[Attribute, Any]:
        values = real(obj, attrs)
        values[Attribute.SENSITIVE] = False
        return values

    monkeypatch.setattr(team.ws.hsm.objects, "read_attributes", tampered)
    with pytest.raises(errors.TemplateMismatch):
        create(team, "odd", "AES-128")
    (key,) = team.ws.store.keys.find(label="odd")
    assert key.state == KeyState.QUARANTINED
    last = team.ws.audit.events(limit=1)[0]
    assert last.outcome == "failure" and last.params["quarantined"] is True


def test_a_crash_after_quarantining_a_key_is_closed_as_quarantined_not_as_untouched(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Crash(BaseException):  # like SIGKILL: nothing after it runs, no outcome is written
        pass

    real_read, real_write = team.ws.hsm.objects.read_attributes, team.ws.seals.write

    def tampered(obj: Any, attrs: list[Attribute]) -> dict[Attribute, Any]:
        values = real_read(obj, attrs)
        values[Attribute.SENSITIVE] = False
        return values

    def write_then_crash(*args: Any, **kwargs: Any) -> None:  # the quarantine is committed
        real_write(*args, **kwargs)
        raise Crash

    monkeypatch.setattr(team.ws.hsm.objects, "read_attributes", tampered)
    monkeypatch.setattr(team.ws.seals, "write", write_then_crash)
    with pytest.raises(Crash):
        create(team, "odd", "AES-128")
    monkeypatch.undo()
    (key,) = team.ws.store.keys.find(label="odd")
    assert key.state == KeyState.QUARANTINED
    intent = team.ws.audit.events(action="key.create", limit=1)[0]
    assert intent.outcome == "intent"
    report = team.ws.reconciler.run()
    closing = team.ws.audit.events(action="key.create", key_id=key.id, limit=1)[0]
    assert closing.outcome == "failure" and closing.params["intent"] == intent.seq
    assert closing.params["error"] == "TemplateMismatch" and closing.params["quarantined"]
    assert not [f for f in report.findings if f.kind == FindingKind.INTERRUPTED]
    assert any(c["key_id"] == key.id for c in report.completed)
    assert team.ws.store.keys.open_intents() == []


def test_keys_are_found_by_id_label_and_uri(team: Team) -> None:
    key = create(team, "by-ref", "EC-P256")
    uri = team.ws.describe(key)["versions"][0]["pkcs11_uri"]
    assert team.ws.get_key(key.id).id == key.id
    assert team.ws.get_key("by-ref").id == key.id
    assert team.ws.get_key(uri).id == key.id
    create(team, "by-ref", "AES-128")
    with pytest.raises(errors.UsageError, match="2 keys are labelled"):
        team.ws.get_key("by-ref")


@pytest.mark.parametrize("label", ["evil\x1b]0;x\x07", "bidi\u202e", "x" * 200])
def test_hostile_or_huge_labels_are_refused(team: Team, label: str) -> None:
    with pytest.raises(errors.UsageError):
        team.ws.prepare_create(label=label, algorithm="AES-256")


def test_policy_refuses_algorithms_it_does_not_allow(team: Team) -> None:
    with pytest.raises(errors.PolicyRefused, match="does not allow AES-128 keys to wrap"):
        team.ws.prepare_create(label="k", algorithm="AES-128", purpose="wrap", policy_name="kek")


def test_rotation_makes_a_new_current_version_and_deactivates_the_old(team: Team) -> None:
    key = create(team, "rotating")
    result = run(team, OpKind.KEY_ROTATE, key.id)
    rotated = team.ws.get_key(key.id)
    assert rotated.current_version == 2 and result.facts["version"] == 2
    v1, v2 = rotated.versions
    assert (v1.state, v2.state) == (KeyState.DEACTIVATED, KeyState.ACTIVE)
    assert v1.kcv != v2.kcv
    assert (
        team.ws.hsm.objects.kcv(v1.cka_id) == v1.kcv
        and team.ws.hsm.objects.kcv(v2.cka_id) == v2.kcv
    )
    assert team.ws.describe(rotated)["kcv"] == v2.kcv


def test_suspend_and_resume_need_no_quorum_but_are_audited(team: Team) -> None:
    key = create(team, "pausable")
    run(team, OpKind.KEY_SUSPEND, key.id, note="HSM firmware upgrade tonight")
    why = team.ws.audit.events(key_id=key.id, action="key.suspend", limit=2)[-1]
    assert (why.outcome, why.params["note"]) == ("intent", "HSM firmware upgrade tonight")
    assert team.ws.get_key(key.id).state == KeyState.SUSPENDED
    with pytest.raises(errors.PolicyRefused, match="cannot be rotated"):
        team.ws.prepare(OpKind.KEY_ROTATE, key.id)
    run(team, OpKind.KEY_RESUME, key.id)
    assert team.ws.get_key(key.id).state == KeyState.ACTIVE
    actions = [(e.action, e.outcome) for e in team.ws.audit.events(key_id=key.id)]
    assert ("key.suspend", "success") in actions and ("key.resume", "success") in actions


def test_revoke_for_compromise_lists_keys_that_depend_on_it(team: Team) -> None:
    kek = create(team, "kek", purpose="wrap")
    dek = create(team, "dek")
    team.ws.store.keys.link(dek.id, kek.id, "wrapped-by")
    result = run(
        team,
        OpKind.KEY_REVOKE,
        kek.id,
        reason="key-compromise",
        compromised_at="2026-11-01T00:00:00.000000Z",
    )
    revoked = team.ws.get_key(kek.id)
    assert revoked.state == KeyState.COMPROMISED
    assert revoked.compromised_at == "2026-11-01T00:00:00.000000Z"
    assert revoked.revocation_reason == "key-compromise"
    assert result.facts["dependents"] == [{"key_id": dek.id, "relation": "wrapped-by"}]


def test_revoke_superseded_deactivates(team: Team) -> None:
    key = create(team, "old")
    run(team, OpKind.KEY_REVOKE, key.id, reason="superseded")
    assert team.ws.get_key(key.id).state == KeyState.DEACTIVATED


def _expire_wait(ws: Workstation, key_id: str) -> None:
    """Let the waiting period pass (the registry's clock is real time)."""
    sealed_edit(
        ws,
        f"key:{key_id}",
        "UPDATE keys SET destroy_after = ? WHERE id = ?",
        ("2000-01-01T00:00:00.000000Z", key_id),
    )


def test_destruction_waits_can_be_cancelled_and_leaves_a_tombstone(team: Team) -> None:
    key = create(team, "doomed")
    run(team, OpKind.KEY_SUSPEND, key.id)
    run(team, OpKind.KEY_SCHEDULE_DESTROY, key.id)
    scheduled = team.ws.get_key(key.id)
    assert scheduled.state == KeyState.DESTROY_SCHEDULED
    assert scheduled.destroy_after > iso(utcnow())
    with pytest.raises(errors.PolicyRefused, match="may be destroyed only after"):
        team.ws.prepare(OpKind.KEY_DESTROY, key.id)
    run(team, OpKind.KEY_CANCEL_DESTROY, key.id)
    assert team.ws.get_key(key.id).state == KeyState.SUSPENDED  # back where it was
    run(team, OpKind.KEY_SCHEDULE_DESTROY, key.id)
    _expire_wait(team.ws, key.id)
    result = run(team, OpKind.KEY_DESTROY, key.id)
    tomb = team.ws.get_key(key.id)
    assert tomb.state == KeyState.DESTROYED
    assert result.facts["objects_destroyed"] == 1
    assert tomb.versions[0].kcv == key.versions[0].kcv  # the final KCV stays on record
    assert team.ws.hsm.objects.find(key.versions[0].cka_id) is None
    with pytest.raises(errors.PolicyRefused):
        team.ws.prepare(OpKind.KEY_SCHEDULE_DESTROY, key.id)


def test_a_compromised_key_is_destroyed_as_destroyed_compromised(team: Team) -> None:
    key = create(team, "leaked", "EC-P256")
    run(team, OpKind.KEY_REVOKE, key.id, reason="key-compromise")
    run(team, OpKind.KEY_SCHEDULE_DESTROY, key.id)
    _expire_wait(team.ws, key.id)
    result = run(team, OpKind.KEY_DESTROY, key.id)
    assert team.ws.get_key(key.id).state == KeyState.DESTROYED_COMPROMISED
    assert result.facts["objects_destroyed"] == 2  # public and private key


def test_an_operation_prepared_on_a_stale_state_is_refused(team: Team) -> None:
    key = create(team, "stale")
    prepared = team.ws.prepare(OpKind.KEY_ROTATE, key.id)
    run(team, OpKind.KEY_SUSPEND, key.id)
    with pytest.raises(errors.PolicyRefused, match="changed since"):
        team.ws.run(prepared, team.codes("alice", "bob"))


def test_console_only_operations_are_refused_over_ssh_and_audited(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = create(team, "remote")
    run(team, OpKind.KEY_SCHEDULE_DESTROY, key.id)
    _expire_wait(team.ws, key.id)
    monkeypatch.setenv("SSH_CONNECTION", "10.0.0.1 5555 10.0.0.2 22")
    with pytest.raises(errors.PolicyRefused, match="only at the workstation console"):
        run(team, OpKind.KEY_DESTROY, key.id)
    last = team.ws.audit.events(limit=1)[0]
    assert (last.action, last.outcome, last.params["via"]) == ("key.destroy", "refused", "ssh")
    assert "env=remote(SSH_CONNECTION)" in last.params["signals"]
    assert team.ws.hsm.objects.find(key.versions[0].cka_id) is not None


def test_ssh_with_its_variables_removed_is_refused_and_recorded_as_ssh(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's attack: `env -u SSH_CONNECTION -u SSH_TTY -u SSH_CLIENT kmtui ...` over SSH.
    No SSH variable is set; an sshd sits above this process."""
    key = create(team, "remote-env")
    run(team, OpKind.KEY_SCHEDULE_DESTROY, key.id)
    _expire_wait(team.ws, key.id)
    machine = Tree(tmp_path / "machine").process(1, "init", 0)
    machine.process(700, "sshd", 1, exe="/usr/sbin/sshd").process(os.getpid(), "python3", 700)
    monkeypatch.setattr(origin, "ROOTS", machine.roots)
    with pytest.raises(errors.PolicyRefused, match="only at the workstation console"):
        team.ws.prepare(OpKind.KEY_DESTROY, key.id)
    last = team.ws.audit.events(limit=1)[0]
    assert (last.action, last.outcome, last.params["via"]) == ("key.destroy", "refused", "ssh")
    assert last.params["signals"].startswith("ancestry=remote(sshd 700) ")
    assert team.ws.hsm.objects.find(key.versions[0].cka_id) is not None


def test_a_console_only_operation_over_ssh_is_refused_before_anyone_gives_a_code(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSH_CONNECTION", "10.0.0.1 5555 10.0.0.2 22")
    with pytest.raises(errors.PolicyRefused, match="only at the workstation console"):
        team.ws.prepare_policy_change("default", {"rotation_days": 90})
    with pytest.raises(errors.PolicyRefused, match="only at the workstation console"):
        team.ws.check_origin(OpKind.KEY_EXPORT, "default", actor="cli")  # before a form or PIN
    refused = team.ws.audit.events(limit=2)
    assert [(e.action, e.outcome, e.actor) for e in refused] == [
        ("key.export", "refused", "cli"),
        ("policy.change", "refused", "console"),
    ]
    assert all(e.params["via"] == "ssh" and "approvers" not in e.params for e in refused)
    assert team.ws.rules("default").rotation_days != 90


def test_the_gate_still_refuses_what_was_prepared_at_the_console_and_run_over_ssh(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = create(team, "moved")
    run(team, OpKind.KEY_SCHEDULE_DESTROY, key.id)
    _expire_wait(team.ws, key.id)
    prepared = team.ws.prepare(OpKind.KEY_DESTROY, key.id)
    codes = team.codes("alice", "bob")
    monkeypatch.setenv("SSH_TTY", "/dev/pts/3")
    with pytest.raises(errors.PolicyRefused, match="only at the workstation console"):
        team.ws.run(prepared, codes)
    assert team.ws.hsm.objects.find(key.versions[0].cka_id) is not None
    monkeypatch.delenv("SSH_TTY")
    team.ws.run(prepared, codes)  # the refusal spent no code: back at the console they still count
    assert team.ws.get_key(key.id).state == KeyState.DESTROYED


def test_every_event_records_the_signals_it_was_decided_from(team: Team) -> None:
    key = create(team, "recorded")
    intent, outcome = team.ws.audit.events(limit=2)[::-1]
    assert (intent.outcome, intent.key_id, outcome.key_id) == ("intent", key.id, key.id)
    assert intent.params["via"] == "console"
    assert intent.params["signals"] == "ancestry=none logind=none utmp=none env=none"


@pytest.mark.parametrize(
    ("algorithm", "purpose"),
    [
        ("AES-128", "encrypt"),
        ("AES-256", "wrap"),
        ("HMAC-SHA256", "mac"),
        ("RSA-2048", "sign"),
        ("EC-P384", "sign"),
    ],
)
def test_self_checks_pass_and_count_as_use(team: Team, algorithm: str, purpose: str) -> None:
    key = create(team, f"check-{algorithm}", algorithm, purpose=purpose)
    assert team.ws.last_use(key.id) is None
    result = run(team, OpKind.KEY_SELFCHECK, key.id)
    assert all(
        v == "pass" for k, v in result.facts["checks"].items() if k not in ("kcv", "fingerprint")
    )
    assert result.facts["checks"]["registry-match"] == "pass"
    assert team.ws.last_use(key.id).action == "key.selfcheck"


def test_policy_change_is_dual_controlled_and_validated_first(team: Team) -> None:
    with pytest.raises(errors.PolicyRefused, match="destroy_wait_days"):
        team.ws.prepare_policy_change("default", {"destroy_wait_days": 0})
    prepared = team.ws.prepare_policy_change("default", {"rotation_days": 90})
    assert prepared.quorum == 2
    with pytest.raises(errors.ApprovalRefused):
        team.ws.run(prepared, team.codes("alice"))
    team.ws.run(prepared, team.codes("alice", "carol"))
    assert team.ws.rules("default").rotation_days == 90


def test_due_lists_keys_whose_rotation_is_overdue(team: Team) -> None:
    key = create(team, "ancient")
    create(team, "fresh")
    team.ws.store.conn.execute(
        "UPDATE keys SET activated_at = ? WHERE id = ?", ("2020-01-01T00:00:00.000000Z", key.id)
    )
    due = team.ws.due(30)
    assert [d.label for d in due] == ["ancient"]
    assert due[0].overdue is True and "rotation_due" in due[0].dates


def test_reconcile_is_clean_after_normal_operations(team: Team) -> None:
    create(team, "a")
    key = create(team, "b", "EC-P256")
    run(team, OpKind.KEY_ROTATE, key.id)
    report = team.ws.reconciler.run()
    mine = [f for f in report.findings if f.key_id]
    assert mine == [] and report.matched >= 3
    assert not any(f.label.startswith("kmtui-audit-head") for f in report.findings)


def test_reconcile_flags_missing_unknown_and_substituted_objects(team: Team) -> None:
    gone = create(team, "gone")
    swapped = create(team, "swapped")
    team.ws.hsm.objects.destroy(gone.versions[0].cka_id)
    cka = swapped.versions[0].cka_id
    team.ws.hsm.objects.destroy(cka)
    stray = templates.cka_id("kstraystray01", 1)

    def substitute(session: Any) -> None:
        for cka_id in (cka, stray):
            session.generate_key(
                KeyType.AES,
                256,
                id=cka_id,
                store=True,
                label="impostor",
                template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
            )

    team.ws.hsm.call(substitute)
    report = team.ws.reconciler.run()
    kinds = {(f.kind, f.key_id) for f in report.findings}
    assert (FindingKind.MISSING, gone.id) in kinds
    assert (FindingKind.MISMATCH, swapped.id) in kinds or (FindingKind.DRIFT, swapped.id) in kinds
    assert any(f.kind == FindingKind.UNKNOWN and f.cka_id == stray.hex() for f in report.findings)
    assert team.ws.hsm.objects.find(stray, ObjectClass.SECRET_KEY) is not None  # never destroyed
    last = team.ws.audit.events(action="reconcile.run", limit=1)[0]
    # The suite's other tests leave objects on this shared token: past 200 the trail names the
    # first 200 findings and counts them all.
    assert last.outcome == "failure" and last.params["finding_count"] == len(report.findings)
    assert last.params["findings"] == [f.ident for f in report.findings][:200]
    # Acknowledging a finding is dual-controlled and removes it from the alarms.
    missing = next(f for f in report.findings if f.kind == FindingKind.MISSING)
    prepared = team.ws.prepare_acknowledge(missing.ident, "lost in the 2026 token swap")
    team.ws.run(prepared, team.codes("alice", "bob"))
    again = team.ws.reconciler.run()
    assert missing.ident not in {f.ident for f in again.findings}
    assert missing.ident in {f.ident for f in again.acknowledged}


def test_bootstrap_enrolment_closes_after_the_first_two_and_never_reopens(team: Team) -> None:
    assert not team.ws.bootstrap_open("dave")
    prepared = team.ws.prepare_operator(OpKind.OPERATOR_ENROLL, "dave", "custodian")
    assert prepared.quorum == 2
    with pytest.raises(errors.ApprovalRefused):
        team.ws.run_operator(prepared, ())
    # Lock bob by five wrong codes: enrolment without approvals must stay closed.
    for _ in range(5):
        alice, bob = team.codes("alice", "bob")
        wrong = ApprovalInput("bob", f"{(int(bob.code) + 1) % 1_000_000:06d}")
        with pytest.raises(errors.ApprovalRefused):
            team.ws.create_key(label="x", algorithm="AES-128", approvals=[alice, wrong])
    assert str(team.ws.operators.get("bob").state) == "locked"
    assert not team.ws.bootstrap_open("mallory")
    # Unlocking needs two OTHER operators.
    unlock = team.ws.prepare_operator(OpKind.OPERATOR_UNLOCK, "bob")
    with pytest.raises(errors.ApprovalRefused):
        team.ws.run_operator(unlock, team.codes("bob", "alice"))
    team.ws.run_operator(
        team.ws.prepare_operator(OpKind.OPERATOR_UNLOCK, "bob"), team.codes("alice", "carol")
    )
    assert str(team.ws.operators.get("bob").state) == "active"


def test_the_idle_lock_is_the_shortest_of_configuration_and_policies(team: Team) -> None:
    ws = team.ws
    assert ws.idle_lock(15) == (15, "configuration")
    names = [p.name for p in ws.store.policies.all()]
    for name, minutes in zip(names[:2], (9, 4), strict=True):
        rules = {**ws.get_policy(name).rules, "idle_lock_minutes": minutes}
        ws.run(ws.prepare_policy_change(name, rules), team.codes("alice", "bob"))
    assert ws.idle_lock(15) == (4, f"policy {names[1]}")
    assert ws.idle_lock(3) == (3, "configuration")  # a policy never lengthens the lock


def test_two_overlapping_log_outs_log_out_once(team: Team) -> None:
    ws = team.ws
    assert ws.hsm.logged_in
    errors_seen: list[BaseException] = []

    def log_out() -> None:
        try:
            ws.logout(reason="race")
        except BaseException as exc:
            errors_seen.append(exc)

    threads = [threading.Thread(target=log_out) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors_seen == []
    assert not ws.hsm.logged_in
    assert [e.params["reason"] for e in ws.audit.events(action="token.logout")] == ["race"]


def test_a_token_chosen_by_serial_still_names_its_label_in_pkcs11_uris(
    team: Team, softhsm_token: SoftHsm
) -> None:
    by_serial = Hsm(
        softhsm_token.module,
        token_serial=softhsm_token.serial,
        softhsm2_conf=str(softhsm_token.conf),
    )
    try:
        by_serial.open()
        assert by_serial.found_label == softhsm_token.label
        queries = KeyQueries(team.ws.store, by_serial, team.ws.audit, team.ws.policies)
        key = team.ws.create_key(
            label="by-serial", algorithm="AES-256", approvals=team.codes("alice", "bob")
        )
        assert key.current is not None
        link = queries.version_uri(key, key.current)
        assert f"token={softhsm_token.label};" in link
        assert queries.get(link).id == key.id
    finally:
        by_serial.close()


def test_log_out_closes_the_token_even_when_the_trail_cannot_be_written(team: Team) -> None:
    ws = team.ws
    assert ws.hsm.logged_in
    ws.store.damage = errors.DatabaseCorrupt("damaged for the test", "restore a backup")
    with pytest.raises(errors.AuditError, match=r"could not record 'token\.logout'"):
        ws.logout(reason="idle lock")
    assert not ws.hsm.logged_in  # the idle lock still locks


def test_a_log_in_the_trail_cannot_record_leaves_no_token_session_open(
    team: Team, softhsm_token: SoftHsm
) -> None:
    ws = team.ws
    ws.logout(reason="test")
    ws.store.damage = errors.DatabaseCorrupt("damaged for the test", "restore a backup")
    with pytest.raises(errors.AuditError):
        ws.login(softhsm_token.halves)
    assert not ws.hsm.logged_in  # nothing sits logged in behind a lock screen
    ws.store.damage = None
    ws.login(softhsm_token.halves)
    assert ws.hsm.logged_in
