"""THE GATE: every state-changing operation runs through `Gate.execute`.

Order, always: policy check -> approvals (dual control) -> intent event committed together with the
spending of the approvals -> the token call -> registry update and outcome event committed together.
If the intent cannot be written, nothing reaches the HSM; if the process dies after the token call,
reconciliation finds the intent without an outcome and finishes or flags it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

from kmtui.core import errors
from kmtui.core.audit.anchors import Anchors
from kmtui.core.audit.log import AuditLog
from kmtui.core.audit.seals import Seals
from kmtui.core.control import policy
from kmtui.core.control.approvals import Approvals
from kmtui.core.control.operations import ApprovalInput, Operation, OpKind, Requirement
from kmtui.core.control.origin import session_context
from kmtui.core.models import Key, Outcome
from kmtui.core.registry.db import Store

Apply = Callable[[], None]
"""Registry writes of an operation, run in the same transaction as its outcome event."""
Work = Callable[[dict[str, Any]], Apply | None]
"""The token step of an operation: fills in the facts its outcome event records."""


@dataclass(frozen=True)
class Prepared:
    """An operation ready for approval: what the approvers are shown and what they approve."""

    operation: Operation
    summary: str
    key: Key | None = None
    quorum: int = 0
    subject: str = ""
    """The sealed registry row the operation writes (kmtui.core.audit.seals), if any."""
    depends: tuple[str, ...] = ()
    """Sealed rows it relies on (its key, its policy, a wrapping key): checked before approvals."""

    @property
    def changes(self) -> tuple[str, ...]:
        """What a policy change does, rule by rule (old → new), from what the approvers sign."""
        return tuple(str(line) for line in self.operation.params.get("changes", ()))

    @property
    def kcv(self) -> str:
        current = self.key.current if self.key else None
        return (current.kcv or current.fingerprint[:23]) if current else ""


@dataclass(frozen=True)
class Executed:
    """What an operation did: its intent and outcome events and the facts the outcome records."""

    intent: int
    audit_seq: int
    facts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape scripts read (`"result"` in `keys ... --json`)."""
        return {"intent": self.intent, **self.facts, "audit_seq": self.audit_seq}


