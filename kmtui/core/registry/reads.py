"""Named reads for the UI, which holds no SQL: each answers one thing a pane or line shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kmtui.core.models import iso, utcnow

if TYPE_CHECKING:
    from kmtui.core.registry.db import Store


class Reads:
    """Small reads of several tables; the UI calls them through workstation.store.reads."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def last_approval_id(self) -> int:
        """The newest approval's id (0 before any): later ones were given in this session."""
        return int(self._store.rows("SELECT coalesce(max(id), 0) AS id FROM approvals")[0]["id"])

    def pending_approvals(self) -> int:
        """How many approvals still wait for their operation: neither executed nor expired."""
        rows = self._store.rows(
            "SELECT count(*) AS n FROM approvals WHERE executed_at IS NULL AND expires_at > ?",
            (iso(utcnow()),),
        )
        return int(rows[0]["n"])

    def approvers_since(self, approval_id: int) -> list[str]:
        """The operators, by name, who approved anything after approval `approval_id`."""
        return [
            str(r["operator"])
            for r in self._store.rows(
                "SELECT DISTINCT operator FROM approvals WHERE id > ? ORDER BY operator",
                (approval_id,),
            )
        ]

    def last_approvals(self) -> dict[str, str]:
        """When each operator last approved (an operator who never did is absent)."""
        return {
            r["operator"]: r["at"]
            for r in self._store.rows(
                "SELECT operator, max(approved_at) AS at FROM approvals GROUP BY operator"
            )
        }

    def key_label(self, key_id: str) -> str:
        """A key's label, or '' once the registry no longer holds it (the trail outlives keys)."""
        rows = self._store.rows("SELECT label FROM keys WHERE id = ?", (key_id,))
        return str(rows[0]["label"]) if rows else ""

    def last_audit_seq(self) -> int:
        """The seq of the newest audit event, 0 for an empty trail."""
        return int(self._store.rows("SELECT max(seq) AS n FROM audit_events")[0]["n"] or 0)
