"""Offline verification of a trail: the chain, the signed checkpoints (one closing every session)
and their agreement, the token's head when the token is at hand, and the file's integrity.

Needs no token and no PIN: an auditor runs it on a copy with the audit public key printed at
init (`kmtui audit verify --db COPY --pubkey audit.pem`).
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kmtui.core import errors
from kmtui.core.audit.anchors import Checkpoint, fingerprint_of, head_problem, signature_ok
from kmtui.core.audit.log import EVENT_COLUMNS, VerifyResult, verify_rows
from kmtui.core.registry.db import integrity_problem

CHAIN_ONLY = "chain only"
SESSION_END = "token.logout"
"""The event that ends a token session; each must have a signed checkpoint of its own."""


@dataclass(frozen=True)
class TrailReport:
    ok: bool
    events: int
    first_bad_seq: int | None
    reason: str
    head_seq: int
    head_hash: str
    checkpoints: int
    last_checkpoint: int
    key_fingerprint: str
    key_source: str  # "given" (--pubkey), "token" (read from the token at hand), "" (chain only)
    token_head: str  # "matched", "not checked", or the problem
    integrity: str = "not checked"  # SQLite's integrity_check of the whole file: "ok" or its line
    scope: str = CHAIN_ONLY  # what this run proved: "chain only", or "chain + signed ..."
    session_ends: int = 0  # token.logout events in the trail
    unsigned_session_ends: tuple[int, ...] = ()  # those without a signed checkpoint of their own
    unsigned_events: int = 0  # events after the last signed checkpoint: only the chain holds them
    key_record: str = "not checked"  # the database's audit key record: "matches" or the problem

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["unsigned_session_ends"] = list(self.unsigned_session_ends)
        return data


def connect_readonly(path: Path, *, copy: bool) -> sqlite3.Connection:
    """Never written: an auditor's copy opens immutable (no -wal/-shm created); the live
    database read-only, so committed events still in its WAL are seen. A copy with a -wal file
    beside it is read with it too: what `audit export` shows is what is verified."""
    if not path.is_file():
        raise errors.UsageError(f"No database at {path}.", "Give the path of a kmtui.db copy.")
    wal = path.with_name(path.name + "-wal")
    mode = (
        "mode=ro&immutable=1" if copy and not (wal.is_file() and wal.stat().st_size) else "mode=ro"
    )
    return sqlite3.connect(f"file:{path}?{mode}", uri=True)


def verify_database(
    path: Path,
    *,
    pubkey_pem: str | None = None,
    token_pubkey_pem: str | None = None,
    token_head: tuple[int, str] | None = None,
    progress: Callable[[int], None] | None = None,
    copy: bool = True,
    integrity: bool = False,
) -> TrailReport:
    """The chain; with a trusted key, the signed checkpoints and a checkpoint at every session
    end; the token head when given.

    The trusted key is the token's own (`token_pubkey_pem`, when the token is at hand) or the one
    the auditor was given (`pubkey_pem`); never the key stored in the database, which travels
    with the data and proves nothing. With neither, only the chain is checked, and the report
    says so. With `integrity`, also SQLite's full integrity_check of the file (every index
    against its table, which the quick check kmtui's TUI opens with leaves out); a failure fails
    the report.
    """
    conn = connect_readonly(path, copy=copy)
    try:
        report = _verify(conn, pubkey_pem, token_pubkey_pem, token_head, progress)
        if not integrity:
            return report
        problem = integrity_problem(conn)
        if not problem:
            return replace(report, integrity="ok")
        reason = (
            f"the database file failed SQLite's integrity check ({problem}): restore it from a "
            "backup made by kmtui"
        )
        return replace(
            report,
            ok=False,
            reason=report.reason if not report.ok else reason,
            integrity=problem,
        )
    except sqlite3.DatabaseError as exc:
        raise errors.DatabaseCorrupt(
            f"{path} cannot be read as a kmtui database ({exc}).",
            "Check that it is a complete copy of kmtui.db.",
        ) from None
    finally:
        conn.close()


def _trusted_key(given: str | None, token: str | None) -> tuple[str, str, str]:
    """(PEM, source, problem): the token's key when at hand, else the one given, else none."""
    if token:
        if given and fingerprint_of(given) != fingerprint_of(token):
            return (
                token,
                "token",
                f"the key given with --pubkey ({fingerprint_of(given)[:23]}) is not this "
                f"token's audit key ({fingerprint_of(token)[:23]}): check where it came from",
            )
        return token, "token", ""
    return (given, "given", "") if given else ("", "", "")


