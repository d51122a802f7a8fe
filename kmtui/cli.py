"""Command line: the TUI by default, headless subcommands for scripts and SSH (DESIGN.md section 5).

Exit codes: 0 ok; 1 refused or failed (the message says why); 2 usage; 3 audit verification failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kmtui import __version__, config, crashlog, demo, paths, process
from kmtui.commands import audit, common, keys, operators
from kmtui.core import errors
from kmtui.core.safetext import clean
from kmtui.core.token.profile import TokenProfile

EXIT_OK, EXIT_FAILED = 0, 1


class _Parser(argparse.ArgumentParser):
    """No abbreviations (`--pin` must not mean `--pin-halves-from`), and usage errors exit 2
    quietly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # argparse's own usage errors: exit code 2, no trace
        self.print_usage(sys.stderr)
        raise errors.UsageError(message)


def _parser() -> argparse.ArgumentParser:
    def globals_parser(default: Any) -> _Parser:
        # Accepted before and after the subcommand; SUPPRESS keeps a subparser from resetting them.
        parser = _Parser(add_help=False)
        parser.add_argument(
            "--home", metavar="DIR", default=default, help="keep all state under DIR (KMTUI_HOME)"
        )
        parser.add_argument(
            "--pin-halves-from",
            metavar="FILE",
            action="append",
            default=default,
            help="the two custodians' halves of the user PIN, as `NAME HALF` lines (first half "
            "first; - = stdin; give it twice for one file per custodian)",
        )
        parser.add_argument(
            "--demo",
            action="store_true",
            default=default,
            help="work on the demo workstation (made by `kmtui demo`)",
        )
        return parser

    common = globals_parser(argparse.SUPPRESS)
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")

    parser = _Parser(
        prog="kmtui",
        description="Operator workstation for HSM keys. With no command, opens the TUI.",
        parents=[globals_parser(None)],
    )
    parser.add_argument("--version", action="version", version=f"kmtui {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("demo", parents=[common], help="open the TUI on a demo workstation")
    p.add_argument(
        "--reset", action="store_true", help="delete the demo workstation and start over"
    )
    p.add_argument("what", nargs="?", choices=["codes"], help="codes: the demo operators' codes")
    p.add_argument("--json", action="store_true", help="print JSON (with `codes`)")

    p = sub.add_parser(
        "locate", parents=[common, as_json], help="print where kmtui keeps its files"
    )
    p.add_argument("--example", action="store_true", help="print an example config.toml")

    keys.add_parsers(sub, common, as_json)
    operators.add_parsers(sub, common, as_json)

    audit.add_parsers(sub, common, as_json)

    token = sub.add_parser("token", parents=[common], help="the configured token")
    tsub = token.add_subparsers(
        dest="action", metavar="ACTION", required=True, parser_class=_Parser
    )
    info = tsub.add_parser(
        "info", parents=[common, as_json], help="token, slot, mechanisms and what it can do"
    )
    info.add_argument(
        "--probe",
        action="store_true",
        help="log in (two PIN halves) and probe what the token can do now (audited)",
    )
    return parser


def cmd_locate(args: argparse.Namespace) -> int:
    if args.example:
        print(config.EXAMPLE, end="")
        return EXIT_OK
    data = common.home(args).as_dict()
    if args.json:
        common.print_json(data)
    else:
        width = max(map(len, data))
        for name, value in data.items():
            if value:
                print(f"{name:<{width}}  {clean(value)}")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    p, cfg = common.context(args)
    from kmtui.launch import hsm_for

    hsm = hsm_for(cfg, p)
    info = hsm.open()
    data: dict[str, Any] = {
        **info.__dict__,
        "mechanisms": hsm.mechanisms(),
        "slots": [s.__dict__ for s in hsm.slots()],
    }
    hsm.close()
    data["profile"], data["profile_source"] = _profile(args, p, info)
    if args.json:
        common.print_json(data)
        return EXIT_OK
    for name in ("label", "serial", "manufacturer", "model", "slot_id", "library"):
        print(f"{name:<13} {clean(data[name])}")
    print(f"{'mechanisms':<13} {len(data['mechanisms'])}")
    print(f"{'profile':<13} {clean(data['profile_source'])}")
    if data["profile"] is not None:
        for capability, verdict, what in TokenProfile(**_fields(data["profile"])).rows():
            print(f"  {capability:<26} {verdict:<9} {clean(what)}")
    return EXIT_OK


def _profile(
    args: argparse.Namespace, p: paths.Paths, info: Any
) -> tuple[dict[str, Any] | None, str]:
    """The profile probed now (--probe: a log-in, audited), else the last one the trail holds
    for this token."""
    if args.probe:
        with common.workstation(args, login=True) as ws:
            return ws.hsm.profile.as_dict(), "probed now"
    if not p.database.exists():  # no registry yet: nothing recorded, and none is made here
        return None, "not probed yet: run `kmtui token info --probe` (two PIN halves)"
    with common.workstation(args, integrity="quick") as ws:
        for event in ws.audit.events(action="token.profile", limit=20):
            if event.params.get("serial") == info.serial and event.params.get("token") == (
                info.label
            ):
                return dict(event.params["profile"]), f"probed at the log-in of {event.ts}"
    return None, "not probed yet: log in once, or run `kmtui token info --probe`"


def _fields(profile: dict[str, Any]) -> dict[str, Any]:
    """The recorded profile's own fields (not the derived ones `as_dict` adds)."""
    names = {f.name for f in dataclasses.fields(TokenProfile)}
    return {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in profile.items()
        if name in names
    }


def cmd_tui(args: argparse.Namespace, *, demo_mode: bool) -> int:
    base = paths.resolve(args.home)
    p = demo.ensure(base, reset=bool(getattr(args, "reset", False))) if demo_mode else base
    cfg = config.load(p.config_file, demo=demo_mode)
    from kmtui.launch import open_workstation
    from kmtui.ui.app import KmtuiApp

    login = None  # the log-in screen asks two custodians for their halves
    if args.pin_halves_from or demo_mode:
        login = common.credential(args, p, cfg, cfg.token.label or cfg.token.serial)
    # quick_check now; the full integrity_check runs in the background once the panes are up.
    ws = open_workstation(p, cfg, integrity="quick")
    try:
        app = KmtuiApp(ws, cfg, paths=p, login=login)
        app.run()
        return app.return_code or EXIT_OK
    finally:
        ws.close()


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "locate": cmd_locate,
    "keys": keys.cmd_keys,
    "policies": keys.cmd_policies,
    "reconcile": keys.cmd_reconcile,
    "audit": audit.cmd_audit,
    "token": cmd_token,
    "operators": operators.cmd_operators,
    "init": operators.cmd_init,
    "demo": lambda a: operators.cmd_demo_codes(a) if a.what else cmd_tui(a, demo_mode=True),
}


