"""The workstation's policies as stored: read, parsed once per version, changed under approval."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from kmtui.core import errors
from kmtui.core.control import policy
from kmtui.core.control.gate import Apply, Executed, Gate, Prepared
from kmtui.core.control.operations import ApprovalInput, Operation, OpKind
from kmtui.core.models import Policy, iso, utcnow
from kmtui.core.registry.db import Store
from kmtui.core.registry.seals import subject

_RULES: dict[tuple[str, str], policy.Rules] = {}
"""Parsed policies by (name, rules JSON); Rules are immutable, so sharing them is safe."""


class PolicyBook:
    """Policies by name; a change is itself dual-controlled, under the policy's current rules."""

    def __init__(self, store: Store, gate: Gate) -> None:
        self._store = store
        self._gate = gate

    def ensure_defaults(self) -> None:
        """The shipped policy set, added when missing (never overwriting a changed policy)."""
        present = {p.name for p in self._store.policies.all()}
        for shipped in policy.DEFAULT_POLICIES:
            if shipped.name not in present:
                self._store.policies.add(replace(shipped, updated_at=iso(utcnow())))

    def all(self) -> list[Policy]:
        return self._store.policies.all()

    def get(self, name: str) -> Policy:
        stored = self._store.policies.get(name)
        if stored is None:
            raise errors.UsageError(f"No policy named {name!r}.", "See `kmtui policies list`.")
        return stored

    def rules(self, name: str) -> policy.Rules:
        """Parsed once per stored version of the rules (read fresh: another process may change
        them)."""
        stored = self.get(name)
        key = (name, json.dumps(stored.rules, sort_keys=True))
        parsed = _RULES.get(key)
        if parsed is None:
            parsed = _RULES[key] = policy.parse(stored)
        return parsed

    def idle_lock(self, configured_minutes: int) -> tuple[int, str]:
        """Minutes before the console locks, and who set it: the shortest of the configured value
        and every policy's idle_lock_minutes (a policy can only shorten the lock)."""
        minutes, source = configured_minutes, "configuration"
        for stored in self._store.policies.all():
            try:
                limit = self.rules(stored.name).idle_lock_minutes
            except errors.KmtuiError:
                continue  # a policy that does not parse is refused wherever it is used
            if limit is not None and limit < minutes:
                minutes, source = limit, f"policy {stored.name}"
        return minutes, source

    def prepare_change(
        self, name: str, rules: dict[str, Any], description: str | None = None
    ) -> Prepared:
        """A change with every rule it touches, old → new, inside what the approvers sign."""
        current = self.get(name)
        candidate = Policy(
            name, current.description if description is None else description, dict(rules)
        )
        # Refuse a broken policy, or one asking less than the floor, before anyone approves it.
        policy.parse(candidate, candidate=True)
        changes = policy.changes(current, candidate)
        op = Operation(
            OpKind.POLICY_CHANGE,
            "",
            {
                "policy": name,
                "description": candidate.description,
                "rules": candidate.rules,
                "previous_rules": current.rules,
                "changes": changes,
            },
        )
        touched = sorted(
            k for k in set(rules) | set(current.rules) if rules.get(k) != current.rules.get(k)
        )
        summary = f"Change policy {name!r}: {', '.join(touched) or 'no rule'} changed"
        return self._gate.prepared(op, summary, self.rules(name), subject=subject("policy", name))

    def run_change(
        self, prepared: Prepared, approvals: Sequence[ApprovalInput], *, actor: str
    ) -> Executed:
        p = prepared.operation.params
        updated = Policy(str(p["policy"]), str(p["description"]), dict(p["rules"]), iso(utcnow()))
        if policy.changes(self.get(updated.name), updated) != list(p["changes"]):
            raise errors.PolicyRefused(
                f"Policy {updated.name!r} changed since this change was prepared: the old → new "
                "the approvers would see is no longer true.",
                "Prepare the change again and collect fresh approvals.",
            )

        def work(facts: dict[str, Any]) -> Apply:
            facts["policy"] = updated.name
            return lambda: self._store.policies.update(updated)

        rules = self.rules(updated.name)
        return self._gate.execute(prepared, approvals, work, rules=rules, actor=actor)