def _key_record_problem(conn: sqlite3.Connection, tables: set[str], fingerprint: str) -> str:
    """'' when the database records exactly the trusted audit key; else what it records."""
    rows = (
        conn.execute("SELECT fingerprint, pem FROM audit_keys ORDER BY created_at").fetchall()
        if "audit_keys" in tables
        else []
    )
    if not rows:
        return "the database holds no record of its audit key: the record was deleted"
    for recorded, pem in rows:
        try:
            actual = fingerprint_of(str(pem))
        except (ValueError, TypeError, UnicodeEncodeError):
            actual = ""
        if recorded != fingerprint or actual != fingerprint:
            return (
                f"the database records the audit key {str(actual or recorded)[:23]}, not the "
                f"trusted key {fingerprint[:23]}: the record was replaced or added to"
            )
    return ""


def _unsigned_session_ends(
    conn: sqlite3.Connection, checkpoints: list[Checkpoint]
) -> tuple[list[int], list[int]]:
    """(every session end, those without a signed checkpoint of their own).

    A session end is covered by a checkpoint at it or after it and before the next session end:
    one checkpoint never covers two, so deleting a session's checkpoint is seen even when a
    later one survives, and so is a session whose end was written but never signed (kmtui
    stopped between the two).
    """
    ends = [
        int(r[0])
        for r in conn.execute(
            "SELECT seq FROM audit_events WHERE action = ? ORDER BY seq", (SESSION_END,)
        )
    ]
    signed = sorted(cp.seq for cp in checkpoints)
    unsigned = []
    for n, end in enumerate(ends):
        until = ends[n + 1] if n + 1 < len(ends) else None
        index = bisect_left(signed, end)
        if index == len(signed) or (until is not None and signed[index] >= until):
            unsigned.append(end)
    return ends, unsigned


def _verify(
    conn: sqlite3.Connection,
    pubkey_pem: str | None,
    token_pubkey_pem: str | None,
    token_head: tuple[int, str] | None,
    progress: Callable[[int], None] | None,
) -> TrailReport:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    checkpoints = (
        [
            Checkpoint(*row)
            for row in conn.execute(
                "SELECT seq, head_hash, ts, token_serial, key_fingerprint, reason, signature "
                "FROM audit_checkpoints ORDER BY seq"
            )
        ]
        if "audit_checkpoints" in tables
        else []
    )
    trusted, source, key_problem = _trusted_key(pubkey_pem, token_pubkey_pem)
    fingerprint = fingerprint_of(trusted) if trusted else ""
    parts = ["chain"] + (["signed checkpoints"] if trusted else [])
    parts += ["token head"] if token_head is not None else []
    base = TrailReport(
        ok=True,
        events=0,
        first_bad_seq=None,
        reason="",
        head_seq=0,
        head_hash="",
        checkpoints=len(checkpoints),
        last_checkpoint=checkpoints[-1].seq if checkpoints else 0,
        key_fingerprint=fingerprint,
        key_source=source,
        token_head="not checked",
        scope=" + ".join(parts) if len(parts) > 1 else CHAIN_ONLY,
    )

    def failed(bad: int | None, reason: str, **facts: Any) -> TrailReport:
        return replace(base, ok=False, first_bad_seq=bad, reason=reason, **facts)

    if key_problem:
        return failed(None, key_problem)
    for cp in checkpoints if trusted else []:
        if cp.key_fingerprint != fingerprint or not signature_ok(cp, trusted):
            return failed(
                cp.seq,
                f"the checkpoint at event {cp.seq} is not signed by the audit key "
                f"{fingerprint[:23]}: forged, or re-signed with another key",
            )
    anchors = {cp.seq: cp.head_hash for cp in checkpoints} if trusted else {}
    if token_head is not None:
        anchors.setdefault(token_head[0], token_head[1])

    def batches() -> Iterator[list[Any]]:
        cursor = conn.execute(f"SELECT {EVENT_COLUMNS} FROM audit_events ORDER BY seq")  # noqa: S608
        while chunk := cursor.fetchmany(10_000):
            yield chunk

    result = verify_rows(batches(), progress=progress, anchors=anchors)
    base = replace(base, events=result.count, head_seq=result.head_seq, head_hash=result.head_hash)
    if not result.ok:
        return failed(result.first_bad_seq, result.reason)
    if trusted and checkpoints and checkpoints[-1].seq > result.head_seq:
        cut = checkpoints[-1].seq
        return failed(
            result.head_seq + 1,
            f"a checkpoint was signed at event {cut}, but the trail ends at event "
            f"{result.head_seq}: events were cut off the end or an older copy restored",
        )
    if token_head is not None:
        problem = _token_head_problem(conn, token_head, result.head_seq)
        if problem:
            bad, text = problem
            return failed(bad, text, token_head=text)
        base = replace(base, token_head="matched")
    if not trusted:
        return replace(
            base,
            reason=f"{result.reason} (chain only: "
            + (f"the {len(checkpoints)} checkpoints were not checked: " if checkpoints else "")
            + "no --pubkey and no token, and a key stored in the database proves nothing)",
        )
    return _signed(conn, tables, base, result, checkpoints)


