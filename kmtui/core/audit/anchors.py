"""What pins the audit chain down: HSM-signed checkpoints and the head mirrored on the token.

The hash chain shows an edited row, but not a trail cut short or a whole database rolled back to
an older copy: those leave a shorter, self-consistent chain. Two anchors catch them:
- checkpoints: (seq, head hash, time, token serial) signed every N events and at session ends by
  an EC P-256 key that never leaves the token; anyone with the public key verifies them offline;
- the head on the token: the latest (seq, hash) of this registry kept as a private data object,
  so a database older than the token's head is refused at start, before anything else runs.

Verification needs no token and no PIN (`verify_database`), but it needs a key it can trust: the
one printed at init (`--pubkey`) or the token's own. The key stored in the database travels with
the data, so without either only the chain is checked, and the report says so. With a trusted
key, every session end (token.logout) must have a signed checkpoint of its own, so deleted
checkpoints, or a session that ended without signing, fail the check. The token head is checked
when the token is at hand.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kmtui.core import errors
from kmtui.core.audit.log import AuditLog, canonical_json
from kmtui.core.audit.seals import Seals, may_stand_unsealed
from kmtui.core.models import iso, utcnow
from kmtui.core.registry.db import Store
from kmtui.core.registry.seals import subject
from kmtui.core.safetext import clean
from kmtui.core.token.session import Hsm

CHECKPOINT_TYPE = "kmtui.audit.checkpoint.v1"
DEFAULT_EVERY = 100
_NAMED = 5  # events named in one refusal
TAMPERED_HINT = (
    "Nothing else will run on this database. Restore the latest backup made by kmtui, or keep "
    "the files for investigation and call the security officer."
)


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
        self,
        store: Store,
        hsm: Hsm,
        audit: AuditLog,
        seals: Seals,
        *,
        every: int = DEFAULT_EVERY,
    ) -> None:
        self._store, self._hsm, self._audit, self.every = store, hsm, audit, every
        self._seals = seals
        self._checked = False  # the head is followed only once this database was checked
        self._vouched = 0  # the last event the token's head, or this process, vouched for

    # -- the signing key ----------------------------------------------------------------------

    def public_key(self) -> tuple[str, str]:
        """(PEM, fingerprint) of the audit key, created on the token at first use and recorded
        (sealed) in the registry the first time this registry sees it; the keys recorded here
        are offered in case the token's public half was removed or replaced."""
        known = [str(r["pem"]) for r in self._store.rows("SELECT pem FROM audit_keys")]
        pem = self._hsm.signer.ensure_audit_key(known)
        fingerprint = fingerprint_of(pem)
        if fingerprint not in {fingerprint_of(p) for p in known}:
            serial = self._hsm.serial

            def record() -> None:
                self._store.conn.execute(
                    "INSERT INTO audit_keys (fingerprint, pem, token_serial, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (fingerprint, pem, serial, iso(utcnow())),
                )

            self._seals.write(
                record,
                "audit.key-recorded",
                subject("audit-key", fingerprint),
                actor="kmtui",
                params={"fingerprint": fingerprint, "token_serial": serial},
            )
        return pem, fingerprint

    # -- checkpoints --------------------------------------------------------------------------

    def _head(self) -> tuple[int, str]:
        rows = self._store.rows("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        return (int(rows[0]["seq"]), str(rows[0]["hash"])) if rows else (0, "")

    def latest(self) -> Checkpoint | None:
        rows = self._store.rows("SELECT * FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
        return _checkpoint(rows[0]) if rows else None

    def checkpoint(self, reason: str, *, at: int = 0) -> Checkpoint | None:
        """Sign event `at` (the current head by default) on the token; nothing on an empty trail.

        A session end signs its own token.logout event, so two sessions ending at once each
        get the checkpoint `verify_database` looks for, whatever else was appended in between.
        """
        _, fingerprint = self.public_key()  # first: recording a new key is itself an event
        seq, head_hash = self._event(at) if at else self._head()
        if not seq:
            return None
        self._vouch(seq)
        existing = self._at(seq)
        if existing is not None:
            return existing
        unsigned = Checkpoint(
            seq, head_hash, iso(utcnow()), self._hsm.serial, fingerprint, reason, ""
        )
        signed = replace(unsigned, signature=self._hsm.signer.sign_audit(unsigned.message()).hex())
        with self._store.transaction() as conn:
            conn.execute(  # another process may have signed this event meanwhile: keep theirs
                "INSERT OR IGNORE INTO audit_checkpoints (seq, head_hash, ts, token_serial, "
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
        return self._at(seq)

    def _event(self, seq: int) -> tuple[int, str]:
        rows = self._store.rows("SELECT seq, hash FROM audit_events WHERE seq = ?", (seq,))
        return (int(rows[0]["seq"]), str(rows[0]["hash"])) if rows else (0, "")

    def _at(self, seq: int) -> Checkpoint | None:
        rows = self._store.rows("SELECT * FROM audit_checkpoints WHERE seq = ?", (seq,))
        return _checkpoint(rows[0]) if rows else None

    # -- the head on the token ----------------------------------------------------------------

    def registry_id(self) -> str:
        return self._store.seals.registry_id(self._store.conn)

    def sync(self) -> None:
        """Mirror the committed head on the token; sign a checkpoint every `every` events.

        The first sync of a session checks this database against the token's head, so a rolled
        back database can never overwrite the evidence of its rollback.
        """
        if not self._checked and (problem := self.check_head()):
            raise errors.AuditTampered(
                f"AUDIT TRAIL ROLLED BACK OR CUT SHORT: {problem}.", TAMPERED_HINT
            )
        seq, head_hash = self._head()
        if not seq:
            return
        self._vouch(seq)
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
        problem, seq = "", 0
        if raw is None and self._store.rows(
            "SELECT 1 FROM audit_events WHERE action = 'token.login' AND outcome = 'success' "
            "LIMIT 1"
        ):
            problem = (
                "this database's trail records log-ins, but the token holds no head for its "
                "registry id: the id was changed, or the database belongs to another token"
            )
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
        if raw is None and not problem:
            # The token's first log-in for this registry (no head, no log-in in the trail): what
            # the trail holds now is adopted as it is; seals prove what comes after.
            seq = self._head()[0]
        self._checked = not problem
        self._vouched = 0 if problem else seq
        return problem

    def forged(self, upto: int = 0) -> str:
        """'' when every event past the token's head (up to `upto`, the last by default) was
        written by kmtui while logged in (its seal verifies on the token) or is one kmtui writes
        with no session; otherwise which events are not: someone wrote them into the file."""
        upto = upto or self._head()[0]
        rows = self._store.seals.events_after(self._store.conn, self._vouched, upto)
        suspects = [r for r in rows if not may_stand_unsealed(r["action"], r["outcome"])]
        bad = self._seals.unsealed(suspects) if suspects else []
        if not bad:
            return ""
        named = ", ".join(f"{clean(str(r['action']), 40)} at {r['seq']}" for r in bad[:_NAMED])
        more = f" and {len(bad) - _NAMED} more" if len(bad) > _NAMED else ""
        return (
            f"{len(bad)} event(s) after the token's head claim work only a logged-in kmtui does "
            f"but carry no seal from the token ({named}{more}): they were written into the "
            "file, not by kmtui"
        )

    def _vouch(self, upto: int) -> None:
        """Move what the head may cover up to `upto`, or refuse: the head and checkpoints never
        cover an event kmtui did not write."""
        if upto <= self._vouched:
            return
        if problem := self.forged(upto):
            raise errors.AuditTampered(f"AUDIT TRAIL FORGED: {problem}.", TAMPERED_HINT)
        self._vouched = upto


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
