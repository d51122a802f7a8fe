"""Approvals: who may approve, each code checked, approvals bound to one digest and spent once.

An approval is spent inside the operation's own transaction, so it executes at most once.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from kmtui.core import errors
from kmtui.core.audit.log import AuditLog
from kmtui.core.audit.seals import Seals
from kmtui.core.control import totp
from kmtui.core.control.codes import Attempt, Codes, Refusal, refused
from kmtui.core.control.operations import ApprovalInput, Operation, Requirement
from kmtui.core.models import Operator, OperatorState, Outcome, iso, parse_iso
from kmtui.core.registry.db import Store
from kmtui.core.registry.seals import subject


class Approvals:
    """The gate's approver: screens the approvers, checks their codes, records and spends."""

    def __init__(self, store: Store, audit: AuditLog, codes: Codes, seals: Seals) -> None:
        self._seals = seals
        self._store = store
        self._records = store.operators
        self._audit = audit
        self._codes = codes

    def approve(
        self, operation: Operation, inputs: Sequence[ApprovalInput], requirement: Requirement
    ) -> list[int]:
        """Check each approver and code; commit accepted steps; record approvals for the digest."""
        if requirement.quorum <= 0:
            return []
        self._codes.outside_transaction("Approvals.approve")
        attempt = Attempt(str(operation.kind), operation.digest, operation.key_id)
        approvers, refusals = self._screen(inputs, requirement, attempt)
        if refusals:
            raise refused(refusals)
        if len(approvers) < requirement.quorum:
            self._audit.append(
                "approval.refused",
                actor=",".join(op.name for op, _ in approvers) or "(none)",
                outcome=Outcome.REFUSED,
                key_id=attempt.key_id,
                params={
                    "operators": [op.name for op, _ in approvers],
                    "reason": "quorum",
                    "digest": attempt.digest,
                    "kind": attempt.kind,
                },
            )
            raise errors.ApprovalRefused(
                f"{operation.kind} needs {requirement.quorum} approvals from distinct operators; "
                f"{len(approvers)} given.",
                "Ask more active operators with an allowed role to enter their codes.",
            )
        self._seals.require(subject("operator", op.name) for op, _ in approvers)
        failed = [r for op, code in approvers if (r := self._codes.verify(op, code, attempt))]
        if failed:
            raise refused(failed)
        return self._record(operation, [op for op, _ in approvers], requirement, attempt)

    def _screen(
        self, inputs: Sequence[ApprovalInput], requirement: Requirement, attempt: Attempt
    ) -> tuple[list[tuple[Operator, object]], list[Refusal]]:
        """Who may approve at all, before any code is looked at (so none is spent in vain)."""
        approvers: list[tuple[Operator, object]] = []
        refusals: list[Refusal] = []
        seen: set[str] = set()
        for given in inputs:
            name = given.operator
            operator = self._find(name)
            reason = ""
            if operator is None:
                reason = "unknown"
            elif operator.name in seen:
                reason = "duplicate"
            elif operator.name in requirement.exclude:
                reason = "excluded"
            elif str(operator.role) not in requirement.roles:
                reason = "role"
            elif operator.state is OperatorState.LOCKED:
                reason = "locked"
            elif operator.state is not OperatorState.ACTIVE:
                reason = "inactive"
            if operator is not None:
                seen.add(operator.name)
            if reason:
                refusals.append(
                    self._codes.refuse(name, reason, attempt, locked=reason == "locked")
                )
            elif operator is not None:
                approvers.append((operator, given.code))
        return approvers, refusals

    def _find(self, name: object) -> Operator | None:
        if not (isinstance(name, str) and totp.valid_name(name)):
            return None
        return self._records.find(name)

    def _record(
        self,
        operation: Operation,
        approvers: Sequence[Operator],
        requirement: Requirement,
        attempt: Attempt,
    ) -> list[int]:
        approved = self._codes.now()
        expires = iso(approved + timedelta(seconds=requirement.expiry_seconds))
        ids: list[int] = []
        with self._store.transaction() as conn:
            for operator in approvers:
                ids.append(
                    self._records.add_approval(
                        conn, operation.digest, operator.name, iso(approved), expires
                    )
                )
                self._audit.append(
                    "approval.granted",
                    actor=operator.name,
                    outcome=Outcome.SUCCESS,
                    key_id=attempt.key_id,
                    params={
                        "operator": operator.name,
                        "digest": attempt.digest,
                        "kind": attempt.kind,
                        "approval_id": ids[-1],
                        "expires_at": expires,
                    },
                )
        return ids

    def consume(self, approval_ids: Sequence[int], operation: Operation) -> None:
        """Spend approvals inside the caller's transaction: each one once, in time, for this op.

        A refusal raises and so rolls the caller's transaction back; audit it after that.
        """
        now = self._codes.now()
        approvers: set[str] = set()
        with self._store.transaction() as conn:
            for approval_id in approval_ids:
                row = self._records.approval(conn, approval_id)
                reason = "unknown" if row is None else _unusable(row, operation, now, approvers)
                if reason or row is None:
                    raise _unusable_error(approval_id, reason or "unknown")
                approvers.add(str(row[1]))
                self._records.spend(conn, approval_id, iso(now))


def _unusable(row: tuple[Any, ...], operation: Operation, now: datetime, seen: set[str]) -> str:
    digest, operator, expires_at, executed_at, state = row
    if not hmac.compare_digest(str(digest).encode(), operation.digest.encode()):
        return "wrong-operation"
    if executed_at is not None:
        return "spent"
    try:
        expired = now > parse_iso(str(expires_at))
    except ValueError:
        expired = True  # an unreadable expiry fails closed
    if expired:
        return "expired"
    if state != OperatorState.ACTIVE:
        return "inactive"
    if operator in seen:
        return "duplicate"
    return ""


_UNUSABLE_TEXT = {
    "unknown": "does not exist",
    "wrong-operation": "was given for a different operation",
    "spent": "was already used",
    "expired": "has expired",
    "inactive": "came from an operator who is no longer active",
    "duplicate": "comes from an operator already counted",
}


def _unusable_error(approval_id: int, reason: str) -> errors.ApprovalUnusable:
    return errors.ApprovalUnusable(
        f"Approval {approval_id} {_UNUSABLE_TEXT[reason]}; nothing was done.",
        "Collect fresh approvals for this operation (each approval runs one operation once).",
        reason,
    )
