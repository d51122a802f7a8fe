"""The workstation: the rooms of kmtui.core assembled for the CLI and the TUI.

A thin facade. Each method hands its call to the room that does the work (kmtui/core/control for
the gate, policies, operators and the token session; kmtui/core/keys for key operations, queries,
distribution and reconciliation); the UI and the CLI reach the core only through here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kmtui.core.audit.anchors import Anchors
from kmtui.core.audit.log import AuditLog
from kmtui.core.audit.seals import Seals
from kmtui.core.control.approvals import Approvals
from kmtui.core.control.codes import Codes
from kmtui.core.control.gate import Executed, Gate, Prepared
from kmtui.core.control.operations import ApprovalInput, OpKind
from kmtui.core.control.operators import Operators
from kmtui.core.control.pin import Credential, PinHalves
from kmtui.core.control.policies import PolicyBook
from kmtui.core.control.policy import Rules
from kmtui.core.control.session import Session
from kmtui.core.control.totp import Enrollment
from kmtui.core.keys.components import ComponentKeys
from kmtui.core.keys.distribution import Distribution
from kmtui.core.keys.operations import KeyOperations
from kmtui.core.keys.queries import Due, KeyDetail, KeyQueries
from kmtui.core.keys.reconcile import Reconciler
from kmtui.core.keys.records import KeyRecords
from kmtui.core.models import AuditEvent, Key, Policy, TokenInfo
from kmtui.core.registry.db import Store
from kmtui.core.token.session import Hsm

__all__ = ["Executed", "Prepared", "Workstation"]


@dataclass
class Workstation:
    """The token, the registry and the audit trail of one workstation, and the rooms over them."""

    hsm: Hsm
    store: Store
    audit: AuditLog
    anchors: Anchors
    seals: Seals
    session: Session
    gate: Gate
    policies: PolicyBook
    operators: Operators
    keys: KeyOperations
    queries: KeyQueries
    records: KeyRecords
    distribution: Distribution
    components: ComponentKeys
    reconciler: Reconciler
    demo: bool = False

    @classmethod
    def assemble(
        cls,
        hsm: Hsm,
        store: Store,
        *,
        demo: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> Workstation:
        audit = AuditLog(store)
        seals = Seals(store, hsm, audit)
        anchors = Anchors(store, hsm, audit, seals)
        codes = Codes(store, hsm, audit, seals=seals, clock=clock)
        gate = Gate(store, audit, anchors, Approvals(store, audit, codes, seals), seals)
        policies = PolicyBook(store, gate)
        queries = KeyQueries(store, hsm, audit, policies)
        records = KeyRecords(store, policies)
        parts = (gate, store, hsm, policies, queries, records, seals)
        ws = cls(
            hsm=hsm,
            store=store,
            audit=audit,
            anchors=anchors,
            seals=seals,
            session=Session(hsm, audit, anchors, seals),
            gate=gate,
            policies=policies,
            operators=Operators(store, hsm, audit, codes, gate, policies, seals),
            keys=KeyOperations(*parts),
            queries=queries,
            records=records,
            distribution=Distribution(*parts),
            components=ComponentKeys(*parts),
            reconciler=Reconciler(store, hsm, audit, anchors, records, gate, policies, seals),
            demo=demo,
        )
        policies.ensure_defaults()
        return ws

    def close(self) -> None:
        self.hsm.close()
        self.store.close()

    # -- the token session ----------------------------------------------------------------

    def login(self, credential: Credential, actor: str = "console") -> TokenInfo:
        """Two custodians' PIN halves (or the token's protected path) open the token session."""
        return self.session.login(credential, actor)

    def set_user_pin(self, initial_pin: str, halves: PinHalves, actor: str = "init") -> None:
        self.session.set_user_pin(initial_pin, halves, actor)

    def user_pin_set(self) -> bool:
        return self.session.user_pin_set()

    def logout(self, actor: str = "console", reason: str = "") -> None:
        self.session.logout(actor, reason)

    # -- any prepared operation -----------------------------------------------------------

    def run(
        self,
        prepared: Prepared,
        approvals: Sequence[ApprovalInput] = (),
        *,
        actor: str = "console",
        so_login: Credential | None = None,
    ) -> Executed:
        """Execute a prepared key, policy or acknowledgement operation through the gate."""
        kind = prepared.operation.kind
        if kind == OpKind.POLICY_CHANGE:
            return self.policies.run_change(prepared, approvals, actor=actor)
        if kind == OpKind.RECONCILE_RESOLVE:
            return self.reconciler.run_acknowledge(prepared, approvals, actor=actor)
        return self.keys.run(prepared, approvals, actor=actor, so_login=so_login)

    def check_origin(
        self, kind: OpKind, policy_name: str = "default", *, actor: str = "console"
    ) -> None:
        """Refuse at once what the policy keeps to the console when the operator is not at it,
        before any form, PIN half or code (the gate asks again when the operation runs)."""
        self.gate.check_origin(self.rules(policy_name), kind, actor=actor)

    # -- keys -------------------------------------------------------------------------------

    def get_key(self, ref: str) -> Key:
        return self.queries.get(ref)

    def describe(self, key: Key) -> dict[str, Any]:
        return self.queries.describe(key)

    def detail(self, ref: str) -> KeyDetail:
        return self.queries.detail(ref)

    def last_use(self, key_id: str) -> AuditEvent | None:
        return self.queries.last_use(key_id)

    def due(self, within_days: int = 30) -> list[Due]:
        return self.queries.due(within_days)

    def prepare_create(self, **params: Any) -> Prepared:
        return self.keys.prepare_create(**params)

    def prepare(self, kind: OpKind, ref: str, **params: Any) -> Prepared:
        return self.keys.prepare(kind, ref, **params)

    def create_key(self, **params: Any) -> Key:
        return self.keys.create(**params)

    # -- policies ---------------------------------------------------------------------------

    def get_policy(self, name: str) -> Policy:
        return self.policies.get(name)

    def rules(self, name: str) -> Rules:
        return self.policies.rules(name)

    def idle_lock(self, configured_minutes: int) -> tuple[int, str]:
        return self.policies.idle_lock(configured_minutes)

    def prepare_policy_change(
        self, name: str, rules: dict[str, Any], description: str | None = None
    ) -> Prepared:
        return self.policies.prepare_change(name, rules, description)

    # -- operators --------------------------------------------------------------------------

    def bootstrap_open(self, name: str = "") -> bool:
        return self.operators.bootstrap_open(name)

    def prepare_operator(self, kind: OpKind, name: str, role: str = "") -> Prepared:
        return self.operators.prepare(kind, name, role)

    def run_operator(
        self, prepared: Prepared, approvals: Sequence[ApprovalInput] = (), *, actor: str = "console"
    ) -> tuple[Executed, Enrollment | None]:
        return self.operators.run(prepared, approvals, actor=actor)

    def confirm_operator(self, name: str, code: str) -> None:
        self.operators.confirm_enrollment(name, code)

    # -- reconciliation ---------------------------------------------------------------------

    def prepare_acknowledge(self, finding: str, note: str) -> Prepared:
        return self.reconciler.prepare_acknowledge(finding, note)
