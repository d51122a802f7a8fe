"""THE GATE: every state-changing operation runs through `Workstation.execute`.

Order, always: policy check -> approvals (dual control) -> intent event committed together with the
spending of the approvals -> the token call -> registry update and outcome event committed together.
If the intent cannot be written, nothing reaches the HSM; if the process dies after the token call,
reconciliation finds the intent without an outcome and finishes or flags it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, TypeVar

from pkcs11 import ObjectClass

from kmtui.core import errors
from kmtui.core.audit.anchors import Anchors
from kmtui.core.audit.log import AuditLog
from kmtui.core.control import lifecycle, policy
from kmtui.core.control.dualcontrol import DualControl, Enrollment, valid_name
from kmtui.core.control.lifecycle import Use
from kmtui.core.control.operations import ApprovalInput, Approver, Operation, OpKind, Requirement
from kmtui.core.models import (
    AuditEvent,
    Key,
    KeyState,
    KeyVersion,
    OperatorState,
    Outcome,
    Policy,
    Role,
    TokenInfo,
    iso,
    new_key_id,
    parse_iso,
    utcnow,
)
from kmtui.core.registry.store import Store, key_cursor
from kmtui.core.safetext import clean
from kmtui.core.token import officer, templates, uri
from kmtui.core.token.session import Hsm

T = TypeVar("T")
Apply = Callable[[], None]
"""Registry writes of an operation, run in the same transaction as its outcome event."""

USE_ACTIONS = (str(OpKind.KEY_SELFCHECK), str(OpKind.KEY_EXPORT), "key.use")


_RULES: dict[tuple[str, str], policy.Rules] = {}
URI_TYPES = {  # RFC 7512 `type=` of the object that is the key
    ObjectClass.SECRET_KEY: "secret-key",
    ObjectClass.PUBLIC_KEY: "public",
    ObjectClass.PRIVATE_KEY: "private",
}
"""Parsed policies by (name, rules JSON); Rules are immutable, so sharing them is safe."""


def session_context() -> dict[str, str]:
    """Where the operator sits: recorded with every event (SSH or the local console)."""
    via = "ssh" if os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_TTY") else "console"
    try:
        tty = os.ttyname(0)
    except OSError:
        tty = ""
    return {"via": via, "tty": tty, "user": os.environ.get("USER", "")}


@dataclass(frozen=True)
class Prepared:
    """An operation ready for approval: what the approvers are shown and what they approve."""

    operation: Operation
    summary: str
    key: Key | None = None
    quorum: int = 0

    @property
    def kcv(self) -> str:
        current = self.key.current if self.key else None
        return (current.kcv or current.fingerprint[:23]) if current else ""


@dataclass
class Workstation:
    """The token, the registry and the audit trail of one workstation."""

    hsm: Hsm
    store: Store
    audit: AuditLog
    approver: Approver
    dual: DualControl
    anchors: Anchors
    demo: bool = False
    # One log-in or log-out at a time: the idle lock's log-out and the app closing can overlap.
    _session: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

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
        dual = DualControl(store, hsm, audit, clock=clock)
        ws = cls(
            hsm=hsm,
            store=store,
            audit=audit,
            approver=dual,
            dual=dual,
            anchors=Anchors(store, hsm, audit),
            demo=demo,
        )
        ws.ensure_defaults()
        return ws

    def ensure_defaults(self) -> None:
        """The shipped policy set, added when missing (never overwriting a changed policy)."""
        present = {p.name for p in self.store.policies()}
        for shipped in policy.DEFAULT_POLICIES:
            if shipped.name not in present:
                self.store.add_policy(replace(shipped, updated_at=iso(utcnow())))

    def close(self) -> None:
        self.hsm.close()
        self.store.close()

    # -- the token ----------------------------------------------------------------------------

    def login(self, pin: str, actor: str = "console") -> TokenInfo:
        """Log in, then refuse a rolled-back trail before anything else runs; all audited."""
        with self._session:
            return self._login(pin, actor)

    def _login(self, pin: str, actor: str) -> TokenInfo:
        info = self._open_session(pin, actor)
        try:
            return self._after_login(info, actor)
        except BaseException:  # refused (rolled-back trail, unwritable audit): no open session
            if self.hsm.logged_in:
                self.hsm.logout()
            raise

    def _open_session(self, pin: str, actor: str) -> TokenInfo:
        try:
            return self.hsm.login(pin)
        except errors.HsmError as exc:
            self.audit.append(
                "token.login",
                actor=actor,
                outcome=Outcome.FAILURE,
                params={**session_context(), "error": type(exc).__name__},
            )
            raise

    def _after_login(self, info: TokenInfo, actor: str) -> TokenInfo:
        problem = self.anchors.check_head()
        if problem:
            self.hsm.logout()  # first: nothing may mirror this database's head on the token
            self.audit.append(
                "audit.head-mismatch",
                actor=actor,
                outcome=Outcome.FAILURE,
                params={**session_context(), "problem": problem},
            )
            raise errors.AuditTampered(
                f"AUDIT TRAIL ROLLED BACK OR CUT SHORT: {problem}.",
                "Nothing else will run on this database. Restore the latest backup made by "
                "kmtui, or keep the files for investigation and call the security officer.",
            )
        self.audit.append(
            "token.login",
            actor=actor,
            outcome=Outcome.SUCCESS,
            params={**session_context(), "token": info.label, "serial": info.serial},
        )
        self.anchors.public_key()
        self.anchors.sync()
        return info

    def logout(self, actor: str = "console", reason: str = "") -> None:
        """Sign a checkpoint for the session, mirror the head, then log out (once, when two
        callers race)."""
        with self._session:
            if not self.hsm.logged_in:
                return
            try:
                self.audit.append(
                    "token.logout", actor=actor, outcome=Outcome.SUCCESS, params={"reason": reason}
                )
                self.anchors.checkpoint("session end")
                self.anchors.sync()
            finally:  # a trail that cannot be written must not keep the token open
                self.hsm.logout()

    # -- policies -----------------------------------------------------------------------------

    def get_policy(self, name: str) -> Policy:
        rows = self.store.rows("SELECT * FROM policies WHERE name = ?", (name,))
        if not rows:
            raise errors.UsageError(f"No policy named {name!r}.", "See `kmtui policies list`.")
        row = rows[0]
        return Policy(row["name"], row["description"], json.loads(row["rules"]), row["updated_at"])

    def rules(self, name: str) -> policy.Rules:
        """Parsed once per stored version of the rules (read fresh: another process may change
        them)."""
        stored = self.get_policy(name)
        key = (name, json.dumps(stored.rules, sort_keys=True))
        parsed = _RULES.get(key)
        if parsed is None:
            parsed = _RULES[key] = policy.parse(stored)
        return parsed

    def idle_lock(self, configured_minutes: int) -> tuple[int, str]:
        """Minutes before the console locks, and who set it: the shortest of the configured value
        and every policy's idle_lock_minutes (a policy can only shorten the lock)."""
        minutes, source = configured_minutes, "configuration"
        for stored in self.store.policies():
            try:
                limit = self.rules(stored.name).idle_lock_minutes
            except errors.KmtuiError:
                continue  # a policy that does not parse is refused wherever it is used
            if limit is not None and limit < minutes:
                minutes, source = limit, f"policy {stored.name}"
        return minutes, source

    # -- the gate -----------------------------------------------------------------------------

    def execute(
        self,
        prepared: Prepared,
        approvals: Sequence[ApprovalInput],
        work: Callable[[dict[str, Any]], Apply | None],
        *,
        rules: policy.Rules,
        actor: str,
        exclude: frozenset[str] = frozenset(),
        requirement: Requirement | None = None,
    ) -> dict[str, Any]:
        """Run one operation through policy, approvals, intent, token, registry and outcome.

        Its events are mirrored on the token once, at the end (one token write per operation;
        an operation cut off by a crash is re-anchored by the next log-in).
        """
        try:
            return self._execute(
                prepared,
                approvals,
                work,
                rules=rules,
                actor=actor,
                requirement=requirement or rules.requirement(prepared.operation.kind, exclude),
            )
        finally:
            with suppress(errors.HsmError):  # the token may be what failed; keep that error
                self.anchors.sync()

    def _execute(
        self,
        prepared: Prepared,
        approvals: Sequence[ApprovalInput],
        work: Callable[[dict[str, Any]], Apply | None],
        *,
        rules: policy.Rules,
        actor: str,
        requirement: Requirement,
    ) -> dict[str, Any]:
        op = prepared.operation
        context = session_context()
        approvers = sorted({a.operator for a in approvals}) if requirement.quorum else []
        try:
            policy.check_origin(rules, op.kind, context["via"])
            granted = (
                self.approver.approve(op, approvals, requirement) if requirement.quorum else []
            )
        except errors.KmtuiError as exc:
            self._refused(op, "+".join(approvers) or actor, exc, context)
            raise
        actor = "+".join(approvers) or actor
        params = {**op.params, **context, "digest": op.digest, "approvers": approvers}
        try:
            with self.store.transaction():
                self.approver.consume(granted, op)
                intent = self.audit.append(
                    str(op.kind),
                    actor=actor,
                    outcome=Outcome.INTENT,
                    key_id=op.key_id,
                    params=params,
                )
        except errors.ApprovalRefused as exc:  # spent or expired: rolled back, so audit it now
            self._refused(op, actor, exc, context)
            raise
        result: dict[str, Any] = {"intent": intent.seq}
        try:
            apply = work(result)
        except Exception as exc:
            self.audit.append(
                str(op.kind),
                actor=actor,
                outcome=Outcome.FAILURE,
                key_id=op.key_id,
                params={
                    "intent": intent.seq,
                    "error": type(exc).__name__,
                    "message": exc.message if isinstance(exc, errors.KmtuiError) else "internal",
                    **result,
                },
            )
            raise
        with self.store.transaction():
            if apply is not None:
                apply()
            outcome = self.audit.append(
                str(op.kind),
                actor=actor,
                outcome=Outcome.SUCCESS,
                key_id=op.key_id,
                params=result,
            )
        result["audit_seq"] = outcome.seq
        return result

    def _refused(
        self, op: Operation, actor: str, exc: errors.KmtuiError, context: dict[str, str]
    ) -> None:
        self.audit.append(
            str(op.kind),
            actor=actor,
            outcome=Outcome.REFUSED,
            key_id=op.key_id,
            params={
                "digest": op.digest,
                "error": type(exc).__name__,
                "message": exc.message,
                **context,
            },
        )

    # -- keys: lookup -------------------------------------------------------------------------

    def get_key(self, ref: str) -> Key:
        """A key by id, by unique label, or by a PKCS#11 URI naming one of its versions."""
        if ref.startswith("pkcs11:"):
            try:
                attrs = uri.parse(ref)
            except ValueError as exc:
                raise errors.UsageError(f"Not a valid PKCS#11 URI: {exc}.") from None
            parsed = templates.parse_cka_id(attrs.get("id", b""))
            if parsed is None:
                raise errors.UsageError("That PKCS#11 URI does not name a kmtui key (id=...).")
            ref = parsed[0]
        key = self.store.get_key(ref)
        if key is not None:
            return key
        matches = self.store.find_keys(label=ref)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise errors.UsageError(
                f"{len(matches)} keys are labelled {clean(ref, 60)!r}.",
                "Name the key by its id instead.",
            )
        raise errors.UsageError(f"No key {clean(ref, 60)!r}.", "See `kmtui keys list`.")

    def version_uri(self, key: Key, version: KeyVersion) -> str:
        kind = URI_TYPES[templates.object_class(key.algorithm, key.tags)]
        return uri.build(
            token=self.hsm.found_label,
            serial=version.token_serial,
            cka_id=version.cka_id,
            label=key.label,
            object_type=kind,
        )

    def describe(self, key: Key) -> dict[str, Any]:
        """The JSON shape of DESIGN.md section 5 (`kmtui keys show KEY --json`)."""
        current = key.current
        data: dict[str, Any] = {
            "id": key.id,
            "label": key.label,
            "state": str(key.state),
            "algorithm": key.algorithm,
            "purpose": key.purpose,
            "policy": key.policy,
            "exportable": key.exportable,
            "kcv": current.kcv if current else "",
            "current_version": key.current_version,
            "created_at": key.created_at,
            "activated_at": key.activated_at,
            "rotation_due_at": key.rotation_due_at,
            "destroy_after": key.destroy_after,
            "revocation_reason": key.revocation_reason,
            "compromised_at": key.compromised_at,
            "versions": [
                {
                    "version": v.version,
                    "state": str(v.state),
                    **({"kcv": v.kcv} if v.kcv else {"fingerprint": v.fingerprint}),
                    "pkcs11_uri": self.version_uri(key, v),
                    "created_at": v.created_at,
                }
                for v in key.versions
            ],
        }
        return data

    def last_use(self, key_id: str) -> AuditEvent | None:
        """The newest audit event that used the key (self-checks, exports)."""
        for action in USE_ACTIONS:
            events = self.audit.events(key_id=key_id, action=action, limit=1, newest_first=True)
            if events:
                return events[0]
        return None

    # -- keys: preparing operations (what the approvers see) --------------------------------

    def prepare_create(
        self,
        *,
        label: str,
        algorithm: str,
        purpose: str | None = None,
        policy_name: str = "default",
        exportable: bool = False,
        trusted: bool = False,
    ) -> Prepared:
        """`trusted`: a KEK the security officer creates (the SO PIN is given to `run`)."""
        _check_label(label)
        key_id = new_key_id()
        template = templates.build(
            algorithm,
            purpose,
            cka_id=templates.cka_id(key_id, 1),
            label=label,
            exportable=exportable,
            trusted=trusted,
        )
        rules = self.rules(policy_name)
        policy.check_create(
            rules, policy_name, template.algorithm.name, template.purpose.value, exportable
        )
        op = Operation(
            OpKind.KEY_CREATE,
            key_id,
            {
                "label": label,
                "algorithm": template.algorithm.name,
                "purpose": template.purpose.value,
                "policy": policy_name,
                "exportable": exportable,
                "trusted": trusted,
                "cka_id": template.cka_id.hex(),
            },
        )
        summary = (
            f"Create {template.algorithm.name} {template.purpose.value} key "
            f"{clean(label, 60)!r} under policy {policy_name!r}"
            + (" (exportable)" if exportable else "")
            + (" as a TRUSTED key-encryption key (security officer)" if trusted else "")
        )
        return Prepared(op, summary, None, rules.requirement(op.kind).quorum)

    def prepare(self, kind: OpKind, ref: str, **params: Any) -> Prepared:
        """An operation on an existing key, checked against its state before anyone approves."""
        key = self.get_key(ref)
        rules = self.rules(key.policy)
        current = key.current
        base: dict[str, Any] = {
            "label": key.label,
            "from_state": str(key.state),
            "version": key.current_version,
            "check": (current.kcv or current.fingerprint) if current else "",
        }
        note = str(params.get("note") or "")
        if note:  # why: recorded with the transition, shown to the approvers
            if clean(note) != note or len(note) > 500:
                raise errors.UsageError("A note is up to 500 printable characters.")
            base["note"] = note
        if kind == OpKind.KEY_REVOKE:
            reason = lifecycle.parse_reason(str(params.get("reason", "")))
            base["reason"] = reason.value
            base["compromised_at"] = str(params.get("compromised_at") or iso(utcnow()))
            target = lifecycle.next_state(key.state, kind, reason=reason)
        elif kind == OpKind.KEY_SELFCHECK:
            lifecycle.require_use(key.state, Use.CHECK)
            target = key.state
        else:
            target = lifecycle.next_state(
                key.state,
                kind,
                before_destroy=_state(key.state_before),
                compromised=bool(key.compromised_at),
            )
        if kind == OpKind.KEY_DESTROY and (
            not key.destroy_after or parse_iso(key.destroy_after) > utcnow()
        ):
            raise errors.PolicyRefused(
                f"Key {clean(key.label, 60)!r} may be destroyed only after "
                f"{key.destroy_after or 'its waiting period'}.",
                "The waiting period lets a mistaken schedule be cancelled.",
            )
        base["to_state"] = str(target)
        if kind == OpKind.KEY_SCHEDULE_DESTROY:
            base["destroy_after"] = iso(utcnow() + timedelta(days=rules.destroy_wait_days))
        if kind == OpKind.KEY_ROTATE:
            if {"trusted", "recipient"} & set(key.tags):
                raise errors.PolicyRefused(
                    "A trusted key-encryption key or a recipient's public key is replaced, "
                    "not rotated.",
                    "Create a new one with --trusted (security officer), then retire this one.",
                )
            base["new_version"] = key.current_version + 1
        summary = _summary(kind, key, base)
        return Prepared(Operation(kind, key.id, base), summary, key, rules.requirement(kind).quorum)

    # -- keys: executing ----------------------------------------------------------------------

    def run(
        self,
        prepared: Prepared,
        approvals: Sequence[ApprovalInput] = (),
        *,
        actor: str = "console",
        officer_pin: str = "",
    ) -> dict[str, Any]:
        """Execute a prepared operation (the approvals are checked against its digest)."""
        op = prepared.operation
        handlers: dict[OpKind, Callable[[Prepared], Callable[[dict[str, Any]], Apply | None]]] = {
            OpKind.KEY_CREATE: self._work_create,
            OpKind.POLICY_CHANGE: self._work_policy,
            OpKind.RECONCILE_RESOLVE: self._work_acknowledge,
            OpKind.KEY_ROTATE: self._work_rotate,
            OpKind.KEY_DESTROY: self._work_destroy,
            OpKind.KEY_SELFCHECK: self._work_selfcheck,
        }
        if op.kind == OpKind.KEY_CREATE and op.params.get("trusted"):
            if not officer_pin:
                raise errors.UsageError(
                    "A trusted KEK is created by the security officer.",
                    "The SO enters the SO PIN (--so-pin-file for scripts).",
                )
            work = self._work_create(prepared, officer_pin)
        else:
            work = handlers.get(op.kind, self._work_transition)(prepared)
        policy_name = (
            str(op.params["policy"])
            if "policy" in op.params
            else (prepared.key.policy if prepared.key else "default")
        )
        if prepared.key is not None:
            fresh = self.get_key(prepared.key.id)
            if fresh.state != prepared.key.state or fresh.current_version != (
                prepared.key.current_version
            ):
                raise errors.PolicyRefused(
                    f"Key {clean(fresh.label, 60)!r} changed since this operation was prepared.",
                    "Prepare it again and collect fresh approvals.",
                )
        return self.execute(prepared, approvals, work, rules=self.rules(policy_name), actor=actor)

    def create_key(
        self,
        *,
        label: str,
        algorithm: str,
        purpose: str | None = None,
        policy_name: str = "default",
        exportable: bool = False,
        approvals: Sequence[ApprovalInput] = (),
        actor: str = "console",
    ) -> Key:
        prepared = self.prepare_create(
            label=label,
            algorithm=algorithm,
            purpose=purpose,
            policy_name=policy_name,
            exportable=exportable,
        )
        self.run(prepared, approvals, actor=actor)
        return self.get_key(prepared.operation.key_id)

    def _work_create(
        self, prepared: Prepared, officer_pin: str = ""
    ) -> Callable[[dict[str, Any]], Apply | None]:
        op = prepared.operation
        p = op.params
        template = templates.build(
            str(p["algorithm"]),
            str(p["purpose"]),
            cka_id=bytes.fromhex(str(p["cka_id"])),
            label=str(p["label"]),
            exportable=bool(p["exportable"]),
            trusted=bool(p.get("trusted")),
        )

        def work(result: dict[str, Any]) -> Apply:
            serial = self.hsm.info().serial
            now = iso(utcnow())
            try:
                if officer_pin:
                    officer.create_trusted_kek(self.hsm, officer_pin, template)
                    generated = self.hsm.keygen.adopt(template)
                else:
                    generated = self.hsm.keygen.generate(template)
            except errors.TemplateMismatch:
                version = KeyVersion(
                    op.key_id, 1, KeyState.QUARANTINED, template.cka_id, serial, now
                )
                key = replace(
                    self.created_key(op.key_id, dict(p), version),
                    state=KeyState.QUARANTINED,
                    activated_at="",
                    rotation_due_at="",
                )
                self.store.add_key(key)
                result["quarantined"] = True
                raise
            version = KeyVersion(
                op.key_id,
                1,
                KeyState.ACTIVE,
                template.cka_id,
                serial,
                now,
                kcv=generated.kcv,
                fingerprint=generated.fingerprint,
            )
            key = self.created_key(op.key_id, dict(p), version)
            if p.get("trusted"):
                key.tags = ["trusted"]
            result.update(kcv=generated.kcv, fingerprint=generated.fingerprint, version=1)
            return lambda: self.store.add_key(key)

        return work

    def _work_rotate(self, prepared: Prepared) -> Callable[[dict[str, Any]], Apply | None]:
        key = _require(prepared.key)
        version = key.current_version + 1
        template = templates.build(
            key.algorithm,
            key.purpose,
            cka_id=templates.cka_id(key.id, version),
            label=key.label,
            exportable=key.exportable,
        )

        def work(result: dict[str, Any]) -> Apply:
            serial = self.hsm.info().serial
            generated = self.hsm.keygen.generate(template)
            check = generated.kcv or generated.fingerprint
            apply, retired = self.rotation_writes(key, version, check, serial)
            result.update(
                version=version,
                kcv=generated.kcv,
                fingerprint=generated.fingerprint,
                previous_version=key.current_version,
                previous_state=str(retired),
            )
            return apply

        return work

    def _work_transition(self, prepared: Prepared) -> Callable[[dict[str, Any]], Apply | None]:
        key = _require(prepared.key)
        op = prepared.operation
        target = KeyState(str(op.params["to_state"]))

        def work(result: dict[str, Any]) -> Apply:
            now = iso(utcnow())
            updated = replace(key, state=target, updated_at=now, versions=[])
            if op.kind == OpKind.KEY_SCHEDULE_DESTROY:
                updated.destroy_after = str(op.params["destroy_after"])
                updated.state_before = str(key.state)
            elif op.kind == OpKind.KEY_CANCEL_DESTROY:
                updated.destroy_after = updated.state_before = ""
            elif op.kind == OpKind.KEY_REVOKE:
                updated.revocation_reason = str(op.params["reason"])
                updated.deactivated_at = updated.deactivated_at or now
                if target == KeyState.COMPROMISED:
                    # A compromise is dated by its earliest report; a later revoke never moves it.
                    reported = str(op.params["compromised_at"])
                    updated.compromised_at = min(filter(None, (key.compromised_at, reported)))
                result["dependents"] = [
                    {"key_id": k, "relation": rel} for k, rel in self.store.dependents(key.id)
                ]
            elif target == KeyState.DEACTIVATED:
                updated.deactivated_at = now
            elif op.kind == OpKind.KEY_ACTIVATE:
                updated.activated_at = now
            result.update(state=str(target))
            version_state = target if target != KeyState.DESTROY_SCHEDULED else None

            def apply() -> None:
                self.store.update_key(updated)
                current = key.current
                if (
                    current is not None
                    and version_state is not None
                    and target in (KeyState.COMPROMISED, KeyState.DEACTIVATED)
                ):
                    self.store.update_version_state(key.id, current.version, version_state)

            return apply

        return work

    def _work_destroy(self, prepared: Prepared) -> Callable[[dict[str, Any]], Apply | None]:
        key = _require(prepared.key)
        target = KeyState(str(prepared.operation.params["to_state"]))

        def work(result: dict[str, Any]) -> Apply:
            destroyed = 0
            for version in key.versions:
                if version.state not in (KeyState.DESTROYED, KeyState.DESTROYED_COMPROMISED):
                    destroyed += self.hsm.objects.destroy(version.cka_id)
            result.update(
                objects_destroyed=destroyed,
                state=str(target),
                final_checks={str(v.version): v.kcv or v.fingerprint for v in key.versions},
            )
            return self.destroy_writes(key, target)

        return work

    # -- registry writes shared by the gate and by reconciliation ------------------------

    def rotation_writes(
        self, key: Key, version: int, check: str, serial: str
    ) -> tuple[Apply, KeyState]:
        """Register a new current version and retire the previous one as the policy says."""
        rules = self.rules(key.policy)
        now = iso(utcnow())
        symmetric = templates.ALGORITHMS[key.algorithm].symmetric
        new = KeyVersion(
            key.id,
            version,
            KeyState.ACTIVE,
            templates.cka_id(key.id, version),
            serial,
            now,
            kcv=check if symmetric else "",
            fingerprint="" if symmetric else check,
        )
        retired = (
            KeyState.DEACTIVATED if rules.retire_previous == "deactivate" else (KeyState.ACTIVE)
        )
        updated = replace(
            key, current_version=version, activated_at=now, updated_at=now, versions=[]
        )
        updated.rotation_due_at = _iso_or_empty(policy.rotation_due(updated, rules))

        def apply() -> None:
            self.store.add_version(new)
            self.store.update_version_state(key.id, key.current_version, retired)
            self.store.update_key(updated)

        return apply, retired

    def destroy_writes(self, key: Key, target: KeyState) -> Apply:
        """Turn the key into a tombstone: every version destroyed, final checks kept."""
        updated = replace(
            key,
            state=target,
            updated_at=iso(utcnow()),
            versions=[],
            destroy_after="",
            state_before="",
        )

        def apply() -> None:
            self.store.update_key(updated)
            for version in key.versions:
                self.store.update_version_state(key.id, version.version, target)

        return apply

    def created_key(self, key_id: str, params: dict[str, Any], version: KeyVersion) -> Key:
        """The registry record of a freshly generated key (from its operation's parameters)."""
        now = iso(utcnow())
        key = Key(
            id=key_id,
            label=str(params["label"]),
            algorithm=str(params["algorithm"]),
            purpose=str(params["purpose"]),
            policy=str(params["policy"]),
            state=KeyState.ACTIVE,
            created_at=now,
            exportable=bool(params["exportable"]),
            updated_at=now,
            activated_at=now,
            versions=[version],
        )
        key.rotation_due_at = _iso_or_empty(policy.rotation_due(key, self.rules(key.policy)))
        return key

    def _work_selfcheck(self, prepared: Prepared) -> Callable[[dict[str, Any]], Apply | None]:
        key = _require(prepared.key)
        current = _require(key.current)

        def work(result: dict[str, Any]) -> None:
            checks = self.hsm.selftest.run(current.cka_id, key.algorithm, key.purpose)
            expected = current.kcv or current.fingerprint
            observed = checks.get("kcv") or checks.get("fingerprint", "")
            checks["registry-match"] = "pass" if observed == expected else "fail"
            result["checks"] = checks
            if any(v == "fail" for v in checks.values()):
                raise errors.HsmError(
                    f"Self-check of {clean(key.label, 60)!r} failed: "
                    + ", ".join(k for k, v in checks.items() if v == "fail")
                    + ".",
                    "Do not use this key; run `kmtui reconcile` and investigate.",
                )
            return None

        return work

    # -- policies: change (itself dual-controlled, under the policy's current rules) ----------

    def prepare_policy_change(
        self, name: str, rules: dict[str, Any], description: str | None = None
    ) -> Prepared:
        current = self.get_policy(name)
        candidate = Policy(
            name, current.description if description is None else description, dict(rules)
        )
        policy.parse(candidate)  # refuse a broken policy before anyone approves it
        op = Operation(
            OpKind.POLICY_CHANGE,
            "",
            {
                "policy": name,
                "description": candidate.description,
                "rules": candidate.rules,
                "previous_rules": current.rules,
            },
        )
        changed = sorted(
            k for k in set(rules) | set(current.rules) if rules.get(k) != current.rules.get(k)
        )
        summary = f"Change policy {name!r}: {', '.join(changed) or 'no rule'} changed"
        return Prepared(op, summary, None, self.rules(name).requirement(op.kind).quorum)

    def _work_policy(self, prepared: Prepared) -> Callable[[dict[str, Any]], Apply | None]:
        p = prepared.operation.params
        updated = Policy(str(p["policy"]), str(p["description"]), dict(p["rules"]), iso(utcnow()))

        def work(result: dict[str, Any]) -> Apply:
            result["policy"] = updated.name
            return lambda: self.store.update_policy(updated)

        return work

    # -- operators (dual control of the people who approve) ---------------------------------

    BOOTSTRAP_OPERATORS = 2

    def bootstrap_open(self, name: str = "") -> bool:
        """May `name` be enrolled without approvals? Only as one of the workstation's first two.

        Decided from the audit trail, not from current states: locking or revoking operators
        later (five wrong codes lock anyone) must never reopen enrolment without approvals.
        """
        confirmed = self.store.rows(
            "SELECT count(*) AS n FROM audit_events WHERE action = 'operator.confirmed' "
            "AND outcome = 'success'"
        )[0]["n"]
        if confirmed >= self.BOOTSTRAP_OPERATORS:
            return False
        first = {
            r["name"]
            for r in self.store.rows(
                "SELECT json_extract(params, '$.operator') AS name FROM audit_events "
                "WHERE action = 'operator.enroll' AND outcome = 'intent' "
                "AND json_extract(params, '$.bootstrap') = 1"
            )
        }
        return name in first or len(first) < self.BOOTSTRAP_OPERATORS

    def prepare_operator(self, kind: OpKind, name: str, role: str = "") -> Prepared:
        if not valid_name(name):  # refused before anyone spends an approval on it
            self.dual.get(name)  # raises the message that says what a name may hold
        if kind == OpKind.OPERATOR_ENROLL and role not in {r.value for r in Role}:
            raise errors.UsageError(
                f"Unknown role {clean(role, 20)!r}.", "Roles: custodian, officer, auditor."
            )
        existing = next((o for o in self.dual.operators() if o.name == name), None)
        operator = existing if kind != OpKind.OPERATOR_ENROLL else None
        if kind != OpKind.OPERATOR_ENROLL and existing is None:
            self.dual.get(name)  # raises the unknown-operator error
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
        quorum = 0 if bootstrap else self.rules("default").requirement(kind).quorum
        return Prepared(op, summary, None, quorum)

    def run_operator(
        self, prepared: Prepared, approvals: Sequence[ApprovalInput] = (), *, actor: str = "console"
    ) -> tuple[dict[str, Any], Enrollment | None]:
        """Enrol, re-enrol, lock, unlock or revoke an operator; two OTHER operators approve."""
        op = prepared.operation
        name = str(op.params["operator"])
        enrolled: list[Enrollment] = []
        bootstrap = bool(op.params.get("bootstrap")) and self.bootstrap_open(name)

        def work(result: dict[str, Any]) -> None:
            if op.kind in (OpKind.OPERATOR_ENROLL, OpKind.OPERATOR_REENROLL):
                enrolled.append(self.dual.begin_enrollment(name, str(op.params["role"])))
                result.update(state="pending", bootstrap=bootstrap)
            else:
                target = {
                    OpKind.OPERATOR_LOCK: "locked",
                    OpKind.OPERATOR_UNLOCK: "active",
                    OpKind.OPERATOR_REVOKE: "revoked",
                }[op.kind]
                result["state"] = str(self.dual.set_state(name, target).state)

        rules = self.rules("default")
        requirement = (
            Requirement(quorum=0) if bootstrap else rules.requirement(op.kind, frozenset({name}))
        )
        result = self.execute(
            prepared, approvals, work, rules=rules, actor=actor, requirement=requirement
        )
        return result, (enrolled[0] if enrolled else None)

    def confirm_operator(self, name: str, code: str) -> None:
        """The new operator's first code proves their authenticator holds the seed (audited by
        dual control as operator.confirmed)."""
        self.dual.confirm_enrollment(name, code)

    # -- reconciliation findings ------------------------------------------------------------

    def prepare_acknowledge(self, finding: str, note: str) -> Prepared:
        if not note.strip():
            raise errors.UsageError("Say why the finding is acknowledged.", "Use --note TEXT.")
        op = Operation(OpKind.RECONCILE_RESOLVE, "", {"finding": finding, "note": note})
        summary = f"Acknowledge reconciliation finding {clean(finding, 80)}: {clean(note, 80)}"
        return Prepared(op, summary, None, self.rules("default").requirement(op.kind).quorum)

    def _work_acknowledge(self, prepared: Prepared) -> Callable[[dict[str, Any]], Apply | None]:
        p = prepared.operation.params

        def work(result: dict[str, Any]) -> Apply:
            seq = int(result["intent"])
            return lambda: self.store.acknowledge(str(p["finding"]), str(p["note"]), seq)

        return work

    # -- keys: due list -----------------------------------------------------------------------

    def due(self, within_days: int = 30) -> list[dict[str, Any]]:
        """Keys whose rotation is due or whose cryptoperiod ends within `within_days`."""
        horizon = utcnow() + timedelta(days=within_days)
        rules_by_policy: dict[str, policy.Rules] = {}
        out: list[dict[str, Any]] = []
        after: tuple[str, str] | None = None
        while page := self.store.page_keys(after=after, limit=500):
            after = key_cursor(page[-1])
            for key in page:
                if key.state not in (
                    KeyState.ACTIVE,
                    KeyState.SUSPENDED,
                    KeyState.DEACTIVATED,
                    KeyState.DESTROY_SCHEDULED,
                ):
                    continue
                rules = rules_by_policy.get(key.policy)
                if rules is None:  # once per policy, not once per key
                    rules = rules_by_policy[key.policy] = self.rules(key.policy)
                marks = {
                    "rotation_due": policy.rotation_due(key, rules),
                    "originator_end": policy.originator_end(key, rules),
                    "recipient_end": policy.recipient_end(key, rules),
                    "destroy_after": parse_iso(key.destroy_after) if key.destroy_after else None,
                }
                if key.state == KeyState.DEACTIVATED:
                    marks["rotation_due"] = marks["originator_end"] = None
                soon = {k: v for k, v in marks.items() if v is not None and v <= horizon}
                if soon:
                    out.append(
                        {
                            "id": key.id,
                            "label": key.label,
                            "state": str(key.state),
                            "policy": key.policy,
                            **{k: iso(v) for k, v in soon.items()},
                            "overdue": any(v <= utcnow() for v in soon.values()),
                        }
                    )
        return sorted(
            out,
            key=lambda d: min(v for k, v in d.items() if k.endswith(("_due", "_end", "_after"))),
        )


