"""`kmtui audit verify|export|forward|checkpoint|pubkey` — the auditor's commands."""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmtui import demo
from kmtui.commands import common
from kmtui.core import errors
from kmtui.core.audit import anchors, export, forward, seals, transcript, verify
from kmtui.core.models import iso, utcnow
from kmtui.core.registry.db import Store
from kmtui.core.safetext import clean

EXIT_OK, EXIT_AUDIT = 0, 3


def add_parsers(
    sub: Any, common_args: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    audit = sub.add_parser("audit", parents=[common_args], help="verify and export the trail")
    asub = audit.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = asub.add_parser(
        "verify",
        parents=[common_args, as_json],
        help="chain, signed checkpoints and the token head; exit 3 if broken",
    )
    p.add_argument(
        "--db",
        metavar="PATH",
        type=Path,
        help="verify this copy of kmtui.db offline (no token, no PIN)",
    )
    p.add_argument(
        "--pubkey",
        metavar="PEM",
        type=Path,
        help="the audit public key printed at init; without it (and without the token) only "
        "the chain is checked",
    )
    p.add_argument("--no-token", action="store_true", help="do not read the head on the token")
    p = asub.add_parser("export", parents=[common_args], help="events, one per line, on stdout")
    p.add_argument("--format", choices=export.FORMATS, default="jsonl")
    p.add_argument("--since", default="", metavar="SEQ|TIME", help="events after SEQ or TIME")
    p = asub.add_parser(
        "forward",
        parents=[common_args, as_json],
        help="send new events to a syslog collector (RFC 5424 over TCP or TLS)",
        description="Send the events the collector has not confirmed yet, oldest first, as "
        "RFC 5424 messages with octet-counting framing (RFC 6587), over TLS with --tls (RFC "
        "5425). A per-collector cursor in the database makes delivery at-least-once: after an "
        "outage the unconfirmed batch is sent again, and duplicates carry the same seq.",
    )
    p.add_argument(
        "--to",
        required=True,
        metavar="HOST:PORT",
        help="the collector, e.g. siem.example.org:6514 or [2001:db8::1]:601",
    )
    p.add_argument("--tls", action="store_true", help="TLS, verifying the collector's certificate")
    p.add_argument(
        "--ca",
        metavar="FILE",
        type=Path,
        help="trust only the CA certificate(s) in this PEM file (implies --tls)",
    )
    p.add_argument(
        "--format",
        choices=export.FORMATS,
        default="syslog",
        help="the message body; seq and hashes are in the structured data either way",
    )
    p.add_argument("--follow", action="store_true", help="keep forwarding new events until Ctrl-C")
    p.add_argument(
        "--interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="with --follow: how often to look for new events (default 5)",
    )
    asub.add_parser(
        "checkpoint",
        parents=[common_args, as_json],
        help="sign a checkpoint of the current head on the token now",
    )
    p = asub.add_parser(
        "transcript",
        parents=[common_args],
        help="the ceremony transcript (what was done, by whom) closed by a signed checkpoint",
    )
    p.add_argument(
        "--since",
        default="",
        metavar="SEQ|TIME",
        help="events after SEQ or TIME (default: since the start of today, UTC)",
    )
    p.add_argument("--format", choices=["text", "html"], default="text")
    p.add_argument("--out", type=Path, metavar="FILE", help="write it here (else stdout)")
    asub.add_parser(
        "pubkey",
        parents=[common_args, as_json],
        help="the audit signing public key (PEM and fingerprint)",
    )


def cmd_audit(args: argparse.Namespace) -> int:
    if args.action == "verify":
        return _verify(args)
    if args.action == "export":
        p = common.home(args)
        store = _open_existing(p.database)
        try:
            since = export.resolve_since(store, args.since)
            export.write(store, sys.stdout, args.format, since)
        finally:
            store.close()
        return EXIT_OK
    if args.action == "forward":
        return _forward(args)
    with common.workstation(args, login=True) as ws:
        if args.action == "transcript":
            since = export.resolve_since(ws.store, args.since or iso(utcnow())[:10] + "T00:00:00Z")
            document = transcript.build(ws.audit, ws.anchors, ws.hsm.name, since)
            text = document.to_html() if args.format == "html" else document.to_text()
            if args.out:
                args.out.write_text(text, encoding="utf-8")
                print(
                    f"transcript of events {document.first_seq}-{document.last_seq} written "
                    f"to {args.out}"
                )
            else:
                sys.stdout.write(text)
            return EXIT_OK
        if args.action == "pubkey":
            pem, fingerprint = ws.anchors.public_key()
            if args.json:
                common.print_json({"pem": pem, "fingerprint": fingerprint})
            else:
                print(pem, end="")
                print(f"fingerprint: {fingerprint}")
            return EXIT_OK
        checkpoint = ws.anchors.checkpoint("on demand")
        if checkpoint is None:
            raise errors.UsageError("The audit trail is empty: nothing to sign.")
        data = dict(checkpoint.__dict__)
        if args.json:
            common.print_json(data)
        else:
            print(f"checkpoint at event {checkpoint.seq}: head {checkpoint.head_hash}")
            print(f"signed {checkpoint.ts} by {checkpoint.key_fingerprint}")
            print(f"signature {checkpoint.signature}")
        return EXIT_OK


def _open_existing(path: Path) -> Store:
    if not path.exists():
        raise errors.UsageError(f"No database at {path}.", "Check --home / KMTUI_HOME.")
    # Export and forward read events by seq, never through an index: quick_check (every page,
    # b-tree and record) guards them; `audit verify` runs the full integrity_check.
    return Store.open(path, integrity="quick")


_ENDPOINT = re.compile(
    r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<p6>\d{1,5})|(?P<host>[^\s:\[\]]+):(?P<port>\d{1,5})"
)


