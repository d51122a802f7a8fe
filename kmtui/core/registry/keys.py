"""Keys in the registry: keys, their versions and links, paged in any order the UI sorts by."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from kmtui.core.errors import StoreError
from kmtui.core.models import Key, KeyState, KeyVersion, iso, utcnow
from kmtui.core.registry.schema import NEVER_DUE, OPEN_INTENTS_SCAN
from kmtui.core.registry.text import IDENTIFIER, like_escape, plain

if TYPE_CHECKING:
    from kmtui.core.registry.db import Store

_KEY_COLUMNS = (
    "id, label, algorithm, purpose, policy, state, exportable, current_version, owner, notes, "
    "tags, created_at, updated_at, activated_at, deactivated_at, rotation_due_at, destroy_after, "
    "state_before, revocation_reason, compromised_at"
)
_VERSION_COLUMNS = "key_id, version, state, cka_id, token_serial, kcv, fingerprint, created_at"
_ORDER_BY: dict[str, str] = {
    "label": "label COLLATE NOCASE",
    "state": "state",
    "algorithm": "algorithm COLLATE NOCASE",
    "policy": "ifnull(policy, '')",
    "created_at": "created_at",
    "rotation_due_at": f"ifnull(rotation_due_at, '{NEVER_DUE}')",
}
"""The SQL of each of KEY_ORDERS: each expression is indexed together with id (migration 5)."""
_WINDOW = 1000  # index entries Keys.page walks before it scans the table instead
_TAG_LOOKUP = 5000  # up to this many keys with a tag, Keys.page reads them instead of scanning
_IN_CHUNK = 500  # well under SQLite's bound-parameter limit


class Keys:
    """The keys, key_versions, key_links and reconcile_acks tables, read and written by name."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, key_id: str) -> Key | None:
        """A key with its versions, or None."""
        rows = self._store.rows("SELECT * FROM keys WHERE id = ?", (key_id,))
        return self._with_versions(rows)[0] if rows else None

    def find(self, *, label: str) -> list[Key]:
        """Keys whose label is exactly `label` (case matters, as in CKA_LABEL)."""
        # The NOCASE term lets SQLite seek keys_by_label; the plain term keeps the match exact.
        rows = self._store.rows(
            "SELECT * FROM keys WHERE label = ? COLLATE NOCASE AND label = ? "
            "ORDER BY label COLLATE NOCASE, id",
            (label, label),
        )
        return self._with_versions(rows)

    def count(self) -> int:
        with self._store.sqlite_errors():
            return int(self._store.conn.execute("SELECT count(*) FROM keys").fetchone()[0])

    def page(
        self,
        after: tuple[str, str] | None = None,
        limit: int = 100,
        state: str | None = None,
        label_prefix: str | None = None,
        algorithm: str | None = None,
        policy: str | None = None,
        tag: str | None = None,
        id_prefix: str | None = None,
        order: str = "label",
        descending: bool = False,
    ) -> list[Key]:
        """One page of keys in `order` (then id); pass key_cursor(last key, order) to go on.

        Every filter runs in SQL: label and algorithm are case-insensitive prefixes, id a
        prefix, policy exact ('' for keys without one), tag one exact element of the tags.
        """
        expression = _ORDER_BY.get(order)
        if expression is None:
            raise ValueError(f"cannot order keys by {order!r}; orders: {', '.join(_ORDER_BY)}")
        # `seek` narrows the order's own index; `check` is tested row by row.
        seek: list[tuple[str, Any]] = []
        check: list[tuple[str, Any]] = []
        if state is not None:  # keys_by_state serves (state, label) as well as (state, id)
            (seek if order in ("state", "label") else check).append(("state = ?", str(state)))
        if label_prefix:  # LIKE is ASCII-case-insensitive, like NOCASE, so it seeks too
            like = ("label LIKE ? ESCAPE '\\'", like_escape(label_prefix) + "%")
            (seek if order == "label" else check).append(like)
        if algorithm:
            like = ("algorithm LIKE ? ESCAPE '\\'", like_escape(algorithm) + "%")
            (seek if order == "algorithm" else check).append(like)
        if policy is not None:
            (seek if order == "policy" else check).append(("ifnull(policy, '') = ?", policy))
        if tag:
            # A substring test on the JSON text rejects most rows fast; json_each makes it exact.
            check.append(("instr(tags, ?) > 0", json.dumps(tag)))
            check.append(
                ("EXISTS (SELECT 1 FROM json_each(keys.tags) WHERE json_each.value = ?)", tag)
            )
        if id_prefix:
            check.append(("id GLOB ?", re.sub(r"([*?\[])", r"[\1]", id_prefix) + "*"))
        column, _, collation = expression.partition(" COLLATE ")
        if after is not None:
            value, key_id = after
            if order == "rotation_due_at" and not value:
                value = NEVER_DUE
            sign = "<" if descending else ">"
            if IDENTIFIER.fullmatch(column):
                right = f"? COLLATE {collation}" if collation else "?"
                # Collation on the right-hand side, so SQLite seeks the index by row value.
                seek.append((f"({column}, id) {sign} ({right}, ?)", (value, key_id)))
            else:  # SQLite seeks an expression index by a range on it, not by a row value
                condition = f"{column} {sign}= ? AND ({column} {sign} ? OR id {sign} ?)"
                seek.append((condition, (value, value, key_id)))
        direction = " DESC" if descending else ""
        order_by = f" ORDER BY {expression}{direction}, id{direction}"
        if order == "policy" and policy is not None:  # one value: SQLite sees the index's order
            order_by = f" ORDER BY id{direction}"  # only when the expression is left out

        def where(conditions: list[tuple[str, Any]]) -> tuple[str, list[Any]]:
            args: list[Any] = []
            for _, value in conditions:
                args.extend(value if isinstance(value, tuple) else (value,))
            text = " AND ".join(sql for sql, _ in conditions)
            return (f" WHERE {text}" if text else ""), args

        seek_sql, seek_args = where(seek)
        if not check:
            sql = f"SELECT * FROM keys{seek_sql}{order_by} LIMIT ?"  # noqa: S608 - constants
            return self._with_versions(self._store.rows(sql, [*seek_args, int(limit)]))
        # Walk the order's index a window at a time: common matches fill a page at once. When
        # the window runs dry, rare or absent matches are cheaper found by one scan of the
        # table (no index lookups) and a sort of just the matches.
        check_sql, check_args = where(check)
        window = (
            f"SELECT * FROM (SELECT * FROM keys{seek_sql}{order_by} LIMIT ?) AS keys"  # noqa: S608
            f"{check_sql}{order_by} LIMIT ?"
        )
        rows = self._store.rows(window, [*seek_args, _WINDOW, *check_args, int(limit)])
        if len(rows) < limit:
            both_sql, both_args = where(seek + check)
            if tag and self._tag_count(tag) <= _TAG_LOOKUP:
                # A rare tag: read just its keys (key_tags), then sort those few.
                source = "key_tags CROSS JOIN keys ON keys.id = key_tags.key_id"
                both_sql = f" WHERE key_tags.tag = ? AND {both_sql.removeprefix(' WHERE ')}"
                both_args = [tag, *both_args]
                sql = f"SELECT keys.* FROM {source}{both_sql}{order_by} LIMIT ?"  # noqa: S608
            else:
                sql = f"SELECT * FROM keys NOT INDEXED{both_sql}{order_by} LIMIT ?"  # noqa: S608
            rows = self._store.rows(sql, [*both_args, int(limit)])
        return self._with_versions(rows)

    def _tag_count(self, tag: str) -> int:
        """How many keys carry `tag` (a count over key_tags' primary key, no table read)."""
        with self._store.sqlite_errors():
            sql = "SELECT count(*) FROM (SELECT 1 FROM key_tags WHERE tag = ? LIMIT ?)"
            return int(self._store.conn.execute(sql, (tag, _TAG_LOOKUP + 1)).fetchone()[0])

    def _with_versions(self, rows: list[dict[str, Any]]) -> list[Key]:
        """Keys from rows, their versions fetched in a few IN queries rather than one per key."""
        keys = [_key_from_row(row) for row in rows]
        by_id = {key.id: key for key in keys}
        ids = list(by_id)
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for r in self._store.rows(
                f"SELECT {_VERSION_COLUMNS} FROM key_versions "  # noqa: S608 - only placeholders
                f"WHERE key_id IN ({marks}) ORDER BY key_id, version",
                chunk,
            ):
                by_id[r["key_id"]].versions.append(_version_from_row(r))
        return keys

    def with_fingerprint(self, fingerprint: str) -> list[Key]:
        """Keys holding a version whose public key has this fingerprint."""
        rows = self._store.rows(
            "SELECT * FROM keys WHERE id IN "
            "(SELECT key_id FROM key_versions WHERE fingerprint = ?) ORDER BY id",
            (fingerprint,),
        )
        return self._with_versions(rows)

    def dependents(self, key_id: str) -> list[tuple[str, str]]:
        """(key id, relation) of every key wrapped by or derived from `key_id`."""
        return [
            (r["key_id"], r["relation"])
            for r in self._store.rows(
                "SELECT key_id, relation FROM key_links WHERE related_key_id = ? ORDER BY key_id",
                (key_id,),
            )
        ]

    def versions_on(self, token_serial: str) -> list[tuple[Key, KeyVersion]]:
        """Every object the registry places on one token, with its key (without versions).

        Two indexed reads, however many objects other tokens hold: reconciliation compares
        only the token it is logged in to.
        """
        versions = [
            _version_from_row(r)
            for r in self._store.rows(
                f"SELECT {_VERSION_COLUMNS} FROM key_versions "  # noqa: S608 - constant columns
                "WHERE token_serial = ? ORDER BY key_id, version",
                (token_serial,),
            )
        ]
        ids = sorted({v.key_id for v in versions})
        keys: dict[str, Key] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT * FROM keys WHERE id IN ({marks})"  # noqa: S608 - only placeholders
            keys.update((r["id"], _key_from_row(r)) for r in self._store.rows(sql, chunk))
        return [(keys[v.key_id], v) for v in versions if v.key_id in keys]

    def add(self, key: Key) -> None:
        """Register a key and its versions in one transaction, so neither exists alone."""
        for version in key.versions:
            if version.key_id != key.id:
                raise ValueError(f"version {version.version} belongs to {version.key_id!r}")
        with self._store.transaction() as conn:
            conn.execute(
                f"INSERT INTO keys ({_KEY_COLUMNS}) "  # noqa: S608 - constant column list
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.label,
                    key.algorithm,
                    key.purpose,
                    key.policy or None,
                    str(key.state),
                    int(key.exportable),
                    key.current_version,
                    key.owner,
                    key.notes,
                    json.dumps(key.tags),
                    key.created_at,
                    key.updated_at or key.created_at,
                    # NULL, not '': an empty string would sort before every date and look due.
                    key.activated_at or None,
                    key.deactivated_at or None,
                    key.rotation_due_at or None,
                    key.destroy_after or None,
                    key.state_before or None,
                    key.revocation_reason or None,
                    key.compromised_at or None,
                ),
            )
            for version in key.versions:
                self.add_version(version)

    def add_version(self, version: KeyVersion) -> None:
        """Register one token object of a key; (token serial, CKA_ID) must be unique."""
        with self._store.transaction() as conn:
            conn.execute(
                f"INSERT INTO key_versions ({_VERSION_COLUMNS}) "  # noqa: S608 - constant columns
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    version.key_id,
                    version.version,
                    str(version.state),
                    bytes(version.cka_id),
                    version.token_serial,
                    version.kcv,
                    version.fingerprint,
                    version.created_at,
                ),
            )

    def update(self, key: Key) -> None:
        """Write back a key's mutable fields (its versions are updated one by one)."""
        with self._store.transaction() as conn:
            cursor = conn.execute(
                "UPDATE keys SET label = ?, state = ?, current_version = ?, owner = ?, notes = ?, "
                "tags = ?, updated_at = ?, activated_at = ?, deactivated_at = ?, "
                "rotation_due_at = ?, destroy_after = ?, state_before = ?, "
                "revocation_reason = ?, compromised_at = ? WHERE id = ?",
                (
                    key.label,
                    str(key.state),
                    key.current_version,
                    key.owner,
                    key.notes,
                    json.dumps(key.tags),
                    key.updated_at or iso(utcnow()),
                    key.activated_at or None,
                    key.deactivated_at or None,
                    key.rotation_due_at or None,
                    key.destroy_after or None,
                    key.state_before or None,
                    key.revocation_reason or None,
                    key.compromised_at or None,
                    key.id,
                ),
            )
            if cursor.rowcount != 1:
                raise StoreError(f"Key {plain(key.id)} is not in the registry.")

    def update_version_state(self, key_id: str, version: int, state: KeyState) -> None:
        with self._store.transaction() as conn:
            conn.execute(
                "UPDATE key_versions SET state = ? WHERE key_id = ? AND version = ?",
                (str(state), key_id, version),
            )

    def link(self, key_id: str, related_key_id: str, relation: str) -> None:
        """Record that `key_id` was wrapped by (or derived from) `related_key_id`."""
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO key_links VALUES (?, ?, ?, ?)",
                (key_id, related_key_id, relation, iso(utcnow())),
            )

    def open_intents(self) -> list[dict[str, Any]]:
        """Intent events no outcome refers to, oldest first (seq, action, key_id, params), as the
        kept table lists them (`closed` tells whether the trail agrees)."""
        return self._store.rows(
            "SELECT e.seq, e.action, e.key_id, e.params FROM audit_open_intents AS x "
            "JOIN audit_events AS e ON e.seq = x.seq WHERE e.outcome = 'intent' ORDER BY x.seq"
        )

    def closed(self, intent: dict[str, Any]) -> int:
        """The outcome event that closed this intent, read from the trail itself (0: none)."""
        rows = self._store.rows(
            "SELECT seq FROM audit_events WHERE key_id = ? AND seq > ? AND action = ? "
            "AND outcome != 'intent' AND json_valid(params) "
            "AND json_extract(params, '$.intent') = ? ORDER BY seq LIMIT 1",
            (intent["key_id"], intent["seq"], intent["action"], intent["seq"]),
        )
        return int(rows[0]["seq"]) if rows else 0

    def open_intents_by_scan(self) -> list[int]:
        """The seqs of the open intents found by a scan of the whole trail (for checks)."""
        return sorted(r["seq"] for r in self._store.rows(OPEN_INTENTS_SCAN))

    def acknowledged_findings(self) -> set[str]:
        return {r["finding"] for r in self._store.rows("SELECT finding FROM reconcile_acks")}

    def acknowledge_finding(self, finding: str, note: str, audit_seq: int) -> None:
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO reconcile_acks VALUES (?, ?, ?, ?)",
                (finding, note, audit_seq, iso(utcnow())),
            )


def _version_from_row(r: dict[str, Any]) -> KeyVersion:
    return KeyVersion(
        key_id=r["key_id"],
        version=r["version"],
        state=KeyState(r["state"]),
        cka_id=bytes(r["cka_id"]),
        token_serial=r["token_serial"],
        created_at=r["created_at"],
        kcv=r["kcv"],
        fingerprint=r["fingerprint"],
    )


def _key_from_row(row: dict[str, Any]) -> Key:
    return Key(
        id=row["id"],
        label=row["label"],
        algorithm=row["algorithm"],
        purpose=row["purpose"],
        policy=row["policy"] or "",
        state=KeyState(row["state"]),
        created_at=row["created_at"],
        exportable=bool(row["exportable"]),
        current_version=row["current_version"],
        owner=row["owner"],
        notes=row["notes"],
        tags=list(json.loads(row["tags"])),
        updated_at=row["updated_at"],
        activated_at=row["activated_at"] or "",
        deactivated_at=row["deactivated_at"] or "",
        rotation_due_at=row["rotation_due_at"] or "",
        destroy_after=row["destroy_after"] or "",
        state_before=row["state_before"] or "",
        revocation_reason=row["revocation_reason"] or "",
        compromised_at=row["compromised_at"] or "",
    )