def _token_head_problem(
    conn: sqlite3.Connection, token_head: tuple[int, str], db_head: int
) -> tuple[int, str] | None:
    """(first bad seq, why) when the trail disagrees with the head the token recorded."""
    rows = [
        {"hash": r[0]}
        for r in conn.execute("SELECT hash FROM audit_events WHERE seq = ?", (token_head[0],))
    ]
    problem = head_problem(rows, token_head[0], token_head[1], db_head)
    if problem:
        return min(token_head[0], db_head + 1), problem
    late = conn.execute(
        "SELECT seq, action FROM audit_events WHERE seq > ? AND NOT (action IN "
        "('token.login', 'audit.head-mismatch') AND outcome = 'failure') ORDER BY seq LIMIT 1",
        (token_head[0],),
    ).fetchone()
    if late is not None:
        return int(late[0]), (
            f"event {late[0]} ({late[1]}) was written after the last head the token "
            "recorded: forged, or written just before a crash (log in once to "
            "re-anchor, then verify again)"
        )
    return None


def _signed(
    conn: sqlite3.Connection,
    tables: set[str],
    base: TrailReport,
    result: VerifyResult,
    checkpoints: list[Checkpoint],
) -> TrailReport:
    """What a trusted key adds: the key record, a checkpoint at every session end, none absent."""
    ends, unsigned = _unsigned_session_ends(conn, checkpoints)
    base = replace(
        base,
        session_ends=len(ends),
        unsigned_session_ends=tuple(unsigned),
        unsigned_events=result.head_seq - base.last_checkpoint,
    )
    record = _key_record_problem(conn, tables, base.key_fingerprint)
    if record:
        return replace(base, ok=False, reason=record, key_record=record)
    base = replace(base, key_record="matches")
    if not checkpoints:
        return replace(
            base,
            ok=False,
            first_bad_seq=unsigned[0] if unsigned else (1 if result.count else None),
            reason=f"the trail holds no signed checkpoint ({len(ends)} session ends recorded): "
            "nothing proves it was not rewritten; checkpoints were deleted, or kmtui never "
            "signed one",
        )
    if unsigned:
        return replace(
            base,
            ok=False,
            first_bad_seq=unsigned[0],
            reason=f"the session that ended at event {unsigned[0]} has no signed checkpoint "
            f"of its own ({len(unsigned)} of {len(ends)} session ends lack one; "
            f"{len(checkpoints)} checkpoints in all): checkpoints were deleted, or kmtui "
            "stopped between writing a session's end and signing it",
        )
    tail = (
        f"; events {base.last_checkpoint + 1}-{result.head_seq} come after the last signed "
        "checkpoint (a session still open, or one that stopped before its end): only the "
        "chain holds them"
        if base.unsigned_events
        else ""
    )
    return replace(
        base,
        reason=f"{result.reason}; {len(checkpoints)} signed checkpoints agree; "
        f"every one of {len(ends)} session ends has its own{tail}",
    )
