"""`kmtui audit verify|export|checkpoint|pubkey` — the auditor's commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kmtui import demo
from kmtui.commands import common
from kmtui.core import anchors, errors, export
from kmtui.core.safetext import clean
from kmtui.core.store import Store

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
        help="the audit public key printed at init (else the one in the database)",
    )
    p.add_argument("--no-token", action="store_true", help="do not read the head on the token")
    p = asub.add_parser("export", parents=[common_args], help="events, one per line, on stdout")
    p.add_argument("--format", choices=export.FORMATS, default="jsonl")
    p.add_argument("--since", default="", metavar="SEQ|TIME", help="events after SEQ or TIME")
    asub.add_parser(
        "checkpoint",
        parents=[common_args, as_json],
        help="sign a checkpoint of the current head on the token now",
    )
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
            formatter = export.FORMATTERS[args.format]
            for event in export.events_since(store, export.resolve_since(store, args.since)):
                sys.stdout.write(formatter(event) + "\n")
        finally:
            store.close()
        return EXIT_OK
    with common.workstation(args, login=True) as ws:
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
    return Store.open(path)


def _verify(args: argparse.Namespace) -> int:
    pem = None
    if args.pubkey:
        try:
            pem = args.pubkey.read_text(encoding="ascii")
            anchors.fingerprint_of(pem)
        except (OSError, ValueError, UnicodeDecodeError):
            raise errors.UsageError(f"{args.pubkey} is not a PEM public key.") from None
    progress = _progress if sys.stderr.isatty() and not args.json else None
    if args.db:  # an offline copy: never touches this machine's token
        report = anchors.verify_database(args.db, pubkey_pem=pem, progress=progress)
        path = args.db
    else:
        p = common.home(args)
        path = p.database
        if not path.exists():
            raise errors.UsageError(f"No database at {path}.", "Check --home / KMTUI_HOME.")
        if args.no_token or not (args.pin_file or demo.is_demo(p)):
            report = anchors.verify_database(path, pubkey_pem=pem, progress=progress, copy=False)
        else:
            # Read the token's head and verify inside one session, so the session's own
            # log-out event (written after) is not mistaken for an unanchored one.
            with common.workstation(args, login=True) as ws:
                raw = ws.hsm.read_head(ws.anchors.registry_id())
                head = None if raw is None else _parse_head(raw)
                report = anchors.verify_database(
                    path, pubkey_pem=pem, token_head=head, progress=progress, copy=False
                )
    if progress:
        print(file=sys.stderr)
    if args.json:
        common.print_json({**report.as_dict(), "database": str(path)})
    elif report.ok:
        print(f"audit trail OK: {clean(report.reason)}")
        print(
            f"head event {report.head_seq} {report.head_hash[:16]}; token head: "
            f"{report.token_head}; key {report.key_fingerprint[:23] or 'none'} "
            f"({report.key_source or 'no checkpoints'})"
        )
    else:
        print(
            f"AUDIT TRAIL BROKEN at event {report.first_bad_seq}: {clean(report.reason)}",
            file=sys.stderr,
        )
    return EXIT_OK if report.ok else EXIT_AUDIT


def _parse_head(raw: bytes) -> tuple[int, str]:
    head = json.loads(raw)
    return int(head["seq"]), str(head["hash"])


def _progress(count: int) -> None:
    print(f"\rverified {count:,} events", end="", file=sys.stderr, flush=True)
