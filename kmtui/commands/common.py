"""What every headless command shares: opening the workstation, the PIN halves, approvals,
output."""

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
from kmtui.core.control.pin import (
    POSITIONS,
    PROTECTED_PATH,
    Credential,
    PinHalves,
    ProtectedPath,
    parse_lines,
)
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
    stdin_once(args)
    ws = open_workstation(p, cfg, integrity=integrity)
    try:
        if planned is not None:
            ws.check_origin(*planned(ws), actor="cli")
        if login:
            ws.login(credential(args, p, cfg, ws.hsm.name), actor="cli")
        yield ws
    finally:
        if login and ws.hsm.logged_in:
            ws.logout(actor="cli", reason="command finished")
        ws.close()


def stdin_once(args: argparse.Namespace) -> None:
    """At most one of --approvals-from, --pin-halves-from and --so-pin-halves-from reads stdin."""
    sources = [
        getattr(args, "approvals_from", None),
        *(getattr(args, "pin_halves_from", None) or ()),
        *(getattr(args, "so_pin_halves_from", None) or ()),
    ]
    if sources.count("-") > 1:
        raise errors.UsageError(
            "Only one of --approvals-from, --pin-halves-from and --so-pin-halves-from can read "
            "stdin (-).",
            "Give the others as files.",
        )


def credential(
    args: argparse.Namespace, p: paths.Paths, cfg: config.Config, token: str
) -> Credential:
    """The user log-in: two custodians' halves (--pin-halves-from, the demo home, or each typed
    at the terminal), or the token's protected path when config.toml says so."""
    return _credential(
        getattr(args, "pin_halves_from", None),
        "--pin-halves-from",
        cfg,
        f"the user PIN of token {clean(token)}",
        lambda: demo.halves_of(p) if demo.is_demo(p) else None,
    )


def so_credential(args: argparse.Namespace, p: paths.Paths, cfg: config.Config) -> Credential:
    """The security officer's log-in, the same way: two SO halves, or the protected path."""
    return _credential(
        getattr(args, "so_pin_halves_from", None),
        "--so-pin-halves-from",
        cfg,
        "the security officer's SO PIN",
        lambda: demo.so_halves_of(p) if demo.is_demo(p) else None,
    )


def _credential(
    sources: list[str] | None,
    option: str,
    cfg: config.Config,
    what: str,
    kept_by_demo: Callable[[], PinHalves | None],
) -> Credential:
    if cfg.token.login == PROTECTED_PATH:
        if sources:
            raise errors.UsageError(
                f"{option} is not used here: this workstation logs in through the token's own "
                'authentication ([token] login = "protected-path").',
                "Follow the token's PIN pad, PED or quorum prompts instead.",
            )
        print(f"For {what}: authenticate at the token (PIN pad, PED or quorum).", file=sys.stderr)
        return ProtectedPath()
    minimum = cfg.token.pin_half_min_length
    if sources:
        texts = [_read_source(source, "PIN halves") for source in sources]
        return PinHalves.of([p for text in texts for p in parse_lines(text)], minimum=minimum)
    kept = kept_by_demo()
    if kept is not None:
        return kept
    if not sys.stdin.isatty():
        raise errors.UsageError(
            f"No PIN halves for {what}: stdin is not a terminal.",
            f"Use {option} FILE (lines: NAME HALF, first half first; give it twice for one "
            "file per custodian), or - for stdin.",
        )
    return prompt_halves(what, minimum)


def prompt_halves(what: str, minimum: int) -> PinHalves:
    """Each custodian types their name and, hidden, their half; the first half's holder first."""
    print(f"Log-in with {what}: two custodians, each types their own half.", file=sys.stderr)
    pairs = []
    for position in POSITIONS:
        name = input(f"{position.capitalize()} half, holder's name: ").strip()
        pairs.append((name, getpass.getpass(f"{name}: your {position} half (hidden): ")))
    return PinHalves.of(pairs, minimum=minimum)


def show_operation(prepared: Prepared, out: TextIO = sys.stderr) -> None:
    """What the approvers check before they give their codes (on stderr: stdout stays data)."""
    print(f"Operation : {clean(prepared.summary)}", file=out)
    print(f"Digest    : {prepared.operation.short_digest}", file=out)
    if prepared.kcv:
        print(f"Key check : {clean(prepared.kcv)}", file=out)
    for n, line in enumerate(prepared.changes):  # a policy change: each rule, old → new
        print(f"{'Changes   :' if n == 0 else '':<11} {clean(line)}", file=out)
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


def _read_source(source: str, what: str = "approvals") -> str:
    if source == "-":
        return sys.stdin.read(64 * 1024)
    try:
        return Path(source).read_text(encoding="utf-8")[: 64 * 1024]
    except (OSError, UnicodeDecodeError):
        raise errors.UsageError(f"Cannot read {what} from {clean(source)}.") from None


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
