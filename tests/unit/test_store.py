"""The registry on real SQLite files: durable mode, refusals a custodian can act on, paging."""

from __future__ import annotations

import hashlib
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kmtui.core.audit.log import AuditLog
from kmtui.core.errors import (
    AuditError,
    DatabaseCorrupt,
    DatabaseLocked,
    DatabaseMode,
    DiskFull,
    SchemaTooNew,
    StoreError,
)
from kmtui.core.models import Key, KeyState, KeyVersion, Policy, key_cursor
from kmtui.core.registry.db import Store, map_error
from kmtui.core.registry.schema import MIGRATIONS

NOW = "2026-01-02T03:04:05.000000Z"


def make_key(n: int, label: str, state: KeyState = KeyState.ACTIVE, **extra: Any) -> Key:
    key_id = f"k{n:06d}"
    version = KeyVersion(
        key_id, 1, state, f"kmtui:{key_id}:1".encode(), "SERIAL1", NOW, kcv="A1B2C3"
    )
    return Key(
        id=key_id,
        label=label,
        algorithm="AES-256",
        purpose="encrypt",
        policy="default",
        state=state,
        created_at=NOW,
        updated_at=NOW,
        versions=[version],
        **extra,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "kmtui.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store.open(db_path)
    s.policies.add(Policy("default", "test policy", {"exportable": False}, NOW))
    yield s
    s.close()


def pragmas(conn: sqlite3.Connection) -> tuple[Any, ...]:
    return tuple(
        conn.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
    )


def run_in_thread(fn: Any) -> Any:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the test thread
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def deterministic_bytes(n: int, seed: bytes = b"kmtui") -> bytes:
    return hashlib.shake_256(seed).digest(n)


# -- durable mode -------------------------------------------------------------------------------


def test_every_threads_connection_reads_back_wal_full_sync_and_foreign_keys(store: Store) -> None:
    expected = ("wal", 2, 1, 5000)
    assert pragmas(store.conn) == expected
    assert run_in_thread(lambda: pragmas(store.conn)) == expected
    assert run_in_thread(lambda: pragmas(store.db.conn)) == expected


def test_two_threads_get_distinct_connections_and_one_thread_keeps_its_own(store: Store) -> None:
    main = store.conn
    assert store.conn is main
    assert store.db.conn is main
    first, second = run_in_thread(lambda: store.conn), run_in_thread(lambda: store.conn)
    assert first is not main and second is not main and first is not second
    assert run_in_thread(lambda: (store.conn is store.conn, store.db.conn is store.conn)) == (
        True,
        True,
    )


def test_new_database_lives_in_owner_only_directory_and_file(db_path: Path) -> None:
    Store.open(db_path).close()
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def test_database_under_a_file_instead_of_a_directory_is_refused_plainly(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("not a directory")
    with pytest.raises(StoreError, match="Cannot create the directory"):
        Store.open(tmp_path / "home" / "kmtui.db")


def test_database_switched_out_of_wal_behind_kmtuis_back_is_refused(db_path: Path) -> None:
    Store.open(db_path).close()
    raw = sqlite3.connect(db_path)
    assert raw.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    raw.close()
    with pytest.raises(DatabaseMode) as caught:
        Store.open(db_path)
    assert str(db_path) in caught.value.message
    assert "'delete'" in caught.value.message
    assert "backup made by kmtui" in caught.value.hint
    assert "PRAGMA journal_mode=WAL" in caught.value.hint
    raw = sqlite3.connect(db_path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # left as found
    raw.close()


def test_sqlite_database_of_another_program_is_refused_and_left_untouched(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    raw = sqlite3.connect(db_path)
    raw.execute("CREATE TABLE notes (body TEXT)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="not kmtui's"):
        Store.open(db_path)
    raw = sqlite3.connect(db_path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in raw.execute("SELECT name FROM sqlite_master")] == ["notes"]
    raw.close()


# -- damaged files ------------------------------------------------------------------------------


def test_file_of_random_bytes_is_refused_as_corrupt(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(deterministic_bytes(64 * 1024))
    with pytest.raises(DatabaseCorrupt) as caught:
        Store.open(db_path)
    assert "backup" in caught.value.hint


@pytest.mark.parametrize("integrity", ["full", "quick"])
def test_database_with_overwritten_middle_pages_is_refused_as_corrupt(
    db_path: Path, integrity: str
) -> None:
    s = Store.open(db_path)
    s.policies.add(Policy("default", updated_at=NOW))
    with s.transaction():
        for n in range(3000):
            s.keys.add(make_key(n, f"label-{n}", notes="n" * 300))
    s.close()  # the last connection checkpoints the WAL into the main file
    assert not Path(f"{db_path}-wal").exists()
    size = db_path.stat().st_size
    page = 4096
    assert size > 200 * page
    middle = (size // page // 2) * page
    with db_path.open("r+b") as f:
        f.seek(middle)
        f.write(deterministic_bytes(8 * page, b"garbage"))
    with pytest.raises(DatabaseCorrupt) as caught:
        Store.open(db_path, integrity=integrity)
    assert "restore it from a backup" in caught.value.hint


def test_index_that_disagrees_with_its_table_fails_the_integrity_check(db_path: Path) -> None:
    s = Store.open(db_path)
    s.policies.add(Policy("default", updated_at=NOW))
    for n in range(20):
        s.keys.add(make_key(n, f"label-{n}"))
    s.close()
    raw = sqlite3.connect(db_path)
    raw.execute("PRAGMA writable_schema=ON")
    raw.execute(
        "UPDATE sqlite_master SET sql='CREATE INDEX keys_by_policy ON keys (notes)' "
        "WHERE name='keys_by_policy'"
    )
    raw.commit()
    raw.close()
    with pytest.raises(DatabaseCorrupt) as caught:
        Store.open(db_path)
    assert "integrity check" in caught.value.message
    assert "keys_by_policy" in caught.value.message  # the first problem line is shown


def test_a_quick_open_leaves_the_index_check_to_a_full_check_which_then_stops_writes(
    db_path: Path,
) -> None:
    s = Store.open(db_path)
    s.policies.add(Policy("default", updated_at=NOW))
    for n in range(20):
        s.keys.add(make_key(n, f"label-{n}"))
    s.close()
    raw = sqlite3.connect(db_path)
    raw.execute("PRAGMA writable_schema=ON")
    raw.execute(
        "UPDATE sqlite_master SET sql='CREATE INDEX keys_by_policy ON keys (notes)' "
        "WHERE name='keys_by_policy'"
    )
    raw.commit()
    raw.close()
    s = Store.open(db_path, integrity="quick")  # quick_check does not compare indexes
    try:
        assert s.checked == "quick"
        with pytest.raises(DatabaseCorrupt) as caught:
            s.check(full=True)
        assert "keys_by_policy" in caught.value.message
        with pytest.raises(DatabaseCorrupt):  # nothing more is written to a damaged file
            s.keys.add(make_key(99, "after"))
        assert s.keys.get("k000099") is None
    finally:
        s.close()


def test_an_unknown_integrity_mode_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="integrity"):
        Store.open(db_path, integrity="none")


# -- open intents: kept as events are appended ----------------------------------------------------


def open_seqs(s: Store) -> list[int]:
    return [r["seq"] for r in s.keys.open_intents()]


def test_open_intents_are_kept_in_step_with_the_trail(store: Store, db_path: Path) -> None:
    log = AuditLog(store)
    a = log.append("key.create", actor="a", outcome="intent", key_id="k1", params={"x": 1})
    b = log.append("key.rotate", actor="a", outcome="intent", key_id="k2")
    c = log.append("key.rotate", actor="a", outcome="intent", key_id="k3")
    assert open_seqs(store) == [a.seq, b.seq, c.seq]
    # Outcomes that do not match the intent in action, key or order leave it open.
    log.append("key.rotate", actor="a", outcome="success", key_id="k1", params={"intent": a.seq})
    log.append("key.create", actor="a", outcome="success", key_id="k9", params={"intent": a.seq})
    log.append("key.create", actor="a", outcome="intent", key_id="k1", params={"intent": a.seq})
    assert open_seqs(store) == [a.seq, b.seq, c.seq, a.seq + 5]
    log.append("key.create", actor="a", outcome="failure", key_id="k1", params={"intent": a.seq})
    log.append("key.rotate", actor="a", outcome="success", key_id="k2", params={"intent": b.seq})
    assert open_seqs(store) == [c.seq, a.seq + 5]
    # Any writer is followed, not only AuditLog: the table is kept by triggers.
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute(
        "INSERT INTO audit_events VALUES (?, 't', 'a', 'key.rotate', 'k3', ?, 'refused', '', '')",
        (c.seq + 100, f'{{"intent":{c.seq}}}'),
    )
    raw.execute(
        "INSERT INTO audit_events VALUES (?, 't', 'a', 'x', '', 'not json', 'success', '', '')",
        (c.seq + 101,),
    )
    raw.close()
    assert open_seqs(store) == [a.seq + 5]
    assert store.keys.open_intents_by_scan() == open_seqs(store)
    assert store.keys.open_intents()[0] == {
        "seq": a.seq + 5,
        "action": "key.create",
        "key_id": "k1",
        "params": f'{{"intent":{a.seq}}}',
    }


def test_an_older_database_gets_its_open_intents_from_one_scan(db_path: Path) -> None:
    s = Store.open(db_path)
    log = AuditLog(s)
    first = log.append("key.create", actor="a", outcome="intent", key_id="k1")
    log.append("key.create", actor="a", outcome="success", key_id="k1", params={"intent": 1})
    last = log.append("key.destroy", actor="a", outcome="intent", key_id="k1")
    s.close()
    raw = sqlite3.connect(db_path, isolation_level=None)  # as schema 5 left it
    raw.execute("DROP TRIGGER audit_intent_opened")
    raw.execute("DROP TRIGGER audit_intent_closed")
    raw.execute("DROP TABLE audit_open_intents")
    raw.execute("UPDATE schema_version SET version = 5")
    raw.close()
    s = Store.open(db_path)
    try:
        assert first.seq == 1 and open_seqs(s) == [last.seq]
        assert s.rows("SELECT version FROM schema_version") == [{"version": len(MIGRATIONS)}]
    finally:
        s.close()


def test_intent_triggers_dropped_by_hand_are_rebuilt_on_open(db_path: Path) -> None:
    s = Store.open(db_path)
    AuditLog(s).append("key.create", actor="a", outcome="intent", key_id="k1")
    s.close()
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("DROP TRIGGER audit_intent_opened")
    raw.execute(
        "INSERT INTO audit_events VALUES (2, 't', 'a', 'key.rotate', 'k1', '{}', 'intent', '', '')"
    )
    raw.close()
    s = Store.open(db_path)
    try:
        assert open_seqs(s) == [1, 2]
        AuditLog(s).append("key.rotate", actor="a", outcome="intent", key_id="k2")
        assert open_seqs(s) == [1, 2, 3]
    finally:
        s.close()


def test_a_full_check_compares_the_open_intents_with_the_trail(store: Store, db_path: Path) -> None:
    AuditLog(store).append("key.create", actor="a", outcome="intent", key_id="k1")
    store.check(full=True)
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("DELETE FROM audit_open_intents")  # would hide an interrupted operation
    raw.close()
    with pytest.raises(DatabaseCorrupt) as caught:
        store.check(full=True)
    assert "open intents" in caught.value.message and "events 1" in caught.value.message
    with pytest.raises(AuditError, match="integrity check"):
        AuditLog(store).append("key.create", actor="a", outcome="success", key_id="k1")


# -- schema -------------------------------------------------------------------------------------


def test_database_from_a_newer_kmtui_is_refused(db_path: Path) -> None:
    Store.open(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
    raw.commit()
    raw.close()
    with pytest.raises(SchemaTooNew) as caught:
        Store.open(db_path)
    assert "Upgrade kmtui" in caught.value.hint


def test_reopening_applies_no_migration_twice(db_path: Path) -> None:
    s = Store.open(db_path)
    s.policies.add(Policy("default", updated_at=NOW))
    s.keys.add(make_key(1, "payments"))
    schema = s.rows("SELECT type, name, sql FROM sqlite_master ORDER BY name")
    s.close()
    for _ in range(2):
        s = Store.open(db_path)
        assert s.rows("SELECT version FROM schema_version") == [{"version": len(MIGRATIONS)}]
        assert s.rows("SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema
        assert s.keys.get("k000001") == make_key(1, "payments")
        s.close()


# -- keys ---------------------------------------------------------------------------------------


def test_key_round_trips_with_versions_tags_and_dates(store: Store) -> None:
    key = make_key(
        7,
        "payments",
        exportable=True,
        owner="team-a",
        notes="n",
        tags=["pci", "eu"],
        rotation_due_at=NOW,
        current_version=2,
    )
    key.versions.append(
        KeyVersion(
            key.id,
            2,
            KeyState.PRE_ACTIVATION,
            b"kmtui:k000007:2",
            "SERIAL1",
            NOW,
            fingerprint="ff:00",
        )
    )
    store.keys.add(key)
    assert store.keys.get(key.id) == key
    assert store.keys.get("missing") is None


def test_empty_dates_are_stored_as_null_so_they_never_look_due(store: Store) -> None:
    store.keys.add(make_key(1, "payments"))
    row = store.rows("SELECT activated_at, rotation_due_at, destroy_after FROM keys")[0]
    assert row == {"activated_at": None, "rotation_due_at": None, "destroy_after": None}
    assert store.rows("SELECT id FROM keys WHERE destroy_after <= ?", (NOW,)) == []


def test_key_naming_an_unknown_policy_is_refused_and_nothing_is_written(store: Store) -> None:
    key = make_key(1, "payments")
    key.policy = "no-such-policy"
    with pytest.raises(StoreError, match="FOREIGN KEY"):
        store.keys.add(key)
    assert store.keys.count() == 0
    assert store.rows("SELECT * FROM key_versions") == []


def test_version_of_another_key_is_refused_before_writing(store: Store) -> None:
    key = make_key(1, "payments")
    key.versions[0].key_id = "k999999"
    with pytest.raises(ValueError, match="belongs to"):
        store.keys.add(key)
    assert store.keys.count() == 0


def test_same_token_object_cannot_be_registered_twice(store: Store) -> None:
    store.keys.add(make_key(1, "a"))
    twin = make_key(2, "b")
    twin.versions[0].cka_id = b"kmtui:k000001:1"
    with pytest.raises(StoreError, match="UNIQUE"):
        store.keys.add(twin)
    assert store.keys.get(twin.id) is None


def test_find_keys_matches_the_label_exactly_and_counts(store: Store) -> None:
    for n, label in enumerate(["Payments", "payments", "payments", "payroll"]):
        store.keys.add(make_key(n, label))
    assert [k.id for k in store.keys.find(label="payments")] == ["k000001", "k000002"]
    assert [k.id for k in store.keys.find(label="Payments")] == ["k000000"]
    assert store.keys.find(label="pay") == []
    assert store.keys.count() == 4


def test_a_policy_is_read_back_by_its_exact_name_and_an_unknown_one_is_none(store: Store) -> None:
    kek = Policy("kek", "wrapping keys", {"quorum": {"key.create": 2}}, NOW)
    store.policies.add(kek)
    assert store.policies.get("kek") == kek
    assert store.policies.get("KEK") is None
    assert [p.name for p in store.policies.all()] == ["default", "kek"]


def test_the_reads_the_ui_names_answer_from_approvals_keys_and_the_trail(store: Store) -> None:
    reads = store.reads
    assert reads.last_approval_id() == reads.pending_approvals() == reads.last_audit_seq() == 0
    assert reads.approvers_since(0) == [] and reads.last_approvals() == {}
    day = "2026-01-0{}T00:00:00.000000Z".format
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO operators (name, role, state, enrolled_at) VALUES (?, 'custodian', "
            "'active', ?)",
            [("alice", NOW), ("bob", NOW)],
        )
        conn.executemany(
            "INSERT INTO approvals (id, digest, operator, approved_at, expires_at, executed_at) "
            "VALUES (?, 'digest', ?, ?, ?, ?)",
            [
                (1, "alice", day(1), day(2), None),  # expired
                (2, "bob", day(2), "2999-01-01T00:00:00.000000Z", None),  # pending
                (3, "bob", day(3), "2999-01-01T00:00:00.000000Z", day(4)),  # executed
            ],
        )
    assert reads.last_approval_id() == 3
    assert reads.pending_approvals() == 1
    assert reads.approvers_since(1) == ["bob"]
    assert reads.approvers_since(0) == ["alice", "bob"]
    assert reads.last_approvals() == {"alice": day(1), "bob": day(3)}
    store.keys.add(make_key(1, "payments"))
    seq = AuditLog(store).append("key.create", actor="a", outcome="success", key_id="k000001").seq
    assert reads.key_label("k000001") == "payments"
    assert reads.key_label("k999999") == ""
    assert reads.last_audit_seq() == seq


LABELS = ["alpha", "Alpha", "ALPHA", "beta", "Gamma", "gamma-2", "delta", "Beta"]


def seed_keys(store: Store, count: int) -> list[Key]:
    keys = []
    with store.transaction():
        for n in range(count):
            state = KeyState.ACTIVE if n % 3 else KeyState.SUSPENDED
            key = make_key((n * 7919) % 100_003, LABELS[n % len(LABELS)], state)
            store.keys.add(key)
            keys.append(key)
    return sorted(keys, key=lambda k: (k.label.lower(), k.id))


def page_all(store: Store, limit: int, **filters: Any) -> list[list[Key]]:
    pages: list[list[Key]] = []
    after = None
    while page := store.keys.page(after=after, limit=limit, **filters):
        assert len(page) <= limit
        assert len(pages) < 100, "paging does not advance"
        pages.append(page)
        after = (page[-1].label, page[-1].id)
    return pages


def test_keyset_pages_return_every_key_exactly_once_in_order(store: Store) -> None:
    expected = seed_keys(store, 250)
    pages = page_all(store, 40)
    assert [len(p) for p in pages] == [40, 40, 40, 40, 40, 40, 10]
    assert [k.id for p in pages for k in p] == [k.id for k in expected]
    assert pages[0][0].versions == expected[0].versions  # versions come with each page


def test_keyset_pages_filter_by_state_and_label_prefix(store: Store) -> None:
    expected = seed_keys(store, 250)
    suspended = [k.id for k in expected if k.state == KeyState.SUSPENDED]
    got = [k.id for p in page_all(store, 40, state="suspended") for k in p]
    assert got == suspended
    gammas = [k.id for k in expected if k.label.lower().startswith("gam")]
    assert [k.id for p in page_all(store, 7, label_prefix="GAM") for k in p] == gammas
    both = [k.id for k in expected if k.label.lower().startswith("a") and k.state == "active"]
    got = [k.id for p in page_all(store, 9, state="active", label_prefix="a") for k in p]
    assert got == both


def test_label_prefix_wildcards_match_only_themselves(store: Store) -> None:
    for n, label in enumerate(["50%_off", "50xyoff", "50%xoff", "a\\b", "axb"]):
        store.keys.add(make_key(n, label))
    assert [k.label for k in store.keys.page(label_prefix="50%_")] == ["50%_off"]
    assert [k.label for k in store.keys.page(label_prefix="a\\")] == ["a\\b"]


@pytest.mark.parametrize(
    "filters",
    [{}, {"state": "active"}, {"label_prefix": "gam"}, {"state": "active", "label_prefix": "b"}],
)
def test_key_page_queries_seek_through_an_index(store: Store, filters: dict[str, Any]) -> None:
    seed_keys(store, 250)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        first = store.keys.page(limit=40, **filters)
        store.keys.page(after=(first[-1].label, first[-1].id), limit=40, **filters)
    finally:
        store.conn.set_trace_callback(None)
    key_queries = [s for s in statements if s.startswith("SELECT * FROM keys")]
    assert len(key_queries) == 2
    for sql in key_queries:
        plan = [row[3] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert any("USING INDEX" in p or "USING COVERING INDEX" in p for p in plan), plan
        assert not any(p.startswith("SCAN keys") and "INDEX" not in p for p in plan), plan
        assert not any("TEMP B-TREE" in p for p in plan), plan  # the index gives the order
    later = [row[3] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {key_queries[1]}")]
    assert later[0].startswith("SEARCH keys"), later  # the cursor seeks; nothing is skipped over


# -- transactions and errors --------------------------------------------------------------------


def test_transaction_rolls_back_everything_when_the_block_fails(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.keys.add(make_key(1, "a"))
        store.keys.add(make_key(2, "b"))
        raise RuntimeError("boom")
    assert store.keys.count() == 0
    assert not store.conn.in_transaction


def test_nested_transaction_failure_undoes_only_its_own_writes(store: Store) -> None:
    with store.transaction():
        store.keys.add(make_key(1, "kept"))
        with pytest.raises(RuntimeError), store.transaction():
            store.keys.add(make_key(2, "undone"))
            raise RuntimeError("boom")
    assert [k.label for k in store.keys.page()] == ["kept"]


def test_transaction_takes_the_write_lock_before_its_first_write(store: Store) -> None:
    other = sqlite3.connect(store.path, isolation_level=None, timeout=0)
    try:
        with store.transaction(), pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released on commit
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_locked_database_gives_database_locked_saying_what_to_do(db_path: Path) -> None:
    s = Store.open(db_path, busy_timeout_ms=100)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseLocked) as caught:
            s.policies.add(Policy("default", updated_at=NOW))
        assert time.monotonic() - started < 3
        assert str(db_path) in caught.value.message
        assert caught.value.hint == "Another kmtui or sqlite3 process holds it; close it and retry."
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert not s.conn.in_transaction
    finally:
        other.execute("ROLLBACK")
        other.close()
    s.policies.add(Policy("default", updated_at=NOW))
    assert [p.name for p in s.policies.all()] == ["default"]
    s.close()


def test_full_disk_gives_disk_full_and_writes_nothing(store: Store, db_path: Path) -> None:
    store.keys.add(make_key(0, "first"))
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL
    with pytest.raises(DiskFull) as caught:
        for n in range(1, 200):
            store.keys.add(make_key(n, f"big-{n}", notes="x" * 4000))
    assert str(db_path.parent) in caught.value.hint
    assert "nothing was written" in caught.value.hint
    ids = [k.id for k in store.keys.page(limit=500)]
    assert len(ids) == store.keys.count()
    versions = store.rows("SELECT key_id FROM key_versions ORDER BY key_id")
    assert [v["key_id"] for v in versions] == sorted(ids)  # no half-registered key


def test_read_only_database_error_points_at_permissions(db_path: Path) -> None:
    Store.open(db_path).close()
    ro = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as raised:
        ro.execute("INSERT INTO policies (name, updated_at) VALUES ('x', 'y')")
    ro.close()
    mapped = map_error(raised.value, db_path)
    assert type(mapped) is StoreError
    assert "read-only" in mapped.message
    assert "permissions" in mapped.hint


def test_control_characters_in_sqlite_messages_are_neutralised(tmp_path: Path) -> None:
    mapped = map_error(sqlite3.OperationalError("near \x1b]0;pwned\x07: syntax"), tmp_path / "x")
    assert "\x1b" not in str(mapped) and "\x07" not in str(mapped)


# -- backup -------------------------------------------------------------------------------------


def test_backup_opens_as_kmtui_database_holding_the_same_rows(store: Store, tmp_path: Path) -> None:
    seed_keys(store, 30)
    dest = tmp_path / "backups" / "kmtui-backup.db"
    store.backup(dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    copy = Store.open(dest)
    try:
        for table in ("policies", "keys", "key_versions", "schema_version"):
            sql = f"SELECT * FROM {table} ORDER BY rowid"
            assert copy.rows(sql) == store.rows(sql)
        assert copy.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        copy.close()


def test_backup_never_overwrites_an_existing_file(store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "old-backup.db"
    dest.write_bytes(b"an older backup")
    with pytest.raises(StoreError, match="already exists"):
        store.backup(dest)
    assert dest.read_bytes() == b"an older backup"


# -- every order and filter of the keys pane, in SQL ---------------------------------------------

ORDERS = ("label", "state", "algorithm", "policy", "created_at", "rotation_due_at")
ALGORITHMS = ("AES-256", "aes-128", "EC-P256", "RSA-3072")
SORT_KEYS = {
    "label": lambda k: (k.label.lower(), k.id),
    "state": lambda k: (str(k.state), k.id),
    "algorithm": lambda k: (k.algorithm.lower(), k.id),
    "policy": lambda k: (k.policy, k.id),
    "created_at": lambda k: (k.created_at, k.id),
    "rotation_due_at": lambda k: (k.rotation_due_at or "~", k.id),
}
KEY_FILTERS: dict[str, tuple[dict[str, Any], Any]] = {
    "none": ({}, lambda k: True),
    "state": ({"state": "suspended"}, lambda k: k.state == KeyState.SUSPENDED),
    "label": ({"label_prefix": "GAM"}, lambda k: k.label.lower().startswith("gam")),
    "algorithm": ({"algorithm": "aes"}, lambda k: k.algorithm.lower().startswith("aes")),
    "policy": ({"policy": "kek"}, lambda k: k.policy == "kek"),
    "no policy": ({"policy": ""}, lambda k: k.policy == ""),
    "tag": ({"tag": "pci"}, lambda k: "pci" in k.tags),
    "id": ({"id_prefix": "k00"}, lambda k: k.id.startswith("k00")),
    "all": (
        {"state": "active", "label_prefix": "a", "algorithm": "AES", "tag": "q3"},
        lambda k: (
            k.state == KeyState.ACTIVE
            and k.label.lower().startswith("a")
            and k.algorithm.upper().startswith("AES")
            and "q3" in k.tags
        ),
    ),
}


@pytest.fixture
def varied(store: Store) -> list[Key]:
    """300 keys spread over every order and filter, with ties, NULL policies and NULL dates."""
    store.policies.add(Policy("kek", "", {}, NOW))
    keys = []
    with store.transaction():
        for n in range(300):
            key = make_key(
                (n * 7919) % 100_003,
                LABELS[n % len(LABELS)],
                KeyState.ACTIVE if n % 3 else KeyState.SUSPENDED,
                tags=[["pci"], ["q3", "pci"], [], ["q3"], ['a", "pci']][n % 5],
                rotation_due_at=f"2026-0{n % 9 + 1}-01T00:00:00.000000Z" if n % 4 else "",
            )
            key.algorithm = ALGORITHMS[n % len(ALGORITHMS)]
            key.policy = ["default", "kek", ""][n % 3]
            key.created_at = f"2025-{n % 12 + 1:02d}-01T00:00:00.000000Z"
            store.keys.add(key)
            keys.append(key)
    return keys


def page_ordered(store: Store, limit: int, order: str, descending: bool, **filters: Any) -> list:
    pages: list[list[Key]] = []
    after = None
    while page := store.keys.page(
        after=after, limit=limit, order=order, descending=descending, **filters
    ):
        assert len(page) <= limit
        assert len(pages) < 400, "paging does not advance"
        pages.append(page)
        after = key_cursor(page[-1], order)
    return pages


@pytest.mark.parametrize(
    ("window", "tag_lookup"),
    [(1000, 5000), (5, 0), (5, 5000)],
    ids=["index walk", "table scan", "tag lookup"],
)
@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("order", ORDERS)
def test_every_order_and_filter_pages_each_matching_key_exactly_once_in_order(
    store: Store,
    varied: list[Key],
    order: str,
    descending: bool,
    window: int,
    tag_lookup: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("kmtui.core.registry.keys._WINDOW", window)
    monkeypatch.setattr("kmtui.core.registry.keys._TAG_LOOKUP", tag_lookup)
    for name, (filters, matches) in KEY_FILTERS.items():
        expected = sorted(
            (k for k in varied if matches(k)), key=SORT_KEYS[order], reverse=descending
        )
        assert expected or name == "id", name
        pages = page_ordered(store, 7, order, descending, **filters)
        got = [k.id for p in pages for k in p]
        assert got == [k.id for k in expected], (name, filters)
        assert all(len(p) == 7 for p in pages[:-1])


def test_a_tag_matches_whole_elements_only(store: Store, varied: list[Key]) -> None:
    tagged = [k.id for k in store.keys.page(limit=500, tag="pci")]
    assert not any(k.tags == ['a", "pci'] for k in varied if k.id in tagged)
    assert len(store.keys.page(limit=500, tag='a", "pci')) == 60
    assert store.keys.page(tag="pc") == []


def test_key_tags_follow_every_change_of_a_keys_tags(store: Store, db_path: Path) -> None:
    def tagged(tag: str) -> list[str]:
        return [r["key_id"] for r in store.rows("SELECT key_id FROM key_tags WHERE tag = ?", [tag])]

    key = make_key(1, "payments", tags=["pci", "pci", "q3"])
    store.keys.add(key)
    store.keys.add(make_key(2, "orders", tags=["q3"]))
    assert (tagged("pci"), tagged("q3")) == (["k000001"], ["k000001", "k000002"])
    key.tags = ["gdpr"]
    store.keys.update(key)
    assert (tagged("pci"), tagged("q3"), tagged("gdpr")) == ([], ["k000002"], ["k000001"])
    raw = sqlite3.connect(db_path, isolation_level=None)  # any writer, even a broken value
    raw.execute("UPDATE keys SET tags = 'not json' WHERE id = 'k000002'")
    raw.close()
    assert tagged("q3") == [] and store.keys.page(tag="q3") == []
    raw = sqlite3.connect(db_path, isolation_level=None)  # a null element: no tag, no alarm
    raw.execute("""UPDATE keys SET tags = '["q4", null]' WHERE id = 'k000002'""")
    raw.close()
    assert tagged("q4") == ["k000002"]
    store.check(full=True)  # the kept table agrees with the keys
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("DELETE FROM key_tags WHERE key_id = 'k000001'")  # would hide the key by tag
    raw.close()
    with pytest.raises(DatabaseCorrupt, match=r"key tags disagrees with the keys \(keys k000001\)"):
        store.check(full=True)


def test_a_rare_tag_reads_its_keys_instead_of_scanning_the_table(
    store: Store, varied: list[Key], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kmtui.core.registry.keys._WINDOW", 5)

    def run() -> None:
        store.keys.page(limit=50, tag="q3", state="suspended")

    _, after_window = plans_of(store, run)
    assert after_window[0].startswith("SEARCH key_tags USING PRIMARY KEY"), after_window
    assert not any(p.startswith("SCAN keys") for p in after_window), after_window
    monkeypatch.setattr("kmtui.core.registry.keys._TAG_LOOKUP", 10)  # q3 has 120 keys: too many
    _, after_window = plans_of(store, run)
    assert after_window[0] == "SCAN keys", after_window


def test_an_unknown_order_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="cannot order keys by 'owner'"):
        store.keys.page(order="owner")


def plans_of(store: Store, run: Any) -> list[list[str]]:
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        run()
    finally:
        store.conn.set_trace_callback(None)
    return [
        [row[3] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        for sql in statements
        if sql.startswith(("SELECT * FROM", "SELECT keys.* FROM"))
    ]


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("order", ORDERS)
def test_every_order_seeks_its_own_index_and_never_sorts(
    store: Store, varied: list[Key], order: str, descending: bool
) -> None:
    def run() -> None:
        first = store.keys.page(limit=40, order=order, descending=descending)
        store.keys.page(
            after=key_cursor(first[-1], order), limit=40, order=order, descending=descending
        )

    first, later = plans_of(store, run)
    for plan in (first, later):
        assert any("USING INDEX" in p or "USING COVERING INDEX" in p for p in plan), plan
        assert not any("TEMP B-TREE" in p for p in plan), plan  # the index gives the order
    assert later[0].startswith("SEARCH keys"), later  # the cursor seeks; nothing is skipped


@pytest.mark.parametrize(
    ("order", "filters"),
    [
        ("state", {"state": "active"}),
        ("algorithm", {"algorithm": "AES"}),
        ("policy", {"policy": "kek"}),
    ],
)
def test_a_filter_on_the_order_column_seeks_the_same_index(
    store: Store, varied: list[Key], order: str, filters: dict[str, Any]
) -> None:
    def run() -> None:
        first = store.keys.page(limit=10, order=order, **filters)
        store.keys.page(after=key_cursor(first[-1], order), limit=10, order=order, **filters)

    for plan in plans_of(store, run):
        assert plan[0].startswith("SEARCH keys USING INDEX"), plan
        assert not any("TEMP B-TREE" in p for p in plan), plan


def test_other_filters_walk_the_order_index_a_window_at_a_time(
    store: Store, varied: list[Key]
) -> None:
    (plan,) = plans_of(store, lambda: store.keys.page(limit=20, order="created_at", tag="pci"))
    assert any("keys_by_created" in p for p in plan), plan
    # Nothing matches: the window runs dry and one scan of the table finds that out (a rare
    # tag reads its keys instead: test_a_rare_tag_reads_its_keys_instead_of_scanning_the_table).
    window, scan = plans_of(store, lambda: store.keys.page(order="created_at", id_prefix="z"))
    assert any("keys_by_created" in p for p in window), window
    assert scan[0] == "SCAN keys", scan


# -- the audit trail's pages --------------------------------------------------------------------


def test_every_audit_filter_pages_each_matching_event_exactly_once_newest_first(
    store: Store,
) -> None:
    log = AuditLog(store)
    actors = ("alice", "bob", "alice+bob", "bob+carol", "console")
    with store.transaction():
        for n in range(90):
            log.append(
                ("key.create", "key.rotate", "token.login")[n % 3],
                actor=actors[n % 5],
                outcome=("success", "refused", "failure", "intent")[n % 4],
                key_id=f"k{n % 4}",
            )
    events = log.events(limit=1000, newest_first=False)
    since, until = events[20].ts, events[70].ts
    cases: dict[str, tuple[dict[str, Any], Any]] = {
        "outcome": ({"outcome": "refused"}, lambda e: e.outcome == "refused"),
        "since": ({"since": since}, lambda e: e.ts >= since),
        "until": ({"until": until}, lambda e: e.ts <= until),
        "operator": ({"actor_contains": "bob"}, lambda e: "bob" in e.actor),
        "everything": (
            {"actor_contains": "alice", "outcome": "success", "since": since, "until": until},
            lambda e: "alice" in e.actor and e.outcome == "success" and since <= e.ts <= until,
        ),
    }
    for name, (filters, matches) in cases.items():
        for newest_first in (True, False):
            expected = [e.seq for e in events if matches(e)]
            expected.sort(reverse=newest_first)
            got: list[int] = []
            after = None
            while page := log.events(
                after_seq=after, limit=4, newest_first=newest_first, **filters
            ):
                assert len(page) <= 4
                got.extend(e.seq for e in page)
                after = page[-1].seq
            assert got == expected and expected, name


def test_audit_pages_seek_by_seq_and_never_sort(store: Store) -> None:
    log = AuditLog(store)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        log.events(after_seq=50, outcome="refused", since="2026", until="2027", actor_contains="b")
    finally:
        store.conn.set_trace_callback(None)
    (sql,) = [s for s in statements if "FROM audit_events" in s]
    plan = [row[3] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    assert plan[0].startswith("SEARCH audit_events USING INTEGER PRIMARY KEY"), plan
    assert not any("TEMP B-TREE" in p for p in plan), plan
