"""The registry: SQLite schema, migrations and the queries the UI and CLI page through."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from kmtui.core.errors import (
    DatabaseCorrupt,
    DatabaseLocked,
    DatabaseMode,
    DiskFull,
    SchemaTooNew,
    StoreError,
)
from kmtui.core.models import Key, KeyState, KeyVersion, Policy, iso, utcnow
from kmtui.core.safetext import clean

DEFAULT_BUSY_TIMEOUT_MS = 5000

_KEY_COLUMNS = (
    "id, label, algorithm, purpose, policy, state, exportable, current_version, owner, notes, "
    "tags, created_at, updated_at, activated_at, deactivated_at, rotation_due_at, destroy_after, "
    "state_before, revocation_reason, compromised_at"
)
_VERSION_COLUMNS = "key_id, version, state, cka_id, token_serial, kcv, fingerprint, created_at"
NEVER_DUE = "~"  # sorts after every ISO date: keys with no rotation date come last
KEY_ORDERS: dict[str, str] = {
    "label": "label COLLATE NOCASE",
    "state": "state",
    "algorithm": "algorithm COLLATE NOCASE",
    "policy": "ifnull(policy, '')",
    "created_at": "created_at",
    "rotation_due_at": f"ifnull(rotation_due_at, '{NEVER_DUE}')",
}
"""The orders page_keys seeks by: each expression is indexed together with id (migration 5)."""
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COLLATIONS = {"BINARY", "NOCASE", "RTRIM"}
_WINDOW = 1000  # index entries page_keys walks before it scans the table instead
_TAG_LOOKUP = 5000  # up to this many keys with a tag, page_keys reads them instead of scanning
_IN_CHUNK = 500  # well under SQLite's bound-parameter limit
_MESSAGE_LIMIT = 200


def _plain(value: object) -> str:
    """Paths and SQLite messages end up on a terminal: neutralise them and keep them short."""
    return clean(value, _MESSAGE_LIMIT)


def map_error(exc: sqlite3.Error, path: Path) -> StoreError:
    """The one place a SQLite failure becomes a message a custodian can act on."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # primary code; absent on driver errors
    where = _plain(path)
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return DatabaseLocked(
            f"The database {where} is locked.",
            "Another kmtui or sqlite3 process holds it; close it and retry.",
        )
    if code == sqlite3.SQLITE_FULL:
        return DiskFull(
            f"The disk holding {where} is full.",
            f"Free space on {_plain(path.parent)}; nothing was written.",
        )
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return DatabaseCorrupt(
            f"The database {where} is damaged ({_plain(exc)}).",
            "Do not write to it; restore it from a backup made by kmtui.",
        )
    if code == sqlite3.SQLITE_READONLY:
        return StoreError(
            f"The database {where} is read-only for this user.",
            "kmtui must write the file and the -wal and -shm files next to it: check the owner "
            "and permissions of the file and its directory.",
        )
    if code == sqlite3.SQLITE_CANTOPEN:
        return StoreError(
            f"The database {where} cannot be opened.",
            "Check that its directory exists and that this user may read and write it.",
        )
    return StoreError(
        f"The database {where} refused the operation ({_plain(exc)}).",
        "Nothing was written. If this repeats, run `kmtui audit verify` and keep the file for "
        "investigation.",
    )


def _migration_1(conn: sqlite3.Connection) -> None:
    """The first schema: registry, policies, operators, approvals and the audit chain."""
    for statement in _SCHEMA_1:
        conn.execute(statement)


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
    # Guards kmtui's own code; someone with the file can drop them, which the chain then detects.
    """CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
    """CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
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
# Store.check(full=True) compares it with the scan, and Store.open rebuilds it when its
# triggers are gone.
_OPEN_INTENTS_SCAN = (
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
    conn.execute(f"INSERT INTO audit_open_intents (seq) {_OPEN_INTENTS_SCAN}")


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


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
]


