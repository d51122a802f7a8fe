"""Reading keys: by id, label or PKCS#11 URI; their JSON shape; what is due; one key's detail."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pkcs11 import ObjectClass

from kmtui.core import errors
from kmtui.core.audit.log import AuditLog
from kmtui.core.control import policy
from kmtui.core.control.operations import OpKind
from kmtui.core.control.policies import PolicyBook
from kmtui.core.models import (
    GONE,
    AuditEvent,
    Key,
    KeyState,
    KeyVersion,
    iso,
    key_cursor,
    parse_iso,
    utcnow,
)
from kmtui.core.registry.db import Store
from kmtui.core.safetext import clean
from kmtui.core.token import templates, uri
from kmtui.core.token.session import Hsm

USE_ACTIONS = (str(OpKind.KEY_SELFCHECK), str(OpKind.KEY_EXPORT), "key.use")
URI_TYPES = {  # RFC 7512 `type=` of the object that is the key
    ObjectClass.SECRET_KEY: "secret-key",
    ObjectClass.PUBLIC_KEY: "public",
    ObjectClass.PRIVATE_KEY: "private",
}
HISTORY = 50
"""Events of one key's history the detail view reads (newest first)."""


@dataclass(frozen=True)
class Due:
    """A key whose rotation is due or whose cryptoperiod ends soon, with each date that is."""

    id: str
    label: str
    state: str
    policy: str
    dates: dict[str, str]
    overdue: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "state": self.state,
            "policy": self.policy,
            **self.dates,
            "overdue": self.overdue,
        }


@dataclass(frozen=True)
class KeyDetail:
    """Everything the key detail view shows, read in one place."""

    key: Key
    described: dict[str, Any]
    history: list[AuditEvent]
    last_use: AuditEvent | None
    rules: dict[str, Any]
    attributes: dict[str, Any] = field(default_factory=dict)
    attributes_error: errors.KmtuiError | None = None


class KeyQueries:
    """Read-only views of the registry's keys (and, for the detail view, the token's object)."""

    def __init__(self, store: Store, hsm: Hsm, audit: AuditLog, policies: PolicyBook) -> None:
        self._store = store
        self._hsm = hsm
        self._audit = audit
        self._policies = policies

    def get(self, ref: str) -> Key:
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
        key = self._store.keys.get(ref)
        if key is not None:
            return key
        matches = self._store.keys.find(label=ref)
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
            token=self._hsm.found_label,
            serial=version.token_serial,
            cka_id=version.cka_id,
            label=key.label,
            object_type=kind,
        )

    def describe(self, key: Key) -> dict[str, Any]:
        """The JSON shape of DESIGN.md section 5 (`kmtui keys show KEY --json`)."""
        current = key.current
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

    def last_use(self, key_id: str) -> AuditEvent | None:
        """The newest audit event that used the key (self-checks, exports)."""
        for action in USE_ACTIONS:
            events = self._audit.events(key_id=key_id, action=action, limit=1, newest_first=True)
            if events:
                return events[0]
        return None

    def detail(self, ref: str) -> KeyDetail:
        """One key with its JSON shape, history, last use, policy rules and the token's
        attributes of its current version (an unreadable token is reported, not raised)."""
        key = self.get(ref)
        attributes: dict[str, Any] = {}
        problem: errors.KmtuiError | None = None
        current = key.current
        if current is not None and key.state not in GONE:
            cls = templates.object_class(key.algorithm, key.tags)
            try:
                attributes = self._hsm.objects.attributes(current.cka_id, cls)
            except errors.KmtuiError as exc:
                problem = exc
        return KeyDetail(
            key=key,
            described=self.describe(key),
            history=self._audit.events(key_id=key.id, limit=HISTORY, newest_first=True),
            last_use=self.last_use(key.id),
            rules=self._policies.rules(key.policy).to_json() if key.policy else {},
            attributes=attributes,
            attributes_error=problem,
        )

    def due(self, within_days: int = 30) -> list[Due]:
        """Keys whose rotation is due or whose cryptoperiod ends within `within_days`."""
        now = utcnow()
        horizon = now + timedelta(days=within_days)
        rules_by_policy: dict[str, policy.Rules] = {}
        out: list[tuple[datetime, Due]] = []
        after: tuple[str, str] | None = None
        while page := self._store.keys.page(after=after, limit=500):
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
                    rules = rules_by_policy[key.policy] = self._policies.rules(key.policy)
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
                    due = Due(
                        key.id,
                        key.label,
                        str(key.state),
                        key.policy,
                        {k: iso(v) for k, v in soon.items()},
                        any(v <= now for v in soon.values()),
                    )
                    out.append((min(soon.values()), due))
        return [due for _, due in sorted(out, key=lambda pair: pair[0])]
