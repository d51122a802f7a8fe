"""The registry's SQLite file: one connection per thread, checks, transactions, generic reads."""

from __future__ import annotations

import os
import shlex
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from kmtui.core.errors import (
    DatabaseCorrupt,
    DatabaseLocked,
    DatabaseMode,
    DiskFull,
    StoreError,
)
from kmtui.core.registry import schema
from kmtui.core.registry.keys import Keys
from kmtui.core.registry.operators import OperatorRecords
from kmtui.core.registry.policies import Policies
from kmtui.core.registry.reads import Reads
from kmtui.core.registry.seals import SealRecords
from kmtui.core.registry.text import IDENTIFIER, plain

DEFAULT_BUSY_TIMEOUT_MS = 5000
_COLLATIONS = {"BINARY", "NOCASE", "RTRIM"}


def map_error(exc: sqlite3.Error, path: Path) -> StoreError:
    """The one place a SQLite failure becomes a message a custodian can act on."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # primary code; absent on driver errors
    where = plain(path)
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return DatabaseLocked(
            f"The database {where} is locked.",
            "Another kmtui or sqlite3 process holds it; close it and retry.",
        )
    if code == sqlite3.SQLITE_FULL:
        return DiskFull(
            f"The disk holding {where} is full.",
            f"Free space on {plain(path.parent)}; nothing was written.",
        )
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return DatabaseCorrupt(
            f"The database {where} is damaged ({plain(exc)}).",
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
        f"The database {where} refused the operation ({plain(exc)}).",
        "Nothing was written. If this repeats, run `kmtui audit verify` and keep the file for "
        "investigation.",
    )


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
    where = plain(path)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    mode = str(_single(conn, "PRAGMA journal_mode")).lower()
    if "schema_version" in tables:
        if mode != "wal":
            raise DatabaseMode(
                f"The database {where} is in journal mode {plain(mode)!r}, not WAL.",
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
                f"The database {where} could not be switched to WAL (it stayed {plain(mode)!r}).",
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
    """The first line integrity_check (or quick_check) reports, or '' when the file is sound;
    a trigger kmtui did not write fails it too (it would run inside kmtui's own writes)."""
    rows = conn.execute("PRAGMA integrity_check" if full else "PRAGMA quick_check").fetchmany(8)
    lines = [line for (text,) in rows for line in str(text).splitlines()]
    if lines == ["ok"]:
        foreign = schema.foreign_triggers(conn)
        return f"triggers kmtui did not write: {', '.join(foreign)}" if foreign else ""
    return next((ln for ln in lines if not ln.startswith("***")), lines[0] if lines else "?")


def _create_private(path: Path, *, must_be_new: bool = False) -> None:
    """Create the file owner-only before SQLite opens it; its -wal/-shm files follow suit."""
    flags = os.O_CREAT | os.O_WRONLY | (os.O_EXCL if must_be_new else 0)  # never O_TRUNC
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"Cannot create the directory {plain(path.parent)}: {plain(exc.strerror)}.",
            "Check the path and that this user may write there.",
        ) from exc
    try:
        os.close(os.open(path, flags, 0o600))
    except FileExistsError as exc:
        raise StoreError(
            f"{plain(path)} already exists.",
            "Choose a new file name; kmtui never overwrites a backup.",
        ) from exc
    except OSError as exc:
        raise StoreError(
            f"Cannot open {plain(path)} for writing: {plain(exc.strerror)}.",
            f"Check that this user may read and write it and its directory {plain(path.parent)}.",
        ) from exc


class Store:
    """The SQLite registry; one connection per thread, as sqlite3 connections are thread-bound.

    The reads and writes of each table hang off it (`keys`, `policies`, `reads`) and share its
    connections and transactions.
    """

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
        self.keys = Keys(self)
        """Keys, their versions and links, open intents and acknowledged findings."""
        self.policies = Policies(self)
        self.operators = OperatorRecords(self)
        """Operators and approvals: what dual control reads and writes."""
        self.reads = Reads(self)
        """The reads the UI names instead of holding SQL."""
        self.seals = SealRecords()
        """Seals of the rows that decide who may do what, and the content they cover."""

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
            schema.migrate(store)
            schema.ensure_derived(store)
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
                problem = schema.derived_problem(self.conn)
        if problem:
            raise DatabaseCorrupt(
                f"The database {plain(self.path)} failed its integrity check ({plain(problem)}).",
                "Do not write to it; restore it from a backup made by kmtui.",
            )
        if full or not self.checked:
            self.checked = "full" if full else "quick"

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
                    f"The backup {plain(dest)} could not be put in WAL mode.",
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
            if not IDENTIFIER.fullmatch(column) or (collation and collation not in _COLLATIONS):
                raise ValueError(f"not a plain column for keyset paging: {entry!r}")
            columns.append(column)
            placeholders.append(f"? COLLATE {collation}" if collation else "?")
        if not IDENTIFIER.fullmatch(table):
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