def _read_version(conn: sqlite3.Connection) -> int:
    """Schema version of an open database; 0 before the first migration."""
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone():
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _single(conn: sqlite3.Connection, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    return row[0] if row else None


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """A connection in kmtui's durable mode, or a refusal that says what is wrong."""
    # isolation_level=None: kmtui opens every transaction itself (see Store.transaction).
    conn = sqlite3.connect(
        str(path), timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        _configure(conn, path, busy_timeout_ms)
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path, busy_timeout_ms: int) -> None:
    where = _plain(path)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    mode = str(_single(conn, "PRAGMA journal_mode")).lower()
    if "schema_version" in tables:
        if mode != "wal":
            raise DatabaseMode(
                f"The database {where} is in journal mode {_plain(mode)!r}, not WAL.",
                "It was changed outside kmtui or copied without its -wal file. Restore it from a "
                "backup made by kmtui, or, if you are sure it is complete, set it back with: "
                f"sqlite3 {shlex.quote(where)} 'PRAGMA journal_mode=WAL'",
            )
    elif tables:
        raise StoreError(
            f"{where} is a SQLite database, but not kmtui's.",
            "Point kmtui at its own database (--home or KMTUI_HOME), or move this file away.",
        )
    else:
        mode = str(_single(conn, "PRAGMA journal_mode = WAL")).lower()
        if mode != "wal":
            raise DatabaseMode(
                f"The database {where} could not be switched to WAL (it stayed {_plain(mode)!r}).",
                "Put the database on a local file system that supports WAL (not a network share).",
            )
    conn.execute("PRAGMA synchronous = FULL")
    if _single(conn, "PRAGMA synchronous") != 2:
        raise DatabaseMode(
            f"SQLite refused synchronous=FULL on {where}.",
            "kmtui needs durable commits; use a standard SQLite build.",
        )
    conn.execute("PRAGMA foreign_keys = ON")
    if _single(conn, "PRAGMA foreign_keys") != 1:
        raise DatabaseMode(
            f"SQLite refused foreign_keys=ON on {where}.",
            "This SQLite build lacks foreign keys; use a standard SQLite build.",
        )


INTEGRITY_CHECKS = ("full", "quick")
"""How thoroughly Store.open checks the file: SQLite's integrity_check, or its quick_check.

quick_check reads every page and checks the b-trees, record formats and NOT NULL/CHECK
constraints, but not that each index agrees with its table nor UNIQUE constraints:
at 1,000,000 events it took 0.56 s against 4.9 s. A store opened with "quick" is held to the
rest by Store.check(full=True), which the TUI runs in the background at start; a failure there
makes the store refuse every later write.
"""


def integrity_problem(conn: sqlite3.Connection, *, full: bool = True) -> str:
    """The first line integrity_check (or quick_check) reports, or '' when the file is sound."""
    rows = conn.execute("PRAGMA integrity_check" if full else "PRAGMA quick_check").fetchmany(8)
    lines = [line for (text,) in rows for line in str(text).splitlines()]
    if lines == ["ok"]:
        return ""
    return next((ln for ln in lines if not ln.startswith("***")), lines[0] if lines else "?")


def _create_private(path: Path, *, must_be_new: bool = False) -> None:
    """Create the file owner-only before SQLite opens it; its -wal/-shm files follow suit."""
    flags = os.O_CREAT | os.O_WRONLY | (os.O_EXCL if must_be_new else 0)  # never O_TRUNC
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"Cannot create the directory {_plain(path.parent)}: {_plain(exc.strerror)}.",
            "Check the path and that this user may write there.",
        ) from exc
    try:
        os.close(os.open(path, flags, 0o600))
    except FileExistsError as exc:
        raise StoreError(
            f"{_plain(path)} already exists.",
            "Choose a new file name; kmtui never overwrites a backup.",
        ) from exc
    except OSError as exc:
        raise StoreError(
            f"Cannot open {_plain(path)} for writing: {_plain(exc.strerror)}.",
            f"Check that this user may read and write it and its directory {_plain(path.parent)}.",
        ) from exc


