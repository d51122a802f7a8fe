"""The registry's schema: migrations, triggers, and the tables kmtui derives from others."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

from kmtui.core.errors import SchemaTooNew
from kmtui.core.registry.text import plain

if TYPE_CHECKING:
    from kmtui.core.registry.db import Store

NEVER_DUE = "~"  # sorts after every ISO date: keys with no rotation date come last


def _migration_1(conn: sqlite3.Connection) -> None:
    """The first schema: registry, policies, operators, approvals and the audit chain."""
    for statement in _SCHEMA_1:
        conn.execute(statement)


_GUARD_TRIGGERS = {
    "audit_events_no_update": """CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
    "audit_events_no_delete": """CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
}

_SCHEMA_1 = (
    """CREATE TABLE policies (
        name TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        rules TEXT NOT NULL DEFAULT '{}',
        updated_at TEXT NOT NULL
    )""",
    """CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        purpose TEXT NOT NULL,
        policy TEXT REFERENCES policies(name),
        state TEXT NOT NULL,
        exportable INTEGER NOT NULL DEFAULT 0 CHECK (exportable IN (0, 1)),
        current_version INTEGER NOT NULL DEFAULT 1,
        owner TEXT NOT NULL DEFAULT '',
        notes TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        activated_at TEXT,
        deactivated_at TEXT,
        rotation_due_at TEXT,
        destroy_after TEXT
    )""",
    """CREATE TABLE key_versions (
        key_id TEXT NOT NULL REFERENCES keys(id),
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        cka_id BLOB NOT NULL,
        token_serial TEXT NOT NULL,
        kcv TEXT NOT NULL DEFAULT '',
        fingerprint TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        PRIMARY KEY (key_id, version),
        UNIQUE (token_serial, cka_id)
    )""",
    """CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        state TEXT NOT NULL,
        enrolled_at TEXT NOT NULL,
        sealed_seed BLOB NOT NULL DEFAULT x'',
        last_step INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE approvals (
        id INTEGER PRIMARY KEY,
        digest TEXT NOT NULL,
        operator TEXT NOT NULL REFERENCES operators(name),
        approved_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        executed_at TEXT
    )""",
    # No foreign key to keys: the trail outlives the keys it describes.
    """CREATE TABLE audit_events (
        seq INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        key_id TEXT NOT NULL DEFAULT '',
        params TEXT NOT NULL,
        outcome TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    # Guards kmtui's own code; someone with the file can drop them, which the chain then detects
    # (and the next open puts them back).
    *_GUARD_TRIGGERS.values(),
    "CREATE INDEX keys_by_state ON keys (state, label COLLATE NOCASE, id)",
    "CREATE INDEX keys_by_label ON keys (label COLLATE NOCASE, id)",
    "CREATE INDEX keys_by_policy ON keys (policy)",
    "CREATE INDEX keys_by_rotation_due ON keys (rotation_due_at)",
    "CREATE INDEX keys_by_destroy_after ON keys (destroy_after)",
    "CREATE INDEX approvals_by_digest ON approvals (digest)",
    "CREATE INDEX audit_by_ts ON audit_events (ts)",
    "CREATE INDEX audit_by_key ON audit_events (key_id, seq)",
    "CREATE INDEX audit_by_actor ON audit_events (actor, seq)",
    "CREATE INDEX audit_by_action ON audit_events (action, seq)",
)


def _migration_2(conn: sqlite3.Connection) -> None:
    """Lifecycle details, links between keys, and acknowledged reconciliation findings."""
    for statement in (
        "ALTER TABLE keys ADD COLUMN state_before TEXT",
        "ALTER TABLE keys ADD COLUMN revocation_reason TEXT",
        "ALTER TABLE keys ADD COLUMN compromised_at TEXT",
        """CREATE TABLE key_links (
            key_id TEXT NOT NULL REFERENCES keys(id),
            related_key_id TEXT NOT NULL REFERENCES keys(id),
            relation TEXT NOT NULL CHECK (relation IN ('wrapped-by', 'derived-from')),
            created_at TEXT NOT NULL,
            PRIMARY KEY (key_id, related_key_id, relation)
        )""",
        "CREATE INDEX key_links_by_related ON key_links (related_key_id)",
        """CREATE TABLE reconcile_acks (
            finding TEXT PRIMARY KEY,
            note TEXT NOT NULL,
            audit_seq INTEGER NOT NULL,
            acked_at TEXT NOT NULL
        )""",
    ):
        conn.execute(statement)


