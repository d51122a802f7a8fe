"""The people who approve: enrolment with an HSM-sealed seed, confirmation, lock, unlock, revoke.

Every change of an operator is itself dual-controlled (two OTHER operators approve), except the
enrolment of the workstation's first two, which the trail records as the bootstrap.
"""

from __future__ import annotations

from collections.abc import Sequence

from kmtui.core import errors
from kmtui.core.audit.log import AuditLog
from kmtui.core.audit.seals import Seals
from kmtui.core.control import totp
from kmtui.core.control.codes import Attempt, Codes, refused
from kmtui.core.control.gate import Executed, Gate, Prepared
from kmtui.core.control.operations import ApprovalInput, Operation, OpKind, Requirement
from kmtui.core.control.policies import PolicyBook
from kmtui.core.control.totp import Enrollment
from kmtui.core.models import Operator, OperatorState, Role, iso
from kmtui.core.registry.db import Store
from kmtui.core.registry.seals import subject
from kmtui.core.safetext import clean
from kmtui.core.token.session import Hsm

BOOTSTRAP_OPERATORS = 2
_TARGETS = {
    OpKind.OPERATOR_LOCK: OperatorState.LOCKED,
    OpKind.OPERATOR_UNLOCK: OperatorState.ACTIVE,
    OpKind.OPERATOR_REVOKE: OperatorState.REVOKED,
}


