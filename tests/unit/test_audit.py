"""The audit chain on real SQLite files: it verifies, and every kind of tampering is pinpointed."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmtui.core.audit import export
from kmtui.core.audit.log import GENESIS_HASH, AuditLog, event_hash
from kmtui.core.errors import AuditError, DatabaseLocked, StoreError
from kmtui.core.models import Outcome
from kmtui.core.registry.db import Store

CHAIN_LENGTH = 12
COLUMNS = ("seq", "ts", "actor", "action", "key_id", "params", "outcome", "prev_hash", "hash")
PROPERTY = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def reference_hash(row: dict[str, Any]) -> str:
    """The documented hash, written out independently of kmtui's code."""
    document = {name: row[name] for name in COLUMNS if name not in ("hash", "params")}
    document["params"] = json.loads(row["params"])
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def all_rows(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_events ORDER BY seq")
    return [dict(zip(COLUMNS, row, strict=True)) for row in cursor]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "kmtui.db")
    yield s
    s.close()


def fill(log: AuditLog, count: int) -> None:
    for n in range(count):
        log.append(
            ("key.create", "key.rotate", "token.login")[n % 3],
            actor=("alice", "bob", "Zoë")[n % 3],
            outcome=(Outcome.INTENT, Outcome.SUCCESS, Outcome.FAILURE)[n % 3],
            key_id=f"k{n % 4:012d}" if n % 5 else "",
            params={"n": n, "label": f"läbel {n} ✓", "nested": {"list": [n, None, True]}},
        )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trail of CHAIN_LENGTH events that each property test copies and tampers with."""
    path = tmp_path_factory.mktemp("pristine") / "kmtui.db"
    s = Store.open(path)
    fill(AuditLog(s), CHAIN_LENGTH)
    s.close()
    return path


def verify_tampered(pristine: Path, tamper: Callable[[sqlite3.Connection], None]) -> Any:
    """Copy the trail, tamper with it as someone with the sqlite3 shell would, then verify."""
    with tempfile.TemporaryDirectory() as directory:
        copy = Path(directory) / "kmtui.db"
        source, target = sqlite3.connect(pristine), sqlite3.connect(copy, isolation_level=None)
        source.backup(target)
        source.close()
        target.execute("DROP TRIGGER audit_events_no_update")
        target.execute("DROP TRIGGER audit_events_no_delete")
        tamper(target)
        target.close()
        s = Store.open(copy)
        try:
            return AuditLog(s).verify()
        finally:
            s.close()


def pristine_rows(pristine: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(pristine)
    try:
        return all_rows(conn)
    finally:
        conn.close()


# -- a sound chain ------------------------------------------------------------------------------


def test_chain_of_appended_events_verifies_with_count_and_head_hash(store: Store) -> None:
    log = AuditLog(store)
    fill(log, 20)
    last = log.append("key.show", actor="carol", outcome="info", params={"pair": (1, 2)})
    assert last.params == {"pair": [1, 2]}  # as it reads back, so it hashes the same
    rows = all_rows(store.conn)
    assert [r["seq"] for r in rows] == list(range(1, 22))
    assert rows[0]["prev_hash"] == "0" * 64 == GENESIS_HASH
    for before, row in zip([None, *rows], rows, strict=False):
        assert row["hash"] == reference_hash(row)
        if before is not None:
            assert row["prev_hash"] == before["hash"]
    result = log.verify()
    assert result.ok and result.first_bad_seq is None
    assert (result.count, result.head_seq, result.head_hash) == (21, 21, last.hash)
    assert rows[-1]["hash"] == last.hash


def test_params_whose_keys_reorder_in_a_json_round_trip_still_verify(store: Store) -> None:
    """Numeric keys sort as numbers before encoding and as text after: the hash is over the
    stored text, so append and verify agree (it was a false tamper alarm)."""
    log = AuditLog(store)
    event = log.append(
        "key.note", actor="alice", outcome=Outcome.INFO, params={"n": {10: "a", 9: "b"}}
    )
    assert log.verify().ok
    assert event.hash == store.rows("SELECT hash FROM audit_events WHERE seq = 1")[0]["hash"]


def test_empty_trail_verifies_with_the_genesis_head(store: Store) -> None:
    result = AuditLog(store).verify()
    assert (result.ok, result.count, result.head_seq, result.head_hash) == (
        True,
        0,
        0,
        GENESIS_HASH,
    )


# -- tampering, pinpointed ----------------------------------------------------------------------

TEXT_VALUES = st.one_of(
    st.text(max_size=70), st.integers(-(2**63), 2**63 - 1), st.binary(min_size=1, max_size=8)
)
PARAM_VALUES = st.one_of(
    TEXT_VALUES,
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3).map(json.dumps),  # spaces
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3).map(
        lambda d: json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    ),
)


@PROPERTY
@given(data=st.data())
def test_modifying_any_field_of_any_row_is_reported_at_that_row(pristine: Path, data: Any) -> None:
    # Expected: the modified row itself. A moved seq (past the head) leaves event n missing.
    n = data.draw(st.integers(1, CHAIN_LENGTH), label="row")
    field = data.draw(st.sampled_from(COLUMNS), label="field")
    if field == "seq":
        value: Any = data.draw(st.integers(CHAIN_LENGTH + 1, CHAIN_LENGTH + 1000), label="value")
    else:
        value = data.draw(PARAM_VALUES if field == "params" else TEXT_VALUES, label="value")
    original = pristine_rows(pristine)[n - 1][field]

    def tamper(conn: sqlite3.Connection) -> None:
        conn.execute(f"UPDATE audit_events SET {field} = ? WHERE seq = ?", (value, n))
        locator = value if field == "seq" else n
        stored = conn.execute(
            f"SELECT {field} FROM audit_events WHERE seq = ?", (locator,)
        ).fetchone()[0]
        if stored == original:
            raise SameValue

    try:
        result = verify_tampered(pristine, tamper)
    except SameValue:
        return  # the UPDATE changed nothing; there is nothing to detect
    assert not result.ok
    assert result.first_bad_seq == n
    assert (result.count, result.head_seq) == (n - 1, n - 1)
    if field == "seq" and n == 1:
        assert result.reason == "event 1 is missing (the trail starts at event 2)"
    elif field == "seq":
        jump = f"{n - 1} to {n + 1 if n < CHAIN_LENGTH else value}"
        assert result.reason == f"event {n} is missing (sequence jumps from {jump})"
    elif field == "prev_hash":
        assert result.reason.startswith(f"event {n} does not ")
    else:
        assert result.reason == f"event {n} was modified: its hash does not match its contents"


class SameValue(Exception):
    """The drawn value equals the stored one, so the example tampers with nothing."""


@PROPERTY
@given(n=st.integers(1, CHAIN_LENGTH - 1))
def test_deleting_any_row_but_the_last_is_reported_as_missing(pristine: Path, n: int) -> None:
    # Expected: the deleted seq n (the last row's removal is truncation, caught by checkpoints).
    result = verify_tampered(
        pristine, lambda conn: conn.execute("DELETE FROM audit_events WHERE seq = ?", (n,))
    )
    assert not result.ok
    assert result.first_bad_seq == n
    if n == 1:
        assert result.reason == "event 1 is missing (the trail starts at event 2)"
    else:
        assert result.reason == f"event {n} is missing (sequence jumps from {n - 1} to {n + 1})"


@PROPERTY
@given(
    k=st.integers(1, CHAIN_LENGTH),
    actor=st.text(max_size=12),
    params=st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=6), max_size=3),
)
def test_inserting_a_forged_row_is_reported_at_the_row_after_it(
    pristine: Path, k: int, actor: str, params: dict[str, Any]
) -> None:
    # The forged row at seq k links and hashes correctly, so it cannot be told apart by itself;
    # the original event it displaced (now k + 1) no longer follows it. Expected: k + 1.
    rows = pristine_rows(pristine)
    forged = {
        "seq": k,
        "ts": rows[k - 1]["ts"],
        "actor": actor,
        "action": "key.export",
        "key_id": "k000000000001",
        "params": json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
        "outcome": "success",
        "prev_hash": rows[k - 2]["hash"] if k > 1 else GENESIS_HASH,
    }
    forged["hash"] = reference_hash(forged)

    def tamper(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE audit_events SET seq = -(seq + 1) WHERE seq >= ?", (k,))
        conn.execute("UPDATE audit_events SET seq = -seq WHERE seq < 0")
        conn.execute(
            f"INSERT INTO audit_events ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            tuple(forged[c] for c in COLUMNS),
        )

    result = verify_tampered(pristine, tamper)
    assert not result.ok
    assert result.first_bad_seq == k + 1
    assert (result.count, result.head_seq, result.head_hash) == (k, k, forged["hash"])
    assert result.reason == (
        f"event {k + 1} does not follow event {k} "
        "(previous-hash link broken: rows inserted, deleted or reordered)"
    )


@PROPERTY
@given(pair=st.lists(st.integers(1, CHAIN_LENGTH), min_size=2, max_size=2, unique=True))
def test_swapping_two_rows_is_reported_at_the_earlier_one(pristine: Path, pair: list[int]) -> None:
    # Row i now carries row j's previous-hash, which is not event i - 1's hash. Expected: i.
    i, j = sorted(pair)
    rows = pristine_rows(pristine)
    moved = [c for c in COLUMNS if c != "seq"]

    def tamper(conn: sqlite3.Connection) -> None:
        for seq, source in ((i, rows[j - 1]), (j, rows[i - 1])):
            conn.execute(
                f"UPDATE audit_events SET {', '.join(f'{c} = ?' for c in moved)} WHERE seq = ?",
                (*(source[c] for c in moved), seq),
            )

    result = verify_tampered(pristine, tamper)
    assert not result.ok
    assert result.first_bad_seq == i
    assert result.reason.startswith(f"event {i} does not ")


def test_kmtui_itself_cannot_update_or_delete_audit_events(store: Store) -> None:
    log = AuditLog(store)
    fill(log, 3)
    for sql in ("UPDATE audit_events SET actor = 'mallory'", "DELETE FROM audit_events"):
        with pytest.raises(StoreError, match="append-only"), store.transaction() as conn:
            conn.execute(sql)
    assert log.verify().count == 3


# -- what append refuses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"pin": "1234"},
        {"so_pin": "1234"},
        {"soPIN": "1234"},
        {"user-pin": "1234"},
        {"password": "x"},
        {"Passphrase": "x"},
        {"seed": "JBSWY3DP"},
        {"seed_hex": "00"},
        {"client_secret": "x"},
        {"code": "123456"},
        {"codes": ["123456"]},
        {"TOTPCode": "123456"},
        {"otp": "123456"},
        {"totp": "123456"},
        {"otpauth_uri": "otpauth://totp/x?secret=JBSWY3DP"},
        {"operator": {"name": "alice", "pin": "1234"}},
        {"half": "first-half"},
        {"pin_halves": ["a", "b"]},
        {"soHalf": "x"},
        {"approvals": [{"operator": "bob", "code": "654321"}]},
    ],
)
def test_append_refuses_params_named_like_secrets(store: Store, params: dict[str, Any]) -> None:
    log = AuditLog(store)
    with pytest.raises(ValueError, match="named like a secret"):
        log.append("operator.approve", actor="alice", outcome="intent", params=params)
    assert log.verify().count == 0


def test_append_accepts_ordinary_names_that_merely_contain_secret_letters(store: Store) -> None:
    log = AuditLog(store)
    params = {"spin": 1, "opinion": "x", "label": "pin pad", "kcv": "A1B2C3", "error": "Locked"}
    event = log.append("key.create", actor="alice", outcome="success", params=params)
    assert log.events()[0].params == params == event.params


def test_append_on_a_locked_database_raises_audit_error_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "kmtui.db"
    s = Store.open(path, busy_timeout_ms=100)
    log = AuditLog(s)
    first = log.append("token.login", actor="alice", outcome="success")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(AuditError) as caught:
            log.append("key.destroy", actor="alice", outcome="intent", key_id="k1")
        assert isinstance(caught.value.__cause__, DatabaseLocked)
        assert "'key.destroy'" in caught.value.message and "locked" in caught.value.message
        assert caught.value.hint.startswith("Nothing was done on the HSM.")
        assert "close it and retry" in caught.value.hint
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert [e.seq for e in log.events()] == [1]
    result = log.verify()
    assert result.ok and result.head_hash == first.hash
    assert log.append("key.destroy", actor="alice", outcome="intent").seq == 2
    s.close()


def test_appends_from_several_threads_form_one_unbroken_chain(store: Store) -> None:
    log = AuditLog(store)
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            for n in range(25):
                log.append("key.use", actor=name, outcome="info", params={"n": n})
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"op{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = log.verify()
    assert result.ok and result.count == 100


# -- streaming verification ---------------------------------------------------------------------


def insert_valid_chain(store: Store, count: int) -> str:
    """Bulk-load a valid chain (appending 50,000 events one commit each would take ~25 s)."""
    ts, prev, rows = "2026-01-01T00:00:00.000000Z", GENESIS_HASH, []
    for seq in range(1, count + 1):
        fields = dict(seq=seq, ts=ts, actor="bulk", action="key.use", key_id="", outcome="info")
        digest = event_hash(**fields, params={"n": seq}, prev_hash=prev)
        rows.append((*fields.values(), f'{{"n":{seq}}}', prev, digest))
        prev = digest
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO audit_events (seq, ts, actor, action, key_id, outcome, params, "
            "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return prev


def test_verify_streams_50000_rows_quickly_reporting_increasing_progress(store: Store) -> None:
    head = insert_valid_chain(store, 50_000)
    log = AuditLog(store)
    calls: list[int] = []
    started = time.monotonic()
    result = log.verify(progress=calls.append, batch=10_000)
    elapsed = time.monotonic() - started
    assert result.ok and (result.count, result.head_seq, result.head_hash) == (50_000, 50_000, head)
    assert calls == [10_000, 20_000, 30_000, 40_000, 50_000]
    assert elapsed < 5, f"verify took {elapsed:.1f}s for 50,000 rows"

    # Memory stays at one batch: far below what holding every row at once takes.
    tracemalloc.start()
    assert log.verify(batch=1000).ok
    _, streaming_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tracemalloc.start()
    everything = store.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_events").fetchall()
    _, loading_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(everything) == 50_000
    assert streaming_peak < loading_peak / 5, (streaming_peak, loading_peak)


# -- reading the trail --------------------------------------------------------------------------


def test_events_page_by_seq_either_way_and_filter(store: Store) -> None:
    log = AuditLog(store)
    fill(log, 25)
    pages, after = [], None
    while page := log.events(after_seq=after, limit=10):
        pages.append([e.seq for e in page])
        after = page[-1].seq
    assert pages == [list(range(25, 15, -1)), list(range(15, 5, -1)), list(range(5, 0, -1))]
    oldest = log.events(after_seq=20, limit=10, newest_first=False)
    assert [e.seq for e in oldest] == [21, 22, 23, 24, 25]
    bobs = log.events(actor="bob", limit=100)
    assert [e.seq for e in bobs] == [n + 1 for n in range(24, -1, -1) if n % 3 == 1]
    key_one = log.events(key_id="k000000000001", action="key.rotate", limit=100)
    expected = [n + 1 for n in range(24, -1, -1) if n % 4 == 1 and n % 5 and n % 3 == 1]
    assert [e.seq for e in key_one] == expected and expected


def test_events_show_a_row_with_unreadable_params_instead_of_failing(store: Store) -> None:
    log = AuditLog(store)
    fill(log, 2)
    store.conn.execute("DROP TRIGGER audit_events_no_update")
    store.conn.execute("UPDATE audit_events SET params = x'00ff' WHERE seq = 2")
    newest = log.events(limit=1)[0]
    assert newest.params == {"unreadable_params": "00ff"}
    assert log.verify().first_bad_seq == 2


def test_export_writes_canonical_lines_an_auditor_can_check_alone(store: Store) -> None:
    log = AuditLog(store)
    fill(log, 6)
    out = io.StringIO()
    assert export.write(store, out, "jsonl", since=2) == 4
    lines = out.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == [3, 4, 5, 6]
    second = log.events(after_seq=3, limit=1)[0]
    assert second.seq == 2
    previous = second.hash
    for line, event in zip(lines, events, strict=True):
        assert line == json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert "✓" in line  # UTF-8 as is, not \u escapes
        claimed = event.pop("hash")
        canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(canonical.encode("utf-8")).hexdigest() == claimed
        assert event["prev_hash"] == previous
        previous = claimed
