"""The pure parts: the state machine and the policy rules."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kmtui.core import errors
from kmtui.core.control import lifecycle, policy
from kmtui.core.control.lifecycle import RevocationReason, Use
from kmtui.core.control.operations import OpKind
from kmtui.core.models import Key, KeyState, Policy, iso, utcnow

S = KeyState


@pytest.mark.parametrize(
    ("state", "kind", "target"),
    [
        (S.PRE_ACTIVATION, OpKind.KEY_ACTIVATE, S.ACTIVE),
        (S.ACTIVE, OpKind.KEY_SUSPEND, S.SUSPENDED),
        (S.SUSPENDED, OpKind.KEY_RESUME, S.ACTIVE),
        (S.ACTIVE, OpKind.KEY_DEACTIVATE, S.DEACTIVATED),
        (S.ACTIVE, OpKind.KEY_ROTATE, S.ACTIVE),
        (S.DEACTIVATED, OpKind.KEY_SCHEDULE_DESTROY, S.DESTROY_SCHEDULED),
        (S.DESTROY_SCHEDULED, OpKind.KEY_DESTROY, S.DESTROYED),
    ],
)
def test_legal_moves_lead_where_nist_says(state: KeyState, kind: OpKind, target: KeyState) -> None:
    assert lifecycle.next_state(state, kind) == target


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        (S.SUSPENDED, OpKind.KEY_ROTATE),
        (S.DEACTIVATED, OpKind.KEY_RESUME),
        (S.ACTIVE, OpKind.KEY_DESTROY),
        (S.DESTROYED, OpKind.KEY_SCHEDULE_DESTROY),
        (S.DESTROYED, OpKind.KEY_REVOKE),
        (S.COMPROMISED, OpKind.KEY_RESUME),
        (S.ACTIVE, OpKind.KEY_CANCEL_DESTROY),
    ],
)
def test_illegal_moves_are_refused_with_the_legal_ones_named(state: KeyState, kind: OpKind) -> None:
    with pytest.raises(errors.PolicyRefused) as info:
        lifecycle.next_state(state, kind)
    assert f"state {state}" in str(info.value)
    assert "possible operations" in str(info.value)


def test_every_state_transition_table_entry_is_reachable_and_destroyed_is_final() -> None:
    for (state, _kind), _target in lifecycle.TRANSITIONS.items():
        assert state not in (S.DESTROYED, S.DESTROYED_COMPROMISED)


@pytest.mark.parametrize("reason", list(RevocationReason))
def test_revocation_reason_decides_compromised_or_deactivated(reason: RevocationReason) -> None:
    target = lifecycle.next_state(S.ACTIVE, OpKind.KEY_REVOKE, reason=reason)
    assert target == (S.COMPROMISED if reason.compromise else S.DEACTIVATED)


def test_revoke_needs_a_reason_and_unknown_reasons_are_refused() -> None:
    with pytest.raises(errors.UsageError, match="needs a reason"):
        lifecycle.next_state(S.ACTIVE, OpKind.KEY_REVOKE)
    with pytest.raises(errors.UsageError, match="key-compromise"):
        lifecycle.parse_reason("lost it")
    assert lifecycle.parse_reason("Key Compromise") == RevocationReason.KEY_COMPROMISE


def test_cancel_destroy_returns_to_the_state_before_and_compromised_stays_marked() -> None:
    assert (
        lifecycle.next_state(
            S.DESTROY_SCHEDULED, OpKind.KEY_CANCEL_DESTROY, before_destroy=S.SUSPENDED
        )
        == S.SUSPENDED
    )
    assert (
        lifecycle.next_state(S.DESTROY_SCHEDULED, OpKind.KEY_DESTROY, compromised=True)
        == S.DESTROYED_COMPROMISED
    )


def test_uses_by_state() -> None:
    assert lifecycle.allows(S.ACTIVE, Use.ENCRYPT)
    assert not lifecycle.allows(S.DEACTIVATED, Use.ENCRYPT)
    assert lifecycle.allows(S.DEACTIVATED, Use.DECRYPT)
    assert lifecycle.allows(S.SUSPENDED, Use.VERIFY) and not lifecycle.allows(S.SUSPENDED, Use.SIGN)
    assert not any(lifecycle.allows(S.DESTROYED, use) for use in Use)
    with pytest.raises(errors.PolicyRefused, match="cannot be used to encrypt"):
        lifecycle.require_use(S.COMPROMISED, Use.ENCRYPT)


def test_shipped_policies_parse_and_default_dual_control_is_two() -> None:
    for shipped in policy.DEFAULT_POLICIES:
        rules = policy.parse(shipped)
        for kind in policy.DUAL_CONTROLLED:
            assert rules.requirement(kind).quorum == 2, (shipped.name, kind)
        assert rules.requirement(OpKind.KEY_SELFCHECK).quorum == 0
        assert rules.destroy_wait_days >= 1


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"destroy_wait_days": 0}, "destroy_wait_days"),
        ({"approval_expiry_seconds": 600}, "approval_expiry_seconds"),
        ({"algorithms": {"sign": ["AES-256"]}}, "cannot be used to sign"),
        ({"quorum": {"key.create": 9}}, "quorum"),
        ({"colour": "blue"}, "unknown rules"),
        ({"originator_usage_days": 800, "recipient_usage_days": 400}, "recipient_usage_days"),
        ({"retire_previous": "shred"}, "retire_previous"),
        ({"idle_lock_minutes": 0}, "idle_lock_minutes"),
        ({"idle_lock_minutes": 241}, "idle_lock_minutes"),
        ({"idle_lock_minutes": 5.5}, "idle_lock_minutes"),
        ({"idle_lock_minutes": True}, "idle_lock_minutes"),
        ({"idle_lock_minutes": "5"}, "idle_lock_minutes"),
    ],
)
def test_broken_policies_are_refused_naming_the_rule(rules: dict, message: str) -> None:
    with pytest.raises(errors.PolicyRefused, match=message):
        policy.parse(Policy("p", "", rules))


def test_idle_lock_is_unset_by_default_and_a_policy_may_set_it() -> None:
    assert policy.parse(Policy("p", "", {})).idle_lock_minutes is None
    assert policy.parse(Policy("p", "", {"idle_lock_minutes": None})).idle_lock_minutes is None
    assert policy.parse(Policy("p", "", {"idle_lock_minutes": 3})).idle_lock_minutes == 3


def test_create_checks_algorithm_purpose_and_exportability() -> None:
    kek = policy.parse(next(p for p in policy.DEFAULT_POLICIES if p.name == "kek"))
    with pytest.raises(errors.PolicyRefused, match="does not allow AES-128 keys to wrap"):
        policy.check_create(kek, "kek", "AES-128", "wrap", False)
    with pytest.raises(errors.PolicyRefused, match="exportable"):
        policy.check_create(kek, "kek", "AES-256", "wrap", True)
    policy.check_create(kek, "kek", "AES-256", "wrap", False)


def test_console_only_operations_are_refused_over_ssh() -> None:
    rules = policy.Rules()
    with pytest.raises(errors.PolicyRefused, match="only at the workstation console"):
        policy.check_origin(rules, OpKind.KEY_DESTROY, "ssh")
    policy.check_origin(rules, OpKind.KEY_DESTROY, "console")
    policy.check_origin(rules, OpKind.KEY_ROTATE, "ssh")


def test_cryptoperiods_are_computed_from_activation() -> None:
    start = utcnow() - timedelta(days=400)
    key = Key(
        "k1", "x", "AES-256", "encrypt", "default", S.ACTIVE, iso(start), activated_at=iso(start)
    )
    rules = policy.Rules(rotation_days=365, originator_usage_days=365, recipient_usage_days=730)
    assert policy.rotation_due(key, rules) == start + timedelta(days=365)
    assert policy.originator_end(key, rules) == start + timedelta(days=365)
    assert policy.recipient_end(key, rules) == start + timedelta(days=730)