def _endpoint(text: str) -> tuple[str, int]:
    match = _ENDPOINT.fullmatch(text.strip())
    port = int(match["p6"] or match["port"]) if match else 0
    if match is None or not 0 < port < 65536:
        raise errors.UsageError(
            f"--to {clean(text)!r} is not HOST:PORT.",
            "E.g. siem.example.org:6514, 10.0.0.5:601 or [2001:db8::1]:6514.",
        )
    return match["v6"] or match["host"], port


def _forward(args: argparse.Namespace) -> int:
    host, port = _endpoint(args.to)
    if args.follow and not args.interval > 0:
        raise errors.UsageError("--interval must be a positive number of seconds.")
    tls = forward.tls_context(args.ca) if args.tls or args.ca else None
    store = _open_existing(common.home(args).database)
    try:
        forwarder = forward.Forwarder(store, host, port, tls=tls, fmt=args.format)

        def report(count: int, cursor: int) -> None:
            if args.json:
                data = {"to": forwarder.where, "forwarded": count, "cursor": cursor}
                print(json.dumps(data, sort_keys=True), flush=True)
            else:
                print(
                    f"forwarded {count} events to {forwarder.where}; cursor at event {cursor}",
                    flush=True,
                )

        if not args.follow:
            report(forwarder.send_pending(), forwarder.cursor())
            return EXIT_OK

        def retrying(exc: errors.ForwardError, delay: float) -> None:
            print(f"kmtui: {clean(exc.message)}", file=sys.stderr)
            print(f"  retrying in {delay:g} s (Ctrl-C to stop)", file=sys.stderr, flush=True)

        if not args.json:
            print(
                f"following the audit trail to {forwarder.where} from event "
                f"{forwarder.cursor()}; Ctrl-C to stop",
                flush=True,
            )
        # Runs until Ctrl-C: main() turns the KeyboardInterrupt into exit code 130.
        forwarder.follow(args.interval, threading.Event(), on_forwarded=report, on_error=retrying)
        return EXIT_OK
    finally:
        store.close()