def _summary(kind: OpKind, key: Key, params: dict[str, Any]) -> str:
    label = clean(key.label, 60)
    if kind == OpKind.KEY_ROTATE:
        return (
            f"Rotate {key.algorithm} key {label!r}: create version {params['new_version']} "
            f"and retire version {key.current_version}"
        )
    if kind == OpKind.KEY_REVOKE:
        return f"Revoke key {label!r} ({params['reason']}); it becomes {params['to_state']}"
    if kind == OpKind.KEY_SCHEDULE_DESTROY:
        return f"Schedule destruction of key {label!r} after {params['destroy_after']}"
    if kind == OpKind.KEY_DESTROY:
        return f"DESTROY every version of key {label!r} on the token (cannot be undone)"
    if kind == OpKind.KEY_SELFCHECK:
        return f"Self-check key {label!r} (changes nothing)"
    return (
        f"{str(kind).split('.')[-1].replace('-', ' ').capitalize()} key {label!r}: "
        f"{params['from_state']} -> {params['to_state']}"
    )


def _check_label(label: str) -> None:
    if clean(label) != label:
        raise errors.UsageError(
            "A key label may not contain control or bidi-override characters.",
            "Use printable text only.",
        )


def _state(text: str) -> KeyState | None:
    return KeyState(text) if text else None


def _require(value: T | None) -> T:
    if value is None:
        raise errors.UsageError("This operation needs a key.")
    return value


def _iso_or_empty(value: Any) -> str:
    return iso(value) if value is not None else ""
