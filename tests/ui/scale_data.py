"""A registry the size of a large installation, written straight into a kmtui database.

100,000 keys and 1,000,000 audit events take minutes through the service; here rows go in with
executemany on a Store-created file (schema, indexes and triggers are kmtui's own) and the audit
rows form a valid chain hashed by kmtui's event_hash. Built files are cached under the temp dir,
keyed by size and by a digest of this module, and copied for each run with a fresh registry id
(the token keeps an audit head per registry id, so two runs must never share one).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kmtui.core.audit.log import GENESIS_HASH, canonical_json, event_hash
from kmtui.core.control.policy import DEFAULT_POLICIES
from kmtui.core.models import KeyState, iso
from kmtui.core.registry import schema
from kmtui.core.registry.db import Store
from kmtui.core.registry.schema import MIGRATIONS

SERIAL = "SCALE-NOT-THIS-TOKEN"  # reconciliation compares only the session token's objects
LABELS = ("payments", "orders", "Billing", "hr-archive", "tokenisation", "backup", "Zoë-signing")
ALGORITHMS = ("AES-256", "AES-128", "EC-P256", "RSA-3072", "HMAC-SHA256")
STATES = (
    (KeyState.ACTIVE, 12),
    (KeyState.SUSPENDED, 2),
    (KeyState.DEACTIVATED, 3),
    (KeyState.PRE_ACTIVATION, 1),
    (KeyState.DESTROY_SCHEDULED, 1),
    (KeyState.COMPROMISED, 1),
)
TAGS = ("pci", "gdpr", "legacy", "hsm-backed", "q3")
ACTORS = ("alice", "bob", "carol", "alice+bob", "bob+carol", "console")
ACTIONS = ("key.create", "key.rotate", "key.suspend", "token.login", "approval.granted")
OUTCOMES = ("success", "success", "success", "failure", "refused")
START = datetime(2024, 1, 1, tzinfo=UTC)


def _key_id(n: int) -> str:
    return "k" + hashlib.sha256(n.to_bytes(4, "big")).hexdigest()[:12]


def key_rows(count: int) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """(keys row, key_versions row) per key, deterministic."""
    states = [state for state, weight in STATES for _ in range(weight)]
    policies = [p.name for p in DEFAULT_POLICIES]
    for n in range(count):
        key_id = _key_id(n)
        created = iso(START + timedelta(minutes=7 * n))
        due = iso(START + timedelta(days=400 + n % 700)) if n % 3 else None
        tags = [TAGS[n % 5]] + ([TAGS[(n // 5) % 5]] if n % 2 else [])
        if n % 1000 == 7:
            tags.append("rare")
        state = states[n % len(states)]
        yield (
            (
                key_id,
                f"{LABELS[n % len(LABELS)]}-{n:06d}",
                ALGORITHMS[n % len(ALGORITHMS)],
                "encrypt",
                policies[n % len(policies)],
                str(state),
                0,
                1,
                "",
                "",
                json.dumps(sorted(set(tags))),
                created,
                created,
                created,
                None,
                due,
                None,
            ),
            (key_id, 1, str(state), f"kmtui:{key_id}:1".encode(), SERIAL, "A1B2C3", "", created),
        )


def audit_rows(count: int, keys: int) -> Iterator[tuple[Any, ...]]:
    """A valid chain: each hash from kmtui's event_hash over the row and the one before."""
    prev_hash = GENESIS_HASH
    for seq in range(1, count + 1):
        ts = iso(START + timedelta(seconds=seq * 31))
        actor, action = ACTORS[seq % len(ACTORS)], ACTIONS[seq % len(ACTIONS)]
        outcome = OUTCOMES[seq % len(OUTCOMES)]
        key_id = _key_id(seq % keys) if action.startswith("key.") else ""
        params = {"label": f"{LABELS[seq % len(LABELS)]}-{seq % keys:06d}", "version": 1}
        digest = event_hash(
            seq=seq,
            ts=ts,
            actor=actor,
            action=action,
            key_id=key_id,
            params=params,
            outcome=outcome,
            prev_hash=prev_hash,
        )
        yield (seq, ts, actor, action, key_id, canonical_json(params), outcome, prev_hash, digest)
        prev_hash = digest


def build(path: Path, keys: int, events: int) -> None:
    """Create a kmtui database at `path` holding `keys` keys and `events` chained events."""
    store = Store.open(path)
    for policy in DEFAULT_POLICIES:
        store.policies.add(policy)
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # building only: the file is thrown away on error
        conn.execute("PRAGMA temp_store = MEMORY")  # the audit triggers' statement journals
        conn.execute("BEGIN")
        pairs = list(key_rows(keys))
        conn.executemany(
            "INSERT INTO keys (id, label, algorithm, purpose, policy, state, exportable, "
            "current_version, owner, notes, tags, created_at, updated_at, activated_at, "
            "deactivated_at, rotation_due_at, destroy_after) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (k for k, _ in pairs),
        )
        conn.executemany(
            "INSERT INTO key_versions (key_id, version, state, cka_id, token_serial, kcv, "
            "fingerprint, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (v for _, v in pairs),
        )
        del pairs
        conn.executemany(
            "INSERT INTO audit_events (seq, ts, actor, action, key_id, params, outcome, "
            "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            audit_rows(events, keys),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _fingerprint() -> str:
    """This generator and kmtui's schema (its migrations' code): a migration would otherwise run
    on every copy, and a cache built by an earlier schema would be wrong."""
    source = Path(__file__).read_bytes() + Path(inspect.getfile(schema)).read_bytes()
    source += f"schema {len(MIGRATIONS)}".encode()
    return hashlib.sha256(source).hexdigest()[:12]


def cached(keys: int, events: int) -> tuple[Path, float]:
    """A built database for this size (and this generator), and the seconds building took."""
    root = Path(os.environ.get("KMTUI_SCALE_CACHE") or Path(tempfile.gettempdir()) / "kmtui-scale")
    path = root / f"{keys}-keys-{events}-events-{_fingerprint()}.db"
    if path.exists():
        return path, 0.0
    root.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
    began = time.perf_counter()
    try:
        build(partial, keys, events)
        partial.replace(path)
    finally:
        for leftover in partial.parent.glob(partial.name + "*"):
            leftover.unlink(missing_ok=True)
    return path, time.perf_counter() - began


def fresh_copy(source: Path, dest: Path) -> Path:
    """A private copy of a cached database with its own registry id."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    os.chmod(dest, 0o600)
    conn = sqlite3.connect(dest, isolation_level=None)
    try:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'registry_id'", (secrets.token_hex(8),))
    finally:
        conn.close()
    return dest
