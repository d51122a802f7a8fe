"""Audit events for SIEMs: JSON lines, ArcSight CEF and RFC 5424 syslog, each carrying its hashes.

Every format keeps seq, hash and prev_hash, so the copy a SIEM holds stays verifiable against the
chain. Formatting is pure; reading is streamed from the store.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TextIO

from kmtui import __version__
from kmtui.core import errors
from kmtui.core.audit.log import EVENT_COLUMNS, EVENT_NAMES, canonical_json
from kmtui.core.models import iso, parse_iso
from kmtui.core.registry.db import Store

FORMATS = ("jsonl", "cef", "syslog")
ENTERPRISE = 32473  # RFC 5612 example enterprise number, for the structured-data id
_FACILITY_AUTHPRIV = 10


def events_since(store: Store, since: int = 0, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Events after seq `since`, oldest first, one batch in memory at a time."""
    for rows in store.stream(
        f"SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq > ? ORDER BY seq",  # noqa: S608
        (since,),
        batch=batch,
    ):
        for row in rows:
            event = dict(zip(EVENT_NAMES, row, strict=True))
            try:
                event["params"] = json.loads(event["params"])
            except (TypeError, ValueError):
                event["params"] = {"unreadable_params": str(event["params"])}
            yield event


def resolve_since(store: Store, since: str) -> int:
    """`--since` as a sequence number, or as a UTC time (ISO 8601) turned into one."""
    text = since.strip()
    if not text:
        return 0
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise errors.UsageError(
            f"--since {text!r} is neither a sequence number nor a time.",
            "Use e.g. 1200 or 2026-11-01T00:00:00Z.",
        ) from None
    if moment.tzinfo is None:
        raise errors.UsageError("--since needs a time zone.", "Add Z for UTC.")
    rows = store.rows("SELECT min(seq) AS seq FROM audit_events WHERE ts >= ?", (iso(moment),))
    first = rows[0]["seq"]
    if first is None:
        last = store.rows("SELECT max(seq) AS seq FROM audit_events")[0]["seq"]
        return int(last or 0)
    return int(first) - 1


def severity(event: dict[str, Any]) -> int:
    """CEF severity (0-10): refusals and failures stand out, tampering is the loudest."""
    if event["action"] == "audit.head-mismatch":
        return 10
    return {"refused": 7, "failure": 6, "success": 3, "intent": 2}.get(str(event["outcome"]), 3)


def _cef_header(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _cef_value(value: object) -> str:
    return (
        str(value)
        .replace("\\", "\\\\")
        .replace("=", "\\=")
        .replace("\r", "\\r")
        .replace("\n", "\\n")
    )


def to_cef(event: dict[str, Any]) -> str:
    ts = parse_iso(str(event["ts"]))
    extension = {
        "rt": str(int(ts.timestamp() * 1000)),
        "suser": event["actor"],
        "act": event["action"],
        "outcome": event["outcome"],
        "cs1Label": "keyId",
        "cs1": event["key_id"],
        "cs2Label": "hash",
        "cs2": event["hash"],
        "cs3Label": "prevHash",
        "cs3": event["prev_hash"],
        "cs4Label": "params",
        "cs4": canonical_json(event["params"]),
        "cn1Label": "seq",
        "cn1": str(event["seq"]),
    }
    header = "|".join(
        _cef_header(x)
        for x in (
            "CEF:0",
            "kmtui",
            "kmtui",
            __version__,
            event["action"],
            f"{event['action']} {event['outcome']}",
            severity(event),
        )
    )
    return header + "|" + " ".join(f"{k}={_cef_value(v)}" for k, v in extension.items())


def _sd_value(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def to_syslog(event: dict[str, Any], hostname: str | None = None, body: str | None = None) -> str:
    """RFC 5424: authpriv facility, structured data with the chain fields, and as message the
    params (or `body`: a CEF or JSON rendering forwarded inside the same envelope)."""
    level = 4 if severity(event) >= 6 else 6  # warning or informational
    pri = _FACILITY_AUTHPRIV * 8 + level
    host = (hostname or socket.gethostname() or "-")[:255].replace(" ", "_")
    params = {
        "seq": event["seq"],
        "hash": event["hash"],
        "prev": event["prev_hash"],
        "action": event["action"],
        "outcome": event["outcome"],
        "actor": event["actor"],
        "key": event["key_id"],
    }
    sd = (
        f"[kmtui@{ENTERPRISE} " + " ".join(f'{k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    )
    return (
        f"<{pri}>1 {event['ts']} {host} kmtui - {_msgid(event)} {sd} "
        f"{canonical_json(event['params']) if body is None else body}"
    )


def _msgid(event: dict[str, Any]) -> str:
    return "".join(c for c in str(event["action"]) if 33 <= ord(c) <= 126)[:32] or "-"


def to_jsonl(event: dict[str, Any]) -> str:
    return canonical_json(event)


FORMATTERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "jsonl": to_jsonl,
    "cef": to_cef,
    "syslog": to_syslog,
}


def write(store: Store, out: TextIO, fmt: str = "jsonl", since: int = 0) -> int:
    """Every event after `since`, one line each in `fmt`; returns how many were written."""
    formatter = FORMATTERS[fmt]
    written = 0
    for event in events_since(store, since):
        out.write(formatter(event) + "\n")
        written += 1
    return written
