"""What pins the audit chain down: HSM-signed checkpoints and the head mirrored on the token.

The hash chain shows an edited row, but not a trail cut short or a whole database rolled back to
an older copy: those leave a shorter, self-consistent chain. Two anchors catch them:
- checkpoints: (seq, head hash, time, token serial) signed every N events and at session ends by
  an EC P-256 key that never leaves the token; anyone with the public key verifies them offline;
- the head on the token: the latest (seq, hash) of this registry kept as a private data object,
  so a database older than the token's head is refused at start, before anything else runs.

Verification needs no token and no PIN (`verify_database`); the token head is checked when the
token is at hand.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kmtui.core import errors
from kmtui.core.audit.log import EVENT_COLUMNS, AuditLog, VerifyResult, canonical_json, verify_rows
from kmtui.core.models import iso, utcnow
from kmtui.core.registry.db import Store, integrity_problem
from kmtui.core.token.session import Hsm

CHECKPOINT_TYPE = "kmtui.audit.checkpoint.v1"
DEFAULT_EVERY = 100


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head_hash: str
    ts: str
    token_serial: str
    key_fingerprint: str
    reason: str
    signature: str  # hex DER ECDSA

    def message(self) -> bytes:
        """The exact bytes signed: canonical JSON with a type tag (the reason is not signed)."""
        return canonical_json(
            {
                "type": CHECKPOINT_TYPE,
                "seq": self.seq,
                "head_hash": self.head_hash,
                "ts": self.ts,
                "token_serial": self.token_serial,
                "key_fingerprint": self.key_fingerprint,
            }
        ).encode("utf-8")


def fingerprint_of(pem: str) -> str:
    der = serialization.load_pem_public_key(pem.encode("ascii")).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def signature_ok(checkpoint: Checkpoint, pem: str) -> bool:
    """Any failure to verify (bad PEM, bad DER, wrong key) is a failed check."""
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        key.verify(
            bytes.fromhex(checkpoint.signature), checkpoint.message(), ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


class Anchors:
    """Signs checkpoints and keeps the token head of one workstation's trail."""

    def __init__(
        self, store: Store, hsm: Hsm, audit: AuditLog, *, every: int = DEFAULT_EVERY
    ) -> None:
        self._store, self._hsm, self._audit, self.every = store, hsm, audit, every
        self._checked = False  # the head is followed only once this database was checked

    # -- the signing key ----------------------------------------------------------------------

    def public_key(self) -> tuple[str, str]:
        """(PEM, fingerprint) of the audit key, created on the token at first use; the keys
        recorded here are offered in case the token's public half was removed or replaced."""
        known = [str(r["pem"]) for r in self._store.rows("SELECT pem FROM audit_keys")]
        pem = self._hsm.signer.ensure_audit_key(known)
        fingerprint = fingerprint_of(pem)
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO audit_keys (fingerprint, pem, token_serial, created_at) "
                "VALUES (?, ?, ?, ?)",
                (fingerprint, pem, self._hsm.info().serial, iso(utcnow())),
            )
        return pem, fingerprint

    # -- checkpoints --------------------------------------------------------------------------

    def _head(self) -> tuple[int, str]:
        rows = self._store.rows("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        return (int(rows[0]["seq"]), str(rows[0]["hash"])) if rows else (0, "")

    def latest(self) -> Checkpoint | None:
        rows = self._store.rows("SELECT * FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
        return _checkpoint(rows[0]) if rows else None

    def checkpoint(self, reason: str) -> Checkpoint | None:
        """Sign the current head on the token (nothing to sign on an empty trail)."""
        seq, head_hash = self._head()
        if not seq:
            return None
        latest = self.latest()
        if latest is not None and latest.seq == seq:
            return latest
        _, fingerprint = self.public_key()
        unsigned = Checkpoint(
            seq, head_hash, iso(utcnow()), self._hsm.info().serial, fingerprint, reason, ""
        )
        signed = Checkpoint(
            **{
                **unsigned.__dict__,
                "signature": self._hsm.signer.sign_audit(unsigned.message()).hex(),
            }
        )
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT INTO audit_checkpoints (seq, head_hash, ts, token_serial, "
                "key_fingerprint, reason, signature) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    signed.seq,
                    signed.head_hash,
                    signed.ts,
                    signed.token_serial,
                    signed.key_fingerprint,
                    signed.reason,
                    signed.signature,
                ),
            )
        return signed

    # -- the head on the token ----------------------------------------------------------------

    def registry_id(self) -> str:
        return str(self._store.rows("SELECT value FROM meta WHERE key = 'registry_id'")[0]["value"])

    def sync(self) -> None:
        """Mirror the committed head on the token; sign a checkpoint every `every` events.

        The first sync of a session checks this database against the token's head, so a rolled
        back database can never overwrite the evidence of its rollback.
        """
        if not self._checked and (problem := self.check_head()):
            raise errors.AuditTampered(
                f"AUDIT TRAIL ROLLED BACK OR CUT SHORT: {problem}.",
                "Nothing else will run on this database. Restore the latest backup made by "
                "kmtui, or keep the files for investigation and call the security officer.",
            )
        seq, head_hash = self._head()
        if not seq:
            return
        registry = self.registry_id()
        self._hsm.signer.write_head(
            registry,
            canonical_json({"registry": registry, "seq": seq, "hash": head_hash}).encode(),
        )
        latest = self.latest()
        if seq - (latest.seq if latest else 0) >= self.every:
            self.checkpoint("interval")

    def check_head(self) -> str:
        """'' when the database holds the token's head; otherwise why it does not (rollback)."""
        raw = self._hsm.signer.read_head(self.registry_id())
        problem = ""
        if raw is not None:
            try:
                head = json.loads(raw)
                seq, head_hash = int(head["seq"]), str(head["hash"])
            except (ValueError, KeyError, TypeError):
                return "the audit head kept on the token is unreadable"
            problem = head_problem(
                self._store.rows("SELECT hash FROM audit_events WHERE seq = ?", (seq,)),
                seq,
                head_hash,
                self._head()[0],
            )
        self._checked = not problem
        return problem


def head_problem(rows: list[dict[str, Any]], seq: int, head_hash: str, db_head: int) -> str:
    if not rows:
        return (
            f"the token says the trail reached event {seq}, but this database ends at "
            f"event {db_head}: events were cut off or an older copy was restored"
        )
    if rows[0]["hash"] != head_hash:
        return (
            f"event {seq} in this database is not the event {seq} the token recorded: "
            "the database was replaced or rewritten"
        )
    return ""


def _checkpoint(row: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        int(row["seq"]),
        str(row["head_hash"]),
        str(row["ts"]),
        str(row["token_serial"]),
        str(row["key_fingerprint"]),
        str(row["reason"]),
        str(row["signature"]),
    )


# -- offline verification ---------------------------------------------------------------------


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
    key_source: str  # "given" (--pubkey), "database" (weaker: it travels with the data) or ""
    token_head: str  # "matched", "not checked", or the problem
    integrity: str = "not checked"  # SQLite's integrity_check of the whole file: "ok" or its line

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _connect_readonly(path: Path, *, copy: bool) -> sqlite3.Connection:
    """Never written: an auditor's copy opens immutable (no -wal/-shm created); the live
    database read-only, so committed events still in its WAL are seen."""
    if not path.is_file():
        raise errors.UsageError(f"No database at {path}.", "Give the path of a kmtui.db copy.")
    mode = "mode=ro&immutable=1" if copy else "mode=ro"
    return sqlite3.connect(f"file:{path}?{mode}", uri=True)


def verify_database(
    path: Path,
    *,
    pubkey_pem: str | None = None,
    token_head: tuple[int, str] | None = None,
    progress: Callable[[int], None] | None = None,
    copy: bool = True,
    integrity: bool = False,
) -> TrailReport:
    """Chain, checkpoint signatures and their agreement with the chain, and the token head.

    With `integrity`, also SQLite's full integrity_check of the file (every index against its
    table, which the quick check kmtui's TUI opens with leaves out); a failure fails the report.
    """
    conn = _connect_readonly(path, copy=copy)
    try:
        report = _verify(conn, pubkey_pem, token_head, progress)
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


def _verify(
    conn: sqlite3.Connection,
    pubkey_pem: str | None,
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
    source = "given" if pubkey_pem else ""
    if pubkey_pem is None and "audit_keys" in tables:
        row = conn.execute("SELECT pem FROM audit_keys ORDER BY created_at LIMIT 1").fetchone()
        pubkey_pem, source = (row[0], "database") if row else (None, "")
    fingerprint = fingerprint_of(pubkey_pem) if pubkey_pem else ""

    def report(
        result: VerifyResult, ok: bool, bad: int | None, reason: str, head: str = "not checked"
    ) -> TrailReport:
        return TrailReport(
            ok,
            result.count,
            bad,
            reason,
            result.head_seq,
            result.head_hash,
            len(checkpoints),
            checkpoints[-1].seq if checkpoints else 0,
            fingerprint,
            source,
            head,
        )

    empty = VerifyResult(True, 0, None, "", 0, "")
    for cp in checkpoints:
        if not pubkey_pem:
            return report(
                empty,
                False,
                cp.seq,
                "checkpoints exist but no public key to check "
                "them: pass --pubkey with the key printed at init",
            )
        if cp.key_fingerprint != fingerprint or not signature_ok(cp, pubkey_pem):
            return report(
                empty,
                False,
                cp.seq,
                f"the checkpoint at event {cp.seq} is not signed by the audit key "
                f"{fingerprint[:23]}: forged, or re-signed with another key",
            )
    anchors = {cp.seq: cp.head_hash for cp in checkpoints}
    if token_head is not None:
        anchors.setdefault(token_head[0], token_head[1])

    def batches() -> Iterator[list[Any]]:
        cursor = conn.execute(f"SELECT {EVENT_COLUMNS} FROM audit_events ORDER BY seq")  # noqa: S608
        while chunk := cursor.fetchmany(10_000):
            yield chunk

    result = verify_rows(batches(), progress=progress, anchors=anchors)
    if not result.ok:
        return report(result, False, result.first_bad_seq, result.reason)
    if checkpoints and checkpoints[-1].seq > result.head_seq:
        cut = checkpoints[-1].seq
        return report(
            result,
            False,
            result.head_seq + 1,
            f"a checkpoint was signed at event {cut}, but the trail ends at event "
            f"{result.head_seq}: events were cut off the end or an older copy restored",
        )
    head = "not checked"
    if token_head is not None:
        rows = [
            {"hash": r[0]}
            for r in conn.execute("SELECT hash FROM audit_events WHERE seq = ?", (token_head[0],))
        ]
        problem = head_problem(rows, token_head[0], token_head[1], result.head_seq)
        if problem:
            return report(result, False, min(token_head[0], result.head_seq + 1), problem, problem)
        head = "matched"
        late = conn.execute(
            "SELECT seq, action FROM audit_events WHERE seq > ? AND NOT (action IN "
            "('token.login', 'audit.head-mismatch') AND outcome = 'failure') ORDER BY seq LIMIT 1",
            (token_head[0],),
        ).fetchone()
        if late is not None:
            problem = (
                f"event {late[0]} ({late[1]}) was written after the last head the token "
                "recorded: forged, or written just before a crash (log in once to "
                "re-anchor, then verify again)"
            )
            return report(result, False, int(late[0]), problem, problem)
    return report(
        result,
        True,
        None,
        result.reason + (f"; {len(checkpoints)} signed checkpoints agree" if checkpoints else ""),
        head,
    )
