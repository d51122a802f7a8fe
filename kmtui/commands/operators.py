"""`kmtui operators ...`, `kmtui init` (the bootstrap ceremony) and `kmtui demo codes`."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path
from typing import Any

from kmtui import demo
from kmtui.commands import common
from kmtui.core import errors
from kmtui.core.control.operations import OpKind
from kmtui.core.control.pin import POSITIONS, PROTECTED_PATH, Half, PinHalves, check_half
from kmtui.core.control.totp import Enrollment
from kmtui.core.models import Role
from kmtui.core.safetext import clean
from kmtui.service import Workstation

EXIT_OK = 0
CHANGES = {
    "enroll": OpKind.OPERATOR_ENROLL,
    "reenroll": OpKind.OPERATOR_REENROLL,
    "lock": OpKind.OPERATOR_LOCK,
    "unlock": OpKind.OPERATOR_UNLOCK,
    "revoke": OpKind.OPERATOR_REVOKE,
}


def add_parsers(
    sub: Any, common_args: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    approvals = common.approvals_parser()
    ops = sub.add_parser("operators", parents=[common_args], help="the people who approve")
    osub = ops.add_subparsers(dest="action", metavar="ACTION", required=True)
    osub.add_parser("list", parents=[common_args, as_json], help="operators and their state")
    for name, kind in CHANGES.items():
        p = osub.add_parser(
            name,
            parents=[common_args, as_json, approvals],
            help=f"{kind} (two other operators approve)",
        )
        p.add_argument("name", metavar="NAME")
        if kind == OpKind.OPERATOR_ENROLL:
            p.add_argument("--role", required=True, choices=[r.value for r in Role])
    p = osub.add_parser(
        "confirm",
        parents=[common_args],
        help="a new operator proves their authenticator with one code",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--code-from", metavar="FILE", help="read the code from FILE (- = stdin)")
    p = sub.add_parser(
        "init",
        parents=[common_args],
        help="the bootstrap ceremony: the user PIN from two halves, the first two operators",
    )
    p.add_argument(
        "--pin-already-set",
        action="store_true",
        help="the user PIN already is the two halves (set with the token's own tool): log in",
    )


def cmd_operators(args: argparse.Namespace) -> int:
    if args.action == "list":
        with common.workstation(args) as ws:
            listing: list[dict[str, Any]] = [
                {
                    "operator": o.name,
                    "role": str(o.role),
                    "state": str(o.state),
                    "enrolled_at": o.enrolled_at,
                    "failures": o.failures,
                }
                for o in ws.operators.all()
            ]
            if args.json:
                common.print_json(listing)
            else:
                common.print_table(
                    ["NAME", "ROLE", "STATE", "ENROLLED", "FAILURES"],
                    [
                        [o["operator"], o["role"], o["state"], o["enrolled_at"], str(o["failures"])]
                        for o in listing
                    ],
                )
        return EXIT_OK
    planned = common.plan(CHANGES[args.action]) if args.action in CHANGES else None
    with common.workstation(args, login=True, planned=planned) as ws:
        if args.action == "confirm":
            ws.confirm_operator(args.name, _code(args))
            print(f"operator {args.name} is active")
            return EXIT_OK
        prepared = ws.prepare_operator(
            CHANGES[args.action], args.name, getattr(args, "role", "") or ""
        )
        result, enrollment = ws.run_operator(
            prepared, common.approvals(args, prepared), actor="cli"
        )
        if enrollment is not None:
            _show_enrollment(enrollment, as_json=args.json)
            if not args.json and sys.stdin.isatty():
                _confirm_now(ws, enrollment.name)
        elif args.json:
            common.print_json({"operator": args.name, **result.as_dict()})
        else:
            print(f"operator {args.name}: {result.facts['state']} (audit event {result.audit_seq})")
    return EXIT_OK


def _show_enrollment(enrollment: Enrollment, *, as_json: bool) -> None:
    if as_json:
        common.print_json(
            {
                "operator": enrollment.name,
                "role": str(enrollment.role),
                "state": "pending",
                "otpauth_uri": enrollment.otpauth_uri,
            }
        )
        return
    print(f"Operator {enrollment.name} ({enrollment.role}): scan this with an authenticator app.")
    print("It is shown once; nobody else should see this screen.")
    print(enrollment.qr_text)
    print(f"Or enter it by hand: {enrollment.otpauth_uri}")


def _confirm_now(ws: Workstation, name: str) -> None:
    for attempt in range(3):
        code = getpass.getpass(f"{name}: the 6-digit code your app shows now: ").strip()
        try:
            ws.confirm_operator(name, code)
        except errors.ApprovalRefused as exc:
            print(f"  {clean(exc)}", file=sys.stderr)
            if attempt == 2:
                raise
            continue
        print(f"operator {name} is active")
        return


def _code(args: argparse.Namespace) -> str:
    if args.code_from == "-":
        return sys.stdin.readline(64).strip()
    if args.code_from:
        try:
            return Path(args.code_from).read_text(encoding="utf-8")[:64].strip()
        except (OSError, UnicodeDecodeError):
            raise errors.UsageError(f"Cannot read a code from {clean(args.code_from)}.") from None
    if not sys.stdin.isatty():
        raise errors.UsageError("No code: stdin is not a terminal.", "Use --code-from FILE or -.")
    return getpass.getpass("The 6-digit code your app shows now: ").strip()


def cmd_init(args: argparse.Namespace) -> int:
    """The bootstrap ceremony: the user PIN from two custodians' halves, then the first two
    operators enrol without approvals, then never again."""
    if not sys.stdin.isatty():
        raise errors.UsageError("`kmtui init` is a ceremony at the console: run it in a terminal.")
    p, cfg = common.context(args)
    planned = common.plan(OpKind.OPERATOR_ENROLL)
    with common.workstation(args, planned=planned) as ws:
        if not ws.bootstrap_open():
            raise errors.UsageError(
                "This workstation already has its first two operators.",
                "Enrol more with `kmtui operators enroll NAME --role ROLE` (two approve).",
            )
        if cfg.token.login == PROTECTED_PATH or args.pin_already_set or ws.user_pin_set():
            login = common.credential(args, p, cfg, ws.hsm.name)
        else:
            login = _set_pin(ws, cfg.token.pin_half_min_length)
        ws.login(login, actor="init")
        try:
            _enrol_first_two(ws)
        finally:
            if ws.hsm.logged_in:
                ws.logout(actor="init", reason="init finished")
    return EXIT_OK


def _set_pin(ws: Workstation, minimum: int) -> PinHalves:
    """Two custodians each choose a half, typed hidden and confirmed; C_SetPIN replaces the PIN
    the token was initialised with. A refusal here changes nothing."""
    print(
        f"The user PIN of token {clean(ws.hsm.name)} is set now from two halves. Each custodian "
        f"chooses a half of at least {minimum} characters (letters, digits, punctuation; no "
        "spaces), types it twice unseen, and keeps it: nobody else may learn it, and the two "
        "halves must differ.",
        file=sys.stderr,
    )
    initial = getpass.getpass("The token's initial user PIN (from its initialisation): ")
    pairs = []
    for position in POSITIONS:
        name = input(f"{position.capitalize()} half, holder's name: ").strip()
        half = getpass.getpass(f"{name}: choose your {position} half (hidden): ")
        check_half(Half(name, half), position, minimum)
        if getpass.getpass(f"{name}: type your {position} half again: ") != half:
            raise errors.UsageError(
                f"{name}'s two entries of the {position} half differ.",
                "Nothing was changed. Run `kmtui init` again.",
            )
        pairs.append((name, half))
    halves = PinHalves.of(pairs, minimum=minimum).for_new_pin()
    ws.set_user_pin(initial, halves, actor="init")
    print(
        f"The user PIN is set. {halves.holders[0]} holds the first half, {halves.holders[1]} "
        "the second: every log-in needs both.",
        file=sys.stderr,
    )
    return halves


def _enrol_first_two(ws: Workstation) -> None:
    while ws.bootstrap_open():
        name = input("Operator name: ").strip()
        role = input("Role (custodian/officer/auditor) [custodian]: ").strip() or "custodian"
        prepared = ws.prepare_operator(OpKind.OPERATOR_ENROLL, name, role)
        _, enrollment = ws.run_operator(prepared, [], actor="init")
        if enrollment is None:
            raise errors.UsageError("The enrolment did not start.")
        _show_enrollment(enrollment, as_json=False)
        _confirm_now(ws, name)
    print("Both first operators are active. Every sensitive operation now needs two of them.")


def cmd_demo_codes(args: argparse.Namespace) -> int:
    """The demo operators' current codes: a stand-in for their phones, demo only."""
    given = common.home(args)  # the demo home itself, or (with --demo or not) the base home
    p = given if demo.is_demo(given) else demo.home_of(given)
    listing = demo.codes(p)
    if args.json:
        common.print_json(listing)
        return EXIT_OK
    left = 30 - int(time.time()) % 30
    print(f"DEMO ONLY - these stand in for the operators' phones ({left}s left):")
    for entry in listing:
        print(f"  {entry['operator']:<8} {entry['role']:<10} {entry['code']}")
    return EXIT_OK
