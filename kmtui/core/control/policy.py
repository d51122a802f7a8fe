"""Pure policy rules: what a key may be, when it is due, who must approve what, and from where.

A policy is stored as JSON (`policies.rules`) and parsed here into `Rules`, refusing unknown or
out-of-range values with a message that names the field. Rules left out take their defaults, and
the quorum map is merged entry by entry: an operation a policy does not name keeps its default
quorum, never 0. Below every policy lies the workstation's floor: a sensitive operation needs two
distinct operators whatever a policy says (`QUORUM_FLOOR`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kmtui.core import errors
from kmtui.core.control.operations import OpKind, Requirement
from kmtui.core.models import Key, Policy, parse_iso
from kmtui.core.token.templates import ALGORITHMS, Purpose

QUORUM_FLOOR = 2
"""Distinct operators every sensitive operation needs; no policy can lower it."""
DUAL_CONTROLLED = (
    OpKind.KEY_CREATE,
    OpKind.KEY_ROTATE,
    OpKind.KEY_REVOKE,
    OpKind.KEY_SCHEDULE_DESTROY,
    OpKind.KEY_CANCEL_DESTROY,
    OpKind.KEY_DESTROY,
    OpKind.KEY_EXPORT,
    OpKind.KEY_IMPORT,
    OpKind.POLICY_CHANGE,
    OpKind.OPERATOR_ENROLL,
    OpKind.OPERATOR_REENROLL,
    OpKind.OPERATOR_LOCK,
    OpKind.OPERATOR_UNLOCK,
    OpKind.OPERATOR_REVOKE,
    OpKind.RECONCILE_RESOLVE,
)
"""The sensitive operations, each held to the floor: they make, replace, reveal, retire or destroy
key material, change who may approve or what a policy demands, or clear a reconciliation finding.

Not sensitive (a policy may still ask approvals for them): the self-check, which changes nothing
and is audited as use; activate, suspend, resume and deactivate, which move a live key between
states while its material stays on the token, and must stay quick for one custodian when a key is
in doubt (suspend). Revocation, destruction and every rule change stay dual-controlled."""
_SENSITIVE = frozenset(str(k) for k in DUAL_CONTROLLED)
DEFAULT_QUORUM: dict[str, int] = {str(k): QUORUM_FLOOR for k in DUAL_CONTROLLED}
"""The default quorums (an operation not named here needs no approvals unless a policy says so);
a policy's quorum map is merged over them entry by entry."""
CONSOLE_ONLY = (
    OpKind.KEY_DESTROY,
    OpKind.KEY_EXPORT,
    OpKind.KEY_IMPORT,
    OpKind.POLICY_CHANGE,
    OpKind.OPERATOR_ENROLL,
    OpKind.OPERATOR_REENROLL,
    OpKind.OPERATOR_UNLOCK,
)
MAX_APPROVAL_EXPIRY = 300
MIN_DESTROY_WAIT_DAYS = 1
MAX_IDLE_LOCK = 240  # the same bound as the config file's [ui] idle_lock_minutes


@dataclass(frozen=True)
class Rules:
    """One policy's rules, validated."""

    algorithms: dict[str, list[str]] = field(
        default_factory=lambda: {
            "encrypt": ["AES-128", "AES-192", "AES-256"],
            "wrap": ["AES-256"],
            "mac": ["HMAC-SHA256"],
            "sign": ["RSA-2048", "RSA-3072", "RSA-4096", "EC-P256", "EC-P384"],
        }
    )
    originator_usage_days: int = 365
    recipient_usage_days: int = 730
    rotation_days: int = 365
    destroy_wait_days: int = 7
    exportable: bool = False
    retire_previous: str = "deactivate"  # or "keep": the previous version stays active
    quorum: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_QUORUM))
    approver_roles: list[str] = field(default_factory=lambda: ["custodian", "officer"])
    approval_expiry_seconds: int = MAX_APPROVAL_EXPIRY
    console_only: list[str] = field(default_factory=lambda: [str(k) for k in CONSOLE_ONLY])
    min_components: int = 3  # split knowledge: 2 is allowed by a policy, with a warning
    # Minutes of inactivity before the workstation locks; None leaves the configured value. The
    # workstation uses the shortest of its configuration and every policy: a policy can only
    # shorten the lock, and changing a policy needs approvals where the config file does not.
    idle_lock_minutes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def requirement(self, kind: OpKind, exclude: frozenset[str] = frozenset()) -> Requirement:
        return Requirement(
            quorum=floored(kind, self.quorum.get(str(kind), DEFAULT_QUORUM.get(str(kind), 0))),
            roles=frozenset(self.approver_roles),
            expiry_seconds=self.approval_expiry_seconds,
            exclude=exclude,
        )


def floored(kind: OpKind | str, quorum: int) -> int:
    """The quorum the workstation enforces: never below the floor for a sensitive operation."""
    return max(quorum, QUORUM_FLOOR) if str(kind) in _SENSITIVE else quorum


