"""Reconciliation: does the token agree with the registry, and did every operation finish?

Run at start and on demand. Operations whose intent was committed but whose outcome was not (the
process died) are finished when the token shows their HSM step happened, and closed as interrupted
when it did not; nothing is ever done twice and nothing on the token is destroyed. Everything else
that disagrees is a finding: audited, shown, and resolved only by a dual-controlled acknowledgement.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pkcs11 import ObjectClass

from kmtui.core import errors
from kmtui.core.audit.anchors import Anchors
from kmtui.core.audit.log import AuditLog
from kmtui.core.audit.seals import Seals
from kmtui.core.control.gate import Apply, Executed, Gate, Prepared
from kmtui.core.control.operations import ApprovalInput, Operation, OpKind
from kmtui.core.control.policies import PolicyBook
from kmtui.core.keys.records import KeyRecords
from kmtui.core.models import AuditEvent, Key, KeyState, KeyVersion, Outcome, iso, utcnow
from kmtui.core.registry.db import Store
from kmtui.core.registry.seals import subject
from kmtui.core.safetext import clean
from kmtui.core.token import templates
from kmtui.core.token.records import ObjectInfo
from kmtui.core.token.sealing import SEAL_KEY_ID
from kmtui.core.token.session import Hsm
from kmtui.core.token.signer import AUDIT_KEY_ID, HEAD_LABEL, PIN_LABEL

GONE = (KeyState.DESTROYED, KeyState.DESTROYED_COMPROMISED)
SYSTEM_PREFIX = b"kmtui:sys-"
SYSTEM_CLASSES: dict[bytes, frozenset[str]] = {
    SEAL_KEY_ID: frozenset({"SECRET_KEY"}),
    AUDIT_KEY_ID: frozenset({"PRIVATE_KEY", "PUBLIC_KEY"}),
}
"""The objects kmtui keeps under each of its own system ids (`kmtui:sys-*`)."""


class FindingKind(StrEnum):
    FOREIGN = "foreign-object"  # on the token, not created by kmtui
    UNKNOWN = "unregistered-object"  # kmtui-shaped CKA_ID the registry does not know
    MISSING = "missing-object"  # registry says it exists; the token has no such object
    DRIFT = "attribute-drift"  # e.g. SENSITIVE or EXTRACTABLE changed since creation
    MISMATCH = "check-mismatch"  # KCV or fingerprint differs: substituted key
    INTERRUPTED = "interrupted-operation"  # intent without outcome; the token step did not run
    UNFINISHED = "unfinished-destroy"  # destroy died half-way: some objects remain
    REGISTRY = "registry-changed"  # a sealed registry row not as kmtui wrote it
    UNANCHORED = "unanchored-intent"  # an intent the token's head never vouched for
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "matched": self.matched,
            "completed": self.completed,
            "findings": [f.as_dict() for f in self.findings],
            "acknowledged": [f.as_dict() for f in self.acknowledged],
        }


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
        self._unanchored: list[tuple[int, int]] = []
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
            report.findings.append(
                Finding(
                    FindingKind.REGISTRY,
                    "",
                    f"REGISTRY CHANGED OUTSIDE KMTUI: {problem}.",
                    label=name,
                )
            )
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
        self._unanchored = self._anchors.unanchored_ranges()
        for intent in self._store.keys.open_intents():
            self._settle(intent, _by_id(_own(scanned)), serial, report, actor)
        scanned = self._hsm.objects.scan() if report.completed else scanned
        self._compare(scanned, serial, report)
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
        if any(first <= int(intent["seq"]) <= last for first, last in self._unanchored):
            self._untrusted(intent, params, report, actor)
            return
        key = self._store.keys.get(key_id) if key_id else None
        if (
            action == OpKind.KEY_CREATE
            and bytes.fromhex(params["cka_id"]) == templates.cka_id(key_id, 1)
            and _holds_key(objects, bytes.fromhex(params["cka_id"]), str(params["algorithm"]))
            and key is None
        ):
            cka_id = bytes.fromhex(params["cka_id"])
            check = self._observed(str(params["algorithm"]), cka_id)
            symmetric = templates.ALGORITHMS[str(params["algorithm"])].symmetric
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
            report.completed.append({"intent": intent["seq"], "action": action, "key_id": key_id})
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
            report.completed.append({"intent": intent["seq"], "action": action, "key_id": key_id})
            return
        if action == OpKind.KEY_ROTATE and key is not None:
            number = int(params["new_version"])
            cka_id = templates.cka_id(key_id, number)
            registered = any(v.version == number for v in key.versions)
            if _holds_key(objects, cka_id, key.algorithm, key.tags) and not registered:
                check = self._observed(key.algorithm, cka_id)
                apply, _ = self._records.rotation(key, number, check, serial)
                with self._store.transaction():
                    apply()
                    self._settled(intent, actor, recovered=True, version=number, check=check)
                report.completed.append(
                    {"intent": intent["seq"], "action": action, "key_id": key_id}
                )
                return
        if action == OpKind.KEY_DESTROY and key is not None and key.state not in GONE:
            remaining = [v for v in key.versions if v.cka_id in objects]
            if not remaining:
                target = KeyState(str(params["to_state"]))
                with self._store.transaction():
                    self._records.destruction(key, target)()
                    self._settled(intent, actor, recovered=True, state=str(target))
                report.completed.append(
                    {"intent": intent["seq"], "action": action, "key_id": key_id}
                )
                return
            if len(remaining) < len(key.versions):
                self._close(
                    intent,
                    actor,
                    Outcome.FAILURE,
                    error="Interrupted",
                    message=f"{len(remaining)} of {len(key.versions)} versions remain",
                )
                report.findings.append(
                    Finding(
                        FindingKind.UNFINISHED,
                        remaining[0].cka_id.hex(),
                        f"Destruction stopped half-way: {len(remaining)} version(s) remain; "
                        "run the destroy again with fresh approvals.",
                        key_id,
                        remaining[0].version,
                        key.label,
                    )
                )
                return
        self._close(
            intent,
            actor,
            Outcome.FAILURE,
            error="Interrupted",
            message="the operation stopped before it changed anything; run it again",
        )
        report.findings.append(
            Finding(
                FindingKind.INTERRUPTED,
                str(params.get("cka_id", "")),
                f"{action} (audit event {intent['seq']}) stopped before changing anything; its "
                "approvals are spent, so run it again with fresh ones.",
                key_id,
                0,
                str(params.get("label", "")),
            )
        )

    def _observed(self, algorithm: str, cka_id: bytes) -> str:
        if templates.ALGORITHMS[algorithm].symmetric:
            return self._hsm.objects.kcv(cka_id)
        return self._hsm.objects.fingerprint(cka_id)

    def _compare(self, scanned: list[ObjectInfo], serial: str, report: Report) -> None:
        # Only this token's objects: versions registered on other tokens are not read at all.
        registered = {
            version.cka_id: (key, version) for key, version in self._store.keys.versions_on(serial)
        }
        impostors = [o for o in scanned if _kmtui_named(o) and not o.believable]
        for obj in impostors:
            report.findings.append(
                _impostor(
                    obj,
                    f"A public {obj.object_class or 'object'} that any token user can create "
                    f"without the PIN carries kmtui's {'label' if not obj.cka_id else 'CKA_ID'}",
                    _rank(obj, impostors),
                )
            )
        objects = _by_id(_own(scanned))

        for cka_id, (key, version) in registered.items():
            present = objects.get(cka_id, [])
            strays = {id(o): why for o in present if (why := _stray(key, o))}
            for obj in present:
                if id(obj) in strays:
                    report.findings.append(
                        _impostor(
                            obj,
                            f"A {obj.object_class or 'object'} under this key's CKA_ID, "
                            f"{strays[id(obj)]}",
                            _rank(obj, [o for o in present if id(o) in strays]),
                        )
                    )
            own = [o for o in present if id(o) not in strays]
            if version.state in GONE or key.state in GONE:
                if own:
                    report.findings.append(
                        Finding(
                            FindingKind.UNKNOWN,
                            cka_id.hex(),
                            "The registry says this version was destroyed, yet it is on the token.",
                            key.id,
                            version.version,
                            key.label,
                        )
                    )
                continue
            if not own:
                report.findings.append(
                    Finding(
                        FindingKind.MISSING,
                        cka_id.hex(),
                        "The registry holds this version but the token has no such object.",
                        key.id,
                        version.version,
                        key.label,
                    )
                )
                continue
            if _duplicates(own, report):
                continue
            report.matched += 1
            self._check_object(key, version, report)

        for cka_id, group in objects.items():
            if cka_id in registered:
                continue
            if cka_id.startswith(SYSTEM_PREFIX):
                self._system(cka_id, group, report)
                continue
            # Objects without a CKA_ID are unrelated to each other: one finding each.
            seen: dict[tuple[str, str], int] = {}
            for objs in [group] if cka_id else [[o] for o in group]:
                rank = seen.get((objs[0].object_class, objs[0].label), 0)
                seen[(objs[0].object_class, objs[0].label)] = rank + 1
                _unregistered(cka_id, objs, report, rank)

    def _system(self, cka_id: bytes, group: list[ObjectInfo], report: Report) -> None:
        """kmtui's own objects: only the classes it keeps there, one of each, and for the audit
        key only the public key its private key proves."""
        classes = SYSTEM_CLASSES.get(cka_id)
        unproven = self._hsm.signer.impostors() if cka_id == AUDIT_KEY_ID else set()
        strays = [
            o
            for o in group
            if (classes is not None and o.object_class not in classes) or o.handle in unproven
        ]
        for obj in strays:
            what = (
                "that the audit private key does not prove"
                if obj.handle in unproven
                else "a kind of object kmtui does not keep there"
            )
            report.findings.append(
                _impostor(
                    obj,
                    f"A {obj.object_class or 'object'} under kmtui's system CKA_ID, {what}",
                    _rank(obj, strays),
                )
            )
        _duplicates([o for o in group if o not in strays], report)

    def _check_object(self, key: Key, version: KeyVersion, report: Report) -> None:
        """Attributes still as created, and the same KCV or fingerprint as registered."""
        spec = templates.ALGORITHMS.get(key.algorithm)
        if spec is None:
            return
        if "recipient" in key.tags:  # a recipient's public key: no private half on this token
            cls = ObjectClass.PUBLIC_KEY
            wanted = templates.recipient_flags(trusted="trusted" in key.tags)
        else:
            template = templates.build(
                key.algorithm,
                key.purpose,
                cka_id=version.cka_id,
                label=key.label or "?",
                exportable=key.exportable,
                trusted="trusted" in key.tags,
            )
            cls = templates.object_class(key.algorithm, key.tags)
            wanted = template.expected(cls)
        try:
            actual = self._hsm.objects.attributes(version.cka_id, cls)
            observed = self._observed(key.algorithm, version.cka_id)
            kek = spec.symmetric and key.purpose == templates.Purpose.WRAP
            clear = kek and not self._hsm.wrapping.refuses_clear_unwrap(version.cka_id)
        except errors.DuplicateObject:
            return  # reported above, as a duplicate or an impostor
        except errors.ObjectGone:
            report.findings.append(
                Finding(
                    FindingKind.MISSING,
                    version.cka_id.hex(),
                    "The object vanished during the check.",
                    key.id,
                    version.version,
                    key.label,
                )
            )
            return
        except errors.HsmError as exc:
            report.findings.append(
                Finding(
                    FindingKind.DRIFT,
                    version.cka_id.hex(),
                    f"Could not read the object: {exc.message}",
                    key.id,
                    version.version,
                    key.label,
                )
            )
            return
        watched = (
            "SENSITIVE",
            "EXTRACTABLE",
            "WRAP_WITH_TRUSTED",
            "ENCRYPT",
            "DECRYPT",
            "WRAP",
            "UNWRAP",
            "SIGN",
            "VERIFY",
            "DERIVE",
            "TRUSTED",
            "ALWAYS_SENSITIVE",
            "NEVER_EXTRACTABLE",
        )
        expected = {a.name: v for a, v in wanted.items()}
        if {"imported", "components"} & set(key.tags):  # entered, not generated on this token
            for name in ("ALWAYS_SENSITIVE", "NEVER_EXTRACTABLE"):
                expected.pop(name, None)
        drift = [
            f"{name} is {actual.get(name)!r}, expected {expected[name]!r}"
            for name in watched
            if name in expected and actual.get(name) != expected[name]
        ]
        if clear:
            drift.append(
                "this key-encryption key hands a key it unwraps back in the clear (the token "
                "holds it to no unwrap template: it was made before kmtui set one), so anyone "
                "with the PIN, and for a trusted KEK anyone with a file exported under it and no "
                "PIN, can read the keys wrapped under it. Nothing is exported under it any more: "
                "make a new KEK, move what depends on this one, then retire it"
            )
        if drift:
            report.findings.append(
                Finding(
                    FindingKind.DRIFT,
                    version.cka_id.hex(),
                    "; ".join(drift),
                    key.id,
                    version.version,
                    key.label,
                )
            )
        registered = version.kcv or version.fingerprint
        if registered and observed != registered:
            report.findings.append(
                Finding(
                    FindingKind.MISMATCH,
                    version.cka_id.hex(),
                    f"The token's key has check value {observed[:23]}, the registry "
                    f"{registered[:23]}: the key was substituted. Do not use it.",
                    key.id,
                    version.version,
                    key.label,
                )
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

    def _untrusted(
        self, intent: dict[str, Any], params: dict[str, Any], report: Report, actor: str
    ) -> None:
        """An intent the token's head never vouched for: closed, never acted on."""
        self._close(
            intent,
            actor,
            Outcome.FAILURE,
            error="Unanchored",
            message="written after the token's last head: not trusted, nothing was done",
        )
        report.findings.append(
            Finding(
                FindingKind.UNANCHORED,
                str(params.get("cka_id", "")),
                f"{intent['action']} (audit event {intent['seq']}) was found after the token's "
                "last head: forged into the file, or cut off by a crash before the token was "
                "touched. Nothing was done; run the operation again if it was yours.",
                str(intent["key_id"]),
                0,
                str(params.get("label", "")),
            )
        )

    def _settled(self, intent: dict[str, Any], actor: str, **params: Any) -> None:
        """Close a finished operation whose registry writes the caller's transaction holds, and
        seal the key it wrote."""
        row = subject("key", str(intent["key_id"]))
        event = self._close(intent, actor, Outcome.SUCCESS, subject=row, **params)
        self._seals.seal(self._store.conn, [row], event.seq)


