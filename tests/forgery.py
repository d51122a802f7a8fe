"""What the database file's holder can do with sqlite3 and kmtui's published formats."""

from __future__ import annotations

import json
import sqlite3

from kmtui.core.audit.log import GENESIS_HASH, event_hash


def rechain(conn: sqlite3.Connection, start: int = 1) -> None:
    """Recompute every hash from `start` on, as an attacker who knows the format would (the
    append-only triggers must be dropped first)."""
    row = conn.execute("SELECT hash FROM audit_events WHERE seq = ?", (start - 1,)).fetchone()
    prev = row[0] if row else GENESIS_HASH
    rows = conn.execute(
        "SELECT seq, ts, actor, action, key_id, params, outcome FROM audit_events "
        "WHERE seq >= ? ORDER BY seq",
        (start,),
    ).fetchall()
    for seq, ts, actor, action, key_id, params, outcome in rows:
        digest = event_hash(
            seq=seq,
            ts=ts,
            actor=actor,
            action=action,
            key_id=key_id,
            params=json.loads(params),
            outcome=outcome,
            prev_hash=prev,
        )
        conn.execute(
            "UPDATE audit_events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq)
        )
        prev = digest