def _log_crash(exc: BaseException, home: str | None) -> Path | None:
    """The frames to the log dir of the home the command was for (crashlog.write)."""
    try:
        log_dir = paths.resolve(home).ensure().log_dir
    except OSError:
        return None
    return crashlog.write(log_dir, exc)


def _home_in(argv: Sequence[str] | None) -> str | None:
    """--home from the command line, found even when parsing itself failed."""
    words = list(sys.argv[1:] if argv is None else argv)
    for n, word in enumerate(words):
        if word == "--home" and n + 1 < len(words):
            return words[n + 1]
        if word.startswith("--home="):
            return word.split("=", 1)[1]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        process.harden()
        args = _parser().parse_args(argv)
        if args.command is None:
            return cmd_tui(args, demo_mode=bool(args.demo))
        return COMMANDS[args.command](args)
    except errors.KmtuiError as exc:
        print(f"kmtui: {clean(exc.message)}", file=sys.stderr)
        if exc.hint:
            print(f"  {clean(exc.hint)}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # The reader (`| head`) stopped early: say nothing more on a closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("kmtui: interrupted; nothing further was done.", file=sys.stderr)
        return 130
    except Exception as exc:
        where = _log_crash(exc, _home_in(argv))
        print(
            f"kmtui: internal error ({type(exc).__name__}). No secret is shown here;"
            f" the failing frames are in {where or 'the log directory'}.",
            file=sys.stderr,
        )
        return EXIT_FAILED
