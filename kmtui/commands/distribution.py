"""`kmtui keys export|import|import-public|components-create|components-import` — keys that
travel."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from kmtui.commands import common
from kmtui.core import errors
from kmtui.core.control.operations import OpKind
from kmtui.core.control.pin import Credential
from kmtui.core.keys import components, keyfiles
from kmtui.core.models import Key
from kmtui.core.safetext import clean
from kmtui.core.token.templates import Purpose
from kmtui.service import Workstation

EXIT_OK = 0
CLEAR = "\x1b[H\x1b[2J\x1b[3J"  # clear the screen and the scrollback (xterm and most others)


def add_parsers(ksub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = ksub.add_parser(
        "export",
        parents=parents,
        help="wrap a key under a trusted KEK or recipient public key to a file",
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument(
        "--wrap-with",
        required=True,
        metavar="KEK|RECIPIENT",
        help="a trusted AES KEK (AES key wrap) or recipient public key (RSA-OAEP, SHA-1)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="FILE")
    p = ksub.add_parser("import", parents=parents, help="unwrap a key file onto the token")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--unwrap-with", required=True, metavar="KEK")
    p.add_argument("--label", required=True)
    p.add_argument("--kcv", default="", help="the KCV from the paper form (checked as well)")
    p.add_argument(
        "--raw",
        action="store_true",
        help="FILE is a bare RFC 5649 blob (binary, hex or base64); needs --kcv",
    )
    p.add_argument(
        "--algorithm",
        default="AES-256",
        choices=["AES-128", "AES-192", "AES-256"],
        help="with --raw: the wrapped key's algorithm",
    )
    p.add_argument(
        "--purpose",
        default="encrypt",
        choices=[Purpose.ENCRYPT.value, Purpose.WRAP.value],
        help="with --raw: what the key is for",
    )
    p.add_argument("--policy", default="default")
    p = ksub.add_parser(
        "import-public",
        parents=parents,
        help="register a recipient's RSA public key (PEM) to wrap exports for them",
    )
    p.add_argument("--pem", required=True, type=Path, metavar="FILE", help="RSA public key, PEM")
    p.add_argument("--label", required=True)
    p.add_argument(
        "--trusted",
        action="store_true",
        help="imported by the security officer: may wrap exportable keys",
    )
    so_pin_halves_option(p)
    p.add_argument("--policy", default="default")
    for name, what in (
        ("components-create", "generate a key as XOR components"),
        ("components-import", "enter a key from XOR components"),
    ):
        p = ksub.add_parser(name, parents=parents, help=what)
        p.add_argument("--label", required=True)
        p.add_argument("--algorithm", default="AES-256", choices=["AES-128", "AES-192", "AES-256"])
        p.add_argument(
            "--purpose", default="wrap", choices=[Purpose.ENCRYPT.value, Purpose.WRAP.value]
        )
        p.add_argument(
            "--custodians",
            required=True,
            metavar="A,B,C",
            help="one custodian per component, in order",
        )
        p.add_argument("--policy", default="default")
        p.add_argument(
            "--components-dir",
            type=Path,
            metavar="DIR",
            help="component files (one per custodian) instead of the screen",
        )
        if name == "components-import":
            p.add_argument("--kcv", default="", help="the whole key's KCV, if known")


def so_pin_halves_option(parser: argparse.ArgumentParser) -> None:
    """`--so-pin-halves-from`, for the commands the security officer does."""
    parser.add_argument(
        "--so-pin-halves-from",
        metavar="FILE",
        action="append",
        help="the two SO custodians' halves of the SO PIN, as `NAME HALF` lines (else prompted)",
    )


def so_login(args: argparse.Namespace) -> Credential:
    """The security officer's log-in: two SO halves or the token's protected path."""
    p, cfg = common.context(args)
    return common.so_credential(args, p, cfg)


def _planned(args: argparse.Namespace) -> common.Planned:
    if args.action == "export":
        return lambda ws: (OpKind.KEY_EXPORT, ws.get_key(args.key).policy)
    kind = OpKind.KEY_CREATE if args.action == "components-create" else OpKind.KEY_IMPORT
    return common.plan(kind, args.policy)


def cmd(args: argparse.Namespace) -> int:
    with common.workstation(args, login=True, planned=_planned(args)) as ws:
        if args.action == "export":
            prepared = ws.distribution.prepare_export(args.key, args.wrap_with)
            result = ws.distribution.run_export(
                prepared, common.approvals(args, prepared), args.out, actor="cli"
            )
            _report(
                args,
                {
                    "file": str(args.out),
                    "manifest": prepared.operation.params,
                    "result": result.as_dict(),
                },
            )
            return EXIT_OK
        if args.action == "import":
            raw = keyfiles.RawBlob(args.algorithm, args.purpose, args.kcv) if args.raw else None
            wrapped = ws.distribution.load_wrapped(args.file, raw=raw, actor="cli")
            prepared = ws.distribution.prepare_import(
                wrapped,
                args.unwrap_with,
                label=args.label,
                policy_name=args.policy,
                kcv=args.kcv,
            )
            key = ws.distribution.run_import(
                prepared, wrapped, common.approvals(args, prepared), actor="cli"
            )
            _report(args, ws.describe(key))
            return EXIT_OK
        if args.action == "import-public":
            recipient = ws.distribution.load_recipient(args.pem, actor="cli")
            prepared = ws.distribution.prepare_import_public(
                recipient, label=args.label, trusted=args.trusted, policy_name=args.policy
            )
            key = ws.distribution.run_import_public(
                prepared,
                recipient,
                common.approvals(args, prepared),
                so_login=so_login(args) if args.trusted else None,
                actor="cli",
            )
            _report(args, {**ws.describe(key), "fingerprint": recipient.fingerprint})
            return EXIT_OK
        return _components(ws, args)


def _report(args: argparse.Namespace, data: dict[str, Any]) -> None:
    if args.json:
        common.print_json(data)
    else:
        for name, value in data.items():
            if isinstance(value, str | int):
                print(f"{name:<15} {clean(value)}")
        print(f"{args.action}: done")


def _components(ws: Workstation, args: argparse.Namespace) -> int:
    custodians = [c.strip() for c in args.custodians.split(",") if c.strip()]
    generate = args.action == "components-create"
    if not generate:
        entered = _enter(ws, args, custodians, components.size_of(args.algorithm))
    prepared = ws.components.prepare(
        label=args.label,
        algorithm=args.algorithm,
        purpose=args.purpose,
        custodians=custodians,
        policy_name=args.policy,
        generate=generate,
        expected_kcv=getattr(args, "kcv", ""),
    )
    approvals = common.approvals(args, prepared)
    key, shares = ws.components.run(prepared, approvals, None if generate else entered, actor="cli")
    if generate:
        _hand_out(args, shares, key)
    _report(args, ws.describe(key))
    return EXIT_OK


def _hand_out(args: argparse.Namespace, shares: list[components.Component], key: Key) -> None:
    """Each component once, to its custodian only: on screen (then cleared) or in a file each."""
    if args.components_dir:
        args.components_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for share in shares:
            components.write_component(args.components_dir / f"{share.custodian}.txt", share)
        print(
            f"{len(shares)} component files written to {args.components_dir} (one per "
            "custodian; deliver each sealed, then delete).",
            file=sys.stderr,
        )
        return
    if not sys.stdin.isatty():
        raise errors.UsageError(
            "Components are shown at a terminal, one custodian at a time.",
            "Or use --components-dir DIR.",
        )
    for number, share in enumerate(shares, 1):
        input(f"{share.custodian}: press Enter when only you can see the screen. ")
        print(f"Component {number} of {len(shares)} for {share.custodian}:")
        print(f"  {components.grouped(share.value)}")
        print(f"  KCV {share.kcv}")
        input("Write it down, then press Enter to clear the screen. ")
        print(CLEAR, end="", flush=True)
    print(f"Key {clean(key.label, 60)!r} KCV {key.versions[0].kcv}")


def _enter(
    ws: Workstation, args: argparse.Namespace, custodians: list[str], size: int
) -> list[components.Component]:
    """Each custodian types their component and its KCV; a typo is caught at that component."""
    shares: list[components.Component] = []
    for number, name in enumerate(custodians, 1):
        if args.components_dir:
            value, typed_kcv = components.read_component(args.components_dir / f"{name}.txt", size)
            typed = value.hex()
        else:
            if not sys.stdin.isatty():
                raise errors.UsageError(
                    "Components are typed at a terminal.", "Or use --components-dir DIR."
                )
            typed = getpass.getpass(f"{name}: component {number}: ")
            typed_kcv = input(f"{name}: KCV of component {number}: ")
        share = ws.components.enter(typed, typed_kcv, shares, name, size, actor="cli")
        shares.append(share)
        print(f"component {number} ({name}): KCV {share.kcv} matches", file=sys.stderr)
    return shares