def _migration_3(conn: sqlite3.Connection) -> None:
    """One seed, one operator: a fingerprint of each seed (never the seed) kept unique."""
    for statement in (
        "ALTER TABLE operators ADD COLUMN seed_fingerprint TEXT NOT NULL DEFAULT ''",
        "CREATE UNIQUE INDEX operators_by_seed_fingerprint ON operators (seed_fingerprint) "
        "WHERE seed_fingerprint != ''",
        "CREATE UNIQUE INDEX operators_by_folded_name ON operators (name COLLATE NOCASE)",
    ):
        conn.execute(statement)


def _migration_4(conn: sqlite3.Connection) -> None:
    """Audit anchors: the registry's identity, HSM-signed checkpoints, the audit public key."""
    for statement in (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE audit_checkpoints (
            seq INTEGER PRIMARY KEY,
            head_hash TEXT NOT NULL,
            ts TEXT NOT NULL,
            token_serial TEXT NOT NULL,
            key_fingerprint TEXT NOT NULL,
            reason TEXT NOT NULL,
            signature TEXT NOT NULL
        )""",
        """CREATE TABLE audit_keys (
            fingerprint TEXT PRIMARY KEY,
            pem TEXT NOT NULL,
            token_serial TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
    ):
        conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('registry_id', ?)", (secrets.token_hex(8),))


def _migration_5(conn: sqlite3.Connection) -> None:
    """One index per key order, each ending in id, so every sort is a seek and never a sort."""
    for statement in (
        "CREATE INDEX keys_by_state_id ON keys (state, id)",
        "CREATE INDEX keys_by_algorithm ON keys (algorithm COLLATE NOCASE, id)",
        "CREATE INDEX keys_by_policy_id ON keys (ifnull(policy, ''), id)",
        "CREATE INDEX keys_by_created ON keys (created_at, id)",
        f"CREATE INDEX keys_by_rotation_order ON keys (ifnull(rotation_due_at, '{NEVER_DUE}'), id)",
    ):
        conn.execute(statement)


# -- open intents: intent events no outcome refers to (reconciliation's starting point) --------
#
# An outcome closes an intent when it comes later, is not itself an intent, names the same action
# and key, and carries the intent's seq as params.intent. Finding the open ones by scanning the
# trail costs a pass over every event; audit_open_intents holds them instead, kept by two
# triggers in the transaction of each append (so raw inserts keep it too). It is derived data:
# Store.check(full=True) compares it with the scan (derived_problem), and Store.open rebuilds
# it when its triggers are gone (ensure_derived).
OPEN_INTENTS_SCAN = (
    "SELECT seq FROM audit_events WHERE outcome = 'intent' "
    "EXCEPT "
    "SELECT i.seq FROM audit_events AS o CROSS JOIN audit_events AS i "
    "ON i.seq = json_extract(o.params, '$.intent') "
    "WHERE o.outcome != 'intent' AND json_valid(o.params) AND i.outcome = 'intent' "
    "AND i.seq < o.seq AND i.action = o.action AND i.key_id = o.key_id"
)
_INTENT_TRIGGERS = {
    "audit_intent_opened": """CREATE TRIGGER audit_intent_opened AFTER INSERT ON audit_events
        WHEN NEW.outcome = 'intent'
        BEGIN INSERT OR IGNORE INTO audit_open_intents (seq) VALUES (NEW.seq); END""",
    "audit_intent_closed": """CREATE TRIGGER audit_intent_closed AFTER INSERT ON audit_events
        WHEN NEW.outcome != 'intent' AND json_valid(NEW.params)
        AND json_extract(NEW.params, '$.intent') IS NOT NULL
        BEGIN
            DELETE FROM audit_open_intents WHERE seq = (
                SELECT i.seq FROM audit_events AS i
                WHERE i.seq = json_extract(NEW.params, '$.intent') AND i.seq < NEW.seq
                AND i.outcome = 'intent' AND i.action = NEW.action AND i.key_id = NEW.key_id
            );
        END""",
}


def _rebuild_open_intents(conn: sqlite3.Connection) -> None:
    """(Re)create the intent triggers and fill audit_open_intents from one scan of the trail."""
    conn.execute("CREATE TABLE IF NOT EXISTS audit_open_intents (seq INTEGER PRIMARY KEY)")
    for name, sql in _INTENT_TRIGGERS.items():
        conn.execute(f'DROP TRIGGER IF EXISTS "{name}"')
        conn.execute(sql)
    conn.execute("DELETE FROM audit_open_intents")
    conn.execute(f"INSERT INTO audit_open_intents (seq) {OPEN_INTENTS_SCAN}")


def _migration_6(conn: sqlite3.Connection) -> None:
    """Open intents kept as they happen, so reconciliation never scans the whole trail."""
    _rebuild_open_intents(conn)


# -- key tags: each element of keys.tags as a row, so a rare tag is found without a scan --------
# A tags value that is not JSON (written by hand) has no tags here rather than failing writes.
_KEY_TAG_TRIGGERS = {
    "keys_tags_added": """CREATE TRIGGER keys_tags_added AFTER INSERT ON keys
        BEGIN
            INSERT OR IGNORE INTO key_tags (tag, key_id) SELECT value, NEW.id
            FROM json_each(CASE WHEN json_valid(NEW.tags) THEN NEW.tags ELSE '[]' END)
            WHERE value IS NOT NULL;
        END""",
    "keys_tags_changed": """CREATE TRIGGER keys_tags_changed AFTER UPDATE OF id, tags ON keys
        BEGIN
            DELETE FROM key_tags WHERE key_id = OLD.id;
            INSERT OR IGNORE INTO key_tags (tag, key_id) SELECT value, NEW.id
            FROM json_each(CASE WHEN json_valid(NEW.tags) THEN NEW.tags ELSE '[]' END)
            WHERE value IS NOT NULL;
        END""",
    "keys_tags_removed": """CREATE TRIGGER keys_tags_removed AFTER DELETE ON keys
        BEGIN DELETE FROM key_tags WHERE key_id = OLD.id; END""",
}
_KEY_TAGS_SCAN = (
    "SELECT value AS tag, keys.id AS key_id FROM keys, "
    "json_each(CASE WHEN json_valid(keys.tags) THEN keys.tags ELSE '[]' END) "
    "WHERE value IS NOT NULL"
)


def _rebuild_key_tags(conn: sqlite3.Connection) -> None:
    """(Re)create the key_tags triggers and fill the table from the keys' tags."""
    # No type on tag: values keep theirs, so tag = ? matches exactly what json_each does.
    conn.execute(
        "CREATE TABLE IF NOT EXISTS key_tags (tag NOT NULL, key_id TEXT NOT NULL, "
        "PRIMARY KEY (tag, key_id)) WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS key_tags_by_key ON key_tags (key_id)")
    for name, sql in _KEY_TAG_TRIGGERS.items():
        conn.execute(f'DROP TRIGGER IF EXISTS "{name}"')
        conn.execute(sql)
    conn.execute("DELETE FROM key_tags")
    conn.execute(f"INSERT OR IGNORE INTO key_tags (tag, key_id) {_KEY_TAGS_SCAN}")


def _migration_7(conn: sqlite3.Connection) -> None:
    """Key tags one per row, so filtering by a rare tag reads its keys, not the whole table."""
    _rebuild_key_tags(conn)


SUBJECT = "CASE WHEN json_valid(params) THEN json_extract(params, '$.subject') END"
"""The registry row an audit event changed (`key:ID`, `operator:NAME`, ...): an expression over
the hashed params, so the trail itself says which event last changed each sealed row."""


def _migration_8(conn: sqlite3.Connection) -> None:
    """Seals: each security row's HMAC (made on the token), bound to the event that last changed
    it; and the trail indexed by the row each event changed."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS seals "
        "(subject TEXT PRIMARY KEY, seq INTEGER NOT NULL, mac TEXT NOT NULL)"
    )
    conn.execute(f"CREATE INDEX IF NOT EXISTS audit_by_subject ON audit_events (({SUBJECT}), seq)")


def _migration_9(conn: sqlite3.Connection) -> None:
    """Event seals: the HMAC the token made over each event kmtui wrote while logged in, so the
    token's head never moves over, and reconciliation never finishes, work forged into the file."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS event_seals (seq INTEGER PRIMARY KEY, mac TEXT NOT NULL)"
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
    _migration_8,
    _migration_9,
]