def _verify(args: argparse.Namespace) -> int:
    pem = None
    if args.pubkey:
        try:
            pem = args.pubkey.read_text(encoding="ascii")
            anchors.fingerprint_of(pem)
        except (OSError, ValueError, UnicodeDecodeError):
            raise errors.UsageError(f"{args.pubkey} is not a PEM public key.") from None
    progress = _progress if sys.stderr.isatty() and not args.json else None
    # The trail, and the whole file with SQLite's full integrity_check (the TUI opens with
    # quick_check and runs the full one in the background; this is the auditor's own run).
    registry: Registry
    if args.db:  # an offline copy: never touches this machine's token
        report = verify.verify_database(args.db, pubkey_pem=pem, progress=progress, integrity=True)
        path = args.db
        registry = _registry_offline(path, copy=True)
    else:
        p = common.home(args)
        path = p.database
        if not path.exists():
            raise errors.UsageError(f"No database at {path}.", "Check --home / KMTUI_HOME.")
        if args.no_token or not (args.pin_halves_from or demo.is_demo(p)):
            report = verify.verify_database(
                path, pubkey_pem=pem, progress=progress, copy=False, integrity=True
            )
            registry = _registry_offline(path, copy=False)
        else:
            # With the token at hand its own audit key is the trusted one (a --pubkey given too
            # must be the same key), and the database's record of it is compared with it.
            # Read the token's head and verify inside one session, so the session's own
            # log-out event (written after) is not mistaken for one past the head.
            # quick_check at open: verify_database runs the full integrity_check just after.
            with common.workstation(args, login=True, integrity="quick") as ws:
                raw = ws.hsm.signer.read_head(ws.anchors.registry_id())
                head = None if raw is None else _parse_head(raw)
                report = verify.verify_database(
                    path,
                    pubkey_pem=pem,
                    token_pubkey_pem=ws.hsm.signer.ensure_audit_key(),
                    token_head=head,
                    progress=progress,
                    copy=False,
                    integrity=True,
                )
                problems = ws.seals.check_all()
                registry = Registry("token", ws.seals.rows, problems)
    if progress:
        print(file=sys.stderr)
    ok = report.ok and not registry.problems
    if args.json:
        common.print_json(
            {**report.as_dict(), "ok": ok, "database": str(path), "registry": registry.as_dict()}
        )
        return EXIT_OK if ok else EXIT_AUDIT
    for problem in registry.problems:
        print(f"REGISTRY CHANGED OUTSIDE KMTUI: {problem}", file=sys.stderr)
    if report.ok:
        print(f"audit trail OK ({report.scope}): {clean(report.reason)}")
        print(
            f"head event {report.head_seq} {report.head_hash[:16]}; token head: "
            f"{report.token_head}; key {report.key_fingerprint[:23] or 'none'} "
            f"({report.key_source or 'not checked'}); database file integrity: "
            f"{clean(report.integrity)}"
        )
        print(registry.summary())
        if report.scope == verify.CHAIN_ONLY:
            print(
                "NOT CHECKED: signed checkpoints and session ends. Give the audit public key "
                "printed at init (--pubkey audit.pem) to prove the trail was not rewritten.",
                file=sys.stderr,
            )
    elif report.first_bad_seq is None and report.integrity not in ("ok", "not checked"):
        print(f"DATABASE DAMAGED: {clean(report.reason)}", file=sys.stderr)
    elif report.first_bad_seq is None:  # the trail holds; what vouches for it does not
        print(f"AUDIT VERIFICATION FAILED: {clean(report.reason)}", file=sys.stderr)
    else:
        print(
            f"AUDIT TRAIL BROKEN at event {report.first_bad_seq}: {clean(report.reason)}",
            file=sys.stderr,
        )
    return EXIT_OK if ok else EXIT_AUDIT


@dataclass
class Registry:
    """What `audit verify` found of the registry's sealed rows."""

    checked: str  # "token" (every seal's HMAC) or "trail" (bound to the trail, not the HMACs)
    rows: int
    problems: list[seals.Problem]

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "rows": self.rows,
            "problems": [{"subject": p.subject, "what": p.what} for p in self.problems],
        }

    def summary(self) -> str:
        if self.problems:
            return f"registry: {len(self.problems)} of {self.rows} sealed rows changed"
        if self.checked == "token":
            return f"registry: {self.rows} rows, every seal checked on the token"
        return (
            f"registry: {self.rows} rows bound to the trail (without the token their contents "
            "are not checked: log in, or run verify where the token is)"
        )


def _registry_offline(path: Path, *, copy: bool) -> Registry:
    conn = verify.connect_readonly(path, copy=copy)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'seals'").fetchone():
            return Registry("trail", 0, [])
        return Registry("trail", *seals.unbound(conn))
    except sqlite3.DatabaseError:
        return Registry("trail", 0, [])
    finally:
        conn.close()


def _parse_head(raw: bytes) -> tuple[int, str]:
    head = json.loads(raw)
    return int(head["seq"]), str(head["hash"])


def _progress(count: int) -> None:
    print(f"\rverified {count:,} events", end="", file=sys.stderr, flush=True)
