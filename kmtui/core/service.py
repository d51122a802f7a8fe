"""THE GATE: every state-changing operation runs through `Workstation._operation`.

An operation writes an intent event and commits it before the token is touched; if that write
fails, nothing reaches the HSM. The outcome (success or the error) is written afterwards. Policy
and dual-control checks plug in here too, so no UI path, command or bug can skip them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kmtui.core import errors, templates, uri
from kmtui.core.audit import AuditLog
from kmtui.core.hsm import Hsm, TokenInfo
from kmtui.core.models import (
    Key,
    KeyState,
    KeyVersion,
    Outcome,
    Policy,
    iso,
    new_key_id,
    utcnow,
)
from kmtui.core.store import Store

DEFAULT_POLICY = Policy(
    name="default",
    description="Non-exportable keys; rules for cryptoperiods and dual control come with policies.",
    rules={"exportable": False},
)


def session_context() -> dict[str, str]:
    """Where the operator sits: recorded with every event (SSH or the local console)."""
    via = "ssh" if os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_TTY") else "console"
    try:
        tty = os.ttyname(0)
    except OSError:
        tty = ""
    return {"via": via, "tty": tty}


@dataclass
class Workstation:
    """The token, the registry and the audit trail of one workstation."""

    hsm: Hsm
    store: Store
    audit: AuditLog
    demo: bool = False

    @classmethod
    def assemble(cls, hsm: Hsm, store: Store, *, demo: bool = False) -> Workstation:
        ws = cls(hsm=hsm, store=store, audit=AuditLog(store), demo=demo)
        ws.ensure_defaults()
        return ws

    def ensure_defaults(self) -> None:
        if not any(p.name == DEFAULT_POLICY.name for p in self.store.policies()):
            self.store.add_policy(
                Policy(
                    DEFAULT_POLICY.name,
                    DEFAULT_POLICY.description,
                    dict(DEFAULT_POLICY.rules),
                    iso(utcnow()),
                )
            )

    def close(self) -> None:
        self.hsm.close()
        self.store.close()

    # -- the token ----------------------------------------------------------------------------

    def token_info(self) -> TokenInfo:
        return self.hsm.info()

    def login(self, pin: str, actor: str = "console") -> TokenInfo:
        """Log in to the token; both a success and a refusal are audited (never the PIN)."""
        try:
            info = self.hsm.login(pin)
        except errors.HsmError as exc:
            self.audit.append(
                "token.login",
                actor=actor,
                outcome=Outcome.FAILURE,
                params={**session_context(), "error": type(exc).__name__},
            )
            raise
        self.audit.append(
            "token.login",
            actor=actor,
            outcome=Outcome.SUCCESS,
            params={**session_context(), "token": info.label, "serial": info.serial},
        )
        return info

    def logout(self, actor: str = "console", reason: str = "") -> None:
        if self.hsm.logged_in:
            self.hsm.logout()
            self.audit.append(
                "token.logout", actor=actor, outcome=Outcome.SUCCESS, params={"reason": reason}
            )

    # -- the gate -----------------------------------------------------------------------------

    @contextmanager
    def _operation(
        self, action: str, *, actor: str, key_id: str = "", params: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Intent committed first, then the work, then the outcome; yields a dict for results."""
        params = {**(params or {}), **session_context()}
        intent = self.audit.append(
            action, actor=actor, outcome=Outcome.INTENT, key_id=key_id, params=params
        )
        result: dict[str, Any] = {}
        try:
            yield result
        except errors.KmtuiError as exc:
            self.audit.append(
                action,
                actor=actor,
                outcome=Outcome.FAILURE,
                key_id=key_id,
                params={
                    "intent": intent.seq,
                    "error": type(exc).__name__,
                    "message": exc.message,
                    **result,
                },
            )
            raise
        self.audit.append(
            action,
            actor=actor,
            outcome=Outcome.SUCCESS,
            key_id=key_id,
            params={"intent": intent.seq, **result},
        )

    # -- keys ---------------------------------------------------------------------------------

    def create_key(
        self,
        *,
        label: str,
        algorithm: str,
        purpose: str | None = None,
        policy: str = DEFAULT_POLICY.name,
        exportable: bool = False,
        actor: str,
    ) -> Key:
        """Generate version 1 of a new key on the token and register it."""
        key_id = new_key_id()
        template = templates.build(
            algorithm,
            purpose,
            cka_id=templates.cka_id(key_id, 1),
            label=label,
            exportable=exportable,
        )
        if not any(p.name == policy for p in self.store.policies()):
            raise errors.UsageError(f"No policy named {policy!r}.", "See `kmtui policies list`.")
        serial = self.hsm.info().serial
        now = iso(utcnow())
        params = {
            "label": label,
            "algorithm": template.algorithm.name,
            "purpose": template.purpose.value,
            "policy": policy,
            "exportable": exportable,
            "cka_id": template.cka_id.hex(),
        }
        key = Key(
            id=key_id,
            label=label,
            algorithm=template.algorithm.name,
            purpose=template.purpose.value,
            policy=policy,
            state=KeyState.ACTIVE,
            created_at=now,
            exportable=exportable,
            updated_at=now,
        )
        with self._operation("key.create", actor=actor, key_id=key_id, params=params) as result:
            try:
                generated = self.hsm.generate(template)
            except errors.TemplateMismatch:
                key.state = KeyState.QUARANTINED
                key.versions = [
                    KeyVersion(key_id, 1, KeyState.QUARANTINED, template.cka_id, serial, now)
                ]
                self.store.add_key(key)
                result["quarantined"] = True
                raise
            key.versions = [
                KeyVersion(
                    key_id,
                    1,
                    KeyState.ACTIVE,
                    template.cka_id,
                    serial,
                    now,
                    kcv=generated.kcv,
                    fingerprint=generated.fingerprint,
                )
            ]
            self.store.add_key(key)
            result.update(kcv=generated.kcv, fingerprint=generated.fingerprint)
        return key

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
            found = self.store.get_key(matches[0].id)
            if found is not None:
                return found
        if len(matches) > 1:
            raise errors.UsageError(
                f"{len(matches)} keys are labelled {ref!r}.", "Name the key by its id instead."
            )
        raise errors.UsageError(f"No key {ref!r}.", "See `kmtui keys list`.")

    def version_uri(self, key: Key, version: KeyVersion) -> str:
        info = self.hsm.info() if self.hsm.logged_in else None
        kind = "secret-key" if templates.ALGORITHMS[key.algorithm].symmetric else "private"
        return uri.build(
            token=info.label if info else self.hsm.token_label,
            serial=version.token_serial,
            cka_id=version.cka_id,
            label=key.label,
            object_type=kind,
        )

    def describe(self, key: Key) -> dict[str, Any]:
        """The JSON shape of DESIGN.md section 5 (`kmtui keys show KEY --json`)."""
        current = next((v for v in key.versions if v.version == key.current_version), None)
        return {
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
            "versions": [
                {
                    "version": v.version,
                    "state": str(v.state),
                    **({"kcv": v.kcv} if v.kcv else {"fingerprint": v.fingerprint}),
                    "pkcs11_uri": self.version_uri(key, v),
                }
                for v in key.versions
            ],
        }