def _holds_key(
    objects: dict[bytes, list[ObjectInfo]],
    cka_id: bytes,
    algorithm: str,
    tags: Sequence[str] = (),
) -> bool:
    """The token holds the object that is the key (a secret or private key, which no one plants
    without the PIN), not just some object under its CKA_ID."""
    wanted = templates.object_class(algorithm, tags).name
    return any(o.object_class == wanted for o in objects.get(cka_id, []))


def _kmtui_named(obj: ObjectInfo) -> bool:
    """Carries a name only kmtui gives: a `kmtui:` CKA_ID, an audit head's label or the pin's."""
    if obj.cka_id.startswith(b"kmtui:"):
        return True
    label = obj.label
    return obj.object_class == "DATA" and (label.startswith(HEAD_LABEL + ":") or label == PIN_LABEL)


def _own(scanned: Iterable[ObjectInfo]) -> list[ObjectInfo]:
    """Everything but impostors: kmtui-named objects only when believable, and foreign ones."""
    return [o for o in scanned if o.believable or not _kmtui_named(o)]


def _stray(key: Key, obj: ObjectInfo) -> str:
    """Why an object under a registered key's CKA_ID is not part of that key ('' when it is)."""
    if key.algorithm in templates.ALGORITHMS:
        cls = templates.object_class(key.algorithm, key.tags)
        classes = {cls.name} | ({"PUBLIC_KEY"} if cls == ObjectClass.PRIVATE_KEY else set())
        if obj.object_class not in classes:
            return "a kind of object the key does not have"
    if "trusted" in key.tags and not obj.trusted:
        return "not made by the security officer (the key is trusted, this object is not)"
    return ""