def parse(policy: Policy, *, candidate: bool = False) -> Rules:
    """Rules from a stored policy; defaults fill what the JSON leaves out, quorum entry by entry.

    A stored quorum below the floor is read as the floor; a `candidate` (a change about to be
    approved) that asks for less is refused, so approvers never sign a rule that cannot hold.
    """
    raw: Mapping[str, Any] = policy.rules
    base = Rules()
    known = set(base.to_json())
    unknown = sorted(set(raw) - known)
    if unknown:
        raise errors.PolicyRefused(
            f"Policy {policy.name!r} has unknown rules: {', '.join(unknown)}.",
            f"Known rules: {', '.join(sorted(known))}.",
        )
    merged = {**base.to_json(), **raw}
    where = f"Policy {policy.name!r}"

    def days(name: str, minimum: int = 1) -> int:
        value = merged[name]
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= 36500:
            raise errors.PolicyRefused(
                f"{where}: {name} must be a whole number of days from {minimum} to 36500."
            )
        return value

    algorithms = merged["algorithms"]
    if not isinstance(algorithms, dict):
        raise errors.PolicyRefused(f"{where}: algorithms must map a purpose to a list.")
    for purpose, names in algorithms.items():
        if purpose not in {p.value for p in Purpose} or not isinstance(names, list):
            raise errors.PolicyRefused(f"{where}: unknown purpose {purpose!r} in algorithms.")
        for name in names:
            spec = ALGORITHMS.get(str(name))
            if spec is None or Purpose(purpose) not in spec.purposes:
                raise errors.PolicyRefused(f"{where}: {name!r} cannot be used to {purpose}.")
    quorum = merged["quorum"]
    if not isinstance(quorum, dict) or not all(
        k in {str(o) for o in OpKind} and isinstance(v, int) and 0 <= v <= 5
        for k, v in quorum.items()
    ):
        raise errors.PolicyRefused(f"{where}: quorum maps operation names to 0..5 approvers.")
    lowered = sorted(k for k, v in quorum.items() if floored(k, v) != v)
    if candidate and lowered:
        raise errors.PolicyRefused(
            f"{where}: quorum {', '.join(lowered)} cannot be below {QUORUM_FLOOR}: every "
            f"sensitive operation needs {QUORUM_FLOOR} distinct operators on this workstation.",
            "Leave the entry out for its default, or ask for more approvers, never fewer.",
        )
    expiry = merged["approval_expiry_seconds"]
    if not isinstance(expiry, int) or not 30 <= expiry <= MAX_APPROVAL_EXPIRY:
        raise errors.PolicyRefused(
            f"{where}: approval_expiry_seconds must be 30 to {MAX_APPROVAL_EXPIRY}.",
            "Approvals may only be made shorter-lived than the default.",
        )
    if merged["retire_previous"] not in ("deactivate", "keep"):
        raise errors.PolicyRefused(f"{where}: retire_previous is 'deactivate' or 'keep'.")
    roles = merged["approver_roles"]
    if (
        not isinstance(roles, list)
        or not roles
        or not set(roles) <= {"custodian", "officer", "auditor"}
    ):
        raise errors.PolicyRefused(f"{where}: approver_roles lists custodian, officer, auditor.")
    console = merged["console_only"]
    if not isinstance(console, list) or not set(console) <= {str(o) for o in OpKind}:
        raise errors.PolicyRefused(f"{where}: console_only lists operation names.")
    components = merged["min_components"]
    if not isinstance(components, int) or not 2 <= components <= 9:
        raise errors.PolicyRefused(f"{where}: min_components must be 2 to 9.")
    idle = merged["idle_lock_minutes"]
    if idle is not None and (
        not isinstance(idle, int) or isinstance(idle, bool) or not 1 <= idle <= MAX_IDLE_LOCK
    ):
        raise errors.PolicyRefused(
            f"{where}: idle_lock_minutes must be a whole number from 1 to {MAX_IDLE_LOCK}, "
            "or null to leave the workstation's configured idle lock."
        )
    rules = Rules(
        algorithms={k: list(v) for k, v in algorithms.items()},
        originator_usage_days=days("originator_usage_days"),
        recipient_usage_days=days("recipient_usage_days"),
        rotation_days=days("rotation_days"),
        destroy_wait_days=days("destroy_wait_days", MIN_DESTROY_WAIT_DAYS),
        exportable=bool(merged["exportable"]),
        retire_previous=str(merged["retire_previous"]),
        quorum={k: floored(k, int(v)) for k, v in {**DEFAULT_QUORUM, **quorum}.items()},
        approver_roles=[str(r) for r in roles],
        approval_expiry_seconds=expiry,
        console_only=[str(c) for c in console],
        min_components=components,
        idle_lock_minutes=idle,
    )
    if rules.recipient_usage_days < rules.originator_usage_days:
        raise errors.PolicyRefused(
            f"{where}: recipient_usage_days must not be shorter than originator_usage_days.",
            "Data protected near the end of the originator period must stay readable.",
        )
    return rules


