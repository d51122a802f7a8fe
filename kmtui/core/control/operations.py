"""What gets approved: an operation, its canonical form and digest, and what policy demands.

The digest is SHA-256 over the canonical JSON of every field that matters, including a nonce, so an
approval given for one operation can never be spent on another (or on a repeat of the same one).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class OpKind(StrEnum):
    KEY_CREATE = "key.create"
    KEY_ROTATE = "key.rotate"
    KEY_ACTIVATE = "key.activate"
    KEY_SUSPEND = "key.suspend"
    KEY_RESUME = "key.resume"
    KEY_DEACTIVATE = "key.deactivate"
    KEY_REVOKE = "key.revoke"
    KEY_SCHEDULE_DESTROY = "key.schedule-destroy"
    KEY_CANCEL_DESTROY = "key.cancel-destroy"
    KEY_DESTROY = "key.destroy"
    KEY_SELFCHECK = "key.selfcheck"
    KEY_EXPORT = "key.export"
    KEY_IMPORT = "key.import"
    POLICY_CHANGE = "policy.change"
    OPERATOR_ENROLL = "operator.enroll"
    OPERATOR_REENROLL = "operator.reenroll"
    OPERATOR_LOCK = "operator.lock"
    OPERATOR_UNLOCK = "operator.unlock"
    OPERATOR_REVOKE = "operator.revoke"
    RECONCILE_RESOLVE = "reconcile.resolve"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Operation:
    """One intended state change, as the approvers see it and as the audit trail records it."""

    kind: OpKind
    key_id: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))

    def canonical(self) -> str:
        return canonical_json(
            {
                "kind": str(self.kind),
                "key_id": self.key_id,
                "params": dict(self.params),
                "nonce": self.nonce,
            }
        )

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()

    @property
    def short_digest(self) -> str:
        """The first 8 hex digits, read aloud and compared on screen at a ceremony."""
        return self.digest[:8]


@dataclass(frozen=True)
class ApprovalInput:
    """One approver's claim: a name and the six digits from their authenticator."""

    operator: str
    code: str

    def __repr__(self) -> str:  # a code must never reach a log or a traceback
        return f"ApprovalInput(operator={self.operator!r}, code=<hidden>)"


@dataclass(frozen=True)
class Requirement:
    """What the policy demands of one operation's approvals."""

    quorum: int = 2
    roles: frozenset[str] = frozenset({"custodian", "officer"})
    expiry_seconds: int = 300
    exclude: frozenset[str] = frozenset()  # operators who may not approve (e.g. the subject)
