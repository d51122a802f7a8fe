"""What reconciliation reports: findings (each named, so it can be acknowledged) and the report."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class FindingKind(StrEnum):
    FOREIGN = "foreign-object"  # on the token, not created by kmtui
    UNKNOWN = "unregistered-object"  # kmtui-shaped CKA_ID the registry does not know
    MISSING = "missing-object"  # registry says it exists; the token has no such object
    DRIFT = "attribute-drift"  # e.g. SENSITIVE or EXTRACTABLE changed since creation
    MISMATCH = "check-mismatch"  # KCV or fingerprint differs: substituted key
    INTERRUPTED = "interrupted-operation"  # intent without outcome; the token step did not run
    UNFINISHED = "unfinished-destroy"  # destroy died half-way: some objects remain
    REGISTRY = "registry-changed"  # a sealed registry row not as kmtui wrote it
    UNSEALED = "unsealed-intent"  # an intent kmtui's gate did not write (no intent seal)
    IMPOSTOR = "impostor-object"  # under kmtui's name, but public or not an object kmtui made
    DUPLICATE = "duplicate-object"  # two objects kmtui could believe under one CKA_ID


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    cka_id: str  # hex
    detail: str
    key_id: str = ""
    version: int = 0
    label: str = ""
    nth: int = 0  # objects without a CKA_ID: their rank among those sharing class and label

    @property
    def ident(self) -> str:
        """Stable name of this finding, used to acknowledge it.

        Objects without a CKA_ID are named by class, label and rank: acknowledging N of them
        covers N, so one planted later under the same label still raises a finding.
        """
        where = self.cka_id or (
            "label-" + hashlib.sha256(self.label.encode()).hexdigest()[:12] + f"-{self.nth}"
        )
        if self.cka_id and self.nth:  # several impostors under one CKA_ID
            where += f"-{self.nth}"
        return f"{self.kind}:{self.key_id or '-'}:{self.version}:{where}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.ident,
            "kind": str(self.kind),
            "key_id": self.key_id,
            "version": self.version,
            "cka_id": self.cka_id,
            "label": self.label,
            "detail": self.detail,
        }


@dataclass
class Report:
    matched: int = 0
    completed: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    acknowledged: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def finished(self, intent: dict[str, Any]) -> None:
        """An interrupted operation reconciliation finished."""
        self.completed.append(
            {
                "intent": intent["seq"],
                "action": str(intent["action"]),
                "key_id": str(intent["key_id"]),
            }
        )

    def changed_outside(self, what: str, key_id: str = "", *, label: str) -> None:
        """A registry row, or a table kmtui keeps, not as kmtui wrote it."""
        self.findings.append(
            Finding(
                FindingKind.REGISTRY,
                "",
                f"REGISTRY CHANGED OUTSIDE KMTUI: {what}",
                key_id,
                label=label,
            )
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "matched": self.matched,
            "completed": self.completed,
            "findings": [f.as_dict() for f in self.findings],
            "acknowledged": [f.as_dict() for f in self.acknowledged],
        }
