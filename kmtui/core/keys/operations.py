"""Key lifecycle operations: prepared for the approvers, then run through the gate.

Each kind has a preparation (checked against the key's state and policy before anyone approves)
and a piece of work (the token step, filling in the facts of its outcome event, and the registry
writes it returns for the outcome's transaction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

from kmtui.core import errors
from kmtui.core.control import lifecycle, policy
from kmtui.core.control.gate import Apply, Executed, Prepared, Work
from kmtui.core.control.lifecycle import Use
from kmtui.core.control.operations import ApprovalInput, Operation, OpKind
from kmtui.core.control.pin import Credential, audit_params, pin_or_protected
from kmtui.core.keys.work import KeyWork
from kmtui.core.models import (
    GONE,
    Key,
    KeyState,
    KeyVersion,
    Outcome,
    iso,
    new_key_id,
    parse_iso,
    utcnow,
)
from kmtui.core.registry.seals import subject
from kmtui.core.safetext import clean
from kmtui.core.token import officer, templates

T = TypeVar("T")


class KeyOperations(KeyWork):
    """Create, rotate, change state, self-check and destroy keys; every run passes the gate."""

    # -- preparing (what the approvers see) -------------------------------------------------

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
        rules = self._policies.rules(policy_name)
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
        depends = (subject("policy", policy_name),)
        return self._gate.prepared(
            op, summary, rules, subject=subject("key", key_id), depends=depends
        )

    def prepare(self, kind: OpKind, ref: str, **params: Any) -> Prepared:
        """An operation on an existing key, checked against its state before anyone approves."""
        key = self._queries.get(ref)
        rules = self._policies.rules(key.policy)
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
        changes = kind != OpKind.KEY_SELFCHECK
        return self._gate.prepared(
            Operation(kind, key.id, base),
            summary,
            rules,
            key=key,
            subject=subject("key", key.id) if changes else "",
            depends=(subject("key", key.id), subject("policy", key.policy)),
        )

    # -- running ----------------------------------------------------------------------------

    def run(
        self,
        prepared: Prepared,
        approvals: Sequence[ApprovalInput] = (),
        *,
        actor: str = "console",
        so_login: Credential | None = None,
    ) -> Executed:
        """Execute a prepared key operation (the approvals are checked against its digest)."""
        op = prepared.operation
        handlers: dict[OpKind, Callable[[Prepared], Work]] = {
            OpKind.KEY_CREATE: self._work_create,
            OpKind.KEY_ROTATE: self._work_rotate,
            OpKind.KEY_DESTROY: self._work_destroy,
            OpKind.KEY_SELFCHECK: self._work_selfcheck,
        }
        if op.kind == OpKind.KEY_CREATE and op.params.get("trusted"):
            if so_login is None:
                raise errors.UsageError(
                    "A trusted KEK is created by the security officer.",
                    "Two SO custodians enter their SO PIN halves (--so-pin-halves-from for "
                    "scripts).",
                )
            work = self._work_create(prepared, so_login)
        else:
            work = handlers.get(op.kind, self._work_transition)(prepared)
        policy_name = (
            str(op.params["policy"])
            if "policy" in op.params
            else (prepared.key.policy if prepared.key else "default")
        )
        if prepared.key is not None:
            fresh = self._queries.get(prepared.key.id)
            if fresh.state != prepared.key.state or fresh.current_version != (
                prepared.key.current_version
            ):
                raise errors.PolicyRefused(
                    f"Key {clean(fresh.label, 60)!r} changed since this operation was prepared.",
                    "Prepare it again and collect fresh approvals.",
                )
        rules = self._policies.rules(policy_name)
        return self._gate.execute(prepared, approvals, work, rules=rules, actor=actor)

    def create(
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
        return self._queries.get(prepared.operation.key_id)

    # -- the work of each kind ---------------------------------------------------------------

    def _work_create(self, prepared: Prepared, so_login: Credential | None = None) -> Work:
        op = prepared.operation
        p = op.params
        template = templates.from_params(p)

        def work(facts: dict[str, Any]) -> Apply:
            serial = self._hsm.serial
            now = iso(utcnow())
            try:
                if so_login is not None:
                    facts.update(audit_params(so_login, "so_"))
                    officer.create_trusted_kek(self._hsm, pin_or_protected(so_login), template)
                    generated = self._hsm.keygen.adopt(template)
                else:
                    generated = self._hsm.keygen.generate(template)
            except errors.TemplateMismatch:
                version = KeyVersion(
                    op.key_id, 1, KeyState.QUARANTINED, template.cka_id, serial, now
                )
                key = replace(
                    self._records.created(op.key_id, dict(p), version),
                    state=KeyState.QUARANTINED,
                    activated_at="",
                    rotation_due_at="",
                )
                self._seals.write(
                    lambda: self._store.keys.add(key),
                    "key.quarantined",
                    subject("key", key.id),
                    actor="kmtui",
                    outcome=Outcome.FAILURE,
                    key_id=key.id,
                    params={"intent": facts["intent"], "cka_id": template.cka_id.hex()},
                )
                facts["quarantined"] = True
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
            key = self._records.created(op.key_id, dict(p), version)
            if p.get("trusted"):
                key.tags = ["trusted"]
            facts.update(kcv=generated.kcv, fingerprint=generated.fingerprint, version=1)
            return lambda: self._store.keys.add(key)

        return work

    def _work_rotate(self, prepared: Prepared) -> Work:
        key = _require(prepared.key)
        version = key.current_version + 1
        template = templates.build(
            key.algorithm,
            key.purpose,
            cka_id=templates.cka_id(key.id, version),
            label=key.label,
            exportable=key.exportable,
        )

        def work(facts: dict[str, Any]) -> Apply:
            serial = self._hsm.serial
            generated = self._hsm.keygen.generate(template)
            check = generated.kcv or generated.fingerprint
            apply, retired = self._records.rotation(key, version, check, serial)
            facts.update(
                version=version,
                kcv=generated.kcv,
                fingerprint=generated.fingerprint,
                previous_version=key.current_version,
                previous_state=str(retired),
            )
            return apply

        return work

    def _work_transition(self, prepared: Prepared) -> Work:
        key = _require(prepared.key)
        op = prepared.operation
        target = KeyState(str(op.params["to_state"]))

        def work(facts: dict[str, Any]) -> Apply:
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
                facts["dependents"] = [
                    {"key_id": k, "relation": rel} for k, rel in self._store.keys.dependents(key.id)
                ]
            elif target == KeyState.DEACTIVATED:
                updated.deactivated_at = now
            elif op.kind == OpKind.KEY_ACTIVATE:
                updated.activated_at = now
            facts.update(state=str(target))
            retire_current = target in (KeyState.COMPROMISED, KeyState.DEACTIVATED)

            def apply() -> None:
                self._store.keys.update(updated)
                current = key.current
                if current is not None and retire_current:
                    self._store.keys.update_version_state(key.id, current.version, target)

            return apply

        return work

    def _work_destroy(self, prepared: Prepared) -> Work:
        key = _require(prepared.key)
        target = KeyState(str(prepared.operation.params["to_state"]))

        def work(facts: dict[str, Any]) -> Apply:
            destroyed = 0
            for version in key.versions:
                if version.state not in GONE:
                    destroyed += self._hsm.objects.destroy(version.cka_id)
            facts.update(
                objects_destroyed=destroyed,
                state=str(target),
                final_checks={str(v.version): v.kcv or v.fingerprint for v in key.versions},
            )
            return self._records.destruction(key, target)

        return work

    def _work_selfcheck(self, prepared: Prepared) -> Work:
        key = _require(prepared.key)
        current = _require(key.current)

        def work(facts: dict[str, Any]) -> None:
            checks = self._hsm.selftest.run(current.cka_id, key.algorithm, key.purpose)
            expected = current.kcv or current.fingerprint
            observed = checks.get("kcv") or checks.get("fingerprint", "")
            checks["registry-match"] = "pass" if observed == expected else "fail"
            facts["checks"] = checks
            if any(v == "fail" for v in checks.values()):
                raise errors.HsmError(
                    f"Self-check of {clean(key.label, 60)!r} failed: "
                    + ", ".join(k for k, v in checks.items() if v == "fail")
                    + ".",
                    "Do not use this key; run `kmtui reconcile` and investigate.",
                )

        return work


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
