"""The registry writes of key operations, shared by the gate and by reconciliation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from kmtui.core.control import policy
from kmtui.core.control.gate import Apply
from kmtui.core.control.operations import Operation
from kmtui.core.control.policies import PolicyBook
from kmtui.core.models import Key, KeyState, KeyVersion, iso, utcnow
from kmtui.core.registry.db import Store
from kmtui.core.token import templates


class KeyRecords:
    """What the registry records when a key is created, rotated or destroyed."""

    def __init__(self, store: Store, policies: PolicyBook) -> None:
        self._store = store
        self._policies = policies

    def rotation(self, key: Key, version: int, check: str, serial: str) -> tuple[Apply, KeyState]:
        """Register a new current version and retire the previous one as the policy says."""
        rules = self._policies.rules(key.policy)
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
        retired = KeyState.DEACTIVATED if rules.retire_previous == "deactivate" else KeyState.ACTIVE
        updated = replace(
            key, current_version=version, activated_at=now, updated_at=now, versions=[]
        )
        updated.rotation_due_at = _iso_or_empty(policy.rotation_due(updated, rules))

        def apply() -> None:
            self._store.keys.add_version(new)
            self._store.keys.update_version_state(key.id, key.current_version, retired)
            self._store.keys.update(updated)

        return apply, retired

    def destruction(self, key: Key, target: KeyState) -> Apply:
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
            self._store.keys.update(updated)
            for version in key.versions:
                self._store.keys.update_version_state(key.id, version.version, target)

        return apply

    def created(self, key_id: str, params: dict[str, Any], version: KeyVersion) -> Key:
        """The registry record of a freshly made key (from its operation's parameters)."""
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
        key.rotation_due_at = _iso_or_empty(
            policy.rotation_due(key, self._policies.rules(key.policy))
        )
        return key

    def registered(
        self,
        op: Operation,
        serial: str,
        kcv: str,
        tag: str,
        links: Sequence[tuple[str, str]] = (),
        *,
        fingerprint: str = "",
        more_tags: Sequence[str] = (),
    ) -> Apply:
        """The record of a key that came into the token other than by generation here (imported,
        a recipient's public key, entered from components), tagged so, with its links."""
        version = KeyVersion(
            op.key_id,
            1,
            KeyState.ACTIVE,
            bytes.fromhex(str(op.params["cka_id"])),
            serial,
            iso(utcnow()),
            kcv=kcv,
            fingerprint=fingerprint,
        )
        key = self.created(op.key_id, dict(op.params), version)
        key.tags = [tag, *more_tags]

        def apply() -> None:
            self._store.keys.add(key)
            for related, relation in links:
                self._store.keys.link(key.id, related, relation)

        return apply


def _iso_or_empty(value: datetime | None) -> str:
    return iso(value) if value is not None else ""
