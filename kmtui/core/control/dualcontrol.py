"""Dual control: operators, TOTP seeds sealed by the HSM, approvals bound to an operation digest.

A code counts once: its time step is committed as the operator's last accepted step before
`approve` returns, so neither a replay nor a crash between approval and operation reuses it. An
approval is spent inside the operation's own transaction, so it executes at most once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

import pyotp
import segno

from kmtui.core import errors
from kmtui.core.audit.log import AuditLog
from kmtui.core.control.operations import ApprovalInput, Operation, Requirement
from kmtui.core.models import Operator, OperatorState, Outcome, Role, iso, parse_iso
from kmtui.core.registry.store import Store
from kmtui.core.safetext import clean
from kmtui.core.token.session import Hsm, on_hsm_thread

ISSUER = "kmtui"
DIGITS = 6
STEP_SECONDS = 30
WINDOW_STEPS = 1  # codes of the previous and the next step are accepted too (clock drift)
SEED_BYTES = 20  # 160 bits, the length RFC 4226 recommends for HMAC-SHA-1
MAX_FAILURES = 5

_CODE = re.compile(r"[0-9]{6}")  # a literal range: ASCII digits only, unlike \d
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_FINGERPRINT_KEY = b"kmtui seed fingerprint v1"
_OPERATOR_COLUMNS = "name, role, state, enrolled_at, sealed_seed, last_step, failures"


_REASON_TEXT = {
    "wrong": "wrong code",
    "replayed": "code already used",
    "malformed": "not six digits",
    "locked": "locked",
    "inactive": "not active",
    "unknown": "not an enrolled operator",
    "duplicate": "counted twice",
    "excluded": "may not approve this operation",
    "role": "role may not approve this operation",
    "unsealable": "seed failed its integrity check",
}


# --- errors ------------------------------------------------------------------------------------


class SeedInUse(errors.ApprovalRefused):
    """The new seed is already held by another operator: one person, one name."""


class ApproversRefused(errors.ApprovalRefused):
    """Some approvers were refused; `refusals` pairs each name with its reason, never a code."""

    def __init__(self, message: str, hint: str, refusals: tuple[tuple[str, str], ...]) -> None:
        super().__init__(message, hint)
        self.refusals = refusals


class ApproversLocked(ApproversRefused, errors.OperatorLocked):
    """At least one approver is locked, or was locked by this attempt."""


class ApprovalUnusable(errors.ApprovalRefused):
    """An approval cannot be spent: `reason` is unknown, wrong-operation, spent, expired, ..."""

    def __init__(self, message: str, hint: str, reason: str) -> None:
        super().__init__(message, hint)
        self.reason = reason


# --- pure helpers ------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Enrollment:
    """Shown once to the new operator; the URI and the QR code both carry the seed."""

    name: str
    role: Role
    otpauth_uri: str = field(repr=False)
    qr_text: str = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"Enrollment(name={self.name!r}, role={str(self.role)!r}, "
            "otpauth_uri=<hidden>, qr_text=<hidden>)"
        )

    def __str__(self) -> str:
        return repr(self)


def _totp(seed_b32: str) -> pyotp.TOTP:
    return pyotp.TOTP(seed_b32, digits=DIGITS, digest=hashlib.sha1, interval=STEP_SECONDS)


def _step(at: float) -> int:
    return int(at // STEP_SECONDS)


def current_code(seed_b32: str, at: float) -> str:
    """The code an authenticator shows at `at` (tests, and the demo's stand-in for phones)."""
    return _totp(seed_b32).generate_otp(_step(at))


def valid_name(name: object) -> bool:
    """1-32 of [A-Za-z0-9._-], starting alphanumeric and not all digits (a code look-alike)."""
    return (
        isinstance(name, str)
        and len(name) <= 32
        and _NAME.fullmatch(name) is not None
        and not name.isdigit()
    )


def _check_name(name: str) -> None:
    if not valid_name(name):
        raise errors.UsageError(
            f"{_shown(name)} is not a valid operator name.",
            "Use 1 to 32 letters, digits, '.', '_' or '-', starting with a letter or digit and "
            "not only digits.",
        )


def _shown(name: object) -> str:
    """A name as it may appear in a message or the audit trail (an invalid one is not echoed)."""
    return repr(name) if valid_name(name) else "(invalid name)"


def _well_formed(code: object) -> TypeGuard[str]:
    return isinstance(code, str) and len(code) == DIGITS and _CODE.fullmatch(code) is not None


def _aad(name: str) -> bytes:
    """Binds a sealed seed to its operator: a blob copied to another row does not unseal."""
    return b"kmtui-totp:" + name.encode("ascii")


def _new_seed() -> bytes:
    return secrets.token_bytes(SEED_BYTES)


def _fingerprint(seed: bytes) -> str:
    """Detects a seed already in use without storing it (160 random bits: no guessing back)."""
    return hmac.new(_FINGERPRINT_KEY, seed, hashlib.sha256).hexdigest()


def _qr_text(uri: str) -> str:
    """Half-block QR code, plain text (no escape sequences) so any terminal or widget shows it."""
    out = io.StringIO()
    segno.make(uri, error="m").terminal(out=out, compact=True)
    return out.getvalue()


def _role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise errors.UsageError(
            f"{clean(role, 40)!r} is not a role.",
            f"Choose one of: {', '.join(r.value for r in Role)}.",
        ) from None


def _operator(row: dict[str, Any]) -> Operator:
    return Operator(
        name=row["name"],
        role=Role(row["role"]),
        state=OperatorState(row["state"]),
        enrolled_at=row["enrolled_at"],
        sealed_seed=bytes(row["sealed_seed"] or b""),
        last_step=int(row["last_step"]),
        failures=int(row["failures"]),
    )


@dataclass(frozen=True)
class _Context:
    """What an attempt was for, as the audit trail records it."""

    kind: str
    digest: str
    key_id: str = ""


@dataclass(frozen=True)
class _Refusal:
    operator: str
    reason: str
    locked: bool = False  # locked before or by this attempt: the hint says how to recover


def _refused(refusals: Sequence[_Refusal], pending: bool = False) -> ApproversRefused:
    """One refusal naming every failed approver and reason, and what to do next; never a code."""
    reasons = {r.reason for r in refusals}
    parts = ", ".join(f"{r.operator} ({_REASON_TEXT[r.reason]})" for r in refusals)
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
    cls = ApproversLocked if any(r.locked for r in refusals) else ApproversRefused
    what = "Enrolment not confirmed" if pending else "Approval refused"
    return cls(
        f"{what}: {parts}.",
        " ".join(hints),
        tuple((r.operator, r.reason) for r in refusals),
    )


# --- the approver ------------------------------------------------------------------------------


class DualControl:
    """Operators with HSM-sealed TOTP seeds; approvals bound to one digest and spent once."""

    def __init__(
        self,
        store: Store,
        hsm: Hsm,
        audit: AuditLog,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._hsm = hsm
        self._audit = audit
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _outside_transaction(self, what: str) -> None:
        """An accepted step must be committed, not left in a caller's transaction to roll back."""
        if self._store.conn.in_transaction:
            raise RuntimeError(f"DualControl.{what} must run outside a store transaction")

    # -- operators ------------------------------------------------------------------------------

    def operators(self) -> list[Operator]:
        return [
            _operator(row)
            for row in self._store.rows(
                f"SELECT {_OPERATOR_COLUMNS} FROM operators ORDER BY name"  # noqa: S608
            )
        ]

    def _find(self, name: str) -> Operator | None:
        if not valid_name(name):
            return None
        rows = self._store.rows(
            f"SELECT {_OPERATOR_COLUMNS} FROM operators WHERE name = ?",  # noqa: S608
            (name,),
        )
        return _operator(rows[0]) if rows else None

    def get(self, name: str) -> Operator:
        _check_name(name)
        found = self._find(name)
        if found is None:
            raise errors.UsageError(
                f"There is no operator named {name!r}.",
                "`kmtui operators list` shows the enrolled operators.",
            )
        return found

    # -- enrolment ------------------------------------------------------------------------------

    def begin_enrollment(self, name: str, role: Role | str) -> Enrollment:
        """A fresh seed for a new or re-enrolled operator, who stays pending until confirmed."""
        _check_name(name)
        role = _role(role)
        seed = _new_seed()
        fingerprint = _fingerprint(seed)
        uri = _totp(base64.b32encode(seed).decode("ascii")).provisioning_uri(
            name=name, issuer_name=ISSUER
        )
        sealed = self._hsm.sealing.seal(seed, _aad(name))
        del seed
        with self._store.transaction() as conn:
            existing = conn.execute(
                "SELECT name, state FROM operators WHERE name = ? COLLATE NOCASE", (name,)
            ).fetchone()
            if existing is not None and existing[0] != name:
                raise errors.UsageError(
                    f"An operator named {existing[0]!r} already exists; names that differ only "
                    "in case are refused.",
                    "Choose a clearly different name, or re-enrol that operator by its name.",
                )
            if existing is not None and existing[1] == OperatorState.REVOKED:
                raise errors.UsageError(
                    f"Operator {name!r} is revoked, and revoked names are not reused.",
                    "Enrol the person under a new name.",
                )
            holder = conn.execute(
                "SELECT name FROM operators WHERE seed_fingerprint = ? AND name != ?",
                (fingerprint, name),
            ).fetchone()
            if holder is not None:
                raise SeedInUse(
                    f"The seed for {name!r} is already enrolled for another operator.",
                    "One person holds one operator name: enrol again for a new seed, and "
                    "report this to the security officer.",
                )
            values = (
                str(role),
                OperatorState.PENDING.value,
                iso(self._now()),
                sealed,
                fingerprint,
                name,
            )
            if existing is None:
                conn.execute(
                    "INSERT INTO operators (role, state, enrolled_at, sealed_seed, "
                    "seed_fingerprint, name) VALUES (?, ?, ?, ?, ?, ?)",
                    values,
                )
            else:  # re-enrolment keeps last_step: no step already accepted becomes valid again
                conn.execute(
                    "UPDATE operators SET role = ?, state = ?, enrolled_at = ?, sealed_seed = ?, "
                    "seed_fingerprint = ?, failures = 0 WHERE name = ?",
                    values,
                )
        return Enrollment(name, role, uri, _qr_text(uri))

    def confirm_enrollment(self, name: str, code: str) -> Operator:
        """The new operator proves their authenticator holds the seed; then they are active."""
        self._outside_transaction("confirm_enrollment")
        operator = self.get(name)
        context = _Context("operator.confirm", "")
        if operator.state is not OperatorState.PENDING:
            self._refuse(operator.name, "inactive", context)
            raise errors.ApprovalRefused(
                f"Operator {name!r} has no enrolment waiting for confirmation "
                f"(it is {operator.state.value}).",
                "Start one with `kmtui operators enroll NAME`.",
            )
        refusal = self._verify(operator, code, context, confirming=True)
        if refusal is not None:
            raise _refused([refusal], pending=True)
        return self.get(name)

    def set_state(self, name: str, state: OperatorState | str) -> Operator:
        """Lock, unlock (resets failures) or revoke; activation happens only by confirmation."""
        operator = self.get(name)
        target = OperatorState(state)
        current = operator.state
        if target is OperatorState.PENDING:
            raise errors.UsageError(
                "An operator becomes pending only by enrolment.",
                "Use `kmtui operators enroll NAME` to give them a new seed.",
            )
        if current is OperatorState.REVOKED and target is not OperatorState.REVOKED:
            raise errors.UsageError(
                f"Operator {name!r} is revoked; revocation is final.",
                "Enrol the person under a new name.",
            )
        if current is OperatorState.PENDING and target is not OperatorState.REVOKED:
            raise errors.UsageError(
                f"Operator {name!r} has not confirmed their enrolment yet.",
                "They confirm it with a code from their authenticator; or revoke the enrolment.",
            )
        with self._store.transaction() as conn:
            if target is OperatorState.ACTIVE:
                conn.execute(
                    "UPDATE operators SET state = ?, failures = 0 WHERE name = ?",
                    (target.value, name),
                )
            elif target is OperatorState.REVOKED:  # the fingerprint stays: the seed is burnt
                conn.execute(
                    "UPDATE operators SET state = ?, sealed_seed = x'' WHERE name = ?",
                    (target.value, name),
                )
            else:
                conn.execute("UPDATE operators SET state = ? WHERE name = ?", (target.value, name))
        return self.get(name)

    # -- codes ----------------------------------------------------------------------------------

    def _matching_step(self, operator: Operator, code: str) -> int | None:
        """Unseal on the PKCS#11 thread, compare the window in constant time, drop the seed."""
        blob, aad, now = operator.sealed_seed, _aad(operator.name), _step(self._clock())
        given = code.encode("ascii")

        def check() -> int | None:
            seed = self._hsm.sealing.unseal(blob, aad)
            try:
                totp = _totp(base64.b32encode(seed).decode("ascii"))
                matched: int | None = None
                for step in range(now - WINDOW_STEPS, now + WINDOW_STEPS + 1):
                    if hmac.compare_digest(totp.generate_otp(step).encode("ascii"), given):
                        matched = step
                return matched
            finally:
                del seed

        return on_hsm_thread(check)

    def _verify(
        self, operator: Operator, code: object, context: _Context, *, confirming: bool = False
    ) -> _Refusal | None:
        """Check one code; its step is committed (failures reset) before None is returned."""
        expected = OperatorState.PENDING if confirming else OperatorState.ACTIVE
        if operator.state is OperatorState.LOCKED:
            return self._refuse(operator.name, "locked", context, locked=True)
        if operator.state is not expected:
            return self._refuse(operator.name, "inactive", context)
        if operator.failures >= MAX_FAILURES:  # a pending operator out of attempts
            return self._refuse(operator.name, "locked", context, locked=True)
        if not _well_formed(code):
            return self._fail(operator, "malformed", context)
        if not operator.sealed_seed:
            return self._refuse(operator.name, "unsealable", context)
        try:
            step = self._matching_step(operator, code)
        except (errors.NotLoggedIn, errors.TokenRemoved):
            raise
        except errors.HsmError:
            return self._refuse(operator.name, "unsealable", context)
        if step is None:
            return self._fail(operator, "wrong", context)
        if step <= operator.last_step:
            return self._fail(operator, "replayed", context)
        with self._store.transaction() as conn:
            # Compare-and-set: a concurrent acceptance, lock or re-enrolment wins over this one.
            accepted = conn.execute(
                "UPDATE operators SET last_step = ?, failures = 0, state = ? "
                "WHERE name = ? AND state = ? AND last_step < ? AND sealed_seed = ?",
                (
                    step,
                    OperatorState.ACTIVE.value,
                    operator.name,
                    expected.value,
                    step,
                    operator.sealed_seed,
                ),
            ).rowcount
            if accepted == 1 and confirming:
                self._audit.append(
                    "operator.confirmed",
                    actor=operator.name,
                    outcome=Outcome.SUCCESS,
                    params={"operator": operator.name, "role": str(operator.role), "step": step},
                )
        if accepted != 1:
            return self._fail(operator, "replayed", context)
        return None

    def _refuse(
        self, name: object, reason: str, context: _Context, *, locked: bool = False
    ) -> _Refusal:
        """Audit a refusal that does not count as a failed code."""
        shown = name if isinstance(name, str) and valid_name(name) else "(invalid name)"
        self._audit.append(
            "approval.refused",
            actor=shown,
            outcome=Outcome.REFUSED,
            key_id=context.key_id,
            params={
                "operator": shown,
                "reason": reason,
                "digest": context.digest,
                "kind": context.kind,
            },
        )
        return _Refusal(shown, reason, locked)

    def _fail(self, operator: Operator, reason: str, context: _Context) -> _Refusal:
        """Count a failed code and audit it in one commit; the fifth in a row locks."""
        with self._store.transaction() as conn:
            row = conn.execute(
                "UPDATE operators SET failures = failures + 1 WHERE name = ? "
                "RETURNING failures, state",
                (operator.name,),
            ).fetchone()
            failures, state = (int(row[0]), str(row[1])) if row else (0, "")
            locked = failures >= MAX_FAILURES
            refusal = self._refuse(operator.name, reason, context, locked=locked)
            if locked and state == OperatorState.ACTIVE:
                conn.execute(
                    "UPDATE operators SET state = ? WHERE name = ?",
                    (OperatorState.LOCKED.value, operator.name),
                )
                self._audit.append(
                    "operator.locked",
                    actor=operator.name,
                    outcome=Outcome.INFO,
                    params={"operator": operator.name, "reason": "failures", "failures": failures},
                )
        return refusal

    # -- approvals ------------------------------------------------------------------------------

    def approve(
        self, operation: Operation, inputs: Sequence[ApprovalInput], requirement: Requirement
    ) -> list[int]:
        """Check each approver and code; commit accepted steps; record approvals for the digest."""
        if requirement.quorum <= 0:
            return []
        self._outside_transaction("approve")
        context = _Context(str(operation.kind), operation.digest, operation.key_id)
        approvers, refusals = self._screen(inputs, requirement, context)
        if refusals:
            raise _refused(refusals)
        if len(approvers) < requirement.quorum:
            self._audit.append(
                "approval.refused",
                actor=",".join(op.name for op, _ in approvers) or "(none)",
                outcome=Outcome.REFUSED,
                key_id=context.key_id,
                params={
                    "operators": [op.name for op, _ in approvers],
                    "reason": "quorum",
                    "digest": context.digest,
                    "kind": context.kind,
                },
            )
            raise errors.ApprovalRefused(
                f"{operation.kind} needs {requirement.quorum} approvals from distinct operators; "
                f"{len(approvers)} given.",
                "Ask more active operators with an allowed role to enter their codes.",
            )
        failed = [refusal for op, code in approvers if (refusal := self._verify(op, code, context))]
        if failed:
            raise _refused(failed)
        return self._record(operation, [op for op, _ in approvers], requirement, context)

    def _screen(
        self, inputs: Sequence[ApprovalInput], requirement: Requirement, context: _Context
    ) -> tuple[list[tuple[Operator, object]], list[_Refusal]]:
        """Who may approve at all, before any code is looked at (so none is spent in vain)."""
        approvers: list[tuple[Operator, object]] = []
        refusals: list[_Refusal] = []
        seen: set[str] = set()
        for given in inputs:
            name = given.operator
            operator = self._find(name) if isinstance(name, str) else None
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
                refusals.append(self._refuse(name, reason, context, locked=reason == "locked"))
            elif operator is not None:
                approvers.append((operator, given.code))
        return approvers, refusals

    def _record(
        self,
        operation: Operation,
        approvers: Sequence[Operator],
        requirement: Requirement,
        context: _Context,
    ) -> list[int]:
        approved = self._now()
        expires = iso(approved + timedelta(seconds=requirement.expiry_seconds))
        ids: list[int] = []
        with self._store.transaction() as conn:
            for operator in approvers:
                row = conn.execute(
                    "INSERT INTO approvals (digest, operator, approved_at, expires_at) "
                    "VALUES (?, ?, ?, ?) RETURNING id",
                    (operation.digest, operator.name, iso(approved), expires),
                ).fetchone()
                ids.append(int(row[0]))
                self._audit.append(
                    "approval.granted",
                    actor=operator.name,
                    outcome=Outcome.SUCCESS,
                    key_id=context.key_id,
                    params={
                        "operator": operator.name,
                        "digest": context.digest,
                        "kind": context.kind,
                        "approval_id": ids[-1],
                        "expires_at": expires,
                    },
                )
        return ids

    def consume(self, approval_ids: Sequence[int], operation: Operation) -> None:
        """Spend approvals inside the caller's transaction: each one once, in time, for this op.

        A refusal raises and so rolls the caller's transaction back; audit it after that.
        """
        now = self._now()
        approvers: set[str] = set()
        with self._store.transaction() as conn:
            for approval_id in approval_ids:
                row = conn.execute(
                    "SELECT a.digest, a.operator, a.expires_at, a.executed_at, o.state "
                    "FROM approvals AS a LEFT JOIN operators AS o ON o.name = a.operator "
                    "WHERE a.id = ?",
                    (approval_id,),
                ).fetchone()
                reason = "unknown" if row is None else _unusable(row, operation, now, approvers)
                if reason:
                    raise _unusable_error(approval_id, reason)
                approvers.add(str(row[1]))
                conn.execute(
                    "UPDATE approvals SET executed_at = ? WHERE id = ?", (iso(now), approval_id)
                )


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


def _unusable_error(approval_id: int, reason: str) -> ApprovalUnusable:
    return ApprovalUnusable(
        f"Approval {approval_id} {_UNUSABLE_TEXT[reason]}; nothing was done.",
        "Collect fresh approvals for this operation (each approval runs one operation once).",
        reason,
    )
