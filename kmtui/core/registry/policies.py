"""Policies in the registry: the named rule sets keys are held to."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from kmtui.core.errors import StoreError
from kmtui.core.models import Policy, iso, utcnow
from kmtui.core.registry.text import plain

if TYPE_CHECKING:
    from kmtui.core.registry.db import Store


class Policies:
    """The policies table, read and written by name."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def add(self, policy: Policy) -> None:
        """Register a policy; keys may only name policies that exist (foreign key)."""
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT INTO policies (name, description, rules, updated_at) VALUES (?, ?, ?, ?)",
                (
                    policy.name,
                    policy.description,
                    json.dumps(policy.rules, sort_keys=True),
                    policy.updated_at or iso(utcnow()),
                ),
            )

    def update(self, policy: Policy) -> None:
        with self._store.transaction() as conn:
            cursor = conn.execute(
                "UPDATE policies SET description = ?, rules = ?, updated_at = ? WHERE name = ?",
                (
                    policy.description,
                    json.dumps(policy.rules, sort_keys=True),
                    policy.updated_at or iso(utcnow()),
                    policy.name,
                ),
            )
            if cursor.rowcount != 1:
                raise StoreError(f"Policy {plain(policy.name)} is not in the registry.")

    def all(self) -> list[Policy]:
        """Every policy, by name (there are few)."""
        return [
            _policy_from_row(r) for r in self._store.rows("SELECT * FROM policies ORDER BY name")
        ]

    def get(self, name: str) -> Policy | None:
        """One policy, read fresh (another process may have changed it), or None."""
        rows = self._store.rows("SELECT * FROM policies WHERE name = ?", (name,))
        return _policy_from_row(rows[0]) if rows else None


def _policy_from_row(r: dict[str, Any]) -> Policy:
    return Policy(r["name"], r["description"], json.loads(r["rules"]), r["updated_at"])