def _read_version(conn: sqlite3.Connection) -> int:
    """Schema version of an open database; 0 before the first migration."""
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone():
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(store: Store) -> None:
    """Bring the schema up to date, one transaction per migration."""
    with store.sqlite_errors():
        version = _read_version(store.conn)
    if version > len(MIGRATIONS):
        raise SchemaTooNew(
            f"The database {plain(store.path)} has schema version {version}; this kmtui "
            f"knows only up to {len(MIGRATIONS)}.",
            "Upgrade kmtui to open it; do not use this version on it.",
        )
    for target in range(version + 1, len(MIGRATIONS) + 1):
        with store.transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            if _read_version(conn) >= target:  # another kmtui process got there first
                continue
            MIGRATIONS[target - 1](conn)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))


def foreign_triggers(conn: sqlite3.Connection) -> list[str]:
    """Triggers kmtui did not write, or its own with other SQL: a trigger runs inside every write
    kmtui makes, and one planted with the file can drop or rewrite what kmtui writes unseen."""
    known = {**_GUARD_TRIGGERS, **_INTENT_TRIGGERS, **_KEY_TAG_TRIGGERS}
    return sorted(
        str(name)
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        if " ".join(str(sql).split()) != " ".join(known.get(str(name), "").split())
    )


def ensure_derived(store: Store) -> None:
    """Rebuild a derived table whose triggers are gone (dropped by hand); put the append-only
    guards back."""
    with store.sqlite_errors():
        names = {
            r[0]
            for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        }
    missing = [sql for name, sql in _GUARD_TRIGGERS.items() if name not in names]
    if missing:
        with store.transaction() as conn:
            for sql in missing:
                conn.execute(sql)
    for triggers, rebuild in (
        (_INTENT_TRIGGERS, _rebuild_open_intents),
        (_KEY_TAG_TRIGGERS, _rebuild_key_tags),
    ):
        if not set(triggers) <= names:
            with store.transaction() as conn:
                rebuild(conn)