_UNSET: Any = object()


def changes(before: Policy, after: Policy) -> list[str]:
    """Every rule a change touches, old → new, in the values the workstation will enforce.

    A rule, or one entry of the quorum map, is touched when its stored form differs. Each side
    shows the effective value, marked "(default)" where the policy leaves the rule out and
    "(floor ...)" where the workstation's floor lifts what the policy asks: approvers see what
    will hold, not just what was typed.
    """
    old, new = parse(before), parse(after)
    lines = []
    if before.description != after.description:
        lines.append(f"description: {before.description!r} → {after.description!r}")
    for name in sorted(set(before.rules) | set(after.rules)):
        was, now = before.rules.get(name, _UNSET), after.rules.get(name, _UNSET)
        if was == now:
            continue
        if name == "quorum":
            lines += _quorum_changes(was, now, old.quorum, new.quorum)
        else:
            lines.append(
                f"{name}: {_shown(getattr(old, name), was)} → {_shown(getattr(new, name), now)}"
            )
    return lines


def _quorum_changes(
    was: Any, now: Any, old: Mapping[str, int], new: Mapping[str, int]
) -> list[str]:
    asked_before = was if isinstance(was, dict) else {}
    asked_after = now if isinstance(now, dict) else {}
    lines = [
        f"quorum {kind}: {_shown(old.get(kind, 0), a, floor=True)} → "
        f"{_shown(new.get(kind, 0), b, floor=True)}"
        for kind in sorted(set(asked_before) | set(asked_after))
        if (a := asked_before.get(kind, _UNSET)) != (b := asked_after.get(kind, _UNSET))
    ]
    return lines or ["quorum: every entry at its default, before and after"]


def _shown(effective: Any, asked: Any, *, floor: bool = False) -> str:
    text = _text(effective)
    if asked is _UNSET:
        return f"{text} (default)"
    if floor and effective != asked:
        return f"{text} (floor; the policy asks {_text(asked)})"
    return text


def _text(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) or "none"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_text(v)}" for k, v in sorted(value.items())) or "none"
    return str(value)


def check_create(
    rules: Rules, policy_name: str, algorithm: str, purpose: str, exportable: bool
) -> None:
    allowed = rules.algorithms.get(purpose, [])
    if algorithm not in allowed:
        raise errors.PolicyRefused(
            f"Policy {policy_name!r} does not allow {algorithm} keys to {purpose}.",
            f"It allows: {', '.join(allowed) or 'nothing'} for {purpose}.",
        )
    if exportable and not rules.exportable:
        raise errors.PolicyRefused(
            f"Policy {policy_name!r} does not allow exportable keys.",
            "Choose a policy marked exportable, or create the key non-exportable.",
        )


def check_origin(rules: Rules, kind: OpKind, via: str) -> None:
    """Some operations only at the workstation's own console, never over SSH."""
    if via == "ssh" and str(kind) in rules.console_only:
        raise errors.PolicyRefused(
            f"{kind} is allowed only at the workstation console, not over SSH.",
            "Run it at the console (the policy's console_only list says which operations).",
        )


def _days_after_start(key: Key, days: int) -> datetime | None:
    """`days` after the key's activation (or creation, if it never was activated)."""
    start = key.activated_at or key.created_at
    return parse_iso(start) + timedelta(days=days) if start else None


def rotation_due(key: Key, rules: Rules) -> datetime | None:
    """When the current version should be replaced (from its activation)."""
    return _days_after_start(key, rules.rotation_days)


def originator_end(key: Key, rules: Rules) -> datetime | None:
    """End of the originator-usage period: after it the key must not protect new data."""
    return _days_after_start(key, rules.originator_usage_days)


def recipient_end(key: Key, rules: Rules) -> datetime | None:
    """End of the recipient-usage period: after it protected data should not need this key."""
    return _days_after_start(key, rules.recipient_usage_days)


DEFAULT_POLICIES: tuple[Policy, ...] = (
    Policy("default", "General data-encryption, MAC and signing keys; non-exportable.", {}),
    Policy(
        "kek",
        "Key-encryption keys: AES-256 wrap only, two-year rotation.",
        {
            "algorithms": {"wrap": ["AES-256"]},
            "rotation_days": 730,
            "originator_usage_days": 730,
            "recipient_usage_days": 1095,
        },
    ),
    Policy(
        "signing",
        "Signing keys: RSA-3072+ or EC, two-year rotation, previous version kept for verify.",
        {
            "algorithms": {"sign": ["RSA-3072", "RSA-4096", "EC-P256", "EC-P384"]},
            "rotation_days": 730,
            "originator_usage_days": 730,
            "recipient_usage_days": 1825,
        },
    ),
    Policy(
        "exportable-dek",
        "Data-encryption keys that may be exported under a trusted wrapping key.",
        {
            "algorithms": {"encrypt": ["AES-256"]},
            "exportable": True,
            "rotation_days": 180,
            "originator_usage_days": 180,
            "recipient_usage_days": 365,
        },
    ),
)
