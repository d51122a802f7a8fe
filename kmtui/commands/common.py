"""What every headless command shares: opening the workstation, the PIN, approvals, output."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from kmtui import config, demo, paths
from kmtui.core import errors
from kmtui.core.control.operations import ApprovalInput, OpKind
from kmtui.core.safetext import clean
from kmtui.service import Prepared, Workstation

MAX_APPROVAL_LINE = 200

Planned = Callable[[Workstation], tuple[OpKind, str]]
"""The operation a command is about to run and the policy it runs under, known before log-in."""


def plan(kind: OpKind, policy: str = "default") -> Planned:
    """A planned operation whose policy the command line names."""
    return lambda ws: (kind, policy)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    cells = [[clean(c, 40) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def pin_from_file(pin_file: Path) -> str:
    """The PIN from --pin-file (first line); never argv, never the environment."""
    try:
        return pin_file.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError):
        raise errors.UsageError(
            f"Cannot read a PIN from {pin_file}.", "Put the PIN on its first line."
        ) from None


def home(args: argparse.Namespace) -> paths.Paths:
    """--home/KMTUI_HOME, or the demo workstation inside it with --demo."""
    base = paths.resolve(args.home)
    if not args.demo:
        return base
    p = demo.home_of(base)
    if not demo.is_demo(p):
        raise errors.UsageError(f"No demo workstation at {p.home}.", "Run `kmtui demo` first.")
    return p


def context(args: argparse.Namespace) -> tuple[paths.Paths, config.Config]:
    p = home(args)
    return p, config.load(p.config_file, demo=demo.is_demo(p))


@contextmanager
def workstation(
    args: argparse.Namespace,
    *,
    login: bool = False,
    integrity: str = "full",
    planned: Planned | None = None,
) -> Iterator[Workstation]:
    """The workstation for one command; logged in to the token when the command needs it. A
    `planned` operation the policy keeps to the console is refused here, before any PIN."""
    from kmtui.launch import open_workstation

    p, cfg = context(args)
    ws = open_workstation(p, cfg, integrity=integrity)
    try:
        if planned is not None:
            ws.check_origin(*planned(ws), actor="cli")
        if login:
            ws.login(_pin(args, p, ws.hsm.name), actor="cli")
        yield ws
    finally:
        if login and ws.hsm.logged_in:
            ws.logout(actor="cli", reason="command finished")
        ws.close()


def _pin(args: argparse.Namespace, p: paths.Paths, token: str) -> str:
    if args.pin_file:
        return pin_from_file(args.pin_file)
    if demo.is_demo(p):
        return demo.pin_of(p)
    if not sys.stdin.isatty():
        raise errors.UsageError("No PIN: stdin is not a terminal.", "Use --pin-file FILE.")
    return getpass.getpass(f"User PIN for token {clean(token)}: ")


def show_operation(prepared: Prepared, out: TextIO = sys.stderr) -> None:
    """What the approvers check before they give their codes (on stderr: stdout stays data)."""
    print(f"Operation : {clean(prepared.summary)}", file=out)
    print(f"Digest    : {prepared.operation.short_digest}", file=out)
    if prepared.kcv:
        print(f"Key check : {clean(prepared.kcv)}", file=out)
    if prepared.quorum:
        print(f"Approvals : {prepared.quorum} distinct operators", file=out)


def approvals_parser() -> argparse.ArgumentParser:
    """`--approvals-from`, for every command that may need approvals."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--approvals-from", metavar="FILE", help="OPERATOR CODE lines; - = stdin")
    return parser


def approvals(args: argparse.Namespace, prepared: Prepared) -> list[ApprovalInput]:
    """Approver codes from --approvals-from FILE|- (lines `OPERATOR CODE`) or the terminal."""
    show_operation(prepared)
    if not prepared.quorum:
        return []
    source = getattr(args, "approvals_from", None)
    if source:
        return parse_approvals(_read_source(source))
    if not sys.stdin.isatty():
        raise errors.UsageError(
            f"This operation needs {prepared.quorum} approvals and stdin is not a terminal.",
            "Use --approvals-from FILE (lines: OPERATOR CODE), or - for stdin.",
        )
    given = []
    for n in range(1, prepared.quorum + 1):
        name = input(f"Approver {n} name: ").strip()
        code = getpass.getpass(f"Approver {n} code for {prepared.operation.short_digest}: ")
        given.append(ApprovalInput(name, code.strip()))
    return given


def _read_source(source: str) -> str:
    if source == "-":
        return sys.stdin.read(64 * 1024)
    try:
        return Path(source).read_text(encoding="utf-8")[: 64 * 1024]
    except (OSError, UnicodeDecodeError):
        raise errors.UsageError(f"Cannot read approvals from {clean(source)}.") from None


def parse_approvals(text: str) -> list[ApprovalInput]:
    given = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line[:MAX_APPROVAL_LINE].split()
        if len(parts) != 2:
            raise errors.UsageError(
                f"Approval line {number} is not `OPERATOR CODE`.", "One approver per line."
            )
        given.append(ApprovalInput(parts[0], parts[1]))
    return given
