"""`kmtui keys ...`, `kmtui policies ...` and `kmtui reconcile`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kmtui.commands import common, distribution
from kmtui.core import errors
from kmtui.core.control.operations import OpKind
from kmtui.core.models import KeyState, key_cursor
from kmtui.core.safetext import clean
from kmtui.core.token.templates import ALGORITHMS, Purpose
from kmtui.service import Workstation

EXIT_OK = 0
TRANSITIONS = {
    "activate": OpKind.KEY_ACTIVATE,
    "suspend": OpKind.KEY_SUSPEND,
    "resume": OpKind.KEY_RESUME,
    "deactivate": OpKind.KEY_DEACTIVATE,
    "rotate": OpKind.KEY_ROTATE,
    "revoke": OpKind.KEY_REVOKE,
    "schedule-destroy": OpKind.KEY_SCHEDULE_DESTROY,
    "cancel-destroy": OpKind.KEY_CANCEL_DESTROY,
    "destroy": OpKind.KEY_DESTROY,
    "check": OpKind.KEY_SELFCHECK,
}


def add_parsers(
    sub: Any, common_args: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    approvals = common.approvals_parser()

    keys = sub.add_parser("keys", parents=[common_args], help="manage keys through their life")
    ksub = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = ksub.add_parser("list", parents=[common_args, as_json], help="list keys")
    p.add_argument("--state", choices=[s.value for s in KeyState], help="only keys in this state")
    p.add_argument("--label-prefix", metavar="TEXT", help="only labels starting with TEXT")
    p = ksub.add_parser("show", parents=[common_args, as_json], help="one key and its versions")
    p.add_argument("key", metavar="KEY", help="key id, unique label or PKCS#11 URI")
    p = ksub.add_parser("create", parents=[common_args, as_json, approvals], help="generate a key")
    p.add_argument("--label", required=True)
    p.add_argument("--algorithm", required=True, choices=list(ALGORITHMS))
    p.add_argument("--purpose", choices=[x.value for x in Purpose])
    p.add_argument("--policy", default="default")
    p.add_argument("--exportable", action="store_true")
    p.add_argument(
        "--trusted",
        action="store_true",
        help="a KEK the security officer creates (may wrap exportable keys)",
    )
    distribution.so_pin_halves_option(p)
    distribution.add_parsers(ksub, [common_args, as_json, approvals])
    for name, kind in TRANSITIONS.items():
        p = ksub.add_parser(
            name,
            parents=[common_args, as_json, approvals],
            help=f"{kind} (dual control where the policy says so)",
        )
        p.add_argument("key", metavar="KEY", help="key id, unique label or PKCS#11 URI")
        p.add_argument("--note", default="", help="why (recorded in the audit trail)")
        if kind == OpKind.KEY_REVOKE:
            p.add_argument("--reason", required=True, help="e.g. key-compromise, superseded")
            p.add_argument(
                "--compromised-at",
                metavar="ISO-TIME",
                help="when the compromise happened (default: now)",
            )
        if kind == OpKind.KEY_DESTROY:
            p.add_argument(
                "--confirm-label",
                metavar="LABEL",
                help="the key's label, typed again (asked for when omitted)",
            )
    p = ksub.add_parser(
        "due",
        parents=[common_args, as_json],
        help="keys whose rotation or cryptoperiod end is near",
    )
    p.add_argument("--within", type=_days, default=30, metavar="DAYS")

    pol = sub.add_parser("policies", parents=[common_args], help="key policies")
    psub = pol.add_subparsers(dest="action", metavar="ACTION", required=True)
    psub.add_parser("list", parents=[common_args, as_json], help="list policies")
    p = psub.add_parser("show", parents=[common_args, as_json], help="one policy's rules")
    p.add_argument("name")
    p = psub.add_parser(
        "change",
        parents=[common_args, as_json, approvals],
        help="replace a policy's rules (dual control)",
    )
    p.add_argument("name")
    p.add_argument("--rules-file", required=True, metavar="FILE", help="JSON object of rules")

    rec = sub.add_parser(
        "reconcile",
        parents=[common_args, as_json, approvals],
        help="compare the token with the registry; finish interrupted work",
    )
    rec.add_argument("--acknowledge", metavar="FINDING", help="resolve one finding (dual control)")
    rec.add_argument("--note", default="", help="why the finding is acknowledged")


def _planned(args: argparse.Namespace) -> common.Planned:
    if args.action == "create":
        return common.plan(OpKind.KEY_CREATE, args.policy)
    kind = TRANSITIONS[args.action]
    return lambda ws: (kind, ws.get_key(args.key).policy)


def _days(text: str) -> int:
    """A number of days from 0 to 36500 (argparse turns the ValueError into a usage error)."""
    value = int(text)
    if not 0 <= value <= 36500:
        raise ValueError(text)
    return value


def cmd_keys(args: argparse.Namespace) -> int:
    if args.action in ("list", "show", "due"):
        with common.workstation(args) as ws:
            return _read_only(ws, args)
    if args.action in (
        "export",
        "import",
        "import-public",
        "components-create",
        "components-import",
    ):
        return distribution.cmd(args)
    with common.workstation(args, login=True, planned=_planned(args)) as ws:
        so_login = None
        if args.action == "create":
            prepared = ws.prepare_create(
                label=args.label,
                algorithm=args.algorithm,
                purpose=args.purpose,
                policy_name=args.policy,
                exportable=args.exportable,
                trusted=args.trusted,
            )
            if args.trusted:
                so_login = distribution.so_login(args)
        else:
            kind = TRANSITIONS[args.action]
            params: dict[str, Any] = {"note": args.note}
            if kind == OpKind.KEY_REVOKE:
                params.update(reason=args.reason, compromised_at=args.compromised_at)
            prepared = ws.prepare(kind, args.key, **params)
            if kind == OpKind.KEY_DESTROY:
                _confirm_destroy(ws, args, prepared.key.label if prepared.key else "")
        result = ws.run(prepared, common.approvals(args, prepared), actor="cli", so_login=so_login)
        key = ws.get_key(prepared.operation.key_id)
        data = {**ws.describe(key), "result": result.as_dict()}
        if args.json:
            common.print_json(data)
        else:
            print(f"{args.action}: done (audit event {result.audit_seq})")
            for dependent in result.facts.get("dependents", []):
                print(f"  depends on it: {dependent['key_id']} ({dependent['relation']})")
            for name, value in result.facts.get("checks", {}).items():
                print(f"  {name:<16} {clean(value)}")
            _print_key(data)
        return EXIT_OK


def _confirm_destroy(ws: Workstation, args: argparse.Namespace, label: str) -> None:
    last = ws.last_use(args.key if not label else ws.get_key(args.key).id)
    print(f"Last used: {last.ts + ' (' + last.action + ')' if last else 'never'}", file=sys.stderr)
    typed = args.confirm_label
    if typed is None:
        if not sys.stdin.isatty():
            raise errors.UsageError("Destroy needs --confirm-label LABEL when not at a terminal.")
        typed = input("Type the key's label to confirm destruction: ")
    if typed != label:
        raise errors.UsageError("The label typed does not match; nothing was destroyed.")


def _read_only(ws: Workstation, args: argparse.Namespace) -> int:
    if args.action == "show":
        data = ws.describe(ws.get_key(args.key))
        last = ws.last_use(data["id"])
        data["last_used"] = last.ts if last else ""
        if args.json:
            common.print_json(data)
        else:
            _print_key(data)
        return EXIT_OK
    if args.action == "due":
        due = ws.due(args.within)
        if args.json:
            common.print_json([d.as_dict() for d in due])
        else:
            common.print_table(
                ["ID", "LABEL", "STATE", "ROTATION DUE", "ORIGINATOR END", "OVERDUE"],
                [
                    [
                        d.id,
                        d.label,
                        d.state,
                        d.dates.get("rotation_due", ""),
                        d.dates.get("originator_end", ""),
                        "yes" if d.overdue else "",
                    ]
                    for d in due
                ],
            )
        return EXIT_OK
    listing: list[dict[str, Any]] = []
    after = None
    while page := ws.store.keys.page(
        after=after, limit=500, state=args.state, label_prefix=args.label_prefix
    ):
        listing.extend(ws.describe(k) for k in page)
        after = key_cursor(page[-1])
    if args.json:
        common.print_json(listing)
    else:
        common.print_table(
            ["ID", "LABEL", "STATE", "ALGORITHM", "PURPOSE", "VER", "KCV/FINGERPRINT"],
            [
                [
                    k["id"],
                    k["label"],
                    k["state"],
                    k["algorithm"],
                    k["purpose"],
                    str(k["current_version"]),
                    k["kcv"]
                    or next(
                        (
                            v.get("fingerprint", "")[:23]
                            for v in k["versions"]
                            if v["version"] == k["current_version"]
                        ),
                        "",
                    ),
                ]
                for k in listing
            ],
        )
    return EXIT_OK


def _print_key(data: dict[str, Any]) -> None:
    for field in (
        "id",
        "label",
        "state",
        "algorithm",
        "purpose",
        "policy",
        "kcv",
        "created_at",
        "rotation_due_at",
        "destroy_after",
        "revocation_reason",
        "compromised_at",
        "last_used",
    ):
        if data.get(field):
            print(f"{field:<17} {clean(data[field])}")
    for v in data["versions"]:
        check = v.get("kcv") or v.get("fingerprint", "")
        print(f"version {v['version']:<3} {clean(v['state']):<22} {clean(check)}")
        print(f"      {clean(v['pkcs11_uri'])}")


def cmd_policies(args: argparse.Namespace) -> int:
    if args.action == "change":
        try:
            rules = json.loads(Path(args.rules_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise errors.UsageError(f"Cannot read rules from {args.rules_file}: {exc}.") from None
        if not isinstance(rules, dict):
            raise errors.UsageError("The rules file must hold one JSON object.")
        planned = common.plan(OpKind.POLICY_CHANGE, args.name)
        with common.workstation(args, login=True, planned=planned) as ws:
            prepared = ws.prepare_policy_change(args.name, rules)
            result = ws.run(prepared, common.approvals(args, prepared), actor="cli")
            print(f"policy {args.name!r} changed (audit event {result.audit_seq})")
        return EXIT_OK
    with common.workstation(args) as ws:
        if args.action == "show":
            chosen = ws.get_policy(args.name)
            data: Any = {
                "name": chosen.name,
                "description": chosen.description,
                "rules": ws.rules(chosen.name).to_json(),
                "updated_at": chosen.updated_at,
            }
            if args.json:
                common.print_json(data)
            else:
                print(f"{clean(chosen.name)}: {clean(chosen.description)}")
                for name, value in data["rules"].items():
                    print(f"  {name:<24} {clean(json.dumps(value))}")
            return EXIT_OK
        listing: list[dict[str, Any]] = [
            {"name": p.name, "description": p.description, "rules": ws.rules(p.name).to_json()}
            for p in ws.store.policies.all()
        ]
        if args.json:
            common.print_json(listing)
        else:
            common.print_table(
                ["NAME", "ROTATION", "EXPORTABLE", "DESCRIPTION"],
                [
                    [
                        p["name"],
                        f"{p['rules']['rotation_days']} d",
                        "yes" if p["rules"]["exportable"] else "no",
                        p["description"],
                    ]
                    for p in listing
                ],
            )
        return EXIT_OK


def cmd_reconcile(args: argparse.Namespace) -> int:
    planned = common.plan(OpKind.RECONCILE_RESOLVE) if args.acknowledge else None
    with common.workstation(args, login=True, planned=planned) as ws:
        if args.acknowledge:
            prepared = ws.prepare_acknowledge(args.acknowledge, args.note)
            result = ws.run(prepared, common.approvals(args, prepared), actor="cli")
            print(f"finding acknowledged (audit event {result.audit_seq})")
            return EXIT_OK
        report = ws.reconciler.run(actor="cli")
        if args.json:
            common.print_json(report.as_dict())
        else:
            print(
                f"matched {report.matched} key versions; finished {len(report.completed)} "
                f"interrupted operations; {len(report.findings)} findings"
            )
            for finding in report.findings:
                print(
                    f"- {finding.kind}: {clean(finding.label, 40) or '-'} "
                    f"({clean(finding.key_id) or 'no key'}) {clean(finding.detail)}"
                )
                print(f"  id: {clean(finding.ident)}")
        return EXIT_OK if report.clean else 1
