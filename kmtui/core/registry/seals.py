"""The rows that decide who may do what, read as sealed content, and the seals kept beside them.

A subject names one such row (a key with its versions counts as one): `key:ID`, `operator:NAME`,
`policy:NAME`, `ack:FINDING`, `audit-key:FINGERPRINT`, and `registry` (the registry id).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from kmtui.core.registry.schema import SUBJECT

REGISTRY = "registry"
_TABLES = {  # subject kind -> (table, key column)
    "key": ("keys", "id"),
    "operator": ("operators", "name"),
    "policy": ("policies", "name"),
    "ack": ("reconcile_acks", "finding"),
    "audit-key": ("audit_keys", "fingerprint"),
}


def subject(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def _plain(row: sqlite3.Row | tuple[Any, ...], names: list[str]) -> dict[str, Any]:
    return {
        n: (bytes(v).hex() if isinstance(v, bytes | memoryview) else v)
        for n, v in zip(names, row, strict=True)
    }


class SealRecords:
    """Reads of sealed content and of the seals table, and seal writes, on a given connection
    (the store's, inside its transaction, or a read-only one on an auditor's copy)."""

    @staticmethod
    def registry_id(conn: sqlite3.Connection) -> str:
        """The registry's id ('' before migration 4 made one)."""
        row = conn.execute("SELECT value FROM meta WHERE key = 'registry_id'").fetchone()
        return str(row[0]) if row else ""

    @staticmethod
    def content(conn: sqlite3.Connection, name: str) -> Any:
        """What the seal of `name` covers, as plain JSON values; None for an absent row."""
        if name == REGISTRY:
            registry = SealRecords.registry_id(conn)
            return {"registry_id": registry} if registry else None
        kind, _, key = name.partition(":")
        table, column = _TABLES[kind]
        found = SealRecords._rows(conn, f"SELECT * FROM {table} WHERE {column} = ?", key)  # noqa: S608
        if not found:
            return None
        if kind != "key":
            return found[0]
        versions = SealRecords._rows(
            conn, "SELECT * FROM key_versions WHERE key_id = ? ORDER BY version", key
        )
        return {"key": found[0], "versions": versions}

    @staticmethod
    def every_content(conn: sqlite3.Connection) -> dict[str, Any]:
        """The content of every sealable row held now, in one pass per table (as `content`
        reads them one by one)."""
        out: dict[str, Any] = {}
        registry = SealRecords.registry_id(conn)
        if registry:
            out[REGISTRY] = {"registry_id": registry}
        for kind, (table, column) in _TABLES.items():
            cursor = conn.execute(f"SELECT * FROM {table}")  # noqa: S608 - constant names
            names = [d[0] for d in cursor.description]
            for found in cursor:
                plain = _plain(found, names)
                out[subject(kind, str(plain[column]))] = (
                    {"key": plain, "versions": []} if kind == "key" else plain
                )
        cursor = conn.execute("SELECT * FROM key_versions ORDER BY key_id, version")
        names = [d[0] for d in cursor.description]
        for found in cursor:
            version = _plain(found, names)
            holder = out.get(subject("key", str(version["key_id"])))
            if holder is not None:
                holder["versions"].append(version)
        return out

    @staticmethod
    def put_many(conn: sqlite3.Connection, seals: list[tuple[str, int, str]]) -> None:
        conn.executemany(
            "INSERT INTO seals (subject, seq, mac) VALUES (?, ?, ?) "
            "ON CONFLICT (subject) DO UPDATE SET seq = excluded.seq, mac = excluded.mac",
            seals,
        )

    @staticmethod
    def _rows(conn: sqlite3.Connection, sql: str, key: str) -> list[dict[str, Any]]:
        cursor = conn.execute(sql, (key,))
        names = [d[0] for d in cursor.description]
        return [_plain(row, names) for row in cursor.fetchall()]

    @staticmethod
    def put_event(conn: sqlite3.Connection, seq: int, mac: str) -> None:
        conn.execute("INSERT OR REPLACE INTO event_seals (seq, mac) VALUES (?, ?)", (seq, mac))

    @staticmethod
    def events_after(conn: sqlite3.Connection, after: int, upto: int) -> list[dict[str, Any]]:
        """Events (after, upto] with their seal's MAC ('' when none): what the head would cover."""
        cursor = conn.execute(
            "SELECT e.seq, e.action, e.outcome, e.hash, coalesce(s.mac, '') AS mac "
            "FROM audit_events AS e LEFT JOIN event_seals AS s ON s.seq = e.seq "
            "WHERE e.seq > ? AND e.seq <= ? ORDER BY e.seq",
            (after, upto),
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    @staticmethod
    def seal_of(conn: sqlite3.Connection, name: str) -> tuple[int, str] | None:
        row = conn.execute("SELECT seq, mac FROM seals WHERE subject = ?", (name,)).fetchone()
        return (int(row[0]), str(row[1])) if row else None

    @staticmethod
    def last_change(conn: sqlite3.Connection, name: str) -> int:
        """The newest event of the trail that says it changed `name` (0: none ever did)."""
        sql = f"SELECT max(seq) FROM audit_events WHERE ({SUBJECT}) = ?"  # noqa: S608
        return int(conn.execute(sql, (name,)).fetchone()[0] or 0)

    @staticmethod
    def sealed(conn: sqlite3.Connection) -> dict[str, tuple[int, str]]:
        rows = conn.execute("SELECT subject, seq, mac FROM seals")
        return {str(r[0]): (int(r[1]), str(r[2])) for r in rows}

    @staticmethod
    def changed_in_trail(conn: sqlite3.Connection) -> dict[str, int]:
        """Each row the trail says was changed, with the newest event that changed it."""
        sql = (
            f"SELECT ({SUBJECT}), max(seq) FROM audit_events "  # noqa: S608
            f"WHERE ({SUBJECT}) IS NOT NULL GROUP BY 1"
        )
        return {str(r[0]): int(r[1]) for r in conn.execute(sql)}