def _rank(obj: ObjectInfo, among: list[ObjectInfo]) -> int:
    """Its place among the objects under the same name, so each gets its own finding."""
    same = [o for o in among if (o.cka_id, o.label) == (obj.cka_id, obj.label)]
    return next(i for i, o in enumerate(same) if o is obj)


def _key_of(cka_id: bytes) -> tuple[str, int]:
    """The registry key a kmtui CKA_ID names; none for kmtui's own system objects."""
    parsed = None if cka_id.startswith(SYSTEM_PREFIX) else templates.parse_cka_id(cka_id)
    return parsed or ("", 0)


def _impostor(obj: ObjectInfo, what: str, rank: int) -> Finding:
    return Finding(
        FindingKind.IMPOSTOR,
        obj.cka_id.hex(),
        f"{what} (handle {obj.handle}): kmtui never uses it. Find out who made it and keep it "
        "for that investigation; then remove it.",
        *_key_of(obj.cka_id),
        obj.label,
        rank,
    )


def _duplicates(objs: list[ObjectInfo], report: Report) -> bool:
    """A finding for each class with more than one object kmtui could believe."""
    found = False
    for cls in sorted({o.object_class for o in objs}):
        same = [o for o in objs if o.object_class == cls]
        if len(same) < 2:
            continue
        found = True
        report.findings.append(
            Finding(
                FindingKind.DUPLICATE,
                same[0].cka_id.hex(),
                f"{len(same)} {cls} objects carry this CKA_ID (handles "
                f"{', '.join(str(o.handle) for o in same)}): kmtui will not guess which is its "
                "own and uses none of them. Someone made the extra one (with the PIN, unless it "
                "is a public key): investigate before removing it.",
                *_key_of(same[0].cka_id),
                same[0].label,
            )
        )
    return found


