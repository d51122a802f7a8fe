"""Operators and approvals as rows: every statement dual control runs, named for what it does."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from kmtui.core.models import Operator, OperatorState, Role

if TYPE_CHECKING:
    from kmtui.core.registry.db import Store

_COLUMNS = "name, role, state, enrolled_at, sealed_seed, last_step, failures"


def _operator(row: dict[str, Any]) -> Operator:
    return Operator(
        name=row["name"],
        role=Role(row["role"]),
        state=OperatorState(row["state"]),
        enrolled_at=row["enrolled_at"],
        sealed_seed=bytes(row["sealed_seed"] or b""),
        last_step=int(row["last_step"]),
        failures=int(row["failures"]),
    )


class OperatorRecords:
    """The operators and approvals tables; writes take the caller's transaction connection."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def all(self) -> list[Operator]:
        sql = f"SELECT {_COLUMNS} FROM operators ORDER BY name"  # noqa: S608 - constant columns
        return [_operator(row) for row in self._store.rows(sql)]

    def find(self, name: str) -> Operator | None:
        sql = f"SELECT {_COLUMNS} FROM operators WHERE name = ?"  # noqa: S608 - constant columns
        rows = self._store.rows(sql, (name,))
        return _operator(rows[0]) if rows else None

    # -- enrolment (inside one transaction) ------------------------------------------------

    @staticmethod
    def same_name(conn: sqlite3.Connection, name: str) -> tuple[str, str] | None:
        """(name, state) of the operator whose name equals `name` ignoring case."""
        row = conn.execute(
            "SELECT name, state FROM operators WHERE name = ? COLLATE NOCASE", (name,)
        ).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    @staticmethod
    def seed_holder(conn: sqlite3.Connection, fingerprint: str, name: str) -> str | None:
        """Another operator already enrolled with this seed, if any."""
        row = conn.execute(
            "SELECT name FROM operators WHERE seed_fingerprint = ? AND name != ?",
            (fingerprint, name),
        ).fetchone()
        return str(row[0]) if row else None

    @staticmethod
    def enrol(
        conn: sqlite3.Connection,
        name: str,
        role: Role,
        enrolled_at: str,
        sealed: bytes,
        fingerprint: str,
        *,
        new: bool,
    ) -> None:
        """A pending operator with a fresh sealed seed; re-enrolment keeps last_step (so no
        step already accepted becomes valid again)."""
        values = (str(role), OperatorState.PENDING.value, enrolled_at, sealed, fingerprint, name)
        if new:
            conn.execute(
                "INSERT INTO operators (role, state, enrolled_at, sealed_seed, "
                "seed_fingerprint, name) VALUES (?, ?, ?, ?, ?, ?)",
                values,
            )
        else:
            conn.execute(
                "UPDATE operators SET role = ?, state = ?, enrolled_at = ?, sealed_seed = ?, "
                "seed_fingerprint = ?, failures = 0 WHERE name = ?",
                values,
            )

    @staticmethod
    def set_state(conn: sqlite3.Connection, name: str, state: OperatorState) -> None:
        """Unlocking resets failures; revoking burns the sealed seed (its fingerprint stays)."""
        if state is OperatorState.ACTIVE:
            sql = "UPDATE operators SET state = ?, failures = 0 WHERE name = ?"
        elif state is OperatorState.REVOKED:
            sql = "UPDATE operators SET state = ?, sealed_seed = x'' WHERE name = ?"
        else:
            sql = "UPDATE operators SET state = ? WHERE name = ?"
        conn.execute(sql, (state.value, name))

    # -- codes ------------------------------------------------------------------------------

    @staticmethod
    def accept_step(
        conn: sqlite3.Connection, operator: Operator, step: int, expected: OperatorState
    ) -> bool:
        """Compare-and-set: a concurrent acceptance, lock or re-enrolment wins over this one."""
        return (
            conn.execute(
                "UPDATE operators SET last_step = ?, failures = 0, state = ? "
                "WHERE name = ? AND state = ? AND last_step < ? AND sealed_seed = ?",
                (
                    step,
                    OperatorState.ACTIVE.value,
                    operator.name,
                    expected.value,
                    step,
                    operator.sealed_seed,
                ),
            ).rowcount
            == 1
        )

    @staticmethod
    def count_failure(conn: sqlite3.Connection, name: str) -> tuple[int, str]:
        """One more failed code: (failures now, state)."""
        row = conn.execute(
            "UPDATE operators SET failures = failures + 1 WHERE name = ? RETURNING failures, state",
            (name,),
        ).fetchone()
        return (int(row[0]), str(row[1])) if row else (0, "")

    # -- approvals --------------------------------------------------------------------------

    @staticmethod
    def add_approval(
        conn: sqlite3.Connection, digest: str, operator: str, approved_at: str, expires_at: str
    ) -> int:
        row = conn.execute(
            "INSERT INTO approvals (digest, operator, approved_at, expires_at) "
            "VALUES (?, ?, ?, ?) RETURNING id",
            (digest, operator, approved_at, expires_at),
        ).fetchone()
        return int(row[0])

    @staticmethod
    def approval(conn: sqlite3.Connection, approval_id: int) -> tuple[Any, ...] | None:
        """(digest, operator, expires_at, executed_at, the operator's state now)."""
        row: tuple[Any, ...] | None = conn.execute(
            "SELECT a.digest, a.operator, a.expires_at, a.executed_at, o.state "
            "FROM approvals AS a LEFT JOIN operators AS o ON o.name = a.operator "
            "WHERE a.id = ?",
            (approval_id,),
        ).fetchone()
        return row

    @staticmethod
    def spend(conn: sqlite3.Connection, approval_id: int, executed_at: str) -> None:
        conn.execute(
            "UPDATE approvals SET executed_at = ? WHERE id = ?", (executed_at, approval_id)
        )

    # -- enrolment history, from the trail (what locking or revoking later cannot change) --------

    def confirmations(self) -> int:
        """How many enrolments the trail shows confirmed."""
        return int(
            self._store.rows(
                "SELECT count(*) AS n FROM audit_events WHERE action = 'operator.confirmed' "
                "AND outcome = 'success'"
            )[0]["n"]
        )

    def bootstrap_enrolments(self) -> set[str]:
        """Names whose enrolment the trail shows started without approvals (the first ones)."""
        return {
            r["name"]
            for r in self._store.rows(
                "SELECT json_extract(params, '$.operator') AS name FROM audit_events "
                "WHERE action = 'operator.enroll' AND outcome = 'intent' "
                "AND json_extract(params, '$.bootstrap') = 1"
            )
        }