def derived_problem(conn: sqlite3.Connection) -> str:
    """'' when the tables kmtui derives (open intents, key tags) agree with their sources.

    Compared in SQL, both ways (EXCEPT), so nothing the size of the registry is loaded.
    """
    began = not conn.in_transaction
    if began:
        conn.execute("BEGIN")  # one snapshot for every read, whatever commits meanwhile
    try:
        for kept, derived, column, what in (
            ("SELECT seq FROM audit_open_intents", OPEN_INTENTS_SCAN, "seq", "open intents"),
            ("SELECT tag, key_id FROM key_tags", _KEY_TAGS_SCAN, "key_id", "key tags"),
        ):  # what differs: events of the trail, or keys
            differ = [
                str(row[0])
                for row in conn.execute(
                    f"SELECT {column} FROM ({kept} EXCEPT SELECT * FROM ({derived})) "  # noqa: S608
                    f"UNION ALL SELECT {column} FROM (SELECT * FROM ({derived}) EXCEPT {kept}) "
                    "LIMIT 5"
                )
            ]
            if differ:
                where = "audit trail (events" if column == "seq" else "keys (keys"
                return f"the table of {what} disagrees with the {where} {', '.join(differ)})"
    finally:
        if began:
            conn.execute("COMMIT")
    return ""
