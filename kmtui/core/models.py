"""Plain records shared by every layer: keys, policies, operators, approvals, events, the token."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """UTC timestamps as fixed-width ISO 8601 text, so they sort as strings in SQLite."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def new_key_id() -> str:
    """Short, unambiguous, colon-free ids (they go into CKA_ID as `kmtui:<id>:<version>`)."""
    return "k" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


class KeyState(StrEnum):
    """NIST SP 800-57 Part 1 key states, plus kmtui's quarantine for keys the token got wrong."""

    PRE_ACTIVATION = "pre-activation"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DEACTIVATED = "deactivated"
    COMPROMISED = "compromised"
    DESTROY_SCHEDULED = "destroy-scheduled"
    DESTROYED = "destroyed"
    DESTROYED_COMPROMISED = "destroyed-compromised"
    QUARANTINED = "quarantined"


GONE = (KeyState.DESTROYED, KeyState.DESTROYED_COMPROMISED)
"""The states of a key whose token objects are destroyed: a tombstone in the registry."""


class OperatorState(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    LOCKED = "locked"
    REVOKED = "revoked"


class Role(StrEnum):
    CUSTODIAN = "custodian"
    OFFICER = "officer"
    AUDITOR = "auditor"


class Outcome(StrEnum):
    INTENT = "intent"
    SUCCESS = "success"
    FAILURE = "failure"
    REFUSED = "refused"
    INFO = "info"


@dataclass
class KeyVersion:
    key_id: str
    version: int
    state: KeyState
    cka_id: bytes
    token_serial: str
    created_at: str
    kcv: str = ""
    fingerprint: str = ""


@dataclass
class Key:
    id: str
    label: str
    algorithm: str
    purpose: str
    policy: str
    state: KeyState
    created_at: str
    exportable: bool = False
    current_version: int = 1
    owner: str = ""
    notes: str = ""
    tags: list[str] = field(default_factory=list)
    updated_at: str = ""
    versions: list[KeyVersion] = field(default_factory=list)
    activated_at: str = ""
    deactivated_at: str = ""
    rotation_due_at: str = ""
    destroy_after: str = ""
    state_before: str = ""  # the state to return to when a scheduled destruction is cancelled
    revocation_reason: str = ""
    compromised_at: str = ""

    @property
    def current(self) -> KeyVersion | None:
        return next((v for v in self.versions if v.version == self.current_version), None)


KEY_ORDERS = ("label", "state", "algorithm", "policy", "created_at", "rotation_due_at")
"""The fields a list of keys can be ordered by (the registry seeks an index for each)."""


def key_cursor(key: Key, order: str = "label") -> tuple[str, str]:
    """The cursor that continues a page of keys (store.keys.page) after `key` in `order`."""
    if order not in KEY_ORDERS:
        raise ValueError(f"cannot order keys by {order!r}")
    return str(getattr(key, order)), key.id


@dataclass
class Policy:
    name: str
    description: str = ""
    rules: dict[str, Any] = field(default_factory=dict)
    updated_at: str = ""


@dataclass
class Operator:
    name: str
    role: Role
    state: OperatorState
    enrolled_at: str
    sealed_seed: bytes = b""
    last_step: int = 0
    failures: int = 0


@dataclass(frozen=True)
class AuditEvent:
    seq: int
    ts: str
    actor: str
    action: str
    key_id: str
    params: dict[str, Any]
    outcome: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class TokenInfo:
    """The token as the token room reads it; here so the UI can show it without that room."""

    label: str
    serial: str
    manufacturer: str
    model: str
    slot_id: int
    slot_description: str
    hardware_version: str
    firmware_version: str
    library: str
    library_version: str
    flags: tuple[str, ...]
    logged_in: bool
