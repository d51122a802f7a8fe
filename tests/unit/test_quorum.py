"""Quorum cannot be lowered by accident: merged with the defaults, a floor of two, changes shown."""

from __future__ import annotations

import json

import pytest

from kmtui.core import errors
from kmtui.core.control import policy
from kmtui.core.control.operations import OpKind, Requirement
from kmtui.core.models import Policy
from tests.conftest import Team, sealed_edit


def test_a_policy_that_raises_one_quorum_leaves_every_other_at_its_default(team: Team) -> None:
    """The attack: `{"quorum": {"key.create": 3}}` once made every other quorum 0."""
    ws = team.ws
    key = ws.create_key(label="victim", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    ws.run(
        ws.prepare_policy_change("default", {"quorum": {"key.create": 3}}),
        team.codes("alice", "bob"),
    )
    for kind, params in (
        (OpKind.KEY_REVOKE, {"reason": "superseded"}),
        (OpKind.KEY_SCHEDULE_DESTROY, {}),
    ):
        prepared = ws.prepare(kind, key.id, **params)
        with pytest.raises(errors.ApprovalRefused, match="needs 2 approvals"):
            ws.run(prepared, [])
        assert prepared.quorum == 2, kind
    enrol = ws.prepare_operator(OpKind.OPERATOR_ENROLL, "mallory", "custodian")
    with pytest.raises(errors.ApprovalRefused, match="needs 2 approvals"):
        ws.run_operator(enrol, [])
    assert enrol.quorum == 2
    assert ws.get_key(key.id).state == "active"
    assert all(o.name != "mallory" for o in ws.operators.all())
    assert ws.rules("default").requirement(OpKind.KEY_CREATE).quorum == 3


def test_the_quorum_map_is_merged_entry_by_entry_with_the_defaults() -> None:
    rules = policy.parse(Policy("p", "", {"quorum": {"key.create": 3, "key.suspend": 1}}))
    assert rules.requirement(OpKind.KEY_CREATE).quorum == 3
    assert rules.requirement(OpKind.KEY_SUSPEND).quorum == 1  # a policy may ask more
    for kind in policy.DUAL_CONTROLLED:
        if kind != OpKind.KEY_CREATE:
            assert rules.requirement(kind).quorum == 2, kind
            assert rules.quorum[str(kind)] == 2, kind  # what `policies show` prints
    assert rules.requirement(OpKind.KEY_SELFCHECK).quorum == 0  # not sensitive


@pytest.mark.parametrize("asked", [0, 1])
def test_a_stored_quorum_below_the_floor_is_read_as_the_floor(team: Team, asked: int) -> None:
    """A policy stored before the floor (or written by hand) never yields fewer than two."""
    ws = team.ws
    sealed_edit(  # stored by an older kmtui: sealed, so believed, and still read as two
        ws,
        "policy:default",
        "UPDATE policies SET rules = ? WHERE name = 'default'",
        (json.dumps({"quorum": {"key.revoke": asked, "key.destroy": asked}}),),
    )
    rules = ws.rules("default")
    assert rules.requirement(OpKind.KEY_REVOKE).quorum == 2
    assert rules.quorum["key.destroy"] == 2
    key = ws.create_key(label="kept", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    prepared = ws.prepare(OpKind.KEY_REVOKE, key.id, reason="superseded")
    assert prepared.quorum == 2
    with pytest.raises(errors.ApprovalRefused, match="needs 2 approvals"):
        ws.run(prepared, team.codes("alice"))


def test_a_change_asking_fewer_than_two_for_a_sensitive_operation_is_refused(team: Team) -> None:
    with pytest.raises(errors.PolicyRefused, match=r"quorum key\.destroy, key\.revoke cannot be"):
        team.ws.prepare_policy_change("default", {"quorum": {"key.revoke": 1, "key.destroy": 0}})
    prepared = team.ws.prepare_policy_change("default", {"quorum": {"key.suspend": 0}})
    assert prepared.changes == ("quorum key.suspend: 0 (default) → 0",)


def test_the_gate_holds_the_floor_whatever_requirement_it_is_handed(team: Team) -> None:
    ws = team.ws
    key = ws.create_key(label="gated", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    prepared = ws.prepare(OpKind.KEY_REVOKE, key.id, reason="superseded")
    with pytest.raises(errors.ApprovalRefused, match="needs 2 approvals"):
        ws.gate.execute(
            prepared,
            [],
            lambda facts: None,
            rules=ws.rules("default"),
            actor="test",
            requirement=Requirement(quorum=0),
        )
    assert ws.get_key(key.id).state == "active"


def test_a_non_sensitive_operation_needs_what_the_policy_asks(team: Team) -> None:
    ws = team.ws
    key = ws.create_key(label="paused", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    assert ws.prepare(OpKind.KEY_SUSPEND, key.id).quorum == 0
    ws.run(
        ws.prepare_policy_change("default", {"quorum": {"key.suspend": 2}}),
        team.codes("alice", "bob"),
    )
    prepared = ws.prepare(OpKind.KEY_SUSPEND, key.id)
    assert prepared.quorum == 2
    with pytest.raises(errors.ApprovalRefused):
        ws.run(prepared, [])
    ws.run(prepared, team.codes("alice", "bob"))
    assert ws.get_key(key.id).state == "suspended"


def test_changes_list_each_touched_rule_old_to_new_with_effective_values() -> None:
    before = Policy("p", "old words", {"quorum": {"key.revoke": 2, "key.destroy": 0}})
    after = Policy(
        "p",
        "new words",
        {"quorum": {"key.create": 3}, "rotation_days": 90, "algorithms": {"wrap": ["AES-256"]}},
    )
    assert policy.changes(before, after) == [
        "description: 'old words' → 'new words'",
        "algorithms: encrypt: AES-128, AES-192, AES-256; mac: HMAC-SHA256; sign: RSA-2048, "
        "RSA-3072, RSA-4096, EC-P256, EC-P384; wrap: AES-256 (default) → wrap: AES-256",
        "quorum key.create: 2 (default) → 3",
        "quorum key.destroy: 2 (floor; the policy asks 0) → 2 (default)",
        "quorum key.revoke: 2 → 2 (default)",
        "rotation_days: 365 (default) → 90",
    ]
    assert policy.changes(after, after) == []
    assert policy.changes(Policy("p", "", {}), Policy("p", "", {"quorum": {}})) == [
        "quorum: every entry at its default, before and after"
    ]


def test_the_changes_are_signed_with_the_operation_and_recorded_in_its_intent(team: Team) -> None:
    ws = team.ws
    prepared = ws.prepare_policy_change("kek", {**ws.get_policy("kek").rules, "rotation_days": 9})
    assert prepared.changes == ("rotation_days: 730 → 9",)
    assert prepared.operation.params["changes"] == list(prepared.changes)  # inside the digest
    executed = ws.run(prepared, team.codes("alice", "bob"))
    (intent,) = [e for e in ws.audit.events(action="policy.change") if e.seq == executed.intent]
    assert intent.params["changes"] == ["rotation_days: 730 → 9"]
    assert intent.params["digest"] == prepared.operation.digest


def test_a_change_prepared_before_another_change_landed_is_refused(team: Team) -> None:
    ws = team.ws
    stale = ws.prepare_policy_change("default", {"rotation_days": 90})
    ws.run(ws.prepare_policy_change("default", {"rotation_days": 30}), team.codes("alice", "bob"))
    with pytest.raises(errors.PolicyRefused, match="changed since this change was prepared"):
        ws.run(stale, team.codes("alice", "bob"))
    assert ws.rules("default").rotation_days == 30