class Operators:
    """Enrolled operators and every change to them, through the gate."""

    def __init__(
        self,
        store: Store,
        hsm: Hsm,
        audit: AuditLog,
        codes: Codes,
        gate: Gate,
        policies: PolicyBook,
        seals: Seals,
    ) -> None:
        self._seals = seals
        self._store = store
        self._records = store.operators
        self._hsm = hsm
        self._audit = audit
        self._codes = codes
        self._gate = gate
        self._policies = policies

    def all(self) -> list[Operator]:
        return self._records.all()

    def get(self, name: str) -> Operator:
        totp.check_name(name)
        found = self._records.find(name)
        if found is None:
            raise errors.UsageError(
                f"There is no operator named {name!r}.",
                "`kmtui operators list` shows the enrolled operators.",
            )
        return found

    # -- through the gate ------------------------------------------------------------------

    def bootstrap_open(self, name: str = "") -> bool:
        """May `name` be enrolled without approvals? Only as one of the workstation's first two.

        Decided from the audit trail, not from current states: locking or revoking operators
        later (five wrong codes lock anyone) must never reopen enrolment without approvals.
        """
        if self._records.confirmations() >= BOOTSTRAP_OPERATORS:
            return False
        first = self._records.bootstrap_enrolments()
        return name in first or len(first) < BOOTSTRAP_OPERATORS

    def prepare(self, kind: OpKind, name: str, role: str = "") -> Prepared:
        if not totp.valid_name(name):  # refused before anyone spends an approval on it
            self.get(name)  # raises the message that says what a name may hold
        if kind == OpKind.OPERATOR_ENROLL and role not in {r.value for r in Role}:
            raise errors.UsageError(
                f"Unknown role {clean(role, 20)!r}.", "Roles: custodian, officer, auditor."
            )
        existing = self._records.find(name)
        operator = existing if kind != OpKind.OPERATOR_ENROLL else None
        if kind != OpKind.OPERATOR_ENROLL and existing is None:
            self.get(name)  # raises the unknown-operator error
        bootstrap = kind == OpKind.OPERATOR_ENROLL and self.bootstrap_open(name)
        # During the first ceremony a pending enrolment may be restarted (a failed scan).
        restart = bootstrap and existing is not None and existing.state == OperatorState.PENDING
        if kind == OpKind.OPERATOR_ENROLL and existing is not None and not restart:
            raise errors.UsageError(
                f"Operator {name!r} already exists.",
                "Use `kmtui operators reenroll` to give them a new seed.",
            )
        params = {
            "operator": name,
            "role": role or (str(operator.role) if operator else ""),
            "from_state": str(operator.state) if operator else "",
            "bootstrap": bootstrap,
        }
        op = Operation(kind, "", params)
        verb = str(kind).split(".")[-1]
        summary = f"{verb.capitalize()} operator {name!r}" + (f" as {role}" if role else "")
        rules = self._policies.rules("default")
        policy = () if bootstrap else (subject("policy", "default"),)
        return self._gate.prepared(
            op,
            summary,
            rules,
            quorum=0 if bootstrap else None,
            subject=subject("operator", name),
            depends=policy,
        )

    def run(
        self, prepared: Prepared, approvals: Sequence[ApprovalInput] = (), *, actor: str = "console"
    ) -> tuple[Executed, Enrollment | None]:
        """Enrol, re-enrol, lock, unlock or revoke an operator; two OTHER operators approve."""
        op = prepared.operation
        name = str(op.params["operator"])
        enrolled: list[Enrollment] = []
        bootstrap = bool(op.params.get("bootstrap")) and self.bootstrap_open(name)

        def work(facts: dict[str, object]) -> None:
            if op.kind in (OpKind.OPERATOR_ENROLL, OpKind.OPERATOR_REENROLL):
                enrolled.append(self.begin_enrollment(name, str(op.params["role"])))
                facts.update(state="pending", bootstrap=bootstrap)
            else:
                facts["state"] = str(self.set_state(name, _TARGETS[op.kind]).state)

        rules = self._policies.rules("default")
        requirement = (
            Requirement(quorum=0) if bootstrap else rules.requirement(op.kind, frozenset({name}))
        )
        executed = self._gate.execute(
            prepared,
            approvals,
            work,
            rules=rules,
            actor=actor,
            requirement=requirement,
            bootstrap=bootstrap,
        )
        return executed, (enrolled[0] if enrolled else None)

    # -- the changes themselves (called by the gate's work) ---------------------------------

    def begin_enrollment(self, name: str, role: Role | str) -> Enrollment:
        """A fresh seed for a new or re-enrolled operator, who stays pending until confirmed."""
        totp.check_name(name)
        role = totp.role_of(role)
        seed = totp.new_seed()
        fingerprint = totp.fingerprint(seed)
        shown = totp.enrollment(name, role, seed)
        sealed = self._hsm.sealing.seal(seed, totp.seal_aad(name))
        del seed

        def enrol() -> None:
            conn = self._store.conn
            existing = self._records.same_name(conn, name)
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
            if self._records.seed_holder(conn, fingerprint, name) is not None:
                raise errors.SeedInUse(
                    f"The seed for {name!r} is already enrolled for another operator.",
                    "One person holds one operator name: enrol again for a new seed, and "
                    "report this to the security officer.",
                )
            self._records.enrol(
                conn,
                name,
                role,
                iso(self._codes.now()),
                sealed,
                fingerprint,
                new=existing is None,
            )

        self._seals.write(
            enrol,
            "operator.seed-issued",
            subject("operator", name),
            actor=name,
            params={"operator": name, "role": str(role)},
        )
        return shown

    def confirm_enrollment(self, name: str, code: str) -> Operator:
        """The new operator's first code proves their authenticator holds the seed (audited as
        operator.confirmed); then they are active."""
        self._codes.outside_transaction("Operators.confirm_enrollment")
        self._seals.require([subject("operator", name)])
        operator = self.get(name)
        attempt = Attempt("operator.confirm", "")
        if operator.state is not OperatorState.PENDING:
            self._codes.refuse(operator.name, "inactive", attempt)
            raise errors.ApprovalRefused(
                f"Operator {name!r} has no enrolment waiting for confirmation "
                f"(it is {operator.state.value}).",
                "Start one with `kmtui operators enroll NAME`.",
            )
        refusal = self._codes.verify(operator, code, attempt, confirming=True)
        if refusal is not None:
            raise refused([refusal], pending=True)
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
        self._seals.write(
            lambda: self._records.set_state(self._store.conn, name, target),
            "operator.state-set",
            subject("operator", name),
            actor=name,
            params={"operator": name, "from_state": str(current), "to_state": str(target)},
        )
        return self.get(name)
