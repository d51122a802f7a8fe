"""The registry bound to the signed trail: every row that decides who may do what is sealed.

A seal is an HMAC-SHA256, made by a key that never leaves the token, over the row's content, the
registry id and the sequence number of the audit event that changed the row (that event names the
row as its `subject`). A row is believed only when
- its seal verifies on the token (an edit made outside kmtui cannot be sealed without logging in,
  which needs two PIN halves), and
- its seal is bound to the newest event of the trail that changed it (an older, once-valid copy
  of the row, put back from a backup, carries an older seal; the trail itself is pinned by its
  signed checkpoints and the head on the token).
Every write of a sealed row happens in one transaction with the event that names it and its new
seal, so a crash can never leave a row and its seal apart.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kmtui.core import errors
from kmtui.core.audit.log import AuditLog, canonical_json
from kmtui.core.control import policy
from kmtui.core.models import AuditEvent, Outcome, Policy
from kmtui.core.registry.db import Store
from kmtui.core.registry.seals import REGISTRY, SealRecords, subject
from kmtui.core.safetext import clean
from kmtui.core.token.session import Hsm

SEAL_TYPE = "kmtui.registry.seal.v1"
EVENT_TYPE = "kmtui.event.seal.v1"
_SHOWN = 5  # problems named in one refusal


@dataclass(frozen=True)
class Problem:
    """One sealed row that is not as kmtui last wrote it."""

    subject: str
    what: str

    def __str__(self) -> str:
        return f"{clean(self.subject, 80)}: {self.what}"


def refusal(problems: Sequence[Problem]) -> errors.RegistryChanged:
    named = "; ".join(str(p) for p in problems[:_SHOWN])
    more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
    return errors.RegistryChanged(
        f"REGISTRY CHANGED OUTSIDE KMTUI: {named}{more}.",
        "Nothing was done. Restore the latest backup made by kmtui, or keep the files for "
        "investigation and call the security officer; `kmtui audit verify` lists every row.",
        tuple(p.subject for p in problems),
    )


class Seals:
    """Seals rows as kmtui writes them and checks them before they are used."""

    def __init__(self, store: Store, hsm: Hsm, audit: AuditLog) -> None:
        self._store = store
        self._records = store.seals
        self._hsm = hsm
        self._audit = audit
        self.changed: list[Problem] = []
        """What the last check found changed outside kmtui (the status line shows it)."""
        self.rows = 0
        """How many rows the last full check covered."""
        audit.sealer = self.seal_event

    # -- writing ----------------------------------------------------------------------------

    def seal(self, conn: sqlite3.Connection, names: Iterable[str], seq: int) -> None:
        """Seal rows as they are now in `conn`'s transaction, bound to event `seq`."""
        wanted = sorted(set(names))
        if not wanted:
            return
        registry = self._records.registry_id(conn)
        contents = {n: self._records.content(conn, n) for n in wanted}
        self._seal_contents(conn, registry, contents, seq)

    def _seal_contents(
        self, conn: sqlite3.Connection, registry: str, contents: dict[str, Any], seq: int
    ) -> None:
        names = sorted(contents)
        messages = [message(registry, n, seq, contents[n]) for n in names]
        macs = self._hsm.sealing.macs(messages)
        self._records.put_many(
            conn, [(n, seq, mac.hex()) for n, mac in zip(names, macs, strict=True)]
        )

    # -- events -----------------------------------------------------------------------------

    def seal_event(self, conn: sqlite3.Connection, seq: int, event_hash: str) -> None:
        """The audit log's sealer: the token's HMAC over an event kmtui just wrote, in its
        transaction, whenever the token is logged in. With no session (a failed log-in, a
        refusal before anyone logs in), or a token that stopped answering, the event stays
        unsealed: `may_stand_unsealed` says which events may."""
        if not self._hsm.logged_in:
            return
        message = _event_message(self._records.registry_id(conn), seq, event_hash)
        try:
            mac = self._hsm.sealing.macs([message])[0]
        except errors.HsmError:
            return
        self._records.put_event(conn, seq, mac.hex())

    def unsealed(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events among `rows` (seq, hash, mac) whose seal is missing or does not verify
        on the token: events kmtui did not write while logged in."""
        registry = self._records.registry_id(self._store.conn)
        tagged, bad = [], []
        for row in rows:
            try:
                tag = bytes.fromhex(str(row["mac"]))
            except ValueError:
                tag = b""
            if tag:
                tagged.append((row, tag))
            else:
                bad.append(row)
        pairs = [(_event_message(registry, int(r["seq"]), str(r["hash"])), t) for r, t in tagged]
        verdicts = self._hsm.sealing.macs_ok(pairs) if pairs else []
        bad.extend(row for (row, _), ok in zip(tagged, verdicts, strict=True) if not ok)
        return sorted(bad, key=lambda r: int(r["seq"]))

    def event_sealed(self, seq: int) -> bool:
        """Whether kmtui wrote event `seq` while logged in (its seal verifies on the token)."""
        rows = self._records.events_after(self._store.conn, seq - 1, seq)
        return bool(rows) and not self.unsealed(rows)

    def write(
        self,
        apply: Callable[[], None],
        action: str,
        name: str,
        *,
        actor: str,
        outcome: Outcome = Outcome.SUCCESS,
        key_id: str = "",
        params: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Registry writes of one sealed row, the event that names it and its new seal, in one
        transaction."""
        with self._store.transaction() as conn:
            apply()
            event = self._audit.append(
                action,
                actor=actor,
                outcome=outcome,
                key_id=key_id,
                params={**(params or {}), "subject": name},
            )
            self.seal(conn, [name], event.seq)
        return event

    def start(self, actor: str) -> int:
        """The first seal of a registry: everything it holds now, in one audited step.

        Runs once per registry (when the trail has never sealed it): a new registry, or one made
        before kmtui sealed rows. What is sealed then is believed as it is; the event says so.
        """
        with self._store.transaction() as conn:
            if self._records.last_change(conn, REGISTRY):
                return 0
            contents = self._records.every_content(conn)
            event = self._audit.append(
                "registry.sealed",
                actor=actor,
                outcome=Outcome.SUCCESS,
                params={"subject": REGISTRY, "rows": len(contents)},
            )
            self._seal_contents(conn, self._records.registry_id(conn), contents, event.seq)
        return len(contents)

    # -- checking -----------------------------------------------------------------------------

    def require(self, names: Iterable[str], *, actor: str = "console") -> None:
        """Refuse (RegistryChanged) if any of these rows is not as kmtui last wrote it."""
        wanted = sorted({n for n in names if n})
        if not wanted:
            return
        if not self._records.last_change(self._store.conn, REGISTRY):
            self.start(actor)
        self._adopt(wanted, actor)
        problems = self.problems(wanted)
        if problems:
            self.changed = problems
            raise refusal(problems)

    def problems(self, names: Sequence[str]) -> list[Problem]:
        """What is wrong with each named row (checked on the token in one PKCS#11 hop)."""
        conn = self._store.conn
        with _snapshot(conn):  # rows, seals and trail read together
            registry = self._records.registry_id(conn)
            started = self._records.last_change(conn, REGISTRY)
            contents = {n: self._records.content(conn, n) for n in names}
            judged = {
                n: _judge(
                    n,
                    self._records.seal_of(conn, n),
                    self._records.last_change(conn, n),
                    started,
                    contents[n],
                )
                for n in names
            }
        return self._verified(registry, judged, contents)

    def check_all(self) -> list[Problem]:
        """Every sealed row, every row present and every row the trail changed: read in one
        pass per table and checked on the token in one PKCS#11 hop."""
        conn = self._store.conn
        with _snapshot(conn):
            registry = self._records.registry_id(conn)
            contents = self._records.every_content(conn)
            judged = judge_all(conn, contents)
        self.rows = len(judged)
        self.changed = self._verified(registry, judged, contents)
        return self.changed

    def _verified(
        self,
        registry: str,
        judged: dict[str, Problem | tuple[int, bytes] | None],
        contents: dict[str, Any],
    ) -> list[Problem]:
        found = [j for j in judged.values() if isinstance(j, Problem)]
        pending = [(n, j) for n, j in judged.items() if isinstance(j, tuple)]
        pairs = [(message(registry, n, seq, contents.get(n)), tag) for n, (seq, tag) in pending]
        verdicts = self._hsm.sealing.macs_ok(pairs) if pairs else []
        found.extend(
            Problem(name, "edited outside kmtui (its seal does not match)")
            for (name, _), ok in zip(pending, verdicts, strict=True)
            if not ok
        )
        return sorted(found, key=lambda p: p.subject)

    def _adopt(self, names: Sequence[str], actor: str) -> None:
        """Seal shipped default policies added after the first seal (a newer kmtui ships one),
        exactly as shipped and only if the trail never changed a policy of that name."""
        shipped = {subject("policy", p.name): p for p in policy.DEFAULT_POLICIES}
        adoptable = []
        conn = self._store.conn
        for name in names:
            if name not in shipped or self._records.seal_of(conn, name) is not None:
                continue
            if self._records.last_change(conn, name):
                continue
            content = self._records.content(conn, name)
            if content is not None and _as_shipped(content, shipped[name]):
                adoptable.append(name)
        if not adoptable:
            return
        with self._store.transaction() as conn:
            event = self._audit.append(
                "registry.sealed",
                actor=actor,
                outcome=Outcome.SUCCESS,
                params={"subject": adoptable[0], "rows": 1, "shipped": True},
            )
            self.seal(conn, adoptable[:1], event.seq)
        if len(adoptable) > 1:
            self._adopt(adoptable[1:], actor)


def may_stand_unsealed(action: str, outcome: str) -> bool:
    """Events kmtui writes with no token session, the only ones the head may cover unsealed: a
    failure or refusal (a wrong PIN half, an operation refused before anyone logged in, a token
    that stopped answering) and the PIN set from halves at `kmtui init`."""
    return outcome in (Outcome.FAILURE, Outcome.REFUSED) or action == "token.set-pin"


def _event_message(registry: str, seq: int, event_hash: str) -> bytes:
    return canonical_json(
        {"type": EVENT_TYPE, "registry": registry, "seq": seq, "hash": event_hash}
    ).encode("utf-8")


def message(registry: str, name: str, seq: int, content: Any) -> bytes:
    """The bytes a seal's HMAC covers: the row, which row, which registry, which event."""
    return canonical_json(
        {"type": SEAL_TYPE, "registry": registry, "subject": name, "seq": seq, "row": content}
    ).encode("utf-8")


@contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction, unless the caller already holds one."""
    began = not conn.in_transaction
    if began:
        conn.execute("BEGIN")
    try:
        yield
    finally:
        if began:
            conn.execute("COMMIT")


def _judge(
    name: str, seal: tuple[int, str] | None, last: int, started: int, content: Any
) -> Problem | tuple[int, bytes] | None:
    """What the file alone says of one row: a problem, nothing to check (absent and never
    sealed), or the (seq, tag) its seal claims, left for the token to verify."""
    if seal is None:
        if last:
            return Problem(name, _missing(content, last))
        if content is not None:
            return Problem(name, "not sealed: kmtui never wrote it")
        return None
    if started and seal[0] == started:
        last = max(last, started)  # sealed as found when the registry was first sealed
    if seal[0] != last:
        return Problem(name, _stale(seal[0], last))
    try:
        return seal[0], bytes.fromhex(seal[1])
    except ValueError:
        return seal[0], b""


def judge_all(
    conn: sqlite3.Connection, contents: dict[str, Any]
) -> dict[str, Problem | tuple[int, bytes] | None]:
    records = SealRecords
    started = records.last_change(conn, REGISTRY)
    sealed = records.sealed(conn)
    changed = records.changed_in_trail(conn)
    return {
        n: _judge(n, sealed.get(n), changed.get(n, 0), started, contents.get(n))
        for n in sorted(set(contents) | set(sealed) | set(changed))
    }


def unbound(conn: sqlite3.Connection) -> tuple[int, list[Problem]]:
    """What a copy of the database shows without the token: how many rows it holds, and those
    whose seal is missing or not bound to the event that last changed them (an older copy of one
    row). An edit of a row's content shows only on the token, which checks each seal's HMAC."""
    contents = SealRecords.every_content(conn)
    if not SealRecords.last_change(conn, REGISTRY):
        return len(contents), []  # never sealed yet: the first log-in seals it as it is
    judged = judge_all(conn, contents)
    return len(judged), [j for j in judged.values() if isinstance(j, Problem)]


def _as_shipped(content: object, shipped: Policy) -> bool:
    if not isinstance(content, dict):
        return False
    try:
        rules = json.loads(str(content.get("rules")))
    except ValueError:
        return False
    return content.get("description") == shipped.description and rules == shipped.rules


def _missing(content: object, changed: int) -> str:
    if content is None:
        return f"deleted (the trail changed it at event {changed}; kmtui never deletes it)"
    return f"its seal was removed (the trail changed it at event {changed})"


def _stale(sealed: int, changed: int) -> str:
    if changed > sealed:
        return (
            f"an older copy (sealed at event {sealed}, but the trail changed it again at event "
            f"{changed})"
        )
    return f"its seal names event {sealed}, which did not change it"


__all__ = ["Problem", "Seals", "refusal", "subject"]