class Gate:
    """Policy, approvals, intent, token, registry and outcome — in that order, every time."""

    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        anchors: Anchors,
        approvals: Approvals,
        seals: Seals,
    ) -> None:
        self._store = store
        self._audit = audit
        self._anchors = anchors
        self.approvals = approvals
        self._seals = seals

    def prepared(
        self,
        op: Operation,
        summary: str,
        rules: policy.Rules,
        *,
        key: Key | None = None,
        quorum: int | None = None,
        subject: str = "",
        depends: tuple[str, ...] = (),
    ) -> Prepared:
        """An operation ready for approval. One the policy keeps to the console, or one that
        relies on a registry row changed outside kmtui, is refused here, before anyone types a
        code; `execute` checks both again."""
        self.check_origin(rules, op.kind, op=op)
        try:
            self._seals.require((*depends, subject))
        except errors.RegistryChanged as exc:
            self._refused(op, "console", exc, session_context())
            raise
        required = rules.requirement(op.kind).quorum if quorum is None else quorum
        return Prepared(op, summary, key, required, subject, depends)

    def check_origin(
        self,
        rules: policy.Rules,
        kind: OpKind,
        *,
        actor: str = "console",
        op: Operation | None = None,
    ) -> None:
        """Refuse, and audit, an operation kept to the console when the operator is not at it:
        asked when the key is pressed, before any form, PIN half or code."""
        if str(kind) not in rules.console_only:
            return
        context = session_context()
        try:
            policy.check_origin(rules, kind, context["via"])
        except errors.PolicyRefused as exc:
            if op is not None:
                self._refused(op, actor, exc, context)
            else:
                self._audit.append(
                    str(kind),
                    actor=actor,
                    outcome=Outcome.REFUSED,
                    params={"error": type(exc).__name__, "message": exc.message, **context},
                )
            raise

    def execute(
        self,
        prepared: Prepared,
        approvals: Sequence[ApprovalInput],
        work: Work,
        *,
        rules: policy.Rules,
        actor: str,
        exclude: frozenset[str] = frozenset(),
        requirement: Requirement | None = None,
        bootstrap: bool = False,
    ) -> Executed:
        """Run one operation through policy, approvals, intent, token, registry and outcome.

        Whatever requirement a caller hands in, a sensitive operation needs the workstation's
        floor of distinct operators; only the bootstrap enrolment of the first two operators
        (which the caller decides from the trail) runs without approvals.
        Its events are mirrored on the token once, at the end (one token write per operation;
        an operation cut off by a crash is re-anchored by the next log-in).
        """
        kind = prepared.operation.kind
        demanded = requirement or rules.requirement(kind, exclude)
        if not (bootstrap and kind == OpKind.OPERATOR_ENROLL):
            demanded = replace(demanded, quorum=policy.floored(kind, demanded.quorum))
        try:
            return self._execute(
                prepared, approvals, work, rules=rules, actor=actor, requirement=demanded
            )
        finally:
            with suppress(errors.HsmError):  # the token may be what failed; keep that error
                self._anchors.sync()

    def _execute(
        self,
        prepared: Prepared,
        approvals: Sequence[ApprovalInput],
        work: Work,
        *,
        rules: policy.Rules,
        actor: str,
        requirement: Requirement,
    ) -> Executed:
        op = prepared.operation
        context = session_context()
        approvers = sorted({a.operator for a in approvals}) if requirement.quorum else []
        try:
            policy.check_origin(rules, op.kind, context["via"])
            self._seals.require((*prepared.depends, prepared.subject), actor=actor)
            granted = (
                self.approvals.approve(op, approvals, requirement) if requirement.quorum else []
            )
        except errors.KmtuiError as exc:
            self._refused(op, "+".join(approvers) or actor, exc, context)
            raise
        actor = "+".join(approvers) or actor
        params = {**op.params, **context, "digest": op.digest, "approvers": approvers}
        try:
            with self._store.transaction():
                self.approvals.consume(granted, op)
                intent = self._audit.append(
                    str(op.kind),
                    actor=actor,
                    outcome=Outcome.INTENT,
                    key_id=op.key_id,
                    params=params,
                )
        except errors.ApprovalRefused as exc:  # spent or expired: rolled back, so audit it now
            self._refused(op, actor, exc, context)
            raise
        facts: dict[str, Any] = {"intent": intent.seq}
        try:
            apply = work(facts)
        except Exception as exc:
            self._audit.append(
                str(op.kind),
                actor=actor,
                outcome=Outcome.FAILURE,
                key_id=op.key_id,
                params={
                    "intent": intent.seq,
                    "error": type(exc).__name__,
                    "message": exc.message if isinstance(exc, errors.KmtuiError) else "internal",
                    **facts,
                },
            )
            raise
        subject = {"subject": prepared.subject} if prepared.subject else {}
        with self._store.transaction() as conn:
            if apply is not None:
                apply()
            outcome = self._audit.append(
                str(op.kind),
                actor=actor,
                outcome=Outcome.SUCCESS,
                key_id=op.key_id,
                params={**facts, **subject},
            )
            self._seals.seal(conn, subject.values(), outcome.seq)
        return Executed(intent.seq, outcome.seq, {k: v for k, v in facts.items() if k != "intent"})

    def _refused(
        self, op: Operation, actor: str, exc: errors.KmtuiError, context: dict[str, str]
    ) -> None:
        self._refusal(str(op.kind), exc, actor, op.key_id, {"digest": op.digest, **context})

    def refused_early(self, action: str, exc: errors.KmtuiError, actor: str, **params: Any) -> None:
        """A refusal before the gate (a bad file, a mistyped component) is audited too: what was
        refused and why, never a value."""
        self._refusal(action, exc, actor, "", {**params, **session_context()})

    def _refusal(
        self,
        action: str,
        exc: errors.KmtuiError,
        actor: str,
        key_id: str,
        params: dict[str, Any],
    ) -> None:
        self._audit.append(
            action,
            actor=actor,
            outcome=Outcome.REFUSED,
            key_id=key_id,
            params={**params, "error": type(exc).__name__, "message": exc.message},
        )
