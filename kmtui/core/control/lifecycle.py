"""The key state machine (NIST SP 800-57 Part 1, section 7): pure, no I/O.

Which moves are legal, where each leads, and what each state lets a key be used for.
"""

from __future__ import annotations

from enum import StrEnum

from kmtui.core import errors
from kmtui.core.control.operations import OpKind
from kmtui.core.models import KeyState

S = KeyState


class RevocationReason(StrEnum):
    """RFC 5280 reason codes that apply to a symmetric or asymmetric key."""

    KEY_COMPROMISE = "key-compromise"
    CA_COMPROMISE = "ca-compromise"
    AFFILIATION_CHANGED = "affiliation-changed"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessation-of-operation"
    PRIVILEGE_WITHDRAWN = "privilege-withdrawn"

    @property
    def compromise(self) -> bool:
        return self in (RevocationReason.KEY_COMPROMISE, RevocationReason.CA_COMPROMISE)


class Use(StrEnum):
    """Cryptographic uses: 'apply' protects new data, 'process' handles existing data."""

    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    WRAP = "wrap"
    UNWRAP = "unwrap"
    SIGN = "sign"
    VERIFY = "verify"
    CHECK = "check"  # KCV / attribute read: changes nothing, allowed while the object exists


APPLY = frozenset({Use.ENCRYPT, Use.WRAP, Use.SIGN})
PROCESS = frozenset({Use.DECRYPT, Use.UNWRAP, Use.VERIFY})

ALLOWED_USES: dict[KeyState, frozenset[Use]] = {
    S.PRE_ACTIVATION: frozenset({Use.CHECK}),
    S.ACTIVE: APPLY | PROCESS | {Use.CHECK},
    S.SUSPENDED: PROCESS | {Use.CHECK},
    S.DEACTIVATED: PROCESS | {Use.CHECK},
    S.COMPROMISED: PROCESS | {Use.CHECK},  # only under controlled conditions (SP 800-57 7.3.5)
    S.DESTROY_SCHEDULED: frozenset({Use.CHECK}),
    S.DESTROYED: frozenset(),
    S.DESTROYED_COMPROMISED: frozenset(),
    S.QUARANTINED: frozenset({Use.CHECK}),
}

_LIVE = (S.PRE_ACTIVATION, S.ACTIVE, S.SUSPENDED, S.DEACTIVATED)

# (state, operation) -> next state. Revoke and cancel-destroy are resolved by `next_state`.
TRANSITIONS: dict[tuple[KeyState, OpKind], KeyState] = {
    (S.PRE_ACTIVATION, OpKind.KEY_ACTIVATE): S.ACTIVE,
    (S.ACTIVE, OpKind.KEY_ROTATE): S.ACTIVE,
    (S.ACTIVE, OpKind.KEY_SUSPEND): S.SUSPENDED,
    (S.SUSPENDED, OpKind.KEY_RESUME): S.ACTIVE,
    (S.ACTIVE, OpKind.KEY_DEACTIVATE): S.DEACTIVATED,
    (S.SUSPENDED, OpKind.KEY_DEACTIVATE): S.DEACTIVATED,
    **{(state, OpKind.KEY_REVOKE): S.DEACTIVATED for state in _LIVE},
    **{
        (state, OpKind.KEY_SCHEDULE_DESTROY): S.DESTROY_SCHEDULED
        for state in (*_LIVE, S.COMPROMISED, S.QUARANTINED)
    },
    (S.DESTROY_SCHEDULED, OpKind.KEY_CANCEL_DESTROY): S.DEACTIVATED,
    (S.DESTROY_SCHEDULED, OpKind.KEY_DESTROY): S.DESTROYED,
    **{(state, OpKind.KEY_SELFCHECK): state for state in S if ALLOWED_USES[state]},
}
# A compromised key may also be revoked again (to record a CA compromise after a key compromise).
TRANSITIONS[(S.COMPROMISED, OpKind.KEY_REVOKE)] = S.COMPROMISED


def next_state(
    state: KeyState,
    kind: OpKind,
    *,
    reason: RevocationReason | None = None,
    before_destroy: KeyState | None = None,
    compromised: bool = False,
) -> KeyState:
    """Where `kind` takes a key in `state`; PolicyRefused with the legal moves when it can't."""
    target = TRANSITIONS.get((state, kind))
    if target is None:
        legal = sorted(str(k) for (s, k) in TRANSITIONS if s == state and k != OpKind.KEY_SELFCHECK)
        raise errors.PolicyRefused(
            f"A key in state {state} cannot be {_verb(kind)}.",
            f"From {state} the possible operations are: {', '.join(legal) or 'none'}.",
        )
    if kind == OpKind.KEY_REVOKE:
        if reason is None:
            raise errors.UsageError("Revoking a key needs a reason.", _reasons_hint())
        return S.COMPROMISED if reason.compromise or state == S.COMPROMISED else S.DEACTIVATED
    if kind == OpKind.KEY_CANCEL_DESTROY:
        return before_destroy or target
    if kind == OpKind.KEY_DESTROY and compromised:
        return S.DESTROYED_COMPROMISED
    return target


def allows(state: KeyState, use: Use) -> bool:
    return use in ALLOWED_USES[state]


def require_use(state: KeyState, use: Use) -> None:
    if not allows(state, use):
        raise errors.PolicyRefused(
            f"A key in state {state} cannot be used to {use}.",
            "Only active keys protect new data; deactivated or compromised ones only process it.",
        )


def parse_reason(text: str) -> RevocationReason:
    try:
        return RevocationReason(text.strip().lower().replace("_", "-").replace(" ", "-"))
    except ValueError:
        raise errors.UsageError(f"Unknown revocation reason {text!r}.", _reasons_hint()) from None


def _reasons_hint() -> str:
    return "Reasons: " + ", ".join(r.value for r in RevocationReason) + "."


def _verb(kind: OpKind) -> str:
    return {
        OpKind.KEY_ACTIVATE: "activated",
        OpKind.KEY_ROTATE: "rotated",
        OpKind.KEY_SUSPEND: "suspended",
        OpKind.KEY_RESUME: "resumed",
        OpKind.KEY_DEACTIVATE: "deactivated",
        OpKind.KEY_REVOKE: "revoked",
        OpKind.KEY_SCHEDULE_DESTROY: "scheduled for destruction",
        OpKind.KEY_CANCEL_DESTROY: "taken off the destruction schedule",
        OpKind.KEY_DESTROY: "destroyed",
        OpKind.KEY_SELFCHECK: "checked",
    }.get(kind, str(kind))
