"""The audit trail: an append-only SHA-256 hash chain in SQLite that shows any edited row.

Each event's hash covers the canonical JSON of its fields and the previous event's hash, so a
modified, deleted, inserted or reordered row breaks the chain where it happened. An event's hash
input is exactly its `kmtui audit export` line without the "hash" member, so an auditor can check an
export with nothing but a JSON parser and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kmtui.core.errors import AuditError, StoreError
from kmtui.core.models import AuditEvent, iso, utcnow
from kmtui.core.registry.db import Store
from kmtui.core.registry.text import like_escape

GENESIS_HASH = "0" * 64

EVENT_NAMES = ("seq", "ts", "actor", "action", "key_id", "params", "outcome", "prev_hash", "hash")
EVENT_COLUMNS = ", ".join(EVENT_NAMES)
_SECRET_WORDS = frozenset(
    {
        "pin",
        "half",
        "halves",
        "password",
        "passwd",
        "passphrase",
        "seed",
        "secret",
        "code",
        "otp",
        "totp",
        "otpauth",
    }
)


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(value: Any) -> str:
    """One spelling per value, so the same event always hashes the same."""
    return _CANONICAL.encode(value)


def event_hash(
    *,
    seq: int,
    ts: str,
    actor: str,
    action: str,
    key_id: str,
    params: Mapping[str, Any],
    outcome: str,
    prev_hash: str,
) -> str:
    """SHA-256 hex over the canonical JSON of every field but the hash itself."""
    row = (seq, ts, actor, action, key_id, canonical_json(params), outcome, prev_hash, "")
    return _stored_hash(row)


def _words(name: str) -> list[str]:
    """`soPIN`, `TOTPCode` and `seed_hex` split into words, so secrets are caught however named."""
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", spaced)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def _refuse_secrets(value: Any, path: str = "params") -> None:
    """The trail is kept for years and exported: a field named like a secret is a bug."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            words = _words(str(name))
            if any(w in _SECRET_WORDS or w.removesuffix("s") in _SECRET_WORDS for w in words):
                raise ValueError(
                    f"refusing to audit {path}[{name!r}]: it is named like a secret, and the "
                    "audit trail must never hold one"
                )
            _refuse_secrets(item, f"{path}[{name!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _refuse_secrets(item, f"{path}[{index}]")


def _text(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


def _event(row: Mapping[str, Any]) -> AuditEvent:
    """An event as stored; a tampered row must still display, so odd cells become text."""
    try:
        parsed = json.loads(row["params"])
    except (TypeError, ValueError, RecursionError):
        parsed = None
    params = parsed if isinstance(parsed, dict) else {"unreadable_params": _text(row["params"])}
    return AuditEvent(
        seq=row["seq"],
        ts=_text(row["ts"]),
        actor=_text(row["actor"]),
        action=_text(row["action"]),
        key_id=_text(row["key_id"]),
        params=params,
        outcome=_text(row["outcome"]),
        prev_hash=_text(row["prev_hash"]),
        hash=_text(row["hash"]),
    )


def verify_rows(
    batches: Iterable[Sequence[Sequence[Any]]],
    *,
    progress: Callable[[int], None] | None = None,
    anchors: Mapping[int, str] | None = None,
) -> VerifyResult:
    """The chain check over batches of rows in `EVENT_NAMES` order, by seq (used offline too)."""
    count, expected_seq, prev_hash = 0, 1, GENESIS_HASH
    for rows in batches:
        for row in rows:
            problem = _problem(row, expected_seq, prev_hash)
            if problem is None and anchors and row[0] in anchors and anchors[row[0]] != row[8]:
                problem = (
                    row[0],
                    f"event {row[0]} differs from the HSM-signed checkpoint for it: events up to "
                    f"{row[0]} were rewritten and re-chained",
                )
            if problem is not None:
                bad_seq, reason = problem
                return VerifyResult(False, count, bad_seq, reason, expected_seq - 1, prev_hash)
            count, expected_seq, prev_hash = count + 1, expected_seq + 1, row[8]
        if progress is not None:
            progress(count)
    reason = f"all {count} events verified" if count else "the audit trail is empty"
    return VerifyResult(True, count, None, reason, count, prev_hash)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a chain check; head_* name the last event that verified (genesis if none)."""

    ok: bool
    count: int
    first_bad_seq: int | None
    reason: str
    head_seq: int
    head_hash: str


def _problem(row: Sequence[Any], expected_seq: int, prev_hash: str) -> tuple[int, str] | None:
    """Why this row breaks the chain (bad seq, plain sentence), or None when it fits."""
    seq, stored_prev, stored_hash = row[0], row[7], row[8]
    if seq != expected_seq:
        if seq < expected_seq:
            return seq, f"event {seq} is out of sequence (the trail must start at event 1)"
        if expected_seq == 1:
            return 1, f"event 1 is missing (the trail starts at event {seq})"
        return expected_seq, (
            f"event {expected_seq} is missing (sequence jumps from {expected_seq - 1} to {seq})"
        )
    if stored_prev != prev_hash:
        if seq == 1:
            return 1, (
                "event 1 does not start from the genesis hash "
                "(its link was edited, or rows before it were deleted and the rest renumbered)"
            )
        return seq, (
            f"event {seq} does not follow event {seq - 1} "
            "(previous-hash link broken: rows inserted, deleted or reordered)"
        )
    try:
        recomputed = _stored_hash(row)
    except (TypeError, ValueError):  # a cell of a type no appended event can hold
        recomputed = ""
    if recomputed != stored_hash:
        return seq, f"event {seq} was modified: its hash does not match its contents"
    return None


def _stored_hash(row: Sequence[Any]) -> str:
    """The hash of a row over its params text as stored: any changed byte shows.

    The one spelling of an event's hash: append hashes the text it stores, verify the text it
    reads, and neither parses nor re-encodes the params (a JSON round trip could reorder them).
    """
    seq, ts, actor, action, key_id, params, outcome, prev_hash, _ = row
    document = {
        "seq": seq,
        "ts": ts,
        "actor": actor,
        "action": action,
        "key_id": key_id,
        "params": 0,
        "outcome": outcome,
        "prev_hash": prev_hash,
    }
    # Quotes inside encoded strings are escaped, so the first `"params":0,` is the member itself.
    text = canonical_json(document).replace('"params":0,', f'"params":{params},', 1)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AuditLog:
    """Append and verify the hash-chained trail kept in the store's audit_events table."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.sealer: Callable[[sqlite3.Connection, int, str], None] | None = None
        """Called in each event's transaction with (conn, seq, hash): the token's seal of the
        event (kmtui.core.audit.seals.Seals installs it)."""

    def append(
        self,
        action: str,
        *,
        actor: str,
        outcome: str,
        key_id: str = "",
        params: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """Commit one event (or join the open transaction); on AuditError, leave the HSM alone."""
        _refuse_secrets(params or {})
        # Kept in the form it reads back as (tuples become lists), so a re-read hashes the same.
        text = canonical_json(dict(params or {}))
        stored: dict[str, Any] = json.loads(text)
        action, actor, outcome, key_id = str(action), str(actor), str(outcome), str(key_id)
        try:
            with self._store.transaction() as conn:
                last = conn.execute(
                    "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
                ts = iso(utcnow())
                digest = _stored_hash(
                    (seq, ts, actor, action, key_id, text, outcome, prev_hash, "")
                )
                conn.execute(
                    f"INSERT INTO audit_events ({EVENT_COLUMNS}) "  # noqa: S608 - constant columns
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, ts, actor, action, key_id, text, outcome, prev_hash, digest),
                )
                if self.sealer is not None:
                    self.sealer(conn, seq, digest)
        except StoreError as exc:
            raise AuditError(
                f"The audit trail could not record {action!r}: {exc.message}",
                f"Nothing was done on the HSM. {exc.hint}".strip(),
            ) from exc
        return AuditEvent(seq, ts, actor, action, key_id, stored, outcome, prev_hash, digest)

    def verify(
        self,
        progress: Callable[[int], None] | None = None,
        batch: int = 10_000,
        anchors: Mapping[int, str] | None = None,
    ) -> VerifyResult:
        """Recompute the chain from event 1, streaming, and stop at the first break.

        This proves the rows agree with each other. Cutting events off the end, or re-chaining
        them, leaves a consistent chain: `anchors` (seq -> hash, from HSM-signed checkpoints and
        the head kept on the token) pin it down; see kmtui.core.audit.anchors.
        """
        rows = self._store.stream(
            f"SELECT {EVENT_COLUMNS} FROM audit_events ORDER BY seq",  # noqa: S608 - constant columns
            batch=batch,
        )
        return verify_rows(rows, progress=progress, anchors=anchors)

    def events(
        self,
        after_seq: int | None = None,
        limit: int = 100,
        newest_first: bool = True,
        key_id: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: str | None = None,
        until: str | None = None,
        actor_contains: str | None = None,
    ) -> list[AuditEvent]:
        """One page of events; pass the last seq shown as `after_seq` for the next page.

        `since`/`until` bound ts inclusively (ISO text); `actor_contains` finds an operator
        inside a joint actor such as "alice+bob" (ASCII-case-insensitive).
        """
        conditions: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("key_id", key_id),
            ("actor", actor),
            ("action", action),
            ("outcome", outcome),
        ):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        # Unary +: the trail is walked by seq, newest first, and rows are tested as they come;
        # the ts index would cost a sort of every event in the range before the first row.
        if since is not None:
            conditions.append("+ts >= ?")
            params.append(since)
        if until is not None:
            conditions.append("+ts <= ?")
            params.append(until)
        if actor_contains:
            conditions.append("actor LIKE ? ESCAPE '\\'")
            params.append("%" + like_escape(actor_contains) + "%")
        rows = self._store.keyset_page(
            "audit_events",
            ("seq",),
            None if after_seq is None else (after_seq,),
            limit,
            " AND ".join(conditions),
            params,
            descending=newest_first,
        )
        return [_event(row) for row in rows]