def _by_id(objects: Iterable[ObjectInfo]) -> dict[bytes, list[ObjectInfo]]:
    grouped: dict[bytes, list[ObjectInfo]] = {}
    for obj in objects:
        grouped.setdefault(obj.cka_id, []).append(obj)
    return grouped


def _unregistered(cka_id: bytes, objs: list[ObjectInfo], report: Report, rank: int) -> None:
    label = objs[0].label
    if objs[0].object_class == "DATA" and (
        label.startswith(HEAD_LABEL + ":") or label == PIN_LABEL
    ):
        return  # an audit head kept on the token (this registry's or another's), or the pin
    classes = ", ".join(sorted(o.object_class or "?" for o in objs))
    if templates.parse_cka_id(cka_id) is not None:
        report.findings.append(
            Finding(
                FindingKind.UNKNOWN,
                cka_id.hex(),
                f"A kmtui-style object ({classes}) the registry does not know: substituted, or "
                "left by an operation outside this workstation. Never destroyed automatically.",
                label=label,
            )
        )
    else:
        report.findings.append(
            Finding(
                FindingKind.FOREIGN,
                cka_id.hex(),
                f"An object kmtui did not create ({classes}, handle {objs[0].handle}). "
                "Left untouched.",
                label=label,
                nth=rank,
            )
        )