class Store:
    """The SQLite registry; one connection per thread, as sqlite3 connections are thread-bound."""

    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self.checked = ""
        """The integrity check this store passed: "full", "quick" or "" (none yet)."""
        self.damage: DatabaseCorrupt | None = None
        """Set when a check failed after opening: every later write is refused with it."""

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        integrity: str = "full",
    ) -> Store:
        """Open or create the database; refuse one damaged, in the wrong mode or too new.

        `integrity` is "full" (SQLite's integrity_check) or "quick" (quick_check, for a caller
        that runs check(full=True) itself soon after: see INTEGRITY_CHECKS).
        """
        if integrity not in INTEGRITY_CHECKS:
            raise ValueError(f"integrity must be one of {INTEGRITY_CHECKS}, not {integrity!r}")
        path = Path(path)
        _create_private(path)
        store = cls(path, busy_timeout_ms)
        try:
            store._check(full=integrity == "full", at_open=True)
            store._migrate()
            store._ensure_derived()
        except BaseException:
            store.close()
            raise
        return store

    def check(self, *, full: bool = True) -> None:
        """Check the file again (any thread, own connection); on damage, refuse later writes.

        The full check is SQLite's integrity_check, then kmtui's own derived tables (open
        intents, key tags) compared with what they are derived from.
        """
        try:
            self._check(full=full, at_open=False)
        except DatabaseCorrupt as exc:
            self.damage = exc
            raise

    def _check(self, *, full: bool, at_open: bool) -> None:
        with self.sqlite_errors():
            problem = integrity_problem(self.conn, full=full)
            if not problem and full and not at_open:
                problem = self._derived_problem()
        if problem:
            raise DatabaseCorrupt(
                f"The database {_plain(self.path)} failed its integrity check ({_plain(problem)}).",
                "Do not write to it; restore it from a backup made by kmtui.",
            )
        if full or not self.checked:
            self.checked = "full" if full else "quick"

    def _derived_problem(self) -> str:
        """'' when the tables kmtui derives (open intents, key tags) agree with their sources.

        Compared in SQL, both ways (EXCEPT), so nothing the size of the registry is loaded.
        """
        conn = self.conn
        began = not conn.in_transaction
        if began:
            conn.execute("BEGIN")  # one snapshot for every read, whatever commits meanwhile
        try:
            for kept, derived, column, what in (
                ("SELECT seq FROM audit_open_intents", _OPEN_INTENTS_SCAN, "seq", "open intents"),
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

    def _ensure_derived(self) -> None:
        """Rebuild a derived table whose triggers are gone (dropped by hand)."""
        with self.sqlite_errors():
            names = {
                r[0]
                for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            }
        for triggers, rebuild in (
            (_INTENT_TRIGGERS, _rebuild_open_intents),
            (_KEY_TAG_TRIGGERS, _rebuild_key_tags),
        ):
            if not set(triggers) <= names:
                with self.transaction() as conn:
                    rebuild(conn)

    def close(self) -> None:
        """Close every thread's connection; call once, after workers using the store stopped."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    @property
    def conn(self) -> sqlite3.Connection:
        """The calling thread's connection, opened on first use with kmtui's pragmas."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        if self._closed:
            raise RuntimeError("the store is closed")
        with self.sqlite_errors():
            conn = _connect(self.path, self.busy_timeout_ms)
        with self._lock:
            if self._closed:
                conn.close()
                raise RuntimeError("the store is closed")
            self._connections.append(conn)
        self._local.conn = conn
        self._local.db = None
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the calling thread's connection, for scripts and the demo."""
        conn = self.conn
        db: sqlite_utils.Database | None = self._local.db
        if db is None:
            db = sqlite_utils.Database(conn, execute_plugins=False)
            self._local.db = db
        return db

    @contextmanager
    def sqlite_errors(self, path: Path | None = None) -> Iterator[None]:
        """Turn any sqlite3 error raised inside into the matching StoreError."""
        try:
            yield
        except sqlite3.Error as exc:
            raise map_error(exc, path or self.path) from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front; nested calls become savepoints."""
        if self.damage is not None:
            raise DatabaseCorrupt(self.damage.message, self.damage.hint)
        conn = self.conn
        nested = conn.in_transaction
        with self.sqlite_errors():
            conn.execute("SAVEPOINT kmtui_nested" if nested else "BEGIN IMMEDIATE")
        try:
            with self.sqlite_errors():
                yield conn
        except BaseException:
            self._undo(conn, nested)
            raise
        try:
            with self.sqlite_errors():
                conn.execute("RELEASE kmtui_nested" if nested else "COMMIT")
        except BaseException:
            self._undo(conn, nested)
            raise

    def _undo(self, conn: sqlite3.Connection, nested: bool) -> None:
        """Roll back what the failed block wrote (only its savepoint when nested)."""
        if not conn.in_transaction:  # SQLite already rolled back (e.g. after SQLITE_FULL)
            return
        with self.sqlite_errors():
            if nested:
                conn.execute("ROLLBACK TO kmtui_nested")
                conn.execute("RELEASE kmtui_nested")
            else:
                conn.execute("ROLLBACK")

    def _migrate(self) -> None:
        """Bring the schema up to date, one transaction per migration."""
        with self.sqlite_errors():
            version = _read_version(self.conn)
        if version > len(MIGRATIONS):
            raise SchemaTooNew(
                f"The database {_plain(self.path)} has schema version {version}; this kmtui "
                f"knows only up to {len(MIGRATIONS)}.",
                "Upgrade kmtui to open it; do not use this version on it.",
            )
        for target in range(version + 1, len(MIGRATIONS) + 1):
            with self.transaction() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                if _read_version(conn) >= target:  # another kmtui process got there first
                    continue
                MIGRATIONS[target - 1](conn)
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))

    def backup(self, dest: Path) -> None:
        """A consistent copy through SQLite's backup API (a file copy could miss the -wal file)."""
        dest = Path(dest)
        _create_private(dest, must_be_new=True)
        try:
            with self.sqlite_errors(dest):
                target = sqlite3.connect(str(dest), isolation_level=None)
                try:
                    self.conn.backup(target)
                    mode = _single(target, "PRAGMA journal_mode = WAL")
                finally:
                    target.close()
            if str(mode).lower() != "wal":
                raise DatabaseMode(
                    f"The backup {_plain(dest)} could not be put in WAL mode.",
                    "Write backups to a local file system that supports WAL.",
                )
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    # -- generic queries ----------------------------------------------------------------------

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """All rows of a small query as dicts (use `stream` for big ones)."""
        with self.sqlite_errors():
            cursor = self.conn.execute(sql, tuple(params))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def stream(
        self, sql: str, params: Sequence[Any] = (), batch: int = 1000
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Rows in batches from one cursor, so a million-row table never sits in memory."""
        with self.sqlite_errors():
            cursor = self.conn.execute(sql, tuple(params))
            try:
                while chunk := cursor.fetchmany(batch):
                    yield chunk
            finally:
                cursor.close()  # ends the read snapshot now, even when the caller stops early

    def keyset_page(
        self,
        table: str,
        order_cols: Sequence[str],
        after: Sequence[Any] | None,
        limit: int,
        where: str = "",
        params: Sequence[Any] = (),
        *,
        descending: bool = False,
    ) -> list[dict[str, Any]]:
        """One page after a cursor row, seeking through an index instead of counting an OFFSET.

        `order_cols` are column names, each optionally followed by `COLLATE NAME`; `table` and the
        columns come from kmtui's code, never from a user.
        """
        columns: list[str] = []
        placeholders: list[str] = []
        for entry in order_cols:
            column, _, collation = entry.partition(" COLLATE ")
            if not _IDENTIFIER.fullmatch(column) or (collation and collation not in _COLLATIONS):
                raise ValueError(f"not a plain column for keyset paging: {entry!r}")
            columns.append(column)
            placeholders.append(f"? COLLATE {collation}" if collation else "?")
        if not _IDENTIFIER.fullmatch(table):
            raise ValueError(f"not a plain table name: {table!r}")
        conditions = [f"({where})"] if where else []
        args = list(params)
        if after is not None:
            if len(after) != len(columns):
                raise ValueError("the cursor needs one value per order column")
            # The collation sits on the right-hand side so SQLite seeks the index by row value.
            conditions.append(
                f"({', '.join(columns)}) {'<' if descending else '>'} ({', '.join(placeholders)})"
            )
            args.extend(after)
        direction = " DESC" if descending else ""
        sql = (
            f"SELECT * FROM {table}"  # noqa: S608 - identifiers checked above, values bound
            + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
            + f" ORDER BY {', '.join(entry + direction for entry in order_cols)} LIMIT ?"
        )
        args.append(int(limit))
        return self.rows(sql, args)

    # -- policies -----------------------------------------------------------------------------

    def add_policy(self, policy: Policy) -> None:
        """Register a policy; keys may only name policies that exist (foreign key)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO policies (name, description, rules, updated_at) VALUES (?, ?, ?, ?)",
                (
                    policy.name,
                    policy.description,
                    json.dumps(policy.rules, sort_keys=True),
                    policy.updated_at or iso(utcnow()),
                ),
            )

    def policies(self) -> list[Policy]:
        """Every policy, by name (there are few)."""
        return [
            Policy(r["name"], r["description"], json.loads(r["rules"]), r["updated_at"])
            for r in self.rows("SELECT * FROM policies ORDER BY name")
        ]

    # -- keys ---------------------------------------------------------------------------------

    def add_key(self, key: Key) -> None:
        """Register a key and its versions in one transaction, so neither exists alone."""
        for version in key.versions:
            if version.key_id != key.id:
                raise ValueError(f"version {version.version} belongs to {version.key_id!r}")
        with self.transaction() as conn:
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

    def update_key(self, key: Key) -> None:
        """Write back a key's mutable fields (its versions are updated one by one)."""
        with self.transaction() as conn:
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
                raise StoreError(f"Key {_plain(key.id)} is not in the registry.")

    def update_version_state(self, key_id: str, version: int, state: KeyState) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE key_versions SET state = ? WHERE key_id = ? AND version = ?",
                (str(state), key_id, version),
            )

    def update_policy(self, policy: Policy) -> None:
        with self.transaction() as conn:
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
                raise StoreError(f"Policy {_plain(policy.name)} is not in the registry.")

    def link_keys(self, key_id: str, related_key_id: str, relation: str) -> None:
        """Record that `key_id` was wrapped by (or derived from) `related_key_id`."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO key_links VALUES (?, ?, ?, ?)",
                (key_id, related_key_id, relation, iso(utcnow())),
            )

    def dependents(self, key_id: str) -> list[tuple[str, str]]:
        """(key id, relation) of every key wrapped by or derived from `key_id`."""
        return [
            (r["key_id"], r["relation"])
            for r in self.rows(
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
            for r in self.rows(
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
            keys.update((r["id"], _key_from_row(r)) for r in self.rows(sql, chunk))
        return [(keys[v.key_id], v) for v in versions if v.key_id in keys]

    def open_intents(self) -> list[dict[str, Any]]:
        """Intent events no outcome refers to, oldest first (seq, action, key_id, params)."""
        return self.rows(
            "SELECT e.seq, e.action, e.key_id, e.params FROM audit_open_intents AS x "
            "JOIN audit_events AS e ON e.seq = x.seq WHERE e.outcome = 'intent' ORDER BY x.seq"
        )

    def open_intents_by_scan(self) -> list[int]:
        """The seqs of the open intents found by a scan of the whole trail (for checks)."""
        return sorted(r["seq"] for r in self.rows(_OPEN_INTENTS_SCAN))

    def acknowledged(self) -> set[str]:
        return {r["finding"] for r in self.rows("SELECT finding FROM reconcile_acks")}

    def acknowledge(self, finding: str, note: str, audit_seq: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO reconcile_acks VALUES (?, ?, ?, ?)",
                (finding, note, audit_seq, iso(utcnow())),
            )

    def add_version(self, version: KeyVersion) -> None:
        """Register one token object of a key; (token serial, CKA_ID) must be unique."""
        with self.transaction() as conn:
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

    def get_key(self, key_id: str) -> Key | None:
        """A key with its versions, or None."""
        rows = self.rows("SELECT * FROM keys WHERE id = ?", (key_id,))
        return self._with_versions(rows)[0] if rows else None

    def find_keys(self, *, label: str) -> list[Key]:
        """Keys whose label is exactly `label` (case matters, as in CKA_LABEL)."""
        # The NOCASE term lets SQLite seek keys_by_label; the plain term keeps the match exact.
        rows = self.rows(
            "SELECT * FROM keys WHERE label = ? COLLATE NOCASE AND label = ? "
            "ORDER BY label COLLATE NOCASE, id",
            (label, label),
        )
        return self._with_versions(rows)

    def count_keys(self) -> int:
        with self.sqlite_errors():
            return int(_single(self.conn, "SELECT count(*) FROM keys"))

    def page_keys(
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
        expression = KEY_ORDERS.get(order)
        if expression is None:
            raise ValueError(f"cannot order keys by {order!r}; orders: {', '.join(KEY_ORDERS)}")
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
            if _IDENTIFIER.fullmatch(column):
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
            return self._with_versions(self.rows(sql, [*seek_args, int(limit)]))
        # Walk the order's index a window at a time: common matches fill a page at once. When
        # the window runs dry, rare or absent matches are cheaper found by one scan of the
        # table (no index lookups) and a sort of just the matches.
        check_sql, check_args = where(check)
        window = (
            f"SELECT * FROM (SELECT * FROM keys{seek_sql}{order_by} LIMIT ?) AS keys"  # noqa: S608
            f"{check_sql}{order_by} LIMIT ?"
        )
        rows = self.rows(window, [*seek_args, _WINDOW, *check_args, int(limit)])
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
            rows = self.rows(sql, [*both_args, int(limit)])
        return self._with_versions(rows)

    def _tag_count(self, tag: str) -> int:
        """How many keys carry `tag` (a count over key_tags' primary key, no table read)."""
        with self.sqlite_errors():
            sql = "SELECT count(*) FROM (SELECT 1 FROM key_tags WHERE tag = ? LIMIT ?)"
            return int(self.conn.execute(sql, (tag, _TAG_LOOKUP + 1)).fetchone()[0])

    def _with_versions(self, rows: list[dict[str, Any]]) -> list[Key]:
        """Keys from rows, their versions fetched in a few IN queries rather than one per key."""
        keys = [_key_from_row(row) for row in rows]
        by_id = {key.id: key for key in keys}
        ids = list(by_id)
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for r in self.rows(
                f"SELECT {_VERSION_COLUMNS} FROM key_versions "  # noqa: S608 - only placeholders
                f"WHERE key_id IN ({marks}) ORDER BY key_id, version",
                chunk,
            ):
                by_id[r["key_id"]].versions.append(_version_from_row(r))
        return keys


def key_cursor(key: Key, order: str = "label") -> tuple[str, str]:
    """The page_keys cursor that continues after `key` in `order`."""
    if order not in KEY_ORDERS:
        raise ValueError(f"cannot order keys by {order!r}")
    return str(getattr(key, order)), key.id


def like_escape(text: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", text)


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
