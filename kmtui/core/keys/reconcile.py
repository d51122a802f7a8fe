"""Reconciliation: does the token agree with the registry, and did every operation finish?

Run at start and on demand. Operations whose intent was committed but whose outcome was not (the
process died) are finished when the token shows their HSM step happened, and closed as interrupted
when it did not; nothing is ever done twice and nothing on the token is destroyed. Everything else
that disagrees is a finding: audited, shown, and resolved only by a dual-controlled acknowledgement.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from kmtui.core import errors
from kmtui.core.audit.anchors import Anchors
from kmtui.core.audit.log import AuditLog
from kmtui.core.audit.seals import Seals
from kmtui.core.control.gate import Apply, Executed, Gate, Prepared
from kmtui.core.control.operations import ApprovalInput, Operation, OpKind
from kmtui.core.control.policies import PolicyBook
from kmtui.core.keys.compare import TokenComparison, believed, by_id, holds_key
from kmtui.core.keys.findings import Finding, FindingKind, Report
from kmtui.core.keys.records import KeyRecords
from kmtui.core.models import GONE, AuditEvent, KeyState, KeyVersion, Outcome, iso, utcnow
from kmtui.core.registry.db import Store
from kmtui.core.registry.seals import subject
from kmtui.core.safetext import clean
from kmtui.core.token import templates
from kmtui.core.token.records import ObjectInfo
from kmtui.core.token.session import Hsm


class Reconciler:
    """Compares the token with the registry and settles interrupted operations."""

    def __init__(
        self,
        store: Store,
        hsm: Hsm,
        audit: AuditLog,
        anchors: Anchors,
        records: KeyRecords,
        gate: Gate,
        policies: PolicyBook,
        seals: Seals,
    ) -> None:
        self._seals = seals
        self._comparison = TokenComparison(store, hsm)
        self._store = store
        self._hsm = hsm
        self._audit = audit
        self._anchors = anchors
        self._records = records
        self._gate = gate
        self._policies = policies

    def _sealed_acks(self, report: Report) -> set[str]:
        """Acknowledgements as kmtui wrote them; one edited or planted outside kmtui hides
        nothing and is itself a finding."""
        acked = self._store.keys.acknowledged_findings()
        bad = {p.subject: p for p in self._seals.problems([subject("ack", a) for a in acked])}
        for name, problem in sorted(bad.items()):
            report.changed_outside(f"{problem}.", label=name)
        return {a for a in acked if subject("ack", a) not in bad}

    def open_intents(self) -> list[dict[str, Any]]:
        """Intent events that no outcome refers to (the process stopped between the two).

        Read from the table the store keeps as events are appended, not from a scan of the trail.
        """
        return self._store.keys.open_intents()

    def prepare_acknowledge(self, finding: str, note: str) -> Prepared:
        if not note.strip():
            raise errors.UsageError("Say why the finding is acknowledged.", "Use --note TEXT.")
        op = Operation(OpKind.RECONCILE_RESOLVE, "", {"finding": finding, "note": note})
        summary = f"Acknowledge reconciliation finding {clean(finding, 80)}: {clean(note, 80)}"
        policy = (subject("policy", "default"),)
        return self._gate.prepared(
            op,
            summary,
            self._policies.rules("default"),
            subject=subject("ack", finding),
            depends=policy,
        )

    def run_acknowledge(
        self, prepared: Prepared, approvals: Sequence[ApprovalInput], *, actor: str
    ) -> Executed:
        """Record a finding as acknowledged (with why), in the transaction of its outcome."""
        p = prepared.operation.params

        def work(facts: dict[str, Any]) -> Apply:
            seq = int(facts["intent"])
            return lambda: self._store.keys.acknowledge_finding(
                str(p["finding"]), str(p["note"]), seq
            )

        rules = self._policies.rules("default")
        return self._gate.execute(prepared, approvals, work, rules=rules, actor=actor)

    def run(self, *, actor: str = "reconcile") -> Report:
        """Finish or close interrupted operations, then compare token and registry."""
        report = Report()
        serial = self._hsm.serial
        scanned = self._hsm.objects.scan()
        for intent in self._store.keys.open_intents():
            self._settle(intent, by_id(believed(scanned)), serial, report, actor)
        scanned = self._hsm.objects.scan() if report.completed else scanned
        self._comparison.compare(scanned, serial, report)
        acked = self._sealed_acks(report)
        report.acknowledged = [f for f in report.findings if f.ident in acked]
        report.findings = [f for f in report.findings if f.ident not in acked]
        self._audit.append(
            "reconcile.run",
            actor=actor,
            outcome=Outcome.SUCCESS if report.clean else Outcome.FAILURE,
            params={
                "matched": report.matched,
                "completed": len(report.completed),
                "findings": [f.ident for f in report.findings][:200],  # the first 200 named
                "finding_count": len(report.findings),
                "acknowledged": len(report.acknowledged),
            },
        )
        self._anchors.sync()
        return report

    def _settle(
        self,
        intent: dict[str, Any],
        objects: dict[bytes, list[ObjectInfo]],
        serial: str,
        report: Report,
        actor: str,
    ) -> None:
        """Finish an operation whose token step happened; close it as interrupted otherwise."""
        action, key_id = str(intent["action"]), str(intent["key_id"])
        params = json.loads(intent["params"])
        closed = self._store.keys.closed(intent)
        if closed:  # the kept table lists an intent the trail closed: edited by hand
            report.changed_outside(
                f"the table of open intents lists event {intent['seq']}, which event {closed} "
                "closed. Nothing was done.",
                key_id,
                label=f"intent:{intent['seq']}",
            )
            return
        if not self._seals.event_sealed(int(intent["seq"])):
            self._untrusted(intent, params, report, actor)
            return
        key = self._store.keys.get(key_id) if key_id else None
        if key is not None and not self._intact(key_id, report):
            return
        created = action == OpKind.KEY_CREATE and key is None
        if created and self._recover_create(intent, params, objects, serial, actor):
            report.finished(intent)
            return
        if action == OpKind.KEY_CREATE and key is not None and key.state == KeyState.QUARANTINED:
            # The token made the key, it read back wrong, and it was registered as quarantined
            # (committed before the failure outcome, which the crash then lost).
            self._close(
                intent,
                actor,
                Outcome.FAILURE,
                error="TemplateMismatch",
                recovered=True,
                quarantined=True,
                message="the key was made with attributes other than asked; it stays quarantined",
            )
            report.finished(intent)
            return
        if action == OpKind.KEY_ROTATE and key is not None:
            number = int(params["new_version"])
            cka_id = templates.cka_id(key_id, number)
            registered = any(v.version == number for v in key.versions)
            if holds_key(objects, cka_id, key.algorithm, key.tags) and not registered:
                check = self._comparison.observed(key.algorithm, cka_id)
                apply, _ = self._records.rotation(key, number, check, serial)
                with self._store.transaction():
                    apply()
                    self._settled(intent, actor, recovered=True, version=number, check=check)
                report.finished(intent)
                return
        if action == OpKind.KEY_DESTROY and key is not None and key.state not in GONE:
            remaining = [v for v in key.versions if v.cka_id in objects]
            if not remaining:
                target = KeyState(str(params["to_state"]))
                with self._store.transaction():
                    self._records.destruction(key, target)()
                    self._settled(intent, actor, recovered=True, state=str(target))
                report.finished(intent)
                return
            if len(remaining) < len(key.versions):
                self._abandon(
                    intent,
                    actor,
                    report,
                    Finding(
                        FindingKind.UNFINISHED,
                        remaining[0].cka_id.hex(),
                        f"Destruction stopped half-way: {len(remaining)} version(s) remain; "
                        "run the destroy again with fresh approvals.",
                        key_id,
                        remaining[0].version,
                        key.label,
                    ),
                    error="Interrupted",
                    message=f"{len(remaining)} of {len(key.versions)} versions remain",
                )
                return
        self._abandon(
            intent,
            actor,
            report,
            Finding(
                FindingKind.INTERRUPTED,
                str(params.get("cka_id", "")),
                f"{action} (audit event {intent['seq']}) stopped before changing anything; its "
                "approvals are spent, so run it again with fresh ones.",
                key_id,
                0,
                str(params.get("label", "")),
            ),
            error="Interrupted",
            message="the operation stopped before it changed anything; run it again",
        )

    def _close(
        self, intent: dict[str, Any], actor: str, outcome: Outcome, **params: Any
    ) -> AuditEvent:
        return self._audit.append(
            str(intent["action"]),
            actor=actor,
            outcome=outcome,
            key_id=str(intent["key_id"]),
            params={"intent": intent["seq"], **params},
        )

    def _recover_create(
        self,
        intent: dict[str, Any],
        params: dict[str, Any],
        objects: dict[bytes, list[ObjectInfo]],
        serial: str,
        actor: str,
    ) -> bool:
        """Register a key the token made before the process stopped: only the object of this
        intent's key id, version 1, of the asked algorithm, for a key the registry never held."""
        key_id, algorithm = str(intent["key_id"]), str(params["algorithm"])
        cka_id = templates.cka_id(key_id, 1)
        if not (
            bytes.fromhex(params["cka_id"]) == cka_id
            and holds_key(objects, cka_id, algorithm)
            and self._never_written(key_id)
        ):
            return False
        check = self._comparison.observed(algorithm, cka_id)
        symmetric = templates.ALGORITHMS[algorithm].symmetric
        version = KeyVersion(
            key_id,
            1,
            KeyState.ACTIVE,
            cka_id,
            serial,
            iso(utcnow()),
            kcv=check if symmetric else "",
            fingerprint="" if symmetric else check,
        )
        created = self._records.created(key_id, params, version)
        with self._store.transaction():
            self._store.keys.add(created)
            self._settled(intent, actor, recovered=True, version=1, check=check)
        return True

    def _abandon(
        self, intent: dict[str, Any], actor: str, report: Report, finding: Finding, **close: Any
    ) -> None:
        """Close an intent as failed (nothing more is done for it) and say why in a finding."""
        self._close(intent, actor, Outcome.FAILURE, **close)
        report.findings.append(finding)

    def _intact(self, key_id: str, report: Report) -> bool:
        """The key's row is as kmtui sealed it; else a finding, and nothing is finished on it."""
        problems = self._seals.problems([subject("key", key_id)])
        for problem in problems:
            report.changed_outside(f"{problem}.", key_id, label=problem.subject)
        return not problems

    def _never_written(self, key_id: str) -> bool:
        """No seal and no event of the trail ever named this key: a create that never finished,
        not a key whose rows were deleted."""
        conn, name = self._store.conn, subject("key", key_id)
        records = self._store.seals
        return records.seal_of(conn, name) is None and not records.last_change(conn, name)

    def _untrusted(
        self, intent: dict[str, Any], params: dict[str, Any], report: Report, actor: str
    ) -> None:
        """An intent kmtui's gate did not write (no intent seal from the token): closed, never
        acted on."""
        self._abandon(
            intent,
            actor,
            report,
            Finding(
                FindingKind.UNSEALED,
                str(params.get("cka_id", "")),
                f"{intent['action']} (audit event {intent['seq']}) carries no seal from the "
                "token: forged into the file, or written by a kmtui that did not seal intents. "
                "Nothing was done; run the operation again if it was yours.",
                str(intent["key_id"]),
                0,
                str(params.get("label", "")),
            ),
            error="Unsealed",
            message="not written by kmtui's gate (no intent seal): not trusted, nothing was done",
        )

    def _settled(self, intent: dict[str, Any], actor: str, **params: Any) -> None:
        """Close a finished operation whose registry writes the caller's transaction holds, and
        seal the key it wrote."""
        row = subject("key", str(intent["key_id"]))
        event = self._close(intent, actor, Outcome.SUCCESS, subject=row, **params)
        self._seals.seal(self._store.conn, [row], event.seq)
