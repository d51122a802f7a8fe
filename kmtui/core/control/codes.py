"""One operator's code: verified against their sealed seed, counted once, failures lock.

A code counts once: its time step is committed as the operator's last accepted step before
`verify` returns, so neither a replay nor a crash between approval and operation reuses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from kmtui.core import errors
from kmtui.core.audit.log import AuditLog
from kmtui.core.audit.seals import Seals
from kmtui.core.control import totp
from kmtui.core.models import AuditEvent, Operator, OperatorState, Outcome
from kmtui.core.registry.db import Store
from kmtui.core.registry.seals import subject
from kmtui.core.token.session import Hsm, on_hsm_thread

MAX_FAILURES = 5


@dataclass(frozen=True)
class Attempt:
    """What an attempt was for, as the audit trail records it."""

    kind: str
    digest: str
    key_id: str = ""


@dataclass(frozen=True)
class Refusal:
    operator: str
    reason: str
    locked: bool = False  # locked before or by this attempt: the hint says how to recover


def refused(refusals: Sequence[Refusal], pending: bool = False) -> errors.ApproversRefused:
    """One refusal naming every failed approver and reason, and what to do next; never a code."""
    reasons = {r.reason for r in refusals}
    parts = ", ".join(f"{r.operator} ({errors.REFUSAL_REASONS[r.reason]})" for r in refusals)
    hints: list[str] = []
    if reasons & {"wrong", "replayed", "malformed"}:
        hints.append(
            "Each approver named waits for a new code in their authenticator app and enters its "
            "six digits."
        )
    if any(r.locked for r in refusals):
        hints.append(
            "Start the enrolment again (a new seed)."
            if pending
            else "A locked operator is unlocked by two other active operators "
            "(`kmtui operators unlock NAME`)."
        )
    if "unsealable" in reasons:
        hints.append(
            "Re-enrol that operator: their sealed seed was altered or belongs to another token."
        )
    if "inactive" in reasons:
        hints.append("Only active operators approve: finish their enrolment or ask another.")
    if reasons & {"role", "excluded"}:
        hints.append(
            "Ask operators whose role the policy allows and who are not the operation's subject."
        )
    if "duplicate" in reasons:
        hints.append("Each approval must come from a different person.")
    if "unknown" in reasons:
        hints.append("`kmtui operators list` shows the enrolled operators.")
    cls = errors.ApproversLocked if any(r.locked for r in refusals) else errors.ApproversRefused
    what = "Enrolment not confirmed" if pending else "Approval refused"
    return cls(
        f"{what}: {parts}.",
        " ".join(hints),
        tuple((r.operator, r.reason) for r in refusals),
    )


def _shown(name: object) -> str:
    return name if isinstance(name, str) and totp.valid_name(name) else "(invalid name)"


class Codes:
    """Checks codes against HSM-sealed seeds; every refusal and lockout is audited."""

    def __init__(
        self,
        store: Store,
        hsm: Hsm,
        audit: AuditLog,
        *,
        seals: Seals,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._seals = seals
        self._store = store
        self._records = store.operators
        self._hsm = hsm
        self._audit = audit
        self.clock = clock

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def outside_transaction(self, what: str) -> None:
        """An accepted step must be committed, not left in a caller's transaction to roll back."""
        if self._store.conn.in_transaction:
            raise RuntimeError(f"{what} must run outside a store transaction")

    def _matching_step(self, operator: Operator, code: str) -> int | None:
        """Unseal on the PKCS#11 thread, compare the window in constant time, drop the seed."""
        blob, aad, now = operator.sealed_seed, totp.seal_aad(operator.name), totp.step(self.clock())

        def check() -> int | None:
            seed = self._hsm.sealing.unseal(blob, aad)
            try:
                return totp.matching_step(seed, code, now)
            finally:
                del seed

        return on_hsm_thread(check)

    def verify(
        self, operator: Operator, code: object, attempt: Attempt, *, confirming: bool = False
    ) -> Refusal | None:
        """Check one code; its step is committed (failures reset) before None is returned."""
        expected = OperatorState.PENDING if confirming else OperatorState.ACTIVE
        if operator.state is OperatorState.LOCKED:
            return self.refuse(operator.name, "locked", attempt, locked=True)
        if operator.state is not expected:
            return self.refuse(operator.name, "inactive", attempt)
        if operator.failures >= MAX_FAILURES:  # a pending operator out of attempts
            return self.refuse(operator.name, "locked", attempt, locked=True)
        if not totp.well_formed(code):
            return self._fail(operator, "malformed", attempt)
        if not operator.sealed_seed:
            return self.refuse(operator.name, "unsealable", attempt)
        try:
            step = self._matching_step(operator, code)
        except (errors.NotLoggedIn, errors.TokenRemoved):
            raise
        except errors.HsmError:
            return self.refuse(operator.name, "unsealable", attempt)
        if step is None:
            return self._fail(operator, "wrong", attempt)
        if step <= operator.last_step:
            return self._fail(operator, "replayed", attempt)
        row = subject("operator", operator.name)
        with self._store.transaction() as conn:
            accepted = self._records.accept_step(conn, operator, step, expected)
            if accepted:
                event = self._audit.append(
                    "operator.confirmed" if confirming else "approval.code",
                    actor=operator.name,
                    outcome=Outcome.SUCCESS,
                    key_id=attempt.key_id,
                    params={
                        "operator": operator.name,
                        "role": str(operator.role),
                        "step": step,
                        "digest": attempt.digest,
                        "kind": attempt.kind,
                        "subject": row,
                    },
                )
                self._seals.seal(conn, [row], event.seq)
        if not accepted:
            return self._fail(operator, "replayed", attempt)
        return None

    def refuse(
        self, name: object, reason: str, attempt: Attempt, *, locked: bool = False
    ) -> Refusal:
        """Audit a refusal that does not count as a failed code."""
        self._refused(name, reason, attempt)
        return Refusal(_shown(name), reason, locked)

    def _refused(self, name: object, reason: str, attempt: Attempt, **more: str) -> AuditEvent:
        shown = _shown(name)
        return self._audit.append(
            "approval.refused",
            actor=shown,
            outcome=Outcome.REFUSED,
            key_id=attempt.key_id,
            params={
                "operator": shown,
                "reason": reason,
                "digest": attempt.digest,
                "kind": attempt.kind,
                **more,
            },
        )

    def _fail(self, operator: Operator, reason: str, attempt: Attempt) -> Refusal:
        """Count a failed code and audit it in one commit; the fifth in a row locks."""
        row = subject("operator", operator.name)
        with self._store.transaction() as conn:
            failures, state = self._records.count_failure(conn, operator.name)
            locked = failures >= MAX_FAILURES
            event = self._refused(operator.name, reason, attempt, subject=row)
            if locked and state == OperatorState.ACTIVE:
                self._records.set_state(conn, operator.name, OperatorState.LOCKED)
                event = self._audit.append(
                    "operator.locked",
                    actor=operator.name,
                    outcome=Outcome.INFO,
                    params={
                        "operator": operator.name,
                        "reason": "failures",
                        "failures": failures,
                        "subject": row,
                    },
                )
            self._seals.seal(conn, [row], event.seq)
        return Refusal(operator.name, reason, locked)
